"""A deterministic synthetic cohort in the exact MIMIC-CXR-JPG 2.0.0 + MIMIC-IV ``hosp`` layout,
with two planted, documented biases (see ``docs/demo-cohort.md``).

Real MIMIC is credentialed and may never enter the repository, so the workflow is developed and
tested on this stand-in. It reproduces the real file layout, id formats, column orders and the
messiness the cohort step must handle (uncertain and blank labels, studies without label rows,
lateral and odd views, race recorded per admission with conflicts and missing admissions).

What is drawn:

- Frontal images show a chest-like picture; each of the 13 findings has its own visual sign
  (No Finding has none), drawn from the TRUE label. Uncertain (-1.0) labels show the sign at
  half intensity half the time. Laterals show one lung field and no finding signs.
- Every image carries a faint race-group signature (a low-frequency grating whose frequency and
  orientation depend on the group): the stand-in for the known fact that CXR models can
  recognise self-reported race. It is what lets label noise in one group hurt that group.

Planted biases (recorded in the ``ground_truth`` parquet, which no method step reads):

(a) shortcut: for each shortcut label (one corner each), in the TRAINING split of
    ``shortcut_group`` only, a bright square marker appears with probability
    ``shortcut_strength`` on images whose recorded label is 1.0 and ``1 - shortcut_strength``
    on the others; everywhere else the marker appears with probability 0.5 regardless of the
    label. Misleading images (marker on a non-positive, no marker on a positive) are recorded
    as ``kind="shortcut"``.
(b) harmful images: for each harm label, in the TRAINING split of ``harm_group``, exactly
    ``round(harm_fraction * n)`` of the n studies with a true 1.0 are written as 0.0 in the
    chexpert and negbio files (an under-diagnosis pattern) while their images still show the
    sign. Every image of those studies is recorded as ``kind="flipped_label"``; where the flip
    also turns "No Finding" from blank to 1.0, that is recorded too (label "No Finding").
"""

from __future__ import annotations

import gzip
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from d3mflow.io import atomic_path, write_parquet, write_text
from d3mflow.names import CHEXPERT_LABELS, RACE_GROUPS

log = logging.getLogger(__name__)

FINDINGS: tuple[str, ...] = tuple(label for label in CHEXPERT_LABELS if label != "No Finding")

# Positive prevalence per study. Close to MIMIC-CXR for the common findings; the rare ones
# (about 1-3% in MIMIC) are raised to about 5% so a demo of a few thousand images still has
# enough positives per label to train and evaluate on.
PREVALENCE: dict[str, float] = {
    "Atelectasis": 0.20,
    "Cardiomegaly": 0.20,
    "Consolidation": 0.06,
    "Edema": 0.12,
    "Enlarged Cardiomediastinum": 0.05,
    "Fracture": 0.05,
    "Lung Lesion": 0.05,
    "Lung Opacity": 0.23,
    "Pleural Effusion": 0.24,
    "Pleural Other": 0.05,
    "Pneumonia": 0.08,
    "Pneumothorax": 0.05,
    "Support Devices": 0.30,
}
UNCERTAIN_PER_POSITIVE = 0.3  # -1.0 values per 1.0 value, as in MIMIC's frequent hedging
NEGATIVE_MENTIONED = 0.2  # share of negatives the report mentions (0.0); the rest are blank
NO_LABEL_ROW = 0.02  # studies the labeler produced nothing for (no chexpert/negbio row)
NEGBIO_DISAGREE = 0.05  # share of 1.0/-1.0 values negbio flips to the other one

GROUP_SHARES: dict[str, float] = {
    "White": 0.60,
    "Black or African American": 0.17,
    "Hispanic/Latino": 0.07,
    "Asian": 0.04,
    "Other": 0.04,
    "Unknown": 0.08,
}
UNKNOWN_WITHOUT_ADMISSION = 0.4  # Unknown subjects who were never admitted (no admission row)
RACE_CONFLICT = 0.05  # multi-admission subjects whose admissions disagree on race

# The 33 MIMIC-IV race strings per group, with within-group frequencies. PORTUGUESE and
# SOUTH AMERICAN sit in Other, as in the project's default mapping.
RACE_STRINGS: dict[str, dict[str, float]] = {
    "White": {
        "WHITE": 0.80,
        "WHITE - OTHER EUROPEAN": 0.08,
        "WHITE - RUSSIAN": 0.05,
        "WHITE - EASTERN EUROPEAN": 0.04,
        "WHITE - BRAZILIAN": 0.03,
    },
    "Black or African American": {
        "BLACK/AFRICAN AMERICAN": 0.80,
        "BLACK/CAPE VERDEAN": 0.09,
        "BLACK/CARIBBEAN ISLAND": 0.07,
        "BLACK/AFRICAN": 0.04,
    },
    "Hispanic/Latino": {
        "HISPANIC/LATINO - PUERTO RICAN": 0.30,
        "HISPANIC OR LATINO": 0.20,
        "HISPANIC/LATINO - DOMINICAN": 0.18,
        "HISPANIC/LATINO - GUATEMALAN": 0.06,
        "HISPANIC/LATINO - SALVADORAN": 0.06,
        "HISPANIC/LATINO - MEXICAN": 0.05,
        "HISPANIC/LATINO - COLUMBIAN": 0.04,
        "HISPANIC/LATINO - CENTRAL AMERICAN": 0.04,
        "HISPANIC/LATINO - CUBAN": 0.04,
        "HISPANIC/LATINO - HONDURAN": 0.03,
    },
    "Asian": {
        "ASIAN": 0.40,
        "ASIAN - CHINESE": 0.30,
        "ASIAN - SOUTH EAST ASIAN": 0.12,
        "ASIAN - ASIAN INDIAN": 0.12,
        "ASIAN - KOREAN": 0.06,
    },
    "Other": {
        "OTHER": 0.55,
        "PORTUGUESE": 0.12,
        "MULTIPLE RACE/ETHNICITY": 0.10,
        "SOUTH AMERICAN": 0.08,
        "AMERICAN INDIAN/ALASKA NATIVE": 0.08,
        "NATIVE HAWAIIAN OR OTHER PACIFIC ISLANDER": 0.07,
    },
    "Unknown": {
        "UNKNOWN": 0.70,
        "UNABLE TO OBTAIN": 0.18,
        "PATIENT DECLINED TO ANSWER": 0.12,
    },
}

