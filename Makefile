# Two commands do everything on a fresh machine: `make run` and `make test`.
# Both create .venv and install the pinned requirements first when needed.
VENV  := .venv
PY    := $(VENV)/bin/python
SMK   := $(VENV)/bin/snakemake
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: run test test-all test-slurm dryrun rulegraph bench bench-plan clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

## run: the whole workflow on the demo cohort -> results/report/ (open results/report/report.html)
run: $(STAMP)
	$(SMK) --cores $(CORES)
	$(SMK) --report results/report/report.html

## test: unit tests and the end-to-end workflow test
test: $(STAMP)
	$(PY) -m pytest -m "not slurm" -q

## dryrun: print the planned jobs for the current config
dryrun: $(STAMP)
	$(SMK) -n

## bench: TRAK featurization speed and agreement, stock traker vs this project's paths
## (about 10 minutes on 2 cores) -> results/bench/attribution.json; bench/gpu.sh on a GPU
bench: $(STAMP) bench-plan
	$(PY) bench/attribution.py

## bench-plan: plan a full-MIMIC-scale run (377,110 images, metadata only, 14 labels, 6 groups,
## 10 TRAK models, erm + d3m) with snakemake -n; prints the job count and the dry-run seconds
bench-plan: $(STAMP)
	$(PY) bench/plan_full_scale.py

## rulegraph: redraw docs/rulegraph.svg from the real workflow (needs graphviz's dot)
rulegraph: $(STAMP)
	$(SMK) --rulegraph --quiet all | dot -Tsvg > docs/rulegraph.svg

clean:
	rm -rf results .snakemake

## test-slurm: the SLURM profile on a real local Slurm cluster (as root; see scripts/slurm-local.sh)
test-slurm: $(STAMP)
	scripts/slurm-local.sh start
	$(PY) -m pytest -m slurm -q
