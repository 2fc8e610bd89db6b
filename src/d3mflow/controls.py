"""Training-row tables of every continued-training method, and Auto-D3M's pseudo-groups.

Every method continues training from the same base checkpoint for the same number of epochs;
they differ only in their training-row table (image_index, weight) over the task's training
rows, written by ``training_rows_step`` (weight 0 = dropped; see ``training.train`` for how
weights are used):

- ``erm``: every image, weight 1.
- ``d3m``: the images D3M kept (``selection.parquet``), weight 1.
- ``random``: the control for D3M: exactly as many images as D3M removed for this label and
  seed, removed uniformly at random (seeded by the seed; see ``random_removal``).
- ``balance``: group-balanced resampling: weight n / (G n_g), so each of the G race groups in
  the training set is drawn equally often in expectation.
- ``jtt``: Just Train Twice: the base model's training errors (prediction != label) get weight
  ``jtt_upweight``, the rest 1.
- ``auto_d3m``: the images Auto-D3M kept (``d3mflow.auto_d3m``), weight 1: D3M on
  pseudo-groups found in the attribution scores, without race labels.

Only numpy and pandas are imported, so the many small jobs that build these tables start fast.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np
import pandas as pd

from .io import write_parquet

log = logging.getLogger(__name__)

METHODS = ("erm", "d3m", "random", "balance", "jtt", "auto_d3m")

# The random control's generator is seeded with (this key, seed), a stream of its own: the
# TRAK subsets use plain integer seeds, and sharing one would correlate the two draws.
RANDOM_CONTROL_KEY = 5


def random_removal(n_train: int, n_remove: int, seed: int) -> np.ndarray:
    """Keep mask with exactly ``n_remove`` of ``n_train`` images removed uniformly at random."""
    if not 0 <= n_remove < n_train:
        raise ValueError(f"n_remove must be in [0, {n_train}), got {n_remove}")
    kept = np.ones(n_train, dtype=bool)
    kept[np.random.default_rng([RANDOM_CONTROL_KEY, seed]).choice(n_train, size=n_remove, replace=False)] = False
    return kept


def balanced_weights(groups: Sequence[str]) -> np.ndarray:
    """Weight n / (G n_g) per image of group g (G groups present): every group's weights sum
    to n / G, so the groups are sampled equally often and the total weight stays n."""
    groups = pd.Series(np.asarray(groups))
    sizes = groups.map(groups.value_counts())
    return (len(groups) / (groups.nunique() * sizes)).to_numpy(dtype=np.float64)


def jtt_weights(errors: np.ndarray, upweight: float) -> np.ndarray:
    """Weight ``upweight`` for the base model's training errors, 1 for the rest."""
    if upweight < 1:
        raise ValueError(f"jtt upweight must be >= 1, got {upweight}")
    return np.where(np.asarray(errors, dtype=bool), float(upweight), 1.0)


def _aligned(train: pd.DataFrame, table_path: str | os.PathLike, column: str, split: str | None = None) -> np.ndarray:
    """``column`` of ``table_path`` for every training row, in ``train``'s order (optionally
    only the table's rows of ``split``); a training row the table lacks is an error."""
    table = pd.read_parquet(table_path)
    if split is not None:
        table = table[table["split"] == split]
    merged = train[["image_index"]].merge(table[["image_index", column]], on="image_index", how="left", validate="one_to_one")
    if merged[column].isna().any():
        raise ValueError(f"{table_path} lacks {int(merged[column].isna().sum())} of the {len(train)} training rows")
    return merged[column].to_numpy()


def method_weights(
    method: str,
    train: pd.DataFrame,
    *,
    seed: int,
    selection_parquet: str | os.PathLike | None = None,
    cohort_parquet: str | os.PathLike | None = None,
    base_predictions_parquet: str | os.PathLike | None = None,
    jtt_upweight: float | None = None,
) -> np.ndarray:
    """Weight of every training row (``train``: the task's training rows) under ``method``.

    ``selection_parquet`` is D3M's selection for d3m and random, Auto-D3M's for auto_d3m;
    balance needs ``cohort_parquet`` (race), jtt ``base_predictions_parquet`` (train split)."""
    if method == "erm":
        return np.ones(len(train))
    if method in ("d3m", "auto_d3m"):
        return _aligned(train, selection_parquet, "kept").astype(np.float64)
    if method == "random":
        n_removed = int((~_aligned(train, selection_parquet, "kept").astype(bool)).sum())
        return random_removal(len(train), n_removed, seed).astype(np.float64)
    if method == "balance":
        return balanced_weights(_aligned(train, cohort_parquet, "race_group"))
    if method == "jtt":
        errors = _aligned(train, base_predictions_parquet, "pred", split="train") != train["y"].to_numpy()
        return jtt_weights(errors, jtt_upweight)
    raise ValueError(f"unknown method {method!r}; expected one of {list(METHODS)}")


def training_rows_step(method: str, task_parquet: str | os.PathLike, out_parquet: str | os.PathLike, **inputs) -> None:
    """Snakemake job: the training-row table (image_index, weight) of ``method`` for one label
    and seed, over the task's training rows in task order; ``inputs`` as in ``method_weights``."""
    task = pd.read_parquet(task_parquet, columns=["image_index", "split", "y"])
    train = task[task["split"] == "train"].reset_index(drop=True)
    weights = method_weights(method, train, **inputs)
    write_parquet(pd.DataFrame({"image_index": train["image_index"].to_numpy(), "weight": weights}), out_parquet)
    log.info("%s: %d training rows, %d with weight 0, weights %.3g..%.3g", method, len(weights),
             int((weights == 0).sum()), weights.min(), weights.max())
