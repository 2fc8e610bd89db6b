from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.cohort import build_task

build_task(
    snakemake.input.table,
    snakemake.params.label,
    snakemake.output.task,
    snakemake.output.excluded,
    uncertain=snakemake.params.uncertain,
)
