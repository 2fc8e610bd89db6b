"""Tests for d3mflow.cohort on tiny hand-made MIMIC-format files (no demo generator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from d3mflow.cohort import (
    DEFAULT_RACE_MAP,
    EXCLUDED_COLUMNS,
    IMAGE_COLUMNS,
    TASK_COLUMNS,
    build_cohort,
    build_group_members,
    build_image_table,
    build_race,
    build_task,
    merged_race_map,
)
from d3mflow.names import CHEXPERT_LABELS, RACE_GROUPS

RACE_STRINGS_V2 = [
    "AMERICAN INDIAN/ALASKA NATIVE", "ASIAN", "ASIAN - ASIAN INDIAN", "ASIAN - CHINESE",
    "ASIAN - KOREAN", "ASIAN - SOUTH EAST ASIAN", "BLACK/AFRICAN", "BLACK/AFRICAN AMERICAN",
    "BLACK/CAPE VERDEAN", "BLACK/CARIBBEAN ISLAND", "HISPANIC OR LATINO",
    "HISPANIC/LATINO - CENTRAL AMERICAN", "HISPANIC/LATINO - COLUMBIAN", "HISPANIC/LATINO - CUBAN",
    "HISPANIC/LATINO - DOMINICAN", "HISPANIC/LATINO - GUATEMALAN", "HISPANIC/LATINO - HONDURAN",
    "HISPANIC/LATINO - MEXICAN", "HISPANIC/LATINO - PUERTO RICAN", "HISPANIC/LATINO - SALVADORAN",
    "MULTIPLE RACE/ETHNICITY", "NATIVE HAWAIIAN OR OTHER PACIFIC ISLANDER", "OTHER",
    "PATIENT DECLINED TO ANSWER", "PORTUGUESE", "SOUTH AMERICAN", "UNABLE TO OBTAIN", "UNKNOWN",
    "WHITE", "WHITE - BRAZILIAN", "WHITE - EASTERN EUROPEAN", "WHITE - OTHER EUROPEAN",
    "WHITE - RUSSIAN",
]
ETHNICITY_V1 = [
    "WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC/LATINO", "OTHER", "ASIAN", "UNKNOWN",
    "UNABLE TO OBTAIN", "AMERICAN INDIAN/ALASKA NATIVE",
]
ADMISSION_COLUMNS_V2 = [
    "subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type",
    "admit_provider_id", "admission_location", "discharge_location", "insurance", "language",
    "marital_status", "race", "edregtime", "edouttime", "hospital_expire_flag",
]
METADATA_COLUMNS = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
]


# --------------------------------------------------------------------------------------------
# Fixture builder


def dicom(n: int) -> str:
    """A MIMIC-looking dicom_id (five dash-separated groups of 8 hex chars)."""
    return "-".join([f"{n:08x}"] * 5)


def write_cxr(root: Path, images, labels=None, split=None, *, jpgs=True, labeler="chexpert") -> None:
    """Write metadata, labeler and split files (and empty JPGs) for ``images``.

    ``images``: list of (dicom_id, subject_id, study_id, view). ``labels``: study_id -> dict of
    label values (studies not listed get an all-blank row; pass ``{study: None}`` for no row).
    ``split``: dicom_id -> split (default: train)."""
    labels, split = labels or {}, split or {}
    meta = pd.DataFrame(
        [
            {"dicom_id": d, "subject_id": s, "study_id": st, "PerformedProcedureStepDescription": "CHEST",
             "ViewPosition": v, "Rows": 3000, "Columns": 2500, "StudyDate": 21800101, "StudyTime": 80556.875,
             "ProcedureCodeSequence_CodeMeaning": "CHEST", "ViewCodeSequence_CodeMeaning": "",
             "PatientOrientationCodeSequence_CodeMeaning": "Erect"}
            for d, s, st, v in images
        ],
        columns=METADATA_COLUMNS,
    )
    root.mkdir(parents=True, exist_ok=True)
    meta.to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    studies = meta[["subject_id", "study_id"]].drop_duplicates()
    rows = [
        {"subject_id": s, "study_id": st, **(labels.get(st) or {})}
        for s, st in studies.itertuples(index=False)
        if not (st in labels and labels[st] is None)
    ]
    pd.DataFrame(rows, columns=["subject_id", "study_id", *CHEXPERT_LABELS]).to_csv(
        root / f"mimic-cxr-2.0.0-{labeler}.csv.gz", index=False
    )
    pd.DataFrame(
        [{"dicom_id": d, "study_id": st, "subject_id": s, "split": split.get(d, "train")} for d, s, st, _ in images]
    ).to_csv(root / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    if jpgs:
        for d, s, st, _ in images:
            path = root / f"files/p{str(s)[:2]}/p{s}/s{st}/{d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")


def write_admissions(root: Path, rows, *, version: str = "v3") -> None:
    """Admissions for (subject_id, admittime, race) rows in the layout of a MIMIC-IV release."""
    columns = list(ADMISSION_COLUMNS_V2)
    sub, race_col = "hosp", "race"
    if version == "v2.0":
        columns.remove("admit_provider_id")
    if version == "v1.0":
        sub, race_col = "core", "ethnicity"
        columns = [race_col if c == "race" else c for c in columns if c != "admit_provider_id"]
    df = pd.DataFrame(
        [{"subject_id": s, "hadm_id": 20000000 + i, "admittime": t, race_col: r, "insurance": "Other"}
         for i, (s, t, r) in enumerate(rows)],
        columns=columns,
    )
    (root / sub).mkdir(parents=True, exist_ok=True)
    df.to_csv(root / sub / "admissions.csv.gz", index=False)


@pytest.fixture
def roots(tmp_path):
    return tmp_path / "mimic-cxr-jpg", tmp_path / "mimic-iv"


def run_cohort(roots, tmp_path, *, race_map=None, race_conflict="most_frequent", **table_kwargs):
    """The workflow's three cohort jobs in order: race, image table, cohort."""
    cxr, iv = roots
    out = tmp_path / "out"
    race = build_race(iv, out / "race.parquet", race_map=race_map, race_conflict=race_conflict)
    race_input = out / "race.parquet" if race_conflict == "exclude" else None
    table = build_image_table(cxr, out / "table.parquet", out / "excluded.parquet", race_parquet=race_input, **table_kwargs)
    groups = build_cohort(out / "table.parquet", out / "race.parquet", out / "images.parquet")
    summary = {**table, "race_group": groups, "race_conflict_subjects": race["conflicting_subjects"]}
    return summary, pd.read_parquet(out / "images.parquet"), pd.read_parquet(out / "excluded.parquet")


