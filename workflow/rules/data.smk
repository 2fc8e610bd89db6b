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


rule cohort:
    input:
        **mimic_inputs(),
    output:
        images=f"{R}/cohort/images.parquet",
        excluded=f"{R}/cohort/excluded.parquet",
    params:
        cxr_root=CXR_ROOT,
        iv_root=IV_ROOT,
        views=config["cohort"]["views"],
        labeler=config["cohort"]["labeler"],
        race_map=config["cohort"]["race_map"],
        race_conflict=config["cohort"]["race_conflict"],
        split=config["cohort"]["split"],
        split_fractions=config["cohort"]["split_fractions"],
        split_seed=config["cohort"]["split_seed"],
    log:
        f"{R}/logs/cohort.log",
    benchmark:
        f"{R}/benchmarks/cohort.tsv"
    script:
        "../scripts/cohort.py"


rule task:
    input:
        images=rules.cohort.output.images,
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
        images=rules.cohort.output.images,
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
