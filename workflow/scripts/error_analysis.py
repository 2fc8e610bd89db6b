from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.examples import error_analysis_step

inp, out, params = snakemake.input, snakemake.output, snakemake.params
error_analysis_step(
    features=list(inp.features),
    out_to_loss=list(inp.out_to_loss),
    target_grads=list(inp.target_grads),
    task=inp.task,
    predictions=inp.predictions,
    cohort=inp.cohort,
    cache=inp.cache[0] if inp.cache else None,
    label=params.label,
    k=params.k,
    train_k=params.train_k,
    out_errors=out.errors,
    out_attribution=out.attribution,
    out_png=out.get("grid"),
)
