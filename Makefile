# d2lport: `make demo` and `make test` work from a fresh clone; they set up everything first.
SHELL := /bin/bash
PYTHON ?= python3
# Two environments (see README, "Two environments"): .venv, the main one (numpy 2: PyTorch,
# TensorFlow/Keras, JAX/Flax, Jupyter, the tests), and .venv-mxnet (MXNet 1.9.1 needs
# numpy < 1.24).  MXNet's tests, workers, notebooks and recorded runs use .venv-mxnet
# without being told (d2lport.worker.python_for; the Jupyter kernel "d2lport-mxnet").
VENV ?= .venv
MXVENV ?= .venv-mxnet
PY := $(VENV)/bin/python
MXPY := $(MXVENV)/bin/python
STAMP := $(VENV)/.d2lport-installed
MXSTAMP := $(MXVENV)/.d2lport-installed
# MXNet's Jupyter kernel, registered in the main venv (its jupyter, nbconvert and nbval find it)
MXKERNEL := d2lport-mxnet
KERNELSPEC := $(VENV)/share/jupyter/kernels/$(MXKERNEL)/kernel.json
PIP := -m pip install -q --disable-pip-version-check
PYTEST := $(PY) -m pytest -q -p no:cacheprovider --durations=8
MXPYTEST := $(MXPY) -m pytest -q -p no:cacheprovider --durations=8
export TF_CPP_MIN_LOG_LEVEL ?= 2
# XLA's compiled programs, kept on disk (keyed by the program, JAX's version and flags): the
# test suite, the comparison workers and the notebooks start many JAX processes that compile
# the same training steps again; from the second process on they are read back.  Every
# program is kept, however quick its compile (JAX's default keeps those over 1 s): a step run
# op by op, as the book's JAX loop updates its weights, is hundreds of small compiles.
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS ?= 0
export MXNET_KERNEL := $(MXKERNEL)
MATHJAX := .cache/mathjax/node_modules/mathjax/es5/tex-chtml-full.js
BOOK := build/book
PORT ?= 8000
# d2lport finds .venv-mxnet beside the checkout by itself; another folder must be named.
ifneq ($(MXVENV),.venv-mxnet)
export D2LPORT_PYTHON_MXNET ?= $(abspath $(MXPY))
endif

.PHONY: setup data demo test test-core test-torch test-tf test-mxnet test-jax test-compare test-notebooks test-book book serve notebooks notebooks-check kill-loop bench results results-status clean

# Each venv is rebuilt only when its pins or the project metadata change (stamps: a rerun
# is instant); Debian's graphviz (for the chapters' pictures) is installed when missing, as root.
setup: $(STAMP) $(MXSTAMP) $(KERNELSPEC) $(MATHJAX)
	@bash scripts/system_deps.sh || echo "(continuing: only the notebooks and the book need them)"

# The website's math, served by the site itself (it works offline): MathJax 3 from npm.
$(MATHJAX):
	npm install --silent --no-save --no-audit --no-fund --prefix .cache/mathjax mathjax@3.2.2

$(STAMP): requirements/all.txt requirements/lock.txt requirements/no-deps.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) $(PIP) -r requirements/all.txt -c requirements/lock.txt
	$(PY) $(PIP) --no-deps -r requirements/no-deps.txt
	$(PY) $(PIP) --no-deps --no-build-isolation -e .
	@touch $@

$(MXSTAMP): requirements/mxnet.txt requirements/mxnet-lock.txt requirements/no-deps.txt pyproject.toml
	@test -x $(MXPY) || $(PYTHON) -m venv $(MXVENV)
	$(MXPY) $(PIP) -r requirements/mxnet.txt -c requirements/mxnet-lock.txt
	$(MXPY) $(PIP) --no-deps -r requirements/no-deps.txt
	$(MXPY) $(PIP) --no-deps --no-build-isolation -e .
	@touch $@

# (ipykernel warns that the main venv's folder is not on ITS path: it is on the main jupyter's)
$(KERNELSPEC): $(MXSTAMP) | $(STAMP)
	@out=$$($(MXPY) -m ipykernel install --prefix "$(abspath $(VENV))" --name $(MXKERNEL) \
	    --display-name "Python 3 (d2lport: MXNet, $(MXVENV))" 2>&1) || { echo "$$out" >&2; exit 1; }
	@echo "Jupyter kernel $(MXKERNEL) ($(MXPY)) registered in $(VENV)"
	@touch $@

# Fashion-MNIST: Debian's dataset-fashion-mnist (as root), else a verified download.
data: setup
	@bash scripts/get_data.sh $(PY)