# Race signature: (cycles across the image, orientation in degrees) of a faint grating. Periods
# of at least a fifth of the image survive the workflow's 32 x 32 resize.
SIGNATURE: dict[str, tuple[int, float]] = {
    "Asian": (3, 0.0),
    "Black or African American": (3, 90.0),
    "Hispanic/Latino": (4, 45.0),
    "Other": (4, 135.0),
    "Unknown": (5, 0.0),
    "White": (5, 90.0),
}
SIGNATURE_AMPLITUDE = 0.025  # about 6 of 255 grey levels: faint but learnable

MARKER_CORNERS = ((-1, -1), (1, -1), (-1, 1), (1, 1))  # (x, y) corner per shortcut label, in order
NEUTRAL_MARKER_RATE = 0.5  # marker rate where the shortcut is not planted

METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
)
LABEL_COLUMNS = ("subject_id", "study_id", *CHEXPERT_LABELS)
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
PATIENT_COLUMNS = ("subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod")
ADMISSION_COLUMNS = (
    "subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type",
    "admit_provider_id", "admission_location", "discharge_location", "insurance", "language",
    "marital_status", "race", "edregtime", "edouttime", "hospital_expire_flag",
)
GROUND_TRUTH_COLUMNS = ("dicom_id", "subject_id", "study_id", "label", "kind", "split")
SPLITS = ("train", "validate", "test")

# Views: the rare values appear with the share of them in MIMIC (well under 1%).
RARE_FRONTAL_VIEWS = ("PA LLD", "LAO", "RAO", "AP AXIAL", "AP LLD", "AP RLD", "SWIMMERS", "PA RLD", "LPO")
EMPTY_VIEW = 0.04
RARE_VIEW = 0.005
VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}
NATIVE_SIZES = ((3056, 2544), (2544, 3056), (3050, 2539), (2539, 3050), (2048, 2500), (3520, 4280))


@dataclass
class _Cohort:
    """Everything drawn before anything is written: one frame per level of the hierarchy."""

    subjects: pd.DataFrame  # subject_id, group, split
    studies: pd.DataFrame  # study_id, subject_id, StudyDate, StudyTime, has_row, view mix
    images: pd.DataFrame  # dicom_id, study_id, subject_id, view, ViewPosition, ...
    true_labels: pd.DataFrame  # per study, findings as 1.0 / -1.0 / 0.0 / NaN (what is drawn)
    sign_strength: pd.DataFrame  # per study and finding: intensity of the sign in frontal images


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def generate_demo_cohort(
    mimic_cxr_jpg,
    mimic_iv,
    ground_truth,
    *,
    seed=0,
    n_subjects=1500,
    image_px=128,
    harm_labels=("Cardiomegaly", "Pleural Effusion"),
    harm_group="Black or African American",
    harm_fraction=0.5,
    shortcut_labels=("Cardiomegaly", "Pleural Effusion"),
    shortcut_group="White",
    shortcut_strength=0.9,
    split_fractions=(0.6, 0.1, 0.3),
) -> dict:
    """Write the synthetic MIMIC-CXR-JPG tree under ``mimic_cxr_jpg``, MIMIC-IV ``hosp`` tables
    under ``mimic_iv`` and the planted examples to the parquet ``ground_truth``; return (and log)
    summary counts.

    Same seed and arguments give byte-identical csv.gz files and identical images. Images are
    written first and the csv files last, so existing csv files imply a complete cohort."""
    _check_arguments(n_subjects, image_px, harm_labels, harm_group, harm_fraction, shortcut_labels,
                     shortcut_group, shortcut_strength, split_fractions)
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    cohort = _draw_cohort(rng, n_subjects, split_fractions)
    chexpert, flipped = _plant_harm(rng, cohort, harm_labels, harm_group, harm_fraction)
    negbio = _negbio_from(rng, chexpert)
    markers, misleading = _plant_shortcut(rng, cohort, chexpert, shortcut_labels, shortcut_group, shortcut_strength)
    admissions = _draw_admissions(rng, cohort)
    patients = _draw_patients(rng, cohort)
    metadata = _metadata(rng, cohort)

    root = Path(mimic_cxr_jpg)
    _write_images(root, cohort, markers, image_px, seed)
    write_text("".join(f"{p}\n" for p in _image_paths(cohort.images)), root / "IMAGE_FILENAMES")
    truth = _ground_truth(cohort, flipped, misleading)
    write_parquet(truth, ground_truth)
    hosp = Path(mimic_iv) / "hosp"
    _write_csv_gz(patients, PATIENT_COLUMNS, hosp / "patients.csv.gz")
    _write_csv_gz(admissions, ADMISSION_COLUMNS, hosp / "admissions.csv.gz")
    _write_csv_gz(metadata, METADATA_COLUMNS, root / "mimic-cxr-2.0.0-metadata.csv.gz")
    _write_csv_gz(chexpert, LABEL_COLUMNS, root / "mimic-cxr-2.0.0-chexpert.csv.gz")
    _write_csv_gz(negbio, LABEL_COLUMNS, root / "mimic-cxr-2.0.0-negbio.csv.gz")
    split = cohort.images.merge(cohort.subjects[["subject_id", "split"]], on="subject_id")
    _write_csv_gz(split, SPLIT_COLUMNS, root / "mimic-cxr-2.0.0-split.csv.gz")

    summary = _summary(cohort, admissions, truth, time.perf_counter() - started)
    log.info("demo cohort: %s", summary)
    return summary


