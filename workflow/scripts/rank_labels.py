from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.evaluation import rank_labels_step

rank_labels_step(
    dict(zip(snakemake.params.labels, snakemake.input.predictions)),
    snakemake.input.cohort,
    snakemake.output.ranking,
    groups=snakemake.params.groups,
)
