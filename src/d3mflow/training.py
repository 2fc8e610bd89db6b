"""Seeded training: base models, TRAK ensemble models on random subsets, and continued
training from a checkpoint on a weighted table of training rows (one per method, see
``d3mflow.controls``).

Row weights: weight 0 drops a row. When every remaining row has the same weight (erm, d3m,
random, auto_d3m) each epoch is a shuffle of those rows, as in plain training. Otherwise
(balance, jtt) each epoch draws as many rows as remain, WITH replacement, with probability
proportional to the weight: resampling, as group balancing and JTT's upsampling do, so the
loss, batch size and number of steps stay those of plain training.

Same seed and same thread count give bit-identical weights on the CPU: the model is
initialised after ``torch.manual_seed(seed)`` and batches are shuffled with their own seeded
generator, so nothing depends on global random state left behind by other code.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from d3mflow.images import CachedImages
from d3mflow.io import atomic_path, write_json
from d3mflow.models import build_model, load_checkpoint, save_checkpoint, select_device

log = logging.getLogger(__name__)

# Share of all optimiser steps spent ramping the learning rate up from ~0: a warm-up keeps the
# first large-lr steps of a short run from wrecking a freshly initialised (or pretrained) model.
WARMUP_FRACTION = 0.2

TASK_COLUMNS = ("image_index", "split", "y")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings of one training call (SGD with momentum, warm-up then linear decay)."""

    epochs: int
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (batch norm needs a batch), got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


def lr_factor(step: int, total_steps: int) -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear warm-up to 1, then linear decay.

    The decay reaches 0 just after the last step, so every call ends fully annealed whatever
    its length, which short runs (5 then 10 epochs) need."""
    warmup = max(1, round(WARMUP_FRACTION * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    return (total_steps - step) / (total_steps - warmup + 1)


def epoch_batches(
    n: int, batch_size: int, generator: torch.Generator, weights: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """A shuffled split of positions ``0..n-1`` into batches of ``batch_size``; with
    ``weights`` (n,), n positions drawn with replacement in proportion to them instead.

    A final batch of one example is merged into the previous batch rather than dropped (which
    would lose data) or kept (batch norm cannot normalise a single example)."""
    if weights is None:
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.multinomial(weights, n, replacement=True, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def train(
    model: nn.Module,
    dataset: CachedImages,
    cfg: TrainConfig,
    device: torch.device,
    *,
    train_rows: np.ndarray | None = None,
    row_weights: np.ndarray | None = None,
    epoch_callback: Callable[[int, nn.Module], None] | None = None,
) -> list[dict]:
    """Train ``model`` in place on ``dataset`` positions ``train_rows`` (default: all),
    shuffled each epoch, or resampled in proportion to ``row_weights`` (aligned to the rows).

    Each call has a fresh optimiser and schedule, so continued training from a checkpoint is
    just another call. ``epoch_callback(epoch, model)`` runs after each epoch (1-based), e.g.
    to save per-epoch checkpoints. Returns one dict per epoch: epoch, loss and accuracy (means
    over the epoch's training batches, in train mode), n, seconds."""
    if dataset.labels is None:
        raise ValueError("training needs a labelled dataset")
    rows = np.arange(len(dataset)) if train_rows is None else np.asarray(train_rows, dtype=np.int64)
    if len(rows) < 2:
        raise ValueError(f"need at least 2 training examples, got {len(rows)}")
    weights = None if row_weights is None else torch.as_tensor(np.asarray(row_weights, dtype=np.float64))
    if weights is not None and weights.shape != (len(rows),):
        raise ValueError(f"row_weights has shape {tuple(weights.shape)}, expected ({len(rows)},)")
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model.to(device).train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    # Counted with the batching function itself so the schedule always matches the loop below.
    total_steps = cfg.epochs * len(epoch_batches(len(rows), cfg.batch_size, torch.Generator()))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps))
    log.info("training on %d examples, %d epochs (%d steps) on %s", len(rows), cfg.epochs, total_steps, device)

    history = []
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        loss_sum, correct = 0.0, 0
        for batch in epoch_batches(len(rows), cfg.batch_size, generator, weights):
            images, labels = dataset.get_batch(rows[batch.numpy()])
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            loss = nn.functional.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(dim=1) == labels).sum().item()
        record = {
            "epoch": epoch,
            "loss": loss_sum / len(rows),
            "accuracy": correct / len(rows),
            "n": len(rows),
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        log.info("epoch %(epoch)d: loss %(loss).4f accuracy %(accuracy).4f n %(n)d %(seconds).1fs", record)
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"training loss is {record['loss']} at epoch {epoch}; lower the lr")
        if epoch_callback is not None:
            epoch_callback(epoch, model)
    return history


