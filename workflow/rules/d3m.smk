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
