from d3mflow.io import setup_logging

setup_logging(snakemake.log[0])

from d3mflow.attribution import featurize_step

featurize_step(
    snakemake.input.model,
    snakemake.input.task,
    snakemake.input.cache,
    out_features=snakemake.output.features,
    out_out_to_loss=snakemake.output.out_to_loss,
    out_target_grads=snakemake.output.target_grads,
    proj_dim=snakemake.params.proj_dim,
    projector_seed=snakemake.params.projector_seed,
    projector=snakemake.params.projector,
    model_index=snakemake.params.model_index,
    batch_size=snakemake.params.batch_size,
    workdir=snakemake.params.workdir,
    threads=snakemake.threads,
)
