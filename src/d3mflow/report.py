"""The report: the talk's per-label tables with confidence intervals, worst-group accuracy (WGA)
per method, what D3M removed, how well it finds the planted harmful images (demo), and the
images behind the numbers, as CSV, markdown and an HTML summary that ``snakemake --report``
shows on its landing page.

Input per label is the evaluation's comparison table (``evaluation.compare_step``): per method,
race group or Overall, and metric the mean over seeds, 95% bootstrap CI and n, and the
differences to the references erm and random (``diff_<reference>``, ``_low``, ``_high``) with
their own paired CIs; ``paired_view`` turns those into one long table.

Unlike the talk, every method is scored on the same test images (their n are equal), and
removals are counted on the training set. No table carries subject ids.
"""

from __future__ import annotations

import base64
import html
import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from .evaluation import OVERALL, REFERENCE_METHODS, SUMMARY_METRICS, worst_group
from .figures import wga_chart
from .io import write_csv, write_text
from .names import RACE_GROUPS

log = logging.getLogger(__name__)

METHOD_TITLES = {
    "erm": "ERM", "d3m": "D3M", "random": "Random removal", "balance": "Group balance", "jtt": "JTT",
    "auto_d3m": "Auto-D3M",
}
METRIC_TITLES = {
    "accuracy": "Accuracy", "auroc": "AUROC", "balanced_accuracy": "Balanced accuracy",
    "tpr": "True-positive rate", "fnr": "False-negative rate", "ece": "Calibration error (ECE)",
    "fnr_gap": "Under-diagnosis gap (FNR minus the best group's)",
}
REFERENCE, CONTROL, METHOD = "erm", "random", "d3m"
GROUP_ROWS = (*RACE_GROUPS, OVERALL)
SUBJECT_COLUMNS = ("subject_id", "study_id")


def _title(method: str) -> str:
    return METHOD_TITLES.get(method, method)


# ----------------------------------------------------------------------------- per-seed tables


def collect_accuracy(metrics: Mapping[tuple[str, int, str], str]) -> pd.DataFrame:
    """Long table (label, seed, method, group, n, correct, accuracy) from per-model metric files."""
    frames = [pd.read_csv(path).assign(label=label, seed=seed, method=method)
              for (label, seed, method), path in metrics.items()]
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


def _training_set(task: str, selection: str, cohort: pd.DataFrame) -> pd.DataFrame:
    """One label's training rows with y, race group, A and kept (every row must be scored)."""
    kept = pd.read_parquet(selection, columns=["image_index", "A", "kept"])
    train = pd.read_parquet(task, columns=["image_index", "dicom_id", "split", "y"])
    train = train[train["split"] == "train"].merge(kept, on="image_index", how="left", validate="1:1")
    if train["kept"].isna().any():
        raise ValueError(f"selection {selection} does not cover every training image of {task}")
    train = train.merge(cohort, on="image_index", how="left", validate="1:1")
    return train.assign(kept=train["kept"].astype(bool))


def removed_by_group(selections: Mapping[tuple[str, int], str], tasks: Mapping[str, str], cohort: str) -> pd.DataFrame:
    """Training images and D3M removals per label, seed and race group."""
    race = pd.read_parquet(cohort, columns=["image_index", "race_group"])
    rows = []
    for (label, seed), path in selections.items():
        train = _training_set(tasks[label], path, race)
        for group in GROUP_ROWS:
            part = train if group == OVERALL else train[train["race_group"] == group]
            n, removed = len(part), int((~part["kept"]).sum())
            rows.append({"label": label, "seed": seed, "group": group, "n_train": n, "n_removed": removed,
                         "share_removed": removed / n if n else float("nan")})
    return pd.DataFrame(rows)


