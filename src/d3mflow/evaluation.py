"""Evaluation of trained classifiers from their predictions (``d3mflow.prediction``): metrics
per race group, paired bootstrap comparisons between methods, and the ranking of labels by
their group gap. No torch: these jobs only read prediction tables.

Threshold: each model's decision threshold is chosen on ITS OWN validation predictions as the
one maximising balanced accuracy, i.e. Youden's J = TPR - FPR (the same point: balanced
accuracy = (1 + J) / 2); an image is positive when p >= threshold. A validation set with one
class only falls back to 0.5. The test set is never used to choose anything.

Metrics per race group and overall (``group_metrics``, scikit-learn): accuracy, AUROC (NaN with
a note when the group has one class only), balanced accuracy, TPR, FNR, ``fnr_gap`` (the
group's FNR minus the lowest FNR of any group: its under-diagnosis gap to the best group; on
the Overall row the largest such gap), and ECE (``ece_bins`` equal-width bins of p, the
positive-class probability: sum over bins of bin share x |mean y - mean p|). The Overall row
also holds worst-group accuracy (``wga``, ``worst_group``) and ``gap`` (best minus worst group
accuracy); groups without test images are skipped by these summaries.

Uncertainty (``paired_bootstrap``): B replicates, each (1) drawing the test images again with
replacement WITHIN each race group (group sizes fixed) and (2) drawing the seeds again with
replacement. One draw serves every method, so a difference between two methods is computed
replicate by replicate and has its own CI (methods of one seed share the base model, so
seeds are paired too). A replicate's value is the mean over its drawn seeds; the point
estimate is the mean over seeds on the full test set; the CI is the 2.5 / 97.5 percentile of
the replicates (those with the metric defined). The CI therefore covers both test-set
sampling and seed-to-seed variation (with one seed: test sampling only); thresholds stay
fixed (validation is not resampled). The bootstrap uses vectorised equivalents of the
scikit-learn metrics (tested equal), since it evaluates thousands of resamples.

Comparison table (``compare_step`` -> ``results/eval/<label>/comparison.csv``), one row per
method x group x metric; values are fractions, not %. Groups are the six race groups (an
absent group keeps its rows, NaN) and Overall; metrics are accuracy, auroc,
balanced_accuracy, tpr, fnr, fnr_gap and ece for every group, plus ``wga`` and ``gap`` (best
minus worst group accuracy) on Overall only (``SUMMARY_METRICS``). Columns:

    label, method, group, metric, n (test images in the group), n_seeds,
    mean, seed_sd (SD over seeds of the full-test-set value; NaN with one seed),
    ci_low, ci_high,
    diff_erm, diff_erm_low, diff_erm_high           (method minus erm, paired CI)
    diff_random, diff_random_low, diff_random_high  (method minus random, paired CI)

A diff column is NaN when its reference method was not run (and 0 on the reference's own rows).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score, roc_auc_score, roc_curve

from .io import write_csv
from .names import RACE_GROUPS

log = logging.getLogger(__name__)

OVERALL = "Overall"

DEFAULT_THRESHOLD = 0.5
GROUP_METRICS = ("accuracy", "auroc", "balanced_accuracy", "tpr", "fnr", "fnr_gap", "ece")
SUMMARY_METRICS = ("wga", "gap")
REFERENCE_METHODS = ("erm", "random")
ONE_CLASS_NOTE = "one class only: AUROC undefined"

# Groups with fewer validation images than this are left out of the label ranking's gap: a
# handful of images gives an accuracy of 0 or 1 by chance.
MIN_RANKING_GROUP_N = 10


# --- thresholds and single-sample metrics (scikit-learn) ---------------------------------

def choose_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Threshold on ``p`` maximising balanced accuracy (Youden's J) on validation data.

    Candidates are the distinct scores (scikit-learn's ``roc_curve``); ties go to the highest
    threshold. With one class only J is undefined and 0.5 is returned."""
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return DEFAULT_THRESHOLD
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    # thresholds[0] is +inf (nothing positive); any real score does at least as well on J.
    best = 1 + int(np.argmax((tpr - fpr)[1:]))
    return float(thresholds[best])


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE of the positive-class probability: sum over ``bins`` equal-width bins of
    (bin size / n) x |mean y - mean p|."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if len(y) == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    gap = np.bincount(which, weights=y - p, minlength=bins)
    return float(np.abs(gap).sum() / len(y))


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float, ece_bins: int = 10) -> dict:
    """Metrics of one set of images (scikit-learn): n, n_pos, correct, accuracy, auroc,
    balanced_accuracy, tpr, fnr, ece and a note. Undefined metrics are NaN: everything on an
    empty set, AUROC with one class only (noted), TPR and FNR without positives. Balanced
    accuracy averages the recall of the classes present (scikit-learn's convention)."""
    y = np.asarray(y, dtype=np.int64)
    pred = (np.asarray(p) >= threshold).astype(np.int64)
    n, n_pos = len(y), int(y.sum())
    out = {"n": n, "n_pos": n_pos, "correct": int((pred == y).sum())}
    if n == 0:
        return {**out, **dict.fromkeys(("accuracy", "auroc", "balanced_accuracy", "tpr", "fnr", "ece"), np.nan), "note": ""}
    one_class = n_pos in (0, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about one-class balanced accuracy
        balanced = balanced_accuracy_score(y, pred)
    tpr = recall_score(y, pred) if n_pos else np.nan
    return {
        **out,
        "accuracy": accuracy_score(y, pred),
        "auroc": np.nan if one_class else roc_auc_score(y, p),
        "balanced_accuracy": balanced,
        "tpr": tpr,
        "fnr": 1 - tpr,
        "ece": expected_calibration_error(y, p, ece_bins),
        "note": ONE_CLASS_NOTE if one_class else "",
    }


def group_metrics(test: pd.DataFrame, threshold: float, ece_bins: int = 10) -> pd.DataFrame:
    """One row per race group (all six, in order) and Overall for test predictions (columns
    y, p, race_group): ``binary_metrics``, the threshold, ``fnr_gap``, and on the Overall row
    ``wga``, ``worst_group`` and ``gap``. Groups without images keep their row
    (n = 0, metrics NaN) so a missing group is visible instead of silently dropped."""
    rows = []
    for group in (*RACE_GROUPS, OVERALL):
        part = test if group == OVERALL else test[test["race_group"] == group]
        rows.append({"group": group, "threshold": threshold, **binary_metrics(part["y"], part["p"], threshold, ece_bins)})
    table = pd.DataFrame(rows)
    groups = table[(table["group"] != OVERALL) & (table["n"] > 0)]
    best_fnr = groups["fnr"].min()
    table["fnr_gap"] = table["fnr"] - best_fnr
    is_overall = table["group"] == OVERALL
    table.loc[is_overall, "fnr_gap"] = groups["fnr"].max() - best_fnr
    worst, wga = worst_group(table)
    table.loc[is_overall, ["wga", "worst_group", "gap"]] = [wga, worst, groups["accuracy"].max() - wga]
    columns = ["group", "n", "n_pos", "threshold", "correct", *GROUP_METRICS, *SUMMARY_METRICS, "worst_group", "note"]
    return table[columns]


def worst_group(metrics: pd.DataFrame) -> tuple[str, float]:
    """The race group with the lowest accuracy among groups with test images, and that accuracy."""
    groups = metrics[(metrics["group"] != OVERALL) & (metrics["n"] > 0)]
    if groups.empty:
        raise ValueError("no race group has test images; worst-group accuracy is undefined")
    row = groups.loc[groups["accuracy"].idxmin()]
    return str(row["group"]), float(row["accuracy"])


def with_race(predictions: pd.DataFrame, cohort_parquet: str | os.PathLike, what: str) -> pd.DataFrame:
    """``predictions`` with each image's ``race_group`` from the cohort; an image missing from
    the cohort is an error (``what`` names the predictions in it)."""
    race = pd.read_parquet(cohort_parquet, columns=["image_index", "race_group"])
    merged = predictions.merge(race, on="image_index", how="left", validate="one_to_one")
    if merged["race_group"].isna().any():
        missing = merged.loc[merged["race_group"].isna(), "dicom_id"].head().tolist()
        raise ValueError(f"{what}: images not in the cohort {cohort_parquet}, e.g. {missing}")
    return merged


def split_threshold(predictions: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """The test rows of validate+test predictions and the threshold chosen on the validate rows."""
    val = predictions[predictions["split"] == "validate"]
    test = predictions[predictions["split"] == "test"].reset_index(drop=True)
    if val.empty or test.empty:
        raise ValueError(f"predictions need validate and test rows, got {dict(predictions['split'].value_counts())}")
    return test, choose_threshold(val["y"].to_numpy(), val["p"].to_numpy())


def metrics_step(predictions_parquet, cohort_parquet, out_metrics, *, ece_bins: int = 10) -> None:
    """Snakemake job: ``group_metrics`` of one model's test predictions at the threshold chosen
    on its validation predictions, with race from the cohort.

    A separate job from prediction, so that remapping a race string recomputes these tables
    without running any model again."""
    predictions = with_race(pd.read_parquet(predictions_parquet), cohort_parquet, str(predictions_parquet))
    test, threshold = split_threshold(predictions)
    metrics = group_metrics(test, threshold, ece_bins)
    overall = metrics.iloc[-1]
    log.info("threshold %.4f (validation balanced accuracy); test accuracy %.4f (n=%d); worst group %s at %.4f",
             threshold, overall["accuracy"], overall["n"], overall["worst_group"], overall["wga"])
    write_csv(metrics, out_metrics)


# --- paired bootstrap ----------------------------------------------------------------------

def stratified_resamples(groups: np.ndarray, n_replicates: int, rng: np.random.Generator) -> np.ndarray:
    """(n_replicates, n) positions: column j of every replicate is drawn with replacement from
    the positions of ``groups[j]``'s group, so each group keeps its size and its columns."""
    groups = np.asarray(groups)
    index = np.empty((n_replicates, len(groups)), dtype=np.int64)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        index[:, members] = members[rng.integers(0, len(members), size=(n_replicates, len(members)))]
    return index


def replicate_metrics(y: np.ndarray, p: np.ndarray, threshold: float, ece_bins: int = 10) -> dict[str, np.ndarray]:
    """``binary_metrics`` of every row of (B, n) arrays ``y`` and ``p`` at once: each metric a
    (B,) array, NaN where undefined (AUROC with one class, TPR/FNR without positives)."""
    y = y.astype(np.float64)
    n = y.shape[1]
    pred = p >= threshold
    n_pos = y.sum(axis=1)
    n_neg = n - n_pos
    true_pos = (pred * y).sum(axis=1)
    true_neg = (~pred * (1 - y)).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        tpr = np.where(n_pos > 0, true_pos / n_pos, np.nan)
        tnr = np.where(n_neg > 0, true_neg / n_neg, np.nan)
        ranks = rankdata(p, axis=1)
        auroc = ((ranks * y).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auroc[(n_pos == 0) | (n_neg == 0)] = np.nan
    which = np.minimum((p * ece_bins).astype(np.int64), ece_bins - 1)
    gaps = np.stack([((y - p) * (which == b)).sum(axis=1) for b in range(ece_bins)])
    return {
        "accuracy": (true_pos + true_neg) / n,
        "auroc": auroc,
        "balanced_accuracy": np.where(np.isnan(tpr), tnr, np.where(np.isnan(tnr), tpr, (tpr + tnr) / 2)),
        "tpr": tpr,
        "fnr": 1 - tpr,
        "ece": np.abs(gaps).sum(axis=0) / n,
    }


def run_replicates(
    y: np.ndarray, p: np.ndarray, threshold: float, groups: np.ndarray, index: np.ndarray, ece_bins: int = 10
) -> dict[tuple[str, str], np.ndarray]:
    """Every (group, metric) of one model on the resamples ``index`` (B, n): the group metrics
    of each group present and Overall, fnr_gap, and wga / gap on Overall."""
    y_b, p_b = y[index], p[index]
    out = {}
    present = [g for g in RACE_GROUPS if (groups == g).any()]
    for group in (*present, OVERALL):
        cols = slice(None) if group == OVERALL else np.flatnonzero(groups == group)
        for metric, values in replicate_metrics(y_b[:, cols], p_b[:, cols], threshold, ece_bins).items():
            out[group, metric] = values
    accuracy = np.stack([out[g, "accuracy"] for g in present])
    fnr = np.stack([out[g, "fnr"] for g in present])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN FNR: no group has positives
        best_fnr, worst_fnr = np.nanmin(fnr, axis=0), np.nanmax(fnr, axis=0)
    for g, values in zip(present, fnr):
        out[g, "fnr_gap"] = values - best_fnr
    out[OVERALL, "fnr_gap"] = worst_fnr - best_fnr
    out[OVERALL, "wga"] = accuracy.min(axis=0)
    out[OVERALL, "gap"] = accuracy.max(axis=0) - accuracy.min(axis=0)
    return out


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the defined (non-NaN) replicate values; NaN if none is defined."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def paired_bootstrap(
    runs: Mapping[tuple[str, int], tuple[np.ndarray, np.ndarray, float]],
    groups: np.ndarray,
    *,
    n_replicates: int = 1000,
    seed: int = 0,
    ece_bins: int = 10,
    level: float = 0.95,
) -> pd.DataFrame:
    """The comparison table (module docstring) without its label column.

    ``runs`` maps (method, seed) -> (y, p, threshold) on the same test images, in the same
    order, whose race groups are ``groups``. Every method must have every seed. One draw of
    test images and of seeds serves all methods (see the module docstring)."""
    methods = list(dict.fromkeys(m for m, _ in runs))
    seeds = list(dict.fromkeys(s for _, s in runs))
    missing = [(m, s) for m in methods for s in seeds if (m, s) not in runs]
    if missing:
        raise ValueError(f"runs lack (method, seed) pairs {missing}: every method needs every seed for a paired comparison")
    groups = np.asarray(groups)
    rng = np.random.default_rng(seed)
    index = stratified_resamples(groups, n_replicates, rng)
    seed_draws = rng.integers(0, len(seeds), size=(n_replicates, len(seeds)))
    full = np.arange(len(groups))[None, :]

    point, boot = {}, {}
    for method in methods:
        per_seed = [runs[method, s] for s in seeds]
        points = [run_replicates(y, p, t, groups, full, ece_bins) for y, p, t in per_seed]
        reps = [run_replicates(y, p, t, groups, index, ece_bins) for y, p, t in per_seed]
        for key in reps[0]:
            point[method, key] = np.array([pt[key][0] for pt in points])
            by_seed = np.stack([r[key] for r in reps])  # (S, B)
            boot[method, key] = by_seed[seed_draws.T, np.arange(n_replicates)].mean(axis=0)

    sizes = {g: int((groups == g).sum()) for g in RACE_GROUPS} | {OVERALL: len(groups)}
    keys = [(g, m) for g in (*RACE_GROUPS, OVERALL) for m in GROUP_METRICS] + [(OVERALL, m) for m in SUMMARY_METRICS]
    rows = []
    for method in methods:
        for group, metric in keys:
            key = (group, metric)
            row = {"method": method, "group": group, "metric": metric, "n": sizes[group], "n_seeds": len(seeds)}
            row |= _summary(point.get((method, key)), boot.get((method, key)), level)
            for ref in REFERENCE_METHODS:
                row |= _difference(ref, point, boot, method, key, level)
            rows.append(row)
    return pd.DataFrame(rows)


def _mean_or_nan(values: np.ndarray) -> float:
    return float("nan") if np.isnan(values).all() else float(values.mean())


def _summary(point: np.ndarray | None, boot: np.ndarray | None, level: float) -> dict:
    """mean, seed_sd, ci_low, ci_high of one method's (group, metric); NaN for an absent group."""
    if point is None:
        return dict.fromkeys(("mean", "seed_sd", "ci_low", "ci_high"), np.nan)
    low, high = percentile_ci(boot, level)
    seed_sd = float(point.std(ddof=1)) if len(point) > 1 else float("nan")
    return {"mean": _mean_or_nan(point), "seed_sd": seed_sd, "ci_low": low, "ci_high": high}


def _difference(ref: str, point: dict, boot: dict, method: str, key: tuple[str, str], level: float) -> dict:
    """diff_<ref>, diff_<ref>_low, diff_<ref>_high: the seed-mean of method minus ``ref`` and
    its paired CI; NaN when ``ref`` was not run or the group is absent."""
    names = (f"diff_{ref}", f"diff_{ref}_low", f"diff_{ref}_high")
    if (ref, key) not in point or (method, key) not in point:
        return dict.fromkeys(names, np.nan)
    low, high = percentile_ci(boot[method, key] - boot[ref, key], level)
    return dict(zip(names, (_mean_or_nan(point[method, key] - point[ref, key]), low, high)))


def compare_step(
    predictions: Mapping[tuple[int, str], str | os.PathLike],
    cohort_parquet: str | os.PathLike,
    out_csv: str | os.PathLike,
    *,
    label: str,
    n_replicates: int,
    bootstrap_seed: int,
    ece_bins: int = 10,
) -> None:
    """Snakemake job: the comparison table of one label from its validate+test predictions,
    ``predictions``: (seed, method) -> parquet. Each model's threshold is chosen on its own
    validation rows; every model must have predicted the same test images."""
    runs, test_index, groups = {}, None, None
    for (seed, method), path in predictions.items():
        test, threshold = split_threshold(with_race(pd.read_parquet(path), cohort_parquet, str(path)))
        if test_index is None:
            test_index, groups = test["image_index"].to_numpy(), test["race_group"].to_numpy()
        elif not np.array_equal(test["image_index"].to_numpy(), test_index):
            raise ValueError(f"{path} scores other test images than the other methods of {label}: no paired comparison")
        runs[method, seed] = (test["y"].to_numpy(), test["p"].to_numpy(dtype=np.float64), threshold)
    table = paired_bootstrap(runs, groups, n_replicates=n_replicates, seed=bootstrap_seed, ece_bins=ece_bins)
    table.insert(0, "label", label)
    write_csv(table, out_csv)
    for row in table[table["metric"] == "wga"].itertuples():
        log.info("%s %s: WGA %.4f [%.4f, %.4f]; minus erm %+.4f [%+.4f, %+.4f]; minus random %+.4f [%+.4f, %+.4f]",
                 label, row.method, row.mean, row.ci_low, row.ci_high, row.diff_erm, row.diff_erm_low,
                 row.diff_erm_high, row.diff_random, row.diff_random_low, row.diff_random_high)


# --- label ranking -------------------------------------------------------------------------

def label_gap(validation: pd.DataFrame, groups: Sequence[str], min_group_n: int = MIN_RANKING_GROUP_N) -> dict:
    """Best and worst group accuracy of one label's base model on validation (columns y, p,
    race_group), at the threshold chosen on the same validation rows; groups in ``groups``
    with at least ``min_group_n`` images take part. gap = best - worst (NaN if < 2 groups)."""
    threshold = choose_threshold(validation["y"].to_numpy(), validation["p"].to_numpy())
    correct = (validation["p"] >= threshold) == (validation["y"] == 1)
    by_group = correct.groupby(validation["race_group"]).agg(["mean", "size"])
    by_group = by_group[by_group.index.isin(groups) & (by_group["size"] >= min_group_n)]["mean"]
    if len(by_group) < 2:
        return {"n_val": len(validation), "threshold": threshold, "worst_group": None, "worst_accuracy": np.nan,
                "best_group": None, "best_accuracy": np.nan, "gap": np.nan}
    return {
        "n_val": len(validation), "threshold": threshold,
        "worst_group": by_group.idxmin(), "worst_accuracy": by_group.min(),
        "best_group": by_group.idxmax(), "best_accuracy": by_group.max(),
        "gap": by_group.max() - by_group.min(),
    }


def rank_labels(validation: Mapping[str, pd.DataFrame], groups: Sequence[str]) -> pd.DataFrame:
    """One row per label (``label_gap``), largest gap first (ties and NaN gaps: input order
    last), with its 1-based rank."""
    table = pd.DataFrame([{"label": label, **label_gap(df, groups)} for label, df in validation.items()])
    table = table.sort_values("gap", ascending=False, kind="stable", na_position="last").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


def top_labels(ranking: pd.DataFrame, k: int) -> list[str]:
    """The ``k`` labels with the largest gap (labels without a gap are never chosen)."""
    return ranking.dropna(subset=["gap"])["label"].head(k).tolist()


def rank_labels_step(
    predictions: Mapping[str, str | os.PathLike],
    cohort_parquet: str | os.PathLike,
    out_csv: str | os.PathLike,
    *,
    groups: Sequence[str],
) -> None:
    """Snakemake checkpoint job: rank labels (name -> base-model predictions) by the gap
    between their best and worst group on validation, and write the ranking."""
    validation = {}
    for label, path in predictions.items():
        df = with_race(pd.read_parquet(path), cohort_parquet, str(path))
        validation[label] = df[df["split"] == "validate"]
    ranking = rank_labels(validation, groups)
    write_csv(ranking, out_csv)
    for row in ranking.itertuples():
        log.info("%d. %s: gap %.4f (%s %.4f vs %s %.4f)", row.rank, row.label, row.gap, row.best_group,
                 row.best_accuracy, row.worst_group, row.worst_accuracy)
