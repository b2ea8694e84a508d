# `make demo` and `make test` set up .venv on first use (a few minutes), then reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-avx2 clean fashion-mnist

demo: $(STAMP) fashion-mnist
	$(BIN)/python analysis/reproduce.py --preset demo

# The demo's data: Debian's dataset-fashion-mnist where apt is there. Elsewhere the first run downloads it with
# torchvision (online), or `efficientvit make-data fashion-mnist --source DIR` takes the four .gz files.
fashion-mnist:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then \
		$(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null; } || \
		echo "could not install dataset-fashion-mnist; see README, Data"; fi

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n 2

# The tests whose path depends on the CPU's instruction sets (bench peaks and modes, export and int8, the trainer's
# precision and compile choice) once more as on an AVX2-only CPU: PyTorch's kernels and oneDNN's held to AVX2 (no
# AVX-512, VNNI, native bf16 or AMX). onnxruntime chooses its own kernels from the CPU and is not held back.
ISA_TESTS := tests/test_bench.py tests/test_export.py tests/test_runtime.py tests/test_train.py
test-avx2: $(STAMP)
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest -q -n 2 $(ISA_TESTS)

# torch and torchvision are pinned and installed first: on the project's machines these exact builds lie on
# local disk, and installing them first keeps the project's other dependencies from pulling a different build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet --no-compile -e '.[dev]' torch==2.14.1 torchvision==0.29.1
	touch $(STAMP)

clean:
	rm -rf $(VENV)
