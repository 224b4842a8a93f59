# Quick start: `make sweep` (the main job) and `make test` (every test). Each sets itself up from a
# fresh clone: a virtual environment in .venv, torch, and moe_lab with its notebook and dev extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
SWEEP_OUT ?= runs/cpu-tiny

.PHONY: setup test sweep lab clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e '.[notebooks,dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

test: setup
	$(VENV)/bin/pytest

sweep: setup
	$(VENV)/bin/moe-lab check --model tiny

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) runs
