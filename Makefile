# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
DEMO_FLAGS := --dataset sst2 --method zero-shot,calibrated,dect --shots 16 --seed 0 \
              --budget demo-train --max-queries 64

.PHONY: install demo test bench clean

install: $(VENV)/.installed

# torch 2.13.0 first: its CPU wheel satisfies the project's torch range, so nothing
# later pulls a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[local,server,dev]'
	touch $@

demo: install
	@echo "== run 1: score SST-2 with Gemma 3 270M, fit 16-shot DecT under a 64-query training budget"
	$(BIN)/maas-tune eval $(DEMO_FLAGS)
	@echo "== run 2: the same job again, answered from the cache"
	$(BIN)/maas-tune eval $(DEMO_FLAGS) --quiet

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