def _check_arguments(n_subjects, image_px, harm_labels, harm_group, harm_fraction, shortcut_labels,
                     shortcut_group, shortcut_strength, split_fractions) -> None:
    """Fail early, with the offending value, on arguments that would silently plant nothing."""
    if n_subjects < len(RACE_GROUPS) * len(SPLITS):
        raise ValueError(f"n_subjects={n_subjects} is too small to fill every group and split")
    if image_px < 32:
        raise ValueError(f"image_px={image_px} must be at least 32 (the workflow's resize target)")
    for label in (*harm_labels, *shortcut_labels):
        if label not in FINDINGS:
            raise ValueError(f"cannot plant on {label!r}; expected one of {list(FINDINGS)}")
    for group in (harm_group, shortcut_group):
        if group not in RACE_GROUPS:
            raise ValueError(f"unknown race group {group!r}; expected one of {list(RACE_GROUPS)}")
    if len(shortcut_labels) > len(MARKER_CORNERS):
        raise ValueError(f"at most {len(MARKER_CORNERS)} shortcut labels (one image corner each)")
    if not (0 <= harm_fraction <= 1 and 0 <= shortcut_strength <= 1):
        raise ValueError("harm_fraction and shortcut_strength must lie in [0, 1]")
    if len(split_fractions) != 3 or min(split_fractions) < 0 or not np.isclose(sum(split_fractions), 1):
        raise ValueError(f"split_fractions={split_fractions} must be three non-negative shares summing to 1")


# --------------------------------------------------------------------------------------------
# Subjects, studies, images, labels
# --------------------------------------------------------------------------------------------


def _draw_cohort(rng: np.random.Generator, n_subjects: int, split_fractions) -> _Cohort:
    subjects = _draw_subjects(rng, n_subjects, split_fractions)
    studies = _draw_studies(rng, subjects)
    images = _draw_images(rng, studies)
    true_labels, sign_strength = _draw_labels(rng, studies)
    return _Cohort(subjects, studies, images, true_labels, sign_strength)


def _unique_ids(rng: np.random.Generator, n: int, first_digit: int) -> np.ndarray:
    """n distinct, sorted 8-digit ids starting with ``first_digit`` (as MIMIC's ids do)."""
    return np.sort(rng.choice(10_000_000, size=n, replace=False)) + first_digit * 10_000_000


def _draw_subjects(rng: np.random.Generator, n: int, split_fractions) -> pd.DataFrame:
    """Subjects with a race group and a patient-level split, stratified by group so that even
    the smallest group is present in every split."""
    groups = rng.choice(list(GROUP_SHARES), size=n, p=list(GROUP_SHARES.values()))
    split = np.empty(n, dtype=object)
    for group in GROUP_SHARES:
        members = rng.permutation(np.flatnonzero(groups == group))
        cuts = np.round(np.cumsum(split_fractions)[:2] * len(members)).astype(int)
        for name, part in zip(SPLITS, np.split(members, cuts)):
            split[part] = name
    return pd.DataFrame({"subject_id": _unique_ids(rng, n, 1), "group": groups, "split": split})


def _draw_studies(rng: np.random.Generator, subjects: pd.DataFrame) -> pd.DataFrame:
    """1-8 studies per subject on increasing dates in 2110-2199, with the view mix per study:
    PA + lateral (outpatient) or portable AP alone, sometimes a second frontal."""
    per_subject = np.minimum(rng.geometric(0.45, size=len(subjects)), 8)
    subject_id = np.repeat(subjects["subject_id"].to_numpy(), per_subject)
    n = len(subject_id)
    first_day = np.repeat(rng.integers(0, 80 * 365, size=len(subjects)), per_subject)
    gaps = rng.integers(1, 400, size=n)
    starts = np.repeat(np.cumsum(per_subject) - per_subject, per_subject)
    cum = np.cumsum(gaps)
    day = first_day + cum - cum[starts]  # restart the running sum at each subject's first study
    dates = np.datetime64("2110-01-01") + day.astype("timedelta64[D]")
    seconds = rng.uniform(0, 86_400, size=n)
    hh, rest = np.divmod(seconds, 3600)
    mm, ss = np.divmod(rest, 60)
    has_lateral = rng.random(n) < 0.5
    return pd.DataFrame({
        "study_id": rng.permutation(_unique_ids(rng, n, 5)),
        "subject_id": subject_id,
        "StudyDate": pd.to_datetime(dates).strftime("%Y%m%d").astype(int),
        # MIMIC stores HHMMSS.fff as a float, so leading zeros are lost (80556.875).
        "StudyTime": np.round(hh * 10_000 + mm * 100 + np.floor(ss * 1000) / 1000, 3),
        "has_lateral": has_lateral,
        "frontal_view": np.where(rng.random(n) < np.where(has_lateral, 0.75, 0.15), "PA", "AP"),
        "second_frontal": rng.random(n) < 0.15,
        "has_row": rng.random(n) >= NO_LABEL_ROW,
    })


def _draw_images(rng: np.random.Generator, studies: pd.DataFrame) -> pd.DataFrame:
    """One row per image: a frontal per study, plus a lateral and/or a second frontal."""
    parts = [
        studies.assign(view="frontal", ViewPosition=studies["frontal_view"]),
        studies[studies["second_frontal"]].assign(view="frontal", ViewPosition=lambda s: s["frontal_view"]),
        studies[studies["has_lateral"]].assign(
            view="lateral", ViewPosition=lambda s: np.where(rng.random(len(s)) < 0.7, "LATERAL", "LL")),
    ]
    images = pd.concat(parts, ignore_index=True).sort_values(["subject_id", "study_id", "view"], kind="stable")
    images = images.reset_index(drop=True)
    n = len(images)
    position = images["ViewPosition"].to_numpy(dtype=object)
    odd = rng.random(n)
    position[odd < EMPTY_VIEW] = ""  # recorded without a view, as about 4% of MIMIC images
    rare = (odd >= EMPTY_VIEW) & (odd < EMPTY_VIEW + RARE_VIEW)
    position[rare] = np.where(images["view"][rare] == "lateral", "XTABLE LATERAL",
                              rng.choice(RARE_FRONTAL_VIEWS, size=rare.sum()))
    size = np.array(NATIVE_SIZES)[rng.integers(0, len(NATIVE_SIZES), size=n)]
    images["ViewPosition"] = position
    images["Rows"], images["Columns"] = size[:, 0], size[:, 1]
    images["dicom_id"] = _dicom_ids(rng, n)
    return images[["dicom_id", "subject_id", "study_id", "view", "ViewPosition", "Rows", "Columns",
                   "StudyDate", "StudyTime", "has_lateral", "frontal_view"]]


