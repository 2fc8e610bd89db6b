"""Decode-and-resize-once image cache shared by every training, attribution and evaluation job.

MIMIC-CXR JPGs are about 3000 x 2500 pixels; decoding them is far more expensive than training a
small network on 32-64 px copies. So every image is decoded exactly once into one uint8
``N x S x S`` array (row ``i`` holds the image with ``image_index == i``), saved in ``.npy``
format, and every later job memory-maps it.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from d3mflow.io import atomic_path, write_parquet

log = logging.getLogger(__name__)

# Fixed (not dataset-estimated) normalisation, so that every model and every job sees the same
# input scale regardless of which images a cohort happens to contain.
MEAN = 0.5
STD = 0.25

# Antialiased downsampling (Pillow's resize widens the filter support when shrinking).
RESAMPLE = Image.Resampling.BILINEAR

# Images per task sent to a worker process: large enough to amortise inter-process overhead,
# small enough that progress is logged often.
CHUNK_SIZE = 256


def decode_image(file: str | os.PathLike, size: int, *, dicom_id: str = "") -> np.ndarray:
    """Decode one JPG as 8-bit grayscale resized to ``size x size`` (a uint8 array).

    ``Image.draft`` lets the JPEG decoder skip detail at 1/2, 1/4 or 1/8 scale (never below the
    requested size), which is several times faster than decoding at native resolution. The image
    is squashed to a square, as is usual for chest X-ray classifiers, rather than cropped, so no
    anatomy is cut away. Missing files raise FileNotFoundError and unreadable ones ValueError,
    both naming the file and ``dicom_id`` so the bad record can be found."""
    file = Path(file)
    what = f"{file} (dicom_id {dicom_id})" if dicom_id else str(file)
    if not file.is_file():
        raise FileNotFoundError(f"image not found: {what}")
    try:
        with Image.open(file) as image:
            image.draft("L", (size, size))
            gray = image.convert("L")
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot decode image {what}: {err}") from err
    return np.asarray(gray.resize((size, size), RESAMPLE), dtype=np.uint8)


def _decode_chunk(files: list[str], dicom_ids: list[str], size: int) -> np.ndarray:
    """Decode a run of images into one ``len(files) x size x size`` array (a worker's task)."""
    out = np.empty((len(files), size, size), dtype=np.uint8)
    for k, (file, dicom_id) in enumerate(zip(files, dicom_ids)):
        out[k] = decode_image(file, size, dicom_id=dicom_id)
    return out


def build_image_cache(
    images_parquet: str | os.PathLike,
    mimic_cxr_jpg: str | os.PathLike,
    cache_out: str | os.PathLike,
    index_out: str | os.PathLike,
    *,
    size: int,
    workers: int = 1,
) -> None:
    """Decode every image of the cohort once into ``cache_out`` (uint8 ``N x size x size`` .npy).

    Row ``i`` of the cache is the image with ``image_index == i``. ``index_out`` records
    (image_index, dicom_id, path) so that the cache can be checked against the cohort later.
    With ``workers > 1`` chunks are decoded in a process pool; results are consumed in
    submission order, so the cache is identical for any number of workers."""
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    cohort = pd.read_parquet(images_parquet, columns=["image_index", "dicom_id", "path"])
    n = len(cohort)
    if not np.array_equal(cohort["image_index"].to_numpy(), np.arange(n)):
        raise ValueError(f"{images_parquet}: image_index must be 0..N-1 in row order")
    root = Path(mimic_cxr_jpg)
    files = [str(root / p) for p in cohort["path"]]
    dicom_ids = cohort["dicom_id"].astype(str).tolist()
    starts = range(0, n, CHUNK_SIZE)
    file_chunks = [files[s : s + CHUNK_SIZE] for s in starts]
    id_chunks = [dicom_ids[s : s + CHUNK_SIZE] for s in starts]
    sizes = [size] * len(starts)
    log.info("decoding %d images to %dx%d with %d worker(s)", n, size, size, workers)

    with atomic_path(cache_out) as tmp:
        cache = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size))
        if workers == 1:
            _fill(cache, starts, map(_decode_chunk, file_chunks, id_chunks, sizes), n)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                try:
                    _fill(cache, starts, pool.map(_decode_chunk, file_chunks, id_chunks, sizes), n)
                except BaseException:
                    # Fail fast on a bad image instead of decoding the rest of the cohort first.
                    pool.shutdown(cancel_futures=True)
                    raise
        cache.flush()
        del cache  # close the memory map before the file is renamed into place
    write_parquet(cohort, index_out)
    log.info("wrote image cache %s (%d x %d x %d uint8)", cache_out, n, size, size)


def _fill(cache: np.ndarray, starts: range, chunks, n: int) -> None:
    """Copy decoded chunks into the cache in order, logging progress about every 10%."""
    next_report = 0.1
    for start, chunk in zip(starts, chunks):
        cache[start : start + len(chunk)] = chunk
        done = (start + len(chunk)) / n
        if done >= next_report:
            log.info("decoded %d/%d images", start + len(chunk), n)
            next_report = done + 0.1


class CachedImages(torch.utils.data.Dataset):
    """Images of a task, read from the memory-mapped cache and normalised for the model.

    Position ``k`` of the dataset is cache row ``image_index[k]``. Items are
    ``(image, label)`` (a float32 ``1 x S x S`` tensor and an int64 scalar tensor), or just the
    image when ``labels`` is None. ``get_batch`` gathers many positions at once: the data is
    small and in the page cache, so vectorised gathering is much faster than a DataLoader."""

    def __init__(
        self, cache_path: str | os.PathLike, image_index: np.ndarray, labels: np.ndarray | None = None
    ):
        self.cache_path = Path(cache_path)
        self.image_index = np.asarray(image_index, dtype=np.int64)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        if self.labels is not None and len(self.labels) != len(self.image_index):
            raise ValueError(f"{len(self.labels)} labels for {len(self.image_index)} images")
        self._array: np.ndarray | None = None
        n_cached = len(self.array)
        if len(self.image_index) and (self.image_index.min() < 0 or self.image_index.max() >= n_cached):
            raise ValueError(f"image_index outside the {n_cached} rows of cache {self.cache_path}")

    @property
    def array(self) -> np.ndarray:
        """The uint8 ``N x S x S`` cache, memory-mapped on first use (also in worker processes)."""
        if self._array is None:
            self._array = np.load(self.cache_path, mmap_mode="r")
        return self._array

    @property
    def size(self) -> int:
        """Side length S of the cached images in pixels."""
        return int(self.array.shape[-1])

    def __getstate__(self) -> dict:
        # Pickling a memmap copies the whole array; send only the path to DataLoader workers.
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        return len(self.image_index)

    def __getitem__(self, position: int):
        images = self._images(np.asarray([position]))[0]
        if self.labels is None:
            return images
        return images, torch.tensor(self.labels[position])

    def get_batch(self, positions: np.ndarray | torch.Tensor):
        """Images (``B x 1 x S x S``) and labels (``B``) at many positions, or just the images."""
        positions = np.asarray(positions, dtype=np.int64)
        images = self._images(positions)
        if self.labels is None:
            return images
        return images, torch.from_numpy(self.labels[positions])

    def _images(self, positions: np.ndarray) -> torch.Tensor:
        raw = torch.from_numpy(np.ascontiguousarray(self.array[self.image_index[positions]]))
        return ((raw.float() / 255.0 - MEAN) / STD).unsqueeze(1)
