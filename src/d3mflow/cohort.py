"""Cohort building: MIMIC-CXR-JPG and MIMIC-IV files -> one row per image, then one binary
task per CheXpert label.

Four steps, each a Snakemake job that writes atomically through :mod:`d3mflow.io`:

- ``build_race``: one race group per subject from MIMIC-IV admissions;
- ``build_image_table``: the kept images (metadata, per-study labels, split) without race,
  and every dropped image with the first reason that applies;
- ``build_cohort``: the image table joined with race (the table a person reads);
- ``build_task``: one label column of the image table as a 0/1 target under an uncertainty
  policy; ``build_group_members``: the images of one race group.

Race stays out of the image table and the tasks, so remapping a race string never retrains a
model or recomputes TRAK features; only the ``exclude`` conflict policy, which drops images,
feeds race into the image table.

Race per subject
----------------
MIMIC-IV records race per ADMISSION, so a subject can carry several values. Raw strings are
mapped to the six groups of :data:`d3mflow.names.RACE_GROUPS` with :data:`DEFAULT_RACE_MAP`
(overridable with the config key ``cohort.race_map``); a string missing from the map is an
error rather than a silent "Other", because new MIMIC-IV releases have renamed values before.

Conflicts are decided on the MAPPED group, so "WHITE" and "WHITE - RUSSIAN" agree. Values that
map to "Unknown" (UNKNOWN, UNABLE TO OBTAIN, PATIENT DECLINED TO ANSWER) are ignored when the
subject also has an informative value: "not recorded this time" does not contradict a value
recorded at another admission. Admission rows with an empty race cell carry no information and
are dropped. The ``race_conflict`` policy then decides between the remaining groups:

- ``exclude``: every image of a subject with two or more groups is excluded (``race_conflict``).
- ``first``: the group of the earliest admission (by ``admittime``, file order on ties).
- ``most_frequent`` (default): the group on most admissions; ties go to the group whose first
  admission is earliest.

``race_raw`` is the raw string of the earliest admission of the chosen group. Subjects with no
admission at all get group "Unknown" and a null ``race_raw``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from d3mflow.io import write_parquet
from d3mflow.names import CHEXPERT_LABELS, RACE_GROUPS

log = logging.getLogger(__name__)

DEFAULT_RACE_MAP: dict[str, str] = {
    # The 33 values of MIMIC-IV v2.x / v3.x `race`.
    "AMERICAN INDIAN/ALASKA NATIVE": "Other",
    "ASIAN": "Asian",
    "ASIAN - ASIAN INDIAN": "Asian",
    "ASIAN - CHINESE": "Asian",
    "ASIAN - KOREAN": "Asian",
    "ASIAN - SOUTH EAST ASIAN": "Asian",
    "BLACK/AFRICAN": "Black or African American",
    "BLACK/AFRICAN AMERICAN": "Black or African American",
    "BLACK/CAPE VERDEAN": "Black or African American",
    "BLACK/CARIBBEAN ISLAND": "Black or African American",
    "HISPANIC OR LATINO": "Hispanic/Latino",
    "HISPANIC/LATINO - CENTRAL AMERICAN": "Hispanic/Latino",
    "HISPANIC/LATINO - COLUMBIAN": "Hispanic/Latino",
    "HISPANIC/LATINO - CUBAN": "Hispanic/Latino",
    "HISPANIC/LATINO - DOMINICAN": "Hispanic/Latino",
    "HISPANIC/LATINO - GUATEMALAN": "Hispanic/Latino",
    "HISPANIC/LATINO - HONDURAN": "Hispanic/Latino",
    "HISPANIC/LATINO - MEXICAN": "Hispanic/Latino",
    "HISPANIC/LATINO - PUERTO RICAN": "Hispanic/Latino",
    "HISPANIC/LATINO - SALVADORAN": "Hispanic/Latino",
    "MULTIPLE RACE/ETHNICITY": "Other",
    "NATIVE HAWAIIAN OR OTHER PACIFIC ISLANDER": "Other",
    "OTHER": "Other",
    "PATIENT DECLINED TO ANSWER": "Unknown",
    # Papers disagree on these two (White, Hispanic/Latino or Other); we follow the literal
    # prefix rule, which puts them in Other. Override with cohort.race_map.
    "PORTUGUESE": "Other",
    "SOUTH AMERICAN": "Other",
    "UNABLE TO OBTAIN": "Unknown",
    "UNKNOWN": "Unknown",
    "WHITE": "White",
    "WHITE - BRAZILIAN": "White",
    "WHITE - EASTERN EUROPEAN": "White",
    "WHITE - OTHER EUROPEAN": "White",
    "WHITE - RUSSIAN": "White",
    # v1.0 `ethnicity` values not already listed above.
    "HISPANIC/LATINO": "Hispanic/Latino",
}
"""Raw MIMIC-IV race string -> race group.

