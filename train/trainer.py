"""Training MGCMT on TWITTER-format data into a self-contained best.pt.

One function, ``train(TrainArgs)``: read the splits, build the tokenizer, the
semantic-augmentation table and the frozen image features, then AdamW with linear
warmup and decay; the dev F1 picks best.pt, and test F1 is reported for it.
``last.pt`` (model + optimiser + scheduler + RNG state) makes ``--resume`` exact.
Under ``torchrun`` it trains with DistributedDataParallel; rank 0 evaluates and saves.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from mner.runtime.decode import DECODINGS, decode_words
from mner.runtime.progress import progress as progress_bar
from mner.runtime.splitters import get_splitter
from mner.runtime.tags import TagScheme
from mner.runtime.text import TextEncoder, label_ids
from mner.train.augment import build_augmentation_table, load_word_vectors, train_word2vec
from mner.train.chars import SPECIALS as SPECIAL_CHARS
from mner.train.chars import build_char_vocab, char_ids
from mner.train.checkpoint import load_checkpoint, save_checkpoint, unwrap
from mner.train.config import DEFAULT_PRESET, SPLITS, TRAINING_DEFAULTS, TrainingDefaults  # noqa: F401 (re-exported)
from mner.train.data import Post, check_entity_types, read_conll, sha256_file
from mner.train.detector_choice import DEFAULT_DETECTOR, resolve_detector
from mner.runtime.files import write_atomically
from mner.train.history import HISTORY_JSONL, HISTORY_PNG, append_history, plot_history, write_history
from mner.train.metrics import evaluate_entities, evaluate_reference
from mner.train.model import MGCMT, ModelConfig

logger = logging.getLogger(__name__)


@dataclass
class TrainArgs:
    data_dir: Path
    out_dir: Path
    preset: str = DEFAULT_PRESET  # "tiny": see config.DEFAULT_PRESET for why not "paper"
    bert: Path | None = None  # a local pretrained BERT directory (config, weights, vocab.txt)
    word_vectors: Path | None = None  # any gensim-loadable vectors; None = word2vec on the training text
    images_dir: Path | None = None  # <images_dir>/<IMGID>.jpg; None = every post without image
    resnet_weights: Path | None = None
    detector_weights: Path | None = None
    feature_cache: Path | None = None  # default: <out_dir>/features
    grid_arch: str = "resnet152"  # the paper's; resnet50/101 give the same 2048-channel grid faster
    # Which torchvision COCO detector finds the objects (train/detector_choice.py; an alias is
    # resolved to its name): RetinaNet v2, or a MobileNetV3 one that costs a CPU far less.
    detector: str = DEFAULT_DETECTOR
    detector_size: int | None = None  # letterbox side the detector sees (exported the same); None: its own
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    # The pretrained BERT's own peak rate (--bert-lr); None: learning_rate for every parameter.
    # Fine-tuning wants a small one for BERT and a larger one for the layers that start random.
    bert_learning_rate: float | None = None
    word_list: Path | None = None  # the words of a --word-vectors .npy matrix, one per row
    warmup_proportion: float | None = None
    weight_decay: float | None = None
    max_length: int | None = None
    seed: int = 42
    device: str = "auto"
    resume: bool = False
    max_posts: int | None = None  # use only the first N posts of each split (quick runs, tests)
    # How raw text must be split to look like the training data's words (runtime.splitters);
    # recorded in best.pt and the bundle. TWITTER-2015/2017 were split by a tweet tokenizer.
    splitter: str = "tweet"
    model_overrides: dict[str, Any] = field(default_factory=dict)  # ablations: augmentation, fusion, aux_task
    # How to run, not what to train: neither is recorded in best.pt (see RUN_ONLY).
    threads: int | None = None  # torch's intra- and inter-op threads; None: torch's default
    progress: bool | None = True  # False: no progress bars or progress log lines

    def resolved(self) -> "TrainArgs":
        if self.preset not in TRAINING_DEFAULTS:
            raise ValueError(f"unknown preset {self.preset!r}; expected one of {sorted(TRAINING_DEFAULTS)}")
        get_splitter(self.splitter)  # raises ValueError naming the known splitters
        detector = resolve_detector(self.detector)
        detector_size = detector.check_size(self.detector_size or detector.default_size)
        defaults = TRAINING_DEFAULTS[self.preset]
        values = {
            name: getattr(self, name) if getattr(self, name) is not None else getattr(defaults, name)
            for name in ("learning_rate", "batch_size", "epochs", "warmup_proportion", "weight_decay")
        }
        if values["epochs"] < 1 or values["batch_size"] < 1 or values["learning_rate"] <= 0:
            raise ValueError(f"epochs and batch size must be >= 1 and the learning rate > 0, got {values}")
        if self.bert_learning_rate is not None and self.bert_learning_rate <= 0:
            raise ValueError(f"the BERT learning rate must be > 0, got {self.bert_learning_rate}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 (or None for torch's default), got {self.threads}")
        return dataclasses.replace(self, **values, detector=detector.name, detector_size=detector_size)

    def to_payload(self) -> dict[str, Any]:
        """The arguments recorded in best.pt: what was trained, not how the process ran."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()
                if k not in RUN_ONLY}  # fmt: skip