def _dicom_ids(rng: np.random.Generator, n: int) -> list[str]:
    """40 hex characters in five dash-separated groups of 8."""
    raw = rng.bytes(20 * n).hex()
    ids = ["-".join(raw[i + j:i + j + 8] for j in range(0, 40, 8)) for i in range(0, 40 * n, 40)]
    if len(set(ids)) != n:  # 160 random bits: a collision means a broken generator
        raise RuntimeError("duplicate dicom_id drawn")
    return ids


def _draw_labels(rng: np.random.Generator, studies: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """True per-study values of the 13 findings and the intensity of each sign in the images.

    A 1.0 draws the sign at full intensity; a -1.0 draws it at half intensity half the time
    (the reader was unsure because the sign is faint or absent); 0.0 and blank draw nothing."""
    n = len(studies)
    values, strength = {}, {}
    for label in FINDINGS:
        p_pos = PREVALENCE[label]
        p_unc = UNCERTAIN_PER_POSITIVE * p_pos
        u = rng.random(n)
        mentioned = rng.random(n) < NEGATIVE_MENTIONED
        values[label] = np.select([u < p_pos, u < p_pos + p_unc, mentioned], [1.0, -1.0, 0.0], np.nan)
        faint = (values[label] == -1.0) & (rng.random(n) < 0.5)
        strength[label] = np.where(values[label] == 1.0, 1.0, np.where(faint, 0.5, 0.0))
    index = pd.Index(studies["study_id"].to_numpy(), name="study_id")
    return pd.DataFrame(values, index=index), pd.DataFrame(strength, index=index)


def _with_no_finding(findings: pd.DataFrame) -> pd.DataFrame:
    """Add "No Finding": 1.0 when no finding other than Support Devices is 1.0 or -1.0, else
    blank (MIMIC's rule: positive only if nothing else but Support Devices is positive)."""
    others = findings.drop(columns="Support Devices")
    no_finding = np.where(others.isin([1.0, -1.0]).any(axis=1), np.nan, 1.0)
    return findings.assign(**{"No Finding": no_finding})[list(CHEXPERT_LABELS)]


def _label_table(values: pd.DataFrame, studies: pd.DataFrame) -> pd.DataFrame:
    """The chexpert/negbio table: studies with a label row only, ids first, No Finding derived."""
    with_row = studies.loc[studies["has_row"], ["subject_id", "study_id"]]
    labels = _with_no_finding(values).loc[with_row["study_id"].to_numpy()].reset_index(drop=True)
    table = pd.concat([with_row.reset_index(drop=True), labels], axis=1)
    return table.sort_values(["subject_id", "study_id"]).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Planted biases
# --------------------------------------------------------------------------------------------


def _study_context(cohort: _Cohort) -> pd.DataFrame:
    """Group and split of every study, indexed by study_id."""
    context = cohort.studies.merge(cohort.subjects, on="subject_id")
    return context.set_index("study_id")[["subject_id", "group", "split", "has_row"]]


def _plant_harm(rng, cohort: _Cohort, labels, group, fraction) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write 0.0 for ``fraction`` of the true positives of each harm label among the training
    studies of ``group`` (that have a label row); return the chexpert table and the flips as
    (study_id, label) rows, including the No Finding values the flips change."""
    context = _study_context(cohort)
    recorded = cohort.true_labels.copy()
    eligible = (context["group"] == group) & (context["split"] == "train") & context["has_row"]
    flips = []
    for label in labels:
        positives = recorded.index[eligible.loc[recorded.index].to_numpy() & (recorded[label] == 1.0).to_numpy()]
        chosen = rng.choice(positives, size=int(round(fraction * len(positives))), replace=False)
        recorded.loc[chosen, label] = 0.0
        flips.append(pd.DataFrame({"study_id": np.sort(chosen), "label": label}))
    became_normal = _with_no_finding(recorded)["No Finding"].eq(1.0) & _with_no_finding(cohort.true_labels)[
        "No Finding"].isna()
    flips.append(pd.DataFrame({"study_id": recorded.index[became_normal.to_numpy()], "label": "No Finding"}))
    return _label_table(recorded, cohort.studies), pd.concat(flips, ignore_index=True)


def _negbio_from(rng: np.random.Generator, chexpert: pd.DataFrame) -> pd.DataFrame:
    """NegBio's table: the same studies, with a few findings flipped between 1.0 and -1.0 (the
    two labelers mostly agree but disagree on hedged mentions). Harm flips (0.0) carry over."""
    findings = chexpert.set_index("study_id")[list(FINDINGS)]
    hedged = findings.isin([1.0, -1.0]) & (rng.random(findings.shape) < NEGBIO_DISAGREE)
    findings = findings.mask(hedged, -findings)
    table = chexpert[["subject_id", "study_id"]].reset_index(drop=True)
    labels = _with_no_finding(findings).reset_index(drop=True)
    return pd.concat([table, labels], axis=1)


def _plant_shortcut(rng, cohort: _Cohort, chexpert: pd.DataFrame, labels, group, strength):
    """Per image and shortcut label, whether the marker is drawn; and the misleading images.

    The marker rate depends on the recorded label (1.0 = positive, anything else negative, as
    a U-zeros training set sees it) only in the training split of ``group``."""
    context = _study_context(cohort).loc[cohort.images["study_id"]]
    planted = ((context["group"] == group) & (context["split"] == "train") & context["has_row"]).to_numpy()
    recorded = chexpert.set_index("study_id")
    markers = np.zeros((len(cohort.images), len(labels)), dtype=bool)
    misleading = []
    for k, label in enumerate(labels):
        positive = cohort.images["study_id"].map(recorded[label]).eq(1.0).to_numpy()
        rate = np.where(planted, np.where(positive, strength, 1 - strength), NEUTRAL_MARKER_RATE)
        markers[:, k] = rng.random(len(rate)) < rate
        wrong = planted & (markers[:, k] != positive)
        misleading.append(pd.DataFrame({"dicom_id": cohort.images["dicom_id"][wrong], "label": label}))
    return markers, pd.concat(misleading, ignore_index=True)


def _ground_truth(cohort: _Cohort, flipped: pd.DataFrame, misleading: pd.DataFrame) -> pd.DataFrame:
    """Planted examples per image: every image of a flipped study, every misleading marker."""
    images = cohort.images.merge(cohort.subjects[["subject_id", "split"]], on="subject_id")
    images = images[["dicom_id", "subject_id", "study_id", "split"]]
    rows = pd.concat([
        flipped.merge(images, on="study_id").assign(kind="flipped_label"),
        misleading.merge(images, on="dicom_id").assign(kind="shortcut"),
    ], ignore_index=True)
    return rows[list(GROUND_TRUTH_COLUMNS)].sort_values(["kind", "label", "dicom_id"]).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# MIMIC-IV hosp
# --------------------------------------------------------------------------------------------


def _draw_patients(rng: np.random.Generator, cohort: _Cohort) -> pd.DataFrame:
    """patients.csv: anchor year near the first study, ages 18-91 (over 89 written as 91),
    a date of death for about 8% of subjects, after their last study."""
    n = len(cohort.subjects)
    first = cohort.studies.groupby("subject_id")["StudyDate"].min().to_numpy() // 10_000
    last = pd.to_datetime(cohort.studies.groupby("subject_id")["StudyDate"].max().astype(str))
    age = rng.integers(18, 96, size=n)
    died = rng.random(n) < 0.08
    dod = (last + pd.to_timedelta(rng.integers(1, 700, size=n), unit="D")).dt.strftime("%Y-%m-%d").to_numpy()
    groups = np.array(["2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019", "2020 - 2022"])
    return pd.DataFrame({
        "subject_id": cohort.subjects["subject_id"],
        "gender": rng.choice(["F", "M"], size=n),
        "anchor_age": np.where(age > 89, 91, age),
        "anchor_year": first - rng.integers(0, 3, size=n),
        "anchor_year_group": groups[rng.integers(0, len(groups), size=n)],
        "dod": np.where(died, dod, None),
    })


def _draw_admissions(rng: np.random.Generator, cohort: _Cohort) -> pd.DataFrame:
    """admissions.csv (16 columns of v2.2+/v3): race per admission, with the messiness the cohort
    step must handle. The earliest admission always carries the subject's own group."""
    subjects = cohort.subjects
    admitted = ~((subjects["group"] == "Unknown").to_numpy() & (rng.random(len(subjects)) < UNKNOWN_WITHOUT_ADMISSION))
    per_subject = np.where(admitted, np.minimum(rng.geometric(0.5, size=len(subjects)), 6), 0)
    race = _subject_race_strings(rng, subjects, per_subject)
    owner = np.repeat(np.arange(len(subjects)), per_subject)
    admissions = _admission_details(rng, cohort, owner)
    admissions["race"] = race
    return admissions.sort_values(["subject_id", "hadm_id"]).reset_index(drop=True)


