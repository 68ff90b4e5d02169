# `make test` sets everything up from a fresh clone and runs the test suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test setup data clean

test: setup data
	$(BIN)/python -m pytest -q

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: a bare or open-ended torch would pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,text,onnx,baselines]'
	touch $@

# Fashion-MNIST from Debian (the tests read the real files); skipped where apt is unavailable.
data:
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) ; \
	else echo "note: cannot install dataset-fashion-mnist here (no apt or not root): real-data tests will skip"; fi

clean:
	rm -rf $(VENV) .pytest_cache