demo: setup data
	$(PY) -m d2lport.cli shapes googlenet --input 1x1x96x96
	D2LPORT_PROGRESS=0 $(PY) -m d2lport.cli train inception_a_net --epochs 3 --limit 20000 --lr 0.02 --momentum 0.9

# One pytest process per framework: MXNet must never share a process with TensorFlow.  The
# framework-free (core) tests run in both environments: with numpy 2 and with numpy 1.23.
test: setup data
	$(MAKE) --no-print-directory test-torch
	$(MAKE) --no-print-directory test-tf
	$(MAKE) --no-print-directory test-mxnet
	$(MAKE) --no-print-directory test-jax
	$(MAKE) --no-print-directory test-compare
	$(MAKE) --no-print-directory test-notebooks
	$(MAKE) --no-print-directory test-book

test-torch: setup data
	$(PYTEST) -m "(core or torch) and not parity and not killloop" --forbid-imports tensorflow,mxnet,jax

# The frameworks side by side; this process imports none (each runs in its own worker, MXNet's
# in .venv-mxnet).
test-compare: setup data
	$(PYTEST) -m parity tests/test_compare.py tests/test_bench.py --forbid-imports torch,tensorflow,mxnet,jax

# (not jax: TensorFlow 2.21 imports jax itself when it is installed, tensorflow/lite/python/util.py)
test-tf: setup data
	$(PYTEST) -m "tensorflow and not killloop" --forbid-imports torch,mxnet

# In MXNet's own environment, with the core tests again (numpy 1.23); its parity tests take
# their PyTorch references from the main environment (a child process).
test-mxnet: setup data
	$(MXPYTEST) -m "((core and not parity) or mxnet) and not killloop" --forbid-imports torch,tensorflow,jax

test-jax: setup data
	$(PYTEST) -m "jax and not killloop" --forbid-imports torch,tensorflow,mxnet

# The framework-free tests alone, in both environments (seconds to a minute each).
test-core: setup data
	$(PYTEST) -m "core and not parity and not killloop" --forbid-imports torch,tensorflow,mxnet,jax
	$(MXPYTEST) -m "core and not parity and not killloop" --forbid-imports torch,tensorflow,mxnet,jax

# Chapters -> per-framework notebooks (jupytext), executed; nbval re-runs them in smoke mode.
notebooks: setup data
	bash scripts/notebooks.sh build $(PY)

test-notebooks: setup data
	bash scripts/notebooks.sh test $(PY)

# The chapters as a website: pages generated from chapters/*.md and the committed notebooks
# (python -m d2lport.book), built by Sphinx; warnings are errors (a broken reference fails).
book: setup
	$(PY) -m d2lport.book $(BOOK)/src --mathjax $(dir $(MATHJAX))
	$(PY) -m sphinx -b html -q -W --keep-going -j 1 $(BOOK)/src $(BOOK)/html
	@echo "the book: $(BOOK)/html/index.html (make serve: http://localhost:$(PORT)/)"

serve: book
	$(PY) -m http.server --bind 127.0.0.1 --directory $(BOOK)/html $(PORT)

# Every page in headless Chromium (Debian's, driven by Playwright): no console error, no broken
# image or link, tabs that switch every block, typeset math; screenshots in $(BOOK)/html/_screenshots.
test-book: book
	$(PYTEST) -m book tests/test_book.py

notebooks-check: setup
	bash scripts/notebooks.sh check $(PY)

# Training killed with SIGKILL at 20+ points per backend (steps and the phases of a
# checkpoint write), each resumed to the end: minutes, so outside make test.
kill-loop: setup data
	$(PYTEST) -m "torch and killloop" --forbid-imports tensorflow,mxnet,jax
	$(PYTEST) -m "tensorflow and killloop" --forbid-imports torch,mxnet
	$(MXPYTEST) -m "mxnet and killloop" --forbid-imports torch,tensorflow,jax

bench: setup data
	$(PY) -m d2lport.cli bench googlenet vgg_d2l --batch-size 128 --steps 3 --rounds 3 --repeats 1 \
	    --json benchmarks/latest.json --markdown benchmarks/latest.md --readme README.md

# The recorded runs (results/*.json) the chapters show: every recipe in every framework,
# about 4 hours on a 2-core CPU.  Current records are skipped, an interrupted run resumes
# from its checkpoint; RESULTS_COMMIT=1 commits each record as it is written.
results: setup data
	$(PY) -m d2lport.cli results run --readme README.md $(if $(RESULTS_COMMIT),--commit)

results-status: setup
	$(PY) -m d2lport.cli results status

clean:
	rm -rf $(VENV) $(MXVENV) .pytest_cache .cache build *.egg-info
