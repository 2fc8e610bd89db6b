"""Benchmark of TRAK featurization paths (``make bench``; ``bench/gpu.sh`` on a GPU machine).

In one run, on the same briefly trained demo ResNet-9 checkpoints, the same training images
and the same proj_dim, it measures the throughput (training examples featurized per second) of

  (a) ``stock``: traker's default projector for the device, vmap gradients;
  (b) this project's paths: ``dense``, ``sparse`` (projector swap only) and ``factored``
      (projector swap + factored per-example gradients; what ``auto`` picks without fast_jl);
  (c) per-example gradients alone (traker's vmap gradient computer, no projection);
  (d) a batched forward + backward pass of the cross-entropy loss in training mode (the floor:
      a training step without the optimizer update),

the share of each path's featurization time spent in ``projector.project``, and agreement:
the Spearman rank correlation of the alignment scores A (softmax, beta = 1) and of every group's
tau(g) between each path and stock on the same checkpoints, next to the same correlation between
two stock runs that differ only in the projection seed (the noise floor of any random
projection). A subprocess then computes tau(g) for 6 groups over ``--rss-rows`` x proj_dim
feature stores on disk and reports its own peak RSS.

The images are synthetic (a label-dependent blob, group-dependent brightness, a corner marker
that tracks the label in some groups, label noise in one): the point is realistic gradients of
a trained network, not accuracy. Figures go to ``results/bench/attribution.json``.

Timing is made robust to other processes on a shared machine: all paths featurize the same
batch one after another (in rotating order) before the next batch, and throughputs and
projection shares are medians over batches.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # traker's progress bars would drown the table

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from trak import TRAKer
from trak.gradient_computers import FunctionalGradientComputer
from trak.modelout_functions import ImageClassificationModelOutput

from d3mflow.alignment import alignment_scores
from d3mflow.attribution import EXP_NAME, _read_save_dir, traker_projector_seed
from d3mflow.images import CachedImages
from d3mflow.scores import group_tau
from d3mflow.models import build_model
from d3mflow.projectors import fast_jl_available, resolve_projector, traker_components
from d3mflow.training import TrainConfig, train

GROUPS = ["Asian", "Black or African American", "Hispanic/Latino", "Other", "Unknown", "White"]
# Share of training images per group (imbalanced, as in the cohort).
GROUP_SHARES = np.array([0.05, 0.15, 0.08, 0.07, 0.05, 0.60])
# (label, projector, seed) of every featurization run; the first is the reference.
RUNS = [
    ("stock", "stock", 0),
    ("stock_reseeded", "stock", 1),
    ("dense", "dense", 0),
    ("sparse", "sparse", 0),
    ("factored", "factored", 0),
    ("factored_reseeded", "factored", 1),
]
# The path this project uses (what `auto` resolves to without fast_jl) and the projector-only swap.
MAIN, SWAP = "factored", "sparse"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=3072, help="training images featurized")
    parser.add_argument("--n-val-per-group", type=int, default=64, help="validation targets per group")
    parser.add_argument("--models", type=int, default=2, help="checkpoints in the TRAK ensemble")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (checkpoints: the last --models)")
    parser.add_argument("--proj-dim", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-px", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=_idle_cpus(), help="torch CPU threads (default: CPUs not already busy)")
    parser.add_argument("--rss-rows", type=int, default=100_000, help="training rows of the tau(g) memory test (0: skip)")
    parser.add_argument("--rss-models", type=int, default=3, help="models in the tau(g) memory test")
    parser.add_argument("--workdir", default="results/bench/work")
    parser.add_argument("--out", default="results/bench/attribution.json")
    parser.add_argument("--tau-rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tau_rss_child:
        _tau_rss_child(Path(args.tau_rss_child))
        return

    torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    print(f"device {device} ({torch.cuda.get_device_name() if device == 'cuda' else f'{args.threads} threads'}), "
          f"fast_jl {'yes' if fast_jl_available() else 'no'}, auto -> {resolve_projector('auto', device)}", flush=True)

    train_set, val_set, val_groups = _synthetic_data(workdir, args.n_train, args.n_val_per_group, args.image_px)
    started = time.perf_counter()
    base, checkpoints = _train(train_set, args.epochs, args.models, device)
    print(f"trained {args.epochs} epochs on {len(train_set)} images in {time.perf_counter() - started:.0f} s", flush=True)
    losses = _group_losses(base, val_set, val_groups, device, args.batch_size)

    rates = {
        "per_example_grads": _vmap_rate(checkpoints[0], train_set, device, args.batch_size),
        "forward_backward": _floor_rate(checkpoints[0], train_set, device, args.batch_size),
    }
    runs = _run_all(checkpoints, train_set, val_set, val_groups, losses, args, device, workdir)
    rates.update({label: run["examples_per_s"] for label, run in runs.items()})

    stock = runs["stock"]
    agreement = {label: _agreement(stock, run) for label, run in runs.items() if label != "stock"}
    agreement["factored_vs_factored_reseeded"] = _agreement(runs["factored"], runs["factored_reseeded"])
    rss = _tau_rss(workdir, args.rss_rows, args.proj_dim, args.rss_models) if args.rss_rows else None
    shutil.rmtree(workdir, ignore_errors=True)

    result = {
        "device": device,
        "threads": args.threads,
        "fast_jl": fast_jl_available(),
        "sizes": {"n_train": args.n_train, "n_targets": len(val_set), "models": args.models, "proj_dim": args.proj_dim,
                  "batch_size": args.batch_size, "image_px": args.image_px, "n_params": _n_params(base)},
        "examples_per_s": rates,
        "speedup_vs_stock": rates[MAIN] / rates["stock"],
        "speedup_vs_stock_projector_swap": rates[SWAP] / rates["stock"],
        "speedup_vs_stock_by_path": {label: rates[label] / rates["stock"] for label in runs},
        "rank_agreement_A": agreement[MAIN]["A"],
        "rank_agreement_A_stock_reseeded": agreement["stock_reseeded"]["A"],
        "rank_agreement": agreement,
        "projection_share": runs[MAIN]["projection_share"],
        "projection_share_by_path": {label: run["projection_share"] for label, run in runs.items()},
        "tau_rss": rss,
    }
    _print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def _idle_cpus() -> int:
    """CPUs not busy with other processes (by the 1-minute load average), at least 1. On an
    oversubscribed machine, torch's OpenMP threads wait for descheduled siblings and every path
    runs up to 10x slower, which would measure the machine rather than the code."""
    cpus = len(os.sched_getaffinity(0))
    return max(1, min(cpus, cpus - round(os.getloadavg()[0])))


def _synthetic_data(workdir: Path, n_train: int, n_val_per_group: int, px: int):
    """A uint8 image cache and CachedImages over its training and validation rows."""
    rng = np.random.default_rng(0)
    groups = np.concatenate([rng.choice(len(GROUPS), size=n_train, p=GROUP_SHARES), np.repeat(np.arange(len(GROUPS)), n_val_per_group)])
    n = len(groups)
    labels = rng.integers(0, 2, size=n)
    yy, xx = np.mgrid[0:px, 0:px] / px
    centre = rng.uniform(0.3, 0.7, size=(n, 2))
    blob = np.exp(-((yy[None] - centre[:, :1, None]) ** 2 + (xx[None] - centre[:, 1:, None]) ** 2) / 0.02)
    images = 0.45 + 0.04 * groups[:, None, None] + 0.25 * labels[:, None, None] * blob + 0.12 * rng.standard_normal((n, px, px))
    is_train = np.arange(n) < n_train
    # Shortcut: a corner marker that tracks the label in the training images of groups 0-2 only.
    marker = np.where(is_train & (groups <= 2), labels, rng.integers(0, 2, size=n))
    images[:, : px // 8, : px // 8] += 0.3 * marker[:, None, None]
    # Label noise in group 1's training images.
    flip = is_train & (groups == 1) & (rng.random(n) < 0.3)
    labels = np.where(flip, 1 - labels, labels)
    cache = workdir / "images.npy"
    np.save(cache, np.clip(images * 255, 0, 255).astype(np.uint8))
    index = np.arange(n)
    val_groups = pd.Series(np.array(GROUPS)[groups[~is_train]])
    return CachedImages(cache, index[is_train], labels[is_train]), CachedImages(cache, index[~is_train], labels[~is_train]), val_groups


def _train(train_set: CachedImages, epochs: int, n_models: int, device: str):
    """Train ResNet-9 (width 8) briefly; the checkpoints are its last ``n_models`` epochs (as
    trak.model_source base_checkpoints), the base model its last epoch."""
    if n_models > epochs:
        raise ValueError(f"--models ({n_models}) must not exceed --epochs ({epochs})")
    model = build_model("resnet9", width=8)
    states = []
    train(model, train_set, TrainConfig(epochs=epochs, batch_size=64, lr=0.05), torch.device(device),
          epoch_callback=lambda epoch, m: states.append({k: v.detach().clone() for k, v in m.state_dict().items()}))
    checkpoints = []
    for state in states[::-1][:n_models]:
        checkpoint = build_model("resnet9", width=8)
        checkpoint.load_state_dict(state)
        checkpoints.append(checkpoint.to(device).eval())
    return checkpoints[0], checkpoints


def _batches(dataset: CachedImages, batch_size: int, device: str):
    for start in range(0, len(dataset), batch_size):
        x, y = dataset.get_batch(np.arange(start, min(start + batch_size, len(dataset))))
        yield x.to(device), y.to(device)


def _group_losses(model, val_set, val_groups, device, batch_size) -> pd.Series:
    """l_g: the base model's mean validation cross-entropy per group."""
    with torch.no_grad():
        loss = torch.cat([torch.nn.functional.cross_entropy(model(x), y, reduction="none") for x, y in _batches(val_set, batch_size, device)])
    return pd.Series(loss.cpu().numpy()).groupby(val_groups.to_numpy()).mean()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _vmap_rate(model, dataset, device, batch_size) -> float:
    """Examples/s of traker's vmap per-example gradients alone (no projection)."""
    computer = FunctionalGradientComputer(model, ImageClassificationModelOutput(), _n_params(model), torch.float32, device)
    return _timed_batches(lambda batch: computer.compute_per_sample_grad(batch), dataset, device, batch_size)


