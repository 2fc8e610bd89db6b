from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.cohort import build_cohort

build_cohort(snakemake.input.table, snakemake.input.race, snakemake.output.images)
