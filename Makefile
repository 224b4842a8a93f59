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

# The default CPU tiny sweep (every level and backend, batch 1,4 x seq 16,128) into runs/ (git-ignored),
# never into data/; run again, it resumes: only cells without a row run.
sweep: setup
	$(VENV)/bin/moe-lab sweep --out $(SWEEP_OUT)/sweep.csv

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) runs
