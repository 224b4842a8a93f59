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

# The CPU tiny sweep through the papermill sweep notebook (every level and backend, batch 1,4 x seq 16,128),
# then the figures notebook on its results: executed notebooks, results.csv and figures/ all go into
# $(SWEEP_OUT) (under runs/, git-ignored), never into data/ or figures/. Run again, the sweep resumes: only
# cells without a row run. `make sweep SWEEP_PARAMS='{...}'` sweeps other parameters (01_sweep.ipynb's).
SWEEP_PARAMS ?= {level: "layer,model,decode,train", backends: [all], batch_sizes: [1, 4], seq_lens: [16, 128], warmup: 1, iters: 5}
PAPERMILL := $(VENV)/bin/papermill --no-progress-bar

sweep: setup
	mkdir -p $(SWEEP_OUT)
	$(PAPERMILL) notebooks/01_sweep.ipynb $(SWEEP_OUT)/01_sweep.ipynb -y '$(SWEEP_PARAMS)' \
		-p results_path $(SWEEP_OUT)/results.csv
	$(PAPERMILL) notebooks/02_figures.ipynb $(SWEEP_OUT)/02_figures.ipynb \
		-y '{results: [$(SWEEP_OUT)/results.csv], out_dir: $(SWEEP_OUT)/figures}'
	@echo "results: $(SWEEP_OUT)/results.csv; figures: $(SWEEP_OUT)/figures/; notebooks: $(SWEEP_OUT)/*.ipynb"

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf $(VENV) runs
