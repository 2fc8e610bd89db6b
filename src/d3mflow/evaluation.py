"""Evaluation of trained classifiers.

Predictions: per-image probability of the positive class, predicted class and cross-entropy
loss, written per checkpoint so that every metric (per-group accuracy, worst-group accuracy,
the group losses that weight D3M's alignment score) is computed from one table.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import torch
from torch import nn

from d3mflow.images import CachedImages
from d3mflow.io import write_csv, write_parquet
from d3mflow.models import load_checkpoint, select_device
from d3mflow.names import RACE_GROUPS

log = logging.getLogger(__name__)

OVERALL = "Overall"

PREDICTION_COLUMNS = (
    "image_index", "dicom_id", "subject_id", "split", "y", "p", "pred", "loss"
)


@torch.no_grad()
def predict(
    model: nn.Module, dataset: CachedImages, device: torch.device, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Probability of class 1 and per-example cross-entropy loss for every dataset position.

    The model is put in eval mode (batch norm uses its running statistics, so a prediction does
    not depend on which other images share its batch) and left there."""
    if dataset.labels is None:
        raise ValueError("predict needs a labelled dataset to compute losses")
    model.to(device).eval()
    probs, losses = [], []
    for start in range(0, len(dataset), batch_size):
        images, labels = dataset.get_batch(np.arange(start, min(start + batch_size, len(dataset))))
        logits = model(images.to(device)).float()
        probs.append(torch.softmax(logits, dim=1)[:, 1].cpu())
        losses.append(nn.functional.cross_entropy(logits, labels.to(device), reduction="none").cpu())
    if not probs:
        return np.empty(0, dtype=np.float32), np.empty(0, dtype=np.float32)
    return torch.cat(probs).numpy(), torch.cat(losses).numpy()


def predict_step(
    ckpt: str | os.PathLike,
    task_parquet: str | os.PathLike,
    cache: str | os.PathLike,
    out_parquet: str | os.PathLike,
    *,
    splits: tuple[str, ...] = ("validate", "test"),
    threads: int = 1,
    device: str = "auto",
) -> None:
    """One workflow prediction job: predictions of ``ckpt`` for the task's rows in ``splits``.

    Writes image_index, dicom_id, subject_id, split, y, p (probability of class 1),
    pred (argmax class) and loss, in task order."""
    torch.set_num_threads(threads)
    torch_device = select_device(device)
    model, _ = load_checkpoint(ckpt, torch_device)
    task = pd.read_parquet(task_parquet)
    rows = task.loc[task["split"].isin(splits), list(PREDICTION_COLUMNS[:5])].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"{task_parquet} has no rows in splits {list(splits)}")
    dataset = CachedImages(cache, rows["image_index"].to_numpy(), rows["y"].to_numpy())
    p, loss = predict(model, dataset, torch_device)
    rows["p"] = p
    # With two classes the argmax of the logits is p > 0.5 (a tie goes to class 0, as in argmax).
    rows["pred"] = (p > 0.5).astype(np.int8)
    rows["loss"] = loss
    write_parquet(rows, out_parquet)
    for split, part in rows.groupby("split", sort=False):
        log.info(
            "%s %s: n %d accuracy %.4f mean loss %.4f",
            ckpt, split, len(part), (part["pred"] == part["y"]).mean(), part["loss"].mean(),
        )


def accuracy_by_group(predictions: pd.DataFrame) -> pd.DataFrame:
    """Accuracy with its n for each of the six race groups and overall.

    Groups without test images keep their row with n = 0 and accuracy NaN, so that a missing
    group is visible in the report instead of silently dropped."""
    correct = predictions["pred"].to_numpy() == predictions["y"].to_numpy()
    rows = []
    for group in (*RACE_GROUPS, OVERALL):
        mask = np.ones(len(predictions), bool) if group == OVERALL else (predictions["race_group"] == group).to_numpy()
        n = int(mask.sum())
        k = int(correct[mask].sum())
        rows.append({"group": group, "n": n, "correct": k, "accuracy": k / n if n else float("nan")})
    return pd.DataFrame(rows)


def worst_group(metrics: pd.DataFrame) -> tuple[str, float]:
    """The race group with the lowest accuracy among groups with test images, and that accuracy."""
    groups = metrics[(metrics["group"] != OVERALL) & (metrics["n"] > 0)]
    if groups.empty:
        raise ValueError("no race group has test images; worst-group accuracy is undefined")
    row = groups.loc[groups["accuracy"].idxmin()]
    return str(row["group"]), float(row["accuracy"])


def metrics_step(predictions_parquet, cohort_parquet, out_metrics) -> None:
    """Accuracy per race group of one model's test predictions, with race from the cohort.

    A separate job from prediction, so that remapping a race string recomputes these tables
    without running any model again."""
    predictions = pd.read_parquet(predictions_parquet)
    race = pd.read_parquet(cohort_parquet, columns=["image_index", "race_group"])
    predictions = predictions.merge(race, on="image_index", how="left", validate="one_to_one")
    if predictions["race_group"].isna().any():
        missing = predictions.loc[predictions["race_group"].isna(), "dicom_id"].head().tolist()
        raise ValueError(f"{predictions_parquet}: images not in the cohort {cohort_parquet}, e.g. {missing}")
    metrics = accuracy_by_group(predictions)
    group, wga = worst_group(metrics)
    overall = metrics.iloc[-1]
    log.info("test accuracy %.4f (n=%d); worst group %s at %.4f", overall["accuracy"], overall["n"], group, wga)
    write_csv(metrics, out_metrics)
