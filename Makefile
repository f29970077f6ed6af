# Set-up is part of every target: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
# the torchvision release made for TORCH (the zoo extra: torchvision and timm models by name)
TORCHVISION ?= torchvision==0.28.0
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-slow lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH)" "$(TORCHVISION)"
	$(PY) -m pip install --quiet -e ".[test,zoo,hf,serve,lint,timestamp]"
	touch $(STAMP)

BIN := $(VENV)/bin

# The owner's whole job on the shipped MNIST-5k: protect and release, verify the release with the
# key (verified, exit 0), then train the same model without protection and verify it with the
# same key (not verified, exit 1 expected). --overwrite: the demo may be run again into the same folders.
demo: $(STAMP)
	$(BIN)/passportnorm protect --out runs/demo --overwrite
	$(BIN)/passportnorm verify --model runs/demo/released --key runs/demo/owner-key --certificate runs/demo/certificate.json
	$(BIN)/passportnorm train --out runs/demo-plain --overwrite
	$(BIN)/passportnorm verify --model runs/demo-plain/released --key runs/demo/owner-key; \
	  status=$$?; if [ $$status -ne 1 ]; then echo "expected 'not verified' (exit 1), got exit $$status"; exit 1; fi
	@echo "demo succeeded: the protected release verified with its owner key (exit 0), and the same model trained without protection was NOT verified by that key (exit 1, as it should be)"

# two pytest-xdist workers, one test file each at a time (module fixtures are built once): CI's 2 cores
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m slow

# format and lint (ruff, line length 110) and types (mypy) of src/: what CI checks after the tests
lint: $(STAMP)
	$(BIN)/ruff format --check src
	$(BIN)/ruff check src
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache
