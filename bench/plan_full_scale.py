"""Plan a full-MIMIC-scale run without images: how many jobs, and how long `snakemake -n` takes.

Writes a synthetic, METADATA-ONLY cohort in the MIMIC-CXR-JPG + MIMIC-IV layout (377,110
images, 227,827 studies, 65,379 subjects as in the real release; the four csv.gz files and an
empty `files/` folder, no JPG) and plans config/mimic.yaml over it with 14 labels, 6 race
groups, 10 TRAK models and the methods erm + d3m (one seed). A dry run executes no job, so the
missing JPGs do not matter (only image_table and image_cache read them, when they run); the
csv files are complete and in the real format, so the same folder also serves a real run of
the cohort rules.

Usage: .venv/bin/python bench/plan_full_scale.py [--out results/bench/plan_full_scale] [--repeat 3]
Prints the job counts per rule, the total, and the dry-run seconds (also to plan.json there).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from d3mflow.names import CHEXPERT_LABELS, RACE_GROUPS  # noqa: E402

N_IMAGES, N_STUDIES, N_SUBJECTS = 377_110, 227_827, 65_379
RACES = ["WHITE", "BLACK/AFRICAN AMERICAN", "ASIAN", "HISPANIC/LATINO - PUERTO RICAN", "OTHER", "UNKNOWN",
         "WHITE - OTHER EUROPEAN", "HISPANIC OR LATINO", "ASIAN - CHINESE", "PORTUGUESE"]
RACE_P = [0.55, 0.17, 0.03, 0.03, 0.04, 0.08, 0.04, 0.03, 0.02, 0.01]


def write_cohort(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """The synthetic metadata-only cohort under root/; returns (mimic_cxr_jpg, mimic_iv)."""
    cxr, iv = root / "mimic-cxr-jpg", root / "mimiciv"
    stamp = root / "COMPLETE"
    if stamp.exists():
        return cxr, iv
    rng = np.random.default_rng(seed)
    (cxr / "files").mkdir(parents=True, exist_ok=True)
    (iv / "hosp").mkdir(parents=True, exist_ok=True)
    subjects = 10_000_000 + rng.choice(9_999_999, N_SUBJECTS, replace=False)
    # every subject has a study, every study an image
    study_subject = np.concatenate([subjects, rng.choice(subjects, N_STUDIES - N_SUBJECTS)])
    studies = 50_000_000 + rng.choice(9_999_999, N_STUDIES, replace=False)
    image_study = np.concatenate([np.arange(N_STUDIES), rng.integers(0, N_STUDIES, N_IMAGES - N_STUDIES)])
    hexes = rng.integers(0, 2**32, size=(N_IMAGES, 5), dtype=np.uint64)
    dicom = ["-".join(f"{x:08x}" for x in row) for row in hexes]
    view = rng.choice(["AP", "PA", "LATERAL", "LL", ""], N_IMAGES, p=[0.39, 0.255, 0.22, 0.093, 0.042])
    meaning = {"AP": "antero-posterior", "PA": "postero-anterior", "LATERAL": "lateral", "LL": "left lateral", "": ""}
    metadata = pd.DataFrame({
        "dicom_id": dicom,
        "subject_id": study_subject[image_study],
        "study_id": studies[image_study],
        "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
        "ViewPosition": view,
        "Rows": 3056, "Columns": 2544,
        "StudyDate": 21500101 + rng.integers(0, 28, N_IMAGES),
        "StudyTime": np.round(rng.uniform(0, 235959, N_IMAGES), 3),
        "ProcedureCodeSequence_CodeMeaning": "CHEST (PA AND LAT)",
        "ViewCodeSequence_CodeMeaning": [meaning[v] for v in view],
        "PatientOrientationCodeSequence_CodeMeaning": rng.choice(["Erect", "Recumbent", ""], N_IMAGES),
    })
    metadata.to_csv(cxr / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    labels = pd.DataFrame({"subject_id": study_subject, "study_id": studies})
    for label in CHEXPERT_LABELS:
        labels[label] = rng.choice([1.0, 0.0, -1.0, np.nan], N_STUDIES, p=[0.15, 0.2, 0.05, 0.6])
    for name in ("chexpert", "negbio"):
        labels.to_csv(cxr / f"mimic-cxr-2.0.0-{name}.csv.gz", index=False)
    split = rng.choice(["train", "validate", "test"], N_IMAGES, p=[0.978, 0.008, 0.014])
    metadata[["dicom_id", "study_id", "subject_id"]].assign(split=split).to_csv(
        cxr / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    admitted = subjects[rng.random(N_SUBJECTS) < 0.8]
    adm_subject = np.concatenate([admitted, rng.choice(admitted, len(admitted))])
    pd.DataFrame({
        "subject_id": adm_subject,
        "hadm_id": 20_000_000 + np.arange(len(adm_subject)),
        "admittime": "2150-01-01 00:00:00",
        "race": rng.choice(RACES, len(adm_subject), p=RACE_P),
    }).to_csv(iv / "hosp" / "admissions.csv.gz", index=False)
    stamp.write_text(f"{N_IMAGES} images, {N_STUDIES} studies, {N_SUBJECTS} subjects, no JPGs\n")
    return cxr, iv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "plan_full_scale")
    ap.add_argument("--repeat", type=int, default=3, help="dry runs to time (the best is reported)")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    cxr, iv = write_cohort(out / "data")
    cohort_s = time.perf_counter() - t0
    config = {
        "results": str(out / "results"),
        "data": {"source": "mimic", "mimic_cxr_jpg": str(cxr), "mimic_iv": str(iv)},
        "labels": list(CHEXPERT_LABELS),
        "groups": list(RACE_GROUPS),
        "seeds": [0],
        "defaults": {"trak": {"num_models": 10, "model_source": "subsets"}},
        "evaluation": {"methods": ["erm", "d3m"]},
    }
    config_path = out / "bench.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    cmd = [snakemake, "-s", str(REPO / "Snakefile"), "--directory", str(out), "-n", "--quiet", "rules",
           "--configfile", str(REPO / "config" / "mimic.yaml"), str(config_path)]
    times, proc = [], None
    for _ in range(max(1, args.repeat)):
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        if proc.returncode != 0:
            sys.exit(f"dry run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    text = proc.stdout + proc.stderr
    counts = dict((m.group(1), int(m.group(2))) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", text, re.M))
    total = counts.pop("total")
    result = {
        "images": N_IMAGES, "labels": len(CHEXPERT_LABELS), "groups": len(RACE_GROUPS), "trak_models": 10,
        "methods": ["erm", "d3m"], "seeds": 1, "jobs": total, "jobs_per_rule": counts,
        "dry_run_seconds": round(min(times), 2), "dry_run_seconds_all": [round(t, 2) for t in times],
        "cohort_write_seconds": round(cohort_s, 1),
    }
    (out / "plan.json").write_text(json.dumps(result, indent=2) + "\n")
    for rule, n in sorted(counts.items()):
        print(f"{rule:24s}{n:6d}")
    print(f"planned jobs: {total} ({N_IMAGES:,} images, {len(CHEXPERT_LABELS)} labels, {len(RACE_GROUPS)} groups, "
          f"10 TRAK models, erm + d3m)")
    print(f"dry run: {min(times):.2f} s (best of {len(times)}: {', '.join(f'{t:.2f}' for t in times)})")
    print(f"-> {out / 'plan.json'}")


if __name__ == "__main__":
    main()
