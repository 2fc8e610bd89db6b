"""TRAK scores from saved feature stores: group attributions tau(g) and per-target scores.

traker's ``finalize_scores`` computes ``S = (mean_m F_m G_m^T) * mean_m Q_m`` (Q broadcast
over each training row) from the arrays ``d3mflow.attribution`` saves per model. S is linear in
the target gradients, so the group attribution
``tau(g) = mean_{z in g} S[:, z] = (mean_m F_m @ mean_{z in g} G_m[z]) * mean_m Q_m``
needs one matrix-vector product per model instead of the n_train x n_val score matrix
(``group_tau``, one Snakemake job per race group: ``tau_step``). ``full_scores`` gives the
columns of S for a chosen handful of targets (error analysis, Auto-D3M). Feature stores are
read in row chunks, so n_train x k never sits in memory. numpy only: these jobs do not pay
for importing torch.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import pandas as pd

from .io import write_json, write_parquet

log = logging.getLogger(__name__)

ArrayOrPath = np.ndarray | str | os.PathLike


def group_tau(
    features: Sequence[ArrayOrPath],
    out_to_loss: Sequence[ArrayOrPath],
    target_grads: Sequence[ArrayOrPath],
    target_mask: np.ndarray,
    chunk_rows: int = 65536,
) -> np.ndarray:
    """tau(g): the mean TRAK score over the targets in ``target_mask``, for every training row.

    Equals the column mean over the masked targets of traker's ``finalize_scores`` for the
    same models, computed as ``(mean_m F_m @ mean_{z in g} G_m[z]) * mean_m Q_m``. Each list
    has one entry per model, an array or a .npy path (memory-mapped, read ``chunk_rows``
    training rows at a time). Returns float64 of shape (n_train,)."""
    features, q_mean, target_grads = _open_models(features, out_to_loss, target_grads)
    mask = np.asarray(target_mask)
    if mask.dtype != bool or mask.shape != (len(target_grads[0]),):
        raise ValueError(f"target_mask must be a bool array of shape ({len(target_grads[0])},), got {mask.dtype} {mask.shape}")
    if not mask.any():
        raise ValueError("target_mask selects no targets: tau(g) of an empty group is undefined")
    directions = [g[mask].astype(np.float64).mean(axis=0) for g in target_grads]
    return _ensemble_scores(features, q_mean, directions, chunk_rows)


def full_scores(
    features: Sequence[ArrayOrPath],
    out_to_loss: Sequence[ArrayOrPath],
    target_grads: Sequence[ArrayOrPath],
    target_index: Sequence[int] | np.ndarray,
    chunk_rows: int = 65536,
) -> np.ndarray:
    """Columns ``target_index`` of traker's score matrix: (n_train, len(target_index)).

    For per-example error analysis of a handful of targets; groups should use ``group_tau``."""
    features, q_mean, target_grads = _open_models(features, out_to_loss, target_grads)
    index = np.asarray(target_index, dtype=np.intp).reshape(-1)
    n_targets = len(target_grads[0])
    if ((index < 0) | (index >= n_targets)).any():
        raise ValueError(f"target_index must lie in [0, {n_targets}), got {index.tolist()}")
    directions = [g[index].astype(np.float64).T for g in target_grads]
    return _ensemble_scores(features, q_mean, directions, chunk_rows)


def _open_models(
    features: Sequence[ArrayOrPath],
    out_to_loss: Sequence[ArrayOrPath],
    target_grads: Sequence[ArrayOrPath],
) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """Open each model's arrays (features memory-mapped) and check that the shapes agree.

    Returns the features, the mean over models of out_to_loss (n_train,) and the target
    gradients."""
    if not (len(features) == len(out_to_loss) == len(target_grads)) or not features:
        raise ValueError(
            "need the same, non-zero number of features, out_to_loss and target_grads arrays "
            f"(one per model), got {len(features)}, {len(out_to_loss)}, {len(target_grads)}"
        )
    features = [_open(f, mmap=True) for f in features]
    out_to_loss = [_open(q, mmap=False).reshape(-1) for q in out_to_loss]
    target_grads = [_open(g, mmap=False) for g in target_grads]
    n_train, proj_dim = features[0].shape
    n_targets = len(target_grads[0])
    for m, (f, q, g) in enumerate(zip(features, out_to_loss, target_grads)):
        if f.shape != (n_train, proj_dim) or q.shape != (n_train,) or g.shape != (n_targets, proj_dim):
            raise ValueError(
                f"model {m}: features {f.shape}, out_to_loss {q.shape}, target_grads {g.shape} do not "
                f"match model 0's n_train={n_train}, proj_dim={proj_dim}, n_targets={n_targets}"
            )
    q_mean = np.mean([q.astype(np.float64) for q in out_to_loss], axis=0)
    return features, q_mean, target_grads


def _open(array: ArrayOrPath, *, mmap: bool) -> np.ndarray:
    if isinstance(array, (str, os.PathLike)):
        return np.load(array, mmap_mode="r" if mmap else None)
    return np.asarray(array)


def _ensemble_scores(
    features: list[np.ndarray],
    q_mean: np.ndarray,
    directions: list[np.ndarray],
    chunk_rows: int,
) -> np.ndarray:
    """``(mean_m F_m @ d_m) * q_mean`` row-wise, reading F_m ``chunk_rows`` rows at a time.

    ``d_m`` is (k,) or (k, j); the product is done in float32 like traker (so a memory-mapped
    chunk is not copied) and accumulated in float64."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    n_train = len(features[0])
    scores = np.zeros((n_train,) + directions[0].shape[1:], dtype=np.float64)
    for start in range(0, n_train, chunk_rows):
        rows = slice(start, start + chunk_rows)
        for f, d in zip(features, directions):
            scores[rows] += _read_rows(f, rows) @ d.astype(np.float32)
    scores /= len(features)
    scores *= q_mean.reshape((n_train,) + (1,) * (scores.ndim - 1))
    if not np.isfinite(scores).all():
        raise FloatingPointError("TRAK scores are not finite: check the featurize outputs")
    return scores


