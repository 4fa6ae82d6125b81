PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean docs docs-fast

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m jaxestim demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The documentation site, strict: any warning, broken cross-reference, undocumented public
# name or failing executed example fails the build (see docs/conf.py). The executed examples
# compile with XLA's backend optimizations off, as the tests do (tests/conftest.py).
DOCS_ENV := JAX_PLATFORMS=cpu \
	XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false"
docs: $(STAMP)
	$(DOCS_ENV) $(PY) -m sphinx -E -W --keep-going -n -q -b html docs docs/_build/html

# The same without executing the getting-started examples (for editing prose).
docs-fast: $(STAMP)
	$(DOCS_ENV) $(PY) -m sphinx -E -W --keep-going -n -q -b html -D nb_execution_mode=off \
		docs docs/_build/html

test: lint docs
	$(PY) -m pytest -n 2 --dist worksteal -q

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache docs/_build docs/api docs/gallery/notebooks