def one_image_per_subject(subjects, view="PA"):
    return [(dicom(i), s, 50000000 + i, view) for i, s in enumerate(subjects)]


# --------------------------------------------------------------------------------------------
# Race map


def test_default_race_map_covers_every_string_with_a_known_group():
    assert set(RACE_STRINGS_V2) | set(ETHNICITY_V1) == set(DEFAULT_RACE_MAP)
    assert set(DEFAULT_RACE_MAP.values()) <= set(RACE_GROUPS)


@pytest.mark.parametrize(
    "raw, group",
    [
        ("WHITE", "White"), ("WHITE - RUSSIAN", "White"), ("WHITE - BRAZILIAN", "White"),
        ("BLACK/AFRICAN AMERICAN", "Black or African American"), ("BLACK/CAPE VERDEAN", "Black or African American"),
        ("ASIAN", "Asian"), ("ASIAN - KOREAN", "Asian"),
        ("HISPANIC OR LATINO", "Hispanic/Latino"), ("HISPANIC/LATINO - CUBAN", "Hispanic/Latino"),
        ("HISPANIC/LATINO", "Hispanic/Latino"),
        ("UNKNOWN", "Unknown"), ("UNABLE TO OBTAIN", "Unknown"), ("PATIENT DECLINED TO ANSWER", "Unknown"),
        ("PORTUGUESE", "Other"), ("SOUTH AMERICAN", "Other"), ("OTHER", "Other"),
        ("MULTIPLE RACE/ETHNICITY", "Other"), ("AMERICAN INDIAN/ALASKA NATIVE", "Other"),
        ("NATIVE HAWAIIAN OR OTHER PACIFIC ISLANDER", "Other"),
    ],
)
def test_default_race_map_spot_checks(raw, group):
    assert DEFAULT_RACE_MAP[raw] == group


