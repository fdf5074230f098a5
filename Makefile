# Two commands do all set-up: `make demo` and `make test`.
# The virtual environment is rebuilt when pyproject.toml changes: its hash names the stamp file, so a fresh
# clone with an unchanged pyproject.toml reuses a VENV that has the stamp (file times play no part).
# VENV may point outside the checkout (CI keeps one per pyproject hash, see .ci/run).
VENV ?= .venv
PYTHON ?= python3
DEPS_HASH := $(shell sha256sum pyproject.toml | cut -c1-16)
STAMP := $(VENV)/.deps-$(DEPS_HASH)
PYTEST_ARGS ?=

.PHONY: setup cases demo test test-fast bench evaluate clean

$(STAMP):
	rm -rf "$(VENV)"
	$(PYTHON) -m venv "$(VENV)"
	"$(VENV)/bin/python" -m pip install --quiet --upgrade pip
	"$(VENV)/bin/python" -m pip install --quiet -e '.[test]'
	touch "$(STAMP)"

# Point the environment's MedSegAdaptLib at this checkout (seconds; needed when VENV is shared).
setup: $(STAMP)
	"$(VENV)/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .

# The five real clinical cases (pyradiomics 3.1.0's source archive from the package index, SHA-256
# checked), extracted once into ~/.cache/medsegadapt/clinical_cases; the slow tests use them.
cases: setup
	"$(VENV)/bin/medsegadapt" cases --fetch

demo: setup
	"$(VENV)/bin/medsegadapt" demo

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: setup cases
	"$(VENV)/bin/python" -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

# Local quick run: skips the tests that run the real LiteMedSAM weights.
test-fast: PYTEST_ARGS += --skip-slow
test-fast: test

bench: setup
	"$(VENV)/bin/python" benchmarks/bench_segmentation.py

# Dice, HD95 and seconds on every real target, one table per prompt kind (docs/segmentation.md).
evaluate: cases
	"$(VENV)/bin/python" benchmarks/evaluate_real_cases.py --markdown

clean:
	rm -rf "$(VENV)" out
