"""Runners: one interface over ONNX Runtime, TensorRT and the PyTorch reference.

Every backend is a ``Runner`` (Polygraphy's shape): ``activate()`` loads what it
needs, ``infer(feed)`` runs one batch, ``deactivate()`` frees it; a runner is also a
context manager. The public ``infer`` checks the feed against the stage's manifest
entry -- every input present and nothing else, dtypes, fixed dimensions, dynamic
axes consistent across inputs and within the bounds the graph or engine takes --
and raises one ``ValueError`` listing every problem. Subclasses only implement
``_activate``, ``_infer`` and ``_deactivate``.

* ``OrtRunner``: ONNX Runtime; CPU, or ``device="cuda"`` through the CUDA execution
  provider (onnxruntime-gpu) with IO binding. Its session options are an ``OrtSettings``,
  ``DEFAULT_ORT_SETTINGS`` unless given: the one place to change what every ONNX Runtime
  session of the runtime gets (``python -m mner.benchmarks.ort_settings`` measures the choices).
* ``TrtRunner``: a serialized TensorRT engine (TensorRT 10.12+ / 11 tensor API:
  ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``), device memory
  through cuda-python (``cuda.bindings``); both imported on ``activate``.
* ``TorchRunner``: a PyTorch module, the reference; torch is imported on use only.
  ``torch_modules`` rebuilds a bundle's stages from the checkpoint and the vision /
  detector weights the manifest identifies.

Nothing here imports torch, tensorrt or cuda at module level.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from mner.runtime.bundle import Bundle, BundleError, StageInfo, sha256_file

logger = logging.getLogger(__name__)

BACKENDS = ("ort", "trt", "torch")


class Runner(abc.ABC):
    """One stage on one backend. ``with runner: outputs = runner.infer(feed)``."""

    backend = ""

    def __init__(self, stage: StageInfo) -> None:
        self.stage = stage
        self._active = False

    @property
    def is_active(self) -> bool:
        return self._active

    def activate(self) -> Runner:
        if not self._active:
            self._activate()
            self._active = True
        return self

    def deactivate(self) -> None:
        if self._active:
            self._active = False
            self._deactivate()

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc_info) -> None:
        self.deactivate()

    def axis_bounds(self, axis: str) -> tuple[int, int]:
        """(min, max) size of a dynamic axis this runner takes."""
        return self.stage.axes[axis]

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: ``feed`` maps every input name to an array; returns every output by name."""
        if not self._active:
            raise RuntimeError(f"{type(self).__name__}({self.stage.name}) is not active: call activate() or use `with`")
        arrays, sizes = check_feed(self.stage, feed)
        outputs = self._infer(arrays)
        _check_outputs(self, outputs, sizes)
        return outputs

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.stage.name}, {'active' if self._active else 'inactive'})"

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...


