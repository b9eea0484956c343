# The README's two commands: `make demo` and `make test`.
# Both build an isolated environment in .venv (once) and install the project into it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SOURCES := pyproject.toml CMakeLists.txt $(shell git ls-files runtime train export benchmarks 2>/dev/null)

.PHONY: install demo test clean

$(VENV)/.installed: $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m mner.benchmarks.demo

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build out
