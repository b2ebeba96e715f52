# twinkles: `make demo` (simulate the demo field, run the pipeline, write the report) and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO_REPO ?= twinkles-demo
PYTEST_ARGS ?= -m "not slow"

.PHONY: demo test test-all install install-test browser slurm bench clean-demo

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert (3, 11) <= sys.version_info[:2] <= (3, 13), "twinkles needs Python 3.11 to 3.13, found " + sys.version.split()[0] + ": set PYTHON=/path/to/python3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# compileall: an editable install leaves twinkles' own modules uncompiled, and where PYTHONDONTWRITEBYTECODE is
# set every process (each workflow worker, each `twinkles` command) would compile them again (~0.1 CPU-s)
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -e . -c constraints.txt
	$(BIN)/python -m compileall -q twinkles
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]' -c constraints.txt
	@touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Debian's Chromium for the status-page browser test (no browser download); needs root, else the test skips.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian chromium for the status-page test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "WARNING: could not install chromium; the browser test will be skipped"; \
	  else echo "WARNING: /usr/bin/chromium missing and not root: the browser test will be skipped"; fi; \
	fi

# Debian's Slurm (slurmctld, slurmd, clients) and MUNGE for the one-node Slurm cluster the workflow tests start
# (tests/workflow/slurm_cluster.py: its own config and key in a temporary folder; nothing under /etc is used, no
# daemon is left running); needs root, else those tests are skipped with a message.
slurm:
	@if [ ! -x /usr/sbin/slurmctld ] || [ ! -x /usr/sbin/slurmd ] || [ ! -x /usr/sbin/munged ] \
	    || ! command -v sbatch >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian slurm-wlm and munge for the Slurm tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      slurm-wlm munge >/dev/null) \
	      || echo "WARNING: could not install slurm-wlm/munge; the Slurm tests will be skipped"; \
	  else echo "WARNING: slurm-wlm/munge missing and not root: the Slurm tests will be skipped"; fi; \
	fi

demo: install
	@if [ ! -f $(DEMO_REPO)/registry.sqlite3 ]; then \
	  $(BIN)/twinkles simulate $(DEMO_REPO) --preset demo --seed 1; \
	else echo "$(DEMO_REPO) exists: reusing its simulated images (make clean-demo to start over)"; fi
	@# the report is written even when some jobs failed (it lists them); make still exits non-zero then
	@$(BIN)/twinkles run $(DEMO_REPO); status=$$?; \
	  $(BIN)/twinkles report $(DEMO_REPO) || exit $$?; \
	  echo "demo report: $(DEMO_REPO)/report/index.html"; exit $$status

test: install-test browser slurm
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: PYTEST_ARGS =
test-all: test

bench: install
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-demo:
	rm -rf $(DEMO_REPO)