def check_feed(stage: StageInfo, feed: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """(C-contiguous arrays in the stage's input order, sizes of its dynamic axes), or ValueError listing every problem."""
    if not isinstance(feed, Mapping):
        raise ValueError(f"stage {stage.name}: the feed must map input names to arrays, got {type(feed).__name__}")
    problems = []
    missing = [name for name in stage.input_names if name not in feed]
    unexpected = sorted(set(feed) - set(stage.input_names))
    if missing:
        problems.append(f"missing inputs {missing}")
    if unexpected:
        problems.append(f"unexpected inputs {unexpected}")
    arrays: dict[str, np.ndarray] = {}
    sizes: dict[str, int] = {}
    first_seen: dict[str, str] = {}
    for tensor in stage.inputs:
        if tensor.name not in feed:
            continue
        value = feed[tensor.name]
        if not isinstance(value, np.ndarray):
            problems.append(f"{tensor.name}: expected a numpy array, got {type(value).__name__}")
            continue
        if value.dtype != np.dtype(tensor.dtype):
            problems.append(f"{tensor.name}: dtype {value.dtype}, expected {tensor.dtype}")
        if value.ndim != len(tensor.shape):
            problems.append(f"{tensor.name}: shape {value.shape}, expected {len(tensor.shape)} dimensions {tensor.shape}")
            continue
        for position, (size, expected) in enumerate(zip(value.shape, tensor.shape)):
            if isinstance(expected, int):
                if size != expected:
                    problems.append(f"{tensor.name}: dimension {position} is {size}, expected {expected} (shape {tensor.shape})")
                continue
            low, high = stage.axes[expected]
            if expected in sizes and sizes[expected] != size:
                problems.append(f"{tensor.name}: axis {expected!r} is {size} but {sizes[expected]} in {first_seen[expected]}")
            elif not low <= size <= high:
                problems.append(f"{tensor.name}: axis {expected!r} is {size}, outside [{low}, {high}]")
            sizes.setdefault(expected, size)
            first_seen.setdefault(expected, tensor.name)
        arrays[tensor.name] = np.ascontiguousarray(value)
    if problems:
        signature = ", ".join(t.describe() for t in stage.inputs)
        raise ValueError(f"stage {stage.name}: the inputs do not match the manifest ({signature}):\n  " + "\n  ".join(problems))
    return arrays, sizes


def _check_outputs(runner: Runner, outputs: Mapping[str, np.ndarray], sizes: Mapping[str, int]) -> None:
    """The backend returned what the manifest declares (a wrong graph or engine shows here, not downstream)."""
    stage = runner.stage
    problems = []
    if set(outputs) != set(stage.output_names):
        problems.append(f"outputs {sorted(outputs)}, expected {list(stage.output_names)}")
    for tensor in stage.outputs:
        value = outputs.get(tensor.name)
        if value is None:
            continue
        expected = tuple(sizes.get(d, -1) if isinstance(d, str) else d for d in tensor.shape)
        shape_ok = value.ndim == len(expected) and all(e in (-1, s) for s, e in zip(value.shape, expected))
        if value.dtype != np.dtype(tensor.dtype) or not shape_ok:
            problems.append(f"{tensor.name}: {value.dtype} {value.shape}, expected {tensor.describe()}")
    if problems:
        raise RuntimeError(f"{runner!r} returned outputs that differ from the manifest: " + "; ".join(problems))


# --------------------------------------------------------------------------- ONNX Runtime

GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "layout", "all")  # ort.GraphOptimizationLevel.ORT_*
EXECUTION_MODES = ("sequential", "parallel")  # ort.ExecutionMode.ORT_*: parallel runs independent nodes at once


