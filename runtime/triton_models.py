"""The Python-backend models of a Triton repository written by ``mner-triton`` (``triton_repository``).

- ``StageModel``: one stage (detector, vision or tagger) on mner's own ``OrtRunner``, for a Triton without
  its ONNX Runtime backend (the python flavour).
- ``FrontModel``: the model clients call, ``mner``. It is a ``Pipeline`` (the runtime's splitter,
  tokenizer, picture decoding, object selection, windows, Viterbi and spans: the code ``mner-tag`` and
  ``mner-serve`` run) whose runners are ``BlsRunner``: each stage call is a BLS request to that stage's
  model, wherever Triton runs it (the python flavour's ``StageModel``, or Triton's ONNX Runtime or
  TensorRT backend in the native flavour). The pipeline runs detector and vision in two threads, so their
  BLS requests are in flight together; then the tagger.

Both import ``triton_python_backend_utils`` (which exists only inside Triton's Python-backend stub) when
Triton calls them, so this module imports anywhere. Each model's ``model.py`` (written by
``triton_repository``) names one of them, after putting the server's ``PYTHONPATH`` in front of
``sys.path``: the stub embeds Python with a configuration that ignores that variable.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mner.runtime.bundle import Bundle, BundleError, StageInfo, manifest_sha256, read_manifest, sha256_file, stage_info
from mner.runtime.pipeline import TAGGING_FAILED, Pipeline
from mner.runtime.runners import OrtRunner, Runner
from mner.runtime.triton_repository import BUNDLE_DIR


logger = logging.getLogger(__name__)



def _utils():
    import triton_python_backend_utils as pb_utils  # noqa: PLC0415 -- exists only inside Triton's Python backend

    return pb_utils


def _config(args: dict[str, str]) -> tuple[dict[str, Any], dict[str, str], Path]:
    """(the model's config, its string parameters, its version folder) from Triton's initialize() args."""
    config = json.loads(args["model_config"])
    parameters = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
    version = Path(args["model_repository"]) / args["model_version"]
    return config, parameters, version


def _check_file(path: Path, manifest: dict[str, Any], name: str, where: str) -> None:
    """``path`` holds the bundle's file ``name``: its sha256 is the manifest's, or BundleError naming both."""
    entry = manifest.get("files", {}).get(name)
    if not isinstance(entry, dict):
        raise BundleError(f"{where}: the manifest lists no file {name!r}; write the repository again with mner-triton")
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
        raise BundleError(f"{path}: sha256 {digest}, the bundle's manifest says {entry.get('sha256')} for {name}; "
                          "the repository was changed or copied incompletely: write it again with mner-triton")  # fmt: skip


def _error_response(message: str, invalid: bool = False):
    """A request's error: ``invalid`` for the request's own fault (HTTP 400 / gRPC INVALID_ARGUMENT), else
    internal (500), as mner-serve tells a post's problem from a failure of tagging."""
    pb_utils = _utils()
    code = pb_utils.TritonError.INVALID_ARG if invalid else pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


# ----------------------------------------------------------------------------- stage models


class StageModel:
    """A stage graph in mner's OrtRunner. Each execute() gets the requests Triton's dynamic batcher
    gathered; requests whose shapes agree (one sequence length, say) run as one call."""

    def initialize(self, args: dict[str, str]) -> None:
        config, parameters, version = _config(args)
        manifest = read_manifest(version)  # the bundle's manifest, copied beside the graph
        if manifest_sha256(version) != parameters.get("mner_bundle_sha256"):
            raise BundleError(f"{version}/manifest.json is not the manifest of the bundle this repository was written "
                              "from; write the repository again with mner-triton")  # fmt: skip
        name, graph_file = parameters["mner_stage"], parameters["mner_file"]
        graph = version / "model.onnx"  # triton_repository writes it there (model.py is the model's file)
        _check_file(graph, manifest, graph_file, str(version))
        stage = stage_info(version, name, manifest["stages"][name])
        self.batch = int(config["max_batch_size"])
        self.runner = OrtRunner(stage.with_axes({"batch": (1, self.batch)}), graph).activate()
        self.stage = self.runner.stage
        logger.info("stage model %s: %s in ONNX Runtime, up to %d rows a call", name, graph_file, self.batch)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb_utils = _utils()
        feeds = []
        for request in requests:
            feed = {}
            for tensor in self.stage.inputs:
                value = pb_utils.get_input_tensor_by_name(request, tensor.name).as_numpy()
                # (batch, 1) for a per-row scalar whose config reshape Triton may not have applied
                feed[tensor.name] = value.reshape(value.shape[: len(tensor.shape)]) if value.ndim > len(tensor.shape) else value
            feeds.append(feed)
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for k, feed in enumerate(feeds):
            groups.setdefault(tuple((n, a.shape[1:], a.dtype.str) for n, a in feed.items()), []).append(k)
        for members in groups.values():
            # requests of one shape, joined up to max_batch_size rows a call
            chunks: list[list[int]] = [[]]
            rows = 0
            for k in members:
                size = len(next(iter(feeds[k].values())))
                if chunks[-1] and rows + size > self.batch:
                    chunks.append([])
                    rows = 0
                chunks[-1].append(k)
                rows += size
            for chunk in chunks:
                self._run(chunk, feeds, responses, pb_utils)
        return responses

    def _run(self, chunk: list[int], feeds: list[dict[str, np.ndarray]], responses: list[Any], pb_utils: Any) -> None:
        try:
            joined = {name: np.concatenate([feeds[k][name] for k in chunk]) for name in feeds[chunk[0]]}
            outputs = self.runner.infer(joined)
        except Exception as error:  # noqa: BLE001 -- each request of the call gets it as its error
            logger.warning("stage %s failed on %d requests", self.stage.name, len(chunk), exc_info=error)
            for k in chunk:
                responses[k] = _error_response(f"stage {self.stage.name}: {type(error).__name__}: {error}")
            return
        start = 0
        for k in chunk:
            size = len(next(iter(feeds[k].values())))
            responses[k] = pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, np.ascontiguousarray(array[start : start + size])) for name, array in outputs.items()]
            )
            start += size

    def finalize(self) -> None:
        self.runner.deactivate()


