from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.cohort import build_cohort

p = snakemake.params
build_cohort(
    p.cxr_root,
    p.iv_root,
    snakemake.output.images,
    snakemake.output.excluded,
    views=p.views,
    labeler=p.labeler,
    race_map=p.race_map,
    race_conflict=p.race_conflict,
    split=p.split,
    split_fractions=p.split_fractions,
    split_seed=p.split_seed,
)
