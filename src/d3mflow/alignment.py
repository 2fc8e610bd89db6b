"""D3M group alignment scores: how much each training image helps the worst-off groups.

The talk's score (beta = 1 there) is

    A_i = sum_g exp(beta * l_g) * tau(g)_i / sum_g' exp(beta * l_g'),

the gradient of a smooth maximum of the group validation losses l_g, so A_i > 0 means keeping
image i helps the groups the base model serves worst. ``weighting="linear"`` instead gives the
public D3M reference code's score, A_i = mean_g l_g * tau(g)_i, i.e. weights l_g / G that are
not normalised and have no beta: it is NOT the talk's formula and is offered for comparison.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Mapping

import numpy as np
import pandas as pd

from .io import write_parquet
from .names import RACE_GROUPS, group_slug

log = logging.getLogger(__name__)

WEIGHTINGS = ("softmax", "linear")


def group_weights(losses: pd.Series, beta: float = 1.0, weighting: str = "softmax") -> pd.Series:
    """Weight of each group (index: group name) given its validation loss l_g.

    ``"softmax"``: softmax(beta * l) (the talk), computed with the maximum subtracted so
    large losses or beta do not overflow. ``"linear"``: l_g / G (the reference code)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {list(WEIGHTINGS)}")
    if losses.empty:
        raise ValueError("no groups to weight")
    values = losses.to_numpy(dtype=np.float64)
    bad = losses.index[~np.isfinite(values)].tolist()
    if bad:
        raise ValueError(f"validation loss is missing or not finite for groups {bad}")
    if not np.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta}")
    if weighting == "linear":
        weights = values / len(values)
    else:
        logits = beta * values
        exp = np.exp(logits - logits.max())
        weights = exp / exp.sum()
    return pd.Series(weights, index=losses.index, name="weight")


def alignment_scores(tau: pd.DataFrame, losses: pd.Series, beta: float = 1.0, weighting: str = "softmax") -> np.ndarray:
    """A_i = sum_g w_g tau(g)_i, with ``tau`` n_train x groups (columns: group names) and
    ``losses`` indexed by the same groups."""
    missing = sorted(set(tau.columns) ^ set(losses.index))
    if missing:
        raise ValueError(f"groups {missing} have a tau column or a loss but not both")
    if tau.isna().to_numpy().any():
        raise ValueError(f"tau has NaN values in groups {tau.columns[tau.isna().any()].tolist()}")
    weights = group_weights(losses, beta=beta, weighting=weighting)
    return tau[weights.index].to_numpy(dtype=np.float64) @ weights.to_numpy()


def alignment_step(
    tau_parquets: Mapping[str, str | os.PathLike],
    tau_jsons: Mapping[str, str | os.PathLike],
    out_parquet: str | os.PathLike,
    *,
    beta: float,
    weighting: str,
) -> None:
    """Snakemake job: combine one label's per-group tau files into alignment scores.

    ``tau_parquets`` / ``tau_jsons`` map group name -> the outputs of
    ``scores.tau_step``. Writes ``out_parquet`` with columns image_index, dicom_id,
    ``tau_<slug>`` per group, ``A``, and ``weight_<slug>`` per group: the weight w_g repeated
    on every row, so the weights travel with the scores in a plain table."""
    if not tau_parquets:
        raise ValueError("no groups given")
    if set(tau_parquets) != set(tau_jsons):
        raise ValueError(f"tau parquets for {sorted(tau_parquets)} but tau jsons for {sorted(tau_jsons)}")
    groups = sorted(tau_parquets, key=_group_order)
    rows, tau = _read_taus(tau_parquets, groups)
    losses = pd.Series({g: _read_loss(tau_jsons[g], g) for g in groups}, dtype=np.float64)

    weights = group_weights(losses, beta=beta, weighting=weighting)
    for g in groups:
        log.info("group %-26s l_g = %.4f  w_g = %.4f", g, losses[g], weights[g])
    scores = alignment_scores(tau, losses, beta=beta, weighting=weighting)

    out = rows.copy()
    for g in groups:
        out[f"tau_{group_slug(g)}"] = tau[g].to_numpy()
    out["A"] = scores
    for g in groups:
        out[f"weight_{group_slug(g)}"] = weights[g]
    write_parquet(out, out_parquet)
    log.info("alignment (%s, beta=%g): %d of %d training images have A >= 0", weighting, beta, int((scores >= 0).sum()), len(scores))


def _group_order(group: str) -> int:
    """Groups in the canonical RACE_GROUPS order, so output columns do not depend on dict order."""
    group_slug(group)  # raises a clear error for an unknown group
    return RACE_GROUPS.index(group)


def _read_taus(tau_parquets: Mapping[str, str | os.PathLike], groups: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The shared (image_index, dicom_id) rows and the n_train x groups tau table.

    Every group's file must list the same training images in the same order, since the
    scores are combined by position."""
    rows = None
    tau = {}
    for g in groups:
        df = pd.read_parquet(tau_parquets[g], columns=["image_index", "dicom_id", "tau"])
        if rows is None:
            rows = df[["image_index", "dicom_id"]].reset_index(drop=True)
        elif not df[["image_index", "dicom_id"]].reset_index(drop=True).equals(rows):
            raise ValueError(f"{tau_parquets[g]} ({g}) lists different training rows from {tau_parquets[groups[0]]} ({groups[0]})")
        tau[g] = df["tau"].to_numpy(dtype=np.float64)
    return rows, pd.DataFrame(tau)


def _read_loss(tau_json: str | os.PathLike, group: str) -> float:
    with open(tau_json) as f:
        summary = json.load(f)
    if summary.get("group") != group:
        raise ValueError(f"{tau_json} is for group {summary.get('group')!r}, expected {group!r}")
    loss = summary.get("val_loss")
    return np.nan if loss is None else float(loss)
