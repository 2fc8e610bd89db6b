from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.cohort import build_group_members

build_group_members(snakemake.input.images, snakemake.params.group, snakemake.output.members)
