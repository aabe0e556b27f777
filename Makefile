# `make demo` and `make test` work on a fresh machine: each creates .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test onnx-zoo zoo zoo-update bench bench-onnx bench-latency samples clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned, so that the open range in pyproject resolves to it (no CUDA download).
	$(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,zoo,plots]'
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/prunecli run configs/digits_cnn_l2_50.yaml -o out/demo

# The ONNX zoo (tests/test_onnx_zoo.py, ~7 min: the dynamo exporter is slow) is CI's second step: make onnx-zoo.
test: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "not onnx_zoo"

onnx-zoo: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m onnx_zoo

zoo: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m zoo

zoo-update: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 PRUNECLI_UPDATE_ZOO=1 $(BIN)/python -m pytest -m zoo -k test_architecture

bench-latency: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/latency_stability.py

samples: $(STAMP)
	$(BIN)/python sample_models/make_samples.py

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/zoo_bench.py

bench-onnx: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python bench/onnx_resnet50.py

clean:
	rm -rf out .pytest_cache