def _floor_rate(model, dataset, device, batch_size) -> float:
    """Examples/s of a batched forward + backward pass (training mode, no optimizer step)."""
    model = copy.deepcopy(model).train()

    def step(batch):
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()

    return _timed_batches(step, dataset, device, batch_size)


def _timed_batches(step, dataset, device, batch_size) -> float:
    """Median examples/s of ``step(batch)`` over the dataset's batches."""
    examples, seconds = [], []
    for batch in _batches(dataset, batch_size, device):
        _sync(device)
        start = time.perf_counter()
        step(batch)
        _sync(device)
        seconds.append(time.perf_counter() - start)
        examples.append(len(batch[0]))
    return _median_rate(examples, seconds)


def _median_rate(examples: list[int], seconds: list[float]) -> float:
    """Examples/s as the median over batches: robust to other processes competing for the CPUs."""
    return float(np.median(np.asarray(examples) / np.asarray(seconds)))


def _run_all(checkpoints, train_set, val_set, val_groups, losses, args, device, workdir) -> dict:
    """Featurize every checkpoint with every path of ``RUNS``; tau(g) of every group and A.

    This is ``d3mflow.attribution.featurize`` (same TRAKer settings, ``traker_components``,
    finalize and scoring calls) with one change: each checkpoint's training batches are fed to
    all paths' TRAKers in turn, batch by batch, in a rotating order, so that every path is timed
    under the same competition for the CPUs."""
    labels = [label for label, _, _ in RUNS]
    timing = {label: {"examples": [], "seconds": [], "project_seconds": []} for label in labels}
    arrays = {label: [] for label in labels}
    for m, model in enumerate(checkpoints):
        with tempfile.TemporaryDirectory(dir=workdir) as save_root:
            trakers = {
                label: _traker(projector, traker_projector_seed(m, seed), model, len(train_set), args.proj_dim, device,
                               Path(save_root) / label, timing[label])
                for label, projector, seed in RUNS
            }
            for b, batch in enumerate(_batches(train_set, args.batch_size, device)):
                for label in labels[b % len(labels):] + labels[: b % len(labels)]:
                    _sync(device)
                    start = time.perf_counter()
                    trakers[label].featurize(batch, num_samples=len(batch[0]))
                    _sync(device)
                    timing[label]["seconds"].append(time.perf_counter() - start)
                    timing[label]["examples"].append(len(batch[0]))
            for label, traker in trakers.items():
                traker.projector.timing = None  # target scoring is not timed
                traker.finalize_features()
                traker.start_scoring_checkpoint(EXP_NAME, traker.model.state_dict(), model_id=0, num_targets=len(val_set))
                for batch in _batches(val_set, args.batch_size, device):
                    traker.score(batch, num_samples=len(batch[0]))
                arrays[label].append(_read_save_dir(Path(save_root) / label))
        print(f"  featurized checkpoint {m + 1}/{len(checkpoints)} with {len(labels)} paths", flush=True)

    runs = {}
    for label in labels:
        stats, models = timing[label], arrays[label]
        tau = pd.DataFrame({
            group: group_tau([a["features"] for a in models], [a["out_to_loss"] for a in models],
                             [a["target_grads"] for a in models], (val_groups == group).to_numpy())
            for group in GROUPS
        })
        runs[label] = {
            "examples_per_s": _median_rate(stats["examples"], stats["seconds"]),
            "projection_share": float(np.median(np.asarray(stats["project_seconds"]) / np.asarray(stats["seconds"]))),
            "tau": tau,
            "A": alignment_scores(tau, losses, beta=1.0, weighting="softmax"),
        }
    return runs


