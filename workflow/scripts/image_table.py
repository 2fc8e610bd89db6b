from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.cohort import build_image_table

p = snakemake.params
build_image_table(
    p.cxr_root,
    snakemake.output.table,
    snakemake.output.excluded,
    views=p.views,
    labeler=p.labeler,
    split=p.split,
    # None (official split): the random split's settings are not passed, see rule image_table.
    **{k: v for k, v in dict(split_fractions=p.split_fractions, split_seed=p.split_seed).items() if v is not None},
    race_parquet=snakemake.input.race[0] if snakemake.input.race else None,
)
