# From a fresh clone: `make demo` runs the main job on the shipped model; `make test` runs the test suite.
# Both create the virtualenv (.venv) with pinned dependencies and get Fashion-MNIST first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SYSTEM_DATA := /usr/share/datasets/fashion-mnist
LOCAL_DATA := $(CURDIR)/data/fashion-mnist
# hypersan reads $(SYSTEM_DATA) (Debian's package); where only the verified download exists, point it there
WITH_DATA = if [ ! -f $(SYSTEM_DATA)/train-images-idx3-ubyte.gz ] && [ -f $(LOCAL_DATA)/t10k-labels-idx1-ubyte.gz ]; \
	then export HYPERSAN_DATA=$(LOCAL_DATA); fi;

.PHONY: test demo setup data glyphs clean

# One pytest-xdist worker per core (at most 4), each on its share of the cores (tests/conftest.py); idle workers
# take tests queued for the others (worksteal). Plain `pytest` runs the same tests in one process.
test: setup data
	@$(WITH_DATA) $(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist worksteal

demo: setup data
	@$(WITH_DATA) $(BIN)/hypersan demo --force

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: a bare or open-ended torch would pull a multi-GB CUDA build. pip byte-compiles one file
	# at a time; compileall does it on every core, and leaves out the packages' own test suites, which nothing
	# imports (the setup took 61-72 s before, 43 s after, on a 2-core Zen 4). As pip does, it leaves a file that
	# does not compile on this Python (torch's tests hold one for 3.12) to the interpreter.
	$(BIN)/pip install -q --no-compile torch==2.13.0
	$(BIN)/pip install -q --no-compile -e '.[test,text,onnx,baselines,serve,glyphs]'
	$(BIN)/python -m compileall -qq -j 0 -x '/(tests?|testing/_internal)/' \
		$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || true
	touch $@

# Fashion-MNIST: Debian's package where apt and root are there, else a download from the dataset's official
# source, checked against SHA-256 sums (tools/get_fashion_mnist.py). If both fail, the tests that need the
# real images skip, saying why, and `make demo` stops with the reason.
data:
	@if [ -f $(SYSTEM_DATA)/train-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)); then :; \
	else $(PY) tools/get_fashion_mnist.py --dest $(LOCAL_DATA) || \
		echo "note: Fashion-MNIST is not available: real-data tests will skip"; fi

# The glyph set (docs/DATA.md): the pinned font packages (configs/glyph-fonts.txt), installed with apt where apt and
# root are there, then rendered into data/glyphs from exactly those packages' font files.
GLYPH_FONTS := $(shell grep -v '^\#' configs/glyph-fonts.txt)
glyphs: setup
	@missing=$$(for p in $(GLYPH_FONTS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			apt-get install -y -qq $$missing >/dev/null || (apt-get update -qq && apt-get install -y -qq $$missing >/dev/null); \
		else echo "the glyph set needs these font packages; install them (as root): apt-get install $$missing"; exit 1; fi; \
	fi
	@mkdir -p data
	dpkg -L $(GLYPH_FONTS) | grep -iE '\.(ttf|otf|ttc)$$' | LC_ALL=C sort -u > data/glyph-font-files.txt
	$(BIN)/hypersan data glyphs --out data/glyphs --force --font-list data/glyph-font-files.txt

clean:
	rm -rf $(VENV) .pytest_cache
