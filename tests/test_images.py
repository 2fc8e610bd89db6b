"""The image cache: decoded contents, deterministic parallel decoding, clear errors for bad
files, and the normalised dataset view of it."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from d3mflow import images
from d3mflow.images import MEAN, STD, CachedImages, build_image_cache

N_IMAGES = 40
SIZE = 32


def _jpg_path(k: int) -> tuple[str, str]:
    """(dicom_id, relative path) of synthetic image k in the MIMIC-CXR-JPG layout."""
    subject, study = 10000000 + k, 50000000 + k
    dicom = f"{k:08x}-0000aaaa-1111bbbb-2222cccc-3333dddd"
    return dicom, f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"


@pytest.fixture
def cohort(tmp_path):
    """40 non-square grayscale JPGs (larger than SIZE, so draft mode engages) and their cohort."""
    root = tmp_path / "mimic-cxr-jpg"
    rng = np.random.default_rng(0)
    rows = []
    for k in range(N_IMAGES):
        dicom, rel = _jpg_path(k)
        pixels = rng.integers(0, 256, size=(120, 100), dtype=np.uint8)
        pixels[10:60, 10:50] = 255 * (k % 2)  # a block that survives downsampling
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(root / rel, quality=90)
        rows.append({"image_index": k, "dicom_id": dicom, "subject_id": 10000000 + k,
                     "study_id": 50000000 + k, "path": rel, "view": "PA", "split": "train"})
    parquet = tmp_path / "images.parquet"
    pd.DataFrame(rows).to_parquet(parquet, index=False)
    return parquet, root


def _build(cohort, tmp_path, **kwargs):
    parquet, root = cohort
    cache, index = tmp_path / "cache.npy", tmp_path / "cache_index.parquet"
    build_image_cache(parquet, root, cache, index, size=SIZE, **kwargs)
    return cache, index


def test_cache_equals_direct_decode_and_resize(cohort, tmp_path):
    cache, index = _build(cohort, tmp_path)
    array = np.load(cache)
    assert array.shape == (N_IMAGES, SIZE, SIZE) and array.dtype == np.uint8
    _, root = cohort
    for k in (0, 7, 39):
        with Image.open(root / _jpg_path(k)[1]) as im:
            im.draft("L", (SIZE, SIZE))
            expected = np.asarray(im.convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
            full = np.asarray(Image.open(root / _jpg_path(k)[1]).convert("L").resize((SIZE, SIZE)), dtype=float)
        np.testing.assert_array_equal(array[k], expected)
        # Draft (reduced-scale) decoding stays close to a full-resolution decode.
        assert np.abs(array[k] - full).mean() < 12
    table = pd.read_parquet(index)
    assert list(table.columns) == ["image_index", "dicom_id", "path"]
    assert table["dicom_id"].tolist() == [_jpg_path(k)[0] for k in range(N_IMAGES)]


def test_parallel_decoding_gives_the_same_cache(cohort, tmp_path, monkeypatch):
    serial, _ = _build(cohort, tmp_path / "serial")
    monkeypatch.setattr(images, "CHUNK_SIZE", 7)  # several chunks, the last one short
    parallel, _ = _build(cohort, tmp_path / "parallel", workers=2)
    np.testing.assert_array_equal(np.load(serial), np.load(parallel))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_error_names_file_and_dicom(cohort, tmp_path, damage):
    _, root = cohort
    dicom, rel = _jpg_path(5)
    data = (root / rel).read_bytes()
    (root / rel).write_bytes(b"not a jpeg" * 10 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ValueError, match=dicom) as err:
        _build(cohort, tmp_path)
    assert rel in str(err.value)
    assert not (tmp_path / "cache.npy").exists()
    assert not list(tmp_path.glob(".cache.npy*")), "temporary cache file left behind"


def test_missing_image_error_names_file(cohort, tmp_path):
    _, root = cohort
    dicom, rel = _jpg_path(12)
    (root / rel).unlink()
    with pytest.raises(FileNotFoundError, match=dicom) as err:
        _build(cohort, tmp_path, workers=2)
    assert rel in str(err.value)


def test_cached_images_normalises_and_batches(tmp_path):
    raw = np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4) * 3
    np.save(tmp_path / "c.npy", raw)
    index = np.array([4, 0, 2])
    data = CachedImages(tmp_path / "c.npy", index, np.array([1, 0, 1]))
    image, label = data[0]
    assert image.shape == (1, 4, 4) and image.dtype == torch.float32
    assert label.dtype == torch.int64 and label.item() == 1
    np.testing.assert_allclose(image[0].numpy(), (raw[4] / 255.0 - MEAN) / STD, rtol=1e-6)
    batch, labels = data.get_batch(np.array([2, 0]))
    torch.testing.assert_close(batch, torch.stack([data[2][0], data[0][0]]))
    assert labels.tolist() == [1, 1]
    assert CachedImages(tmp_path / "c.npy", index)[1].shape == (1, 4, 4)
    assert data.size == 4


def test_pickled_dataset_carries_the_path_not_the_pixels(tmp_path):
    np.save(tmp_path / "c.npy", np.full((50, 64, 64), 7, dtype=np.uint8))
    data = CachedImages(tmp_path / "c.npy", np.arange(50))
    data.get_batch(np.arange(50))  # maps the cache
    blob = pickle.dumps(data)
    assert len(blob) < 10_000  # DataLoader workers must not receive a copy of the whole cache
    torch.testing.assert_close(pickle.loads(blob)[3], data[3])


def test_cached_images_rejects_rows_outside_cache(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((3, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="outside"):
        CachedImages(tmp_path / "c.npy", np.array([0, 3]))
