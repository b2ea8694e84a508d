# `make demo` and `make test` set up .venv on first use (a few minutes), then reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test clean

demo: $(STAMP)
	$(BIN)/efficientvit reproduce --preset cpu

test: $(STAMP)
	$(BIN)/python -m pytest -q

# torch and torchvision are pinned and installed first: on the project's machines these exact builds lie on
# local disk, and installing them first keeps the project's other dependencies from pulling a different build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]' torch==2.14.1 torchvision==0.29.1
	touch $(STAMP)

clean:
	rm -rf $(VENV)
