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

# Lines and branches of serving/ and handlers/, in every Python process the tests start (TorchServe's
# workers, the OIP gateway, the CLI): [tool.coverage.*] in pyproject.toml. Fails below its fail_under;
# a failing test fails it first. COVERAGE=0 runs the tests alone.
COVERAGE ?= 1
COV_DIR  := build/coverage

test: lint
ifeq ($(COVERAGE),0)
	$(PY) -m pytest
else
	rm -rf $(COV_DIR)  # data files of an interrupted run would join this one
	$(PY) -m coverage run -m pytest; tests=$$?; \
	$(PY) -m coverage combine -q; $(PY) -m coverage report; report=$$?; \
	$(PY) -m coverage json -q --fail-under=0 -o $(COV_DIR)/coverage.json && $(PY) -c "$$COV_TOTALS" $(COV_DIR)/coverage.json; \
	exit $$(( tests ? tests : report ))
endif

# Mutation testing of the core's decision logic: a table per module, exit 1 under $$MUTATION_FLOOR.
mutation: $(STAMP)
	$(PY) -m tests.mutation

bench: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[bench]'   # matplotlib, for compare's plots
	$(PY) -m benchmarks

# The totals line: coverage's own report folds lines and branches into one figure.
define COV_TOTALS
import json, sys
t = json.load(open(sys.argv[1]))["totals"]
print("coverage: lines {} of {} ({}%), branches {} of {} ({}%), together {}%".format(
    t["covered_lines"], t["num_statements"], t["percent_statements_covered_display"],
    t["covered_branches"], t["num_branches"], t["percent_branches_covered_display"], t["percent_covered_display"]))
endef
export COV_TOTALS

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build *.egg-info mutants
