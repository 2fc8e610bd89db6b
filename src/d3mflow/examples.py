"""The images behind the numbers, for the report.

1. ``top_images_step``: per race group, the training images with the highest tau(g) (most
   helpful to the group's validation loss) and the lowest (most harmful), as in the talk's
   "top scoring TRAK images".
2. ``error_analysis_step`` (the talk's future direction): the base model's misclassified test
   images in its worst race group and, for the ``k`` most confident mistakes, the training images
   with the most negative TRAK score for that very test image (full per-target scores, computed
   for those targets only).

Both write CSV tables without subject ids and, only when ``include_images`` is set, an image
grid rendered from the image cache.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .scores import full_scores
from .evaluation import group_metrics, split_threshold, with_race, worst_group
from .figures import Tile, image_grid, text_png
from .io import write_csv
from .names import group_slug

log = logging.getLogger(__name__)

TOP_COLUMNS = ["group", "direction", "rank", "image_index", "dicom_id", "tau", "y", "race_group"]
ERROR_COLUMNS = ["image_index", "dicom_id", "race_group", "y", "p", "pred", "loss"]
ATTRIBUTION_COLUMNS = ["target_image_index", "target_dicom_id", "rank", "image_index", "dicom_id", "score", "y",
                       "race_group"]


def _training_rows(task_parquet: str | os.PathLike, cohort_parquet: str | os.PathLike) -> pd.DataFrame:
    """The task's training rows in task order (the TRAK row order) with y and race group."""
    task = pd.read_parquet(task_parquet, columns=["image_index", "dicom_id", "split", "y"])
    race = pd.read_parquet(cohort_parquet, columns=["image_index", "race_group"])
    train = task[task["split"] == "train"].drop(columns="split").reset_index(drop=True)
    return train.merge(race, on="image_index", how="left", validate="1:1")


def top_images(tau: Mapping[str, str | os.PathLike], train: pd.DataFrame, k: int) -> pd.DataFrame:
    """The ``k`` highest (helpful) and ``k`` lowest (harmful) tau(g) training images per group.

    ``tau`` maps each group name to its tau parquet (image_index, dicom_id, tau)."""
    frames = []
    for group, path in tau.items():
        scores = pd.read_parquet(path, columns=["image_index", "tau"]).merge(train, on="image_index", validate="1:1")
        ranked = scores.sort_values("tau", ascending=False, kind="stable")
        for direction, part in (("helpful", ranked.head(k)), ("harmful", ranked.iloc[::-1].head(k))):
            frames.append(part.assign(group=group, direction=direction, rank=np.arange(1, len(part) + 1)))
    return pd.concat(frames, ignore_index=True)[TOP_COLUMNS]


def _tile(row, score_column: str, highlight: bool = False) -> Tile:
    """A training image captioned with its label value, race group (short) and score."""
    group = group_slug(row.race_group).capitalize()
    return Tile(int(row.image_index), f"y={int(row.y)} {group}\n{score_column}={getattr(row, score_column):.2g}", highlight)


def top_images_step(*, tau: Mapping[str, str | os.PathLike], task: str | os.PathLike, cohort: str | os.PathLike,
                    cache: str | os.PathLike | None, label: str, k: int, out_csv: str | os.PathLike,
                    out_png: str | os.PathLike | None) -> None:
    """Snakemake job: the top-k table, and its image grid when ``out_png`` (and ``cache``) is given.

    Grid rows: per group, the k most helpful images, then (red frames) the k most harmful."""
    table = top_images(tau, _training_rows(task, cohort), k)
    write_csv(table, out_csv)
    if out_png is None:
        return
    rows = [(group, [_tile(r, "tau", highlight=r.direction == "harmful") for r in part.itertuples()])
            for group, part in table.groupby("group", sort=False)]
    image_grid(np.load(cache, mmap_mode="r"), rows, out_png,
               title=f"{label}: per race group g, the {k} training images with the highest tau(g) (most helpful), "
                     f"then the {k} lowest (most harmful, red)")


def target_rows_for_test(task: pd.DataFrame, image_index: Sequence[int]) -> np.ndarray:
    """Row of ``target_grads.npy`` for each test image in ``image_index``.

    The featurize jobs score the task's validation rows, then its test rows, each in task order,
    so test image j of the task is row ``n_validate + j``."""
    n_validate = int((task["split"] == "validate").sum())
    test = pd.Index(task.loc[task["split"] == "test", "image_index"])
    position = test.get_indexer(np.asarray(image_index))
    if (position < 0).any():
        missing = np.asarray(image_index)[position < 0].tolist()
        raise ValueError(f"image_index values {missing} are not test images of the task")
    return n_validate + position


