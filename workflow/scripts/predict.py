# Predictions of one checkpoint: the base model on validate+test (predict_base), or a
# continued-training method on test (predict_test).
from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.prediction import predict_step

predict_step(
    snakemake.input.model,
    snakemake.input.task,
    snakemake.input.cache,
    snakemake.output.predictions,
    splits=tuple(snakemake.params.splits),
    threads=snakemake.threads,
)
