from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.evaluation import metrics_step

metrics_step(snakemake.input.predictions, snakemake.input.cohort, snakemake.output.metrics,
             ece_bins=snakemake.params.ece_bins)
