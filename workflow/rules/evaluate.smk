# Evaluation: every method's model scored on the identical test images; metrics per race
# group in their own job, so a race remap recomputes tables without running a model.


rule predict_test:
    input:
        model=f"{R}/models/{{label}}/s{{seed}}/{{method}}.pt",
        task=task(),
        cache=IMAGE_CACHE,
    output:
        predictions=f"{R}/eval/{{label}}/s{{seed}}/{{method}}/predictions.parquet",
    params:
        splits=["test"],
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
        metrics=f"{R}/eval/{{label}}/s{{seed}}/{{method}}/accuracy_by_group.csv",
    log:
        f"{R}/logs/metrics/{{label}}.s{{seed}}.{{method}}.log",
    benchmark:
        f"{R}/benchmarks/metrics/{{label}}.s{{seed}}.{{method}}.tsv"
    script:
        "../scripts/metrics.py"