def test_prefix_rule_holds_for_all_33_strings():
    prefix_group = {"WHITE": "White", "BLACK": "Black or African American", "ASIAN": "Asian", "HISPANIC": "Hispanic/Latino"}
    for raw in RACE_STRINGS_V2:
        expected = next((g for p, g in prefix_group.items() if raw.startswith(p)), None)
        if raw in ("UNKNOWN", "UNABLE TO OBTAIN", "PATIENT DECLINED TO ANSWER"):
            expected = "Unknown"
        assert DEFAULT_RACE_MAP[raw] == (expected or "Other"), raw


def test_race_map_override_merges_and_is_used(roots, tmp_path):
    cxr, iv = roots
    write_cxr(cxr, one_image_per_subject([10000001, 10000002]))
    write_admissions(iv, [(10000001, "2180-01-01", "PORTUGUESE"), (10000002, "2180-01-01", "WHITE")])
    _, images, _ = run_cohort(roots, tmp_path, race_map={"PORTUGUESE": "White"})
    assert images["race_group"].tolist() == ["White", "White"]
    assert images["race_raw"].tolist() == ["PORTUGUESE", "WHITE"]
    assert merged_race_map({"NEW VALUE": "Other"})["ASIAN"] == "Asian"


def test_race_map_override_to_unknown_group_is_rejected():
    with pytest.raises(ValueError, match=r"cohort\.race_map.*Martian"):
        merged_race_map({"PORTUGUESE": "Martian"})


def test_unmapped_race_string_names_file_row_and_string(roots, tmp_path):
    cxr, iv = roots
    write_cxr(cxr, one_image_per_subject([10000001, 10000002]))
    write_admissions(iv, [(10000001, "2180-01-01", "WHITE"), (10000002, "2180-01-01", "MARTIAN"),
                          (10000002, "2181-01-01", "MARTIAN")])
    with pytest.raises(ValueError) as err:
        run_cohort(roots, tmp_path)
    message = str(err.value)
    assert "admissions.csv.gz" in message and "'MARTIAN'" in message
    assert "[2, 3]" in message  # 1-based data rows
    assert "cohort.race_map" in message


# --------------------------------------------------------------------------------------------
# Race conflicts


CONFLICT_ADMISSIONS = [
    # subject 1: White first, then Black twice, plus an Unknown that must be ignored.
    (10000001, "2180-01-01 10:00:00", "WHITE - RUSSIAN"),
    (10000001, "2181-01-01 10:00:00", "BLACK/AFRICAN AMERICAN"),
    (10000001, "2179-06-01 10:00:00", "UNKNOWN"),
    (10000001, "2182-01-01 10:00:00", "BLACK/CAPE VERDEAN"),
    # subject 2: two White strings agree after mapping, Unknown ignored: no conflict.
    (10000002, "2180-01-01", "WHITE"),
    (10000002, "2181-01-01", "WHITE - OTHER EUROPEAN"),
    (10000002, "2179-01-01", "UNABLE TO OBTAIN"),
    # subject 3: only uninformative values -> Unknown.
    (10000003, "2180-01-01", "PATIENT DECLINED TO ANSWER"),
    # subject 4: one-one tie between Asian and Other; Other's admission is earlier.
    (10000004, "2181-01-01", "ASIAN"),
    (10000004, "2180-01-01", "OTHER"),
]


