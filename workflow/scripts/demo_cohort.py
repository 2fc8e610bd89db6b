from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.demo import generate_demo_cohort

generate_demo_cohort(
    snakemake.params.cxr_root,
    snakemake.params.iv_root,
    snakemake.output.ground_truth,
    **snakemake.params.demo,
)
