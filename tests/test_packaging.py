"""Every console script declared in pyproject.toml resolves to a working click command."""

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
SCRIPTS = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]


def test_the_issue_s_commands_are_declared():
    expected = {"mner-train", "mner-eval", "mner-export", "mner-tag", "mner-serve", "mner-bench", "mner-convert", "mner-triton"}
    assert expected <= set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_resolves_and_shows_help(name):
    module_name, _, attribute = SCRIPTS[name].partition(":")
    command = getattr(importlib.import_module(module_name), attribute)
    assert isinstance(command, click.Command)
    result = CliRunner().invoke(command, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_runtime_imports_without_torch():
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import mner.runtime, mner.runtime.decode, mner.runtime.text, mner.runtime.image, mner.runtime.coco\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# ---- extras: the slim runtime and what each command group adds -------------------------------------------

PROJECT = tomllib.loads(PYPROJECT.read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]
REPO = PYPROJECT.parent
# Imports of runtime/ that are not core dependencies, each imported inside the function that needs it:
# --backend torch (the reference; mner[train]) and the TensorRT backend (NVIDIA's own index).
# triton_python_backend_utils: Triton's Python backend provides it to the models it runs (runtime/triton_models.py)
# ray and pyarrow: mner-tag --ray (mner[ray], runtime/ray_tag.py).
OPTIONAL_RUNTIME_IMPORTS = {"torch", "tensorrt", "cuda", "triton_python_backend_utils", "ray", "pyarrow"}
# Distributions whose import name is not the distribution name with "-" as "_".
IMPORT_NAMES = {"pytorch-crf": "torchcrf", "opencv-python-headless": "cv2", "python-multipart": "python_multipart",
                "prometheus-client": "prometheus_client", "scikit-build-core": "scikit_build_core"}  # fmt: skip


def requirement_names(requirements, seen=()):
    """The distribution names of ``requirements``, self-references (``mner[train]``) expanded."""
    from packaging.requirements import Requirement  # noqa: PLC0415

    names = set()
    for line in requirements:
        requirement = Requirement(line)
        if requirement.name == "mner":
            for extra in requirement.extras - set(seen):
                names |= requirement_names(EXTRAS[extra], (*seen, extra))
        else:
            names.add(requirement.name.lower())
    return names


def test_the_core_is_torch_free_and_each_extra_adds_its_commands_needs():
    core = requirement_names(PROJECT["dependencies"])
    train = requirement_names(EXTRAS["train"])
    bench = requirement_names(EXTRAS["bench"])
    test = requirement_names(EXTRAS["test"])
    assert {"numpy", "onnxruntime", "tokenizers", "fastapi", "uvicorn", "prometheus-client"} <= core
    assert not core & {"torch", "torchvision", "transformers", "onnx", "gensim", "matplotlib", "pytorch-crf"}
    assert {"torch", "torchvision", "transformers", "onnx", "onnxscript", "gensim", "seqeval", "matplotlib"} <= train
    assert train | {"pytorch-crf"} <= bench
    assert bench | {"pytest", "scikit-build-core", "pybind11"} <= test


def test_extras_module_table_matches_pyproject():
    from mner.runtime.extras import EXTRA_MODULES  # noqa: PLC0415

    assert set(EXTRA_MODULES) == {"train", "bench", "ray"}
    for extra, modules in EXTRA_MODULES.items():
        declared = {IMPORT_NAMES.get(name, name.replace("-", "_")) for name in requirement_names(EXTRAS[extra])}
        assert set(modules) == declared, extra


def test_build_tools_in_the_test_extra_are_the_build_systems():
    from packaging.requirements import Requirement  # noqa: PLC0415

    build = {str(Requirement(line)) for line in tomllib.loads(PYPROJECT.read_text())["build-system"]["requires"]}
    assert build <= {str(Requirement(line)) for line in EXTRAS["test"]}


def test_the_makefile_installs_every_extra_for_the_readme_commands():
    makefile = (REPO / "Makefile").read_text()
    assert '".[test]"' in makefile
    assert {"train", "bench", "ray"} <= {extra for line in EXTRAS["test"] if line.startswith("mner[")
                                  for extra in line[5:-1].split(",")}  # fmt: skip


def _third_party_imports(folder: Path) -> dict[str, set[str]]:
    """Top-level module -> files of ``folder``'s own modules that import it (anywhere in the file)."""
    import ast  # noqa: PLC0415

    found: dict[str, set[str]] = {}
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in {"mner", "__future__"}:
                    found.setdefault(top, set()).add(path.name)
    return found


def _installed_closure(names: set[str]) -> set[str]:
    """``names`` and everything they require (not their extras), as installed here."""
    import importlib.metadata as metadata  # noqa: PLC0415

    from packaging.requirements import Requirement  # noqa: PLC0415
    from packaging.utils import canonicalize_name  # noqa: PLC0415

    closure, todo = set(), [canonicalize_name(name) for name in names]
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return closure


def test_every_runtime_import_is_a_core_dependency():
    """What the slim install lacks, found in a second: every third-party module runtime/ imports comes with a
    core dependency (tests/test_slim_install.py proves it end to end, slowly)."""
    import importlib.metadata as metadata  # noqa: PLC0415

    from packaging.utils import canonicalize_name  # noqa: PLC0415

    provided = {module: {canonicalize_name(d) for d in dists} for module, dists in metadata.packages_distributions().items()}
    closure = _installed_closure(requirement_names(PROJECT["dependencies"]))
    uncovered = {module: sorted(files) for module, files in _third_party_imports(REPO / "runtime").items()
                 if module not in OPTIONAL_RUNTIME_IMPORTS and not provided.get(module, set()) & closure}  # fmt: skip
    assert not uncovered, f"runtime/ imports these, which no core dependency installs: {uncovered}"
