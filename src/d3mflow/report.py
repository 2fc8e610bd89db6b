"""The report in the talk's form: per label a table of race group, baseline accuracy (n), D3M
accuracy (n) and the difference; worst-group accuracy (WGA) across labels; how many training
images D3M removed per race group; and, on the demo cohort, how well the alignment scores find
the planted harmful images.

Unlike the talk, both methods are scored on the same test images (their n are equal), and
removals are counted on the training set."""

from __future__ import annotations

import logging

import pandas as pd
from sklearn.metrics import roc_auc_score

from .evaluation import OVERALL, worst_group
from .io import write_csv, write_text
from .names import RACE_GROUPS

log = logging.getLogger(__name__)

METHOD_TITLES = {"erm": "Baseline (ERM)", "d3m": "D3M"}


def collect_accuracy(metrics: dict[tuple[str, int, str], str]) -> pd.DataFrame:
    """Long table (label, seed, method, group, n, correct, accuracy) from per-model metric files."""
    frames = []
    for (label, seed, method), path in metrics.items():
        df = pd.read_csv(path)
        frames.append(df.assign(label=label, seed=seed, method=method))
    return pd.concat(frames, ignore_index=True)[["label", "seed", "method", "group", "n", "correct", "accuracy"]]


def wga_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Worst group, its accuracy, and overall accuracy per label, seed and method."""
    rows = []
    for (label, seed, method), df in accuracy.groupby(["label", "seed", "method"], sort=False):
        group, wga = worst_group(df)
        overall = df.loc[df["group"] == OVERALL].iloc[0]
        rows.append({
            "label": label, "seed": seed, "method": method, "worst_group": group, "wga": wga,
            "overall_accuracy": overall["accuracy"], "n_test": int(overall["n"]),
        })
    return pd.DataFrame(rows)


def mean_over_seeds(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per label, method and group averaged over seeds (n is the same for every seed)."""
    return accuracy.groupby(["label", "method", "group"], sort=False).agg(
        n=("n", "first"), accuracy=("accuracy", "mean"), seeds=("seed", "nunique")
    ).reset_index()


def removed_by_group(selections: dict[tuple[str, int], str], tasks: dict[str, str], cohort: str) -> pd.DataFrame:
    """Training images and D3M removals per label, seed and race group."""
    race = pd.read_parquet(cohort, columns=["image_index", "race_group"])
    rows = []
    for (label, seed), path in selections.items():
        kept = pd.read_parquet(path, columns=["image_index", "kept"])
        train = pd.read_parquet(tasks[label], columns=["image_index", "split"])
        train = train[train["split"] == "train"].merge(kept, on="image_index", how="left", validate="1:1")
        train = train.merge(race, on="image_index", how="left", validate="1:1")
        if train["kept"].isna().any():
            raise ValueError(f"selection {path} does not cover every training image of {tasks[label]}")
        for group in (*RACE_GROUPS, OVERALL):
            part = train if group == OVERALL else train[train["race_group"] == group]
            n, removed = len(part), int((~part["kept"].astype(bool)).sum())
            rows.append({
                "label": label, "seed": seed, "group": group, "n_train": n, "n_removed": removed,
                "share_removed": removed / n if n else float("nan"),
            })
    return pd.DataFrame(rows)


def detection_scores(selections: dict[tuple[str, int], str], ground_truth: str | None) -> pd.DataFrame:
    """AUROC of -A for finding each kind of planted training image, per label (demo only).

    -A ranks the images D3M considers most harmful first; 0.5 is chance. Also gives the share
    of planted and of other training images that the selection removed."""
    columns = ["label", "seed", "kind", "n_train", "n_planted", "auroc_neg_alignment",
               "removed_share_planted", "removed_share_other"]
    if ground_truth is None:
        return pd.DataFrame(columns=columns)
    truth = pd.read_parquet(ground_truth)
    rows = []
    for (label, seed), path in selections.items():
        scores = pd.read_parquet(path, columns=["dicom_id", "A", "kept"])
        for kind, planted in truth[truth["label"] == label].groupby("kind"):
            is_planted = scores["dicom_id"].isin(planted["dicom_id"]).to_numpy()
            n_planted = int(is_planted.sum())
            if n_planted == 0 or n_planted == len(scores):
                continue
            removed = ~scores["kept"].to_numpy(bool)
            rows.append({
                "label": label, "seed": seed, "kind": kind, "n_train": len(scores), "n_planted": n_planted,
                "auroc_neg_alignment": roc_auc_score(is_planted, -scores["A"].to_numpy()),
                "removed_share_planted": removed[is_planted].mean(),
                "removed_share_other": removed[~is_planted].mean(),
            })
    return pd.DataFrame(rows, columns=columns)


def _pct(x: float) -> str:
    return "n/a" if pd.isna(x) else f"{100 * x:.1f}"


def _signed(x: float) -> str:
    return "n/a" if pd.isna(x) else f"{100 * x:+.1f}"


