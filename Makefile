# The two commands of the quick start, each enough on a fresh machine:
#   make demo   a sample workspace and a tiny local model through the real path
#   make test   the whole suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tunestep-installed
DEMO_DIR ?= .demo

.PHONY: install test demo bench lint lock clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/tunestep demo --path $(DEMO_DIR)

bench: $(STAMP)
	$(PY) tests/bench/run_all.py

# The HF job's exact dependencies: re-resolve tools/jobs/train_sft.py's PEP 723 header into
# train_sft.py.lock (needs PyPI; commit the result). Drafts only hash the committed lock.
lock: $(STAMP)
	@test -x $(VENV)/bin/uv || $(PY) -m pip install --quiet uv
	$(VENV)/bin/uv lock --script tools/jobs/train_sft.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build *.egg-info
