from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.report import report_step

from itertools import product

labels, seeds, methods = snakemake.params.labels, snakemake.params.seeds, snakemake.params.methods
inp, out = snakemake.input, snakemake.output
report_step(
    # expand() orders the files label-major, then seed, then method.
    metrics=dict(zip(product(labels, seeds, methods), inp.metrics)),
    selections=dict(zip(product(labels, seeds), inp.selections)),
    tasks=dict(zip(labels, inp.tasks)),
    cohort=inp.cohort,
    ground_truth=inp.ground_truth[0] if inp.ground_truth else None,
    out_markdown=out.markdown,
    out_accuracy=out.accuracy,
    out_wga=out.wga,
    out_removed=out.removed,
    out_detection=out.detection,
)
