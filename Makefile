# Set-up and entry points. `make demo` and `make test` each create the
# virtual environment they need (.venv), so both work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow benchmark clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first, so the package's torch>=2.2 is already met
	# and no multi-GB GPU build is downloaded.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/invariant-mr demo --out invariant-mr-demo --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

benchmark: $(STAMP)
	$(BIN)/python benchmarks/paper_settings.py

clean:
	rm -rf $(VENV) invariant-mr-demo
