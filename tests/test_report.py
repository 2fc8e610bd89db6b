"""The report: its table helpers on hand-made inputs, and the rendered `snakemake --report` HTML
of a complete tiny run (every label and method, every image it references, no X-ray images
when report.include_images is false, no subject ids in any report output)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY, snakemake
from d3mflow.examples import harmful_training_images, target_rows_for_test, top_images
from d3mflow.report import (METHOD_TITLES, check_no_subject_ids, markdown_table, paired_view, precision_at_k,
                            summary_paragraph)


def _comparison(d3m_vs_erm: tuple[float, float, float]) -> pd.DataFrame:
    """A one-label comparison table with WGA rows for erm and d3m and D3M's paired difference."""
    diff, low, high = d3m_vs_erm
    rows = []
    for method, mean in (("erm", 0.70), ("d3m", 0.70 + diff)):
        own = (0.0, 0.0, 0.0) if method == "erm" else (diff, low, high)
        rows.append({"label": "Cardiomegaly", "method": method, "group": "Overall", "metric": "wga", "n": 100,
                     "mean": mean, "ci_low": mean - 0.05, "ci_high": mean + 0.05,
                     "diff_erm": own[0], "diff_erm_low": own[1], "diff_erm_high": own[2],
                     "diff_random": np.nan, "diff_random_low": np.nan, "diff_random_high": np.nan})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("interval, verdict", [
    ((0.05, 0.01, 0.09), "D3M beat ERM beyond the 95% CI"),
    ((0.05, -0.01, 0.09), "D3M did not beat ERM beyond the 95% CI"),
    ((-0.05, -0.09, -0.01), "D3M was worse than ERM beyond the 95% CI"),
])
def test_summary_states_the_verdict_from_the_paired_ci(interval, verdict):
    comparison = _comparison(interval)
    text = summary_paragraph("Cardiomegaly", comparison, paired_view(comparison), pd.DataFrame(columns=["label"]), 3)
    assert verdict in text
    assert "ERM 70.0 [65.0, 75.0]" in text and "mean of 3 seed(s)" in text
    assert "Random" not in text, "no random control was run, so no clause about it"


def test_paired_view_drops_the_reference_rows_and_missing_references():
    paired = paired_view(_comparison((0.05, 0.01, 0.09)))
    assert paired[["method", "reference"]].values.tolist() == [["d3m", "erm"]]
    assert paired.iloc[0][["diff", "ci_low", "ci_high"]].tolist() == pytest.approx([0.05, 0.01, 0.09])


def test_precision_at_k_counts_planted_among_the_most_negative():
    planted = np.array([True, False, True, False, False])
    scores = np.array([-3.0, -2.0, -1.0, 0.5, 1.0])
    assert precision_at_k(planted, scores, 1) == 1.0
    assert precision_at_k(planted, scores, 2) == 0.5
    assert precision_at_k(planted, scores, 3) == pytest.approx(2 / 3)


def test_test_target_rows_follow_the_validation_rows():
    task = pd.DataFrame({"image_index": [10, 11, 12, 13, 14, 15], "split": ["train", "test", "validate", "test", "validate", "train"]})
    assert target_rows_for_test(task, [13, 11]).tolist() == [3, 2]
    with pytest.raises(ValueError, match="not test images"):
        target_rows_for_test(task, [12])


def test_top_images_ranks_each_group_both_ways(tmp_path):
    train = pd.DataFrame({"image_index": [0, 1, 2, 3], "dicom_id": list("abcd"), "y": [0, 1, 0, 1], "race_group": ["White"] * 4})
    tau = tmp_path / "white.parquet"
    pd.DataFrame({"image_index": [0, 1, 2, 3], "dicom_id": list("abcd"), "tau": [0.1, -2.0, 3.0, 0.0]}).to_parquet(tau)
    table = top_images({"White": tau}, train, k=2)
    assert table.loc[table["direction"] == "helpful", "dicom_id"].tolist() == ["c", "a"]
    assert table.loc[table["direction"] == "harmful", "dicom_id"].tolist() == ["b", "d"]


def test_harmful_training_images_are_the_most_negative_per_target():
    train = pd.DataFrame({"image_index": [0, 1, 2], "dicom_id": list("abc"), "y": [0, 1, 1], "race_group": ["Asian"] * 3})
    targets = pd.DataFrame({"image_index": [7, 8], "dicom_id": ["t7", "t8"]})
    scores = np.array([[0.5, -1.0], [-0.2, 2.0], [-0.9, 0.1]])
    out = harmful_training_images(scores, train, targets, k=2)
    assert out.loc[out["target_dicom_id"] == "t7", "dicom_id"].tolist() == ["c", "b"]
    assert out.loc[out["target_dicom_id"] == "t8", "dicom_id"].tolist() == ["a", "c"]


