from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.evaluation import compare_step

params, out = snakemake.params, snakemake.output
compare_step(
    dict(zip(map(tuple, params.runs), snakemake.input.predictions)),
    snakemake.input.cohort,
    out.comparison,
    label=params.label,
    n_replicates=params.n_replicates,
    bootstrap_seed=params.bootstrap_seed,
    ece_bins=params.ece_bins,
)