Covers the 33 strings of MIMIC-IV v2.x/v3.x and the 8 of v1.0's ``ethnicity``. Rule:
``WHITE*`` -> White, ``BLACK*`` -> Black or African American, ``ASIAN*`` -> Asian,
``HISPANIC*`` -> Hispanic/Latino; UNKNOWN, UNABLE TO OBTAIN and PATIENT DECLINED TO ANSWER ->
Unknown; everything else -> Other, including PORTUGUESE and SOUTH AMERICAN (placed differently
by different papers; change them with ``cohort.race_map``)."""

VIEW_NOT_KEPT = "view_not_kept"
NO_LABEL_ROW = "no_label_row"
NO_SPLIT_ROW = "no_split_row"
RACE_CONFLICT = "race_conflict"
UNCERTAIN_LABEL_IGNORED = "uncertain_label_ignored"
COHORT_REASONS = (VIEW_NOT_KEPT, NO_LABEL_ROW, NO_SPLIT_ROW, RACE_CONFLICT)

SPLITS = ("train", "validate", "test")
LABELERS = ("chexpert", "negbio")
RACE_CONFLICT_POLICIES = ("exclude", "first", "most_frequent")
SPLIT_MODES = ("official", "random")
UNCERTAIN_POLICIES = ("zeros", "ones", "ignore")

IMAGE_TABLE_COLUMNS = ["image_index", "dicom_id", "subject_id", "study_id", "path", "view", "split", *CHEXPERT_LABELS]
IMAGE_COLUMNS = [*IMAGE_TABLE_COLUMNS[:7], "race_raw", "race_group", *CHEXPERT_LABELS]
EXCLUDED_COLUMNS = ["dicom_id", "subject_id", "study_id", "reason"]
TASK_COLUMNS = ["image_index", "dicom_id", "subject_id", "study_id", "split", "y"]

_CXR_KEY = "data.mimic_cxr_jpg"
_IV_KEY = "data.mimic_iv"
_KEY_COLUMNS = ["subject_id", "study_id"]
_MAX_LISTED = 5  # how many offending rows/paths an error message spells out


# --------------------------------------------------------------------------------------------
# Reading


def _check_choice(name: str, value, choices) -> None:
    """Reject a bad enum-like parameter, naming it and the valid values."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _require_file(path: Path, config_key: str) -> Path:
    """Fail early with the path and the config key that points at it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; check the config key {config_key}")
    return path


def _read_csv(path: Path, columns: list[str], dtype: dict | None = None) -> pd.DataFrame:
    """Read only ``columns`` of a CSV, by name (releases differ in column order and extras)."""
    header = pd.read_csv(path, nrows=0).columns
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"{path} lacks required column(s) {missing}; it has {list(header)}")
    return pd.read_csv(path, usecols=columns, dtype=dtype)


def _read_metadata(root: Path) -> pd.DataFrame:
    path = _require_file(root / "mimic-cxr-2.0.0-metadata.csv.gz", _CXR_KEY)
    return _read_csv(
        path,
        ["dicom_id", *_KEY_COLUMNS, "ViewPosition"],
        dtype={"dicom_id": str, "subject_id": "int64", "study_id": "int64", "ViewPosition": str},
    )


def _read_labels(root: Path, labeler: str) -> pd.DataFrame:
    """Per-study labels; one row per (subject_id, study_id) or the join would duplicate images."""
    path = _require_file(root / f"mimic-cxr-2.0.0-{labeler}.csv.gz", _CXR_KEY)
    dtype = {"subject_id": "int64", "study_id": "int64", **{c: "float64" for c in CHEXPERT_LABELS}}
    labels = _read_csv(path, [*_KEY_COLUMNS, *CHEXPERT_LABELS], dtype=dtype)
    duplicated = labels.loc[labels.duplicated(_KEY_COLUMNS), "study_id"]
    if len(duplicated):
        raise ValueError(f"{path} has several rows for study_id(s) {duplicated.head(_MAX_LISTED).tolist()}")
    return labels


def _read_split(root: Path) -> pd.DataFrame:
    """Official split per dicom_id, checked to be valid and patient-level."""
    path = _require_file(root / "mimic-cxr-2.0.0-split.csv.gz", _CXR_KEY)
    split = _read_csv(path, ["dicom_id", "subject_id", "split"], dtype={"dicom_id": str, "subject_id": "int64", "split": str})
    bad = split["split"][~split["split"].isin(SPLITS)].unique().tolist()
    if bad:
        raise ValueError(f"{path}: split values must be {list(SPLITS)}, found {bad}")
    duplicated = split.loc[split["dicom_id"].duplicated(), "dicom_id"]
    if len(duplicated):
        raise ValueError(f"{path} has several rows for dicom_id(s) {duplicated.head(_MAX_LISTED).tolist()}")
    n_splits = split.groupby("subject_id")["split"].nunique()
    leaking = n_splits.index[n_splits > 1].tolist()
    if leaking:
        raise ValueError(
            f"{path} puts subject_id {leaking[0]} (and {len(leaking) - 1} more) in more than one split; "
            "a patient-level split is required (or set cohort.split: random)"
        )
    return split[["dicom_id", "split"]]


def _admissions_path(root: Path) -> Path:
    """v2.x/v3.x keep admissions under hosp/, v1.0 under core/."""
    for sub in ("hosp", "core"):
        if (root / sub / "admissions.csv.gz").is_file():
            return root / sub / "admissions.csv.gz"
    raise FileNotFoundError(
        f"{root / 'hosp' / 'admissions.csv.gz'} (or v1.0's {root / 'core' / 'admissions.csv.gz'}) "
        f"not found; check the config key {_IV_KEY}"
    )


def _read_admissions(root: Path) -> tuple[Path, pd.DataFrame]:
    """Admissions as (subject_id, admittime, race), whatever the release calls the race column."""
    path = _admissions_path(root)
    header = pd.read_csv(path, nrows=0).columns
    race_column = "race" if "race" in header else "ethnicity"
    adm = _read_csv(path, ["subject_id", "admittime", race_column], dtype={"subject_id": "int64", race_column: str})
    adm = adm.rename(columns={race_column: "race"})
    adm["admittime"] = pd.to_datetime(adm["admittime"], format="ISO8601")  # tolerate date-only values
    return path, adm


# --------------------------------------------------------------------------------------------
# Race


def merged_race_map(overrides: dict[str, str] | None) -> dict[str, str]:
    """DEFAULT_RACE_MAP with ``overrides`` (config ``cohort.race_map``) on top, groups checked."""
    bad = {raw: g for raw, g in (overrides or {}).items() if g not in RACE_GROUPS}
    if bad:
        raise ValueError(f"cohort.race_map maps to unknown group(s) {bad}; groups are {list(RACE_GROUPS)}")
    return {**DEFAULT_RACE_MAP, **(overrides or {})}


def _map_race(adm: pd.DataFrame, race_map: dict[str, str], path: Path) -> pd.Series:
    """Map raw strings to groups; an unmapped string is an error naming where it occurs."""
    groups = adm["race"].map(race_map)
    unmapped = adm.index[groups.isna()]
    if len(unmapped):
        first = adm.loc[unmapped[0], "race"]
        rows = (adm.index[adm["race"] == first][:_MAX_LISTED] + 1).tolist()  # 1-based data rows
        others = sorted(set(adm.loc[unmapped, "race"]) - {first})
        raise ValueError(
            f"{path}: race string {first!r} (data row(s) {rows}) is not in the race map"
            + (f"; also unmapped: {others[:_MAX_LISTED]}" if others else "")
            + ". Add each to the config key cohort.race_map, e.g. cohort.race_map: {"
            + f"{first!r}: Other}} (groups: {list(RACE_GROUPS)})"
        )
    return groups


def resolve_race(adm: pd.DataFrame, race_map: dict[str, str], policy: str, path: Path) -> pd.DataFrame:
    """One row per admitted subject: subject_id, race_raw, race_group, conflict (bool).

    ``adm`` has subject_id, admittime, race. See the module docstring for the rules."""
    adm = adm.dropna(subset=["race"])
    adm = adm.assign(group=_map_race(adm, race_map, path))
    adm = adm.sort_values(["subject_id", "admittime"], kind="stable", na_position="last")
    adm["order"] = np.arange(len(adm))
    informative = adm["group"] != "Unknown"
    has_informative = informative.groupby(adm["subject_id"]).transform("any")
    adm = adm[informative | ~has_informative]

    per_group = adm.groupby(["subject_id", "group"], sort=False).agg(
        count=("order", "size"), first_order=("order", "min"), race_raw=("race", "first")
    ).reset_index()
    per_group["conflict"] = per_group.groupby("subject_id")["group"].transform("size") > 1
    if policy == "most_frequent":
        per_group = per_group.sort_values(["subject_id", "count", "first_order"], ascending=[True, False, True])
    else:  # "first", and "exclude" whose non-conflicting subjects have a single group anyway
        per_group = per_group.sort_values(["subject_id", "first_order"])
    chosen = per_group.drop_duplicates("subject_id")
    return chosen.rename(columns={"group": "race_group"})[["subject_id", "race_raw", "race_group", "conflict"]]


# --------------------------------------------------------------------------------------------
# Split


def check_split_fractions(fractions) -> tuple[float, float, float]:
    """(train, validate, test) fractions: three non-negative numbers summing to 1."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            f"cohort.split_fractions must be three non-negative numbers (train, validate, test) "
            f"summing to 1, got {list(fractions)}"
        )
    return fractions


