from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.examples import top_images_step

inp, out = snakemake.input, snakemake.output
top_images_step(
    tau=dict(zip(snakemake.params.groups, inp.tau)),
    task=inp.task,
    cohort=inp.cohort,
    cache=inp.cache[0] if inp.cache else None,
    label=snakemake.params.label,
    k=snakemake.params.k,
    out_csv=out.table,
    out_png=out.get("grid"),
)
