"""Predictions (output table, losses equal to cross-entropy by hand) and per-group accuracy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from d3mflow.evaluation import (
    OVERALL,
    PREDICTION_COLUMNS,
    accuracy_by_group,
    metrics_step,
    predict,
    predict_step,
    worst_group,
)
from d3mflow.images import CachedImages
from d3mflow.models import build_model, load_checkpoint, save_checkpoint
from d3mflow.names import RACE_GROUPS

N = 30
SIZE = 16


@pytest.fixture
def setup(tmp_path):
    """A random cache, a task with all three splits, and an untrained ResNet-9 checkpoint."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "cache.npy", rng.integers(0, 256, size=(N, SIZE, SIZE), dtype=np.uint8))
    task = pd.DataFrame({
        "image_index": np.arange(N),
        "dicom_id": [f"d{k}" for k in range(N)],
        "subject_id": 10000000 + np.arange(N),
        "study_id": 50000000 + np.arange(N),
        "split": np.array(["train", "validate", "test"])[np.arange(N) % 3],
        "y": rng.integers(0, 2, size=N).astype(np.int8),
    })
    task.to_parquet(tmp_path / "task.parquet", index=False)
    torch.manual_seed(0)
    model = build_model("resnet9", width=4)
    # Scale the logits up so that predictions are far from 0.5 and losses differ visibly.
    with torch.no_grad():
        model[-2].weight.mul_(500)
    save_checkpoint(model, tmp_path / "m.pt", arch="resnet9", width=4, meta={})
    return tmp_path, task


def test_predict_step_schema_order_and_hand_computed_loss(setup):
    tmp_path, task = setup
    predict_step(tmp_path / "m.pt", tmp_path / "task.parquet", tmp_path / "cache.npy", tmp_path / "pred.parquet")
    out = pd.read_parquet(tmp_path / "pred.parquet")
    assert tuple(out.columns) == PREDICTION_COLUMNS
    expected = task[task["split"] != "train"]
    assert out["image_index"].tolist() == expected["image_index"].tolist()
    assert out["dicom_id"].tolist() == expected["dicom_id"].tolist()

    model, _ = load_checkpoint(tmp_path / "m.pt")
    images = (torch.from_numpy(np.load(tmp_path / "cache.npy")[out["image_index"]]).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        logits = model(images.unsqueeze(1)).double()
    log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    hand_loss = -log_probs[torch.arange(len(out)), torch.tensor(out["y"].to_numpy(), dtype=torch.long)]
    np.testing.assert_allclose(out["loss"], hand_loss.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["p"], log_probs[:, 1].exp().numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(out["pred"], logits.argmax(dim=1).numpy())
    assert out["loss"].std() > 0.1


def test_predict_step_other_splits(setup):
    tmp_path, _ = setup
    predict_step(tmp_path / "m.pt", tmp_path / "task.parquet", tmp_path / "cache.npy", tmp_path / "p.parquet",
                 splits=("train",))
    assert set(pd.read_parquet(tmp_path / "p.parquet")["split"]) == {"train"}
    with pytest.raises(ValueError, match="no rows"):
        predict_step(tmp_path / "m.pt", tmp_path / "task.parquet", tmp_path / "cache.npy", tmp_path / "q.parquet",
                     splits=("holdout",))


def test_predict_does_not_depend_on_batch_size_and_uses_eval_mode(setup):
    tmp_path, task = setup
    model, _ = load_checkpoint(tmp_path / "m.pt")
    model.train()
    data = CachedImages(tmp_path / "cache.npy", task["image_index"].to_numpy(), task["y"].to_numpy())
    p_small, loss_small = predict(model, data, torch.device("cpu"), batch_size=7)
    p_big, loss_big = predict(model, data, torch.device("cpu"), batch_size=256)
    assert not model.training
    np.testing.assert_allclose(p_small, p_big, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(loss_small, loss_big, rtol=1e-5, atol=1e-7)


def test_accuracy_by_group_hand_computed():
    predictions = pd.DataFrame({
        "y":    [1, 0, 1, 1, 0, 0, 1],
        "pred": [1, 0, 0, 1, 1, 0, 1],
        "race_group": ["White", "White", "White", "Asian", "Asian", "Other", "Other"],
    })
    metrics = accuracy_by_group(predictions).set_index("group")
    assert list(metrics.index) == [*RACE_GROUPS, OVERALL]
    assert metrics.loc["White", "n"] == 3 and metrics.loc["White", "accuracy"] == pytest.approx(2 / 3)
    assert metrics.loc["Asian", "accuracy"] == pytest.approx(0.5)
    assert metrics.loc["Other", "accuracy"] == 1.0
    assert metrics.loc["Unknown", "n"] == 0 and np.isnan(metrics.loc["Unknown", "accuracy"])
    assert metrics.loc[OVERALL, "n"] == 7 and metrics.loc[OVERALL, "correct"] == 5
    # Groups without test images cannot be the worst group.
    assert worst_group(metrics.reset_index()) == ("Asian", 0.5)


def test_worst_group_needs_a_group_with_images():
    empty = accuracy_by_group(pd.DataFrame({"y": [], "pred": [], "race_group": []}))
    with pytest.raises(ValueError, match="no race group has test images"):
        worst_group(empty)


def test_metrics_step_takes_race_from_the_cohort(setup, tmp_path):
    tmp_path, task = setup
    predict_step(tmp_path / "m.pt", tmp_path / "task.parquet", tmp_path / "cache.npy", tmp_path / "pred.parquet",
                 splits=("test",))
    groups = np.array(["White", "Asian"])[np.arange(N) % 2]
    pd.DataFrame({"image_index": np.arange(N), "race_group": groups}).to_parquet(tmp_path / "cohort.parquet")
    metrics_step(tmp_path / "pred.parquet", tmp_path / "cohort.parquet", tmp_path / "acc.csv")
    metrics = pd.read_csv(tmp_path / "acc.csv").set_index("group")
    pred = pd.read_parquet(tmp_path / "pred.parquet")
    white = pred[pred["image_index"] % 2 == 0]
    assert metrics.loc["White", "n"] == len(white)
    assert metrics.loc["White", "accuracy"] == pytest.approx((white["y"] == white["pred"]).mean())
    pd.DataFrame({"image_index": [0], "race_group": ["White"]}).to_parquet(tmp_path / "partial.parquet")
    with pytest.raises(ValueError, match="not in the cohort"):
        metrics_step(tmp_path / "pred.parquet", tmp_path / "partial.parquet", tmp_path / "acc2.csv")
