# d2lport: `make demo` and `make test` work from a fresh clone; they set up everything first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.d2lport-installed
PYTEST := $(PY) -m pytest -q -p no:cacheprovider
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup data demo test test-core test-torch test-tf test-mxnet test-compare test-notebooks notebooks kill-loop bench results results-status clean

# The venv is rebuilt only when the pins or the project metadata change; Debian's graphviz
# (for the chapters' pictures) is installed when missing, as root.
setup: $(STAMP)
	@bash scripts/system_deps.sh || echo "(continuing: only the notebooks need it)"
$(STAMP): requirements/all.txt requirements/lock.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements/all.txt -c requirements/lock.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Fashion-MNIST: Debian's dataset-fashion-mnist (as root), else a verified download.
data: setup
	@bash scripts/get_data.sh $(PY)

demo: setup data
	$(PY) -m d2lport.cli shapes googlenet --input 1x1x96x96
	D2LPORT_PROGRESS=0 $(PY) -m d2lport.cli train inception_a_net --epochs 3 --limit 20000 --lr 0.02 --momentum 0.9

# One pytest process per framework: MXNet must never share a process with TensorFlow.
test: setup data
	$(MAKE) --no-print-directory test-torch
	$(MAKE) --no-print-directory test-tf
	$(MAKE) --no-print-directory test-mxnet
	$(MAKE) --no-print-directory test-compare
	$(MAKE) --no-print-directory test-notebooks

test-torch: setup data
	$(PYTEST) -m "(core or torch) and not parity and not killloop" --forbid-imports tensorflow,mxnet

# The frameworks side by side; this process imports none (each runs in its own worker).
test-compare: setup data
	$(PYTEST) -m parity tests/test_compare.py tests/test_bench.py --forbid-imports torch,tensorflow,mxnet

test-tf: setup data
	$(PYTEST) -m "tensorflow and not killloop" --forbid-imports torch,mxnet

test-mxnet: setup data
	$(PYTEST) -m "mxnet and not killloop" --forbid-imports torch,tensorflow

# Chapters -> per-framework notebooks (jupytext), executed; nbval re-runs them in smoke mode.
notebooks: setup data
	bash scripts/notebooks.sh build $(PY)

test-notebooks: setup data
	bash scripts/notebooks.sh test $(PY)

notebooks-check: setup
	bash scripts/notebooks.sh check $(PY)

# Training killed with SIGKILL at 20+ points per backend (steps and the phases of a
# checkpoint write), each resumed to the end: minutes, so outside make test.
kill-loop: setup data
	$(PYTEST) -m "torch and killloop" --forbid-imports tensorflow,mxnet
	$(PYTEST) -m "tensorflow and killloop" --forbid-imports torch,mxnet
	$(PYTEST) -m "mxnet and killloop" --forbid-imports torch,tensorflow

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
	rm -rf $(VENV) .pytest_cache build *.egg-info
