from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.training import trak_model_step

trak_model_step(
    snakemake.output.model,
    snakemake.output.history,
    **snakemake.params.trak,
    model=snakemake.params.model,
    task_parquet=snakemake.input.get("task"),
    cache=snakemake.input.get("cache"),
    epochs_dir=snakemake.input.get("epochs"),
    threads=snakemake.threads,
)
