from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.images import build_image_cache

build_image_cache(
    snakemake.input.table,
    snakemake.params.cxr_root,
    snakemake.output.cache,
    snakemake.output.index,
    size=snakemake.params.size,
    workers=snakemake.threads,
)
