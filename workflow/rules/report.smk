# The report: per label the talk's tables with CIs, WGA per method, removals, (demo) detection,
# the top TRAK images per race group and an error analysis of the worst group; everything in
# results/report/ as CSV + markdown, and in `snakemake --report` (summary on the landing page).
# X-ray image grids exist only when report.include_images is true.

INCLUDE_IMAGES = config["report"]["include_images"]
# The image grids and the error analysis show one seed's run: the first in `seeds`.
REPORT_SEED = SEEDS[0]


def label_category(wildcards):
    return f"Label: {label_from_slug(wildcards.label)}"


def grid(name, caption):
    """An image-grid output of a per-label rule: present (and in the HTML report) only with images."""
    if not INCLUDE_IMAGES:
        return {}
    path = f"{R}/report/{{label}}/s{{seed}}/{name}.png"
    return {"grid": report(path, caption=caption, category=label_category, labels={"figure": name, "seed": "{seed}"})}


rule top_images:
    input:
        tau=expand(f"{R}/d3m/{{{{label}}}}/s{{{{seed}}}}/tau/{{group}}.parquet", group=GROUPS),
        task=task(),
        cohort=COHORT,
        cache=[IMAGE_CACHE] if INCLUDE_IMAGES else [],
    output:
        table=f"{R}/report/{{label}}/s{{seed}}/top_images.csv",
        **grid("top_images", "../report/top_images.rst"),
    params:
        groups=config["groups"],
        label=label_name,
        k=config["report"]["top_k"],
    log:
        f"{R}/logs/top_images/{{label}}.s{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/top_images/{{label}}.s{{seed}}.tsv"
    script:
        "../scripts/top_images.py"


rule error_analysis:
    input:
        features=feature_files("features"),
        out_to_loss=feature_files("out_to_loss"),
        target_grads=feature_files("target_grads"),
        task=task(),
        predictions=rules.predict_base.output.predictions,
        cohort=COHORT,
        cache=[IMAGE_CACHE] if INCLUDE_IMAGES else [],
    output:
        errors=f"{R}/report/{{label}}/s{{seed}}/errors.csv",
        attribution=f"{R}/report/{{label}}/s{{seed}}/error_attribution.csv",
        **grid("errors", "../report/errors.rst"),
    params:
        label=label_name,
        k=config["report"]["error_analysis_k"],
        train_k=config["report"]["top_k"],
    log:
        f"{R}/logs/error_analysis/{{label}}.s{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/error_analysis/{{label}}.s{{seed}}.tsv"
    script:
        "../scripts/error_analysis.py"


def report_label_files(pattern):
    """Input function: one file per run label of the seed the image grids and error analysis show."""
    return per_label(pattern, seed=[REPORT_SEED])


rule report:
    input:
        metrics=per_label(METRICS, seed=SEEDS, method=METHODS),
        comparison=per_label(COMPARISON),
        selections=per_label(f"{R}/d3m/{{label}}/s{{seed}}/selection.parquet", seed=SEEDS) if "d3m" in METHODS else [],
        tasks=per_label(task("{label}")),
        cohort=COHORT,
        ground_truth=[f"{R}/demo/planted_harm.parquet"] if DEMO else [],
        errors=report_label_files(rules.error_analysis.output.errors),
        attribution=report_label_files(rules.error_analysis.output.attribution),
        top_images=report_label_files(f"{R}/report/{{label}}/s{{seed}}/top_images.png") if INCLUDE_IMAGES else [],
        error_images=report_label_files(f"{R}/report/{{label}}/s{{seed}}/errors.png") if INCLUDE_IMAGES else [],
    output:
        html=report(f"{R}/report/summary.html", caption="../report/summary.rst", category="1. Summary"),
        markdown=report(f"{R}/report/report.md", caption="../report/report.rst", category="1. Summary"),
        wga_png=report(f"{R}/report/wga.png", caption="../report/wga_chart.rst", category="1. Summary"),
        wga_ci=report(f"{R}/report/wga_ci.csv", caption="../report/wga.rst", category="2. Tables"),
        comparison=report(f"{R}/report/comparison.csv", caption="../report/accuracy.rst", category="2. Tables"),
        paired=report(f"{R}/report/paired.csv", caption="../report/paired.rst", category="2. Tables"),
        accuracy=report(f"{R}/report/accuracy_by_group.csv", caption="../report/accuracy_by_seed.rst", category="2. Tables"),
        wga=f"{R}/report/wga.csv",
        removed=report(f"{R}/report/removed_by_group.csv", caption="../report/removed.rst", category="2. Tables"),
        composition=report(f"{R}/report/removed_composition.csv", caption="../report/composition.rst", category="2. Tables"),
        detection=report(f"{R}/report/detection.csv", caption="../report/detection.rst", category="2. Tables"),
    params:
        labels=lambda w: [label_from_slug(label) for label in run_labels()],
        seeds=SEEDS,
        methods=METHODS,
        precision_k=config["report"]["precision_at_k"],
    log:
        f"{R}/logs/report.log",
    benchmark:
        f"{R}/benchmarks/report.tsv"
    script:
        "../scripts/report.py"