def _traker(projector, seed, model, n_train, proj_dim, device, save_dir, timing) -> TRAKer:
    """A TRAKer set up as ``featurize`` sets it up, with its projector's calls timed into
    ``timing["project_seconds"]`` while ``projector.timing`` is set."""
    model = copy.deepcopy(model)
    traker = TRAKer(
        model=model, task="image_classification", train_set_size=n_train, save_dir=str(save_dir), device=device,
        proj_dim=proj_dim, projector_seed=seed, use_half_precision=device != "cpu", logging_level=logging.WARNING,
        **traker_components(projector, model, proj_dim=proj_dim, seed=seed, device=device),
    )
    traker.load_checkpoint(model.state_dict(), model_id=0)
    instance = traker.projector
    untimed = instance.project
    instance.timing = timing

    def project(grads, model_id):
        if instance.timing is None:
            return untimed(grads, model_id)
        _sync(device)
        start = time.perf_counter()
        out = untimed(grads, model_id)
        _sync(device)
        instance.timing["project_seconds"].append(time.perf_counter() - start)
        return out

    instance.project = project
    return traker


def _agreement(a: dict, b: dict) -> dict:
    """Spearman rank correlation of A and of each group's tau(g) between two runs."""
    result = {"A": float(spearmanr(a["A"], b["A"]).statistic)}
    result.update({f"tau[{g}]": float(spearmanr(a["tau"][g], b["tau"][g]).statistic) for g in GROUPS})
    return result


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _tau_rss(workdir: Path, rows: int, proj_dim: int, n_models: int) -> dict:
    """Write ``n_models`` feature stores of rows x proj_dim float32 to disk, then compute tau(g) of
    6 groups from them in a subprocess and return its peak RSS."""
    store = workdir / "rss"
    store.mkdir()
    rng = np.random.default_rng(0)
    n_targets = 600
    for m in range(n_models):
        features = np.lib.format.open_memmap(store / f"features{m}.npy", mode="w+", dtype=np.float32, shape=(rows, proj_dim))
        for start in range(0, rows, 8192):
            stop = min(start + 8192, rows)
            features[start:stop] = rng.standard_normal((stop - start, proj_dim), dtype=np.float32)
        del features
        np.save(store / f"out_to_loss{m}.npy", rng.uniform(0, 1, rows).astype(np.float32))
        np.save(store / f"target_grads{m}.npy", rng.standard_normal((n_targets, proj_dim), dtype=np.float32))
    proc = subprocess.run([sys.executable, __file__, "--tau-rss-child", str(store)], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(rows=rows, proj_dim=proj_dim, models=n_models, groups=len(GROUPS),
                  store_gib=n_models * rows * proj_dim * 4 / 2**30)
    print(f"tau(g): {rows} rows x {proj_dim} x {len(GROUPS)} groups x {n_models} models "
          f"({result['store_gib']:.1f} GiB on disk) in {result['seconds']:.1f} s, peak RSS {result['peak_rss_gib']:.2f} GiB", flush=True)
    return result


def _tau_rss_child(store: Path) -> None:
    """Subprocess side of ``_tau_rss``: one group_tau call per group, as the tau_step jobs do."""
    n_models = len(list(store.glob("features*.npy")))
    paths = {name: [store / f"{name}{m}.npy" for m in range(n_models)] for name in ("features", "out_to_loss", "target_grads")}
    n_targets = np.load(paths["target_grads"][0], mmap_mode="r").shape[0]
    group_of_target = np.arange(n_targets) % len(GROUPS)
    started = time.perf_counter()
    for g in range(len(GROUPS)):
        group_tau(paths["features"], paths["out_to_loss"], paths["target_grads"], group_of_target == g)
    seconds = time.perf_counter() - started
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
    status = Path("/proc/self/status").read_text()
    peak_kib = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
    print(json.dumps({"peak_rss_gib": peak_kib / 2**20, "seconds": seconds}))


def _print_table(result: dict) -> None:
    rates = result["examples_per_s"]
    stock = rates["stock"]
    shares = result["projection_share_by_path"]
    agreement = result["rank_agreement"]
    s = result["sizes"]
    print(f"\nTRAK featurization, {result['device']}: resnet9 width 8 ({s['n_params']} params), {s['n_train']} training "
          f"images x {s['models']} checkpoints, proj_dim {s['proj_dim']}, batch {s['batch_size']}")
    print(f"{'path':22s} {'examples/s':>10s} {'x stock':>8s} {'project %':>9s} {'rho(A) vs stock':>15s} {'min rho(tau)':>12s}")
    for label, rate in rates.items():
        share = f"{100 * shares[label]:.0f}" if label in shares else "-"
        agree = agreement.get(label)
        rho = f"{agree['A']:.3f}" if agree else "-"
        rho_tau = f"{min(v for k, v in agree.items() if k != 'A'):.3f}" if agree else "-"
        print(f"{label:22s} {rate:10.1f} {rate / stock:8.2f} {share:>9s} {rho:>15s} {rho_tau:>12s}")
    print(f"rank agreement of A: {MAIN} vs stock {result['rank_agreement_A']:.3f}, stock vs stock reseeded "
          f"{result['rank_agreement_A_stock_reseeded']:.3f} (noise floor), {MAIN} vs {MAIN} reseeded "
          f"{agreement['factored_vs_factored_reseeded']['A']:.3f}")
    goals = [
        (f"projector swap ({SWAP}) >= 5x stock", result["speedup_vs_stock_projector_swap"] >= 5),
        (f"with gradient work ({MAIN}) >= 10x stock", result["speedup_vs_stock"] >= 10),
        ("rank agreement of A >= stock reseeded - 0.02", result["rank_agreement_A"] >= result["rank_agreement_A_stock_reseeded"] - 0.02),
        (f"projection <= 25% of featurization ({MAIN})", result["projection_share"] <= 0.25),
    ]
    if result["tau_rss"]:
        goals.append(("tau(g) peak RSS <= 2 GiB", result["tau_rss"]["peak_rss_gib"] <= 2))
    for goal, met in goals:
        print(f"  [{'met' if met else 'MISSED'}] {goal}")


if __name__ == "__main__":
    main()