RUN_ONLY = ("threads", "progress")

PAPER_WITHOUT_BERT = (
    "--preset paper without --bert: the BERT-base-sized encoder (about 110M parameters) starts from random weights, "
    "which learns next to nothing on TWITTER-sized data (dev F1 near 0). Pass --bert DIR, a local pretrained BERT "
    "(e.g. bert-base-cased: config.json, model weights, vocab.txt), or train a small model from scratch with "
    "--preset tiny."
)
TINY_WITH_BERT = (
    "--preset tiny with --bert: the model takes the pretrained BERT's sizes, but tiny's training defaults are for "
    "learning from scratch (learning rate %g, %d epochs) and would overwrite what BERT learned; --preset paper "
    "fine-tunes it as the paper did (learning rate %g, %d epochs)."
)


def warn_about_preset(args: TrainArgs) -> None:
    """Warn about a preset that does not fit the weights it starts from (with --bert or without).

    ``args`` as given, before ``resolved()``: an explicit learning rate silences the tiny-with-BERT warning.
    """
    if args.preset == "paper" and args.bert is None:
        logger.warning(PAPER_WITHOUT_BERT)
    elif args.preset == "tiny" and args.bert is not None and args.learning_rate is None:
        tiny, paper = TRAINING_DEFAULTS["tiny"], TRAINING_DEFAULTS["paper"]
        logger.warning(TINY_WITH_BERT, tiny.learning_rate, tiny.epochs, paper.learning_rate, paper.epochs)


@dataclass
class Example:
    """One post, encoded once: what a batch is cut from."""

    input_ids: np.ndarray  # (n,) int64
    aug_ids: np.ndarray  # (n,) int64
    roles: np.ndarray  # (n,) int8
    tags: np.ndarray  # (n,) int64
    aux_tags: np.ndarray  # (n,) int64
    word_tags: list[str]  # gold tags of the words kept (the truncated tail is not scored)
    image_index: int  # row in the split's feature arrays
    char_ids: np.ndarray | None = None  # (n, W) int64, only for the char-CNN ablation


