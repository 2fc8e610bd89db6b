from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.selection import selection_step

selection_step(
    snakemake.input.scores,
    snakemake.output.selection,
    rule=snakemake.params.rule,
    num_to_discard=snakemake.params.num_to_discard,
)
