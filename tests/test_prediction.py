"""Predictions: output table, losses equal to cross-entropy by hand, eval mode."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from d3mflow.images import CachedImages
from d3mflow.models import build_model, load_checkpoint, save_checkpoint
from d3mflow.prediction import PREDICTION_COLUMNS, predict, predict_step

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