class Features:
    """Frozen image features of one split: grid (N, 49, 2048) float16, image_mask (N,), object ids (N, K)."""

    def __init__(self, grid: np.ndarray | None, image_mask: np.ndarray, object_ids: np.ndarray) -> None:
        self.grid = grid  # None when no post has an image: batches then use zeros
        self.image_mask = image_mask
        self.object_ids = object_ids

    @classmethod
    def none(cls, count: int, num_objects: int) -> "Features":
        return cls(None, np.zeros(count, dtype=np.int64), np.zeros((count, num_objects), dtype=np.int64))

    def take(self, rows: list[int], grid_cells: int, grid_dim: int) -> tuple[torch.Tensor, ...]:
        if self.grid is None:
            grid = torch.zeros(len(rows), grid_cells, grid_dim)
        else:
            grid = torch.from_numpy(self.grid[rows].astype(np.float32))
        return grid, torch.from_numpy(self.image_mask[rows]), torch.from_numpy(self.object_ids[rows])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU")
    return device


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads for torch's operators (None: leave torch's default).

    torch's default is one thread per core, which on a shared or busy machine fights the
    other processes: two OpenMP threads on a loaded 2-core machine ran about 10x slower than one.
    """
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # settable once per process, before any inter-op work; intra-op is what matters
        logger.debug("inter-op threads already fixed at %d; left as they are", torch.get_num_interop_threads())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def read_splits(data_dir: Path, max_posts: int | None) -> dict[str, list[Post]]:
    splits = {}
    for split in SPLITS:
        path = data_dir / f"{split}.txt"
        if not path.is_file():
            raise ValueError(f"{data_dir} must hold train.txt, valid.txt and test.txt; {path.name} is missing")
        posts = read_conll(path)
        if not posts:
            raise ValueError(f"{path} holds no posts")
        splits[split] = posts[:max_posts] if max_posts else posts
    return splits


def build_text_encoder(args: TrainArgs, splits: dict[str, list[Post]], config: ModelConfig) -> tuple[TextEncoder, np.ndarray, Any]:
    """Tokenizer + augmentation vocabulary, and the augmentation table (rows, dim)."""
    from mner.train.tokenizer import train_wordpiece

    train_words = [word for post in splits["train"] for word in post.words]
    # Given vectors bring their own size (GloVe 50, word2vec 300, ...): the model's
    # augmentation projection takes it (model_config_for); trained ones have the config's.
    if args.word_vectors is not None:
        vectors = load_word_vectors(args.word_vectors, word_list=args.word_list)
    elif args.word_list is not None:
        raise ValueError(f"--word-list {args.word_list} names the rows of a --word-vectors .npy matrix; none was given")
    else:
        logger.info("training word2vec (%d dims) on the training text for semantic augmentation", config.augmentation_dim)
        vectors = train_word2vec([post.words for post in splits["train"]], dim=config.augmentation_dim, seed=args.seed)
    # Rows for every word of the three splits, as the reference's table: the vectors are
    # unsupervised, so covering dev/test words uses no labels.
    all_words = [word for posts in splits.values() for post in posts for word in post.words]
    table, aug_vocab = build_augmentation_table(vectors, all_words)
    # --max-length, else the preset's: the encoder cuts posts where the model's config says it does
    max_length = args.max_length or config.max_length
    if args.bert is not None:
        encoder = TextEncoder.from_bert_dir(args.bert, aug_vocab=aug_vocab, max_length=max_length)
    else:
        tokenizer = train_wordpiece(train_words, vocab_size=config.vocab_size)
        encoder = TextEncoder(tokenizer, aug_vocab, max_length=max_length)
    return encoder, table, vectors


def build_model(args: TrainArgs, config: ModelConfig) -> MGCMT:
    if args.bert is None:
        return MGCMT(config)
    from transformers import BertModel
    from transformers.utils import logging as transformers_logging

    # transformers prints a progress bar and a table of keys it did not use (the pooler, which
    # is left out on purpose) whatever --no-progress says; one line of ours says what matters.
    verbosity, bars = transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        bert, info = BertModel.from_pretrained(
            str(args.bert), add_pooling_layer=False, attn_implementation="eager", local_files_only=True,
            output_loading_info=True,
        )  # fmt: skip
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()
    unused = [key for key in info["unexpected_keys"] if not key.startswith("pooler.")]
    logger.info("loaded %s: %.1f M parameters%s", args.bert, sum(p.numel() for p in bert.parameters()) / 1e6,
                f"; unused weights {unused[:5]}" if unused else "")  # fmt: skip
    if info["missing_keys"]:
        logger.warning("%s has no weights for %d of BERT's parameters, which start random: %s", args.bert,
                       len(info["missing_keys"]), info["missing_keys"][:5])  # fmt: skip
    return MGCMT(config, bert=bert)


def model_config_for(
    args: TrainArgs, scheme: TagScheme, vocab_size: int, table_rows: int, augmentation_dim: int | None = None
) -> ModelConfig:
    """The model's sizes: the preset's, the pretrained BERT's, and the augmentation table's width."""
    overrides = dict(args.model_overrides)
    if augmentation_dim is not None:
        overrides["augmentation_dim"] = augmentation_dim
    if args.bert is not None:
        from transformers import BertConfig

        bert = BertConfig.from_pretrained(str(args.bert), local_files_only=True)
        if bert.model_type != "bert":
            raise ValueError(f"{args.bert}: config.json says model_type {bert.model_type!r}; --bert needs a BERT")
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps"):  # fmt: skip
            overrides[name] = getattr(bert, name)
        vocab_size = bert.vocab_size
    if args.max_length is not None:
        overrides["max_length"] = args.max_length
    return ModelConfig.preset(
        args.preset,
        vocab_size=vocab_size,
        num_tags=scheme.num_tags,
        augmentation_rows=table_rows,
        **overrides,
    )


def encode_split(
    posts: list[Post], encoder: TextEncoder, scheme: TagScheme, config: ModelConfig, char_vocab: dict[str, int] | None
) -> tuple[list[Example], int]:
    """The split's examples, and how many of its posts were truncated to max_length word-pieces."""
    examples = []
    truncated = 0
    for index, (post, encoded) in enumerate(zip(posts, encoder.encode_many([post.words for post in posts]))):
        tags, aux_tags = label_ids(encoded, post.tags, scheme)
        truncated += int(encoded.truncated)
        examples.append(
            Example(
                input_ids=encoded.input_ids,
                aug_ids=encoded.aug_ids,
                roles=encoded.roles,
                tags=tags,
                aux_tags=aux_tags,
                word_tags=list(post.tags[: encoded.n_words]),
                image_index=index,
                char_ids=char_ids(encoded, post.words, char_vocab, config.max_word_chars) if config.char_cnn else None,
            )
        )
    return examples, truncated


