"""Training-image selection from alignment scores (the talk's get_debiased_train_indices)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from d3mflow.selection import select, selection_step


def test_heuristic_keeps_non_negative_scores():
    kept = select(np.array([0.5, -0.1, 0.0, -2.0, 3.0]))
    assert kept.tolist() == [True, False, True, False, True]
    assert kept.dtype == bool


def test_num_to_discard_drops_the_lowest():
    kept = select(np.array([0.5, -0.1, 0.0, -2.0, 3.0]), rule="num_to_discard", num_to_discard=2)
    assert kept.tolist() == [True, False, True, False, True]
    assert select(np.array([1.0, 2.0]), rule="num_to_discard", num_to_discard=0).all()


def test_num_to_discard_ties_broken_by_position():
    # Three images tie at 0; dropping 2 drops the first two of them.
    kept = select(np.array([1.0, 0.0, 0.0, 0.0, 2.0]), rule="num_to_discard", num_to_discard=2)
    assert kept.tolist() == [True, False, False, True, True]


def test_num_to_discard_matches_the_talks_code():
    """The talk: sorted(range(n), key=score)[num_to_discard:] (Python's sort is stable)."""
    scores = np.random.default_rng(0).integers(-3, 3, size=50).astype(float)
    talk = sorted(range(len(scores)), key=lambda i: scores[i])[10:]
    assert np.flatnonzero(select(scores, rule="num_to_discard", num_to_discard=10)).tolist() == sorted(talk)


@pytest.mark.parametrize(
    "num_to_discard, message",
    [(None, "needs num_to_discard"), (-1, r"in \[0, 3\)"), (3, r"in \[0, 3\)"), (4, r"in \[0, 3\)"), (1.5, "integer"), (True, "integer")],
)
def test_num_to_discard_errors(num_to_discard, message):
    with pytest.raises(ValueError, match=message):
        select(np.array([1.0, 2.0, 3.0]), rule="num_to_discard", num_to_discard=num_to_discard)


def test_nan_scores_rejected():
    with pytest.raises(ValueError, match="1 alignment scores are NaN"):
        select(np.array([1.0, np.nan]))


def test_unknown_rule_and_heuristic_with_count_rejected():
    with pytest.raises(ValueError, match="unknown selection rule"):
        select(np.array([1.0]), rule="top")
    with pytest.raises(ValueError, match="only used by rule='num_to_discard'"):
        select(np.array([1.0]), num_to_discard=1)


def test_selection_step(tmp_path):
    table = pd.DataFrame({"image_index": [1, 2, 3], "dicom_id": ["a", "b", "c"], "tau_white": [0.1, -0.2, 0.3], "A": [0.1, -0.2, 0.3]})
    table.to_parquet(tmp_path / "alignment.parquet")
    selection_step(tmp_path / "alignment.parquet", tmp_path / "selection.parquet", rule="heuristic")
    out = pd.read_parquet(tmp_path / "selection.parquet")
    pd.testing.assert_frame_equal(out.drop(columns="kept"), table)
    assert out["kept"].tolist() == [True, False, True]


def test_selection_step_refuses_to_keep_nothing(tmp_path):
    pd.DataFrame({"image_index": [1, 2], "dicom_id": ["a", "b"], "A": [-1.0, -0.5]}).to_parquet(tmp_path / "alignment.parquet")
    with pytest.raises(ValueError, match="keeps none of the 2"):
        selection_step(tmp_path / "alignment.parquet", tmp_path / "selection.parquet", rule="heuristic")