def removed_composition(selections: Mapping[tuple[str, int], str], tasks: Mapping[str, str], cohort: str) -> pd.DataFrame:
    """Per label, summed over seeds: the share of each (race group, label value) cell among the
    training images and among the removed ones. Removal that tracks the planted or real bias
    shows as a cell over-represented among the removed images."""
    race = pd.read_parquet(cohort, columns=["image_index", "race_group"])
    frames = [_training_set(tasks[label], path, race).assign(label=label) for (label, _), path in selections.items()]
    if not frames:
        return pd.DataFrame(columns=["label", "race_group", "y", "n_train", "n_removed", "share_of_train",
                                     "share_of_removed", "removal_rate"])
    train = pd.concat(frames, ignore_index=True).assign(removed=lambda d: ~d["kept"])
    cells = train.groupby(["label", "race_group", "y"]).agg(n_train=("kept", "size"), n_removed=("removed", "sum"))
    cells = cells.reset_index()
    totals = cells.groupby("label")[["n_train", "n_removed"]].transform("sum")
    return cells.assign(
        share_of_train=cells["n_train"] / totals["n_train"],
        share_of_removed=cells["n_removed"] / totals["n_removed"].replace(0, np.nan),
        removal_rate=cells["n_removed"] / cells["n_train"],
    )


