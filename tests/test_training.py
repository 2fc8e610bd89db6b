"""Training: determinism, learning, row selection (subset, weights), weighted resampling, the
schedule, and the workflow step's outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from d3mflow.images import CachedImages
from d3mflow.models import build_model, load_checkpoint
from d3mflow.training import (
    TrainConfig,
    epoch_batches,
    lr_factor,
    row_weights,
    sampling_weights,
    select_rows,
    train,
    train_step,
    trak_model_step,
)

SIZE = 16
SPLITS = ["train"] * 48 + ["validate"] * 8 + ["test"] * 8


@pytest.fixture(autouse=True)
def one_thread():
    """One thread, as the workflow's jobs use: fast and free of oversubscription on shared CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pattern_cache(path, n: int, seed: int = 0) -> np.ndarray:
    """Noise images where label 1 has a bright square in the top-left corner; returns labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    pixels = rng.integers(0, 100, size=(n, SIZE, SIZE), dtype=np.uint8)
    pixels[labels == 1, 2:7, 2:7] = 250
    np.save(path, pixels)
    return labels


@pytest.fixture
def task(tmp_path):
    """A task parquet (64 rows: 48 train, 8 validate, 8 test) over a learnable cache."""
    n = len(SPLITS)
    labels = _pattern_cache(tmp_path / "cache.npy", n)
    table = pd.DataFrame({
        "image_index": np.arange(n),
        "dicom_id": [f"d{k}" for k in range(n)],
        "subject_id": 10000000 + np.arange(n),
        "study_id": 50000000 + np.arange(n),
        "split": SPLITS,
        "race_group": ["White", "Asian"] * (n // 2),
        "y": labels.astype(np.int8),
    })
    table.to_parquet(tmp_path / "task.parquet", index=False)
    return tmp_path / "task.parquet", tmp_path / "cache.npy"


def _train_once(cache, seed: int, epochs: int = 1):
    labels = np.load(cache).shape[0]
    dataset = CachedImages(cache, np.arange(labels), np.arange(labels) % 2)
    torch.manual_seed(seed)
    model = build_model("resnet9", width=4)
    history = train(model, dataset, TrainConfig(epochs=epochs, batch_size=16, seed=seed), torch.device("cpu"))
    return model, history


def test_same_seed_same_weights_different_seed_different(task):
    _, cache = task
    first, _ = _train_once(cache, seed=3)
    second, _ = _train_once(cache, seed=3)
    other, _ = _train_once(cache, seed=4)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert any(not torch.equal(v, other.state_dict()[k]) for k, v in first.state_dict().items())


def test_training_learns_a_trivial_pattern(task):
    _, cache = task
    model, history = _train_once(cache, seed=0, epochs=8)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["accuracy"] >= 0.9
    assert [h["epoch"] for h in history] == list(range(1, 9))
    assert all(h["n"] == 64 and h["seconds"] > 0 for h in history)


def test_lr_schedule_warms_up_then_decays_to_zero():
    factors = [lr_factor(s, 50) for s in range(50)]
    peak = int(np.argmax(factors))
    assert factors[0] < 0.2 and factors[peak] == 1.0
    assert np.all(np.diff(factors[: peak + 1]) > 0) and np.all(np.diff(factors[peak:]) < 0)
    assert 0 < factors[-1] < 0.05
    assert lr_factor(0, 1) == 1.0


def test_epoch_batches_cover_every_row_once_and_never_leave_a_single_example():
    batches = epoch_batches(33, 16, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [16, 17]
    assert sorted(torch.cat(batches).tolist()) == list(range(33))


def test_weighted_epoch_draws_with_replacement_in_proportion_to_the_weights():
    weights = torch.tensor([0.0, 1.0, 3.0])
    drawn = torch.cat(epoch_batches(3000, 64, torch.Generator().manual_seed(0), weights))
    counts = torch.bincount(drawn, minlength=3).double() / len(drawn)
    assert counts[0] == 0 and counts[2] / counts[1] == pytest.approx(3.0, rel=0.1)


def test_subset_is_seeded_and_of_the_requested_size():
    weights = np.ones(100)
    rows = select_rows(weights, subset_fraction=0.5, subset_seed=7)
    expected = np.sort(np.random.default_rng(7).choice(np.arange(100), size=50, replace=False))
    np.testing.assert_array_equal(rows, expected)
    assert not np.array_equal(rows, select_rows(weights, subset_fraction=0.5, subset_seed=8))
    np.testing.assert_array_equal(select_rows(weights), np.arange(100))


def test_zero_weight_rows_are_dropped_and_equal_weights_mean_plain_shuffling():
    index = np.array([3, 5, 8, 13, 21])
    table = pd.DataFrame({"image_index": [21, 3, 8, 5, 13], "weight": [1.0, 0.0, 1.0, 1.0, 0.0]})
    weights = row_weights(index, table)
    np.testing.assert_array_equal(weights, [0, 1, 1, 0, 1])
    np.testing.assert_array_equal(select_rows(weights), [1, 2, 4])
    assert sampling_weights(weights[select_rows(weights)]) is None
    np.testing.assert_array_equal(sampling_weights(np.array([1.0, 5.0])), [1.0, 5.0])


@pytest.mark.parametrize(
    "table_index", [[3, 5, 8, 13], [3, 5, 8, 13, 22], [3, 5, 8, 13, 21, 21]], ids=["missing", "other", "duplicate"]
)
def test_row_table_must_match_training_rows(table_index):
    table = pd.DataFrame({"image_index": table_index, "weight": 1.0})
    with pytest.raises(ValueError, match="does not match"):
        row_weights(np.array([3, 5, 8, 13, 21]), table)


@pytest.mark.parametrize("weights", [[1, -1, 1, 1, 1], [0, 0, 0, 0, 0], [1, np.nan, 1, 1, 1]])
def test_row_weights_must_be_finite_non_negative_and_not_all_zero(weights):
    table = pd.DataFrame({"image_index": [3, 5, 8, 13, 21], "weight": np.array(weights, dtype=float)})
    with pytest.raises(ValueError, match="finite and >= 0"):
        row_weights(np.array([3, 5, 8, 13, 21]), table)


def test_train_step_writes_checkpoint_history_and_epoch_checkpoints(task, tmp_path):
    task_parquet, cache = task
    cfg = TrainConfig(epochs=2, batch_size=16, seed=1)
    common = dict(arch="resnet9", width=4, pretrained=False, weights_path=None, cfg=cfg)
    train_step(task_parquet, cache, tmp_path / "base.pt", tmp_path / "base.json", subset_fraction=0.5,
               subset_seed=2, epoch_ckpt_dir=tmp_path / "epochs", **common)
    history = json.loads((tmp_path / "base.json").read_text())
    assert [h["n"] for h in history] == [24, 24]  # half of the 48 training rows
    _, meta = load_checkpoint(tmp_path / "base.pt")
    assert meta["n_train"] == 24 and meta["n_train_rows"] == 48 and meta["epochs_total"] == 2
    assert meta["device"] == "cpu" and meta["rows"] is None and meta["init"] is None
    assert meta["subset"] == {"fraction": 0.5, "seed": 2}
    assert meta["cfg"]["seed"] == 1 and meta["final_train_loss"] == history[-1]["loss"]
    assert sorted(p.name for p in (tmp_path / "epochs").iterdir()) == ["epoch_1.pt", "epoch_2.pt"]
    final, _ = load_checkpoint(tmp_path / "base.pt")
    last_epoch, _ = load_checkpoint(tmp_path / "epochs" / "epoch_2.pt")
    for key, value in final.state_dict().items():
        assert torch.equal(value, last_epoch.state_dict()[key])

    # Continued training on the rows with weight 1 only (the D3M phase).
    rows = pd.DataFrame({"image_index": np.arange(48), "weight": (np.arange(48) % 3 != 0).astype(float)})
    rows.to_parquet(tmp_path / "rows.parquet", index=False)
    train_step(task_parquet, cache, tmp_path / "d3m.pt", tmp_path / "d3m.json", init_ckpt=tmp_path / "base.pt",
               rows_parquet=tmp_path / "rows.parquet", **{**common, "cfg": TrainConfig(epochs=1, batch_size=16)})
    _, meta = load_checkpoint(tmp_path / "d3m.pt")
    assert meta["n_train"] == 32 and meta["epochs_total"] == 3
    assert meta["rows"] == {"n_dropped": 16, "resampled": False}
    assert meta["init"] == {"epochs_total": 2, "final_train_loss": history[-1]["loss"]}
    assert str(tmp_path) not in json.dumps(meta)  # no label-naming paths in the meta

    # ...and it trained on exactly the kept rows: replaying by hand gives the same weights.
    task_table = pd.read_parquet(task_parquet)
    dataset = CachedImages(cache, task_table["image_index"].to_numpy(), task_table["y"].to_numpy())
    replay, _ = load_checkpoint(tmp_path / "base.pt")
    train(replay, dataset, TrainConfig(epochs=1, batch_size=16), torch.device("cpu"),
          train_rows=np.flatnonzero(np.arange(64) % 3 != 0)[:32])
    d3m, _ = load_checkpoint(tmp_path / "d3m.pt")
    for key, value in replay.state_dict().items():
        assert torch.equal(value, d3m.state_dict()[key]), key


def test_train_step_resamples_unequal_weights(task, tmp_path):
    task_parquet, cache = task
    rows = pd.DataFrame({"image_index": np.arange(48), "weight": np.where(np.arange(48) < 8, 5.0, 1.0)})
    rows.to_parquet(tmp_path / "rows.parquet", index=False)
    train_step(task_parquet, cache, tmp_path / "m.pt", tmp_path / "h.json", arch="resnet9", width=4,
               pretrained=False, weights_path=None, cfg=TrainConfig(epochs=1, batch_size=16),
               rows_parquet=tmp_path / "rows.parquet")
    _, meta = load_checkpoint(tmp_path / "m.pt")
    assert meta["n_train"] == 48 and meta["rows"] == {"n_dropped": 0, "resampled": True}


def test_train_step_rejects_row_table_of_other_rows(task, tmp_path):
    task_parquet, cache = task
    pd.DataFrame({"image_index": np.arange(56), "weight": 1.0}).to_parquet(tmp_path / "rows.parquet")
    with pytest.raises(ValueError, match="does not match"):
        train_step(task_parquet, cache, tmp_path / "m.pt", tmp_path / "h.json", arch="resnet9", width=4,
                   pretrained=False, weights_path=None, cfg=TrainConfig(epochs=1),
                   rows_parquet=tmp_path / "rows.parquet")
    assert not (tmp_path / "m.pt").exists()


def test_continuing_a_different_architecture_is_an_error(task, tmp_path):
    task_parquet, cache = task
    args = dict(pretrained=False, weights_path=None, cfg=TrainConfig(epochs=1, batch_size=16))
    train_step(task_parquet, cache, tmp_path / "w4.pt", tmp_path / "h.json", arch="resnet9", width=4, **args)
    with pytest.raises(ValueError, match="width 4"):
        train_step(task_parquet, cache, tmp_path / "w8.pt", tmp_path / "h8.json", arch="resnet9", width=8,
                   init_ckpt=tmp_path / "w4.pt", **args)


def test_trak_model_step_from_subsets_and_from_base_checkpoints(task, tmp_path):
    task_parquet, cache = task
    model_cfg = dict(arch="resnet9", width=4, pretrained=False, weights_path=None)
    train_cfg = dict(epochs=1, batch_size=16, lr=0.05, momentum=0.9, weight_decay=5e-4, seed=5)
    trak_model_step(tmp_path / "m0.pt", tmp_path / "m0.json", source="subsets", model=model_cfg,
                    task_parquet=task_parquet, cache=cache, subset_fraction=0.25, subset_seed=9, train=train_cfg)
    _, meta = load_checkpoint(tmp_path / "m0.pt")
    assert meta["n_train"] == 12 and meta["subset"] == {"fraction": 0.25, "seed": 9} and meta["cfg"]["seed"] == 5

    (tmp_path / "epochs").mkdir()
    (tmp_path / "epochs" / "epoch_3.pt").write_bytes((tmp_path / "m0.pt").read_bytes())
    trak_model_step(tmp_path / "m1.pt", tmp_path / "m1.json", source="base_checkpoints", model=model_cfg,
                    epochs_dir=tmp_path / "epochs", epoch=3)
    assert (tmp_path / "m1.pt").read_bytes() == (tmp_path / "m0.pt").read_bytes()
    assert json.loads((tmp_path / "m1.json").read_text()) == []
    with pytest.raises(FileNotFoundError, match="epoch_4.pt"):
        trak_model_step(tmp_path / "m2.pt", tmp_path / "m2.json", source="base_checkpoints", model=model_cfg,
                        epochs_dir=tmp_path / "epochs", epoch=4)
