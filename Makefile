# The two commands of the quick start, each enough on a fresh machine:
#   make demo   a sample workspace and a tiny local model through the real path
#   make test   the whole suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tunestep-installed
DEMO_DIR ?= .demo

.PHONY: install test demo bench lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/tunestep demo --path $(DEMO_DIR)

bench: $(STAMP)
	$(PY) tests/bench/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build *.egg-info
