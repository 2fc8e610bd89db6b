"""TRAK data attribution for one label: featurize one model per job, then score race groups.

Two stages, each a Snakemake job:

1. ``featurize`` (one job per TRAK model) runs ``traker`` for ONE model in a fresh save_dir and
   keeps three arrays: the training features ``F_m = Phi_m (Phi_m^T Phi_m)^-1`` (n_train x k),
   the out-to-loss weights ``Q_m = 1 - p`` (n_train,) and the projected target gradients
   ``G_m`` (n_targets x k).
2. ``tau_step`` (one job per race group) combines the models. traker's ``finalize_scores``
   computes ``S = (mean_m F_m G_m^T) * mean_m Q_m`` (Q broadcast over each training row), which
   is linear in the target gradients, so the group attribution
   ``tau(g) = mean_{z in g} S[:, z] = (mean_m F_m @ mean_{z in g} G_m[z]) * mean_m Q_m``
   needs one matrix-vector product per model instead of the n_train x n_val score matrix.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from trak import TRAKer

from .images import CachedImages
from .io import write_json, write_npy, write_parquet
from .models import load_checkpoint, select_device
from .projectors import resolve_projector, traker_components

log = logging.getLogger(__name__)

ArrayOrPath = np.ndarray | str | os.PathLike

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


def group_tau(
    features: Sequence[ArrayOrPath],
    out_to_loss: Sequence[ArrayOrPath],
    target_grads: Sequence[ArrayOrPath],
    target_mask: np.ndarray,
    chunk_rows: int = 65536,
) -> np.ndarray:
    """tau(g): the mean TRAK score over the targets in ``target_mask``, for every training row.

    Equals the column mean over the masked targets of traker's ``finalize_scores`` for the
    same models, computed as ``(mean_m F_m @ mean_{z in g} G_m[z]) * mean_m Q_m``. Each list
    has one entry per model, an array or a .npy path (memory-mapped, read ``chunk_rows``
    training rows at a time). Returns float64 of shape (n_train,)."""
    features, q_mean, target_grads = _open_models(features, out_to_loss, target_grads)
    mask = np.asarray(target_mask)
    if mask.dtype != bool or mask.shape != (len(target_grads[0]),):
        raise ValueError(f"target_mask must be a bool array of shape ({len(target_grads[0])},), got {mask.dtype} {mask.shape}")
    if not mask.any():
        raise ValueError("target_mask selects no targets: tau(g) of an empty group is undefined")
    directions = [g[mask].astype(np.float64).mean(axis=0) for g in target_grads]
    return _ensemble_scores(features, q_mean, directions, chunk_rows)


def full_scores(
    features: Sequence[ArrayOrPath],
    out_to_loss: Sequence[ArrayOrPath],
    target_grads: Sequence[ArrayOrPath],
    target_index: Sequence[int] | np.ndarray,
    chunk_rows: int = 65536,
) -> np.ndarray:
    """Columns ``target_index`` of traker's score matrix: (n_train, len(target_index)).

    For per-example error analysis of a handful of targets; groups should use ``group_tau``."""
    features, q_mean, target_grads = _open_models(features, out_to_loss, target_grads)
    index = np.asarray(target_index, dtype=np.intp).reshape(-1)
    n_targets = len(target_grads[0])
    if ((index < 0) | (index >= n_targets)).any():
        raise ValueError(f"target_index must lie in [0, {n_targets}), got {index.tolist()}")
    directions = [g[index].astype(np.float64).T for g in target_grads]
    return _ensemble_scores(features, q_mean, directions, chunk_rows)


def _open_models(
    features: Sequence[ArrayOrPath],
    out_to_loss: Sequence[ArrayOrPath],
    target_grads: Sequence[ArrayOrPath],
) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    """Open each model's arrays (features memory-mapped) and check that the shapes agree.

    Returns the features, the mean over models of out_to_loss (n_train,) and the target
    gradients."""
    if not (len(features) == len(out_to_loss) == len(target_grads)) or not features:
        raise ValueError(
            "need the same, non-zero number of features, out_to_loss and target_grads arrays "
            f"(one per model), got {len(features)}, {len(out_to_loss)}, {len(target_grads)}"
        )
    features = [_open(f, mmap=True) for f in features]
    out_to_loss = [_open(q, mmap=False).reshape(-1) for q in out_to_loss]
    target_grads = [_open(g, mmap=False) for g in target_grads]
    n_train, proj_dim = features[0].shape
    n_targets = len(target_grads[0])
    for m, (f, q, g) in enumerate(zip(features, out_to_loss, target_grads)):
        if f.shape != (n_train, proj_dim) or q.shape != (n_train,) or g.shape != (n_targets, proj_dim):
            raise ValueError(
                f"model {m}: features {f.shape}, out_to_loss {q.shape}, target_grads {g.shape} do not "
                f"match model 0's n_train={n_train}, proj_dim={proj_dim}, n_targets={n_targets}"
            )
    q_mean = np.mean([q.astype(np.float64) for q in out_to_loss], axis=0)
    return features, q_mean, target_grads


def _open(array: ArrayOrPath, *, mmap: bool) -> np.ndarray:
    if isinstance(array, (str, os.PathLike)):
        return np.load(array, mmap_mode="r" if mmap else None)
    return np.asarray(array)


def _ensemble_scores(
    features: list[np.ndarray],
    q_mean: np.ndarray,
    directions: list[np.ndarray],
    chunk_rows: int,
) -> np.ndarray:
    """``(mean_m F_m @ d_m) * q_mean`` row-wise, reading F_m ``chunk_rows`` rows at a time.

    ``d_m`` is (k,) or (k, j); the product is done in float32 like traker (so a memory-mapped
    chunk is not copied) and accumulated in float64."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    n_train = len(features[0])
    scores = np.zeros((n_train,) + directions[0].shape[1:], dtype=np.float64)
    for start in range(0, n_train, chunk_rows):
        rows = slice(start, start + chunk_rows)
        for f, d in zip(features, directions):
            scores[rows] += _read_rows(f, rows) @ d.astype(np.float32)
    scores /= len(features)
    scores *= q_mean.reshape((n_train,) + (1,) * (scores.ndim - 1))
    if not np.isfinite(scores).all():
        raise FloatingPointError("TRAK scores are not finite: check the featurize outputs")
    return scores