def _subject_race_strings(rng, subjects: pd.DataFrame, per_subject: np.ndarray) -> np.ndarray:
    """Race string of every admission, in admission order per subject.

    Each subject has one usual string of their group. Among multi-admission subjects, 5% have
    one later admission that disagrees: 45% a variant of the same group, 45% another group,
    10% a known value against UNKNOWN. Missing strings of a group are then given to one subject
    of that group each, so a moderately sized cohort shows all 33 strings."""
    groups = subjects["group"].to_numpy()
    usual = np.array([_pick(rng, RACE_STRINGS[g]) for g in groups], dtype=object)
    usual = _cover_all_strings(rng, groups, usual, per_subject)
    race = np.repeat(usual, per_subject)
    starts = np.cumsum(per_subject) - per_subject
    for i in np.flatnonzero((per_subject > 1) & (rng.random(len(groups)) < RACE_CONFLICT)):
        later = starts[i] + rng.integers(1, per_subject[i])
        race[later] = _conflicting_string(rng, groups[i], usual[i])
    return race


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    return names[rng.choice(len(names), p=np.array(list(weights.values())) / sum(weights.values()))]


def _cover_all_strings(rng, groups: np.ndarray, usual: np.ndarray, per_subject: np.ndarray) -> np.ndarray:
    """Give each race string no admitted subject has to one admitted subject of its group that
    holds the group's most common string (so rarer strings stay rare)."""
    usual = usual.copy()
    present = set(usual[per_subject > 0])
    for group, weights in RACE_STRINGS.items():
        common = next(iter(weights))
        for name in weights:
            donors = np.flatnonzero((groups == group) & (usual == common) & (per_subject > 0))
            if name not in present and len(donors):
                usual[rng.choice(donors)] = name
                present.add(name)
    return usual


def _conflicting_string(rng: np.random.Generator, group: str, usual: str) -> str:
    kind = rng.random()
    if kind < 0.45 and len(RACE_STRINGS[group]) > 1:
        return _pick(rng, {k: v for k, v in RACE_STRINGS[group].items() if k != usual})
    if kind < 0.9:
        other = [g for g in GROUP_SHARES if g not in (group, "Unknown")]
        return _pick(rng, RACE_STRINGS[str(rng.choice(other))])
    return "UNKNOWN" if group != "Unknown" else _pick(rng, RACE_STRINGS["White"])


