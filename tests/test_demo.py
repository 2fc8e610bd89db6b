"""The synthetic cohort must look exactly like a MIMIC download (layout, ids, column orders,
messiness) and plant its biases only where documented."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from PIL import Image

from d3mflow.demo import (
    ADMISSION_COLUMNS,
    LABEL_COLUMNS,
    METADATA_COLUMNS,
    PATIENT_COLUMNS,
    RACE_STRINGS,
    SPLIT_COLUMNS,
    generate_demo_cohort,
)

CSVS = ("metadata", "chexpert", "negbio", "split")


def _generate(root, seed=0, n_subjects=120, **kwargs):
    summary = generate_demo_cohort(root / "cxr", root / "iv", root / "truth.parquet", seed=seed,
                                   n_subjects=n_subjects, image_px=64, **kwargs)
    return summary


def _read(root, name):
    return pd.read_csv(root / "cxr" / f"mimic-cxr-2.0.0-{name}.csv.gz", keep_default_na=False, na_values=[""])


def _group_of(race: str) -> str:
    for group, strings in RACE_STRINGS.items():
        if race in strings:
            return group
    raise AssertionError(race)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    _generate(root)
    return root


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """Large enough for every race string and every kind of messiness to occur."""
    root = tmp_path_factory.mktemp("medium")
    _generate(root, n_subjects=600)
    return root


def test_column_orders_match_mimic(small):
    assert tuple(_read(small, "metadata").columns) == METADATA_COLUMNS
    assert tuple(_read(small, "chexpert").columns) == LABEL_COLUMNS
    assert tuple(_read(small, "negbio").columns) == LABEL_COLUMNS
    assert tuple(_read(small, "split").columns) == SPLIT_COLUMNS
    assert tuple(pd.read_csv(small / "iv/hosp/patients.csv.gz").columns) == PATIENT_COLUMNS
    assert tuple(pd.read_csv(small / "iv/hosp/admissions.csv.gz").columns) == ADMISSION_COLUMNS
    assert len(ADMISSION_COLUMNS) == 16
    assert LABEL_COLUMNS[2:4] == ("Atelectasis", "Cardiomegaly") and LABEL_COLUMNS[-1] == "Support Devices"


def test_ids_and_path_layout(small):
    meta = _read(small, "metadata")
    assert meta["dicom_id"].is_unique
    assert meta["dicom_id"].str.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}").all()
    assert meta["subject_id"].astype(str).str.fullmatch(r"1\d{7}").all()
    assert meta["study_id"].astype(str).str.fullmatch(r"5\d{7}").all()
    assert meta.groupby("study_id")["subject_id"].nunique().max() == 1
    listed = (small / "cxr/IMAGE_FILENAMES").read_text().splitlines()
    expected = [f"files/p{str(s)[:2]}/p{s}/s{t}/{d}.jpg" for d, s, t in meta[["dicom_id", "subject_id", "study_id"]].values]
    assert sorted(listed) == sorted(expected)
    on_disk = sorted(str(p.relative_to(small / "cxr")) for p in (small / "cxr/files").rglob("*.jpg"))
    assert on_disk == sorted(expected)
    image = Image.open(small / "cxr" / listed[0])
    assert image.mode == "L" and image.size == (64, 64)


def test_metadata_formats(small):
    meta = _read(small, "metadata")
    assert meta["StudyDate"].between(21000101, 22001231).all()
    assert meta["StudyTime"].dtype == float and (meta["StudyTime"] < 240000).all()
    assert {"AP", "PA", "LATERAL", "LL"} <= set(meta["ViewPosition"].dropna())
    assert meta["ViewPosition"].isna().any()
    assert {"postero-anterior", "antero-posterior", "lateral"} <= set(meta["ViewCodeSequence_CodeMeaning"].dropna())
    assert meta.groupby("study_id").size().max() > 1


def test_labels_have_mimic_values_and_missing_rows(small):
    meta, chexpert, negbio = _read(small, "metadata"), _read(small, "chexpert"), _read(small, "negbio")
    values = chexpert.iloc[:, 2:]
    assert set(np.unique(values.stack().dropna().to_numpy())) == {-1.0, 0.0, 1.0}
    assert values.isna().any().any()
    assert chexpert["study_id"].is_unique
    assert set(chexpert["study_id"]) < set(meta["study_id"])
    assert set(negbio["study_id"]) == set(chexpert["study_id"])
    assert not negbio.equals(chexpert)
    others = values.drop(columns=["No Finding", "Support Devices"])
    assert not (values["No Finding"].eq(1.0) & others.eq(1.0).any(axis=1)).any()
    assert values["No Finding"].eq(1.0).any()


def test_split_is_patient_level(small):
    split = _read(small, "split")
    assert set(split["split"]) == {"train", "validate", "test"}
    assert split.groupby("subject_id")["split"].nunique().max() == 1
    shares = split.drop_duplicates("subject_id")["split"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.6, abs=0.08)


def test_race_messiness(medium):
    admissions = pd.read_csv(medium / "iv/hosp/admissions.csv.gz")
    patients = pd.read_csv(medium / "iv/hosp/patients.csv.gz")
    every_string = {s for strings in RACE_STRINGS.values() for s in strings}
    assert len(every_string) == 33
    assert set(admissions["race"]) == every_string
    assert admissions["hadm_id"].is_unique
    assert admissions.groupby("subject_id").size().max() > 1
    assert admissions.groupby("subject_id")["race"].nunique().max() > 1
    assert set(patients["subject_id"]) > set(admissions["subject_id"])
    assert (pd.to_datetime(admissions["dischtime"]) > pd.to_datetime(admissions["admittime"])).all()


def test_ground_truth_is_where_documented(medium):
    truth = pd.read_parquet(medium / "truth.parquet")
    assert list(truth.columns) == ["dicom_id", "subject_id", "study_id", "label", "kind", "split"]
    assert set(truth["split"]) == {"train"}
    admissions = pd.read_csv(medium / "iv/hosp/admissions.csv.gz").sort_values("admittime")
    group = admissions.groupby("subject_id")["race"].first().map(_group_of)  # earliest admission
    flipped = truth[truth["kind"] == "flipped_label"]
    shortcut = truth[truth["kind"] == "shortcut"]
    assert set(flipped["subject_id"].map(group)) == {"Black or African American"}
    assert set(shortcut["subject_id"].map(group)) == {"White"}
    assert {"Cardiomegaly", "Pleural Effusion"} <= set(flipped["label"])
    chexpert = _read(medium, "chexpert").set_index("study_id")
    for label in ("Cardiomegaly", "Pleural Effusion"):
        studies = flipped.loc[flipped["label"] == label, "study_id"]
        assert (chexpert.loc[studies, label] == 0.0).all()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        _generate(tmp_path / name, seed=seed, n_subjects=40)
    for csv in CSVS:
        path = f"cxr/mimic-cxr-2.0.0-{csv}.csv.gz"
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()
        assert (tmp_path / "a" / path).read_bytes() != (tmp_path / "c" / path).read_bytes()
    for path in ("iv/hosp/patients.csv.gz", "iv/hosp/admissions.csv.gz", "cxr/IMAGE_FILENAMES"):
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()
    first = (tmp_path / "a/cxr/IMAGE_FILENAMES").read_text().splitlines()[0]
    assert (tmp_path / "a/cxr" / first).read_bytes() == (tmp_path / "b/cxr" / first).read_bytes()


def test_rejects_arguments_that_would_plant_nothing(tmp_path):
    with pytest.raises(ValueError, match="No Finding"):
        _generate(tmp_path, harm_labels=("No Finding",))
    with pytest.raises(ValueError, match="race group"):
        _generate(tmp_path, shortcut_group="Martian")
    with pytest.raises(ValueError, match="split_fractions"):
        _generate(tmp_path, split_fractions=(0.5, 0.1, 0.1))