@pytest.fixture
def conflict_cohort(roots):
    cxr, iv = roots
    images = [(dicom(1), 10000001, 50000001, "PA"), (dicom(2), 10000001, 50000002, "AP"),
              *[(dicom(10 + s), 10000000 + s, 50000010 + s, "PA") for s in (2, 3, 4, 5)]]
    write_cxr(cxr, images)
    write_admissions(iv, CONFLICT_ADMISSIONS)  # subject 5 was never admitted
    return roots


def race_by_subject(images):
    return {s: (r, g) for s, r, g in images[["subject_id", "race_raw", "race_group"]].itertuples(index=False)}


def test_conflict_most_frequent(conflict_cohort, tmp_path):
    summary, images, excluded = run_cohort(conflict_cohort, tmp_path, race_conflict="most_frequent")
    races = race_by_subject(images)
    assert races[10000001] == ("BLACK/AFRICAN AMERICAN", "Black or African American")
    assert races[10000002] == ("WHITE", "White")
    assert races[10000003] == ("PATIENT DECLINED TO ANSWER", "Unknown")
    assert races[10000004] == ("OTHER", "Other")
    assert excluded.empty and summary["race_conflict_subjects"] == 2


def test_conflict_first(conflict_cohort, tmp_path):
    _, images, _ = run_cohort(conflict_cohort, tmp_path, race_conflict="first")
    races = race_by_subject(images)
    assert races[10000001] == ("WHITE - RUSSIAN", "White")  # the earlier UNKNOWN is ignored
    assert races[10000004] == ("OTHER", "Other")


def test_conflict_exclude(conflict_cohort, tmp_path):
    summary, images, excluded = run_cohort(conflict_cohort, tmp_path, race_conflict="exclude")
    assert set(images["subject_id"]) == {10000002, 10000003, 10000005}
    assert sorted(excluded["dicom_id"]) == sorted([dicom(1), dicom(2), dicom(14)])
    assert set(excluded["reason"]) == {"race_conflict"}
    assert summary["excluded"]["race_conflict"] == 3 and summary["race_conflict_subjects"] == 2


def test_subject_without_admission_is_unknown_with_null_raw(conflict_cohort, tmp_path):
    summary, images, _ = run_cohort(conflict_cohort, tmp_path)
    row = images[images["subject_id"] == 10000005].iloc[0]
    assert row["race_group"] == "Unknown" and pd.isna(row["race_raw"])
    assert summary["race_group"]["Unknown"] == 2


# --------------------------------------------------------------------------------------------
# Images, views, exclusions


def test_schema_order_paths_and_exclusion_reasons(roots, tmp_path):
    cxr, iv = roots
    images = [
        (dicom(9), 10000002, 50000003, "PA"),
        (dicom(1), 10000001, 50000001, "AP"),
        (dicom(2), 10000001, 50000001, "LATERAL"),   # view_not_kept
        (dicom(3), 10000001, 50000001, None),        # empty view: view_not_kept
        (dicom(4), 10000001, 50000002, "PA"),        # no_label_row
        (dicom(5), 10000001, 50000002, "LL"),        # view wins over no_label_row
    ]
    write_cxr(cxr, images, labels={50000001: {"Cardiomegaly": 1.0, "Edema": -1.0}, 50000002: None})
    write_admissions(iv, [(10000001, "2180-01-01", "ASIAN"), (10000002, "2180-01-01", "WHITE")], version="v2.0")
    summary, kept, excluded = run_cohort(roots, tmp_path)

    assert list(kept.columns) == IMAGE_COLUMNS
    assert list(excluded.columns) == EXCLUDED_COLUMNS
    assert kept["dicom_id"].tolist() == [dicom(1), dicom(9)]
    assert kept["image_index"].tolist() == [0, 1]
    assert kept["subject_id"].dtype == "int64" and kept["study_id"].dtype == "int64"
    assert kept["path"].iloc[0] == f"files/p10/p10000001/s50000001/{dicom(1)}.jpg"
    assert kept["view"].tolist() == ["AP", "PA"]
    assert kept.loc[0, "Cardiomegaly"] == 1.0 and kept.loc[0, "Edema"] == -1.0 and np.isnan(kept.loc[0, "Fracture"])
    reasons = dict(zip(excluded["dicom_id"], excluded["reason"]))
    assert reasons == {dicom(2): "view_not_kept", dicom(3): "view_not_kept", dicom(4): "no_label_row",
                       dicom(5): "view_not_kept"}
    assert summary["excluded"] == {"view_not_kept": 3, "no_label_row": 1, "no_split_row": 0, "race_conflict": 0}
    assert summary["n_kept"] == 2 and summary["race_group"]["Asian"] == 1


