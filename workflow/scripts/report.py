from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.report import report_step

labels, methods = snakemake.params.labels, snakemake.params.methods
inp, out = snakemake.input, snakemake.output
report_step(
    metrics={(label, method): path for (label, method), path in zip(
        [(l, m) for l in labels for m in methods], inp.metrics)},
    selections=dict(zip(labels, inp.selections)),
    tasks=dict(zip(labels, inp.tasks)),
    cohort=inp.cohort,
    ground_truth=inp.ground_truth[0] if inp.ground_truth else None,
    out_markdown=out.markdown,
    out_accuracy=out.accuracy,
    out_wga=out.wga,
    out_removed=out.removed,
    out_detection=out.detection,
)