def select_rows(weights: np.ndarray, *, subset_fraction: float = 1.0, subset_seed: int = 0) -> np.ndarray:
    """Positions of the training rows to use: those with weight > 0 and then, if
    ``subset_fraction < 1``, a random subset of that size drawn with
    ``numpy.random.default_rng(subset_seed)``. Positions are returned in ascending order."""
    if not 0.0 < subset_fraction <= 1.0:
        raise ValueError(f"subset_fraction must be in (0, 1], got {subset_fraction}")
    rows = np.flatnonzero(np.asarray(weights) > 0)
    if subset_fraction < 1.0:
        n_subset = round(subset_fraction * len(rows))
        rows = np.sort(np.random.default_rng(subset_seed).choice(rows, size=n_subset, replace=False))
    return rows


def sampling_weights(weights: np.ndarray) -> np.ndarray | None:
    """The weights to resample by, or None when they are all equal (plain shuffling)."""
    weights = np.asarray(weights, dtype=np.float64)
    return None if np.all(weights == weights[0]) else weights


def row_weights(train_image_index: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    """``table.weight`` (columns image_index, weight) aligned to ``train_image_index``.

    The table must list exactly the training rows, so a table made for another task or cohort
    cannot be applied by mistake; weights must be finite, >= 0, and not all 0."""
    missing_columns = {"image_index", "weight"} - set(table.columns)
    if missing_columns:
        raise ValueError(f"training-row table lacks columns {sorted(missing_columns)}")
    weight = table["weight"].to_numpy(dtype=np.float64)
    if not np.isfinite(weight).all() or (weight < 0).any() or not (weight > 0).any():
        raise ValueError("training-row weights must be finite and >= 0, with at least one > 0")
    table = table.sort_values("image_index")
    table_index = table["image_index"].to_numpy()
    order = np.argsort(train_image_index, kind="stable")
    if not np.array_equal(table_index, train_image_index[order]):
        extra = np.setdiff1d(table_index, train_image_index).size
        missing = np.setdiff1d(train_image_index, table_index).size
        raise ValueError(
            f"training-row table does not match the task's {len(train_image_index)} training rows "
            f"({len(table_index)} rows, {extra} not in training, {missing} training rows absent, "
            f"duplicates: {len(table_index) != len(np.unique(table_index))}); "
            "was it made for another label or cohort?"
        )
    aligned = np.empty(len(train_image_index), dtype=np.float64)
    aligned[order] = table["weight"].to_numpy(dtype=np.float64)
    return aligned


def train_step(
    task_parquet: str | os.PathLike,
    cache: str | os.PathLike,
    out_ckpt: str | os.PathLike,
    history_out: str | os.PathLike,
    *,
    arch: str,
    width: int,
    pretrained: bool,
    weights_path: str | os.PathLike | None,
    cfg: TrainConfig,
    subset_fraction: float = 1.0,
    subset_seed: int = 0,
    init_ckpt: str | os.PathLike | None = None,
    rows_parquet: str | os.PathLike | None = None,
    epoch_ckpt_dir: str | os.PathLike | None = None,
    threads: int = 1,
    device: str = "auto",
) -> None:
    """One workflow training job: train on the task's ``split == "train"`` rows and write
    ``out_ckpt`` and ``history_out`` (the per-epoch history as JSON).

    ``init_ckpt`` continues from a checkpoint (fresh optimiser and schedule) instead of a new
    model; ``rows_parquet`` is a training-row table (image_index, weight; see ``row_weights``
    and the module docstring) and ``subset_fraction`` draws a subset as in ``select_rows``;
    ``epoch_ckpt_dir`` also receives ``epoch_{e}.pt`` after every epoch. The checkpoint meta
    records how the model was trained, never which label it was trained for."""
    torch.set_num_threads(threads)
    torch_device = select_device(device)
    task = pd.read_parquet(task_parquet, columns=list(TASK_COLUMNS))
    train_positions = np.flatnonzero(task["split"].to_numpy() == "train")
    weights = np.ones(len(train_positions))
    if rows_parquet is not None:
        weights = row_weights(task["image_index"].to_numpy()[train_positions], pd.read_parquet(rows_parquet))
    picked = select_rows(weights, subset_fraction=subset_fraction, subset_seed=subset_seed)
    rows, resample = train_positions[picked], sampling_weights(weights[picked])
    dataset = CachedImages(cache, task["image_index"].to_numpy(), task["y"].to_numpy())
    log.info(
        "task %s: %d training rows, using %d (rows: %s, %s; subset fraction %s, seed %d)",
        task_parquet, len(train_positions), len(rows), rows_parquet,
        "shuffled" if resample is None else "resampled by weight", subset_fraction, subset_seed,
    )
    model, init_meta = _initial_model(arch, width, pretrained, weights_path, cfg.seed, init_ckpt)
    init_epochs = 0 if init_meta is None else init_meta["epochs_total"]
    # Facts only, no file paths: paths name the label, and the meta should read the same for
    # every label (and on every machine).
    meta = {
        "cfg": asdict(cfg),
        "n_train": len(rows),
        "n_train_rows": len(train_positions),
        "subset": {"fraction": subset_fraction, "seed": subset_seed},
        "rows": None if rows_parquet is None else {
            "n_dropped": int((weights == 0).sum()),
            "resampled": resample is not None,
        },
        "init": None if init_meta is None else {
            "epochs_total": init_epochs,
            "final_train_loss": init_meta.get("final_train_loss"),
        },
        "device": str(torch_device),
        "threads": threads,
    }

    def save_epoch(epoch: int, trained: nn.Module) -> None:
        path = os.path.join(epoch_ckpt_dir, f"epoch_{epoch}.pt")
        epoch_meta = {**meta, "epochs_total": init_epochs + epoch}
        save_checkpoint(trained, path, arch=arch, width=width, meta=epoch_meta)

    history = train(
        model, dataset, cfg, torch_device, train_rows=rows, row_weights=resample,
        epoch_callback=None if epoch_ckpt_dir is None else save_epoch,
    )
    meta.update(epochs_total=init_epochs + cfg.epochs, final_train_loss=history[-1]["loss"])
    save_checkpoint(model, out_ckpt, arch=arch, width=width, meta=meta)
    write_json(history, history_out)
    log.info("wrote %s (trained on %s, final loss %.4f)", out_ckpt, torch_device, history[-1]["loss"])


def trak_model_step(
    out_model: str | os.PathLike,
    out_history: str | os.PathLike,
    *,
    source: str,
    model: dict,
    task_parquet: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    epochs_dir: str | os.PathLike | None = None,
    epoch: int | None = None,
    subset_fraction: float = 1.0,
    subset_seed: int = 0,
    train: dict | None = None,
    threads: int = 1,
    device: str = "auto",
) -> None:
    """One workflow job making TRAK ensemble model m, from either ``source``:

    - ``"subsets"``: train a fresh model (``model``: arch, width, pretrained, weights_path) on a
      random ``subset_fraction`` of the training rows, with ``train`` as TrainConfig fields;
    - ``"base_checkpoints"``: copy ``epochs_dir/epoch_{epoch}.pt`` of the base run (TRAK's
      cheaper alternative to independently trained models); the history is then empty.
    (``train`` names the config, as the workflow passes it, not the function.)"""
    if source == "subsets":
        train_step(
            task_parquet, cache, out_model, out_history, **model, cfg=TrainConfig(**train),
            subset_fraction=subset_fraction, subset_seed=subset_seed, threads=threads, device=device,
        )
    elif source == "base_checkpoints":
        checkpoint = os.path.join(epochs_dir, f"epoch_{epoch}.pt")
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"base checkpoint {checkpoint} not found (base run under {epoch} epochs?)")
        with atomic_path(out_model) as tmp:
            shutil.copyfile(checkpoint, tmp)
        write_json([], out_history)
        log.info("TRAK model %s is base checkpoint %s", out_model, checkpoint)
    else:
        raise ValueError(f"unknown TRAK model source {source!r}; expected 'subsets' or 'base_checkpoints'")


def _initial_model(
    arch: str,
    width: int,
    pretrained: bool,
    weights_path: str | os.PathLike | None,
    seed: int,
    init_ckpt: str | os.PathLike | None,
) -> tuple[nn.Module, dict | None]:
    """The model to start from, and the meta of its checkpoint (None for a fresh model).

    A fresh model is initialised right after seeding, so the seed fixes its weights. A
    checkpoint must match ``arch`` and ``width``: continuing a different model than the
    configuration describes would mislabel every result downstream."""
    torch.manual_seed(seed)
    if init_ckpt is None:
        return build_model(arch, width=width, pretrained=pretrained, weights_path=weights_path), None
    model, meta = load_checkpoint(init_ckpt)
    if (meta["arch"], meta["width"]) != (arch, width):
        raise ValueError(
            f"{init_ckpt} holds {meta['arch']} width {meta['width']}, but {arch} width {width} was requested"
        )
    meta.setdefault("epochs_total", 0)
    log.info("continuing from %s (%d epochs so far)", init_ckpt, meta["epochs_total"])
    return model, meta