def test_views_parameter_keeps_laterals_when_asked(roots, tmp_path):
    cxr, iv = roots
    write_cxr(cxr, [(dicom(1), 10000001, 50000001, "PA"), (dicom(2), 10000001, 50000001, "LATERAL")])
    write_admissions(iv, [])
    _, kept, _ = run_cohort(roots, tmp_path, views=["LATERAL"])
    assert kept["view"].tolist() == ["LATERAL"]


def test_no_split_row_is_excluded_in_official_mode(roots, tmp_path):
    cxr, iv = roots
    write_cxr(cxr, one_image_per_subject([10000001, 10000002]))
    split = pd.read_csv(cxr / "mimic-cxr-2.0.0-split.csv.gz").iloc[:1]
    split.to_csv(cxr / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    write_admissions(iv, [])
    summary, kept, excluded = run_cohort(roots, tmp_path)
    assert kept["subject_id"].tolist() == [10000001]
    assert excluded["reason"].tolist() == ["no_split_row"]


def test_missing_image_file_is_reported(roots, tmp_path):
    cxr, iv = roots
    write_cxr(cxr, one_image_per_subject([10000001, 10000002]), jpgs=False)
    write_admissions(iv, [])
    with pytest.raises(FileNotFoundError, match=r"2 of 2 .*files/p10/p10000001"):
        run_cohort(roots, tmp_path)
    _, kept, _ = run_cohort(roots, tmp_path, check_images=False)
    assert len(kept) == 2


# --------------------------------------------------------------------------------------------
# Splits


def test_official_split_is_used(roots, tmp_path):
    cxr, iv = roots
    images = one_image_per_subject([10000001, 10000002, 10000003])
    write_cxr(cxr, images, split={dicom(0): "train", dicom(1): "validate", dicom(2): "test"})
    write_admissions(iv, [])
    summary, kept, _ = run_cohort(roots, tmp_path)
    assert kept["split"].tolist() == ["train", "validate", "test"]
    assert summary["split"] == {"train": 1, "validate": 1, "test": 1}


def test_official_split_with_leaking_subject_raises(roots, tmp_path):
    cxr, iv = roots
    images = [(dicom(1), 10000001, 50000001, "PA"), (dicom(2), 10000001, 50000002, "PA")]
    write_cxr(cxr, images, split={dicom(1): "train", dicom(2): "test"})
    write_admissions(iv, [])
    with pytest.raises(ValueError, match="10000001"):
        run_cohort(roots, tmp_path)


@pytest.fixture
def many_subjects(roots):
    cxr, iv = roots
    subjects = [10000000 + i for i in range(200)]
    # Three images (two studies) per subject, so a leak would be visible.
    images = [(dicom(3 * i + k), s, 50000000 + 2 * i + (k > 0), "AP") for i, s in enumerate(subjects) for k in range(3)]
    write_cxr(cxr, images, split={d: "train" for d, *_ in images}, jpgs=False)
    write_admissions(iv, [])
    return roots


def test_random_split_is_patient_level_deterministic_and_respects_fractions(many_subjects, tmp_path):
    kwargs = dict(split="random", split_fractions=(0.6, 0.1, 0.3), check_images=False)
    _, first, _ = run_cohort(many_subjects, tmp_path, split_seed=1, **kwargs)
    assert (first.groupby("subject_id")["split"].nunique() == 1).all()
    per_subject = first.drop_duplicates("subject_id")["split"].value_counts()
    assert per_subject.to_dict() == {"train": 120, "test": 60, "validate": 20}

    _, again, _ = run_cohort(many_subjects, tmp_path, split_seed=1, **kwargs)
    assert again["split"].tolist() == first["split"].tolist()
    _, other, _ = run_cohort(many_subjects, tmp_path, split_seed=2, **kwargs)
    assert other["split"].tolist() != first["split"].tolist()


def test_random_split_fractions_must_sum_to_one(many_subjects, tmp_path):
    with pytest.raises(ValueError, match=r"cohort\.split_fractions"):
        run_cohort(many_subjects, tmp_path, split="random", split_fractions=(0.6, 0.1, 0.2))


# --------------------------------------------------------------------------------------------
# Errors and layouts


def test_missing_metadata_names_config_key(roots, tmp_path):
    cxr, iv = roots
    write_admissions(iv, [])
    with pytest.raises(FileNotFoundError, match=r"metadata\.csv\.gz.*data\.mimic_cxr_jpg"):
        run_cohort(roots, tmp_path)


def test_missing_admissions_names_config_key(roots, tmp_path):
    cxr, _ = roots
    write_cxr(cxr, one_image_per_subject([10000001]))
    with pytest.raises(FileNotFoundError, match=r"admissions\.csv\.gz.*data\.mimic_iv"):
        run_cohort(roots, tmp_path)


def test_missing_columns_name_file_and_columns(roots, tmp_path):
    cxr, iv = roots
    write_cxr(cxr, one_image_per_subject([10000001]))
    write_admissions(iv, [])
    labels = pd.read_csv(cxr / "mimic-cxr-2.0.0-chexpert.csv.gz").drop(columns=["Edema"])
    labels.to_csv(cxr / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    with pytest.raises(ValueError, match=r"chexpert\.csv\.gz.*'Edema'"):
        run_cohort(roots, tmp_path)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"race_conflict": "vote"}, "race_conflict"), ({"split": "kfold"}, "split"), ({"labeler": "chexbert"}, "labeler")],
)
def test_bad_enum_values_name_the_parameter(roots, tmp_path, kwargs, name):
    cxr, iv = roots
    write_cxr(cxr, one_image_per_subject([10000001]))
    write_admissions(iv, [])
    with pytest.raises(ValueError, match=name):
        run_cohort(roots, tmp_path, **kwargs)


