# Base training per label, and the continued training of every method (erm, d3m and the
# controls) from the base checkpoint: one training-row table per method, one finetune rule.


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
        # train: JTT's error set; validate: D3M's group losses and the label ranking.
        splits=["train", "validate", "test"],
    log:
        f"{R}/logs/predict_base/{{label}}.s{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/predict_base/{{label}}.s{{seed}}.tsv"
    script:
        "../scripts/predict.py"


def training_rows_inputs(wildcards):
    """The task, and what the method's weights are made from (d3mflow.controls)."""
    d3m = f"{R}/d3m/{wildcards.label}/s{wildcards.seed}"
    extra = {
        "d3m": dict(selection=f"{d3m}/selection.parquet"),
        "random": dict(selection=f"{d3m}/selection.parquet"),
        "auto_d3m": dict(selection=f"{d3m}/auto/selection.parquet"),
        "balance": dict(cohort=COHORT),
        "jtt": dict(base_predictions=f"{R}/models/{wildcards.label}/s{wildcards.seed}/base.predictions.parquet"),
    }
    return dict(task=task(wildcards.label), **extra.get(wildcards.method, {}))


rule training_rows:
    input:
        unpack(training_rows_inputs),
    output:
        rows=f"{R}/rows/{{label}}/s{{seed}}/{{method}}.parquet",
    params:
        # Only jtt reads the upweight, so changing it reruns only the jtt jobs.
        jtt_upweight=lambda w: settings(w.label)["controls"]["jtt_upweight"] if w.method == "jtt" else None,
    log:
        f"{R}/logs/training_rows/{{label}}.s{{seed}}.{{method}}.log",
    benchmark:
        f"{R}/benchmarks/training_rows/{{label}}.s{{seed}}.{{method}}.tsv"
    script:
        "../scripts/training_rows.py"


rule finetune:
    input:
        task=task(),
        cache=IMAGE_CACHE,
        init=rules.train_base.output.model,
        rows=rules.training_rows.output.rows,
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
