"""TRAK featurization for one label: one ``traker`` run per ensemble model and job.

``featurize`` (one Snakemake job per TRAK model) runs ``traker`` for ONE model in a fresh
save_dir and keeps three arrays: the training features ``F_m = Phi_m (Phi_m^T Phi_m)^-1``
(n_train x k), the out-to-loss weights ``Q_m = 1 - p`` (n_train,) and the projected target
gradients ``G_m`` (n_targets x k). ``d3mflow.scores`` combines the models' arrays into group
attributions tau(g) and per-target scores, without torch.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from trak import TRAKer

from .images import CachedImages
from .io import write_npy
from .models import load_checkpoint, select_device
from .projectors import resolve_projector, traker_components

log = logging.getLogger(__name__)

# traker's name for the set of targets scored; one experiment per save_dir.
EXP_NAME = "targets"

# traker's BasicProjector derives each projection block's seed as
# projector_seed + 1000 * block + 100_000 * model_id.
_TRAKER_MODEL_ID_SEED_STRIDE = 100_000

# traker's BasicProjector uses blocks of 100 columns; with a single block, scoring after
# finalize_features() fails because finalize_features() freed the only projection matrix.
_BASIC_PROJECTOR_BLOCK = 100


def traker_projector_seed(model_index: int, base_seed: int = 0) -> int:
    """The ``projector_seed`` that gives model ``model_index`` the projection matrix traker
    would give ``model_id=model_index`` in a shared save_dir.

    Each featurize job runs its model as traker's model 0, so without this every model would
    share one projection matrix; TRAK ensembles over models with independent projections."""
    if model_index < 0:
        raise ValueError(f"model_index must be >= 0, got {model_index}")
    return base_seed + _TRAKER_MODEL_ID_SEED_STRIDE * model_index


def featurize(
    model: torch.nn.Module,
    train_loader: Iterable,
    target_loader: Iterable,
    *,
    n_train: int,
    n_targets: int,
    proj_dim: int,
    projector_seed: int = 0,
    device: str | torch.device = "cpu",
    workdir: str | os.PathLike,
    use_half_precision: bool | None = None,
    projector: str = "stock",
) -> dict[str, np.ndarray]:
    """Run traker for one model and return its TRAK arrays as float32 copies.

    Returns ``{"features": (n_train, proj_dim), "out_to_loss": (n_train,),
    "target_grads": (n_targets, proj_dim)}``. Both loaders must yield ``(x, y)`` batches in a
    fixed order without augmentation: traker stores rows by position, and tau_step matches
    them to the task's training and validation rows by that order. ``y`` holds class indices
    for a head with at least 2 logits (traker's margin compares the true logit with the rest).

    traker runs in a fresh temporary save_dir under ``workdir`` that is deleted afterwards,
    because traker silently resumes from whatever an existing save_dir holds.
    ``use_half_precision=None`` means float32 on CPU (float16 is slower there) and traker's
    float16 default on CUDA. ``projector`` selects the projection and gradient path
    (``d3mflow.projectors.PROJECTORS``; ``stock`` is traker's own). ``model`` is not modified
    (a copy is moved to ``device``)."""
    device = str(torch.device(device))
    half = device != "cpu" if use_half_precision is None else use_half_precision
    projector = resolve_projector(projector, device)
    _check_sizes(proj_dim, n_train, n_targets, _num_params(model))
    model = copy.deepcopy(model).to(device)
    checkpoint = model.state_dict()
    _check_finite_weights(checkpoint)

    Path(workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="trak-") as save_dir:
        traker = TRAKer(
            model=model,
            task="image_classification",
            train_set_size=n_train,
            save_dir=save_dir,
            device=device,
            proj_dim=proj_dim,
            projector_seed=projector_seed,
            use_half_precision=half,
            logging_level=logging.WARNING,
            **traker_components(
                projector,
                model,
                proj_dim=proj_dim,
                seed=projector_seed,
                device=device,
            ),
        )
        traker.load_checkpoint(checkpoint, model_id=0)
        started = time.perf_counter()
        _feed(traker.featurize, train_loader, n_train, device, "train_loader")
        elapsed = time.perf_counter() - started
        log.info(
            "featurized %d training examples in %.1f s (%.1f examples/s, projector %s)",
            n_train,
            elapsed,
            n_train / elapsed,
            projector,
        )
        traker.finalize_features()
        traker.start_scoring_checkpoint(EXP_NAME, checkpoint, model_id=0, num_targets=n_targets)
        _feed(traker.score, target_loader, n_targets, device, "target_loader")
        arrays = _read_save_dir(Path(save_dir))
    _check_finite_arrays(arrays, half)
    return arrays


def featurize_to_files(
    model: torch.nn.Module,
    train_loader: Iterable,
    target_loader: Iterable,
    *,
    out_features: str | os.PathLike,
    out_out_to_loss: str | os.PathLike,
    out_target_grads: str | os.PathLike,
    **kwargs,
) -> None:
    """``featurize`` and write its three arrays as .npy files (atomically); ``kwargs`` go to
    ``featurize``."""
    arrays = featurize(model, train_loader, target_loader, **kwargs)
    write_npy(arrays["features"], out_features)
    write_npy(arrays["out_to_loss"], out_out_to_loss)
    write_npy(arrays["target_grads"], out_target_grads)
    log.info(
        "wrote TRAK features %s, out_to_loss %s, target grads %s",
        arrays["features"].shape,
        arrays["out_to_loss"].shape,
        arrays["target_grads"].shape,
    )


def featurize_step(
    model_ckpt: str | os.PathLike,
    task_parquet: str | os.PathLike,
    cache: str | os.PathLike,
    *,
    out_features: str | os.PathLike,
    out_out_to_loss: str | os.PathLike,
    out_target_grads: str | os.PathLike,
    proj_dim: int,
    projector_seed: int,
    model_index: int,
    batch_size: int,
    workdir: str | os.PathLike,
    threads: int = 1,
    device: str = "auto",
    projector: str = "stock",
) -> None:
    """Snakemake job: TRAK arrays of one ensemble model over one label's task.

    Training rows (``split == "train"``) and targets (the ``validate`` rows, then the ``test``
    rows) are fed in task order, unshuffled and unaugmented, which is the order ``tau_step``
    and the error analysis assume. Validation targets drive D3M; test targets cost one more
    projected gradient each and let the error analysis attribute test mistakes. Model
    ``model_index`` gets the projection traker would give that model id in a shared save_dir
    (every ``projector`` seeds its matrix from ``projector_seed`` the same way)."""
    torch.set_num_threads(threads)
    torch_device = select_device(device)
    model, _ = load_checkpoint(model_ckpt, torch_device)
    task = pd.read_parquet(task_parquet, columns=["image_index", "split", "y"])
    train = CachedImages(cache, *_split_arrays(task, "train"))
    targets = CachedImages(cache, *_split_arrays(task, "validate", "test"))
    featurize_to_files(
        model,
        _batches(train, batch_size),
        _batches(targets, batch_size),
        out_features=out_features,
        out_out_to_loss=out_out_to_loss,
        out_target_grads=out_target_grads,
        n_train=len(train),
        n_targets=len(targets),
        proj_dim=proj_dim,
        projector_seed=traker_projector_seed(model_index, projector_seed),
        device=torch_device.type,
        workdir=workdir,
        projector=projector,
    )


def _split_arrays(task: pd.DataFrame, *splits: str) -> tuple[np.ndarray, np.ndarray]:
    """image_index and y of the task's rows in ``splits``: split by split, task order within."""
    rows = pd.concat([task[task["split"] == split] for split in splits])
    return rows["image_index"].to_numpy(), rows["y"].to_numpy()


def _batches(dataset: CachedImages, batch_size: int) -> Iterable:
    """Consecutive ``(x, y)`` batches in dataset order."""
    for start in range(0, len(dataset), batch_size):
        yield dataset.get_batch(np.arange(start, min(start + batch_size, len(dataset))))


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_sizes(proj_dim: int, n_train: int, n_targets: int, n_params: int) -> None:
    """Reject sizes for which traker fails or returns meaningless features."""
    if n_targets < 1:
        raise ValueError(f"need at least one target to score, got n_targets={n_targets}")
    if proj_dim <= _BASIC_PROJECTOR_BLOCK:
        raise ValueError(
            f"proj_dim must be > {_BASIC_PROJECTOR_BLOCK}, got {proj_dim}: traker's BasicProjector "
            "(the CPU projector) then uses a single block whose matrix finalize_features() frees, "
            "so scoring the targets fails with an AttributeError"
        )
    # Phi_m has rank <= min(n_train, n_params); beyond that X^T X is singular and traker
    # returns finite but meaningless features without any error (cf. traker issue #24).
    if proj_dim > n_train or proj_dim > n_params:
        raise ValueError(
            f"proj_dim={proj_dim} exceeds the number of training examples ({n_train}) or model "
            f"parameters ({n_params}): X^T X would be singular and the TRAK features meaningless"
        )


def _check_finite_weights(state_dict: dict[str, torch.Tensor]) -> None:
    """Fail before hours of featurizing if the checkpoint already holds NaN or inf."""
    bad = [name for name, t in state_dict.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ValueError(f"model weights are not finite (diverged training?) in: {bad}")


def _feed(step: Callable, loader: Iterable, expected: int, device: str, what: str) -> None:
    """Pass every ``(x, y)`` batch of ``loader`` to traker's featurize/score sequentially
    (``num_samples`` = batch size) and check that exactly ``expected`` examples came through."""
    seen = 0
    for x, y in loader:
        batch_size = len(x)
        if seen + batch_size > expected:
            raise ValueError(f"{what} yielded more than the {expected} examples declared")
        step((x.to(device), _class_indices(y).to(device)), num_samples=batch_size)
        seen += batch_size
    if seen != expected:
        raise ValueError(f"{what} yielded {seen} examples, but {expected} were declared")


def _class_indices(y) -> torch.Tensor:
    """Labels as int64 class indices, as traker's image_classification margin indexes logits."""
    y = torch.as_tensor(y)
    indices = y.long()
    if not torch.equal(indices.to(y.dtype), y):
        raise ValueError("labels must be integer class indices (0/1 for a 2-logit binary head)")
    return indices


def _read_save_dir(save_dir: Path) -> dict[str, np.ndarray]:
    """Copy model 0's arrays out of a traker save_dir (its .mmap files are .npy memmaps)."""
    model_dir = save_dir / "0"

    def load(name: str) -> np.ndarray:
        return np.array(np.load(model_dir / name, mmap_mode="r"), dtype=np.float32)

    return {
        "features": load("features.mmap"),
        "out_to_loss": load("out_to_loss.mmap").reshape(-1),
        "target_grads": load(f"{EXP_NAME}_grads.mmap"),
    }


def _check_finite_arrays(arrays: dict[str, np.ndarray], half: bool) -> None:
    """traker writes NaN/inf without complaint (issues #24, #41); stop them here."""
    bad = {name: int((~np.isfinite(a)).reshape(len(a), -1).any(axis=1).sum()) for name, a in arrays.items()}
    bad = {name: rows for name, rows in bad.items() if rows}
    if bad:
        hint = " float16 overflow is likely: rerun with use_half_precision=False;" if half else ""
        raise FloatingPointError(
            f"TRAK produced non-finite values (rows affected: {bad}).{hint} other causes: a "
            "diverged model, a single-logit head (the margin needs >= 2 logits), or a degenerate "
            "X^T X (too few distinct training gradients for proj_dim)"
        )