def test_v1_ethnicity_layout(roots, tmp_path):
    cxr, iv = roots
    write_cxr(cxr, one_image_per_subject([10000001, 10000002]))
    write_admissions(iv, [(10000001, "2180-01-01", "HISPANIC/LATINO"), (10000002, "2180-01-01", "BLACK/AFRICAN AMERICAN")],
                     version="v1.0")
    _, kept, _ = run_cohort(roots, tmp_path)
    assert kept["race_group"].tolist() == ["Hispanic/Latino", "Black or African American"]


def test_negbio_labeler(roots, tmp_path):
    cxr, iv = roots
    write_cxr(cxr, one_image_per_subject([10000001]), labels={50000000: {"Edema": 1.0}}, labeler="negbio")
    write_admissions(iv, [])
    _, kept, _ = run_cohort(roots, tmp_path, labeler="negbio")
    assert kept["Edema"].tolist() == [1.0]


# --------------------------------------------------------------------------------------------
# Tasks


@pytest.fixture
def images_parquet(roots, tmp_path):
    cxr, iv = roots
    values = [1.0, 0.0, -1.0, None, -1.0, 1.0]
    images = one_image_per_subject([10000001 + i for i in range(len(values))])
    split = dict(zip([d for d, *_ in images], ["train", "train", "train", "validate", "test", "test"]))
    write_cxr(cxr, images, labels={50000000 + i: {"Cardiomegaly": v} for i, v in enumerate(values)}, split=split)
    write_admissions(iv, [])
    run_cohort(roots, tmp_path)
    return tmp_path / "out/table.parquet"


