# Base training (train_base) and continued training (finetune: erm, or d3m on kept rows).
from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.training import TrainConfig, train_step

inp, out = snakemake.input, snakemake.output
train_step(
    inp.task,
    inp.cache,
    out.model,
    out.history,
    **snakemake.params.model,
    cfg=TrainConfig(**snakemake.params.train),
    init_ckpt=inp.get("init"),
    keep_parquet=inp.keep[0] if inp.get("keep") else None,
    epoch_ckpt_dir=out.get("epochs"),
    threads=snakemake.threads,
)