def random_patient_split(subject_ids, fractions, seed: int) -> pd.Series:
    """Patient-level split: sorted unique subjects, permuted by ``seed``, cut by ``fractions``.

    Returns a Series subject_id -> split. Sorting first makes the result independent of row
    order, so the same subjects and seed always give the same split."""
    subjects = np.sort(pd.unique(np.asarray(subject_ids)))
    permuted = np.random.default_rng(seed).permutation(subjects)
    n_train = int(round(fractions[0] * len(subjects)))
    n_validate = int(round(fractions[1] * len(subjects)))
    labels = np.array(["test"] * len(subjects), dtype=object)
    labels[:n_train] = "train"
    labels[n_train : n_train + n_validate] = "validate"
    return pd.Series(labels, index=permuted, name="split")


# --------------------------------------------------------------------------------------------
# Cohort


def image_path(subject_id: int, study_id: int, dicom_id: str) -> str:
    """Path of an image relative to the MIMIC-CXR-JPG root."""
    return f"files/p{str(subject_id)[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"


def _first_reason(images: pd.DataFrame, views, split_mode: str) -> pd.Series:
    """The first exclusion reason that applies to each image (null when the image is kept)."""
    conditions = [
        ~images["view"].isin(list(views)),  # an empty ViewPosition is never in views
        ~images["has_label_row"],
        images["split"].isna() if split_mode == "official" else pd.Series(False, index=images.index),
        images["conflict"],
    ]
    reason = pd.Series(np.select(conditions, list(COHORT_REASONS), default=""), index=images.index)
    return reason.mask(reason == "")


