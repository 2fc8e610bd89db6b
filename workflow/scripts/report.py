from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from itertools import product

from d3mflow.report import report_step

labels, seeds, methods = snakemake.params.labels, snakemake.params.seeds, snakemake.params.methods
inp, out = snakemake.input, snakemake.output
# expand() orders the files label-major, then seed, then method; per-label figures follow `labels`.
images = {label: {} for label in labels}
for label, top, errors in zip(labels, inp.top_images, inp.error_images):
    images[label] = {"top": top, "errors": errors}
report_step(
    metrics=dict(zip(product(labels, seeds, methods), inp.metrics)),
    comparison=dict(zip(labels, inp.comparison)),
    selections=dict(zip(product(labels, seeds), inp.selections)),
    tasks=dict(zip(labels, inp.tasks)),
    cohort=inp.cohort,
    ground_truth=inp.ground_truth[0] if inp.ground_truth else None,
    precision_k=snakemake.params.precision_k,
    images=images,
    errors={label: pair for label, pair in zip(labels, zip(inp.errors, inp.attribution))},
    out=dict(out.items()),
)
