# Data: the synthetic demo cohort, the cohort table, per-label tasks, and the image cache.


if DEMO:

    rule demo_cohort:
        output:
            metadata=f"{CXR_ROOT}/mimic-cxr-2.0.0-metadata.csv.gz",
            chexpert=f"{CXR_ROOT}/mimic-cxr-2.0.0-chexpert.csv.gz",
            negbio=f"{CXR_ROOT}/mimic-cxr-2.0.0-negbio.csv.gz",
            split=f"{CXR_ROOT}/mimic-cxr-2.0.0-split.csv.gz",
            filenames=f"{CXR_ROOT}/IMAGE_FILENAMES",
            files=directory(f"{CXR_ROOT}/files"),
            patients=f"{IV_ROOT}/hosp/patients.csv.gz",
            admissions=f"{IV_ROOT}/hosp/admissions.csv.gz",
            ground_truth=f"{R}/demo/planted_harm.parquet",
        params:
            demo=config.get("demo", {}),
            cxr_root=CXR_ROOT,
            iv_root=IV_ROOT,
        log:
            f"{R}/logs/demo_cohort.log",
        benchmark:
            f"{R}/benchmarks/demo_cohort.tsv"
        script:
            "../scripts/demo_cohort.py"


rule race:
    input:
        admissions=mimic_admissions(),
    output:
        race=f"{R}/cohort/race.parquet",
    params:
        iv_root=IV_ROOT,
        race_map=config["cohort"]["race_map"],
        race_conflict=config["cohort"]["race_conflict"],
    log:
        f"{R}/logs/race.log",
    benchmark:
        f"{R}/benchmarks/race.tsv"
    script:
        "../scripts/race.py"


def race_exclusions(wildcards):
    """Race enters the image table only when conflicting subjects are excluded."""
    return [rules.race.output.race] if config["cohort"]["race_conflict"] == "exclude" else []


rule image_table:
    input:
        **mimic_inputs(),
        race=race_exclusions,
    output:
        table=f"{R}/cohort/image_table.parquet",
        excluded=f"{R}/cohort/excluded.parquet",
    params:
        cxr_root=CXR_ROOT,
        views=config["cohort"]["views"],
        labeler=config["cohort"]["labeler"],
        split=config["cohort"]["split"],
        # Only the random split reads these: with the official split they would rerun the
        # whole workflow for a setting that changes nothing.
        split_fractions=config["cohort"]["split_fractions"] if config["cohort"]["split"] == "random" else None,
        split_seed=config["cohort"]["split_seed"] if config["cohort"]["split"] == "random" else None,
    log:
        f"{R}/logs/image_table.log",
    benchmark:
        f"{R}/benchmarks/image_table.tsv"
    script:
        "../scripts/image_table.py"


rule cohort:
    input:
        table=rules.image_table.output.table,
        race=rules.race.output.race,
    output:
        # Not in the HTML report: the cohort table holds subject ids (report.include_images, privacy).
        images=COHORT,
    log:
        f"{R}/logs/cohort.log",
    benchmark:
        f"{R}/benchmarks/cohort.tsv"
    script:
        "../scripts/cohort.py"


rule group_members:
    input:
        images=COHORT,
    output:
        members=group_members(),
    params:
        group=group_name,
    log:
        f"{R}/logs/group_members/{{group}}.log",
    benchmark:
        f"{R}/benchmarks/group_members/{{group}}.tsv"
    script:
        "../scripts/group_members.py"


rule task:
    input:
        table=rules.image_table.output.table,
    output:
        task=task(),
        excluded=f"{R}/cohort/tasks/{{label}}.excluded.parquet",
    params:
        label=label_name,
        uncertain=setting("uncertain"),
    log:
        f"{R}/logs/task/{{label}}.log",
    benchmark:
        f"{R}/benchmarks/task/{{label}}.tsv"
    script:
        "../scripts/task.py"


rule image_cache:
    input:
        table=rules.image_table.output.table,
        files=mimic_inputs()["files"],
    output:
        cache=IMAGE_CACHE,
        index=IMAGE_INDEX,
    params:
        cxr_root=CXR_ROOT,
        size=config["images"]["size"],
    threads: config["images"]["workers"]
    log:
        f"{R}/logs/image_cache.log",
    benchmark:
        f"{R}/benchmarks/image_cache.tsv"
    script:
        "../scripts/image_cache.py"