TRUNCATED_IN_TRAINING = "words past the cut are neither trained on nor scored; --max-length raises the limit"
TRUNCATED_IN_EVALUATION = "words past the cut are not scored; the checkpoint's limit was set by mner-train --max-length"


def warn_truncated(counts: dict[str, tuple[int, int]], max_length: int, consequence: str) -> None:
    """One warning for the whole run naming each split (or file) with truncated posts: {name: (truncated, posts)}."""
    shown = [f"{name} {truncated} of {total}" for name, (truncated, total) in counts.items() if truncated]
    if shown:
        logger.warning("posts longer than %d word-pieces were cut at that length (%s): %s", max_length, consequence,
                       ", ".join(shown))  # fmt: skip


def split_features(args: TrainArgs, posts: list[Post], config: ModelConfig) -> Features:
    """Grid and object ids per post, computed once per image and cached on disk (frozen encoders)."""
    if args.images_dir is None:
        return Features.none(len(posts), config.num_objects)
    from mner.train.vision import FeatureCache, GridEncoder, ObjectDetector

    device = resolve_device(args.device)
    grid_encoder = GridEncoder.from_weights(args.resnet_weights, arch=args.grid_arch, seed=args.seed).to(device)
    detector = ObjectDetector.from_weights(args.detector_weights, arch=args.detector, size=args.detector_size,
                                           seed=args.seed).to(device)  # fmt: skip
    cache = FeatureCache(args.feature_cache or args.out_dir / "features", grid_encoder, detector,
                         max_objects=config.num_objects, progress=args.progress)  # fmt: skip
    paths = [args.images_dir / f"{post.image_id}.jpg" if post.image_id else None for post in posts]
    features = cache.get_or_compute(paths)
    # float16 halves the memory of a split's grids (TWITTER-2017 train: 1.4 GB -> 0.7 GB); the model upcasts.
    return Features(features.grid.astype(np.float16), features.grid_mask.astype(np.int64), features.object_ids)


