from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.cohort import build_race

build_race(
    snakemake.params.iv_root,
    snakemake.output.race,
    race_map=snakemake.params.race_map,
    race_conflict=snakemake.params.race_conflict,
)
