"""Auto-D3M: D3M without group labels, on pseudo-groups found in the TRAK scores.

The recipe (``shared/reference/d3m-trak.md``): L2-normalise each validation example's score
vector (its attribution to every training image), fit a 1-component PCA per validation class,
pseudo-group = 2 * class + (projection > 0), then run D3M on the pseudo-groups: tau(k) is the
mean score over pseudo-group k's validation examples, l_k the base model's mean validation loss
on them, and A and the selection are D3M's (``alignment``, ``selection``) with the label's d3m
settings.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from .alignment import alignment_scores
from .scores import full_scores
from .io import write_parquet
from .selection import select

log = logging.getLogger(__name__)


def pseudo_groups(scores: np.ndarray, y_val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Auto-D3M pseudo-groups of the validation examples from their TRAK score vectors.

    ``scores`` is n_train x n_val (column z: the attribution of every training image to
    validation example z). Each column is L2-normalised; per class c a 1-component PCA of
    that class's vectors gives a projection, and pseudo-group = 2 c + (projection > 0). A class
    with fewer than 2 examples stays one pseudo-group (projection 0). Returns the pseudo-group
    and the projection of every validation example."""
    vectors = np.asarray(scores, dtype=np.float64).T
    y_val = np.asarray(y_val, dtype=np.int64)
    if len(vectors) != len(y_val):
        raise ValueError(f"scores have {len(vectors)} validation columns but y_val has {len(y_val)} labels")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    projection = np.zeros(len(y_val))
    for c in np.unique(y_val):
        members = np.flatnonzero(y_val == c)
        if len(members) >= 2:
            projection[members] = PCA(n_components=1, svd_solver="full").fit_transform(vectors[members])[:, 0]
    return 2 * y_val + (projection > 0), projection


def pseudo_group_alignment(
    scores: np.ndarray, pseudo: np.ndarray, val_loss: np.ndarray, *, beta: float, weighting: str
) -> tuple[pd.DataFrame, np.ndarray]:
    """D3M on pseudo-groups: tau(k) = mean score column over pseudo-group k, l_k = the base
    model's mean validation loss on k; A as in ``alignment.alignment_scores``. Returns the
    tau table (columns ``pg<k>``, non-empty pseudo-groups only) and A."""
    names = {k: f"pg{k}" for k in np.unique(pseudo)}
    tau = pd.DataFrame({names[k]: scores[:, pseudo == k].mean(axis=1) for k in names})
    losses = pd.Series({names[k]: float(val_loss[pseudo == k].mean()) for k in names})
    return tau, alignment_scores(tau, losses, beta=beta, weighting=weighting)


def auto_d3m_step(
    feature_paths: Sequence[str | os.PathLike],
    out_to_loss_paths: Sequence[str | os.PathLike],
    target_grad_paths: Sequence[str | os.PathLike],
    task_parquet: str | os.PathLike,
    base_predictions_parquet: str | os.PathLike,
    out_selection: str | os.PathLike,
    out_groups: str | os.PathLike,
    *,
    beta: float,
    weighting: str,
    rule: str,
    num_to_discard: int | None = None,
) -> None:
    """Snakemake job: Auto-D3M for one label and seed, with the label's D3M settings.

    Scores every training row against every validation row (``scores.full_scores``:
    n_train x n_val floats in memory, fine for the demo, about 48 GB at 200k x 30k), finds
    pseudo-groups, aligns and selects. Writes ``out_selection`` (image_index, dicom_id,
    ``tau_pg<k>``, A, kept; training rows in task order, like D3M's selection) and
    ``out_groups`` (validation image_index, dicom_id, y, pseudo_group, projection)."""
    task = pd.read_parquet(task_parquet, columns=["image_index", "dicom_id", "split", "y"])
    train = task[task["split"] == "train"].reset_index(drop=True)
    val = task[task["split"] == "validate"].reset_index(drop=True)
    scores = full_scores(feature_paths, out_to_loss_paths, target_grad_paths, np.arange(len(val)))
    if scores.shape != (len(train), len(val)):
        raise ValueError(f"TRAK scores have shape {scores.shape}, but {task_parquet} has {len(train)} training and {len(val)} validation rows")
    pseudo, projection = pseudo_groups(scores, val["y"].to_numpy())
    tau, a = pseudo_group_alignment(scores, pseudo, _validation_loss(base_predictions_parquet, val),
                                    beta=beta, weighting=weighting)
    kept = select(a, rule=rule, num_to_discard=num_to_discard)
    if not kept.any():
        raise ValueError(f"rule {rule!r} keeps none of the {len(kept)} training images")
    selection = train[["image_index", "dicom_id"]].copy()
    for name in tau:
        selection[f"tau_{name}"] = tau[name].to_numpy()
    selection["A"], selection["kept"] = a, kept
    write_parquet(selection, out_selection)
    write_parquet(val[["image_index", "dicom_id", "y"]].assign(pseudo_group=pseudo, projection=projection), out_groups)
    log.info("auto_d3m: pseudo-group sizes %s; kept %d, dropped %d of %d training images",
             {int(k): int(n) for k, n in zip(*np.unique(pseudo, return_counts=True))}, int(kept.sum()),
             int((~kept).sum()), len(kept))


def _validation_loss(base_predictions_parquet: str | os.PathLike, val: pd.DataFrame) -> np.ndarray:
    """The base model's loss on every validation row, in ``val``'s order."""
    predictions = pd.read_parquet(base_predictions_parquet, columns=["image_index", "split", "loss"])
    predictions = predictions[predictions["split"] == "validate"]
    merged = val[["image_index"]].merge(predictions, on="image_index", how="left", validate="one_to_one")
    if merged["loss"].isna().any():
        raise ValueError(f"{base_predictions_parquet} lacks {int(merged['loss'].isna().sum())} validation rows")
    return merged["loss"].to_numpy(dtype=np.float64)
