# The training-row table (image_index, weight) of one continued-training method.
from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.controls import training_rows_step

inp = snakemake.input
training_rows_step(
    snakemake.wildcards.method,
    inp.task,
    snakemake.output.rows,
    seed=int(snakemake.wildcards.seed),
    selection_parquet=inp.get("selection"),
    cohort_parquet=inp.get("cohort"),
    base_predictions_parquet=inp.get("base_predictions"),
    jtt_upweight=snakemake.params.jtt_upweight,
)
