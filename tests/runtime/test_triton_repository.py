"""mner-triton without a server: the repository writer (runtime/triton_repository.py) and its command
(runtime/triton_cli.py).

Every config.pbtxt is parsed with Triton's own ``ModelConfig`` schema (tritonclient's model_config_pb2) and
checked against the bundle's manifest; the files each model folder holds are compared with the bundle's;
every refusal has its message; the command's defaults are the library's. test_triton_server.py loads the
repositories in a real Triton.

The bundles are the session's tiny one (``exported_once``: detector, vision, tagger, FP32), the tagger-only
``tagger_bundle``, and hard-linked copies of the tiny one given an INT8 tagger, FP16 graphs or a folder of
TensorRT engines: copies of the FP32 graph (or a few bytes standing for a plan) listed in the manifest. What
the writer serves and declares depends on the manifest and the files, not on the graphs' numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from mner.runtime import triton_cli, triton_models, triton_repository
from mner.runtime.bundle import Bundle, BundleError, TensorInfo, sha256_file
from mner.runtime.triton_cli import triton_command
from mner.runtime.triton_repository import RepositoryOptions, write_repository

STAGES = ("detector", "vision", "tagger")
TRITON_CLIENT = "pip install 'tritonclient[http]'"
ENGINES = "nvidia-h100-80gb-hbm3-trt10.13.0"  # a folder name as mner-export --trt names one
ENGINE_ROWS = 64  # the largest batch of the stand-in engines' profiles
INT8_GUARD = {"passed": True, "data": {"source": "test.txt", "posts": 6, "words": 52, "pictures": False},
              "word_agreement": 0.995, "entity_f1": {"fp32": 0.8, "int8": 0.799}, "f1_drop_points": 0.1,
              "limits": {"min_word_agreement": 0.99, "max_f1_drop_points": 0.5}}  # fmt: skip


# ----------------------------------------------------------------------------- bundles


def linked_copy(bundle: Path, target: Path) -> Path:
    """A copy sharing the files' inodes: a file to change is replaced (``replace_file``), never edited in place."""
    shutil.copytree(bundle, target, copy_function=os.link)
    return target


