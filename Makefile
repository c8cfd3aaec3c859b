# Cardiac Dreamer workbook. `make demo` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PY_SYS ?= python3
MIN_PYTHON := 3.11
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data/phantom
OUT ?= outputs
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PYTHONUNBUFFERED := 1
export MPLBACKEND := Agg
# keep Jupyter/IPython state inside the project, not in ~
export JUPYTER_CONFIG_DIR := $(CURDIR)/.cache/jupyter-config
export JUPYTER_RUNTIME_DIR := $(CURDIR)/.cache/jupyter-runtime
export IPYTHONDIR := $(CURDIR)/.cache/ipython

.PHONY: help install python-check demo test export check-sync nbtest pytest browser lab bench clean
help:
	@echo "make demo   - install, build the phantom data set, train with configs/demo.yaml, print the report path"
	@echo "make test   - install, check the library is in sync with nbs/, run notebook tests and pytest"
	@echo "make lab    - start JupyterLab on the workbook"
	@echo "make bench  - full performance benchmark (writes outputs/bench_*.json)"

# Say which Python will build the venv, and stop early with a clear message when it is too old for the pins.
python-check:
	@v=$$($(PY_SYS) -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null) || { \
	  echo "ERROR: no Python found as '$(PY_SYS)'; install Python >= $(MIN_PYTHON) or run: make PY_SYS=/path/to/python3.11"; exit 1; }; \
	  if [ "$$(printf '%s\n%s\n' "$(MIN_PYTHON)" "$$v" | sort -V | head -n1)" != "$(MIN_PYTHON)" ]; then \
	    echo "ERROR: $(PY_SYS) is Python $$v; cardiac-dreamer needs Python >= $(MIN_PYTHON) (the pinned numpy, pandas, matplotlib, pillow and ipykernel do)."; \
	    echo "       Install Python $(MIN_PYTHON) or newer and run: make PY_SYS=/path/to/python$(MIN_PYTHON)"; exit 1; fi; \
	  echo "Python $$v ($$(command -v $(PY_SYS) || echo $(PY_SYS)))"

$(STAMP): setup.py settings.ini constraints.txt
	@test -x $(PY) || $(MAKE) --no-print-directory python-check
	@t0=$$(date +%s); \
	  test -x $(PY) || $(PY_SYS) -m venv $(VENV); \
	  mkdir -p $(IPYTHONDIR) $(JUPYTER_CONFIG_DIR) $(JUPYTER_RUNTIME_DIR); \
	  echo "installing cardiac-dreamer and its pinned dependencies into $(VENV) (a few minutes on a fresh machine)"; \
	  $(PY) -m pip install -q --upgrade pip; \
	  $(PY) -m pip install -q --no-compile -c constraints.txt -e ".[dev]"; \
	  $(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (cardiac-dreamer)" >/dev/null; \
	  echo "install: $$(( $$(date +%s) - t0 )) s"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cardiac-dreamer demo --data_dir $(DATA) --output_dir $(OUT)

# The notebooks are the source: exporting them must not change any tracked or untracked library file.
check-sync: $(STAMP)
	$(BIN)/nbdev_export
	@if [ -n "$$(git status --porcelain -- cardiac_dreamer)" ]; then \
	  echo "ERROR: cardiac_dreamer/ is out of sync with nbs/ (nbdev_export changed it):"; \
	  git status --porcelain -- cardiac_dreamer; git --no-pager diff --stat -- cardiac_dreamer; exit 1; fi
	@echo "library in sync with notebooks"

# The notebooks' tests write scratch folders (tempfile) with data sets and checkpoints: give them one folder per run and
# remove it when every notebook passed (kept for inspection when one failed, like pytest's temporary folders).
NBTEST_WORKERS ?= 2
NBTEST_ENV ?=
nbtest: $(STAMP)
	tmp=$$(mktemp -d -t cardiac_dreamer_nbtest.XXXXXX); rc=0; TMPDIR=$$tmp $(NBTEST_ENV) $(BIN)/nbdev_test --n_workers $(NBTEST_WORKERS) || rc=$$?; \
	  if [ $$rc -eq 0 ]; then rm -rf "$$tmp"; else echo "notebook tests failed; their scratch files are in $$tmp"; fi; exit $$rc

# The browser test drives Debian's Chromium through Playwright (no browser download): install the package when absent.
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium for the browser test"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

pytest: $(STAMP) browser
	rc=0; $(PY) -m pytest tests -q -ra --timeout=900 -o tmp_path_retention_policy=failed || rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests"; exit 1; fi; exit $$rc

# The notebook tests run beside pytest, one notebook at a time on one thread: one after the other, the two cores were idle
# about 40 % of the suite (kernel start-ups, processes waited on). Either failing fails `make test`.
test: check-sync
	$(MAKE) --no-print-directory -j2 --output-sync=line nbtest pytest NBTEST_WORKERS=1 NBTEST_ENV="OMP_NUM_THREADS=1 MKL_NUM_THREADS=1"

export: $(STAMP)
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=nbs

bench: $(STAMP)
	$(BIN)/cardiac-dreamer bench --out $(OUT)/bench_cpu.json

clean:
	rm -rf .cache .pytest_cache build dist *.egg-info