# ----------------------------------------------------------------------------- front model


class BlsRunner(Runner):
    """A stage run by another model of the same Triton, through a BLS request (``InferenceRequest.exec``).
    Safe to call from two threads at once (the pipeline's detector and vision): each call is its own request."""

    backend = "triton"

    def __init__(self, stage: StageInfo, model: str) -> None:
        super().__init__(stage)
        self.model = model

    def _activate(self) -> None:
        pass  # the stage model's instances are Triton's

    def _deactivate(self) -> None:
        pass

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pb_utils = _utils()
        # a per-row scalar (image_mask) travels as (batch, 1): the stage's config reshapes it (triton_repository)
        inputs = [pb_utils.Tensor(name, array.reshape(-1, 1) if array.ndim == 1 else array) for name, array in feed.items()]
        request = pb_utils.InferenceRequest(model_name=self.model, inputs=inputs,
                                            requested_output_names=list(self.stage.output_names))  # fmt: skip
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"stage model {self.model}: {response.error().message()}")
        outputs = {}
        for tensor in self.stage.outputs:
            value = pb_utils.get_output_tensor_by_name(response, tensor.name)
            if value is None:
                raise RuntimeError(f"stage model {self.model} answered without output {tensor.name}")
            outputs[tensor.name] = np.array(value.as_numpy(), copy=True)  # the response's memory goes with it
        return outputs