def collate(examples: list[Example], features: Features, config: ModelConfig, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest post of the batch (not to max_length: padding is wasted work)."""
    length = max(len(e.input_ids) for e in examples)
    batch = len(examples)
    input_ids = np.full((batch, length), pad_id, dtype=np.int64)
    attention_mask = np.zeros((batch, length), dtype=np.int64)
    aug_ids = np.zeros((batch, length), dtype=np.int64)
    roles = np.zeros((batch, length), dtype=np.int8)
    tags = np.zeros((batch, length), dtype=np.int64)
    aux_tags = np.zeros((batch, length), dtype=np.int64)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = example.input_ids
        attention_mask[row, :n] = 1
        aug_ids[row, :n] = example.aug_ids
        roles[row, :n] = example.roles
        tags[row, :n] = example.tags
        aux_tags[row, :n] = example.aux_tags
    grid, image_mask, object_ids = features.take([e.image_index for e in examples], config.grid_cells, config.grid_dim)
    batch_chars = {}
    if config.char_cnn:
        chars = np.zeros((batch, length, config.max_word_chars), dtype=np.int64)
        for row, example in enumerate(examples):
            chars[row, : len(example.char_ids)] = example.char_ids
        batch_chars["char_ids"] = torch.from_numpy(chars)
    return {
        **batch_chars,
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "aug_ids": torch.from_numpy(aug_ids),
        "grid": grid,
        "image_mask": image_mask,
        "object_ids": object_ids,
        "tags": torch.from_numpy(tags),
        "aux_tags": torch.from_numpy(aux_tags),
        "roles": torch.from_numpy(roles),
    }


MODEL_INPUTS = ("input_ids", "attention_mask", "aug_ids", "grid", "image_mask", "object_ids")


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    names = MODEL_INPUTS + (("char_ids",) if "char_ids" in batch else ())
    return {name: batch[name].to(device) for name in names}


def bucketed_order(lengths: list[int], batch_size: int, rng: np.random.RandomState, pool: int = 50) -> list[list[int]]:
    """Training batches of similar lengths, in random order.

    Shuffle, sort each pool of `pool` batches' worth of posts by length, cut into batches,
    shuffle the batches: padding (wasted work) drops by about half on TWITTER text while
    every epoch still sees the posts in a fresh random grouping.
    """
    order = rng.permutation(len(lengths))
    chunk = batch_size * pool
    groups = []
    for start in range(0, len(order), chunk):
        pooled = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        groups += [pooled[i : i + batch_size] for i in range(0, len(pooled), batch_size)]
    return [groups[i] for i in rng.permutation(len(groups))]


def batches(examples: list[Example], batch_size: int, order: list[int]) -> Iterator[list[Example]]:
    for start in range(0, len(order), batch_size):
        yield [examples[i] for i in order[start : start + batch_size]]


@torch.no_grad()
def predict(
    model: MGCMT, examples: list[Example], features: Features, scheme: TagScheme, pad_id: int,
    device: torch.device, batch_size: int = 64, progress: bool | None = False, decoding: str = "constrained",
) -> list[list[str]]:  # fmt: skip
    """Word tags for every example, in order (deterministic: eval mode, no sampling).

    decoding: "constrained" (well-formed BIO, what training and the runtime use) or
    "reference" (the authors' unconstrained decode; see mner.runtime.decode).
    """
    was_training = model.training
    model.eval()
    crf = model.crf.host_parameters()
    predictions: list[list[str]] = []
    order = list(range(len(examples)))
    with progress_bar(len(examples), desc="decode", unit="post", enabled=progress is not False, leave=False) as bar:
        for chunk in batches(examples, batch_size, order):
            batch = collate(chunk, features, model.config, pad_id)
            emissions, _ = model(**model_inputs(batch, device))
            lengths = batch["attention_mask"].sum(dim=1).numpy()
            decoded = decode_words(emissions.float().cpu().numpy(), lengths, batch["roles"].numpy(), scheme, crf,
                                   decoding=decoding)  # fmt: skip
            predictions.extend(decoded.word_tags)
            bar.update(len(chunk))
    model.train(was_training)
    return predictions


def f1_of(model, examples, features, scheme, pad_id, device) -> dict[str, Any]:
    predictions = predict(model, examples, features, scheme, pad_id, device)
    return evaluate_entities([e.word_tags for e in examples], predictions)


def optimizer_for(
    model: nn.Module, learning_rate: float, weight_decay: float, bert_learning_rate: float | None = None
) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and norms; BERT's parameters at `bert_learning_rate` when given.

    The first group is always at `learning_rate` (the history's learning_rate reads it).
    """
    groups: dict[tuple[bool, bool], list] = {(bert, decay): [] for bert in (False, True) for decay in (True, False)}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_norm_or_bias = name.endswith("bias") or "LayerNorm" in name or "_norm." in name
        is_bert = bert_learning_rate is not None and name.startswith("bert.")
        groups[(is_bert, not is_norm_or_bias)].append(parameter)
    return torch.optim.AdamW(
        [{"params": params, "weight_decay": weight_decay if decay else 0.0,
          "lr": bert_learning_rate if bert else learning_rate}
         for (bert, decay), params in groups.items() if params or not bert],  # fmt: skip
        lr=learning_rate,
    )


def linear_warmup_decay(optimizer, total_steps: int, warmup_proportion: float) -> torch.optim.lr_scheduler.LambdaLR:
    warmup_steps = max(1, int(total_steps * warmup_proportion))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def train(args: TrainArgs) -> dict[str, Any]:
    """Train into <out_dir>: best.pt, last.pt, history.jsonl, history.png; return the summary (dev/test F1, time)."""
    requested, args = args, args.resolved()
    started = time.perf_counter()
    set_threads(args.threads)
    rank, world = _distributed()
    if rank == 0:
        warn_about_preset(requested)
    device = resolve_device(args.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    seed_everything(args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    splits = read_splits(args.data_dir, args.max_posts)
    scheme = TagScheme.from_bio_tags(tag for posts in splits.values() for post in posts for tag in post.tags)
    probe = ModelConfig.preset(args.preset, **args.model_overrides)
    encoder, table, _ = build_text_encoder(args, splits, probe)
    vocab_size = encoder.tokenizer.get_vocab_size()
    char_vocab = build_char_vocab(word for post in splits["train"] for word in post.words) if probe.char_cnn else None
    config = model_config_for(args, scheme, vocab_size, table.shape[0], augmentation_dim=table.shape[1])
    if config.char_cnn:
        config = dataclasses.replace(config, char_vocab_size=len(SPECIAL_CHARS) + len(char_vocab))
    if config.vocab_size < vocab_size:
        raise ValueError(f"tokenizer has {vocab_size} pieces but the model only {config.vocab_size} embeddings")
    logger.info("tags: %s", scheme.tags)

    seed_everything(args.seed)  # the model's initialisation does not depend on how much the steps above drew
    model = build_model(args, config).to(device)
    if config.augmentation != "none":
        model.set_augmentation_table(torch.from_numpy(table).to(device))
    encoded = {split: encode_split(posts, encoder, scheme, config, char_vocab) for split, posts in splits.items()}
    examples = {split: split_examples for split, (split_examples, _) in encoded.items()}
    if rank == 0:  # once per run, not once per torchrun process
        warn_truncated({split: (truncated, len(splits[split])) for split, (_, truncated) in encoded.items()},
                       encoder.max_length, TRUNCATED_IN_TRAINING)  # fmt: skip
    features = {split: split_features(args, posts, config) for split, posts in splits.items()}
    pad_id = encoder.pad_id

    steps_per_epoch = math.ceil(len(examples["train"]) / args.batch_size) // world
    total_steps = steps_per_epoch * args.epochs
    optimizer = optimizer_for(model, args.learning_rate, args.weight_decay, args.bert_learning_rate)
    scheduler = linear_warmup_decay(optimizer, total_steps, args.warmup_proportion)
    data_hashes = {split: sha256_file(args.data_dir / f"{split}.txt") for split in SPLITS}
    state = {"epoch": 0, "best_dev_f1": -1.0, "history": []}

    last_path, best_path = args.out_dir / "last.pt", args.out_dir / "best.pt"
    history_path, plot_path = args.out_dir / HISTORY_JSONL, args.out_dir / HISTORY_PNG
    if args.resume:
        if not last_path.is_file():
            raise ValueError(f"--resume: {last_path} does not exist; train without --resume first")
        resume_state = torch.load(last_path, map_location=device, weights_only=False)
        if resume_state["data_hashes"] != data_hashes or resume_state["model_config"] != config.to_dict():
            raise ValueError(f"--resume: {last_path} was trained on other data or another model configuration")
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        state = resume_state["progress"]
        random.setstate(resume_state["rng"]["python"])
        np.random.set_state(resume_state["rng"]["numpy"])
        torch.set_rng_state(resume_state["rng"]["torch"])
        logger.info("resuming after epoch %d (best dev F1 %.4f)", state["epoch"], state["best_dev_f1"])
    if rank == 0:
        # From last.pt's records: an epoch logged but not saved before an interruption is run
        # again, and must not be listed twice. A fresh run starts an empty file.
        write_history(history_path, state["history"])
    # Wall time of the epochs before a resume counts in elapsed_s too.
    elapsed_before = state["history"][-1].get("elapsed_s", 0.0) if state["history"] else 0.0

    trained = model
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    train_examples = examples["train"]
    train_lengths = [len(e.input_ids) for e in train_examples]
    for epoch in range(state["epoch"], args.epochs):
        model.train()
        rng = np.random.RandomState(args.seed + epoch)
        # Each rank takes every world-th batch: same batch shapes across ranks, no post seen twice.
        groups = bucketed_order(train_lengths, args.batch_size, rng)
        groups = groups[: len(groups) - len(groups) % world][rank::world]  # equal step counts, or DDP would hang
        losses = []
        epoch_started = time.perf_counter()
        learning_rate = optimizer.param_groups[0]["lr"]
        bar = progress_bar(len(groups), desc=f"epoch {epoch + 1}/{args.epochs}", unit="step",
                           enabled=args.progress is not False and rank == 0, leave=False)  # fmt: skip
        for group in groups:
            chunk = [train_examples[i] for i in group]
            batch = collate(chunk, features["train"], config, pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            emissions, aux_emissions = trained(**model_inputs(batch, device))
            loss = model.loss(emissions, aux_emissions, batch["tags"], batch["aux_tags"], batch["attention_mask"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            learning_rate = optimizer.param_groups[0]["lr"]  # the rate this step used
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        bar.close()
        state["epoch"] = epoch + 1
        if rank == 0:
            dev = f1_of(model, examples["valid"], features["valid"], scheme, pad_id, device)
            now = time.perf_counter()
            micro = dev["micro"]
            record = {"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 6),
                      "dev_precision": round(micro["precision"], 6), "dev_recall": round(micro["recall"], 6),
                      "dev_f1": round(micro["f1"], 6), "learning_rate": learning_rate,
                      "seconds": round(now - epoch_started, 1),
                      "elapsed_s": round(elapsed_before + now - started, 1)}  # fmt: skip
            state["history"].append(record)
            logger.info("epoch %d/%d: loss %.4f, dev P %.4f R %.4f F1 %.4f, lr %.2g, %.0f s", epoch + 1, args.epochs,
                        record["loss"], record["dev_precision"], record["dev_recall"], record["dev_f1"],
                        learning_rate, record["seconds"])  # fmt: skip
            if dev["micro"]["f1"] > state["best_dev_f1"]:
                state["best_dev_f1"] = dev["micro"]["f1"]
                save_checkpoint(best_path, model, scheme, encoder, train_args=args.to_payload(), char_vocab=char_vocab,
                                data_hashes=data_hashes, metrics={"dev": dev, "epoch": epoch + 1})  # fmt: skip
            last_state = {
                "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "progress": state, "data_hashes": data_hashes,
                "model_config": config.to_dict(),
                "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
            }  # fmt: skip
            write_atomically(last_path, lambda file: torch.save(last_state, file))  # same mode as best.pt
            # After last.pt: the file never lists an epoch that --resume would run again.
            append_history(history_path, record)
            plot_history(plot_path, state["history"], title=f"mner-train --preset {args.preset}: {args.out_dir.name}")
        if world > 1:
            torch.distributed.barrier()

    summary: dict[str, Any] = {"history": state["history"], "best_dev_f1": state["best_dev_f1"]}
    if rank == 0:
        best = load_checkpoint(best_path, map_location=device)
        best.model.to(device)
        test = f1_of(best.model, examples["test"], features["test"], scheme, pad_id, device)
        dev = best.payload["metrics"]["dev"]
        summary.update(test=test, dev=dev, best_epoch=best.payload["metrics"]["epoch"])
        save_checkpoint(best_path, best.model, scheme, encoder, train_args=args.to_payload(), data_hashes=data_hashes,
                        char_vocab=char_vocab, metrics={"dev": dev, "test": test, "epoch": summary["best_epoch"]})  # fmt: skip
    summary["elapsed_s"] = round(time.perf_counter() - started, 1)
    summary["rank"] = rank
    if world > 1:
        torch.distributed.barrier()  # the other ranks wait for rank 0's test evaluation
        torch.distributed.destroy_process_group()
    return summary


def evaluate_checkpoint(
    checkpoint_path: Path,
    data_path: Path,
    images_dir: Path | None = None,
    resnet_weights: Path | None = None,
    detector_weights: Path | None = None,
    device: str = "auto",
    decoding: str = "constrained",
    batch_size: int = 64,
    max_posts: int | None = None,
    threads: int | None = None,
    progress: bool | None = True,
) -> dict[str, Any]:
    """Entity-level scores of a checkpoint on one CoNLL + IMGID file (deterministic).

    ``max_posts``: score only the file's first N posts. ``threads``: torch's CPU threads
    (``set_threads``). ``progress``: False shows no progress.

    decoding "constrained" (default): well-formed BIO word tags, scored with conlleval's
    rules, as training and the runtime do. "reference": as the authors' evaluation, to
    check a converted checkpoint against their published figures: unconstrained Viterbi,
    the tag read at each word's first piece whatever it is, seqeval's micro average
    (``metrics.evaluate_reference``), and the words BERT's cleaning empties dropped from
    input and scoring (their tokenize() returns nothing for such a word, so its slot and its
    label vanish). The result says which decoding produced it.
    """
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_posts is not None and max_posts < 1:
        raise ValueError(f"max_posts must be >= 1 (or None for every post), got {max_posts}")
    set_threads(threads)
    torch_device = resolve_device(device)
    checkpoint = load_checkpoint(checkpoint_path, map_location=torch_device)
    model = checkpoint.model.to(torch_device)
    posts = read_conll(data_path)
    if not posts:
        raise ValueError(f"{data_path} holds no posts")
    check_entity_types(posts, checkpoint.scheme.entity_types, str(data_path), f"checkpoint {checkpoint_path}")
    posts = posts[:max_posts] if max_posts else posts
    encoder, config = checkpoint.text_encoder, checkpoint.config
    if decoding == "reference":
        posts = [_without_emptied_words(post, encoder) for post in posts]
    examples = []
    truncated = 0
    for index, (post, encoded) in enumerate(zip(posts, encoder.encode_many([post.words for post in posts]))):
        truncated += int(encoded.truncated)
        unused_labels = np.zeros(len(encoded.input_ids), dtype=np.int64)  # decoding needs no gold label ids
        chars = None
        if config.char_cnn:
            chars = char_ids(encoded, post.words, checkpoint.payload["char_vocab"], config.max_word_chars)
        examples.append(Example(encoded.input_ids, encoded.aug_ids, encoded.roles, unused_labels, unused_labels,
                                list(post.tags[: encoded.n_words]), index, chars))  # fmt: skip
    warn_truncated({str(data_path): (truncated, len(posts))}, encoder.max_length, TRUNCATED_IN_EVALUATION)
    trained_with = checkpoint.payload.get("train_args", {})
    # The frozen encoders must be the ones training saw: same architecture, size and (for random weights) seed.
    args = TrainArgs(data_dir=data_path.parent, out_dir=checkpoint_path.parent, images_dir=images_dir,
                     resnet_weights=resnet_weights, detector_weights=detector_weights, device=device,
                     grid_arch=trained_with.get("grid_arch", "resnet152"),
                     detector=trained_with.get("detector", DEFAULT_DETECTOR),
                     detector_size=trained_with.get("detector_size"),
                     seed=trained_with.get("seed", 42), progress=progress)  # fmt: skip
    features = split_features(args, posts, config)
    predictions = predict(model, examples, features, checkpoint.scheme, encoder.pad_id, torch_device,
                          batch_size=batch_size, progress=progress is not False, decoding=decoding)  # fmt: skip
    score = evaluate_reference if decoding == "reference" else evaluate_entities
    return {**score([e.word_tags for e in examples], predictions), "decoding": decoding}


def _without_emptied_words(post: Post, encoder: TextEncoder) -> Post:
    """The post as the authors' pipeline sees it: without the words BERT's cleaning empties."""
    kept = [i for i, word in enumerate(post.words) if not encoder.cleaning_empties(word)]
    if len(kept) == len(post.words):
        return post
    return dataclasses.replace(post, words=[post.words[i] for i in kept], tags=[post.tags[i] for i in kept])
