"""Group alignment scores against a hand-computed example.

Groups Asian, Black, White with validation losses l = (0, ln 2, ln 3), so
exp(l) = (1, 2, 3) and exp(2 l) = (1, 4, 9). tau (rows = training images):

            Asian  Black  White
    row 0     6      0      0
    row 1     0      3     -2
    row 2     1      1      1

softmax, beta=1: w = (1, 2, 3)/6   -> A = (1, 1 - 1, 1)            = (1, 0, 1)
softmax, beta=2: w = (1, 4, 9)/14  -> A = (6/14, 12/14 - 18/14, 1) = (3/7, -3/7, 1)
linear:          w = l/3 = (0, ln2/3, ln3/3)
                                   -> A = (0, ln2 - 2 ln3/3, (ln2 + ln3)/3)
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from d3mflow.alignment import alignment_scores, alignment_step, group_weights

GROUPS = ["Asian", "Black or African American", "White"]
LOSSES = pd.Series([0.0, np.log(2), np.log(3)], index=GROUPS)
TAU = pd.DataFrame({"Asian": [6.0, 0.0, 1.0], "Black or African American": [0.0, 3.0, 1.0], "White": [0.0, -2.0, 1.0]})


@pytest.mark.parametrize(
    "beta, weighting, weights, scores",
    [
        (1.0, "softmax", [1 / 6, 2 / 6, 3 / 6], [1.0, 0.0, 1.0]),
        (2.0, "softmax", [1 / 14, 4 / 14, 9 / 14], [3 / 7, -3 / 7, 1.0]),
        (1.0, "linear", [0.0, np.log(2) / 3, np.log(3) / 3], [0.0, np.log(2) - 2 * np.log(3) / 3, np.log(6) / 3]),
    ],
)
def test_hand_computed_example(beta, weighting, weights, scores):
    np.testing.assert_allclose(group_weights(LOSSES, beta=beta, weighting=weighting).to_numpy(), weights, atol=1e-15)
    np.testing.assert_allclose(alignment_scores(TAU, LOSSES, beta=beta, weighting=weighting), scores, atol=1e-12)


def test_losses_matched_to_tau_columns_by_name():
    np.testing.assert_allclose(alignment_scores(TAU, LOSSES[::-1]), [1.0, 0.0, 1.0], atol=1e-12)


def test_linear_beta_is_ignored_and_weights_do_not_sum_to_one():
    weights = group_weights(LOSSES, beta=5.0, weighting="linear")
    np.testing.assert_allclose(weights.to_numpy(), LOSSES.to_numpy() / 3)


def test_softmax_stable_for_large_losses():
    weights = group_weights(pd.Series([1000.0, 1001.0], index=["Asian", "White"]), beta=50.0)
    assert np.isfinite(weights).all()
    np.testing.assert_allclose(weights.to_numpy(), [np.exp(-50) / (1 + np.exp(-50)), 1 / (1 + np.exp(-50))])
    weights = group_weights(pd.Series([1000.0, 1001.0], index=["Asian", "White"]))
    np.testing.assert_allclose(weights.to_numpy(), [1 / (1 + np.e), np.e / (1 + np.e)])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_loss_rejected(bad):
    with pytest.raises(ValueError, match=r"not finite for groups \['White'\]"):
        group_weights(pd.Series([0.1, bad], index=["Asian", "White"]))


def test_missing_loss_rejected():
    with pytest.raises(ValueError, match="White"):
        alignment_scores(TAU, LOSSES.drop("White"))


def test_nan_tau_rejected():
    tau = TAU.copy()
    tau.loc[1, "Asian"] = np.nan
    with pytest.raises(ValueError, match="NaN values in groups \\['Asian'\\]"):
        alignment_scores(tau, LOSSES)


def test_unknown_weighting_and_empty_groups_rejected():
    with pytest.raises(ValueError, match="unknown weighting"):
        group_weights(LOSSES, weighting="max")
    with pytest.raises(ValueError, match="no groups"):
        group_weights(pd.Series([], dtype=float))


# ---- alignment_step ------------------------------------------------------------------


def write_group_files(tmp_path, tau=TAU, losses=LOSSES):
    parquets, jsons = {}, {}
    for group in tau.columns:
        parquets[group] = tmp_path / f"tau_{len(parquets)}.parquet"
        jsons[group] = tmp_path / f"tau_{len(jsons)}.json"
        rows = pd.DataFrame({"image_index": [7, 8, 9], "dicom_id": ["a", "b", "c"], "tau": tau[group]})
        rows.to_parquet(parquets[group])
        jsons[group].write_text(json.dumps({"group": group, "n_val": 4, "val_loss": losses[group], "n_models": 2}))
    return parquets, jsons


def test_alignment_step_output(tmp_path):
    parquets, jsons = write_group_files(tmp_path)
    reversed_order = dict(reversed(parquets.items()))  # column order must not depend on it
    alignment_step(reversed_order, jsons, tmp_path / "alignment.parquet", beta=2.0, weighting="softmax")
    out = pd.read_parquet(tmp_path / "alignment.parquet")
    assert list(out.columns) == [
        "image_index",
        "dicom_id",
        "tau_asian",
        "tau_black",
        "tau_white",
        "A",
        "weight_asian",
        "weight_black",
        "weight_white",
    ]
    assert out["image_index"].tolist() == [7, 8, 9]
    np.testing.assert_allclose(out["A"], [3 / 7, -3 / 7, 1.0], atol=1e-12)
    np.testing.assert_allclose(out["tau_white"], TAU["White"])
    np.testing.assert_allclose(out.loc[0, ["weight_asian", "weight_black", "weight_white"]].to_numpy(float), [1 / 14, 4 / 14, 9 / 14])
    assert (out["weight_white"] == out.loc[0, "weight_white"]).all()


def test_alignment_step_mismatched_rows(tmp_path):
    parquets, jsons = write_group_files(tmp_path)
    pd.DataFrame({"image_index": [7, 9, 8], "dicom_id": ["a", "c", "b"], "tau": [0.0, 0.0, 0.0]}).to_parquet(parquets["White"])
    with pytest.raises(ValueError, match="different training rows"):
        alignment_step(parquets, jsons, tmp_path / "alignment.parquet", beta=1.0, weighting="softmax")


def test_alignment_step_null_loss_and_wrong_json(tmp_path):
    parquets, jsons = write_group_files(tmp_path)
    jsons["White"].write_text(json.dumps({"group": "White", "val_loss": None}))
    with pytest.raises(ValueError, match="White"):
        alignment_step(parquets, jsons, tmp_path / "alignment.parquet", beta=1.0, weighting="softmax")
    swapped = {**jsons, "White": jsons["Asian"]}
    with pytest.raises(ValueError, match="is for group 'Asian', expected 'White'"):
        alignment_step(parquets, swapped, tmp_path / "alignment.parquet", beta=1.0, weighting="softmax")


def test_alignment_step_group_sets_must_match(tmp_path):
    parquets, jsons = write_group_files(tmp_path)
    with pytest.raises(ValueError, match="tau jsons"):
        alignment_step(parquets, {"Asian": jsons["Asian"]}, tmp_path / "a.parquet", beta=1.0, weighting="softmax")
    with pytest.raises(ValueError, match="no groups"):
        alignment_step({}, {}, tmp_path / "a.parquet", beta=1.0, weighting="softmax")
