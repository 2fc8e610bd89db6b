"""Metrics per race group against hand-computed values; the validation threshold; the paired
bootstrap (vectorised metrics equal scikit-learn's, CI coverage, pairing); and the label
ranking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from d3mflow.evaluation import (
    ONE_CLASS_NOTE,
    OVERALL,
    binary_metrics,
    choose_threshold,
    compare_step,
    expected_calibration_error,
    group_metrics,
    metrics_step,
    paired_bootstrap,
    rank_labels,
    replicate_metrics,
    stratified_resamples,
    top_labels,
    worst_group,
)
from d3mflow.names import RACE_GROUPS

def test_binary_metrics_hand_computed():
    y = np.array([1, 1, 1, 0, 0])
    p = np.array([0.9, 0.6, 0.2, 0.7, 0.1])
    m = binary_metrics(y, p, threshold=0.5, ece_bins=2)
    # pred = [1, 1, 0, 1, 0]: TP 2, FN 1, FP 1, TN 1.
    assert (m["n"], m["n_pos"], m["correct"]) == (5, 3, 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["tpr"] == pytest.approx(2 / 3) and m["fnr"] == pytest.approx(1 / 3)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # Positive-negative pairs ranked right: 0.9 beats both, 0.6 beats 0.1 only, 0.2 beats 0.1 only.
    assert m["auroc"] == pytest.approx(4 / 6)
    # Bins [0, .5): p 0.2, 0.1 (y 1, 0); [.5, 1]: p 0.9, 0.6, 0.7 (y 1, 1, 0).
    assert m["ece"] == pytest.approx((2 * abs(0.5 - 0.15) + 3 * abs(2 / 3 - 2.2 / 3)) / 5)
    assert m["note"] == ""


def test_one_class_group_has_nan_auroc_with_a_note():
    m = binary_metrics(np.array([0, 0, 0]), np.array([0.2, 0.7, 0.4]), threshold=0.5)
    assert np.isnan(m["auroc"]) and m["note"] == ONE_CLASS_NOTE
    assert np.isnan(m["tpr"]) and np.isnan(m["fnr"])  # no positives to detect
    assert m["accuracy"] == pytest.approx(2 / 3) and m["balanced_accuracy"] == pytest.approx(2 / 3)


def test_ece_is_zero_when_calibrated_and_counts_the_top_bin():
    assert expected_calibration_error(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.5, 0.5]), bins=10) == 0
    assert expected_calibration_error(np.array([0]), np.array([1.0]), bins=10) == pytest.approx(1.0)


def test_threshold_maximises_balanced_accuracy_on_validation():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.3, 0.35, 0.4, 0.9])
    assert choose_threshold(y, p) == pytest.approx(0.4)  # separates perfectly, unlike 0.5
    assert choose_threshold(np.array([1, 1]), np.array([0.2, 0.3])) == 0.5  # one class: the default


def _test_frame():
    return pd.DataFrame({
        "y":          [1, 0, 1, 1, 0, 0, 0, 1],
        "p":          [0.9, 0.2, 0.3, 0.8, 0.6, 0.1, 0.7, 0.4],
        "race_group": ["White", "White", "White", "Asian", "Asian", "Other", "Other", "White"],
    })


def test_group_metrics_hand_computed():
    metrics = group_metrics(_test_frame(), threshold=0.5).set_index("group")
    assert list(metrics.index) == [*RACE_GROUPS, OVERALL]
    # White: y 1,0,1,1 with p .9,.2,.3,.4 -> pred 1,0,0,0: accuracy 2/4, TPR 1/3.
    assert metrics.loc["White", "n"] == 4 and metrics.loc["White", "accuracy"] == pytest.approx(0.5)
    assert metrics.loc["White", "fnr"] == pytest.approx(2 / 3)
    # Asian: y 1,0 -> pred 1,1; Other: y 0,0 -> pred 0,1 (one class only).
    assert metrics.loc["Asian", "accuracy"] == pytest.approx(0.5) and metrics.loc["Asian", "fnr"] == 0
    assert np.isnan(metrics.loc["Other", "auroc"]) and metrics.loc["Other", "note"] == ONE_CLASS_NOTE
    assert metrics.loc["Unknown", "n"] == 0 and np.isnan(metrics.loc["Unknown", "accuracy"])
    # Under-diagnosis gap to the best group (Asian, FNR 0); Overall holds the largest gap.
    assert metrics.loc["White", "fnr_gap"] == pytest.approx(2 / 3) and metrics.loc["Asian", "fnr_gap"] == 0
    assert metrics.loc[OVERALL, "fnr_gap"] == pytest.approx(2 / 3)
    assert metrics.loc[OVERALL, "correct"] == 4 and (metrics["threshold"] == 0.5).all()
    # Ties between the worst groups go to the first; groups without images are never the worst.
    assert metrics.loc[OVERALL, "worst_group"] == "Asian" and metrics.loc[OVERALL, "wga"] == pytest.approx(0.5)
    assert metrics.loc[OVERALL, "gap"] == 0
    assert worst_group(metrics.reset_index()) == ("Asian", 0.5)


def test_worst_group_needs_a_group_with_images():
    empty = pd.DataFrame({"group": [*RACE_GROUPS, OVERALL], "n": 0, "accuracy": np.nan})
    with pytest.raises(ValueError, match="no race group has test images"):
        worst_group(empty)


def test_metrics_step_uses_the_validation_threshold_and_race_from_the_cohort(tmp_path):
    rng = np.random.default_rng(0)
    n = 30
    pred = pd.DataFrame({"image_index": np.arange(n), "dicom_id": [f"d{i}" for i in range(n)],
                         "split": np.where(np.arange(n) < 12, "validate", "test"),
                         "y": rng.integers(0, 2, n), "p": rng.random(n)})
    pred.to_parquet(tmp_path / "pred.parquet")
    pd.DataFrame({"image_index": np.arange(n), "race_group": np.array(["White", "Asian"])[np.arange(n) % 2]}
                 ).to_parquet(tmp_path / "cohort.parquet")
    metrics_step(tmp_path / "pred.parquet", tmp_path / "cohort.parquet", tmp_path / "acc.csv")
    metrics = pd.read_csv(tmp_path / "acc.csv").set_index("group")
    val, test = pred[pred["split"] == "validate"], pred[pred["split"] == "test"]
    threshold = choose_threshold(val["y"].to_numpy(), val["p"].to_numpy())
    white = test[test["image_index"] % 2 == 0]
    assert metrics.loc[OVERALL, "n"] == len(test) and metrics.loc["White", "n"] == len(white)
    assert metrics.loc["White", "threshold"] == pytest.approx(threshold)
    assert metrics.loc["White", "accuracy"] == pytest.approx(((white["p"] >= threshold) == white["y"]).mean())
    pd.DataFrame({"image_index": [0], "race_group": ["White"]}).to_parquet(tmp_path / "partial.parquet")
    with pytest.raises(ValueError, match="not in the cohort"):
        metrics_step(tmp_path / "pred.parquet", tmp_path / "partial.parquet", tmp_path / "acc2.csv")


# --- bootstrap ------------------------------------------------------------------------------

def test_vectorised_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(20, 40))
    y[3] = 0  # one class only
    p = np.round(rng.random((20, 40)), 1)  # ties in p
    fast = replicate_metrics(y, p, threshold=0.45, ece_bins=7)
    for b in range(20):
        slow = binary_metrics(y[b], p[b], threshold=0.45, ece_bins=7)
        for metric, values in fast.items():
            np.testing.assert_allclose(values[b], slow[metric], err_msg=f"{metric} row {b}", equal_nan=True)


def test_stratified_resamples_stay_within_groups():
    groups = np.array(["a", "b", "a", "c", "b", "a"])
    index = stratified_resamples(groups, 50, np.random.default_rng(0))
    assert index.shape == (50, 6)
    assert (groups[index] == groups).all()


def test_bootstrap_ci_covers_the_truth_about_95_percent():
    """Repeated synthetic test sets from a known model: the 95% CI of a group's accuracy and of
    WGA should contain the true value in about 95% of them."""
    rng = np.random.default_rng(1)
    n_per_group, true_acc = 150, {"White": 0.85, "Asian": 0.7}
    groups = np.repeat(list(true_acc), n_per_group)
    covered = {"accuracy": 0, "wga": 0}
    trials = 150
    for trial in range(trials):
        y = rng.integers(0, 2, size=len(groups))
        correct = rng.random(len(groups)) < np.vectorize(true_acc.get)(groups)
        p = np.where(correct == (y == 1), 0.9, 0.1)
        table = paired_bootstrap({("erm", 0): (y, p, 0.5)}, groups, n_replicates=200, seed=trial)
        table = table.set_index(["group", "metric"])
        for (group, metric), truth, name in [(("Asian", "accuracy"), 0.7, "accuracy"), ((OVERALL, "wga"), 0.7, "wga")]:
            covered[name] += table.loc[(group, metric), "ci_low"] <= truth <= table.loc[(group, metric), "ci_high"]
    for name, hits in covered.items():
        assert 0.88 <= hits / trials <= 0.99, f"{name}: {hits}/{trials}"


def test_paired_difference_has_its_own_ci_and_is_zero_for_identical_methods():
    rng = np.random.default_rng(2)
    groups = np.repeat(["White", "Asian", "Other"], 60)
    y = rng.integers(0, 2, size=len(groups))
    runs = {}
    for seed in (0, 1):
        p = np.clip(y * 0.3 + rng.random(len(groups)) * 0.7, 0, 1)
        better = np.clip(p + 0.25 * (2 * y - 1), 0, 1)
        runs |= {("erm", seed): (y, p, 0.5), ("random", seed): (y, p, 0.5), ("d3m", seed): (y, better, 0.5)}
    table = paired_bootstrap(runs, groups, n_replicates=400).set_index(["method", "group", "metric"])
    same = table.loc[("random", OVERALL, "accuracy")]
    assert same["diff_erm"] == 0 and same["diff_erm_low"] == 0 and same["diff_erm_high"] == 0
    better = table.loc[("d3m", OVERALL, "accuracy")]
    assert better["diff_erm"] == pytest.approx(better["mean"] - table.loc[("erm", OVERALL, "accuracy"), "mean"])
    assert 0 < better["diff_erm_low"] <= better["diff_erm"] <= better["diff_erm_high"]
    assert better["n_seeds"] == 2 and not np.isnan(better["seed_sd"])
    # Absent groups keep their rows (NaN); wga and gap exist on Overall only.
    assert np.isnan(table.loc[("erm", "Unknown", "accuracy"), "mean"])
    assert set(table.xs("wga", level="metric").index.get_level_values("group")) == {OVERALL}


def test_paired_bootstrap_needs_every_seed_of_every_method():
    y, p, groups = np.array([0, 1]), np.array([0.2, 0.8]), np.array(["White", "White"])
    with pytest.raises(ValueError, match="every method needs every seed"):
        paired_bootstrap({("erm", 0): (y, p, 0.5), ("erm", 1): (y, p, 0.5), ("d3m", 0): (y, p, 0.5)}, groups)


def test_compare_step_writes_the_table_and_rejects_other_test_images(tmp_path):
    rng = np.random.default_rng(3)
    n = 40
    cohort = pd.DataFrame({"image_index": np.arange(n), "race_group": np.array(["White", "Asian"])[np.arange(n) % 2]})
    cohort.to_parquet(tmp_path / "cohort.parquet")
    paths = {}
    for method in ("erm", "d3m"):
        pred = pd.DataFrame({"image_index": np.arange(n), "dicom_id": [f"d{i}" for i in range(n)],
                             "split": np.where(np.arange(n) < 16, "validate", "test"),
                             "y": rng.integers(0, 2, n), "p": rng.random(n)})
        pred.to_parquet(tmp_path / f"{method}.parquet")
        paths[0, method] = tmp_path / f"{method}.parquet"
    compare_step(paths, tmp_path / "cohort.parquet", tmp_path / "cmp.csv", label="Cardiomegaly", n_replicates=50,
                 bootstrap_seed=0)
    table = pd.read_csv(tmp_path / "cmp.csv")
    assert list(table.columns) == ["label", "method", "group", "metric", "n", "n_seeds", "mean", "seed_sd", "ci_low",
                                   "ci_high", "diff_erm", "diff_erm_low", "diff_erm_high", "diff_random",
                                   "diff_random_low", "diff_random_high"]
    assert (table["label"] == "Cardiomegaly").all() and table["diff_random"].isna().all()
    assert table.loc[(table["group"] == OVERALL) & (table["metric"] == "accuracy"), "n"].tolist() == [24, 24]
    pred = pd.read_parquet(paths[0, "d3m"])
    pd.concat([pred.iloc[:16], pred.iloc[20:]]).to_parquet(tmp_path / "short.parquet")
    with pytest.raises(ValueError, match="other test images"):
        compare_step({(0, "erm"): paths[0, "erm"], (0, "d3m"): tmp_path / "short.parquet"}, tmp_path / "cohort.parquet",
                     tmp_path / "cmp2.csv", label="Cardiomegaly", n_replicates=10, bootstrap_seed=0)


# --- label ranking --------------------------------------------------------------------------

def _validation(acc_by_group: dict[str, float], n: int = 20) -> pd.DataFrame:
    """Validation predictions whose accuracy at the chosen threshold is as given per group:
    scores separate the classes perfectly except for a share of images with flipped scores."""
    frames = []
    for group, acc in acc_by_group.items():
        y = np.arange(n) % 2
        right = np.arange(n) < round(acc * n)
        frames.append(pd.DataFrame({"y": y, "p": np.where(right == (y == 1), 0.9, 0.1), "race_group": group}))
    return pd.concat(frames, ignore_index=True)


def test_ranking_orders_labels_by_best_worst_gap_and_top_k_picks_them():
    validation = {
        "Atelectasis": _validation({"White": 0.9, "Asian": 0.8}),
        "Cardiomegaly": _validation({"White": 0.9, "Asian": 0.5}),
        "Edema": _validation({"White": 0.9, "Asian": 0.7, "Other": 0.6}),
        # A group below the minimum size does not count: no gap for this label.
        "Fracture": _validation({"White": 0.9}).pipe(lambda d: pd.concat([d, _validation({"Asian": 0.0}, n=4)])),
    }
    ranking = rank_labels(validation, groups=["White", "Asian", "Other"])
    assert ranking["label"].tolist() == ["Cardiomegaly", "Edema", "Atelectasis", "Fracture"]
    assert ranking["rank"].tolist() == [1, 2, 3, 4]
    first = ranking.iloc[0]
    assert (first["best_group"], first["worst_group"]) == ("White", "Asian")
    assert first["gap"] == pytest.approx(0.4)
    assert np.isnan(ranking.iloc[3]["gap"])
    assert top_labels(ranking, 2) == ["Cardiomegaly", "Edema"]
    assert top_labels(ranking, 10) == ["Cardiomegaly", "Edema", "Atelectasis"]  # never a label without a gap
    # Only the configured groups count.
    assert rank_labels(validation, groups=["White", "Other"]).iloc[0]["label"] == "Edema"