def label_table(mean_accuracy: pd.DataFrame, label: str, methods: list[str]) -> list[str]:
    """The talk's per-label table (accuracy averaged over seeds); a star marks the baseline's
    worst group."""
    df = mean_accuracy[mean_accuracy["label"] == label]
    by_method = {m: df[df["method"] == m].set_index("group") for m in methods}
    worst, _ = worst_group(by_method[methods[0]].reset_index())
    compare = len(methods) > 1
    header = ["Race", *(f"{METHOD_TITLES.get(m, m)} acc % (n)" for m in methods)]
    if compare:
        header.append(f"Δ ({methods[-1]} − {methods[0]})")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in (*RACE_GROUPS, OVERALL):
        name = f"★ {group}" if group == worst else group
        cells = [name]
        for m in methods:
            row = by_method[m].loc[group]
            cells.append(f"{_pct(row['accuracy'])} ({int(row['n'])})")
        if compare:
            delta = by_method[methods[-1]].loc[group, "accuracy"] - by_method[methods[0]].loc[group, "accuracy"]
            cells.append(_signed(delta))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def verdict(wga: pd.DataFrame, label: str, methods: list[str]) -> str:
    """One numbers-only sentence on whether D3M changed this label's worst-group accuracy
    (per-seed WGA averaged over seeds)."""
    if not {"erm", "d3m"} <= set(methods):
        return ""
    rows = wga[wga["label"] == label].groupby("method")[["wga", "overall_accuracy"]].mean()
    base, d3m = rows.loc["erm"], rows.loc["d3m"]
    delta = d3m["wga"] - base["wga"]
    n_seeds = wga.loc[wga["label"] == label, "seed"].nunique()
    if delta == 0:
        change = f"D3M did not change worst-group accuracy ({_pct(base['wga'])}%)"
    else:
        change = (f"D3M {'raised' if delta > 0 else 'lowered'} worst-group accuracy from {_pct(base['wga'])}% "
                  f"to {_pct(d3m['wga'])}% ({_signed(delta)} points)")
    return (f"{change}; overall accuracy {_pct(base['overall_accuracy'])}% → {_pct(d3m['overall_accuracy'])}% "
            f"(mean of {n_seeds} seed(s)). No confidence interval yet: a change of a few points on a small "
            f"group can be noise.")


def render_markdown(accuracy, wga, removed, detection, methods) -> str:
    labels = list(dict.fromkeys(accuracy["label"]))
    mean_accuracy = mean_over_seeds(accuracy)
    mean_wga = wga.groupby(["label", "method"], sort=False)["wga"].mean()
    out = ["# d3mflow report", "",
           "Accuracy per race group on the test set. Every method is scored on the same test images,",
           "so the n of each row are equal across methods (the talk compared different test n).", ""]
    for label in labels:
        out += [f"## {label}", "", *label_table(mean_accuracy, label, methods), ""]
        sentence = verdict(wga, label, methods)
        if sentence:
            out += [sentence, ""]
    out += ["## Worst-group accuracy (%)", "",
            "Per seed the minimum over race groups, then averaged over seeds; the worst group of each seed in brackets.", ""]
    out += ["| Method | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for m in methods:
        cells = []
        for label in labels:
            worst = wga.loc[(wga["label"] == label) & (wga["method"] == m), "worst_group"]
            cells.append(f"{_pct(mean_wga[(label, m)])} ({', '.join(dict.fromkeys(worst))})")
        out.append(f"| {METHOD_TITLES.get(m, m)} | " + " | ".join(cells) + " |")
    out.append("")
    if not removed.empty:
        runs = removed[["label", "seed"]].drop_duplicates()
        heads = [f"{r.label} (seed {r.seed})" for r in runs.itertuples()]
        out += ["## Training images removed by D3M, per race group", "",
                "| Race | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
        for group in (*RACE_GROUPS, OVERALL):
            part = removed[removed["group"] == group]
            cells = [f"{r.n_removed} / {r.n_train} ({_pct(r.share_removed)}%)" for r in part.itertuples()]
            out.append(f"| {group} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["## Detection of the planted harmful training images (demo cohort)", ""]
    if detection.empty:
        out += ["No planted ground truth for these labels (real data, or no planted label selected).", ""]
    else:
        out += ["AUROC of −A (0.5 = chance) and the share of planted vs. other training images removed.", "",
                "| Label | Seed | Kind | planted / train | AUROC(−A) | removed: planted | removed: other |",
                "|---|---|---|---|---|---|---|"]
        for r in detection.itertuples():
            out.append(f"| {r.label} | {r.seed} | {r.kind} | {r.n_planted} / {r.n_train} | {r.auroc_neg_alignment:.3f} | "
                       f"{_pct(r.removed_share_planted)}% | {_pct(r.removed_share_other)}% |")
        out.append("")
    return "\n".join(out)


def report_step(*, metrics, selections, tasks, cohort, ground_truth, out_markdown, out_accuracy, out_wga,
                out_removed, out_detection) -> None:
    """Build every report table from the per-label outputs and write them (CSV and markdown)."""
    methods = list(dict.fromkeys(method for *_, method in metrics))
    accuracy = collect_accuracy(metrics)
    wga = wga_table(accuracy)
    removed = removed_by_group(selections, tasks, cohort) if selections else pd.DataFrame()
    detection = detection_scores(selections, ground_truth)
    for row in wga.itertuples():
        log.info("%s seed %s %s: WGA %.4f (%s), overall %.4f", row.label, row.seed, row.method, row.wga,
                 row.worst_group, row.overall_accuracy)
    write_csv(accuracy, out_accuracy)
    write_csv(wga, out_wga)
    write_csv(removed, out_removed)
    write_csv(detection, out_detection)
    write_text(render_markdown(accuracy, wga, removed, detection, methods), out_markdown)
