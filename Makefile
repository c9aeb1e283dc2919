# Two jobs: `make demo` (set up, then run the main job end to end) and `make test` (set up, run the tests).
# Set-up: a virtual environment with CPU PyTorch installed FIRST (so nothing pulls a CUDA build), then the project.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo

.PHONY: setup browser demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[all]"
	touch $(STAMP)

demo: setup
	$(BIN)/python -m invsr_export.demo --out $(DEMO)

# The web page's test drives Debian's Chromium (no browser download): installed here when we may (root + apt).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "note: chromium + chromedriver are not installed: the browser test will be skipped"

test: setup browser
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(DEMO)