def _check_images_exist(root: Path, paths: pd.Series) -> None:
    """Every kept image must be on disk, or training would fail much later and less clearly."""
    missing = [p for p in paths if not (root / p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} kept image file(s) are missing under {root}, e.g. "
            f"{missing[:_MAX_LISTED]}; check the config key {_CXR_KEY} (or pass check_images=False)"
        )


def build_race(mimic_iv, race_out, *, race_map=None, race_conflict="most_frequent") -> dict:
    """Write one row per admitted subject (subject_id, race_raw, race_group, conflict).

    Race is its own step so that remapping a race string reaches only the jobs that use race
    groups (attribution per group, metrics, report), never the images, tasks or models."""
    _check_choice("race_conflict", race_conflict, RACE_CONFLICT_POLICIES)
    adm_path, admissions = _read_admissions(Path(mimic_iv))
    race = resolve_race(admissions, merged_race_map(race_map), race_conflict, adm_path)
    race = race.sort_values("subject_id", ignore_index=True)
    write_parquet(race, race_out)
    summary = {
        "subjects": int(len(race)),
        "conflicting_subjects": int(race["conflict"].sum()),
        "race_group": {g: int((race["race_group"] == g).sum()) for g in RACE_GROUPS},
    }
    log.info("race per subject (race_conflict=%s): %s", race_conflict, summary)
    return summary


