# specvit: the two commands a new user runs.
#   make demo   -> creates .venv, installs, runs the main job (quickstart) into demo_out/
#   make test   -> creates .venv, installs, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.specvit-installed
DEMO_OUT ?= demo_out
PYTEST_ARGS ?= -n 2

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned: a CPU build of 2.13.0 is what we test with; an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test,bench,synthesis]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/specvit quickstart --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) build dist src/*.egg-info