class FrontModel:
    """TEXT (UTF-8) and optional IMAGE (an encoded picture; empty bytes: none) -> ENTITIES, the JSON that
    mner-serve's /v1/tag answers ({"entities", "objects"[, "image_error"]}). A request of several rows is
    several posts; a post that cannot be tagged makes its request an error naming the post and why."""

    def initialize(self, args: dict[str, str]) -> None:
        config, parameters, version = _config(args)
        bundle = Bundle.open(version / BUNDLE_DIR, verify=True)  # every file's sha256 against the manifest
        if manifest_sha256(bundle.path) != parameters.get("mner_bundle_sha256"):
            raise BundleError(f"{bundle.path} is not the bundle this repository was written from; write it again "
                              "with mner-triton")  # fmt: skip
        self._check_stage_models(bundle, Path(args["model_repository"]).parent, json.loads(parameters["mner_stage_files"]))
        self.batch = int(config["max_batch_size"])
        self.max_text_chars = int(parameters["max_text_chars"])
        runners = {name: BlsRunner(stage.with_axes({"batch": (1, self.batch)}), name) for name, stage in bundle.stages.items()}
        self.pipeline = Pipeline.from_runners(bundle, runners, batch_size=self.batch)
        self.has_images = bundle.has_images
        logger.info("front model: bundle %s, stages %s, up to %d posts a call", bundle.path, sorted(runners), self.batch)

    @staticmethod
    def _check_stage_models(bundle: Bundle, repository: Path, served: dict[str, list[str]]) -> None:
        """The stage models beside this one serve the bundle's files (where they are on this disk: a
        repository on object storage is fetched model by model, and those models check themselves)."""
        for name, (bundle_file, filename) in served.items():
            path = repository / name / "1" / filename
            if path.is_file():
                _check_file(path, bundle.manifest, bundle_file, str(repository / name))
            else:
                logger.info("stage model %s: %s is not on this disk; not checked here", name, path)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb_utils = _utils()
        posts: list[dict[str, Any]] = []
        spans: list[tuple[int, int] | str] = []  # per request: its posts' slice, or its error
        for request in requests:
            try:
                texts = self._texts(pb_utils.get_input_tensor_by_name(request, "TEXT"))
                images = self._images(pb_utils.get_input_tensor_by_name(request, "IMAGE"), len(texts))
            except ValueError as error:
                spans.append(str(error))
                continue
            spans.append((len(posts), len(posts) + len(texts)))
            posts += [{"text": t, "image": i} if i is not None else {"text": t} for t, i in zip(texts, images)]
        try:
            results = self.pipeline.tag(posts) if posts else []
        except Exception as error:  # noqa: BLE001 -- every request of this call gets it; the server goes on
            logger.exception("tagging %d posts failed", len(posts))
            return [_error_response(f"tagging failed: {type(error).__name__}: {error}") for _ in requests]
        responses = []
        for span in spans:
            if isinstance(span, str):
                responses.append(_error_response(span, invalid=True))
                continue
            mine = results[span[0] : span[1]]
            bad = [(k, r.error) for k, r in enumerate(mine) if not r.ok]
            if bad:
                k, error = bad[0]
                where = "the post" if len(mine) == 1 else f"post {k} of {len(mine)}"
                more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
                responses.append(_error_response(f"{where}: {error}{more}", invalid=not error.startswith(TAGGING_FAILED)))
                continue
            records = [json.dumps(r.to_dict(), ensure_ascii=False).encode() for r in mine]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("ENTITIES", np.array(records, dtype=np.object_).reshape(-1, 1))]))
        return responses

    def _texts(self, tensor: Any) -> list[str]:
        rows = tensor.as_numpy().reshape(-1)
        texts = []
        for k, raw in enumerate(rows):
            where = "TEXT" if len(rows) == 1 else f"TEXT[{k}]"
            if not isinstance(raw, bytes):
                raise ValueError(f"{where}: expected BYTES, got {type(raw).__name__}")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{where} is not UTF-8 text ({error.reason} at byte {error.start}); send the post's "
                                 "text encoded as UTF-8") from None  # fmt: skip
            if len(text) > self.max_text_chars:
                raise ValueError(f"{where} has {len(text)} characters, over the limit of {self.max_text_chars}")
            texts.append(text)
        return texts

    def _images(self, tensor: Any, count: int) -> list[bytes | None]:
        if tensor is None:
            return [None] * count
        rows = tensor.as_numpy().reshape(-1)
        if len(rows) != count:
            raise ValueError(f"IMAGE has {len(rows)} rows and TEXT {count}: one picture (or empty bytes) per post")
        return [bytes(raw) if len(raw) else None for raw in rows]

    def finalize(self) -> None:
        self.pipeline.close()
