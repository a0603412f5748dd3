# Set-up and entry points. `make demo` and `make test` are the README's two commands: each
# creates (or reuses) the virtualenv .venv and installs everything the project needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench install chromium

# The virtualenv, torch's CPU build first (a bare `torch` requirement would pull a multi-GB
# CUDA build), then the project with its test extras. Re-run when pyproject.toml changes.
# The install compiles the hot path with Cython (setup.py).
$(BIN)/nextstate: pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.compiled

# The hot path compiled again after its sources change (only what changed is rebuilt): an
# edited module not compiled again still runs, as its source (extractors/_compiled.py).
$(VENV)/.compiled: $(BIN)/nextstate $(wildcard daemon/*.py extractors/*.py)
	$(BIN)/python setup.py --quiet build_ext --inplace
	touch $@

install: $(BIN)/nextstate $(VENV)/.compiled

# The main job on its embedded default: the closed-loop demo (no broker needed).
demo: install
	$(BIN)/nextstate demo

# Debian's chromium renders the report page for its screenshot test (root installs it).
chromium:
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium not installed: the report screenshot test will be skipped"

test: install chromium
	$(BIN)/python -m pytest -q

# Speed and memory targets: each script prints ratios measured in one run.
bench: install
	$(BIN)/python benchmarks/bench_daemon.py
	$(BIN)/python benchmarks/bench_daemon_kafka.py throughput --sessions 500
	$(BIN)/python benchmarks/bench_daemon_kafka.py throughput --workers 2 --sessions 2000
	$(BIN)/python benchmarks/bench_daemon_kafka.py latency --rate 2000 --seconds 20
	$(BIN)/python benchmarks/bench_daemon_kafka.py rss
	$(BIN)/python benchmarks/bench_extractors.py
	$(BIN)/python benchmarks/bench_buffers.py
	$(BIN)/python benchmarks/bench_scaling.py
	$(BIN)/python benchmarks/bench_trainer.py
	$(BIN)/python benchmarks/bench_timeseries.py --days 3 --series 50