@pytest.mark.parametrize(
    "policy, expected",
    [("zeros", [1, 0, 0, 0, 0, 1]), ("ones", [1, 0, 1, 0, 1, 1]), ("ignore", [1, 0, 0, 1])],
)
def test_uncertainty_policies(images_parquet, tmp_path, policy, expected):
    task_out, excluded_out = tmp_path / "task.parquet", tmp_path / "task_excluded.parquet"
    summary = build_task(images_parquet, "Cardiomegaly", task_out, excluded_out, uncertain=policy)
    task, excluded = pd.read_parquet(task_out), pd.read_parquet(excluded_out)
    assert list(task.columns) == TASK_COLUMNS
    assert task["y"].dtype == "int8" and task["y"].tolist() == expected
    assert task["image_index"].is_monotonic_increasing
    assert list(excluded.columns) == EXCLUDED_COLUMNS
    if policy == "ignore":
        assert excluded["subject_id"].tolist() == [10000003, 10000005]
        assert set(excluded["reason"]) == {"uncertain_label_ignored"}
        assert summary["n"] == {"train": 2, "validate": 1, "test": 1}
    else:
        assert excluded.empty
    assert summary["excluded"] == len(excluded)
    assert summary["positives"]["test"] == int(task.loc[task["split"] == "test", "y"].sum())


def test_unknown_label_lists_valid_labels(images_parquet, tmp_path):
    with pytest.raises(ValueError, match="Pleural Effusion"):
        build_task(images_parquet, "Cardiomegally", tmp_path / "t.parquet", tmp_path / "e.parquet")


def test_bad_uncertain_policy(images_parquet, tmp_path):
    with pytest.raises(ValueError, match="uncertain"):
        build_task(images_parquet, "Cardiomegaly", tmp_path / "t.parquet", tmp_path / "e.parquet", uncertain="half")


def test_group_members_partition_the_cohort(roots, tmp_path):
    cxr, iv = roots
    write_cxr(cxr, one_image_per_subject([10000001, 10000002, 10000003]))
    write_admissions(iv, [(10000001, "2180-01-01", "ASIAN"), (10000002, "2180-01-01", "WHITE")])
    _, kept, _ = run_cohort(roots, tmp_path)
    members = {}
    for group in RACE_GROUPS:
        build_group_members(tmp_path / "out/images.parquet", group, tmp_path / f"{group}.parquet".replace("/", "_"))
        members[group] = pd.read_parquet(tmp_path / f"{group}.parquet".replace("/", "_"))["image_index"].tolist()
    assert members["Asian"] == [0] and members["White"] == [1] and members["Unknown"] == [2]
    assert sorted(sum(members.values(), [])) == kept["image_index"].tolist()


def test_tasks_and_image_table_carry_no_race(roots, tmp_path):
    """Models and TRAK features read these, so a race remap must not change them."""
    cxr, iv = roots
    write_cxr(cxr, one_image_per_subject([10000001, 10000002]))
    write_admissions(iv, [(10000001, "2180-01-01", "ASIAN")])
    run_cohort(roots, tmp_path)
    first = (tmp_path / "out/table.parquet").read_bytes()
    run_cohort(roots, tmp_path, race_map={"ASIAN": "Other"})
    assert (tmp_path / "out/table.parquet").read_bytes() == first
    assert "race_group" not in TASK_COLUMNS