def build_image_table(
    mimic_cxr_jpg,
    table_out,
    excluded_out,
    *,
    views=("AP", "PA"),
    labeler="chexpert",
    split="official",
    split_fractions=(0.6, 0.1, 0.3),
    split_seed=0,
    race_parquet=None,
    check_images=True,
) -> dict:
    """Write the kept images without race (``table_out``) and the excluded ones (``excluded_out``).

    Images are rows of the metadata file. Each is excluded with the first reason that applies:
    view_not_kept, no_label_row, no_split_row (official split only), race_conflict (only when
    ``race_parquet`` is given, i.e. under the ``exclude`` conflict policy). Kept images are
    sorted by subject_id, study_id, dicom_id and numbered by ``image_index``. With
    ``split="random"`` the split file is not read and the subjects of the kept images are split
    by patient. Returns counts per split and per exclusion reason, also logged."""
    _check_choice("labeler", labeler, LABELERS)
    _check_choice("split", split, SPLIT_MODES)
    fractions = check_split_fractions(split_fractions)
    cxr_root = Path(mimic_cxr_jpg)

    images = _read_metadata(cxr_root).rename(columns={"ViewPosition": "view"})
    images = images.merge(_read_labels(cxr_root, labeler).assign(has_label_row=True), on=_KEY_COLUMNS, how="left")
    images["has_label_row"] = images["has_label_row"].fillna(False).astype(bool)
    if split == "official":
        images = images.merge(_read_split(cxr_root), on="dicom_id", how="left")
    else:
        images["split"] = None
    conflicting = set()
    if race_parquet is not None:
        race = pd.read_parquet(race_parquet, columns=["subject_id", "conflict"])
        conflicting = set(race.loc[race["conflict"], "subject_id"])
    images["conflict"] = images["subject_id"].isin(conflicting)

    images["reason"] = _first_reason(images, views, split)
    images = images.sort_values(["subject_id", "study_id", "dicom_id"], ignore_index=True)
    kept = images[images["reason"].isna()].reset_index(drop=True)
    excluded = images.loc[images["reason"].notna(), EXCLUDED_COLUMNS].reset_index(drop=True)

    if split == "random":
        kept["split"] = kept["subject_id"].map(random_patient_split(kept["subject_id"], fractions, split_seed))
    kept["image_index"] = np.arange(len(kept), dtype="int64")
    kept["path"] = [image_path(*row) for row in kept[["subject_id", "study_id", "dicom_id"]].itertuples(index=False)]
    kept = kept[IMAGE_TABLE_COLUMNS]
    if check_images:
        _check_images_exist(cxr_root, kept["path"])

    write_parquet(kept, table_out)
    write_parquet(excluded, excluded_out)
    summary = {
        "n_images": int(len(kept) + len(excluded)),
        "n_kept": int(len(kept)),
        "n_subjects_kept": int(kept["subject_id"].nunique()),
        "excluded": {r: int((excluded["reason"] == r).sum()) for r in COHORT_REASONS},
        "split": {s: int((kept["split"] == s).sum()) for s in SPLITS},
    }
    log.info("image table (split=%s): %s", split, summary)
    return summary


