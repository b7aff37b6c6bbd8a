# Two commands on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint mutation bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,demo]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/ckptserve demo

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy    # what it checks, and how strictly: [tool.mypy] in pyproject.toml

test: lint
	$(PY) -m pytest

# Mutation testing of the core's decision logic: a table per module, exit 1 under $$MUTATION_FLOOR.
mutation: $(STAMP)
	$(PY) -m tests.mutation

bench: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'   # matplotlib, for compare's plots
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build *.egg-info mutants
