"""Choose the training images D3M keeps, from their group alignment scores A.

Mirrors the talk's ``get_debiased_train_indices``: the heuristic keeps every image with
A_i >= 0; otherwise the ``num_to_discard`` lowest-scoring images are dropped. Unlike that
code, NaN scores and a ``num_to_discard`` that would empty the training set are errors.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from .io import write_parquet

log = logging.getLogger(__name__)

RULES = ("heuristic", "num_to_discard")


def select(scores: np.ndarray, rule: str = "heuristic", num_to_discard: int | None = None) -> np.ndarray:
    """Boolean mask of the training images to keep.

    ``"heuristic"``: keep A_i >= 0 (``num_to_discard`` must be None, so a configured count is
    never silently ignored). ``"num_to_discard"``: drop the ``num_to_discard`` lowest scores,
    ties broken by position (the earlier image is dropped first)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} alignment scores are NaN")
    if rule == "heuristic":
        if num_to_discard is not None:
            raise ValueError(f"num_to_discard={num_to_discard} is only used by rule='num_to_discard'")
        return scores >= 0
    if rule == "num_to_discard":
        _check_num_to_discard(num_to_discard, len(scores))
        kept = np.ones(len(scores), dtype=bool)
        kept[np.argsort(scores, kind="stable")[:num_to_discard]] = False
        return kept
    raise ValueError(f"unknown selection rule {rule!r}; expected one of {list(RULES)}")


def _check_num_to_discard(num_to_discard: int | None, n: int) -> None:
    if num_to_discard is None:
        raise ValueError("rule='num_to_discard' needs num_to_discard")
    if isinstance(num_to_discard, bool) or not isinstance(num_to_discard, (int, np.integer)):
        raise ValueError(f"num_to_discard must be an integer, got {num_to_discard!r}")
    if not 0 <= num_to_discard < n:
        raise ValueError(f"num_to_discard must be in [0, {n}) for {n} training images, got {num_to_discard}")


def selection_step(
    alignment_parquet: str | os.PathLike,
    out_parquet: str | os.PathLike,
    *,
    rule: str,
    num_to_discard: int | None = None,
) -> None:
    """Snakemake job: add a boolean ``kept`` column to the alignment table (all its columns
    are kept) and write it to ``out_parquet``."""
    table = pd.read_parquet(alignment_parquet)
    kept = select(table["A"].to_numpy(), rule=rule, num_to_discard=num_to_discard)
    if not kept.any():
        raise ValueError(f"rule {rule!r} keeps none of the {len(kept)} training images in {alignment_parquet}")
    table["kept"] = kept
    write_parquet(table, out_parquet)
    log.info("selection (%s): kept %d, dropped %d of %d training images", rule, int(kept.sum()), int((~kept).sum()), len(kept))