def _read_rows(array: np.ndarray, rows: slice) -> np.ndarray:
    """``array[rows]`` as float32. A memory-mapped .npy is read with a plain file read rather
    than through its mapping: mapped pages stay in the process's resident memory until the
    mapping closes, so slicing the mapping would make the whole n_train x k store resident."""
    if not (isinstance(array, np.memmap) and array.flags.c_contiguous):
        return np.asarray(array[rows], dtype=np.float32)
    start, stop, _ = rows.indices(len(array))
    row_items = int(np.prod(array.shape[1:]))
    with open(array.filename, "rb") as fh:
        fh.seek(array.offset + start * row_items * array.itemsize)
        chunk = np.fromfile(fh, dtype=array.dtype, count=(stop - start) * row_items)
    return chunk.reshape(stop - start, *array.shape[1:]).astype(np.float32, copy=False)


def tau_step(
    feature_paths: Sequence[str | os.PathLike],
    out_to_loss_paths: Sequence[str | os.PathLike],
    target_grad_paths: Sequence[str | os.PathLike],
    task_parquet: str | os.PathLike,
    base_predictions_parquet: str | os.PathLike,
    members_parquet: str | os.PathLike,
    group: str,
    out_parquet: str | os.PathLike,
    out_json: str | os.PathLike,
) -> None:
    """Snakemake job: tau(group) for every training row of one label's task, and the base
    model's validation loss on the group.

    Training rows are the task's ``split == "train"`` rows; the targets are its ``validate``
    rows then its ``test`` rows, in task order (the order the featurize jobs used), and tau
    averages over the group's validation targets only. The group's images are the image_index values of ``members_parquet`` (its group file).
    Writes ``out_parquet`` (image_index, dicom_id, tau; training rows in task order) and
    ``out_json`` {"group", "n_val", "val_loss", "n_models"}."""
    task = pd.read_parquet(task_parquet, columns=["image_index", "dicom_id", "split"])
    members = pd.read_parquet(members_parquet, columns=["image_index"])["image_index"]
    train = task[task["split"] == "train"]
    val = task[task["split"] == "validate"]
    n_test = int((task["split"] == "test").sum())
    group_mask = val["image_index"].isin(members).to_numpy()
    if not group_mask.any():
        # The reference code turns this into a NaN loss, NaN scores, and drops every example.
        raise ValueError(f"race group {group!r} has no validation images in {task_parquet}: tau(g) and l_g are undefined")
    _check_row_counts(feature_paths, out_to_loss_paths, len(train), target_grad_paths, len(val) + n_test, task_parquet)

    target_mask = np.concatenate([group_mask, np.zeros(n_test, dtype=bool)])
    tau = group_tau(feature_paths, out_to_loss_paths, target_grad_paths, target_mask)
    val_loss = _group_val_loss(base_predictions_parquet, val[group_mask], group)
    write_parquet(
        pd.DataFrame({"image_index": train["image_index"].to_numpy(), "dicom_id": train["dicom_id"].to_numpy(), "tau": tau}),
        out_parquet,
    )
    summary = {"group": group, "n_val": int(group_mask.sum()), "val_loss": val_loss, "n_models": len(feature_paths)}
    write_json(summary, out_json)
    log.info("tau for %s: %s; tau mean %.3g, min %.3g, max %.3g", group, summary, tau.mean(), tau.min(), tau.max())


def _check_row_counts(
    feature_paths: Sequence[str | os.PathLike],
    out_to_loss_paths: Sequence[str | os.PathLike],
    n_train: int,
    target_grad_paths: Sequence[str | os.PathLike],
    n_targets: int,
    task_parquet: str | os.PathLike,
) -> None:
    """Rows are matched by position, so a featurize output built from another task version
    must fail here rather than produce misaligned scores."""
    expected = [(p, n_train, "training") for p in [*feature_paths, *out_to_loss_paths]]
    expected += [(p, n_targets, "validation + test") for p in target_grad_paths]
    for path, n, split in expected:
        rows = np.load(path, mmap_mode="r").shape[0]
        if rows != n:
            raise ValueError(f"{path} has {rows} rows but {task_parquet} has {n} {split} rows")


def _group_val_loss(base_predictions_parquet: str | os.PathLike, group_val: pd.DataFrame, group: str) -> float:
    """l_g: the base model's mean cross-entropy loss over the group's validation images."""
    keys = ["image_index", "dicom_id"]
    predictions = pd.read_parquet(base_predictions_parquet, columns=[*keys, "split", "loss"])
    predictions = predictions[predictions["split"] == "validate"]
    merged = group_val[keys].merge(predictions[[*keys, "loss"]], on=keys, how="left", validate="one_to_one")
    losses = merged["loss"].to_numpy(dtype=np.float64)
    missing = ~np.isfinite(losses)
    if missing.any():
        raise ValueError(
            f"{int(missing.sum())} of {len(losses)} validation images of {group!r} have no finite "
            f"base-model loss in {base_predictions_parquet}"
        )
    return float(losses.mean())
