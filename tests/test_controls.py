"""Controls and baselines: the training-row table of every method (random removes exactly
D3M's count, balance equalises groups, jtt upweights base errors) and Auto-D3M's pseudo-groups
and selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from d3mflow.scores import full_scores
from d3mflow.auto_d3m import auto_d3m_step, pseudo_groups
from d3mflow.controls import balanced_weights, jtt_weights, random_removal, training_rows_step

N_TRAIN = 40


@pytest.fixture
def inputs(tmp_path):
    """A task (40 train rows in shuffled image order, 10 validate), D3M's selection (9
    dropped), a cohort with race, and base predictions on every split."""
    rng = np.random.default_rng(0)
    image_index = np.concatenate([rng.permutation(N_TRAIN) + 100, np.arange(10) + 500])
    task = pd.DataFrame({"image_index": image_index, "split": ["train"] * N_TRAIN + ["validate"] * 10,
                         "y": rng.integers(0, 2, size=50)})
    task.to_parquet(tmp_path / "task.parquet")
    kept = np.ones(N_TRAIN, dtype=bool)
    kept[rng.choice(N_TRAIN, size=9, replace=False)] = False
    # The selection lists the training rows in another order than the task: rows match by image.
    pd.DataFrame({"image_index": image_index[:N_TRAIN], "kept": kept}).iloc[::-1].to_parquet(tmp_path / "selection.parquet")
    race = np.array(["White"] * 30 + ["Asian"] * 8 + ["Other"] * 2)
    pd.DataFrame({"image_index": image_index[:N_TRAIN], "race_group": race}).to_parquet(tmp_path / "cohort.parquet")
    pred = task.assign(pred=task["y"])
    pred.loc[:4, "pred"] = 1 - pred.loc[:4, "y"]  # five training errors
    pred.to_parquet(tmp_path / "base.parquet")
    return tmp_path, task, kept, race


def _rows(tmp_path, method, **kwargs) -> pd.DataFrame:
    training_rows_step(method, tmp_path / "task.parquet", tmp_path / f"{method}.parquet", seed=kwargs.pop("seed", 0), **kwargs)
    return pd.read_parquet(tmp_path / f"{method}.parquet")


def test_random_control_removes_exactly_as_many_as_d3m(inputs):
    tmp_path, task, kept, _ = inputs
    d3m = _rows(tmp_path, "d3m", selection_parquet=tmp_path / "selection.parquet")
    random = _rows(tmp_path, "random", selection_parquet=tmp_path / "selection.parquet")
    assert d3m["image_index"].tolist() == random["image_index"].tolist() == task["image_index"][:N_TRAIN].tolist()
    np.testing.assert_array_equal(d3m["weight"], kept.astype(float))
    assert (random["weight"] == 0).sum() == (d3m["weight"] == 0).sum() == 9
    assert set(random["weight"]) == {0.0, 1.0}
    other_seed = _rows(tmp_path, "random", selection_parquet=tmp_path / "selection.parquet", seed=1)
    assert (other_seed["weight"] == 0).sum() == 9 and not other_seed["weight"].equals(random["weight"])


def test_random_removal_is_seeded_and_uniform():
    np.testing.assert_array_equal(random_removal(100, 30, seed=4), random_removal(100, 30, seed=4))
    removed = np.mean([~random_removal(10, 3, seed=s) for s in range(3000)], axis=0)
    np.testing.assert_allclose(removed, 0.3, atol=0.04)
    with pytest.raises(ValueError, match="n_remove"):
        random_removal(10, 10, seed=0)


def test_balance_gives_every_group_the_same_total_weight(inputs):
    tmp_path, _, _, race = inputs
    rows = _rows(tmp_path, "balance", cohort_parquet=tmp_path / "cohort.parquet")
    totals = rows["weight"].groupby(race).sum()
    np.testing.assert_allclose(totals, N_TRAIN / 3)
    np.testing.assert_allclose(balanced_weights(["a", "a", "b"]), [0.75, 0.75, 1.5])


def test_jtt_upweights_the_base_models_training_errors(inputs):
    tmp_path, *_ = inputs
    rows = _rows(tmp_path, "jtt", base_predictions_parquet=tmp_path / "base.parquet", jtt_upweight=6)
    np.testing.assert_array_equal(rows["weight"], [6.0] * 5 + [1.0] * (N_TRAIN - 5))
    with pytest.raises(ValueError, match=">= 1"):
        jtt_weights(np.array([True]), 0.5)


def test_erm_keeps_everything_and_unknown_methods_fail(inputs):
    tmp_path, *_ = inputs
    assert (_rows(tmp_path, "erm")["weight"] == 1).all()
    with pytest.raises(ValueError, match="unknown method"):
        _rows(tmp_path, "dro")


def test_d3m_selection_must_cover_every_training_row(inputs):
    tmp_path, task, kept, _ = inputs
    pd.DataFrame({"image_index": task["image_index"][:10], "kept": kept[:10]}).to_parquet(tmp_path / "short.parquet")
    with pytest.raises(ValueError, match="lacks 30 of the 40 training rows"):
        _rows(tmp_path, "random", selection_parquet=tmp_path / "short.parquet")


def test_pseudo_groups_split_each_class_along_its_main_direction():
    """Hand-made scores over 4 training images: class 0 examples point at training images 0 or
    1, class 1 examples at 2 or 3. Each class must split into exactly those two clusters."""
    columns = [[5, 1, 0, 0], [4, 1, 0, 0], [1, 5, 0, 0],  # class 0
               [0, 0, 3, 1], [0, 0, 1, 3], [0, 0, 1, 4]]  # class 1
    scores = np.array(columns, dtype=float).T  # n_train x n_val
    y = np.array([0, 0, 0, 1, 1, 1])
    pseudo, projection = pseudo_groups(scores, y)
    assert set(pseudo[:3]) <= {0, 1} and set(pseudo[3:]) <= {2, 3}
    assert pseudo[0] == pseudo[1] != pseudo[2]
    assert pseudo[3] != pseudo[4] == pseudo[5]
    np.testing.assert_array_equal(pseudo, 2 * y + (projection > 0))
    # Scale does not matter (vectors are L2-normalised first).
    np.testing.assert_array_equal(pseudo_groups(scores * np.array([1, 10, 0.1, 3, 7, 2]), y)[0], pseudo)


def test_pseudo_groups_of_a_single_example_class_stay_whole():
    scores = np.random.default_rng(0).random((5, 4))
    pseudo, projection = pseudo_groups(scores, np.array([0, 0, 0, 1]))
    assert pseudo[3] == 2 and projection[3] == 0


def test_auto_d3m_step_selects_with_pseudo_group_alignment(tmp_path):
    rng = np.random.default_rng(0)
    n_train, n_val, k = 30, 12, 8
    task = pd.DataFrame({"image_index": np.arange(n_train + n_val), "dicom_id": [f"d{i}" for i in range(n_train + n_val)],
                         "split": ["train"] * n_train + ["validate"] * n_val, "y": np.arange(n_train + n_val) % 2})
    task.to_parquet(tmp_path / "task.parquet")
    arrays = {"features": rng.normal(size=(n_train, k)), "out_to_loss": rng.random(n_train),
              "target_grads": rng.normal(size=(n_val, k))}
    for name, array in arrays.items():
        np.save(tmp_path / f"{name}.npy", array.astype(np.float32))
    task.assign(loss=rng.random(len(task))).to_parquet(tmp_path / "base.parquet")
    paths = [[tmp_path / f"{name}.npy"] for name in arrays]
    auto_d3m_step(*paths, tmp_path / "task.parquet", tmp_path / "base.parquet", tmp_path / "sel.parquet",
                  tmp_path / "groups.parquet", beta=1.0, weighting="softmax", rule="heuristic")
    selection, groups = pd.read_parquet(tmp_path / "sel.parquet"), pd.read_parquet(tmp_path / "groups.parquet")
    assert selection["image_index"].tolist() == list(range(n_train))
    np.testing.assert_array_equal(selection["kept"], selection["A"] >= 0)
    assert len(groups) == n_val and set(groups["pseudo_group"]) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(groups["pseudo_group"] // 2, groups["y"])
    # tau of a pseudo-group is the mean score over its validation examples.
    scores = full_scores(*paths, np.arange(n_val))
    for g in set(groups["pseudo_group"]):
        np.testing.assert_allclose(selection[f"tau_pg{g}"], scores[:, groups["pseudo_group"] == g].mean(axis=1), rtol=1e-6)
