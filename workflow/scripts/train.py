# Base training (train_base) and continued training (finetune: one method's training-row table).
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
    rows_parquet=inp.get("rows"),
    epoch_ckpt_dir=out.get("epochs"),
    threads=snakemake.threads,
)
