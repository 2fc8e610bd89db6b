# TRAK: an ensemble of models per label, one fresh traker feature store per model, then the
# per-group attribution tau(g) and base-model validation loss of every race group.


def trak_model_inputs(wildcards):
    trak = settings(wildcards.label)["trak"]
    if trak["model_source"] == "base_checkpoints":
        return dict(epochs=f"{R}/models/{wildcards.label}/s{wildcards.seed}/base_epochs")
    return dict(task=task(wildcards.label), cache=IMAGE_CACHE)


def trak_model_params(wildcards):
    """Model m depends on its own seed only, so raising num_models keeps models 0..M-1."""
    s = settings(wildcards.label)
    m, seed = int(wildcards.m), int(wildcards.seed)
    if s["trak"]["model_source"] == "base_checkpoints":
        # Model m is the base checkpoint m epochs before the last one.
        return dict(source="base_checkpoints", epoch=s["train"]["base_epochs"] - m)
    return dict(
        source="subsets",
        subset_fraction=s["trak"]["subset_fraction"],
        subset_seed=1000 * seed + m,
        train=dict(train_cfg("base_epochs")(wildcards), epochs=s["trak"]["subset_epochs"], seed=1000 * seed + m),
    )


rule trak_model:
    input:
        unpack(trak_model_inputs),
    output:
        model=f"{R}/trak/{{label}}/s{{seed}}/models/m{{m}}.pt",
        history=f"{R}/trak/{{label}}/s{{seed}}/models/m{{m}}.history.json",
    params:
        model=model_cfg(),
        trak=trak_model_params,
    log:
        f"{R}/logs/trak_model/{{label}}.s{{seed}}.m{{m}}.log",
    benchmark:
        f"{R}/benchmarks/trak_model/{{label}}.s{{seed}}.m{{m}}.tsv"
    script:
        "../scripts/trak_model.py"


rule trak_features:
    input:
        model=rules.trak_model.output.model,
        task=task(),
        cache=IMAGE_CACHE,
    output:
        features=f"{R}/trak/{{label}}/s{{seed}}/features/m{{m}}/features.npy",
        out_to_loss=f"{R}/trak/{{label}}/s{{seed}}/features/m{{m}}/out_to_loss.npy",
        target_grads=f"{R}/trak/{{label}}/s{{seed}}/features/m{{m}}/target_grads.npy",
    params:
        proj_dim=setting("trak", "proj_dim"),
        # Every seed's run is independent, down to its random projections.
        projector_seed=lambda w: settings(w.label)["trak"]["projector_seed"] + int(w.seed),
        projector=setting("trak", "projector"),
        # Each ensemble member gets its own projection, as in TRAK's Algorithm 1.
        model_index=lambda w: int(w.m),
        batch_size=setting("trak", "batch_size"),
        workdir=f"{R}/trak/{{label}}/s{{seed}}/features/m{{m}}",
    log:
        f"{R}/logs/trak_features/{{label}}.s{{seed}}.m{{m}}.log",
    benchmark:
        f"{R}/benchmarks/trak_features/{{label}}.s{{seed}}.m{{m}}.tsv"
    script:
        "../scripts/trak_features.py"


rule group_attribution:
    input:
        features=feature_files("features"),
        out_to_loss=feature_files("out_to_loss"),
        target_grads=feature_files("target_grads"),
        task=task(),
        base_predictions=rules.predict_base.output.predictions,
        members=group_members(),
    output:
        tau=f"{R}/d3m/{{label}}/s{{seed}}/tau/{{group}}.parquet",
        stats=f"{R}/d3m/{{label}}/s{{seed}}/tau/{{group}}.json",
    params:
        group=group_name,
    log:
        f"{R}/logs/group_attribution/{{label}}.s{{seed}}.{{group}}.log",
    benchmark:
        f"{R}/benchmarks/group_attribution/{{label}}.s{{seed}}.{{group}}.tsv"
    script:
        "../scripts/group_attribution.py"
