"""Predictions of a checkpoint: per-image probability of the positive class, predicted class
(argmax) and cross-entropy loss, written per checkpoint so that every metric (the group losses
that weight D3M's alignment score included) is computed from one table (``d3mflow.evaluation``).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import torch
from torch import nn

from .images import CachedImages
from .io import write_parquet
from .models import load_checkpoint, select_device

log = logging.getLogger(__name__)

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
