# Two commands do all set-up: `make demo` and `make test`.
# The virtual environment is rebuilt when pyproject.toml changes: its hash names the stamp file, so a fresh
# clone with an unchanged pyproject.toml reuses a VENV that has the stamp (file times play no part).
# VENV may point outside the checkout (CI keeps one per pyproject hash, see .ci/run).
VENV ?= .venv
PYTHON ?= python3
DEPS_HASH := $(shell sha256sum pyproject.toml | cut -c1-16)
STAMP := $(VENV)/.deps-$(DEPS_HASH)
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench clean

$(STAMP):
	rm -rf "$(VENV)"
	$(PYTHON) -m venv "$(VENV)"
	"$(VENV)/bin/python" -m pip install --quiet --upgrade pip
	"$(VENV)/bin/python" -m pip install --quiet -e '.[test]'
	touch "$(STAMP)"

# Point the environment's MedSegAdaptLib at this checkout (seconds; needed when VENV is shared).
setup: $(STAMP)
	"$(VENV)/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .

demo: setup
	"$(VENV)/bin/medsegadapt" demo

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: setup
	"$(VENV)/bin/python" -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

# Local quick run: skips the tests that run the real LiteMedSAM weights.
test-fast: PYTEST_ARGS += --skip-slow
test-fast: test

bench: setup
	"$(VENV)/bin/python" benchmarks/bench_segmentation.py

clean:
	rm -rf "$(VENV)" out