def worst_group_errors(predictions_parquet: str | os.PathLike, cohort_parquet: str | os.PathLike
                       ) -> tuple[str, int, pd.DataFrame]:
    """The base model's worst race group on the test set, its size, and its misclassified test
    images, most confident mistakes (highest loss) first.

    Predictions use the evaluation's rule: the threshold chosen on the model's validation rows."""
    predictions = with_race(pd.read_parquet(predictions_parquet), cohort_parquet, str(predictions_parquet))
    test, threshold = split_threshold(predictions)
    test = test.assign(pred=(test["p"] >= threshold).astype(np.int8))
    group, _ = worst_group(group_metrics(test, threshold))
    members = test[test["race_group"] == group]
    errors = members[members["pred"] != members["y"]].sort_values("loss", ascending=False, kind="stable")
    return group, len(members), errors[ERROR_COLUMNS].reset_index(drop=True)


def harmful_training_images(scores: np.ndarray, train: pd.DataFrame, targets: pd.DataFrame, k: int) -> pd.DataFrame:
    """For each target (a column of ``scores``, n_train x n_targets), the ``k`` training images
    with the most negative score: those that pushed the model towards its mistake."""
    frames = []
    for column, target in enumerate(targets.itertuples()):
        order = np.argsort(scores[:, column], kind="stable")[:k]
        frames.append(train.iloc[order].assign(
            target_image_index=target.image_index, target_dicom_id=target.dicom_id,
            rank=np.arange(1, len(order) + 1), score=scores[order, column]))
    if not frames:
        return pd.DataFrame(columns=ATTRIBUTION_COLUMNS)
    return pd.concat(frames, ignore_index=True)[ATTRIBUTION_COLUMNS]


def error_analysis_step(*, features: Sequence[str | os.PathLike], out_to_loss: Sequence[str | os.PathLike],
                        target_grads: Sequence[str | os.PathLike], task: str | os.PathLike,
                        predictions: str | os.PathLike, cohort: str | os.PathLike, cache: str | os.PathLike | None,
                        label: str, k: int, train_k: int, out_errors: str | os.PathLike,
                        out_attribution: str | os.PathLike, out_png: str | os.PathLike | None) -> None:
    """Snakemake job: worst-group test errors of the base model and, for the ``k`` most confident
    ones, the ``train_k`` most harmful training images (grid only when ``out_png`` is given)."""
    group, n_group, errors = worst_group_errors(predictions, cohort)
    write_csv(errors.assign(worst_group_n=n_group), out_errors)
    targets = errors.head(k)
    task_table = pd.read_parquet(task, columns=["image_index", "split"])
    train = _training_rows(task, cohort)
    if not targets.empty:
        scores = full_scores(features, out_to_loss, target_grads, target_rows_for_test(task_table, targets["image_index"]))
        attribution = harmful_training_images(scores, train, targets, train_k)
    else:
        attribution = pd.DataFrame(columns=ATTRIBUTION_COLUMNS)
    write_csv(attribution, out_attribution)
    log.info("%s: worst group %s, %d of %d test images misclassified; attributions for %d",
             label, group, len(errors), n_group, attribution["target_dicom_id"].nunique())
    if out_png is not None:
        _error_grid(np.load(cache, mmap_mode="r"), group, targets, attribution, label, out_png)


def _error_grid(cache: np.ndarray, group: str, targets: pd.DataFrame, attribution: pd.DataFrame, label: str,
                out_png: str | os.PathLike) -> None:
    """One row per misclassified test image (red frame) followed by its most harmful training images."""
    if targets.empty:
        text_png(f"{label}: no misclassified test images in the worst group ({group})", out_png)
        return
    rows = []
    for target in targets.itertuples():
        first = Tile(int(target.image_index), f"test y={int(target.y)}\np={target.p:.2f}", highlight=True)
        harmful = attribution[attribution["target_image_index"] == target.image_index]
        rows.append((str(target.dicom_id)[:12], [first, *(_tile(r, "score") for r in harmful.itertuples())]))
    image_grid(cache, rows, out_png,
               title=f"{label}, worst group {group}: misclassified test images (red) and the training images "
                     "with the most negative attribution")