def replace_file(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def change_manifest(bundle: Path, change) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    replace_file(bundle / "manifest.json", json.dumps(manifest).encode())


def add_file(bundle: Path, manifest: dict, name: str, data: bytes) -> None:
    path = bundle / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    manifest["files"][name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def with_graphs(source: Path, target: Path, precision: str, stages, entry: dict) -> Path:
    """A linked copy of ``source`` whose ``stages`` have a ``precision`` graph: a copy of their FP32 graph."""
    linked_copy(source, target)

    def add(manifest):
        for name in stages:
            graphs = manifest["stages"][name]["graphs"]
            data = (target / graphs["fp32"]["file"]).read_bytes()
            add_file(target, manifest, f"{name}.{precision}.onnx", data)
            graphs[precision] = {"file": f"{name}.{precision}.onnx", **entry}

    change_manifest(target, add)
    return target


def with_engines(source: Path, target: Path, stages=STAGES, rows: int = ENGINE_ROWS) -> Path:
    """A linked copy of ``source`` with an engines folder ``ENGINES`` holding a stand-in plan for ``stages``
    whose one profile takes ``rows`` rows."""
    linked_copy(source, target)
    opened = Bundle.open(source)
    identity = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "tensorrt": "10.13.0"}
    folder = f"engines/{ENGINES}"

    def add(manifest):
        entries = {}
        for name in stages:
            add_file(target, manifest, f"{folder}/{name}.plan", f"a {name} plan".encode())
            add_file(target, manifest, f"{folder}/{name}.meta.json", json.dumps({"stage": name, **identity}).encode())
            profile = {t.name: {"min": [1], "opt": [rows // 2], "max": [rows]} for t in opened.stages[name].inputs}
            entries[name] = {"file": f"{folder}/{name}.plan", "meta": f"{folder}/{name}.meta.json",
                             "source_graph": f"{name}.onnx", "profiles": [profile]}  # fmt: skip
        add_file(target, manifest, f"{folder}/timing.cache", b"")
        manifest["engines"] = {ENGINES: {"dir": folder, **identity, "cuda": "12.8", "timing_cache": f"{folder}/timing.cache",
                                         "stages": entries}}  # fmt: skip

    change_manifest(target, add)
    return target


@pytest.fixture(scope="module")
def bundles(exported_once, tmp_path_factory) -> SimpleNamespace:
    """``fp32``: the session's tiny bundle; ``int8``: its copy with an INT8 tagger (detector and vision FP32 only);
    ``fp16``: its copy with FP16 graphs of every stage; ``engines``: its copy with TensorRT plans."""
    root = tmp_path_factory.mktemp("triton-bundles")
    return SimpleNamespace(
        fp32=exported_once.bundle,
        int8=with_graphs(exported_once.bundle, root / "int8", "int8", ["tagger"],
                         {"method": {"tool": "onnxruntime.quantization.quantize_dynamic"}, "guard": INT8_GUARD}),
        fp16=with_graphs(exported_once.bundle, root / "fp16", "fp16", STAGES, {"kept_fp32": {}}),
        engines=with_engines(exported_once.bundle, root / "engines"),
    )


# ----------------------------------------------------------------------------- Triton's schema


@pytest.fixture(scope="module")
def schema():
    """tritonclient's generated model_config_pb2, loaded by path: ``import tritonclient.grpc.model_config_pb2``
    imports tritonclient.grpc, which needs grpcio, which the http client does not install."""
    pytest.importorskip("tritonclient", reason=TRITON_CLIENT)
    pytest.importorskip("google.protobuf", reason=TRITON_CLIENT)
    locations = importlib.util.find_spec("tritonclient").submodule_search_locations
    path = next(Path(p) / "grpc" / "model_config_pb2.py" for p in locations)
    if not path.is_file():
        pytest.skip(f"this tritonclient has no {path}: {TRITON_CLIENT}")
    spec = importlib.util.spec_from_file_location("mner_tests_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(schema, path: Path):
    """The config as Triton reads it: text_format.Parse refuses an unknown field, enum or malformed value."""
    from google.protobuf import text_format  # noqa: PLC0415 -- with the schema only

    return text_format.Parse(path.read_text(), schema.ModelConfig())


def parameters(config) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def triton_type(schema, dtype: str) -> str:
    from tritonclient.utils import np_to_triton_dtype  # noqa: PLC0415 -- Triton's own numpy -> Triton type table

    return schema.DataType.Name(schema.DataType.Value("TYPE_" + np_to_triton_dtype(np.dtype(dtype))))


def check_tensors(schema, declared, manifest_tensors) -> None:
    """``declared`` (a config's input or output list) is the manifest's tensors, in order, without the batch axis."""
    assert [t.name for t in declared] == [t.name for t in manifest_tensors]
    for got, tensor in zip(declared, manifest_tensors, strict=True):
        assert tensor.shape[0] == "batch"
        assert schema.DataType.Name(got.data_type) == triton_type(schema, tensor.dtype), tensor
        rest = tensor.shape[1:]
        if rest:
            assert list(got.dims) == [d if isinstance(d, int) else -1 for d in rest], tensor
            assert not got.HasField("reshape")
        else:  # a per-row scalar: (batch, 1) on the wire, (batch,) in the model
            assert list(got.dims) == [1] and got.HasField("reshape") and list(got.reshape.shape) == [], tensor
        assert not getattr(got, "optional", False)  # an input the stage needs (outputs have no such field)


def manifest_sha(bundle: Path) -> str:
    return hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()


def served_files(bundle: Path, precision: str) -> dict[str, str]:
    """stage -> the bundle file that ``precision`` serves, read from the manifest's graphs."""
    stages = json.loads((bundle / "manifest.json").read_text())["stages"]
    return {name: entry["graphs"].get(precision, entry["graphs"]["fp32"])["file"] for name, entry in stages.items()}


# ----------------------------------------------------------------------------- config.pbtxt


CASES = {  # id: (bundle, options, the precision each stage's served graph has)
    "python-fp32": ("fp32", RepositoryOptions(), {s: "fp32" for s in STAGES}),
    "native-fp32": ("fp32", RepositoryOptions(flavour="native"), {s: "fp32" for s in STAGES}),
    "python-int8": ("int8", RepositoryOptions(precision="int8"), {"detector": "fp32", "vision": "fp32", "tagger": "int8"}),
    "native-int8": ("int8", RepositoryOptions(flavour="native", precision="int8"),
                    {"detector": "fp32", "vision": "fp32", "tagger": "int8"}),
    "native-fp16": ("fp16", RepositoryOptions(flavour="native", precision="fp16"), {s: "fp16" for s in STAGES}),
    "native-cpu-tuned": ("fp32", RepositoryOptions(flavour="native", kind="cpu", max_batch_size=16,
                                                   preferred_batch_sizes=(4, 16), max_queue_delay_us=0,
                                                   stage_instances=3, front_instances=5, max_text_chars=777),
                         {s: "fp32" for s in STAGES}),
    "python-gpu": ("fp32", RepositoryOptions(kind="gpu", preferred_batch_sizes=(8,)), {s: "fp32" for s in STAGES}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_config_parses_with_tritons_schema_and_declares_the_manifests_stages(case, bundles, schema, tmp_path):
    which, options, precisions = CASES[case]
    source = getattr(bundles, which)
    out = write_repository(source, tmp_path / "repo", options)
    opened = Bundle.open(source)
    manifest = json.loads((source / "manifest.json").read_text())
    files = {name: manifest["stages"][name]["graphs"][precisions[name]]["file"] for name in STAGES}
    if which == "int8":
        assert files == {"detector": "detector.onnx", "vision": "vision.onnx", "tagger": "tagger.int8.onnx"}
    assert sorted(p.name for p in out.iterdir()) == ["detector", "mner", "tagger", "vision"]
    expected_kind = {"gpu": "KIND_GPU", "cpu": "KIND_CPU", None: "KIND_GPU" if options.flavour == "native" else "KIND_CPU"}
    sha = manifest_sha(source)

    for name in STAGES:
        config = parse(schema, out / name / "config.pbtxt")
        assert config.name == name
        if options.flavour == "python":
            assert (config.backend, config.platform, config.default_model_filename) == ("python", "", "")
        else:
            assert (config.backend, config.platform, config.default_model_filename) == ("", "onnxruntime_onnx", "model.onnx")
        assert config.max_batch_size == options.max_batch_size
        check_tensors(schema, config.input, opened.stages[name].inputs)
        check_tensors(schema, config.output, opened.stages[name].outputs)
        assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
        assert list(config.dynamic_batching.preferred_batch_size) == list(options.preferred_batch_sizes)
        assert config.dynamic_batching.max_queue_delay_microseconds == options.max_queue_delay_us
        assert [(schema.ModelInstanceGroup.Kind.Name(g.kind), g.count) for g in config.instance_group] == [
            (expected_kind[options.kind], options.stage_instances)]  # fmt: skip
        assert parameters(config) == {"mner_bundle_sha256": sha, "mner_stage": name, "mner_file": files[name]}
        assert (out / name / "1" / "model.onnx").read_bytes() == (source / files[name]).read_bytes()

    front = parse(schema, out / "mner" / "config.pbtxt")
    assert (front.name, front.backend, front.platform, front.max_batch_size) == ("mner", "python", "", options.max_batch_size)
    string = schema.DataType.Value("TYPE_STRING")
    assert [(t.name, t.data_type, list(t.dims), t.optional) for t in front.input] == [
        ("TEXT", string, [1], False), ("IMAGE", string, [1], True)]  # fmt: skip
    assert [(t.name, t.data_type, list(t.dims)) for t in front.output] == [("ENTITIES", string, [1])]
    assert list(front.dynamic_batching.preferred_batch_size) == list(options.preferred_batch_sizes)
    assert front.dynamic_batching.max_queue_delay_microseconds == options.max_queue_delay_us
    # the front model preprocesses and decodes: CPU whatever kind its stages run on
    assert [(schema.ModelInstanceGroup.Kind.Name(g.kind), g.count) for g in front.instance_group] == [
        ("KIND_CPU", options.front_instances)]  # fmt: skip
    front_parameters = parameters(front)
    assert json.loads(front_parameters.pop("mner_stage_files")) == {name: [files[name], "model.onnx"] for name in STAGES}
    assert front_parameters == {"mner_bundle_sha256": sha, "max_text_chars": str(options.max_text_chars)}


def test_default_options_give_tritons_choice_of_batch_and_the_documented_counts(bundles, schema, tmp_path):
    out = write_repository(bundles.fp32, tmp_path / "repo")
    tagger, front = parse(schema, out / "tagger" / "config.pbtxt"), parse(schema, out / "mner" / "config.pbtxt")
    assert (tagger.max_batch_size, list(tagger.dynamic_batching.preferred_batch_size)) == (32, [])
    assert tagger.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.kind, g.count) for g in tagger.instance_group] == [(schema.ModelInstanceGroup.KIND_CPU, 1)]
    assert [(g.kind, g.count) for g in front.instance_group] == [(schema.ModelInstanceGroup.KIND_CPU, 2)]
    assert parameters(front)["max_text_chars"] == "10000"
    # the tagger's image_mask is the one per-row scalar of the tiny bundle: Triton's reshape carries it
    mask = next(t for t in tagger.input if t.name == "image_mask")
    assert (list(mask.dims), list(mask.reshape.shape), mask.HasField("reshape")) == ([1], [], True)


def test_a_tagger_only_bundle_gives_a_tagger_and_a_front_model_without_image(tagger_bundle, schema, tmp_path):
    for flavour in ("python", "native"):
        out = write_repository(tagger_bundle.bundle, tmp_path / flavour, RepositoryOptions(flavour=flavour))
        assert sorted(p.name for p in out.iterdir()) == ["mner", "tagger"]
        tagger = parse(schema, out / "tagger" / "config.pbtxt")
        stage = Bundle.open(tagger_bundle.bundle).stages["tagger"]
        check_tensors(schema, tagger.input, stage.inputs)
        check_tensors(schema, tagger.output, stage.outputs)
        front = parse(schema, out / "mner" / "config.pbtxt")
        assert [t.name for t in front.input] == ["TEXT"]
        assert [t.name for t in front.output] == ["ENTITIES"]
        assert json.loads(parameters(front)["mner_stage_files"]) == {"tagger": ["tagger.onnx", "model.onnx"]}


def test_engines_give_tensorrt_plan_models_on_the_gpu(bundles, schema, tmp_path):
    out = write_repository(bundles.engines, tmp_path / "repo", RepositoryOptions(flavour="native", engines=ENGINES,
                                                                                  max_batch_size=ENGINE_ROWS))  # fmt: skip
    opened = Bundle.open(bundles.engines)
    for name in STAGES:
        config = parse(schema, out / name / "config.pbtxt")
        assert (config.platform, config.backend, config.default_model_filename) == ("tensorrt_plan", "", "model.plan")
        assert config.max_batch_size == ENGINE_ROWS
        check_tensors(schema, config.input, opened.stages[name].inputs)
        assert [g.kind for g in config.instance_group] == [schema.ModelInstanceGroup.KIND_GPU]
        assert parameters(config)["mner_file"] == f"engines/{ENGINES}/{name}.plan"
        assert sorted(os.listdir(out / name / "1")) == ["model.plan"]
        assert (out / name / "1" / "model.plan").read_bytes() == f"a {name} plan".encode()
    front = parse(schema, out / "mner" / "config.pbtxt")
    assert json.loads(parameters(front)["mner_stage_files"]) == {
        name: [f"engines/{ENGINES}/{name}.plan", "model.plan"] for name in STAGES}  # fmt: skip


def test_a_tensor_type_triton_lacks_is_refused_naming_it(bundles):
    opened = Bundle.open(bundles.fp32)
    stage = opened.stages["tagger"]
    opened.stages["tagger"] = dataclasses.replace(stage, outputs=(TensorInfo("emissions", "float64", ("batch", "sequence", 13)),))
    with pytest.raises(ValueError, match=r"tensor emissions: dtype float64 has no Triton type here \(\['bool', "):
        triton_repository.stage_config(opened, "tagger", "model.onnx", RepositoryOptions(), "sha", "tagger.onnx")


# ----------------------------------------------------------------------------- files


def same_file(a: Path, b: Path) -> bool:
    return os.stat(a).st_ino == os.stat(b).st_ino and os.stat(a).st_dev == os.stat(b).st_dev


@pytest.mark.parametrize("flavour", ["python", "native"])
def test_layout_links_the_bundles_files_and_the_front_model_carries_a_verified_bundle(flavour, bundles, tmp_path):
    source = bundles.fp32
    out = write_repository(source, tmp_path / "repo", RepositoryOptions(flavour=flavour))
    files = served_files(source, "fp32")
    for name in STAGES:
        assert sorted(os.listdir(out / name)) == ["1", "config.pbtxt"]
        version = out / name / "1"
        if flavour == "python":
            assert sorted(os.listdir(version)) == ["manifest.json", "model.onnx", "model.py"]
            assert same_file(version / "manifest.json", source / "manifest.json")
            assert "from mner.runtime.triton_models import StageModel as TritonPythonModel" in (version / "model.py").read_text()
        else:  # Triton's own backend runs the graph: no Python in the folder
            assert sorted(os.listdir(version)) == ["model.onnx"]
        assert same_file(version / "model.onnx", source / files[name])  # hard-linked: a repository costs no space
    front = out / "mner" / "1"
    assert sorted(os.listdir(front)) == ["bundle", "model.py"]
    assert "from mner.runtime.triton_models import FrontModel as TritonPythonModel" in (front / "model.py").read_text()
    copy = Bundle.open(front / "bundle", verify=True, verify_cache=False)  # every file hashed against its manifest
    listed = json.loads((source / "manifest.json").read_text())["files"]
    assert {p.relative_to(copy.path).as_posix() for p in copy.path.rglob("*") if p.is_file()} == {*listed, "manifest.json"}
    assert all(same_file(front / "bundle" / name, source / name) for name in [*listed, "manifest.json"])
    assert set(copy.stages) == set(STAGES)


def test_files_are_copied_where_hard_links_fail(bundles, tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    source = bundles.fp32
    out = write_repository(source, tmp_path / "repo")
    for name in STAGES:
        served = out / name / "1" / "model.onnx"
        assert served.read_bytes() == (source / f"{name}.onnx").read_bytes() and not same_file(served, source / f"{name}.onnx")
    assert not same_file(out / "mner" / "1" / "bundle" / "manifest.json", source / "manifest.json")
    Bundle.open(out / "mner" / "1" / "bundle", verify=True, verify_cache=False)


@pytest.mark.parametrize("model", ["StageModel", "FrontModel"])
def test_model_py_puts_pythonpath_first_and_names_the_runtimes_model(model, bundles, tmp_path, monkeypatch):
    """Triton's stub ignores PYTHONPATH: model.py puts its entries in front of sys.path (once each), then imports."""
    out = write_repository(bundles.fp32, tmp_path / "repo")
    path = out / ("tagger" if model == "StageModel" else "mner") / "1" / "model.py"
    monkeypatch.setattr(sys, "path", list(sys.path))
    already = sys.path[-1]
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([first, "", second, already]))
    namespace: dict = {"__name__": "model"}
    exec(compile(path.read_text(), str(path), "exec"), namespace)  # noqa: S102 -- the file the repository holds
    assert sys.path[:2] == [first, second]
    assert sys.path.count(already) == 1 and "" not in sys.path[:2]
    assert namespace["TritonPythonModel"] is getattr(triton_models, model)


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("options", "message"), [
    ({"flavour": "onnx"}, r"flavour must be one of \('python', 'native'\), got 'onnx'"),
    ({"precision": "bf16"}, r"precision must be one of \('fp32', 'fp16', 'int8'\), got 'bf16'"),
    ({"kind": "tpu"}, r"kind must be one of \('cpu', 'gpu'\) or None, got 'tpu'"),
    ({"engines": ENGINES}, r"engines \(TensorRT plans\) are served by Triton's TensorRT backend: they need the native flavour \(--flavour native\)"),
    ({"engines": ENGINES, "flavour": "native", "precision": "int8"},
     r"precision chooses ONNX graphs; with engines it must stay 'fp32', got 'int8'"),
    ({"engines": ENGINES, "flavour": "native", "kind": "cpu"}, r"TensorRT engines run on a GPU: kind must be 'gpu'"),
    ({"max_batch_size": 0}, r"max_batch_size must be an int >= 1, got 0"),
    ({"max_batch_size": True}, r"max_batch_size must be an int >= 1, got True"),
    ({"max_batch_size": 8.0}, r"max_batch_size must be an int >= 1, got 8\.0"),
    ({"max_queue_delay_us": -1}, r"max_queue_delay_us must be an int >= 0, got -1"),
    ({"max_queue_delay_us": False}, r"max_queue_delay_us must be an int >= 0, got False"),
    ({"stage_instances": 0}, r"stage_instances must be an int >= 1, got 0"),
    ({"front_instances": -2}, r"front_instances must be an int >= 1, got -2"),
    ({"max_text_chars": "100"}, r"max_text_chars must be an int >= 1, got '100'"),
    ({"preferred_batch_sizes": [4, 8]}, r"preferred_batch_sizes must be a tuple of positive ints, got \[4, 8\]"),
    ({"preferred_batch_sizes": (4, 0)}, r"preferred_batch_sizes must be a tuple of positive ints, got \(4, 0\)"),
    ({"preferred_batch_sizes": (True,)}, r"preferred_batch_sizes must be a tuple of positive ints, got \(True,\)"),
    ({"preferred_batch_sizes": (8, 64)}, r"preferred_batch_sizes \(8, 64\) go over max_batch_size 32"),
    ({"preferred_batch_sizes": (8,), "max_batch_size": 4}, r"preferred_batch_sizes \(8,\) go over max_batch_size 4"),
])  # fmt: skip
def test_options_refuse_what_they_cannot_serve_naming_it(options, message):
    with pytest.raises(ValueError, match=message):
        RepositoryOptions(**options)


def test_options_name_every_problem_at_once_and_take_their_bounds():
    with pytest.raises(ValueError) as caught:
        RepositoryOptions(flavour="onnx", stage_instances=0, preferred_batch_sizes=(0,))
    assert str(caught.value).split("; ") == [
        "flavour must be one of ('python', 'native'), got 'onnx'", "stage_instances must be an int >= 1, got 0",
        "preferred_batch_sizes must be a tuple of positive ints, got (0,)"]  # fmt: skip
    edge = RepositoryOptions(max_queue_delay_us=0, max_batch_size=1, preferred_batch_sizes=(1,), front_instances=1)
    assert (edge.max_queue_delay_us, edge.preferred_batch_sizes) == (0, (1,))
    assert RepositoryOptions(flavour="native", engines=ENGINES, kind="gpu").stage_kind == "gpu"
    assert RepositoryOptions(flavour="native").stage_kind == "gpu" and RepositoryOptions().stage_kind == "cpu"


def test_an_output_that_is_not_a_new_or_empty_directory_is_refused_and_left_alone(bundles, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"full exists and is not an empty directory: give a new path"):
        write_repository(bundles.fp32, full)
    assert os.listdir(full) == ["keep.txt"] and (full / "keep.txt").read_text() == "mine"
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    with pytest.raises(ValueError, match=r"a-file is a file, not a folder: give a new path"):
        write_repository(bundles.fp32, a_file)
    assert a_file.read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_repository(bundles.fp32, empty) == empty and (empty / "mner" / "config.pbtxt").is_file()
    nested = write_repository(bundles.fp32, tmp_path / "new" / "deeper" / "repo")  # parents are made
    assert (nested / "tagger" / "config.pbtxt").is_file()


def test_a_tampered_or_missing_bundle_is_refused_naming_the_file(bundles, tmp_path):
    bundle = linked_copy(bundles.fp32, tmp_path / "bundle")
    data = bytearray((bundle / "tagger.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01  # one byte: same size, another sha256
    replace_file(bundle / "tagger.onnx", bytes(data))
    with pytest.raises(BundleError, match=r"tagger\.onnx: sha256 [0-9a-f]{64}, the manifest says"):
        write_repository(bundle, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
    with pytest.raises(BundleError, match=r"nowhere is not a bundle directory \(it does not exist\)"):
        write_repository(tmp_path / "nowhere", tmp_path / "repo")


def test_graphs_and_engines_the_bundle_lacks_are_refused_before_anything_is_written(bundles, tmp_path):
    out = tmp_path / "repo"
    with pytest.raises(ValueError, match=rf"has no engines folder '{ENGINES}' \(it has: none\); build engines .*mner-export --trt"):
        write_repository(bundles.fp32, out, RepositoryOptions(flavour="native", engines=ENGINES))
    with pytest.raises(ValueError, match=rf"has no engines folder 'other' \(it has: \['{ENGINES}'\]\)"):
        write_repository(bundles.engines, out, RepositoryOptions(flavour="native", engines="other"))
    with pytest.raises(ValueError, match=rf"engines/{ENGINES} \(NVIDIA H100 80GB HBM3, .*\): stage detector's engine takes "
                                         rf"at most {ENGINE_ROWS} rows, max_batch_size is {2 * ENGINE_ROWS}; stage vision's"):
        write_repository(bundles.engines, out, RepositoryOptions(flavour="native", engines=ENGINES,
                                                                 max_batch_size=2 * ENGINE_ROWS))  # fmt: skip
    tagger_plan_only = with_engines(bundles.fp32, tmp_path / "tagger-plan", stages=["tagger"])
    with pytest.raises(ValueError, match=r"no plan for stage detector; no plan for stage vision"):
        write_repository(tagger_plan_only, out, RepositoryOptions(flavour="native", engines=ENGINES))
    # precision int8 runs FP32 where a stage has no INT8 graph, but the tagger must have one (as mner-tag's --precision)
    with pytest.raises(BundleError, match=r"--precision int8 needs an INT8 tagger graph.*\['fp32'\].*mner-export --int8"):
        write_repository(bundles.fp32, out, RepositoryOptions(precision="int8"))
    with pytest.raises(BundleError, match=r"stage detector has \['fp32'\] graphs, not 'fp16'; export with --fp16"):
        write_repository(bundles.fp32, out, RepositoryOptions(flavour="native", precision="fp16"))
    # a batch larger than the ONNX graphs' batch axis takes (the manifest's bound)
    most = Bundle.open(bundles.fp32).stages["tagger"].axes["batch"][1]
    with pytest.raises(ValueError, match=rf"max_batch_size {most + 1} is more than the graphs take: detector takes at "
                                         rf"most {most} rows; vision takes at most {most} rows; tagger takes"):
        write_repository(bundles.fp32, out, RepositoryOptions(max_batch_size=most + 1))
    assert not out.exists()


def test_a_write_that_fails_halfway_leaves_no_repository_and_the_bundle_whole(bundles, tmp_path, monkeypatch):
    def fails(*args, **kwargs):
        raise RuntimeError("the disk filled up")

    monkeypatch.setattr(triton_repository, "front_config", fails)
    out = tmp_path / "repo"
    with pytest.raises(RuntimeError, match="the disk filled up"):
        write_repository(bundles.fp32, out)
    assert not out.exists()
    Bundle.open(bundles.fp32, verify=True, verify_cache=False)  # removing the links left the bundle's files


# ----------------------------------------------------------------------------- the command


def test_help_lists_the_options():
    result = CliRunner().invoke(triton_command, ["--help"])
    assert result.exit_code == 0, result.output
    for flag in ("--engine", "--output", "--flavour", "--precision", "--engines", "--kind", "--batch-size",
                 "--preferred-batch-size", "--max-queue-delay-us", "--instances", "--front-instances",
                 "--max-text-chars", "[python|native]", "[fp32|fp16|int8]", "[cpu|gpu]"):  # fmt: skip
        assert flag in result.output, flag


# option of the command -> field of RepositoryOptions it sets
OPTION_FIELDS = {"flavour": "flavour", "precision": "precision", "engines": "engines", "kind": "kind",
                 "batch_size": "max_batch_size", "preferred": "preferred_batch_sizes",
                 "max_queue_delay_us": "max_queue_delay_us", "instances": "stage_instances",
                 "front_instances": "front_instances", "max_text_chars": "max_text_chars"}  # fmt: skip


def test_the_commands_choices_and_defaults_are_the_librarys(tmp_path):
    """triton_cli spells them out so that --help imports nothing heavy; this keeps them equal."""
    assert triton_cli.FLAVOURS == triton_repository.FLAVOURS
    assert triton_cli.KINDS == triton_repository.KINDS
    assert triton_cli.PRECISIONS == triton_repository.PRECISIONS
    fields = {f.name: f.default for f in dataclasses.fields(RepositoryOptions)}
    assert set(OPTION_FIELDS.values()) == set(fields)  # every option of the library has its flag
    assert triton_cli.DEFAULTS == {name: value for name, value in fields.items() if isinstance(value, int)}
    params = {p.name: p for p in triton_command.params}
    assert tuple(params["flavour"].type.choices) == triton_repository.FLAVOURS
    assert tuple(params["kind"].type.choices) == triton_repository.KINDS
    assert tuple(params["precision"].type.choices) == triton_repository.PRECISIONS
    # the command's lower bounds are the library's: what --help refuses, RepositoryOptions would too
    assert {name: params[name].type.min for name in ("batch_size", "max_queue_delay_us", "instances",
                                                     "front_instances", "max_text_chars", "preferred")} == {
        "batch_size": 1, "max_queue_delay_us": 0, "instances": 1, "front_instances": 1, "max_text_chars": 1,
        "preferred": 1}  # fmt: skip
    # what the command passes when only the required options are given
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    context = triton_command.make_context("mner-triton", ["--engine", str(bundle), "-o", str(tmp_path / "out")])
    given = {OPTION_FIELDS[name]: value for name, value in context.params.items() if name in OPTION_FIELDS}
    given["preferred_batch_sizes"] = tuple(given["preferred_batch_sizes"])
    assert given == fields


def test_a_run_writes_the_repository_with_every_option_and_names_the_models(bundles, schema, tmp_path):
    out = tmp_path / "repo"
    result = CliRunner().invoke(triton_command, [
        "--engine", str(bundles.fp32), "-o", str(out), "--flavour", "native", "--kind", "cpu", "--batch-size", "8",
        "--preferred-batch-size", "4", "--preferred-batch-size", "8", "--max-queue-delay-us", "100",
        "--instances", "3", "--front-instances", "4", "--max-text-chars", "500"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: models detector, mner, tagger, vision (native flavour); clients call the model 'mner'" in result.output
    tagger, front = parse(schema, out / "tagger" / "config.pbtxt"), parse(schema, out / "mner" / "config.pbtxt")
    assert (tagger.platform, tagger.max_batch_size, list(tagger.dynamic_batching.preferred_batch_size)) == (
        "onnxruntime_onnx", 8, [4, 8])  # fmt: skip
    assert tagger.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(g.kind, g.count) for g in tagger.instance_group] == [(schema.ModelInstanceGroup.KIND_CPU, 3)]
    assert [(g.kind, g.count) for g in front.instance_group] == [(schema.ModelInstanceGroup.KIND_CPU, 4)]
    assert parameters(front)["max_text_chars"] == "500"


def test_a_run_on_a_tagger_only_bundle_names_two_models(tagger_bundle, tmp_path):
    result = CliRunner().invoke(triton_command, ["--engine", str(tagger_bundle.bundle), "-o", str(tmp_path / "repo")])
    assert result.exit_code == 0, result.output
    assert "models mner, tagger (python flavour)" in result.output


@pytest.mark.parametrize(("arguments", "message"), [
    (["--preferred-batch-size", "64"], r"preferred_batch_sizes (64,) go over max_batch_size 32"),
    (["--engines", ENGINES], "they need the native flavour (--flavour native)"),
    (["--flavour", "native", "--engines", ENGINES], rf"has no engines folder '{ENGINES}' (it has: none)"),
    (["--precision", "int8"], "mner-export --int8"),
])  # fmt: skip
def test_command_errors_are_one_clean_line(arguments, message, bundles, tmp_path):
    result = CliRunner().invoke(triton_command, ["--engine", str(bundles.fp32), "-o", str(tmp_path / "repo"), *arguments])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and message in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert not (tmp_path / "repo").exists()


def test_a_non_empty_output_or_a_tampered_bundle_is_a_clean_error(bundles, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    result = CliRunner().invoke(triton_command, ["--engine", str(bundles.fp32), "-o", str(full)])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "is not an empty directory" in result.output
    assert "Traceback" not in result.output and os.listdir(full) == ["keep.txt"]
    bundle = linked_copy(bundles.fp32, tmp_path / "bundle")
    replace_file(bundle / "crf.npz", b"not the crf")
    result = CliRunner().invoke(triton_command, ["--engine", str(bundle), "-o", str(tmp_path / "repo")])
    assert result.exit_code == 1 and result.output.startswith("Error: bundle ") and "crf.npz: " in result.output
    assert "Traceback" not in result.output
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    result = CliRunner().invoke(triton_command, ["--engine", str(bundles.fp32), "-o", str(a_file / "repo")])
    assert result.exit_code == 1, result.output
    assert result.output == f"Error: {a_file / 'repo'}: Not a directory\n" and isinstance(result.exception, SystemExit)


def test_options_click_itself_refuses_are_usage_errors(tmp_path):
    result = CliRunner().invoke(triton_command, ["--engine", str(tmp_path), "-o", str(tmp_path / "r"), "--batch-size", "0"])
    assert result.exit_code == 2 and "Invalid value for '--batch-size': 0 is not in the range x>=1" in result.output
    result = CliRunner().invoke(triton_command, ["--engine", str(tmp_path / "nowhere"), "-o", str(tmp_path / "r")])
    assert result.exit_code == 2 and "'--engine'" in result.output and "does not exist" in result.output
