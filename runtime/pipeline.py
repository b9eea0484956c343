"""The torch-free pipeline: posts in, entities out.

    pipeline = Pipeline.from_bundle("bundle/", backend="ort")
    results = pipeline.tag([Post("Kawhi Leonard in Toronto", image=jpeg_bytes), "Nice day in Paris"])
    results[0].entities  # [Entity(type="PER", text="Kawhi Leonard", start=0, end=13, score=0.97), ...]

For each batch of posts:

1. the pictures are decoded once and resized twice (``runtime.image``); the detector
   and the vision stage then run concurrently in two threads, and the host keeps the
   best objects (``runtime.coco.select_objects``, with the bundle's settings). A picture seen
   before (the same bytes: a retweet) is neither decoded nor run: its grid and object ids come
   from the picture cache (``runtime.picture_cache``: an LRU of ``picture_cache_bytes``, 64 MiB by
   default, 0 for none), and copies of one picture within a batch are decoded and run once;
2. meanwhile the texts are split into words (with character offsets into the text as
   sent) by the bundle's splitter (``runtime.splitters``: ``tweet`` for models trained on
   TWITTER-format data, which splits ``#Toronto!`` into ``#`` ``Toronto`` ``!`` as the
   training data was split), then into word-pieces;
   a post longer than the tagger's window is cut into overlapping windows
   (``runtime.windows``), never truncated;
3. the tagger runs on the windows, sorted by length and batched, each batch padded to its
   longest window; a batch without pictures gets one grid cell instead of 49 where the
   graph takes it (the same emissions: ``mner.export.tagger``);
4. Viterbi with the allowed-tag mask (a word's first piece only O/B-x/I-x) gives the
   tags, forward-backward under the same mask the marginals, and
   ``runtime.spans`` the entities with offsets into the original text.

A post that cannot be tagged -- empty or whitespace-only text, a text that is not a
string, a text with a UTF-16 surrogate, a picture that is not a usable image -- gets its
own ``error`` and the rest of the batch is tagged. With ``on_bad_image="text-only"`` an
unusable picture is dropped instead (the post is tagged from its text, ``image_error``
says why): "no image", never another picture.

Odd characters, class by class (``runtime.textcheck``; what an exported bundle's BERT
tokenizer was seen to do, tests/runtime/test_odd_text.py):

- lone surrogates U+D800..U+DFFF (JSON "\\ud800", a tweet cut inside an emoji): no UTF-8
  form, and the tokenizer (Rust) takes UTF-8 only, so the post's error names the code
  point and its character offset: "text has a lone surrogate U+D800 at character 4; ...".
  Both halves of a pair as two code points get "a UTF-16 surrogate pair ..." likewise.
- tagged, offsets exact into the text as sent: NUL, C0/C1 controls and DEL, BIDI
  embeddings, overrides, isolates and marks (U+202A..U+202E, U+2066..U+2069, U+200F),
  zero-width characters (U+200B..U+200D, U+2060, U+FEFF), tag characters, private use,
  U+FFFD: BERT's normaliser drops them from a word's pieces, and a word of nothing else
  is [UNK]. Non-characters (U+FFFE, U+FFFF, U+FDD0..U+FDEF, U+10FFFF) and unassigned
  code points: the normaliser keeps them, no vocabulary has them, so their word is
  [UNK]. The tweet splitter makes each of these characters a word of its own; U+2028
  and U+2029 are whitespace.

Whatever else goes wrong: should tagging a batch raise (anything but KeyboardInterrupt or
SystemExit), its posts are tagged again one by one, so only a post that fails alone
gets an error ("tagging failed: <exception class>: <message>", its traceback in the log
as one warning) and every other post gets what tagging it alone gives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Generator, Mapping, NamedTuple, Sequence

import numpy as np

from mner.runtime.batching import PaddingCount
from mner.runtime.bundle import PRECISIONS, Bundle
from mner.runtime.coco import class_name, select_objects
from mner.runtime.decode import CRFParameters, decode_words
from mner.runtime.image import MAX_PIXELS, preprocess_images
from mner.runtime.picture_cache import DEFAULT_PICTURE_CACHE_BYTES, PictureCache, PictureFeatures, picture_key
from mner.runtime.runners import BACKENDS, OrtRunner, Runner, TrtRunner, tensorrt_machine, torch_runners
from mner.runtime.spans import Entity, entities_from_words
from mner.runtime.tags import TagScheme, repair_bio
from mner.runtime.splitters import DEFAULT_SPLITTER, get_splitter
from mner.runtime.text import EncodedText, TextEncoder, Word
from mner.runtime.textcheck import text_problem
from mner.runtime.windows import Window, plan_windows

logger = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("error", "text-only")
DEFAULT_BATCH_SIZE = 16
TAGGING_FAILED = "tagging failed"  # starts the error of a post whose tagging raised (see Pipeline._tag_batch)

Steps = Generator[None, None, list]  # Pipeline.tag_steps: yields between units of work, returns the results


class TextCost(NamedTuple):
    """What tagging a text asks of the tagger, known before tagging it (``Pipeline.text_cost``)."""

    pieces: int  # word-pieces of its words ([CLS]/[SEP] not counted; a word the tokenizer empties counts 1)
    windows: int  # tagger windows they need (0 for a text without words)


class PreparedImage(NamedTuple):
    """A picture decoded and resized ahead of tagging (``Pipeline.prepare_image``, on another thread
    than the pipeline's), or why it cannot be used; a ``Post`` may carry it instead of bytes. Where the
    pipeline has a picture cache: the picture's key and, if the cache had it, its features (not decoded)."""

    vision: np.ndarray | None  # (3, 224, 224) float32
    detector: np.ndarray | None  # (3, S, S) float32
    error: str | None = None
    key: bytes | None = None  # picture_cache.picture_key of its bytes: its features are remembered once computed
    features: PictureFeatures | None = None  # from the cache: no decode and no stages for this picture


@dataclass(frozen=True)
class Post:
    """One post: its text and, optionally, the encoded bytes of its picture (JPEG, PNG, GIF, BMP, WEBP)
    or that picture already prepared (``Pipeline.prepare_image``)."""

    text: str
    image: bytes | PreparedImage | None = None


@dataclass
class TagResult:
    """What ``Pipeline.tag`` returns for one post: entities, or the error that kept it from being tagged."""

    entities: list[Entity] = field(default_factory=list)
    error: str | None = None  # set: the post was not tagged, and nothing else is
    image_error: str | None = None  # on_bad_image="text-only": why the picture was not used
    words: list[Word] = field(default_factory=list)  # the text's words, as the pipeline's splitter split it
    tags: list[str] = field(default_factory=list)  # one BIO tag per word
    scores: list[float] = field(default_factory=list)  # marginal probability of each word's tag
    objects: list[str] = field(default_factory=list)  # COCO classes the detector found, best first
    windows: int = 0  # tagger windows the text needed (1 unless it was longer than max_length)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: {"error"} or {"entities", "objects"[, "image_error"]}."""
        if self.error is not None:
            return {"error": self.error}
        out: dict[str, Any] = {"entities": [e.to_dict() for e in self.entities], "objects": list(self.objects)}
        if self.image_error is not None:
            out["image_error"] = self.image_error
        return out


def grid_cell_bounds(tagger: Runner) -> tuple[int, int]:
    """(fewest, most) grid cells the tagger takes: (1, 49) for a graph with the dynamic cell axis,
    (49, 49) for a bundle exported before it. Fewer than all come only for posts without picture
    (the same emissions: see mner.export.tagger)."""
    cells = next(t for t in tagger.stage.inputs if t.name == "grid").shape[1]
    return tagger.axis_bounds(cells) if isinstance(cells, str) else (cells, cells)


class StageClock:
    """Seconds spent per pipeline step, summed since the last ``reset()``.

    Set ``pipeline.clock = StageClock()`` to have a pipeline record its steps: "images"
    (decode and resize), "detector" and "vision" (their runners, concurrently in two
    threads), "encode" (word-pieces), "tagger" (its runner) and "decode" (Viterbi and
    marginals). ``mner-bench`` reads it; a pipeline without a clock pays nothing.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, step: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] += time.perf_counter() - started

    def reset(self) -> dict[str, float]:
        """The seconds so far (a copy), and start again from zero."""
        seconds, self.seconds = dict(self.seconds), defaultdict(float)
        return seconds


@dataclass
class _Item:
    """A post on its way through a batch."""

    text: str
    words: list[Word]
    image: bytes | PreparedImage | None
    result: TagResult
    image_row: int | None = None  # row in the batch's image arrays
    windows: list[Window] = field(default_factory=list)
    encoded: list[EncodedText | None] = field(default_factory=list)  # one per window, once the tagger reaches it
    lengths: list[int] = field(default_factory=list)  # pieces per window, [CLS] and [SEP] included


class Pipeline:
    """Detector + vision (concurrently) -> tagger -> constrained Viterbi -> entities.

    Build it with ``Pipeline.from_bundle``; the constructor takes the parts directly
    (any ``Runner``), which is what tests and custom deployments use. Call ``close()``
    (or use ``with``) to free the runners.
    """

    def __init__(
        self,
        *,
        encoder: TextEncoder,
        scheme: TagScheme,
        crf: CRFParameters,
        tagger: Runner,
        detector: Runner | None = None,
        vision: Runner | None = None,
        object_settings: Mapping[str, Any] | None = None,
        detector_size: int | None = None,
        max_pixels: int = MAX_PIXELS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        on_bad_image: str = "error",
        max_length: int | None = None,
        splitter: str = DEFAULT_SPLITTER,
        chunk_pieces: int | None = None,
        picture_cache_bytes: int = DEFAULT_PICTURE_CACHE_BYTES,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if chunk_pieces is not None and (not isinstance(chunk_pieces, int) or chunk_pieces < 1):
            raise ValueError(f"chunk_pieces must be a positive int or None, got {chunk_pieces!r}")
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
        if isinstance(picture_cache_bytes, bool) or not isinstance(picture_cache_bytes, int) or picture_cache_bytes < 0:
            raise ValueError(f"picture_cache_bytes must be an int >= 0 (0: no cache), got {picture_cache_bytes!r}")
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
        if (detector is None) != (vision is None):
            raise ValueError("detector and vision runners come together (a picture needs both), or neither")
        if detector is not None and (object_settings is None or detector_size is None):
            raise ValueError("with image runners, object_settings and detector_size are needed too")
        sequence_max = tagger.axis_bounds("sequence")[1]
        model_length = min(encoder.max_length, sequence_max)
        if max_length is None:
            max_length = model_length
        if not isinstance(max_length, int) or not 3 <= max_length <= model_length:
            raise ValueError(f"max_length must be an int in [3, {model_length}] (the model's window), got {max_length!r}")
        if max_length != encoder.max_length:
            encoder = TextEncoder(encoder.tokenizer, encoder.aug_vocab, max_length=max_length,
                                  special_tokens=encoder.special_tokens)
        self.split = get_splitter(splitter)  # raises ValueError naming the known splitters
        self.splitter = splitter
        self.encoder = encoder
        self.scheme = scheme
        self.crf = crf
        self.tagger = tagger
        self.detector = detector
        self.vision = vision
        self.object_settings = dict(object_settings or {})
        self.detector_size = detector_size
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        # Most word-pieces (windows x the longest, padding included) per tagger call, besides batch_size
        # windows: a bound on one call's (one tag_steps step's) cost, which mner-serve sets; None: no bound.
        self.chunk_pieces = chunk_pieces
        self.on_bad_image = on_bad_image
        # A repeated picture's grid and object ids (runtime.picture_cache); None: no cache, or no picture stages.
        self.picture_cache = PictureCache(picture_cache_bytes) if picture_cache_bytes and detector is not None else None
        inputs = {t.name: t for t in tagger.stage.inputs}
        self._grid_dim = int(inputs["grid"].shape[2])
        self._grid_cells = grid_cell_bounds(tagger)  # a batch without pictures gets the fewest
        self._num_objects = int(inputs["object_ids"].shape[1])
        self._pool: ThreadPoolExecutor | None = None
        self.clock: StageClock | None = None
        # Set to a batching.PaddingCount to count the real and padded word-pieces of every tagger call.
        self.padding: PaddingCount | None = None
        try:
            for runner in self.runners:
                runner.activate()
        except BaseException:
            self.close()  # the runners already activated free what they hold
            raise

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike,
        backend: str = "ort",
        *,
        device: str | None = None,
        precision: str = "fp32",
        checkpoint: str | os.PathLike | None = None,
        resnet_weights: str | os.PathLike | None = None,
        detector_weights: str | os.PathLike | None = None,
        threads: int | None = None,
        verify: bool = True,
        **options: Any,
    ) -> Pipeline:
        """Open and check a bundle and make its runners.

        backend: "ort" (ONNX Runtime; ``device`` "cpu" or "cuda", ``precision`` "fp32", "fp16"
        or "int8": each stage's INT8 graph where the bundle has one, FP32 for the others), "trt"
        (the bundle's TensorRT engines for this GPU and TensorRT version)
        or "torch" (the PyTorch reference, rebuilt from ``checkpoint`` and the vision /
        detector weights the bundle was exported from). ``options`` go to the constructor
        (batch_size, on_bad_image, max_length, chunk_pieces, picture_cache_bytes, max_pixels, which
        defaults to the bundle's, and splitter, which defaults to the one the bundle names: how the
        model's training text was split).
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if backend == "trt" and device not in (None, "cuda"):
            raise ValueError(f"the trt backend runs on a CUDA GPU, got device={device!r}")
        if backend != "ort" and precision != "fp32":
            what = "engines are built from the FP16 graphs" if backend == "trt" else "the reference runs in FP32"
            raise ValueError(f"precision applies to the ort backend only ({backend}: {what}), got {precision!r}")
        bundle = Bundle.open(path, verify=verify)
        names = [name for name in ("detector", "vision", "tagger") if name in bundle.stages]
        if backend == "ort":
            graphs = bundle.stage_precisions(precision)  # int8: the INT8 graph where a stage has one, else FP32
            runners: dict[str, Runner] = {
                name: OrtRunner(bundle.stages[name], bundle.graph(name, graphs[name]), device=device or "cpu", threads=threads)
                for name in names
            }
        elif backend == "trt":
            engine = bundle.engine_for(*tensorrt_machine())
            missing = [name for name in names if name not in engine.plans]
            if missing:
                raise ValueError(f"{bundle.path}: the engines in {engine.dir} lack the stages {missing}; re-export with --trt")
            runners = {name: TrtRunner(bundle.stages[name], engine.plans[name], engine.profiles[name]) for name in names}
        else:
            runners = dict(torch_runners(bundle, checkpoint=checkpoint, resnet_weights=resnet_weights,
                                         detector_weights=detector_weights, device=device or "cpu"))  # fmt: skip
        return cls.from_runners(bundle, runners, **options)

    @classmethod
    def from_runners(cls, bundle: Bundle, runners: Mapping[str, Runner], **options: Any) -> Pipeline:
        """A pipeline of an opened bundle's text encoder, tags, CRF and picture settings around the given
        runners (stage name -> Runner; "tagger", and "detector" with "vision" where the bundle has them):
        ``from_bundle`` with runners made elsewhere (the Triton front model's BLS calls). ``options`` as in
        ``from_bundle``."""
        image = bundle.image_settings
        options.setdefault("splitter", bundle.splitter)
        options.setdefault("max_pixels", int(image.get("max_pixels", MAX_PIXELS)))
        return cls(
            encoder=bundle.text_encoder(),
            scheme=bundle.scheme,
            crf=bundle.crf(),
            tagger=runners["tagger"],
            detector=runners.get("detector"),
            vision=runners.get("vision"),
            object_settings=bundle.object_settings if bundle.has_images else None,
            detector_size=image.get("detector_size") if bundle.has_images else None,
            **options,
        )

    @property
    def runners(self) -> list[Runner]:
        return [r for r in (self.detector, self.vision, self.tagger) if r is not None]

    @property
    def has_images(self) -> bool:
        return self.detector is not None

    def _step(self, name: str):
        return self.clock(name) if self.clock is not None else contextlib.nullcontext()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        for runner in self.runners:
            runner.deactivate()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ----------------------------------------------------------------------------- API

    def tag(self, posts: Sequence[Post | str | Mapping[str, Any]]) -> list[TagResult]:
        """One result per post, in order. A post is a ``Post``, a text, or a mapping with
        "text" and optionally "image" (bytes). Problems with one post are that post's error."""
        return _run(self.tag_steps(posts))

    def tag_steps(self, posts: Sequence[Post | str | Mapping[str, Any]]) -> Steps:
        """``tag`` in steps: a generator that yields between units of work and returns the results.

        A unit is one batch's pictures and word-pieces with its first chunk of tagger windows,
        or one further chunk (at most ``batch_size`` windows): a post of many windows, or many
        posts, take many steps. mner-serve's batcher advances several of these in turn, so a
        short request is tagged between two steps of a long one. No image work is in flight
        at a yield, so the steps of different generators may interleave on one thread; the
        pipeline is still used from one thread only. Invalid ``posts`` raise here, not at the
        first step.
        """
        if isinstance(posts, (str, bytes, Post, Mapping)):
            raise ValueError(f"tag() takes a sequence of posts, got a single {type(posts).__name__}: wrap it in a list")
        return self._tag_items([self._item_or_error(post) for post in posts])

    def text_cost(self, text: str) -> TextCost:
        """Word-pieces and tagger windows ``text`` needs, counted as tagging counts them (the
        splitter, the tokenizer, ``plan_windows``) without tagging it: what mner-serve's budget
        checks before accepting a post. Safe from any thread (the splitter and the tokenizer
        keep no state; the tokenizer's truncation and padding are fixed at construction)."""
        words = [w.text for w in self.split(text)]
        if not words:
            return TextCost(0, 0)
        counts = _piece_counts(self.encoder, words)
        pieces = int(np.maximum(counts, 1).sum())  # an emptied word is [UNK]: one piece
        budget = self.encoder.max_length - 2
        return TextCost(pieces, 1 if pieces <= budget else len(plan_windows(counts.tolist(), budget)))

    def tag_words(self, posts: Sequence[Sequence[str]], images: Sequence[bytes | None] | None = None) -> list[TagResult]:
        """Like ``tag`` for pre-split text (a CoNLL file's words, kept as given: a word is any
        non-empty string); offsets index ``" ".join(words)``."""
        images = [None] * len(posts) if images is None else list(images)
        if len(images) != len(posts):
            raise ValueError(f"got {len(posts)} posts but {len(images)} images")
        items = []
        for words, image in zip(posts, images):
            words = list(words)
            bad = [w for w in words if not isinstance(w, str) or not w]
            if not words or bad:
                what = "no words" if not words else f"words that are not non-empty strings: {bad[:5]!r}"
                items.append(_Item("", [], None, TagResult(error=f"a pre-split post needs non-empty string words; got {what}")))
                continue
            items.append(self._item_or_error(Post(" ".join(words), image), words=words))
        return _run(self._tag_items(items))

    # ----------------------------------------------------------------------------- steps

    def _item_or_error(self, post: Any, words: list[str] | None = None) -> _Item:
        """``_item``, or should preparing the post raise (splitting it, say), an item carrying
        that post's error: one post's problem never fails the others."""
        try:
            return self._item(post, words)
        except Exception as error:  # noqa: BLE001 -- named in the post's error and logged with its traceback
            item = _Item("", [], None, TagResult())
            self._tagging_failed(item, False, error)
            return item

    def _item(self, post: Any, words: list[str] | None = None) -> _Item:
        """A post on its way in; ``words``: its pre-split words (``post.text`` is them joined by spaces)."""
        if isinstance(post, str):
            post = Post(post)
        elif isinstance(post, Mapping):
            unknown = sorted(set(post) - {"text", "image"})
            if "text" not in post or unknown:
                what = "has no 'text'" if "text" not in post else f"has unknown keys {unknown}"
                return _Item("", [], None, TagResult(error=f"a post mapping needs 'text' and may have 'image'; this one {what}"))
            post = Post(post["text"], post.get("image"))
        elif not isinstance(post, Post):
            return _Item("", [], None, TagResult(error=f"a post is a Post, a str or a mapping, got {type(post).__name__}"))
        if not isinstance(post.text, str):
            return _Item("", [], None, TagResult(error=f"text must be a string, got {type(post.text).__name__}"))
        if post.image is not None and not isinstance(post.image, (bytes, bytearray, memoryview, PreparedImage)):
            return _Item("", [], None, TagResult(error=f"image must be bytes or None, got {type(post.image).__name__}"))
        problem = text_problem(post.text)  # a text the tokenizer cannot take: this post's error, not its batch's
        if problem is not None:
            return _Item(post.text, [], None, TagResult(error=problem))
        if words is None:
            words = self.split(post.text)
        else:
            starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])
            words = [Word(w, int(s), int(s) + len(w)) for w, s in zip(words, starts)]
        if not words:
            what = "empty" if not post.text else "whitespace only"
            return _Item(post.text, [], None, TagResult(error=f"text is {what}: nothing to tag"))
        image = post.image if isinstance(post.image, PreparedImage) or post.image is None else bytes(post.image)
        return _Item(post.text, words, image, TagResult(words=words))

    def _tag_items(self, items: list[_Item]) -> Steps:
        for start in range(0, len(items), self.batch_size):
            if start:
                yield  # between batches
            yield from self._tag_batch([item for item in items[start : start + self.batch_size] if item.result.ok])
        return [item.result for item in items]

    def _tag_batch(self, items: list[_Item]) -> Generator[None, None, None]:
        """Tag ``items`` together. Should that raise (anything but KeyboardInterrupt or SystemExit), tag
        each post alone: a post that fails alone too gets the error (``TAGGING_FAILED``: the exception's
        class and message; its traceback goes to the log), every other post what tagging it alone gives."""
        if not items:
            return
        # Tagging changes an item's image and result (in place): kept as they came, to start again.
        initial = [(item.image, replace(item.result)) for item in items]
        try:
            yield from self._tag_together(items)
            return
        except Exception as error:  # noqa: BLE001 -- re-done post by post below; KeyboardInterrupt goes through
            batch_error = error
        self._settle_images()
        if len(items) == 1:  # alone already
            self._tagging_failed(items[0], initial[0][0] is not None, batch_error)
            return
        logger.info("tagging a batch of %d posts failed (%s: %s); tagging them one by one",
                    len(items), type(batch_error).__name__, batch_error)  # fmt: skip
        failed = 0
        for k, (item, (image, result)) in enumerate(zip(items, initial)):
            if k:
                yield  # between posts tagged alone
            alone = _Item(item.text, item.words, image, result)
            try:
                yield from self._tag_together([alone])
            except Exception as error:  # noqa: BLE001 -- this post's own error
                self._settle_images()
                self._tagging_failed(alone, image is not None, error)
                failed += 1
            item.result = alone.result
        if not failed:  # it failed together but not alone: the batch's traceback is the only clue
            logger.warning("a batch of %d posts failed, yet each of its posts tagged alone", len(items), exc_info=batch_error)

    def _tagging_failed(self, item: _Item, with_picture: bool, error: Exception) -> None:
        logger.warning("tagging a post failed (%d characters, %s): that post gets the error", len(item.text),
                       "with a picture" if with_picture else "no picture", exc_info=error)  # fmt: skip
        item.result = TagResult(error=f"{TAGGING_FAILED}: {type(error).__name__}: {error}")

    def _settle_images(self) -> None:
        """After a failure the detector and vision stages may still be running in the pool: wait for them
        (a runner need not take two calls at once) and start a new pool with the next batch."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _tag_together(self, items: list[_Item]) -> Generator[None, None, None]:
        features = self._start_images(items)
        items = [item for item in items if item.result.ok]  # a bad picture may have ended a post
        with self._step("encode"):
            self._encode(items)
        # No yield before this wait: another generator's steps may use (or, failing, replace) the image pool.
        grid, object_ids = features() if features is not None else (None, None)
        yield from self._run_tagger(items, grid, object_ids)

    def _image_problem(self, item: _Item, message: str) -> None:
        if self.on_bad_image == "error":
            item.result = TagResult(error=f"image: {message}")
        else:
            item.result.image_error = message
        item.image = None

    def _start_images(self, items: list[_Item]):
        """Decode the pictures and start detector and vision in two threads; returns a function
        that waits for them, giving (grid (n, 49, 2048), object ids (n, K)) by image row. With the
        picture cache, a picture it holds is neither decoded nor run, and copies of one picture in
        the batch share a row (decoded and run once); the rows computed are remembered once done."""
        with_image = [item for item in items if item.image is not None]
        if with_image and not self.has_images:
            for item in with_image:
                self._image_problem(item, "this bundle has no detector and vision stages (it was exported for text "
                                          "only), so it cannot use pictures")  # fmt: skip
            with_image = []
        if not with_image:
            return None
        with self._step("images"):
            decoded = iter(self._prepare([item.image for item in with_image if not isinstance(item.image, PreparedImage)]))
            pictures = [item.image if isinstance(item.image, PreparedImage) else next(decoded) for item in with_image]
        rows: list[PictureFeatures | int] = []  # by image row: the cached features, or the row's index in `computed`
        computed: list[PreparedImage] = []  # pictures to run through the stages
        row_of: dict[bytes, int] = {}  # picture key -> image row, within this batch
        for item, picture in zip(with_image, pictures):
            if picture.error is not None:
                self._image_problem(item, picture.error)
            elif picture.key is not None and picture.key in row_of:
                item.image_row = row_of[picture.key]
            else:
                item.image_row = len(rows)
                if picture.key is not None:
                    row_of[picture.key] = item.image_row
                rows.append(picture.features if picture.features is not None else len(computed))
                if picture.features is None:
                    computed.append(picture)
        if not rows:
            return None
        if computed:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mner-image")
            vision = self._pool.submit(self._chunked, self.vision, "images", np.stack([p.vision for p in computed]))
            detector = self._pool.submit(self._chunked, self.detector, "images", np.stack([p.detector for p in computed]))

        def wait() -> tuple[np.ndarray, np.ndarray]:
            if computed:
                grid = vision.result()["grid"]  # (len(computed), 49, 2048)
                candidates = detector.result()
                object_ids = select_objects(candidates["scores"], candidates["labels"], candidates["boxes"],
                                            **self.object_settings)  # fmt: skip
                if self.picture_cache is not None:
                    for k, picture in enumerate(computed):
                        if picture.key is not None:
                            self.picture_cache.put(picture.key, PictureFeatures(grid[k], object_ids[k]))
                if len(computed) == len(rows):  # nothing from the cache, no copies: the rows are the computed ones
                    return grid, object_ids
            by_row = [row if isinstance(row, PictureFeatures) else PictureFeatures(grid[row], object_ids[row])
                      for row in rows]  # fmt: skip
            return np.stack([f.grid for f in by_row]), np.stack([f.object_ids for f in by_row])

        return wait

    def prepare_image(self, data: bytes) -> PreparedImage:
        """Decode and resize a picture as tagging would, for a ``Post`` to carry instead of its bytes:
        mner-serve decodes on another thread than the pipeline's, so one large picture does not hold the
        tagger. Safe from any thread (it uses no runner). A picture that cannot be used gives its error;
        a picture the cache holds is not decoded: it comes with its features."""
        if not self.has_images:
            return PreparedImage(None, None, "this bundle has no detector and vision stages (it was exported for text "
                                             "only), so it cannot use pictures")  # fmt: skip
        return self._prepare([bytes(data)])[0]

    def _prepare(self, images: list[bytes]) -> list[PreparedImage]:
        """Decode and resize each picture. With the cache: each is looked up by its key first (a hit brings its
        features or its error, and is not decoded), a picture repeated in ``images`` is decoded once, and a
        picture that cannot be used is remembered with its error."""
        if not images:
            return []
        cache = self.picture_cache
        if cache is None:
            return self._decode_images(images)
        keys = [picture_key(data) for data in images]
        found: dict[bytes, PreparedImage] = {}
        for key in keys:
            features = cache.get(key)  # each picture counts as a hit or a miss, copies within ``images`` too
            if features is not None and key not in found:
                found[key] = PreparedImage(None, None, features.error, key, features if features.error is None else None)
        todo = {key: data for key, data in zip(keys, images) if key not in found}  # one per distinct picture
        for (key, data), picture in zip(todo.items(), self._decode_images(list(todo.values()))):
            found[key] = picture._replace(key=key)
            if picture.error is not None:  # a function of the bytes (and of max_pixels, fixed per pipeline)
                cache.put(key, PictureFeatures(None, None, picture.error))
        return [found[key] for key in keys]

    def _decode_images(self, images: list[bytes]) -> list[PreparedImage]:
        batch = preprocess_images(images, detector_size=self.detector_size, max_pixels=self.max_pixels)
        return [PreparedImage(batch.vision[i], batch.detector[i], batch.errors[i]) if batch.errors[i] is None
                else PreparedImage(None, None, batch.errors[i]) for i in range(len(images))]  # fmt: skip

    def _chunked(self, runner: Runner, name: str, array: np.ndarray) -> dict[str, np.ndarray]:
        """Run a one-input stage over a batch larger than the runner takes."""
        step = min(self.batch_size, runner.axis_bounds("batch")[1])
        with self._step(runner.stage.name):
            parts = [runner.infer({name: array[i : i + step]}) for i in range(0, len(array), step)]
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def _encode(self, items: list[_Item]) -> None:
        """Word-pieces of each post: one window, or overlapping windows where the post is too long.
        Those windows are planned here and encoded as the tagger reaches them (``_run_tagger``), so
        the first step of a long post's ``tag_steps`` does not encode all of it."""
        budget = self.encoder.max_length - 2
        # A post of more words than a window holds pieces is windowed without encoding it whole first.
        fits = [item for item in items if len(item.words) <= budget]
        whole = dict(zip(map(id, fits), self.encoder.encode_many([[w.text for w in item.words] for item in fits])))
        for item in items:
            encoded = whole.get(id(item))
            if encoded is not None and not encoded.truncated:
                item.windows = [Window(0, len(item.words), 0, len(item.words))]
                item.encoded, item.lengths = [encoded], [len(encoded)]
                continue
            counts = _piece_counts(self.encoder, [w.text for w in item.words])
            item.windows = plan_windows(counts.tolist(), budget)
            pieces = np.clip(counts, 1, budget)  # what a window holds of each word (as plan_windows counts)
            item.encoded = [None] * len(item.windows)
            item.lengths = [int(pieces[w.start : w.end].sum()) + 2 for w in item.windows]

    def _run_tagger(self, items: list[_Item], grid: np.ndarray | None,
                    object_ids: np.ndarray | None) -> Generator[None, None, None]:  # fmt: skip
        rows = [(i, j) for i, item in enumerate(items) for j in range(len(item.encoded))]  # (item, window)
        rows.sort(key=lambda row: items[row[0]].lengths[row[1]])  # similar lengths share a batch
        min_sequence = self.tagger.axis_bounds("sequence")[0]
        window_tags: dict[tuple[int, int], tuple[list[str], np.ndarray]] = {}
        for k, chunk in enumerate(self._chunks(rows, [items[i].lengths[j] for i, j in rows], min_sequence)):
            if k:
                yield  # between chunks of windows
            with self._step("encode"):
                self._encode_windows(items, [(i, j) for i, j in chunk if items[i].encoded[j] is None])
            batch = self.encoder.batch([items[i].encoded[j] for i, j in chunk])
            arrays = {key: _pad_sequence(batch[key], min_sequence, pad) for key, pad in
                      (("input_ids", self.encoder.pad_id), ("attention_mask", 0), ("aug_ids", 0), ("roles", 0))}  # fmt: skip
            image_mask = np.zeros(len(chunk), dtype=np.int64)
            with_picture = any(items[i].image_row is not None for i, _ in chunk)
            cells = self._grid_cells[1] if with_picture else self._grid_cells[0]
            chunk_grid = np.zeros((len(chunk), cells, self._grid_dim), dtype=np.float32)
            chunk_objects = np.zeros((len(chunk), self._num_objects), dtype=np.int64)
            for r, (i, _) in enumerate(chunk):
                image_row = items[i].image_row
                if image_row is not None:
                    image_mask[r] = 1
                    chunk_grid[r] = grid[image_row]
                    chunk_objects[r] = object_ids[image_row]
            with self._step("tagger"):
                emissions = self.tagger.infer({
                    "input_ids": arrays["input_ids"], "attention_mask": arrays["attention_mask"], "aug_ids": arrays["aug_ids"],
                    "grid": chunk_grid, "image_mask": image_mask, "object_ids": chunk_objects,
                })["emissions"]  # fmt: skip  # (B, L, T)
            if self.padding is not None:
                self.padding.add(arrays["attention_mask"])
            with self._step("decode"):
                tags, scores = self._decode(emissions, batch["lengths"], arrays["roles"])
            for r, row in enumerate(chunk):
                window_tags[row] = (tags[r], scores[r])

        for i, item in enumerate(items):
            word_tags: list[str] = []
            word_scores: list[float] = []
            for j, window in enumerate(item.windows):
                tags, scores = window_tags[(i, j)]
                keep = slice(window.keep_start - window.start, window.keep_end - window.start)
                word_tags += tags[keep]
                word_scores += [float(s) for s in scores[keep]]
            assert len(word_tags) == len(item.words)
            # Each window is well-formed BIO; a seam between two windows decoded apart can still
            # read O then I-x, which becomes B-x (the entities are the same).
            word_tags = repair_bio(word_tags)
            result = item.result
            result.tags, result.scores, result.windows = word_tags, word_scores, len(item.windows)
            result.entities = entities_from_words(item.text, item.words, word_tags, word_scores)
            if item.image_row is not None:
                result.objects = [class_name(int(c)) for c in object_ids[item.image_row] if c != 0]

    def _chunks(self, rows: list, lengths: list[int], min_sequence: int) -> list[list]:
        """Consecutive rows (sorted by length) in chunks of at most batch_size (and the runner's most)
        and, with chunk_pieces, at most that many padded pieces."""
        most = min(self.batch_size, self.tagger.axis_bounds("batch")[1])
        chunks: list[list] = [[]]
        for row, length in zip(rows, lengths):
            chunk = chunks[-1]
            padded = (len(chunk) + 1) * max(length, min_sequence)  # the longest so far is this one
            if chunk and (len(chunk) == most or (self.chunk_pieces is not None and padded > self.chunk_pieces)):
                chunks.append(chunk := [])
            chunk.append(row)
        return chunks if chunks[0] else []

    def _encode_windows(self, items: list[_Item], rows: list[tuple[int, int]]) -> None:
        """Encode these (item, window) rows of long posts."""
        if not rows:
            return
        texts = [[w.text for w in items[i].words[items[i].windows[j].start : items[i].windows[j].end]] for i, j in rows]
        for (i, j), words, encoded in zip(rows, texts, self.encoder.encode_many(texts)):
            assert encoded.n_words == len(words) and len(encoded) == items[i].lengths[j]
            items[i].encoded[j] = encoded

    def _decode(self, emissions: np.ndarray, lengths: np.ndarray, roles: np.ndarray) -> tuple[list[list[str]], list[np.ndarray]]:
        """Word tags (constrained Viterbi) and each tag's marginal probability under the same constraints."""
        decoded = decode_words(emissions, lengths, roles, self.scheme, self.crf, with_scores=True)
        return decoded.word_tags, decoded.word_scores


def _run(steps: Steps) -> list:
    """Take every step; the generator's return value."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def _piece_counts(encoder: TextEncoder, words: list[str]) -> np.ndarray:
    """Word-pieces per word (0 for a word the tokenizer empties)."""
    pieces = encoder.tokenizer.encode(words, is_pretokenized=True, add_special_tokens=False)
    return np.bincount([i for i in pieces.word_ids if i is not None], minlength=len(words))


def _pad_sequence(array: np.ndarray, length: int, value: int) -> np.ndarray:
    """Pad (B, L) to at least ``length`` columns (a TensorRT profile's minimum); padding is masked out."""
    if array.shape[1] >= length:
        return array
    return np.pad(array, ((0, 0), (0, length - array.shape[1])), constant_values=value)