def _read_rows(array: np.ndarray, rows: slice) -> np.ndarray:
    """``array[rows]`` as float32. A memory-mapped .npy is read with a plain file read rather
    than through its mapping: mapped pages stay in the process's resident memory until the
    mapping closes, so slicing the mapping would make the whole n_train x k store resident."""
    if not (isinstance(array, np.memmap) and array.flags.c_contiguous):
        return np.asarray(array[rows], dtype=np.float32)
    start, stop, _ = rows.indices(len(array))
    row_items = int(np.prod(array.shape[1:]))
    with open(array.filename, "rb") as fh:
        fh.seek(array.offset + start * row_items * array.itemsize)
        chunk = np.fromfile(fh, dtype=array.dtype, count=(stop - start) * row_items)
    return chunk.reshape(stop - start, *array.shape[1:]).astype(np.float32, copy=False)


def tau_step(
    feature_paths: Sequence[str | os.PathLike],
    out_to_loss_paths: Sequence[str | os.PathLike],
    target_grad_paths: Sequence[str | os.PathLike],
    task_parquet: str | os.PathLike,
    base_predictions_parquet: str | os.PathLike,
    members_parquet: str | os.PathLike,
    group: str,
    out_parquet: str | os.PathLike,
    out_json: str | os.PathLike,
) -> None:
    """Snakemake job: tau(group) for every training row of one label's task, and the base
    model's validation loss on the group.

    Training rows are the task's ``split == "train"`` rows; the targets are its ``validate``
    rows then its ``test`` rows, in task order (the order the featurize jobs used), and tau
    averages over the group's validation targets only. The group's images are the image_index values of ``members_parquet`` (its group file).
    Writes ``out_parquet`` (image_index, dicom_id, tau; training rows in task order) and
    ``out_json`` {"group", "n_val", "val_loss", "n_models"}."""
    task = pd.read_parquet(task_parquet, columns=["image_index", "dicom_id", "split"])
    members = pd.read_parquet(members_parquet, columns=["image_index"])["image_index"]
    train = task[task["split"] == "train"]
    val = task[task["split"] == "validate"]
    n_test = int((task["split"] == "test").sum())
    group_mask = val["image_index"].isin(members).to_numpy()
    if not group_mask.any():
        # The reference code turns this into a NaN loss, NaN scores, and drops every example.
        raise ValueError(f"race group {group!r} has no validation images in {task_parquet}: tau(g) and l_g are undefined")
    _check_row_counts(feature_paths, out_to_loss_paths, len(train), target_grad_paths, len(val) + n_test, task_parquet)

    target_mask = np.concatenate([group_mask, np.zeros(n_test, dtype=bool)])
    tau = group_tau(feature_paths, out_to_loss_paths, target_grad_paths, target_mask)
    val_loss = _group_val_loss(base_predictions_parquet, val[group_mask], group)
    write_parquet(
        pd.DataFrame({"image_index": train["image_index"].to_numpy(), "dicom_id": train["dicom_id"].to_numpy(), "tau": tau}),
        out_parquet,
    )
    summary = {"group": group, "n_val": int(group_mask.sum()), "val_loss": val_loss, "n_models": len(feature_paths)}
    write_json(summary, out_json)
    log.info("tau for %s: %s; tau mean %.3g, min %.3g, max %.3g", group, summary, tau.mean(), tau.min(), tau.max())


def _check_row_counts(
    feature_paths: Sequence[str | os.PathLike],
    out_to_loss_paths: Sequence[str | os.PathLike],
    n_train: int,
    target_grad_paths: Sequence[str | os.PathLike],
    n_targets: int,
    task_parquet: str | os.PathLike,
) -> None:
    """Rows are matched by position, so a featurize output built from another task version
    must fail here rather than produce misaligned scores."""
    expected = [(p, n_train, "training") for p in [*feature_paths, *out_to_loss_paths]]
    expected += [(p, n_targets, "validation + test") for p in target_grad_paths]
    for path, n, split in expected:
        rows = np.load(path, mmap_mode="r").shape[0]
        if rows != n:
            raise ValueError(f"{path} has {rows} rows but {task_parquet} has {n} {split} rows")


def _group_val_loss(base_predictions_parquet: str | os.PathLike, group_val: pd.DataFrame, group: str) -> float:
    """l_g: the base model's mean cross-entropy loss over the group's validation images."""
    keys = ["image_index", "dicom_id"]
    predictions = pd.read_parquet(base_predictions_parquet, columns=[*keys, "split", "loss"])
    predictions = predictions[predictions["split"] == "validate"]
    merged = group_val[keys].merge(predictions[[*keys, "loss"]], on=keys, how="left", validate="one_to_one")
    losses = merged["loss"].to_numpy(dtype=np.float64)
    missing = ~np.isfinite(losses)
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} of {len(losses)} validation images of {group!r} have no finite "
            f"base-model loss in {base_predictions_parquet}"
        )
    return float(losses.mean())