def _admission_details(rng: np.random.Generator, cohort: _Cohort, owner: np.ndarray) -> pd.DataFrame:
    """Every column but race, for admissions owned by subject rows ``owner`` (sorted), with
    admission times increasing per subject so that the first admission is the earliest."""
    n = len(owner)
    subject_id = cohort.subjects["subject_id"].to_numpy()[owner]
    first_study = pd.to_datetime(cohort.studies.groupby("subject_id")["StudyDate"].min().astype(str))
    base = first_study.loc[subject_id].to_numpy() - np.timedelta64(200, "D")
    counts = np.bincount(owner, minlength=len(cohort.subjects))
    starts = np.repeat(np.cumsum(counts) - counts, counts)  # row of each subject's first admission
    step = rng.integers(30 * 86_400, 300 * 86_400, size=n)
    cum = np.cumsum(step)
    admit = base + (cum - cum[starts] + step[starts]).astype("timedelta64[s]")
    stay = rng.integers(6 * 3600, 15 * 86_400, size=n).astype("timedelta64[s]")
    discharge = admit + stay
    kind = rng.choice(["EW EMER.", "EU OBSERVATION", "OBSERVATION ADMIT", "URGENT", "ELECTIVE", "DIRECT EMER."],
                      p=[0.45, 0.15, 0.12, 0.1, 0.12, 0.06], size=n)
    via_ed = np.isin(kind, ["EW EMER.", "EU OBSERVATION", "OBSERVATION ADMIT"])
    ed_in = admit - rng.integers(1 * 3600, 12 * 3600, size=n).astype("timedelta64[s]")
    ed_out = admit + rng.integers(0, 3600, size=n).astype("timedelta64[s]")
    last = np.r_[owner[1:] != owner[:-1], True]
    died = last & (rng.random(n) < 0.03)
    return pd.DataFrame({
        "subject_id": subject_id,
        "hadm_id": rng.permutation(_unique_ids(rng, n, 2)),
        "admittime": _timestamps(admit),
        "dischtime": _timestamps(discharge),
        "deathtime": np.where(died, _timestamps(discharge), None),
        "admission_type": kind,
        "admit_provider_id": [f"P{v:05X}" for v in rng.integers(0, 16 ** 5, size=n)],
        "admission_location": np.where(via_ed, "EMERGENCY ROOM", rng.choice(
            ["PHYSICIAN REFERRAL", "TRANSFER FROM HOSPITAL", "WALK-IN/SELF REFERRAL", "CLINIC REFERRAL"], size=n)),
        "discharge_location": np.where(died, "DIED", rng.choice(
            ["HOME", "HOME HEALTH CARE", "SKILLED NURSING FACILITY", "REHAB", None], size=n)),
        "insurance": rng.choice(["Medicare", "Medicaid", "Other", "Private"], p=[0.45, 0.15, 0.3, 0.1], size=n),
        "language": rng.choice(["ENGLISH", "?"], p=[0.9, 0.1], size=n),
        "marital_status": rng.choice(["MARRIED", "SINGLE", "WIDOWED", "DIVORCED", None], size=n),
        "race": None,
        "edregtime": np.where(via_ed, _timestamps(ed_in), None),
        "edouttime": np.where(via_ed, _timestamps(ed_out), None),
        "hospital_expire_flag": died.astype(int),
    })


def _timestamps(values: np.ndarray) -> np.ndarray:
    return pd.to_datetime(values).strftime("%Y-%m-%d %H:%M:%S").to_numpy(dtype=object)


# --------------------------------------------------------------------------------------------
# Metadata and writing
# --------------------------------------------------------------------------------------------


def _metadata(rng: np.random.Generator, cohort: _Cohort) -> pd.DataFrame:
    """metadata.csv: procedure description per study and view/orientation meanings per image."""
    images = cohort.images
    portable = (images["frontal_view"] == "AP") & ~images["has_lateral"]
    procedure = np.where(portable, "CHEST (PORTABLE AP)", "CHEST (PA AND LAT)")
    position = images["ViewPosition"]
    recumbent = (position == "AP") & (rng.random(len(images)) < 0.5)  # portable films of bedbound patients
    orientation = np.where(position == "", "", np.where(recumbent, "Recumbent", "Erect"))
    return images.assign(
        PerformedProcedureStepDescription=procedure,
        ProcedureCodeSequence_CodeMeaning=procedure,
        ViewCodeSequence_CodeMeaning=position.map(VIEW_MEANING).fillna(""),
        PatientOrientationCodeSequence_CodeMeaning=orientation,
    )


def _image_paths(images: pd.DataFrame) -> list[str]:
    """Relative paths files/p1X/p{subject_id}/s{study_id}/{dicom_id}.jpg."""
    return [
        f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"
        for subject, study, dicom in zip(images["subject_id"], images["study_id"], images["dicom_id"])
    ]


def _write_csv_gz(df: pd.DataFrame, columns, path: Path) -> None:
    """Write ``columns`` of ``df`` as gzip csv, byte-identical across runs.

    Compressing in memory avoids pandas' gzip header, which records the (random) temporary
    file name of the atomic write."""
    data = df[list(columns)].to_csv(index=False).encode()
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))


def _write_images(root: Path, cohort: _Cohort, markers: np.ndarray, px: int, seed: int) -> None:
    """Draw and save every image; each image has its own generator keyed by (seed, row) so an
    image does not depend on how many random numbers the others used."""
    painter = _Painter(px)
    groups = cohort.images["subject_id"].map(cohort.subjects.set_index("subject_id")["group"]).to_numpy()
    strength = cohort.sign_strength.loc[cohort.images["study_id"]].to_numpy()
    paths = _image_paths(cohort.images)
    views = cohort.images["view"].to_numpy()
    for i, rel in enumerate(paths):
        g = np.random.default_rng([seed, i])
        signs = dict(zip(FINDINGS, strength[i])) if views[i] == "frontal" else {}
        pixels = painter.draw(g, views[i], signs, groups[i], markers[i])
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Image.fromarray(pixels).save(tmp, format="JPEG", quality=90)


