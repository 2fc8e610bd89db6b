"""TRAK featurization and group attribution, checked against traker run end to end.

The reference is traker's own multi-model pipeline (2 models in one save_dir, scored and
finalized by ``finalize_scores``); our per-model jobs plus ``group_tau`` must reproduce its
column means, which checks both the linearity shortcut and the ensembling over models."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from d3mflow.names import group_slug
import torch
from torch.utils.data import DataLoader, TensorDataset
from trak import TRAKer

from d3mflow.attribution import featurize, featurize_to_files, traker_projector_seed
from d3mflow.scores import full_scores, group_tau, tau_step

N_TRAIN = 160  # must be >= PROJ_DIM, or X^T X is singular
N_TARGETS = 12
PROJ_DIM = 128
BATCH = 16


def tiny_net(seed: int) -> torch.nn.Module:
    """826-parameter CNN with a 2-logit head (more parameters than PROJ_DIM)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 2),
    )


def loader(n: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=generator)
    y = torch.randint(0, 2, (n,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)


TRAIN = loader(N_TRAIN, seed=1)
TARGETS = loader(N_TARGETS, seed=2)


def run_featurize(model, workdir, **kwargs):
    kwargs = {"n_train": N_TRAIN, "n_targets": N_TARGETS, "proj_dim": PROJ_DIM, "workdir": workdir, **kwargs}
    return featurize(model, TRAIN, TARGETS, **kwargs)


def traker_end_to_end(models, save_dir) -> np.ndarray:
    """traker's own ensemble: every model featurized and scored in one save_dir."""
    traker = TRAKer(
        model=tiny_net(99),
        task="image_classification",
        train_set_size=N_TRAIN,
        save_dir=str(save_dir),
        device="cpu",
        proj_dim=PROJ_DIM,
        use_half_precision=False,
        logging_level=logging.WARNING,
    )
    for model_id, model in enumerate(models):
        traker.load_checkpoint(model.state_dict(), model_id=model_id)
        for x, y in TRAIN:
            traker.featurize((x, y), num_samples=len(x))
    traker.finalize_features()
    for model_id, model in enumerate(models):
        traker.start_scoring_checkpoint("ref", model.state_dict(), model_id=model_id, num_targets=N_TARGETS)
        for x, y in TARGETS:
            traker.score((x, y), num_samples=len(x))
    return np.array(traker.finalize_scores("ref"), dtype=np.float64)


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """Our per-model featurize outputs for 2 models, and traker's end-to-end scores."""
    models = [tiny_net(10), tiny_net(11)]
    workdir = tmp_path_factory.mktemp("work")
    ours = [run_featurize(m, workdir, projector_seed=traker_projector_seed(i)) for i, m in enumerate(models)]
    reference_dir = tmp_path_factory.mktemp("reference")
    scores = traker_end_to_end(models, reference_dir)
    return {
        "models": models,
        "features": [o["features"] for o in ours],
        "out_to_loss": [o["out_to_loss"] for o in ours],
        "target_grads": [o["target_grads"] for o in ours],
        "scores": scores,
        "reference_dir": reference_dir,
        "workdir": workdir,
    }


def assert_scores_close(actual, expected):
    # Relative to the score scale: column means can cancel to values near zero.
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def arrays(ensemble):
    return ensemble["features"], ensemble["out_to_loss"], ensemble["target_grads"]


def test_featurize_shapes_and_workdir_cleanup(ensemble):
    assert ensemble["features"][0].shape == (N_TRAIN, PROJ_DIM)
    assert ensemble["out_to_loss"][0].shape == (N_TRAIN,)
    assert ensemble["target_grads"][0].shape == (N_TARGETS, PROJ_DIM)
    assert ensemble["features"][0].dtype == np.float32
    assert list(ensemble["workdir"].iterdir()) == []  # the traker save_dirs were temporary


def test_per_model_jobs_reproduce_traker_features(ensemble):
    """traker_projector_seed gives model i the projection traker gives model_id i."""
    for model_id, features in enumerate(ensemble["features"]):
        reference = np.load(ensemble["reference_dir"] / str(model_id) / "features.mmap")
        np.testing.assert_allclose(features, reference, rtol=1e-5, atol=1e-7 * np.abs(reference).max())


@pytest.mark.parametrize("targets", [[0, 3, 4, 9], [7], list(range(N_TARGETS))])
def test_group_tau_equals_mean_of_traker_scores(ensemble, targets):
    mask = np.zeros(N_TARGETS, dtype=bool)
    mask[targets] = True
    tau = group_tau(*arrays(ensemble), mask)
    assert_scores_close(tau, ensemble["scores"][:, mask].mean(axis=1))


def test_group_tau_reads_npy_paths(ensemble, tmp_path):
    paths = {}
    for name, per_model in zip(["features", "out_to_loss", "target_grads"], arrays(ensemble)):
        paths[name] = []
        for m, a in enumerate(per_model):
            np.save(tmp_path / f"{name}_{m}.npy", a)
            paths[name].append(tmp_path / f"{name}_{m}.npy")
    mask = np.arange(N_TARGETS) % 2 == 0
    from_paths = group_tau(paths["features"], paths["out_to_loss"], paths["target_grads"], mask)
    np.testing.assert_array_equal(from_paths, group_tau(*arrays(ensemble), mask))


def test_full_scores_equal_traker_columns(ensemble):
    index = [0, 5, 11]
    assert_scores_close(full_scores(*arrays(ensemble), index), ensemble["scores"][:, index])


def test_chunked_equals_unchunked(ensemble):
    # Products are float32 (like traker), and BLAS rounding depends on the block shape, so
    # the chunking only has to agree to float32 precision of the score scale.
    mask = np.arange(N_TARGETS) < 5
    unchunked = group_tau(*arrays(ensemble), mask, chunk_rows=N_TRAIN)
    assert_scores_close(group_tau(*arrays(ensemble), mask, chunk_rows=7), unchunked)
    assert_scores_close(
        full_scores(*arrays(ensemble), [1, 2], chunk_rows=7),
        full_scores(*arrays(ensemble), [1, 2], chunk_rows=N_TRAIN),
    )


def test_same_projector_seed_gives_identical_files(ensemble, tmp_path):
    out = {name: tmp_path / f"{name}.npy" for name in ["features", "out_to_loss", "target_grads"]}
    featurize_to_files(
        ensemble["models"][0],
        TRAIN,
        TARGETS,
        out_features=out["features"],
        out_out_to_loss=out["out_to_loss"],
        out_target_grads=out["target_grads"],
        n_train=N_TRAIN,
        n_targets=N_TARGETS,
        proj_dim=PROJ_DIM,
        projector_seed=traker_projector_seed(0),
        workdir=tmp_path / "work",
    )
    np.testing.assert_array_equal(np.load(out["features"]), ensemble["features"][0])
    np.testing.assert_array_equal(np.load(out["out_to_loss"]), ensemble["out_to_loss"][0])
    np.testing.assert_array_equal(np.load(out["target_grads"]), ensemble["target_grads"][0])


@pytest.mark.parametrize("proj_dim", [16, 100])
def test_small_proj_dim_rejected(tmp_path, proj_dim):
    with pytest.raises(ValueError, match="proj_dim must be > 100"):
        run_featurize(tiny_net(0), tmp_path, proj_dim=proj_dim)


def test_proj_dim_above_n_train_rejected(tmp_path):
    with pytest.raises(ValueError, match="singular"):
        run_featurize(tiny_net(0), tmp_path, n_train=N_TRAIN, proj_dim=N_TRAIN + 1)


def test_non_finite_weights_rejected(tmp_path):
    model = tiny_net(0)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        run_featurize(model, tmp_path)


def test_loader_longer_than_declared_rejected(tmp_path):
    with pytest.raises(ValueError, match="more than the 144"):
        run_featurize(tiny_net(0), tmp_path, n_train=144)


def test_group_tau_empty_mask_rejected(ensemble):
    with pytest.raises(ValueError, match="no targets"):
        group_tau(*arrays(ensemble), np.zeros(N_TARGETS, dtype=bool))


# ---- tau_step on synthetic TRAK arrays --------------------------------------------------


@pytest.fixture
def label_files(tmp_path):
    """A task with 6 train, 5 validate (2 Asian, 3 White, no Black) and 2 test rows, the base
    model's predictions, and 2 models' TRAK arrays with 4 projected dimensions."""
    splits = ["train"] * 6 + ["validate"] * 5 + ["test"] * 2
    groups = ["White", "Asian", "Black or African American", "White", "Asian", "White"]
    groups += ["White", "Asian", "White", "Asian", "White", "Black or African American", "White"]
    n = len(splits)
    task = pd.DataFrame(
        {
            "image_index": np.arange(100, 100 + n),
            "dicom_id": [f"d{i}" for i in range(n)],
            "subject_id": np.arange(n),
            "study_id": np.arange(n),
            "split": splits,
            "race_group": groups,
            "y": np.arange(n) % 2,
        }
    )
    for group in set(groups) | {"Hispanic/Latino"}:
        members = task.loc[task["race_group"] == group, ["image_index"]]
        members.to_parquet(tmp_path / f"members_{group_slug(group)}.parquet")
    task = task.drop(columns=["race_group"])
    task.to_parquet(tmp_path / "task.parquet")
    evaluated = task[task["split"] != "train"].copy()
    evaluated["p"] = 0.5
    evaluated["pred"] = 1
    evaluated["loss"] = np.arange(len(evaluated), dtype=float) + 1.0  # validate losses 1..5
    evaluated.drop(columns=["study_id"]).to_parquet(tmp_path / "base.parquet")

    rng = np.random.default_rng(0)
    files = {"features": [], "out_to_loss": [], "target_grads": []}
    for m in range(2):
        for name, shape in [("features", (6, 4)), ("out_to_loss", (6,)), ("target_grads", (7, 4))]:
            path = tmp_path / f"{name}_{m}.npy"
            np.save(path, rng.standard_normal(shape).astype(np.float32))
            files[name].append(path)
    return tmp_path, files


def run_tau_step(tmp_path, files, group, **overrides):
    args = {
        "feature_paths": files["features"],
        "out_to_loss_paths": files["out_to_loss"],
        "target_grad_paths": files["target_grads"],
        "task_parquet": tmp_path / "task.parquet",
        "base_predictions_parquet": tmp_path / "base.parquet",
        "members_parquet": tmp_path / f"members_{group_slug(group)}.parquet",
        "group": group,
        "out_parquet": tmp_path / "tau.parquet",
        "out_json": tmp_path / "tau.json",
        **overrides,
    }
    tau_step(**args)


def test_tau_step_outputs(label_files):
    tmp_path, files = label_files
    run_tau_step(tmp_path, files, "White")
    out = pd.read_parquet(tmp_path / "tau.parquet")
    assert list(out.columns) == ["image_index", "dicom_id", "tau"]
    assert out["image_index"].tolist() == list(range(100, 106))
    # Targets are the 5 validate rows, then the 2 test rows; only White validate rows count.
    white_val = np.array([True, False, True, False, True, False, False])  # validate rows 6, 8, 10
    expected = group_tau(files["features"], files["out_to_loss"], files["target_grads"], white_val)
    np.testing.assert_allclose(out["tau"].to_numpy(), expected)
    summary = json.loads((tmp_path / "tau.json").read_text())
    assert summary == {"group": "White", "n_val": 3, "val_loss": pytest.approx((1 + 3 + 5) / 3), "n_models": 2}


def test_tau_step_group_without_validation_images(label_files):
    tmp_path, files = label_files
    with pytest.raises(ValueError, match=r"'Black or African American' has no validation images in .*task\.parquet"):
        run_tau_step(tmp_path, files, "Black or African American")


def test_tau_step_row_count_mismatch(label_files):
    tmp_path, files = label_files
    np.save(tmp_path / "short.npy", np.zeros((5, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="has 5 rows but .* has 6 training rows"):
        run_tau_step(tmp_path, files, "White", feature_paths=[tmp_path / "short.npy", files["features"][1]])
    with pytest.raises(ValueError, match="has 6 rows but .* has 7 validation \\+ test rows"):
        run_tau_step(tmp_path, files, "White", target_grad_paths=[files["features"][0]] * 2)


def test_tau_step_missing_base_loss(label_files):
    tmp_path, files = label_files
    base = pd.read_parquet(tmp_path / "base.parquet")
    base[base["dicom_id"] != "d6"].to_parquet(tmp_path / "base.parquet")
    with pytest.raises(ValueError, match="1 of 3 validation images of 'White' have no finite base-model loss"):
        run_tau_step(tmp_path, files, "White")
