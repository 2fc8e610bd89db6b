"""The report's figures as PNG files: the worst-group accuracy chart and the X-ray image grids.

matplotlib with the non-interactive Agg backend (jobs run without a display). Images come from
the image cache (row = image_index), shown in grey with nearest-neighbour upscaling so that a
16-32 px cached image is visible as blocks rather than blurred."""

from __future__ import annotations

import os
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .io import atomic_path  # noqa: E402

TILE_INCHES = 1.25
DPI = 110


@dataclass(frozen=True)
class Tile:
    """One image in a grid: its cache row, a caption, and whether to frame it in red."""

    image_index: int
    caption: str
    highlight: bool = False


def _save(fig: plt.Figure, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    plt.close(fig)


def wga_chart(wga: pd.DataFrame, out_png: str | os.PathLike, *, method_titles: dict[str, str]) -> None:
    """One panel per label: worst-group accuracy per method as a bar with its 95% CI.

    ``wga`` has columns label, method, mean, ci_low, ci_high (fractions; CI may be NaN, then no
    error bar is drawn). Labels and methods keep their order of appearance."""
    labels = list(dict.fromkeys(wga["label"]))
    methods = list(dict.fromkeys(wga["method"]))
    fig, axes = plt.subplots(1, len(labels), figsize=(max(3.2, 0.9 * len(methods) + 1.2) * len(labels), 3.4),
                             squeeze=False, sharey=True)
    colors = plt.get_cmap("tab10").colors
    for ax, label in zip(axes[0], labels):
        part = wga[wga["label"] == label].set_index("method").reindex(methods)
        mean = 100 * part["mean"].to_numpy(float)
        low = np.nan_to_num(mean - 100 * part["ci_low"].to_numpy(float))
        high = np.nan_to_num(100 * part["ci_high"].to_numpy(float) - mean)
        x = np.arange(len(methods))
        ax.bar(x, mean, color=[colors[i % len(colors)] for i in x], yerr=[low, high], capsize=4)
        for xi, m in zip(x, mean):
            if np.isfinite(m):
                ax.annotate(f"{m:.1f}", (xi, 0), xytext=(0, 3), textcoords="offset points",
                            ha="center", fontsize=8, color="white")
        ax.set_xticks(x, [method_titles.get(m, m) for m in methods], rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("worst-group accuracy (%)\nmean, 95% CI")
    _save(fig, out_png)


def image_grid(cache: np.ndarray, rows: list[tuple[str, list[Tile]]], out_png: str | os.PathLike,
               *, title: str = "") -> None:
    """A grid of cached images: one row per ``(row title, tiles)``, captions under each tile.

    Rows may have different lengths (empty cells stay blank); highlighted tiles get a red frame."""
    n_cols = max((len(tiles) for _, tiles in rows), default=0)
    if not rows or n_cols == 0:
        raise ValueError("image_grid needs at least one row with at least one tile")
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(TILE_INCHES * n_cols + 1.6, (TILE_INCHES + 0.35) * len(rows)),
                             squeeze=False)
    for r, (row_title, tiles) in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(tiles):
                ax.axis("off")
                continue
            tile = tiles[c]
            ax.imshow(cache[tile.image_index], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xlabel(tile.caption, fontsize=7)
            for spine in ax.spines.values():
                spine.set_color("red" if tile.highlight else "0.7")
                spine.set_linewidth(2.5 if tile.highlight else 0.5)
        axes[r][0].set_ylabel(row_title, fontsize=8, rotation=0, ha="right", va="center", labelpad=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, out_png)


def text_png(text: str, out_png: str | os.PathLike) -> None:
    """A one-line PNG stating why a figure is empty, so the report still finds its file."""
    fig = plt.figure(figsize=(6, 0.6))
    fig.text(0.5, 0.5, text, ha="center", va="center", fontsize=9)
    _save(fig, out_png)