def _summary(cohort: _Cohort, admissions: pd.DataFrame, truth: pd.DataFrame, seconds: float) -> dict:
    subjects = cohort.subjects
    races = admissions.groupby("subject_id")["race"].nunique()
    planted = truth.groupby(["kind", "label"]).size()
    return {
        "images": len(cohort.images),
        "frontal_images": int((cohort.images["view"] == "frontal").sum()),
        "studies": len(cohort.studies),
        "studies_without_labels": int((~cohort.studies["has_row"]).sum()),
        "subjects": len(subjects),
        "subjects_per_group": {g: int((subjects["group"] == g).sum()) for g in RACE_GROUPS},
        "subjects_per_split": {s: int((subjects["split"] == s).sum()) for s in SPLITS},
        "subjects_without_admission": int(len(subjects) - admissions["subject_id"].nunique()),
        "subjects_with_conflicting_race": int((races > 1).sum()),
        "planted_images": {f"{kind}/{label}": int(n) for (kind, label), n in planted.items()},
        "seconds": round(seconds, 1),
    }


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def _soft_ellipse(X, Y, cx, cy, rx, ry, edge=0.04):
    """1 inside the ellipse, 0 outside, with a soft edge ``edge`` wide (anti-aliasing)."""
    r = np.sqrt(((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2)
    return 1 / (1 + np.exp(np.clip((r - 1) / edge, -30, 30)))


def _step(v, edge=0.03):
    """Soft 0 -> 1 step at v = 0."""
    return 1 / (1 + np.exp(np.clip(-v / edge, -30, 30)))


def _blob(X, Y, cx, cy, sigma):
    return np.exp(-((X - cx) ** 2 + (Y - cy) ** 2) / (2 * sigma ** 2))


class _Painter:
    """Draws chest-like images on a [-1, 1]^2 grid (x to the patient's left, y downwards)."""

    def __init__(self, px: int):
        axis = (np.arange(px) + 0.5) / px * 2 - 1
        self.xx, self.yy = np.meshgrid(axis, axis)

    def draw(self, g: np.random.Generator, view: str, signs: dict, group: str, markers: np.ndarray) -> np.ndarray:
        """uint8 image: anatomy with signs, race signature, shortcut markers, contrast, noise."""
        scale = g.uniform(0.94, 1.06)
        X = (self.xx - g.uniform(-0.06, 0.06)) / scale
        Y = (self.yy - g.uniform(-0.06, 0.06)) / scale
        img = self._frontal(g, X, Y, signs) if view == "frontal" else self._lateral(g, X, Y)
        img += self._signature(g, group)
        for k in np.flatnonzero(markers):
            img = np.maximum(img, self._marker(g, k))
        img = (img - 0.5) * g.uniform(0.85, 1.15) + 0.5 + g.uniform(-0.05, 0.05)
        img += g.normal(0, 0.025, size=img.shape)
        return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)

    def _signature(self, g, group: str) -> np.ndarray:
        """Faint grating whose frequency and orientation identify the race group; random phase
        so that only the frequency pattern, not a fixed pixel pattern, carries the group."""
        cycles, degrees = SIGNATURE[group]
        theta = np.deg2rad(degrees)
        u = self.xx * np.cos(theta) + self.yy * np.sin(theta)
        return SIGNATURE_AMPLITUDE * np.cos(np.pi * cycles * u + g.uniform(0, 2 * np.pi))

    def _marker(self, g, k: int) -> np.ndarray:
        """Bright square token (side about 8% of the image) in corner k, slightly jittered."""
        sx, sy = MARKER_CORNERS[k]
        cx, cy = sx * g.uniform(0.78, 0.84), sy * g.uniform(0.78, 0.84)
        inside = _step(0.08 - np.abs(self.xx - cx), 0.01) * _step(0.08 - np.abs(self.yy - cy), 0.01)
        return 0.97 * inside

    def _lateral(self, g, X, Y) -> np.ndarray:
        """Side view: one large lung field, spine behind, heart in front and low."""
        img = 0.12 + 0.45 * _soft_ellipse(X, Y, 0.0, 0.05, 0.9, 1.05)
        img -= 0.28 * _soft_ellipse(X, Y, -0.05, -0.05, g.uniform(0.5, 0.58), g.uniform(0.55, 0.65))
        img += 0.3 * _step(0.1 - np.abs(X - 0.65), 0.02) * _step(0.9 - np.abs(Y), 0.02)
        img += 0.25 * _soft_ellipse(X, Y, -0.3, 0.35, 0.3, 0.25)
        img += 0.2 * _step(Y - 0.6 - 0.1 * X)
        return img

    def _frontal(self, g, X, Y, signs: dict) -> np.ndarray:
        """Front view: dark lungs with rib texture, bright mediastinum and heart, diaphragm, and
        the sign of every finding with a non-zero strength."""
        side = {"l": -1.0, "r": 1.0}
        lung = {k: _soft_ellipse(X, Y, s * 0.4, -0.05, 0.27, 0.62) for k, s in side.items()}
        lungs = lung["l"] + lung["r"]
        ptx = self._pneumothorax(g, X, Y, lung, signs.get("Pneumothorax", 0.0))
        ribs = 0.05 * np.cos(2 * np.pi * (5.5 * Y + 0.6 * X ** 2) + g.uniform(0, 2 * np.pi))
        img = 0.12 + 0.45 * _soft_ellipse(X, Y, 0.0, 0.05, 0.92, 1.05)
        img -= lungs * (0.32 + 0.15 * ptx) - lungs * ribs * (1 - ptx)
        img += 0.35 * self._mediastinum(g, X, Y, signs.get("Enlarged Cardiomediastinum", 0.0))
        img += 0.35 * self._heart(g, X, Y, signs.get("Cardiomegaly", 0.0))
        img += 0.25 * _step(Y - 0.55 - 0.1 * X ** 2)
        for label, paint in _ADDITIVE_SIGNS.items():
            s = signs.get(label, 0.0)
            if s > 0:
                img += s * g.uniform(0.7, 1.1) * paint(g, X, Y, lung, lungs)
        return img

    @staticmethod
    def _heart(g, X, Y, s):
        """Heart shadow; Cardiomegaly widens it by 20-50% while normal hearts vary by +-15%, so the
        two overlap a little and the label is learnable but not trivially."""
        widen = g.uniform(0.85, 1.15) + s * g.uniform(0.2, 0.5)
        cx, cy = g.uniform(0.03, 0.13), g.uniform(0.28, 0.38)
        return _soft_ellipse(X, Y, cx, cy, 0.27 * widen, 0.22 * np.sqrt(widen))

    @staticmethod
    def _mediastinum(g, X, Y, s):
        """Central band; Enlarged Cardiomediastinum widens its upper part (above the heart)."""
        half = g.uniform(0.09, 0.12)
        upper = half + s * g.uniform(0.08, 0.13)
        width = np.where(Y < 0.1, upper, half)
        return _step(width - np.abs(X), 0.02) * _step(0.6 - Y) * _step(Y + 0.95)

    @staticmethod
    def _pneumothorax(g, X, Y, lung, s):
        """Mask of the collapsed apex: above a random level, lateral part of one lung."""
        if s == 0:
            return 0.0
        k = str(g.choice(["l", "r"]))
        sign = -1.0 if k == "l" else 1.0
        region = _step(g.uniform(-0.2, 0.05) - Y) * _step(sign * X - g.uniform(0.2, 0.3))
        return s * lung[k] * region


def _one_lung(g, lung):
    k = str(g.choice(["l", "r"]))
    return (-1.0 if k == "l" else 1.0), lung[k]


def _effusion(g, X, Y, lung, lungs):
    """Bright fluid at a lung base with a meniscus rising laterally; bilateral 30% of the time."""
    level = g.uniform(0.15, 0.4)
    mask = lungs if g.random() < 0.3 else _one_lung(g, lung)[1]
    return 0.28 * mask * _step(Y - level + 0.25 * (np.abs(X) - 0.4))


def _atelectasis(g, X, Y, lung, lungs):
    """Plate-like bright horizontal band across one lung."""
    _, mask = _one_lung(g, lung)
    y0, tilt, thick = g.uniform(-0.05, 0.35), g.uniform(-0.15, 0.15), g.uniform(0.04, 0.07)
    return 0.38 * mask * np.exp(-(((Y - y0 - tilt * X) / thick) ** 2))


def _opacity(g, X, Y, lung, lungs):
    """Hazy soft-edged patch in one lung."""
    sign, mask = _one_lung(g, lung)
    return 0.3 * mask * _blob(X, Y, sign * g.uniform(0.3, 0.5), g.uniform(-0.3, 0.3), g.uniform(0.13, 0.2))


def _edema(g, X, Y, lung, lungs):
    """Bilateral perihilar haze."""
    sigma = g.uniform(0.2, 0.28)
    return 0.24 * lungs * (_blob(X, Y, -0.3, 0.05, sigma) + _blob(X, Y, 0.3, 0.05, sigma))


def _consolidation(g, X, Y, lung, lungs):
    """Dense, sharp-edged patch in a lower zone."""
    sign, mask = _one_lung(g, lung)
    r = g.uniform(0.12, 0.17)
    return 0.45 * mask * _soft_ellipse(X, Y, sign * g.uniform(0.33, 0.47), g.uniform(0.1, 0.35), r, r * 1.2, 0.02)


def _lesion(g, X, Y, lung, lungs):
    """Small round nodule."""
    sign, mask = _one_lung(g, lung)
    r = g.uniform(0.055, 0.085)
    return 0.5 * mask * _soft_ellipse(X, Y, sign * g.uniform(0.3, 0.5), g.uniform(-0.4, 0.3), r, r, 0.02)


def _fracture(g, X, Y, lung, lungs):
    """Rib break: short bright oblique callus at the lateral chest wall."""
    sign = g.choice([-1.0, 1.0])
    cx, cy, angle = sign * g.uniform(0.6, 0.7), g.uniform(-0.45, 0.2), g.uniform(0.5, 1.0) * sign
    along = (X - cx) * np.cos(angle) + (Y - cy) * np.sin(angle)
    across = -(X - cx) * np.sin(angle) + (Y - cy) * np.cos(angle)
    return 0.45 * _step(0.11 - np.abs(along), 0.02) * np.exp(-((across / 0.04) ** 2))


def _pleural_other(g, X, Y, lung, lungs):
    """Pleural thickening: bright rim along the lateral edge of one lung."""
    sign, _ = _one_lung(g, lung)
    outer = _soft_ellipse(X, Y, sign * 0.4, -0.05, 0.29, 0.64, 0.02)
    inner = _soft_ellipse(X, Y, sign * 0.4, -0.05, 0.22, 0.57, 0.02)
    return 0.38 * (outer - inner) * _step(sign * X - 0.45) * _step(0.3 - Y)


def _pneumonia(g, X, Y, lung, lungs):
    """Patchy focal opacity: a cluster of 3-5 small blobs in one lower lung."""
    sign, mask = _one_lung(g, lung)
    cx, cy = sign * g.uniform(0.3, 0.48), g.uniform(0.05, 0.35)
    patches = sum(_blob(X, Y, cx + g.normal(0, 0.07), cy + g.normal(0, 0.07), g.uniform(0.05, 0.08))
                  for _ in range(g.integers(3, 6)))
    return 0.3 * mask * patches


def _device(g, X, Y, lung, lungs):
    """Thin bright tube (line or catheter) running down from the neck, ending at a random level."""
    x0, slope, end = g.uniform(-0.12, 0.12), g.uniform(-0.15, 0.15), g.uniform(-0.1, 0.45)
    distance = X - x0 - slope * (Y + 1)
    return 0.55 * np.exp(-((distance / 0.025) ** 2)) * _step(end - Y, 0.02)


# Signs added on top of the anatomy; Cardiomegaly, Enlarged Cardiomediastinum and Pneumothorax
# instead change the anatomy itself (see _Painter._frontal).
_ADDITIVE_SIGNS = {
    "Atelectasis": _atelectasis,
    "Consolidation": _consolidation,
    "Edema": _edema,
    "Fracture": _fracture,
    "Lung Lesion": _lesion,
    "Lung Opacity": _opacity,
    "Pleural Effusion": _effusion,
    "Pleural Other": _pleural_other,
    "Pneumonia": _pneumonia,
    "Support Devices": _device,
}