@dataclass(frozen=True)
class OrtSettings:
    """The ONNX Runtime session options a runner sets. The defaults are ONNX Runtime's own, what the
    runtime has always run with: ``benchmarks/ort_settings.py`` measures each alternative on the tagger
    (TWITTER-2017, batch 8) and says which, if any, to put in ``DEFAULT_ORT_SETTINGS``."""

    intra_op_threads: int | None = None  # threads inside an operator; None: one per physical core
    inter_op_threads: int | None = None  # threads across operators (execution_mode "parallel" only); None: ORT's
    execution_mode: str = "sequential"
    allow_spinning: bool = True  # idle pool threads spin a while for the next op (session.intra_op.allow_spinning)
    memory_arena: bool = True  # enable_cpu_mem_arena: reuse freed blocks
    memory_pattern: bool = True  # enable_mem_pattern: plan a shape's allocations once, reuse the plan
    graph_optimization: str = "all"

    def __post_init__(self) -> None:
        for name in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None (ONNX Runtime's default), got {value!r}")
        if self.execution_mode not in EXECUTION_MODES:
            raise ValueError(f"execution_mode must be one of {EXECUTION_MODES}, got {self.execution_mode!r}")
        if self.graph_optimization not in GRAPH_OPTIMIZATIONS:
            raise ValueError(f"graph_optimization must be one of {GRAPH_OPTIMIZATIONS}, got {self.graph_optimization!r}")
        for name in ("allow_spinning", "memory_arena", "memory_pattern"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def replace(self, **changes: Any) -> OrtSettings:
        return dataclasses.replace(self, **changes)

    def session_options(self, ort: Any) -> Any:
        """These settings as an ``ort.SessionOptions`` (``ort``: the onnxruntime module)."""
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: FP16 graphs make CPU sessions insert casts, expectedly
        if self.intra_op_threads is not None:
            options.intra_op_num_threads = self.intra_op_threads
        if self.inter_op_threads is not None:
            options.inter_op_num_threads = self.inter_op_threads
        options.execution_mode = getattr(ort.ExecutionMode, f"ORT_{self.execution_mode.upper()}")
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "1" if self.allow_spinning else "0")
        options.enable_cpu_mem_arena = self.memory_arena
        options.enable_mem_pattern = self.memory_pattern
        level = "ORT_DISABLE_ALL" if self.graph_optimization == "disable" else f"ORT_ENABLE_{self.graph_optimization.upper()}"
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        return options


DEFAULT_ORT_SETTINGS = OrtSettings()  # what every OrtRunner gets unless told otherwise


class OrtRunner(Runner):
    """An ONNX graph in ONNX Runtime: ``device="cpu"``, or ``"cuda"`` (onnxruntime-gpu, IO binding).

    ``settings``: the session options (``DEFAULT_ORT_SETTINGS`` by default); ``threads``, where
    given, replaces their intra-op threads (mner-tag's and mner-serve's ``--threads``)."""

    backend = "ort"

    def __init__(self, stage: StageInfo, graph: str | os.PathLike, *, device: str = "cpu", device_id: int = 0,
                 threads: int | None = None, settings: OrtSettings | None = None) -> None:  # fmt: skip
        super().__init__(stage)
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int or None (ONNX Runtime's default), got {threads!r}")
        if settings is not None and not isinstance(settings, OrtSettings):
            raise ValueError(f"settings must be an OrtSettings or None, got {type(settings).__name__}")
        self.graph = Path(graph)
        self.device = device
        self.device_id = device_id
        self.settings = settings if settings is not None else DEFAULT_ORT_SETTINGS
        if threads is not None:
            self.settings = self.settings.replace(intra_op_threads=threads)
        self.threads = self.settings.intra_op_threads
        self.session = None

    def _activate(self) -> None:
        import onnxruntime as ort  # noqa: PLC0415 -- a heavy import, paid only by runners in use

        if self.device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(
                f"device='cuda' needs onnxruntime-gpu (the CUDA execution provider); this onnxruntime "
                f"{ort.__version__} offers {ort.get_available_providers()}. `pip uninstall onnxruntime && "
                "pip install onnxruntime-gpu`, or run on the CPU."
            )
        if not self.graph.is_file():
            raise BundleError(f"{self.graph}: no such ONNX graph")
        options = self.settings.session_options(ort)
        providers = (
            [("CUDAExecutionProvider", {"device_id": self.device_id}), "CPUExecutionProvider"]
            if self.device == "cuda"
            else ["CPUExecutionProvider"]
        )
        session = ort.InferenceSession(str(self.graph), sess_options=options, providers=providers)
        graph_inputs = [i.name for i in session.get_inputs()]
        graph_outputs = [o.name for o in session.get_outputs()]
        if sorted(graph_inputs) != sorted(self.stage.input_names) or not set(self.stage.output_names) <= set(graph_outputs):
            raise BundleError(f"{self.graph}: graph inputs {graph_inputs} / outputs {graph_outputs} differ from the "
                              f"manifest's {list(self.stage.input_names)} / {list(self.stage.output_names)}")  # fmt: skip
        self._ort = ort
        self.session = session

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = list(self.stage.output_names)
        if self.device == "cpu":
            return dict(zip(names, self.session.run(names, feed)))
        binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_ortvalue_input(name, self._ort.OrtValue.ortvalue_from_numpy(array, "cuda", self.device_id))
        for name in names:
            binding.bind_output(name, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu()))

    def _deactivate(self) -> None:
        self.session = None


# --------------------------------------------------------------------------- TensorRT


def _cudart():
    """cuda-python's runtime module (``cuda.bindings.runtime``; ``cuda.cudart`` before cuda-python 12.6)."""
    try:
        from cuda.bindings import runtime  # noqa: PLC0415
    except ImportError:
        try:
            from cuda import cudart as runtime  # noqa: PLC0415
        except ImportError as error:
            raise RuntimeError(f"the TensorRT backend needs cuda-python (`pip install cuda-python`): {error}") from None
    return runtime


def _cuda_call(result):
    """cuda-python returns (error, *values): raise on an error, return the values."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        cudart = _cudart()
        _, name = cudart.cudaGetErrorName(error)
        raise RuntimeError(f"CUDA error {int(error)} ({name.decode() if isinstance(name, bytes) else name})")
    return values[0] if len(values) == 1 else tuple(values)


def tensorrt_machine(device_id: int = 0) -> tuple[str, str, str]:
    """(GPU name, compute capability "9.0", TensorRT version) of this machine, what Bundle.engine_for compares."""
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError as error:
        raise RuntimeError(
            "--backend trt needs TensorRT 10.12 or newer: `pip install --extra-index-url https://pypi.nvidia.com "
            f"tensorrt` on a machine with an NVIDIA GPU ({error}); or use --backend ort"
        ) from None
    cudart = _cudart()
    count = _cuda_call(cudart.cudaGetDeviceCount())
    if device_id >= count:
        raise RuntimeError(f"CUDA device {device_id} does not exist ({count} visible)")
    props = _cuda_call(cudart.cudaGetDeviceProperties(device_id))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00"), f"{props.major}.{props.minor}", trt.__version__


def profile_axes(stage: StageInfo, profiles: list[dict[str, dict[str, list[int]]]]) -> dict[str, tuple[int, int]]:
    """Dynamic-axis bounds an engine's (first) optimisation profile allows."""
    axes: dict[str, tuple[int, int]] = {}
    if not profiles:
        return axes
    for tensor in stage.inputs:
        shapes = profiles[0].get(tensor.name)
        if shapes is None:
            continue
        for position, axis in enumerate(tensor.shape):
            if isinstance(axis, str):
                low, high = shapes["min"][position], shapes["max"][position]
                old = axes.get(axis, (low, high))
                axes[axis] = (max(low, old[0]), min(high, old[1]))
    return axes


class _DeviceBuffer:
    """Device memory that grows on demand and frees itself."""

    def __init__(self, cudart) -> None:
        self.cudart = cudart
        self.pointer = 0
        self.capacity = 0

    def reserve(self, nbytes: int) -> int:
        if nbytes > self.capacity:
            self.free()
            self.pointer = _cuda_call(self.cudart.cudaMalloc(max(nbytes, 1)))
            self.capacity = max(nbytes, 1)
        return int(self.pointer)

    def free(self) -> None:
        if self.pointer:
            self.cudart.cudaFree(self.pointer)
            self.pointer, self.capacity = 0, 0


class TrtRunner(Runner):
    """A serialized TensorRT engine (one optimisation profile) on one GPU."""

    backend = "trt"

    def __init__(self, stage: StageInfo, plan: str | os.PathLike, profiles: list, *, device_id: int = 0) -> None:
        super().__init__(stage.with_axes(profile_axes(stage, profiles)))
        self.plan = Path(plan)
        self.device_id = device_id

    def _activate(self) -> None:
        import tensorrt as trt  # noqa: PLC0415

        cudart = _cudart()
        _cuda_call(cudart.cudaSetDevice(self.device_id))
        self._trt, self._cudart = trt, cudart
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self._engine is None:
            raise BundleError(f"{self.plan}: TensorRT {trt.__version__} could not deserialize the engine (see its log)")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if sorted(inputs) != sorted(self.stage.input_names) or sorted(set(names) - set(inputs)) != sorted(self.stage.output_names):
            raise BundleError(f"{self.plan}: engine tensors {names} differ from the manifest's stage {self.stage.name}")
        self._context = self._engine.create_execution_context()
        self._stream = _cuda_call(cudart.cudaStreamCreate())
        self._buffers = {name: _DeviceBuffer(cudart) for name in names}

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt, cudart, context = self._trt, self._cudart, self._context
        host_to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        device_to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, array in feed.items():
            context.set_input_shape(name, array.shape)
            pointer = self._buffers[name].reserve(array.nbytes)
            _cuda_call(cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, host_to_device, self._stream))
            context.set_tensor_address(name, pointer)
        outputs = {}
        for name in self.stage.output_names:
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            outputs[name] = np.empty(tuple(context.get_tensor_shape(name)), dtype=dtype)
            context.set_tensor_address(name, self._buffers[name].reserve(outputs[name].nbytes))
        if not context.execute_async_v3(self._stream):
            raise RuntimeError(f"{self!r}: TensorRT execute_async_v3 failed (see its log)")
        for name, array in outputs.items():
            _cuda_call(cudart.cudaMemcpyAsync(array.ctypes.data, self._buffers[name].pointer, array.nbytes,
                                              device_to_host, self._stream))  # fmt: skip
        _cuda_call(cudart.cudaStreamSynchronize(self._stream))
        return outputs

    def _deactivate(self) -> None:
        for buffer in self._buffers.values():
            buffer.free()
        self._cudart.cudaStreamDestroy(self._stream)
        self._context = self._engine = self._runtime = None


