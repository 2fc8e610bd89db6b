# Two commands do everything on a fresh machine: `make run` and `make test`.
# Both create .venv and install the pinned requirements first when needed.
VENV  := .venv
PY    := $(VENV)/bin/python
SMK   := $(VENV)/bin/snakemake
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: run test test-all dryrun rulegraph bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

## run: the whole workflow on the demo cohort -> results/report/
run: $(STAMP)
	$(SMK) --cores $(CORES)

## test: unit tests and the end-to-end workflow test
test: $(STAMP)
	$(PY) -m pytest -m "not slurm" -q

## dryrun: print the planned jobs for the current config
dryrun: $(STAMP)
	$(SMK) -n

clean:
	rm -rf results .snakemake
