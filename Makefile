# The two commands of the README: `make demo` and `make test`. Both install everything first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install demo test bench lint clean

$(STAMP): pyproject.toml
	# Graphviz's `dot` draws .svg/.png diagrams (.dot and .mmd need nothing); Chromium checks
	# in a test that the SVG draws in a browser. Root installs both; others get a note.
	{ command -v dot >/dev/null && command -v chromium >/dev/null; } || \
		{ [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq graphviz chromium >/dev/null; } || \
		echo "note: apt-get install -y graphviz chromium (diagrams as .svg/.png, browser test)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first: the wheel on this machine's disk, not a several-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all,test]'
	touch $(STAMP)

install: $(STAMP)

## Serve the flagship semantic-search pipeline on an embedded local Ray and query it over HTTP.
demo: install
	$(BIN)/python -m servegraph.pipelines.search

## Install everything and run the whole test suite (Ray-backed tests included).
test: install
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/bench_spine.py
	$(BIN)/python benchmarks/bench_packing.py
	$(BIN)/python benchmarks/bench_models.py --serve
	$(BIN)/python benchmarks/bench_fusion.py
	PYTHONPATH=. $(BIN)/python benchmarks/bench_reliability.py -n 10000 -c 64 --fault-requests 2000

clean:
	rm -rf $(VENV) *.egg-info
