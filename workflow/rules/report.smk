# The report: the talk's per-label tables, WGA across labels, removals, and (demo) detection.


rule report:
    input:
        metrics=expand(f"{R}/eval/{{label}}/s{{seed}}/{{method}}/accuracy_by_group.csv", label=LABELS, seed=SEEDS, method=METHODS),
        selections=expand(f"{R}/d3m/{{label}}/s{{seed}}/selection.parquet", label=LABELS, seed=SEEDS) if "d3m" in METHODS else [],
        tasks=expand(task("{label}"), label=LABELS),
        cohort=COHORT,
        ground_truth=[f"{R}/demo/planted_harm.parquet"] if DEMO else [],
    output:
        markdown=report(f"{R}/report/report.md", caption="../report/report.rst", category="Summary"),
        accuracy=report(f"{R}/report/accuracy_by_group.csv", caption="../report/accuracy.rst", category="Tables"),
        wga=report(f"{R}/report/wga.csv", caption="../report/wga.rst", category="Tables"),
        removed=report(f"{R}/report/removed_by_group.csv", caption="../report/removed.rst", category="Tables"),
        detection=report(f"{R}/report/detection.csv", caption="../report/detection.rst", category="Tables"),
    params:
        labels=config["labels"],
        seeds=SEEDS,
        methods=METHODS,
        results=R,
    log:
        f"{R}/logs/report.log",
    benchmark:
        f"{R}/benchmarks/report.tsv"
    script:
        "../scripts/report.py"
