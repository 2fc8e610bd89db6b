from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.auto_d3m import auto_d3m_step

inp, out, params = snakemake.input, snakemake.output, snakemake.params
auto_d3m_step(
    inp.features,
    inp.out_to_loss,
    inp.target_grads,
    inp.task,
    inp.base_predictions,
    out.selection,
    out.pseudo_groups,
    beta=params.beta,
    weighting=params.weighting,
    rule=params.rule,
    num_to_discard=params.num_to_discard,
)