# --------------------------------------------------------------------------- PyTorch


class TorchRunner(Runner):
    """A PyTorch module as a runner (the reference). ``module(*inputs in manifest order)`` gives the
    outputs in manifest order (a tensor or a tuple); ``select`` picks them from a richer return value."""

    backend = "torch"

    def __init__(self, stage: StageInfo, module: Any, *, device: str = "cpu",
                 select: Callable[[Any], tuple] | None = None) -> None:  # fmt: skip
        super().__init__(stage)
        self.module = module
        self.device = device
        self.select = select

    def _activate(self) -> None:
        import torch  # noqa: PLC0415

        self._torch = torch
        self.module = self.module.to(self.device).eval()

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            tensors = [torch.from_numpy(feed[name]).to(self.device) for name in self.stage.input_names]
            result = self.module(*tensors)
        if self.select is not None:
            result = self.select(result)
        if isinstance(result, torch.Tensor):
            result = (result,)
        return {name: value.detach().cpu().numpy() for name, value in zip(self.stage.output_names, result)}

    def _deactivate(self) -> None:
        self.module = self.module.to("cpu")


def torch_runners(
    bundle: Bundle,
    *,
    checkpoint: str | os.PathLike | None,
    resnet_weights: str | os.PathLike | None = None,
    detector_weights: str | os.PathLike | None = None,
    device: str = "cpu",
) -> dict[str, TorchRunner]:
    """The bundle's stages as PyTorch modules, rebuilt from what the manifest says they were exported from.

    The tagger comes from ``checkpoint`` (its sha256 must be the manifest's); vision and
    detector from their weight files, or from the seed the manifest records for random
    weights. Each rebuilt module's weight identity must equal the manifest's.
    """
    import importlib  # noqa: PLC0415

    recorded = bundle.manifest["model"]["checkpoint"]
    if checkpoint is None:
        raise ValueError(f"the torch backend rebuilds the model from the checkpoint the bundle was exported from "
                         f"({recorded['file']}, sha256 {recorded['sha256']}): pass checkpoint=PATH (--checkpoint)")  # fmt: skip
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ValueError(f"checkpoint {checkpoint}: no such file")
    digest = sha256_file(checkpoint)
    if digest != recorded["sha256"]:
        raise ValueError(f"checkpoint {checkpoint} has sha256 {digest}; the bundle was exported from "
                         f"{recorded['file']} with sha256 {recorded['sha256']}")  # fmt: skip
    load_checkpoint = importlib.import_module("mner.train.checkpoint").load_checkpoint
    vision_module = importlib.import_module("mner.train.vision")

    runners = {"tagger": TorchRunner(bundle.stages["tagger"], load_checkpoint(checkpoint).model, device=device,
                                     select=lambda outputs: outputs[:1])}  # fmt: skip
    paths = {"vision": resnet_weights, "detector": detector_weights}
    options = {"vision": "resnet_weights (--resnet-weights)", "detector": "detector_weights (--detector-weights)"}
    for name in ("vision", "detector"):
        if name not in bundle.stages:
            continue
        stage = bundle.stages[name]
        weights = stage.weights
        path = paths[name]
        if weights.get("source") == "file" and path is None:
            raise ValueError(f"the bundle's {name} stage was exported from the weights file {weights.get('file')} "
                             f"(sha256 {weights.get('sha256')}): pass {options[name]}")  # fmt: skip
        if weights.get("source") == "random":
            path = None
        if name == "vision":
            module = vision_module.GridEncoder.from_weights(path, arch=weights["arch"], seed=weights.get("seed", 0))
        else:
            module = vision_module.ObjectDetector.from_weights(  # a bundle without "arch" predates the choice
                path, arch=weights.get("arch", "retinanet_resnet50_fpn_v2"), size=stage.facts["size"],
                top_k=stage.facts["top_k"], seed=weights.get("seed", 0),
            )  # fmt: skip
        if module.weights_identity != weights.get("identity"):
            raise ValueError(f"the {name} weights given are {module.weights_identity}; the bundle was exported "
                             f"from {weights.get('identity')}")  # fmt: skip
        runners[name] = TorchRunner(stage, module, device=device)
    return runners
