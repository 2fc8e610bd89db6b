# Evaluation: every method's model predicts the identical validation and test images; metrics
# per race group in their own job (a race remap recomputes tables without running a model);
# per label a paired bootstrap comparison of all methods and seeds. With `labels: auto`, the
# rank_labels checkpoint picks the labels the rest of the DAG runs on.


rule predict_test:
    input:
        model=f"{R}/models/{{label}}/s{{seed}}/{{method}}.pt",
        task=task(),
        cache=IMAGE_CACHE,
    output:
        predictions=f"{R}/eval/{{label}}/s{{seed}}/{{method}}/predictions.parquet",
    params:
        # validate: where the model's decision threshold is chosen; test: where it is scored.
        splits=["validate", "test"],
    log:
        f"{R}/logs/predict_test/{{label}}.s{{seed}}.{{method}}.log",
    benchmark:
        f"{R}/benchmarks/predict_test/{{label}}.s{{seed}}.{{method}}.tsv"
    script:
        "../scripts/predict.py"


rule metrics:
    input:
        predictions=rules.predict_test.output.predictions,
        cohort=COHORT,
    output:
        metrics=METRICS,
    params:
        ece_bins=config["evaluation"]["ece_bins"],
    log:
        f"{R}/logs/metrics/{{label}}.s{{seed}}.{{method}}.log",
    benchmark:
        f"{R}/benchmarks/metrics/{{label}}.s{{seed}}.{{method}}.tsv"
    script:
        "../scripts/metrics.py"


rule compare:
    input:
        predictions=expand(f"{R}/eval/{{{{label}}}}/s{{seed}}/{{method}}/predictions.parquet", seed=SEEDS, method=METHODS),
        cohort=COHORT,
    output:
        comparison=COMPARISON,
    params:
        label=label_name,
        # expand() orders the files seed-major, then method.
        runs=[(seed, method) for seed in SEEDS for method in METHODS],
        n_replicates=config["evaluation"]["bootstrap_replicates"],
        bootstrap_seed=config["evaluation"]["bootstrap_seed"],
        ece_bins=config["evaluation"]["ece_bins"],
    log:
        f"{R}/logs/compare/{{label}}.log",
    benchmark:
        f"{R}/benchmarks/compare/{{label}}.tsv"
    script:
        "../scripts/compare.py"


checkpoint rank_labels:
    input:
        predictions=expand(f"{R}/models/{{label}}/s{SEEDS[0]}/base.predictions.parquet", label=LABELS),
        cohort=COHORT,
    output:
        ranking=f"{R}/labels/ranking.csv",
    params:
        labels=[label_from_slug(label) for label in LABELS],
        groups=config["groups"],
    log:
        f"{R}/logs/rank_labels.log",
    benchmark:
        f"{R}/benchmarks/rank_labels.tsv"
    script:
        "../scripts/rank_labels.py"