def test_markdown_table_and_subject_id_guard():
    assert markdown_table(pd.DataFrame({"a": [1], "b": ["x"]})) == "| a | b |\n|---|---|\n| 1 | x |"
    with pytest.raises(ValueError, match="subject_id"):
        check_no_subject_ids({"errors": pd.DataFrame(columns=["dicom_id", "subject_id"])})


# --- the rendered report of a complete tiny run -----------------------------------------------

def _html_report(workdir: Path, *config: str) -> str:
    out = workdir / "results" / "report" / "report.html"
    snakemake(workdir, "--report", str(out), *config)
    return out.read_text()


def _report_results(html: str) -> dict:
    """The `results` object snakemake embeds in its report: path -> entry with data_uri."""
    match = re.search(r"var results = (\{.*?\});\n", html, re.S)
    assert match, "snakemake report without its results table"
    return json.loads(match.group(1))


def _report_files(workdir: Path) -> list[Path]:
    return [p for p in (workdir / "results" / "report").rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def html_report(tiny_run) -> str:
    return _html_report(tiny_run)


@pytest.mark.e2e
def test_html_report_has_every_label_method_and_image(tiny_run, html_report):
    summary = (tiny_run / "results" / "report" / "summary.html").read_text()
    methods = set(pd.read_csv(tiny_run / "results" / "report" / "comparison.csv")["method"])
    for method in methods:
        assert METHOD_TITLES.get(method, method) in summary
    assert "Cardiomegaly" in summary and "Cardiomegaly" in html_report
    assert "d3mflow-summary" in html_report, "the summary is on the landing page"
    results = _report_results(html_report)
    pngs = [p for p in _report_files(tiny_run) if p.suffix == ".png"]
    assert {p.name for p in pngs} >= {"wga.png", "top_images.png", "errors.png"}
    for png in pngs:
        entry = next((e for path, e in results.items() if path.endswith(str(png.relative_to(tiny_run)))), None)
        assert entry is not None, f"{png} missing from the HTML report"
        assert entry["data_uri"].startswith("data:image/png;") and ";base64," in entry["data_uri"]
    markdown = tiny_run / "results" / "report" / "report.md"
    for ref in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown.read_text()):
        assert (markdown.parent / ref).is_file(), f"report.md references missing {ref}"
    assert summary.count("data:image/png") == len(re.findall(r"!\[", markdown.read_text())) >= 3


@pytest.mark.e2e
def test_no_subject_ids_in_any_report_output(tiny_run, html_report):
    subjects = pd.read_parquet(tiny_run / "results" / "cohort" / "images.parquet", columns=["subject_id"])["subject_id"]
    ids = {str(s) for s in subjects.unique()}
    for path in [*_report_files(tiny_run)]:
        if path.suffix == ".csv":
            assert not set(pd.read_csv(path).columns) & {"subject_id", "study_id"}, path
        if path.suffix in (".csv", ".md", ".html"):
            text = path.read_text()
            leaked = [s for s in ids if re.search(rf"(?<![0-9A-Za-z]){s}(?![0-9A-Za-z])", text)]
            assert not leaked, f"{path} prints subject ids {leaked[:3]}"


@pytest.mark.e2e
def test_include_images_false_renders_no_xray_images(tiny_run, html_report, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir, symlinks=True, ignore=shutil.ignore_patterns("report.html", "*.png"))
    no_images = tmp_path / "no_images.yaml"
    no_images.write_text("report: {include_images: false, top_k: 6, error_analysis_k: 4, precision_at_k: [10, 50]}\n")
    config = ("--configfile", str(TINY), str(no_images))
    snakemake(workdir, "--cores", "2", *config)
    html = _html_report(workdir, *config)
    assert [p.name for p in _report_files(workdir) if p.suffix == ".png"] == ["wga.png"]
    images = [path for path, e in _report_results(html).items() if e["mime_type"].startswith("image/")]
    assert [Path(p).name for p in images] == ["wga.png"]
    summary = (workdir / "results" / "report" / "summary.html").read_text()
    assert summary.count("data:image/png") == 1, "only the WGA chart, no X-ray grid"
