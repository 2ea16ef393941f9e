# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: install demo test bench report clean

install: $(VENV)/.installed

# torch 2.13.0 first: its CPU wheel satisfies the project's torch range, so nothing
# later pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[local,server,dev,docs,bench,postgres,ray]'
	touch $@

demo: install
	BIN=$(BIN) scripts/demo.sh

test: install
	$(PY) -m pytest -q

bench: install
	$(BIN)/maas-tune bench run benchmarks/grid.toml
	cd benchmarks && ../$(PY) throughput.py && ../$(PY) server_throughput.py
	$(MAKE) report

# Every number in README.md and docs/*.md, rewritten from benchmarks/results/ (no model,
# no network); tests/bench/test_published_numbers.py fails when a page and its results differ.
report: install
	$(PY) benchmarks/publish.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
