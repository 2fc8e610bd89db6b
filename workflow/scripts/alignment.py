from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.alignment import alignment_step

groups = snakemake.params.groups
alignment_step(
    dict(zip(groups, snakemake.input.tau)),
    dict(zip(groups, snakemake.input.stats)),
    snakemake.output.scores,
    beta=snakemake.params.beta,
    weighting=snakemake.params.weighting,
)
