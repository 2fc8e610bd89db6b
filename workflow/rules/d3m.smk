# D3M: group alignment scores from tau(g) and group losses, then which images to keep.


rule alignment:
    input:
        tau=expand(f"{R}/d3m/{{{{label}}}}/s{{{{seed}}}}/tau/{{group}}.parquet", group=GROUPS),
        stats=expand(f"{R}/d3m/{{{{label}}}}/s{{{{seed}}}}/tau/{{group}}.json", group=GROUPS),
    output:
        scores=f"{R}/d3m/{{label}}/s{{seed}}/alignment.parquet",
    params:
        groups=config["groups"],
        beta=setting("d3m", "beta"),
        weighting=setting("d3m", "weighting"),
    log:
        f"{R}/logs/alignment/{{label}}.s{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/alignment/{{label}}.s{{seed}}.tsv"
    script:
        "../scripts/alignment.py"


rule selection:
    input:
        scores=rules.alignment.output.scores,
    output:
        selection=f"{R}/d3m/{{label}}/s{{seed}}/selection.parquet",
    params:
        rule=setting("d3m", "selection"),
        num_to_discard=setting("d3m", "num_to_discard"),
    log:
        f"{R}/logs/selection/{{label}}.s{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/selection/{{label}}.s{{seed}}.tsv"
    script:
        "../scripts/selection.py"


# Auto-D3M: D3M on pseudo-groups found in the validation examples' TRAK score vectors (no race
# labels), with the label's d3m settings; its selection feeds the auto_d3m method.
rule auto_d3m:
    input:
        features=feature_files("features"),
        out_to_loss=feature_files("out_to_loss"),
        target_grads=feature_files("target_grads"),
        task=task(),
        base_predictions=rules.predict_base.output.predictions,
    output:
        selection=f"{R}/d3m/{{label}}/s{{seed}}/auto/selection.parquet",
        pseudo_groups=f"{R}/d3m/{{label}}/s{{seed}}/auto/pseudo_groups.parquet",
    params:
        beta=setting("d3m", "beta"),
        weighting=setting("d3m", "weighting"),
        rule=setting("d3m", "selection"),
        num_to_discard=setting("d3m", "num_to_discard"),
    log:
        f"{R}/logs/auto_d3m/{{label}}.s{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/auto_d3m/{{label}}.s{{seed}}.tsv"
    script:
        "../scripts/auto_d3m.py"
