"""End to end: the whole DAG with the real snakemake CLI on a tiny demo config."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import yaml

from d3mflow.names import RACE_GROUPS, label_slug
from conftest import REPO, snakemake

pytestmark = pytest.mark.e2e

CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_default_config_plans_every_step(tmp_path):
    proc = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config" / "config.yaml"))
    out = proc.stdout + proc.stderr
    for rule in ("demo_cohort", "race", "image_table", "cohort", "group_members", "image_cache", "train_base", "trak_model", "trak_features",
                 "group_attribution", "alignment", "selection", "auto_d3m", "training_rows", "finetune", "predict_test",
                 "metrics", "compare", "report"):
        assert rule in out, f"rule {rule} missing from the plan"


@pytest.mark.parametrize(
    "override, key",
    [
        ("model={'arch': 'vgg16'}", "arch"),
        ("defaults={'d3m': {'beta': -1}}", "beta"),
        ("labels=['Cardiomegally']", "Cardiomegally"),
    ],
)
def test_bad_config_value_names_the_key(tmp_path, override, key):
    proc = snakemake(tmp_path, "-n", "--config", override, check=False)
    assert proc.returncode != 0
    assert key in proc.stdout + proc.stderr


def test_misspelled_label_is_named_with_the_choices(tmp_path):
    proc = snakemake(tmp_path, "-n", "--config", "labels=['Cardiomegaly', 'Cardiomegally']", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "config key labels: unknown label 'Cardiomegally'" in out
    assert "'Pleural Effusion'" in out, "the message lists the valid labels"


def test_num_to_discard_is_required(tmp_path):
    proc = snakemake(tmp_path, "-n", "--config",
                     "overrides={'Cardiomegaly': {'d3m': {'selection': 'num_to_discard'}}}", check=False)
    assert proc.returncode != 0
    assert "num_to_discard" in proc.stdout + proc.stderr


def test_report_has_every_group_and_equal_n(tiny_run):
    acc = pd.read_csv(tiny_run / "results" / "report" / "accuracy_by_group.csv")
    assert set(acc["method"]) == set(CONFIG["evaluation"]["methods"])
    for method, df in acc.groupby("method"):
        assert set(df["group"]) == {*RACE_GROUPS, "Overall"}
    n = acc.pivot_table(index="group", columns="method", values="n")
    assert n.nunique(axis=1).eq(1).all(), "every method must be scored on the same test images"
    assert (n.drop(index="Overall") > 0).all().all(), "tiny cohort should have test images in every group"
    assert n.loc["Overall", "erm"] == n.drop(index="Overall")["erm"].sum()


def test_wga_is_the_minimum_group_accuracy(tiny_run):
    acc = pd.read_csv(tiny_run / "results" / "report" / "accuracy_by_group.csv")
    wga = pd.read_csv(tiny_run / "results" / "report" / "wga.csv")
    for row in wga.itertuples():
        groups = acc[(acc["label"] == row.label) & (acc["method"] == row.method) & (acc["group"] != "Overall")]
        assert row.wga == pytest.approx(groups["accuracy"].min())
        assert row.worst_group == groups.loc[groups["accuracy"].idxmin(), "group"]


def test_report_markdown_and_detection(tiny_run):
    md = (tiny_run / "results" / "report" / "report.md").read_text()
    assert "## Cardiomegaly" in md and "Worst-group accuracy" in md
    for group in RACE_GROUPS:
        assert group in md
    detection = pd.read_csv(tiny_run / "results" / "report" / "detection.csv")
    assert "flipped_label" in set(detection["kind"])
    assert detection["auroc_neg_alignment"].between(0, 1).all()


def test_every_rule_wrote_a_benchmark_and_log(tiny_run):
    results = tiny_run / "results"
    for rule in ("demo_cohort", "race", "image_table", "cohort", "group_members", "image_cache", "train_base", "trak_features", "group_attribution",
                 "alignment", "selection", "auto_d3m", "training_rows", "finetune", "predict_test", "metrics", "compare",
                 "report"):
        assert list((results / "benchmarks").glob(f"{rule}*")), rule
        assert list((results / "logs").glob(f"{rule}*")), rule


def test_rerun_has_nothing_to_do(tiny_run):
    proc = snakemake(tiny_run, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_auto_labels_run_the_dag_on_the_top_k_of_the_ranking(tmp_path):
    """labels: auto trains a base model per label, ranks them in the rank_labels checkpoint,
    and the plan after it holds the top label's jobs only."""
    auto = ["--config", "labels=auto", "auto_labels_k=1"]
    snakemake(tmp_path, *auto, "--cores", "2", "--", "results/labels/ranking.csv")
    ranking = pd.read_csv(tmp_path / "results" / "labels" / "ranking.csv")
    assert len(ranking) == 14 and ranking["rank"].tolist() == list(range(1, 15))
    assert ranking["gap"].dropna().is_monotonic_decreasing
    top = label_slug(ranking["label"].iloc[0])
    plan = snakemake(tmp_path, *auto, "-n")
    out = plan.stdout + plan.stderr
    assert set(re.findall(r"results/models/(\w+)/s\d+/erm\.pt", out)) == {top}