def precision_at_k(is_planted: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Share of planted images among the ``k`` lowest-scored (most harmful) training images."""
    order = np.argsort(scores, kind="stable")[:k]
    return float(is_planted[order].mean()) if len(order) else float("nan")


def detection_scores(selections: Mapping[tuple[str, int], str], ground_truth: str | None,
                     ks: Sequence[int] = ()) -> pd.DataFrame:
    """Per label, seed and kind of planted training image (demo only): AUROC of -A (0.5 is chance),
    precision at each k of the most negative A, and the share of planted and of other training
    images that the selection removed."""
    columns = ["label", "seed", "kind", "n_train", "n_planted", "auroc_neg_alignment", *(f"precision_at_{k}" for k in ks),
               "removed_share_planted", "removed_share_other"]
    if ground_truth is None:
        return pd.DataFrame(columns=columns)
    truth = pd.read_parquet(ground_truth, columns=["dicom_id", "label", "kind"])
    rows = []
    for (label, seed), path in selections.items():
        scores = pd.read_parquet(path, columns=["dicom_id", "A", "kept"])
        for kind, planted in truth[truth["label"] == label].groupby("kind"):
            is_planted = scores["dicom_id"].isin(planted["dicom_id"]).to_numpy()
            if is_planted.all() or not is_planted.any():
                continue
            removed = ~scores["kept"].to_numpy(bool)
            a = scores["A"].to_numpy()
            rows.append({
                "label": label, "seed": seed, "kind": kind, "n_train": len(scores), "n_planted": int(is_planted.sum()),
                "auroc_neg_alignment": roc_auc_score(is_planted, -a),
                **{f"precision_at_{k}": precision_at_k(is_planted, a, k) for k in ks},
                "removed_share_planted": removed[is_planted].mean(),
                "removed_share_other": removed[~is_planted].mean(),
            })
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------- formatting


def _pct(x: float) -> str:
    return "n/a" if pd.isna(x) else f"{100 * x:.1f}"


def _ci(low: float, high: float, signed: bool = False) -> str:
    if pd.isna(low) or pd.isna(high):
        return "[CI n/a]"
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return f"[{fmt.format(100 * low)}, {fmt.format(100 * high)}]"


def _estimate(mean: float, low: float, high: float, signed: bool = False) -> str:
    """A percentage with its CI, e.g. ``87.6 [84.1, 90.9]``."""
    if pd.isna(mean):
        return "n/a"
    return f"{100 * mean:+.1f} {_ci(low, high, True)}" if signed else f"{_pct(mean)} {_ci(low, high)}"


def metric_table(comparison: pd.DataFrame, paired: pd.DataFrame, metric: str, methods: Sequence[str]) -> pd.DataFrame:
    """The talk's table for one label and metric: a row per race group (★ the reference method's
    worst group on accuracy), a column per method with mean [95% CI] (n), and the paired
    difference D3M - ERM with its own CI."""
    rows = comparison[comparison["metric"] == metric].set_index(["group", "method"])
    worst = _worst_group(comparison, REFERENCE if REFERENCE in methods else methods[0])
    out = []
    for group in GROUP_ROWS:
        cells = {"Race": f"★ {group}" if group == worst else group}
        for method in methods:
            r = rows.loc[(group, method)] if (group, method) in rows.index else None
            cells[f"{_title(method)} % (n)"] = (
                "n/a" if r is None else f"{_estimate(r['mean'], r['ci_low'], r['ci_high'])} ({int(r['n'])})")
        if {METHOD, REFERENCE} <= set(methods):
            diff = _paired(paired, METHOD, REFERENCE, metric, group)
            cells[f"Δ {_title(METHOD)} − {_title(REFERENCE)}"] = "n/a" if diff is None else _estimate(*diff, signed=True)
        out.append(cells)
    return pd.DataFrame(out)


def _worst_group(comparison: pd.DataFrame, method: str) -> str | None:
    acc = comparison[(comparison["metric"] == "accuracy") & (comparison["method"] == method)]
    groups = acc[(acc["group"] != OVERALL) & (acc["n"] > 0)]
    return None if groups.empty else str(groups.loc[groups["mean"].idxmin(), "group"])


def _paired(paired: pd.DataFrame, method: str, reference: str, metric: str, group: str = OVERALL
            ) -> tuple[float, float, float] | None:
    """``method`` minus ``reference`` and its paired 95% CI, or None when not computed."""
    hit = paired[(paired["method"] == method) & (paired["reference"] == reference) & (paired["metric"] == metric)
                 & (paired["group"] == group)]
    if hit.empty or pd.isna(hit["diff"].iloc[0]):
        return None
    row = hit.iloc[0]
    return row["diff"], row["ci_low"], row["ci_high"]


def paired_view(comparison: pd.DataFrame) -> pd.DataFrame:
    """label, method, reference, group, metric, diff, ci_low, ci_high: one row per method and
    reference run (a reference's own rows left out) from the ``diff_<reference>`` columns."""
    frames = []
    for ref in REFERENCE_METHODS:
        columns = {f"diff_{ref}": "diff", f"diff_{ref}_low": "ci_low", f"diff_{ref}_high": "ci_high"}
        part = comparison.loc[comparison["method"] != ref, ["label", "method", "group", "metric", *columns]]
        frames.append(part.rename(columns=columns).dropna(subset=["diff"]).assign(reference=ref))
    return pd.concat(frames, ignore_index=True)[["label", "method", "reference", "group", "metric", "diff", "ci_low",
                                                 "ci_high"]]


def wga_summary(comparison: pd.DataFrame) -> pd.DataFrame:
    """label, method, mean, ci_low, ci_high of worst-group accuracy (the chart's data)."""
    wga = comparison[(comparison["metric"] == "wga") & (comparison["group"] == OVERALL)]
    return wga[["label", "method", "mean", "ci_low", "ci_high"]].reset_index(drop=True)


def _versus(paired: pd.DataFrame, reference: str) -> str:
    """One clause: D3M's WGA minus ``reference``'s with the CI, and whether it beat it beyond the CI."""
    diff = _paired(paired, METHOD, reference, "wga")
    if diff is None:
        return f"D3M − {_title(reference)}: not computed."
    _, low, high = diff
    what = f"D3M − {_title(reference)} WGA: {_estimate(*diff, signed=True)} points"
    if pd.isna(low) or pd.isna(high):
        return f"{what}, no CI, so no verdict."
    if low > 0:
        return f"{what}: D3M beat {_title(reference)} beyond the 95% CI."
    if high < 0:
        return f"{what}: D3M was worse than {_title(reference)} beyond the 95% CI."
    return f"{what}: D3M did not beat {_title(reference)} beyond the 95% CI."


def summary_paragraph(label: str, comparison: pd.DataFrame, paired: pd.DataFrame, detection: pd.DataFrame,
                      n_seeds: int) -> str:
    """Numbers-only summary of one label: WGA per method with CIs, D3M against ERM and the random
    control (paired CIs), and on the demo the detection AUROC of the planted images."""
    wga = wga_summary(comparison)
    parts = [f"Worst-group accuracy, % (mean of {n_seeds} seed(s), 95% CI): "
             + "; ".join(f"{_title(r.method)} {_estimate(r.mean, r.ci_low, r.ci_high)}" for r in wga.itertuples()) + "."]
    parts += [_versus(paired, ref) for ref in (REFERENCE, CONTROL)
              if ref in set(comparison["method"]) and METHOD in set(comparison["method"])]
    det = detection[detection["label"] == label]
    if not det.empty:
        auroc = det.groupby("kind")["auroc_neg_alignment"].mean()
        parts.append("Detection AUROC of −A: " + "; ".join(f"{kind} {v:.3f}" for kind, v in auroc.items()) + ".")
    return " ".join(parts)


# ----------------------------------------------------------------------------- rendering


def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub markdown table (cells as strings)."""
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def composition_view(composition: pd.DataFrame, label: str) -> pd.DataFrame:
    part = composition[composition["label"] == label]
    return pd.DataFrame({
        "Race": part["race_group"], "y": part["y"], "train n": part["n_train"], "% of train": part["share_of_train"].map(_pct),
        "removed n": part["n_removed"], "% of removed": part["share_of_removed"].map(_pct),
        "% of cell removed": part["removal_rate"].map(_pct),
    })


def detection_view(detection: pd.DataFrame) -> pd.DataFrame:
    """Detection averaged over seeds, one row per label and kind."""
    numeric = [c for c in detection.columns if c.startswith(("auroc", "precision", "removed"))]
    mean = detection.groupby(["label", "kind"], sort=False).agg(
        n_planted=("n_planted", "first"), n_train=("n_train", "first"), **{c: (c, "mean") for c in numeric}).reset_index()
    view = pd.DataFrame({"Label": mean["label"], "Kind": mean["kind"],
                         "planted / train": mean["n_planted"].astype(str) + " / " + mean["n_train"].astype(str),
                         "AUROC(−A)": mean["auroc_neg_alignment"].map("{:.3f}".format)})
    for c in numeric:
        if c.startswith("precision_at_"):
            view[f"precision@{c.rsplit('_', 1)[1]}"] = mean[c].map("{:.2f}".format)
    view["removed: planted %"] = mean["removed_share_planted"].map(_pct)
    view["removed: other %"] = mean["removed_share_other"].map(_pct)
    return view


def errors_view(errors: pd.DataFrame, attribution: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """A sentence on the worst group's errors and a table of each analysed test image's most
    harmful training images."""
    n_group = int(errors["worst_group_n"].iloc[0]) if len(errors) else 0
    group = errors["race_group"].iloc[0] if len(errors) else "n/a"
    sentence = f"Base model, worst test group {group}: {len(errors)} of {n_group} images misclassified."
    if attribution.empty:
        sentence += " No per-image attributions (no errors, or features without test targets)."
        return sentence, pd.DataFrame()
    table = attribution.groupby(["target_dicom_id"], sort=False).apply(
        lambda d: "; ".join(f"{r.dicom_id} (y={r.y}, {r.race_group}, {r.score:.2g})" for r in d.itertuples()),
        include_groups=False).reset_index()
    table.columns = ["misclassified test image", "most harmful training images (y, race, score)"]
    return sentence, table


class Document:
    """The report built once as sections, written both as markdown and as an HTML fragment."""

    def __init__(self) -> None:
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.md += ["#" * level + " " + text, ""]
        self.html.append(f"<h{level + 1}>{html.escape(text)}</h{level + 1}>")

    def text(self, text: str) -> None:
        self.md += [text, ""]
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, df: pd.DataFrame, caption: str = "", collapsed: bool = False) -> None:
        if caption:
            self.md += [f"**{caption}**", ""]
        self.md += [markdown_table(df), ""]
        table = df.to_html(index=False, escape=True, border=0, classes="d3m-table")
        if collapsed:
            self.html.append(f"<details><summary>{html.escape(caption)}</summary>{table}</details>")
        else:
            self.html.append((f"<p class='d3m-caption'>{html.escape(caption)}</p>" if caption else "") + table)

    def image(self, png: str | os.PathLike, markdown_dir: str | os.PathLike, alt: str) -> None:
        """Reference ``png`` from the markdown (relative path) and embed it in the HTML."""
        self.md += [f"![{alt}]({os.path.relpath(png, markdown_dir)})", ""]
        # Wrapped lines: docutils caps line length when the landing page embeds this fragment,
        # and browsers ignore whitespace in base64 data URIs.
        data = base64.encodebytes(Path(png).read_bytes()).decode()
        self.html.append(f"<img class='d3m-figure' alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>")


# The first two rules adapt snakemake's landing page to a long summary: its content pane centres
# (and so clips) anything taller or wider than the window, and its text column is narrow.
HTML_STYLE = """<style>
div.items-center:has(#d3mflow-summary) { align-items: flex-start; justify-content: flex-start; }
.max-w-lg:has(#d3mflow-summary) { max-width: 1000px; }
#d3mflow-summary { font-size: 13px; line-height: 1.4; }
#d3mflow-summary h2 { font-size: 20px; margin: 0.6em 0 0.3em; }
#d3mflow-summary h3 { font-size: 16px; margin: 1.2em 0 0.3em; border-bottom: 1px solid #ccc; }
#d3mflow-summary h4 { font-size: 14px; margin: 0.9em 0 0.3em; }
#d3mflow-summary p { margin: 0.3em 0; }
#d3mflow-summary table.d3m-table { border-collapse: collapse; margin: 0.3em 0 0.8em; font-size: 11px; max-width: 100%; }
#d3mflow-summary table.d3m-table th, #d3mflow-summary table.d3m-table td { border: 1px solid #ddd; padding: 2px 5px; text-align: left; vertical-align: top; }
#d3mflow-summary table.d3m-table th { background: #f3f3f3; }
#d3mflow-summary img.d3m-figure { max-width: 100%; margin: 0.4em 0; }
#d3mflow-summary .d3m-caption { font-weight: 600; }
#d3mflow-summary details { margin: 0.2em 0; }
</style>"""


def render(doc: Document) -> tuple[str, str]:
    """The markdown text and the self-contained HTML fragment of a built document."""
    fragment = "\n".join([HTML_STYLE, "<div id='d3mflow-summary'>", *doc.html, "</div>"])
    return "\n".join(doc.md), fragment


def check_no_subject_ids(tables: Mapping[str, pd.DataFrame]) -> None:
    """Refuse to write a report table that carries subject or study ids."""
    for name, df in tables.items():
        leaked = [c for c in df.columns if c in SUBJECT_COLUMNS]
        if leaked:
            raise ValueError(f"report table {name} would print {leaked}")


def _label_section(doc: Document, label: str, comparison: pd.DataFrame, paired: pd.DataFrame, methods: Sequence[str],
                   composition: pd.DataFrame, images: Mapping[str, str], errors: tuple | None, markdown_dir: str) -> None:
    """One label (its summary paragraph is in the overview): the talk's table, the other metrics
    (collapsed in HTML), removals, top TRAK images and the error analysis."""
    doc.heading(label)
    doc.table(metric_table(comparison, paired, "accuracy", methods),
              "Test accuracy % per race group, mean [95% CI] (n); ★ the ERM worst group; Δ with its paired CI")
    for metric in dict.fromkeys(comparison["metric"]):
        if metric not in ("accuracy", *SUMMARY_METRICS):
            doc.table(metric_table(comparison, paired, metric, methods), f"{METRIC_TITLES.get(metric, metric)} per race group",
                      collapsed=True)
    if label in set(composition["label"]):
        doc.table(composition_view(composition, label),
                  "Removed by D3M vs the training set, by race group and label value y (all seeds)", collapsed=True)
    if "top" in images:
        doc.image(images["top"], markdown_dir, f"{label}: most helpful and most harmful training images per race group")
    if errors is not None:
        doc.heading(f"{label}: error analysis of the worst group", 3)
        sentence, table = errors
        doc.text(sentence)
        if not table.empty:
            doc.table(table, "Most confident mistakes and the training images with the most negative attribution")
        if "errors" in images:
            doc.image(images["errors"], markdown_dir, f"{label}: misclassified test images and their most harmful training images")


def build_document(*, labels: Sequence[str], methods: Sequence[str], comparison: pd.DataFrame, paired: pd.DataFrame,
                   composition: pd.DataFrame, detection: pd.DataFrame, wga_png: str, images: Mapping[str, Mapping[str, str]],
                   errors: Mapping[str, tuple], markdown_dir: str, n_seeds: int) -> Document:
    """Every section of the report in reading order: overview and WGA chart, then per label."""
    doc = Document()
    doc.heading("d3mflow report", 1)
    doc.text("Every method is scored on the same test images (equal n across methods). Percentages are means over "
             "seeds with 95% bootstrap CIs; Δ and the D3M-versus verdicts use paired CIs on the same test images.")
    by_label = {label: (comparison[comparison["label"] == label], paired[paired["label"] == label]) for label in labels}
    for label in labels:
        doc.text(f"{label}: " + summary_paragraph(label, *by_label[label], detection, n_seeds))
    doc.image(wga_png, markdown_dir, "Worst-group accuracy per label and method, 95% CI")
    if not detection.empty:
        doc.heading("Detection of the planted harmful training images (demo cohort)")
        doc.table(detection_view(detection), "AUROC of −A (0.5 = chance), precision among the k most negative A, "
                                             "and the share of planted vs. other training images removed (mean over seeds)")
    for label in labels:
        _label_section(doc, label, *by_label[label], methods, composition, images.get(label, {}), errors.get(label),
                       markdown_dir)
    return doc


def _read_errors(paths: Mapping[str, tuple[str, str]]) -> dict[str, tuple[str, pd.DataFrame]]:
    return {label: errors_view(pd.read_csv(e), pd.read_csv(a)) for label, (e, a) in paths.items()}


def report_step(*, metrics, comparison: Mapping[str, str], selections, tasks, cohort, ground_truth,
                precision_k: Sequence[int], images: Mapping[str, Mapping[str, str]],
                errors: Mapping[str, tuple[str, str]], out: Mapping[str, str]) -> None:
    """Build every report table and figure from the per-label outputs and write them.

    ``out`` names the files: markdown, html, accuracy, wga, wga_ci, comparison, paired, removed,
    composition, detection, wga_png. ``images`` maps label -> {"top": png, "errors": png} (only
    when images are included); ``errors`` maps label -> (errors csv, attribution csv)."""
    labels = list(comparison)
    methods = list(dict.fromkeys(method for *_, method in metrics))
    accuracy = collect_accuracy(metrics)
    comparison_table = pd.concat([pd.read_csv(p) for p in comparison.values()], ignore_index=True)
    paired_table = paired_view(comparison_table)
    comparison_table = comparison_table[[c for c in comparison_table if not c.startswith("diff_")]]
    tables = {
        "accuracy": accuracy, "wga": wga_table(accuracy), "wga_ci": wga_summary(comparison_table),
        "comparison": comparison_table, "paired": paired_table, "removed": removed_by_group(selections, tasks, cohort),
        "composition": removed_composition(selections, tasks, cohort),
        "detection": detection_scores(selections, ground_truth, precision_k),
    }
    check_no_subject_ids(tables)
    for name, df in tables.items():
        write_csv(df, out[name])
    wga_chart(tables["wga_ci"], out["wga_png"], method_titles=METHOD_TITLES)
    doc = build_document(labels=labels, methods=methods, comparison=comparison_table, paired=paired_table,
                         composition=tables["composition"], detection=tables["detection"], wga_png=out["wga_png"],
                         images=images, errors=_read_errors(errors), markdown_dir=os.path.dirname(out["markdown"]),
                         n_seeds=accuracy["seed"].nunique())
    markdown, fragment = render(doc)
    write_text(markdown, out["markdown"])
    write_text(fragment, out["html"])
    for row in tables["wga_ci"].itertuples():
        log.info("%s %s: WGA %s", row.label, row.method, _estimate(row.mean, row.ci_low, row.ci_high))
