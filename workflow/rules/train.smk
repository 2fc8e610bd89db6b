# Base training per label, and the continued training that compares erm with d3m.


rule train_base:
    input:
        task=task(),
        cache=IMAGE_CACHE,
    output:
        model=f"{R}/models/{{label}}/s{{seed}}/base.pt",
        history=f"{R}/models/{{label}}/s{{seed}}/base.history.json",
        epochs=directory(f"{R}/models/{{label}}/s{{seed}}/base_epochs"),
    params:
        model=model_cfg(),
        train=train_cfg("base_epochs"),
    log:
        f"{R}/logs/train_base/{{label}}.s{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/train_base/{{label}}.s{{seed}}.tsv"
    script:
        "../scripts/train.py"


rule predict_base:
    input:
        model=rules.train_base.output.model,
        task=task(),
        cache=IMAGE_CACHE,
    output:
        predictions=f"{R}/models/{{label}}/s{{seed}}/base.predictions.parquet",
    params:
        splits=["validate", "test"],
    log:
        f"{R}/logs/predict_base/{{label}}.s{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/predict_base/{{label}}.s{{seed}}.tsv"
    script:
        "../scripts/predict.py"


def kept_rows(wildcards):
    return [f"{R}/d3m/{wildcards.label}/s{wildcards.seed}/selection.parquet"] if wildcards.method == "d3m" else []


rule finetune:
    input:
        task=task(),
        cache=IMAGE_CACHE,
        init=rules.train_base.output.model,
        keep=kept_rows,
    output:
        model=f"{R}/models/{{label}}/s{{seed}}/{{method}}.pt",
        history=f"{R}/models/{{label}}/s{{seed}}/{{method}}.history.json",
    params:
        model=model_cfg(),
        train=train_cfg("finetune_epochs"),
    log:
        f"{R}/logs/finetune/{{label}}.s{{seed}}.{{method}}.log",
    benchmark:
        f"{R}/benchmarks/finetune/{{label}}.s{{seed}}.{{method}}.tsv"
    script:
        "../scripts/train.py"