def build_cohort(image_table, race_parquet, images_out) -> dict:
    """Write the cohort: the image table with each subject's raw race and race group.

    Subjects with no admission are "Unknown" with a null ``race_raw``. Returns the number of
    images per race group, also logged."""
    images = pd.read_parquet(image_table)
    race = pd.read_parquet(race_parquet, columns=["subject_id", "race_raw", "race_group"])
    images = images.merge(race, on="subject_id", how="left", validate="many_to_one")
    images["race_group"] = images["race_group"].fillna("Unknown")
    images = images[IMAGE_COLUMNS]
    write_parquet(images, images_out)
    summary = {g: int((images["race_group"] == g).sum()) for g in RACE_GROUPS}
    log.info("cohort: %d images; per race group %s", len(images), summary)
    return summary


def build_group_members(images_parquet, group, out) -> int:
    """Write the image_index of every cohort image in race ``group`` (all splits).

    One small file per group, written deterministically, so that a remapped race string changes
    the bytes of the affected groups' files only and Snakemake's checksum comparison leaves the
    other groups' attribution jobs alone."""
    if group not in RACE_GROUPS:
        raise ValueError(f"unknown race group {group!r}; groups are {list(RACE_GROUPS)}")
    images = pd.read_parquet(images_parquet, columns=["image_index", "race_group"])
    members = images.loc[images["race_group"] == group, ["image_index"]].sort_values("image_index", ignore_index=True)
    write_parquet(members, out)
    log.info("race group %s: %d images", group, len(members))
    return len(members)


# --------------------------------------------------------------------------------------------
# Tasks


def _binary_target(values: pd.Series, uncertain: str) -> pd.Series:
    """CheXpert value -> 0/1 (null for uncertain under "ignore"). Blank means not mentioned: 0."""
    unexpected = sorted(set(values.dropna()) - {1.0, 0.0, -1.0})
    if unexpected:
        raise ValueError(f"label values must be 1.0, 0.0, -1.0 or empty, found {unexpected}")
    uncertain_value = {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}[uncertain]
    return values.fillna(0.0).replace(-1.0, uncertain_value)


def build_task(image_table, label, task_out, excluded_out, *, uncertain="zeros") -> dict:
    """Write the binary task for one CheXpert ``label`` and the images it drops.

    ``task_out`` columns: image_index, dicom_id, subject_id, study_id, split, y (int8), sorted
    by image_index. Race is deliberately absent: models and TRAK features must not depend on
    the race mapping. Under ``uncertain="ignore"`` images labelled -1.0 go to
    ``excluded_out`` with reason "uncertain_label_ignored"; the file is written (possibly
    empty) under every policy so the workflow always has it. Returns per-split counts."""
    if label not in CHEXPERT_LABELS:
        raise ValueError(f"unknown label {label!r}; valid labels: {list(CHEXPERT_LABELS)}")
    _check_choice("uncertain", uncertain, UNCERTAIN_POLICIES)

    images = pd.read_parquet(image_table).sort_values("image_index", ignore_index=True)
    y = _binary_target(images[label], uncertain)
    dropped = y.isna()
    task = images.loc[~dropped, TASK_COLUMNS[:-1]].assign(y=y[~dropped].astype("int8")).reset_index(drop=True)
    excluded = images.loc[dropped, EXCLUDED_COLUMNS[:-1]].assign(reason=UNCERTAIN_LABEL_IGNORED).reset_index(drop=True)
    excluded["reason"] = excluded["reason"].astype(str)

    write_parquet(task, task_out)
    write_parquet(excluded, excluded_out)
    summary = {
        "label": label,
        "uncertain": uncertain,
        "n": {s: int((task["split"] == s).sum()) for s in SPLITS},
        "positives": {s: int(task.loc[task["split"] == s, "y"].sum()) for s in SPLITS},
        "excluded": int(len(excluded)),
    }
    log.info("task %s: %s", label, summary)
    return summary
