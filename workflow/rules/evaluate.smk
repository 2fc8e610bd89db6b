# Evaluation: every method's model scored on the identical test images.


rule evaluate:
    input:
        model=f"{R}/models/{{label}}/{{method}}.pt",
        task=task(),
        cache=IMAGE_CACHE,
    output:
        predictions=f"{R}/eval/{{label}}/{{method}}/predictions.parquet",
        metrics=f"{R}/eval/{{label}}/{{method}}/accuracy_by_group.csv",
    log:
        f"{R}/logs/evaluate/{{label}}.{{method}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{label}}.{{method}}.tsv"
    script:
        "../scripts/evaluate.py"
