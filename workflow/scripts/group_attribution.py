from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.scores import tau_step

inp = snakemake.input
tau_step(
    inp.features,
    inp.out_to_loss,
    inp.target_grads,
    inp.task,
    inp.base_predictions,
    inp.members,
    snakemake.params.group,
    snakemake.output.tau,
    snakemake.output.stats,
)
