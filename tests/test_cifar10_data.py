"""The CNN example's data code, on tiny files written here in the real formats."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from cifar10 import data  # noqa: E402


def _images(rng: np.random.Generator, labels: np.ndarray, shape) -> np.ndarray:
    """Noise plus a bright square whose place depends on the label: learnable."""
    images = rng.integers(0, 64, (len(labels), *shape), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        images[i, 2 + 5 * row : 6 + 5 * row, 2 + 5 * col : 6 + 5 * col] = 255
    return images


def write_idx(path: Path, array: np.ndarray) -> None:
    """``array`` as a gzipped IDX file of unsigned bytes, as (Fashion-)MNIST ships."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def write_fashion_mnist(folder: Path, n_train: int = 64, n_test: int = 32) -> Path:
    """The four Fashion-MNIST files, with tiny random contents."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
        write_idx(
            folder / f"{split}-images-idx3-ubyte.gz", _images(rng, labels, (28, 28))
        )
    return folder


def _cifar_members(per_batch: int) -> dict[str, bytes]:
    """The files of cifar-10-batches-py: pickled dicts with bytes keys, CHW rows."""
    rng = np.random.default_rng(1)
    members = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        labels = rng.integers(0, 10, per_batch)
        images = _images(rng, labels, (32, 32, 3))
        entry = {
            b"batch_label": name.encode(),
            b"labels": [int(x) for x in labels],
            b"data": images.transpose(0, 3, 1, 2).reshape(per_batch, 3072),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)],
        }
        members[name] = pickle.dumps(entry, protocol=2)
    members["batches.meta"] = pickle.dumps(
        {b"label_names": [c.encode() for c in data.CIFAR10_CLASSES]}, protocol=2
    )
    return members


def write_cifar10_folder(folder: Path, per_batch: int = 8) -> Path:
    """An extracted ``cifar-10-batches-py/`` under ``folder``."""
    (folder / data.CIFAR10_FOLDER).mkdir(parents=True, exist_ok=True)
    for name, content in _cifar_members(per_batch).items():
        (folder / data.CIFAR10_FOLDER / name).write_bytes(content)
    return folder


def write_cifar10_archive(folder: Path, per_batch: int = 8) -> str:
    """``cifar-10-python.tar.gz`` under ``folder``; returns its MD5."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / data.CIFAR10_ARCHIVE
    with tarfile.open(path, "w:gz") as tar:
        for name, content in _cifar_members(per_batch).items():
            info = tarfile.TarInfo(f"{data.CIFAR10_FOLDER}/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return hashlib.md5(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ Fashion-MNIST


def test_fashion_mnist_reads_idx_files(tmp_path):
    write_fashion_mnist(tmp_path, n_train=20, n_test=10)
    ds = data.load_fashion_mnist(tmp_path, search=())
    assert ds.train_images.shape == (20, 28, 28, 1)
    assert ds.test_images.shape == (10, 28, 28, 1)
    assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
    assert (ds.crop_padding, ds.flip, ds.num_classes) == (1, False, 10)
    # The bytes come back in place: label-dependent squares are where they were.
    raw = data.read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(ds.train_images[..., 0], raw)
    np.testing.assert_allclose(ds.mean, [raw.mean()], rtol=1e-5)
    np.testing.assert_allclose(ds.std, [raw.std()], rtol=1e-4)


def test_fashion_mnist_falls_back_to_the_search_path(tmp_path):
    write_fashion_mnist(tmp_path / "system")
    ds = data.load_fashion_mnist(tmp_path / "empty", search=(tmp_path / "system",))
    assert len(ds.train_labels) == 64


def test_fashion_mnist_missing_names_the_paths(tmp_path):
    with pytest.raises(data.DatasetError) as e:
        data.load_fashion_mnist(tmp_path / "a", search=(tmp_path / "b",))
    message = str(e.value)
    assert str(tmp_path / "a") in message and str(tmp_path / "b") in message
    assert "train-images-idx3-ubyte.gz" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_truncated_idx_file_is_reported(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros((4, 3, 3), np.uint8))
    with gzip.open(tmp_path / "x.gz") as f:
        content = f.read()
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(content[:-5])
    with pytest.raises(data.DatasetError, match="truncated"):
        data.read_idx(tmp_path / "x.gz")


# ------------------------------------------------------------------ CIFAR-10


def _check_cifar(ds: data.Dataset, per_batch: int) -> None:
    assert ds.train_images.shape == (5 * per_batch, 32, 32, 3)
    assert ds.test_images.shape == (per_batch, 32, 32, 3)
    assert (ds.crop_padding, ds.flip) == (4, True)
    # Rows are 1024 red, 1024 green, 1024 blue values: the squares are white in
    # all three channels only if the channels were put back in place.
    label = int(ds.train_labels[0])
    row, col = divmod(label, 4)
    square = ds.train_images[0, 2 + 5 * row : 6 + 5 * row, 2 + 5 * col : 6 + 5 * col]
    assert (square == 255).all()


def test_cifar10_reads_the_extracted_folder(tmp_path):
    write_cifar10_folder(tmp_path, per_batch=6)
    _check_cifar(data.load_cifar10(tmp_path, download_if_missing=False), 6)


def test_cifar10_reads_the_archive_and_checks_its_md5(tmp_path):
    md5 = write_cifar10_archive(tmp_path, per_batch=6)
    ds = data.load_cifar10(tmp_path, download_if_missing=False, md5=md5)
    _check_cifar(ds, 6)
    # The same files as the folder gives.
    folder = data.load_cifar10(
        write_cifar10_folder(tmp_path / "f", per_batch=6), download_if_missing=False
    )
    np.testing.assert_array_equal(ds.train_images, folder.train_images)


def test_cifar10_bad_checksum_is_refused(tmp_path):
    write_cifar10_archive(tmp_path)
    # The published checksum: our tiny archive does not have it.
    with pytest.raises(data.DatasetError, match=data.CIFAR10_MD5) as e:
        data.load_cifar10(tmp_path, download_if_missing=False)
    assert "Delete it" in str(e.value)


def test_cifar10_missing_without_download_names_the_paths(tmp_path):
    with pytest.raises(data.DatasetError) as e:
        data.load_cifar10(tmp_path, download_if_missing=False)
    message = str(e.value)
    assert str(tmp_path / data.CIFAR10_FOLDER) in message
    assert str(tmp_path / data.CIFAR10_ARCHIVE) in message
    assert "--no-download" in message and data.CIFAR10_URL in message


def test_cifar10_download_checks_and_keeps_the_archive(tmp_path):
    md5 = write_cifar10_archive(tmp_path / "server")
    url = (tmp_path / "server" / data.CIFAR10_ARCHIVE).as_uri()
    ds = data.load_cifar10(tmp_path / "data", url=url, md5=md5)
    assert len(ds.train_labels) == 40
    assert data.md5sum(tmp_path / "data" / data.CIFAR10_ARCHIVE) == md5
    assert not list((tmp_path / "data").glob("*.part"))


def test_cifar10_download_with_wrong_checksum_leaves_nothing(tmp_path):
    write_cifar10_archive(tmp_path / "server")
    url = (tmp_path / "server" / data.CIFAR10_ARCHIVE).as_uri()
    with pytest.raises(data.DatasetError, match="expected"):
        data.load_cifar10(tmp_path / "data", url=url, md5="0" * 32)
    assert not list((tmp_path / "data").iterdir())


def test_cifar10_failed_download_says_what_to_do(tmp_path):
    url = (tmp_path / "nowhere.tar.gz").as_uri()
    with pytest.raises(data.DatasetError, match="could not download") as e:
        data.load_cifar10(tmp_path / "data", url=url)
    assert str(tmp_path / "data") in str(e.value)


# ------------------------------------------------------------------ batches


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> data.Dataset:
    folder = tmp_path_factory.mktemp("fmnist")
    return data.load_fashion_mnist(write_fashion_mnist(folder, 50, 13), search=())


def test_epoch_plan_depends_on_seed_and_epoch_only(tiny):
    a = data.EpochPlan.draw(3, 1, 50, 2, True)
    b = data.EpochPlan.draw(3, 1, 50, 2, True)
    np.testing.assert_array_equal(a.order, b.order)
    np.testing.assert_array_equal(a.shift, b.shift)
    np.testing.assert_array_equal(a.mirror, b.mirror)
    assert sorted(a.order) == list(range(50))
    assert not np.array_equal(a.order, data.EpochPlan.draw(3, 2, 50, 2, True).order)
    assert not np.array_equal(a.order, data.EpochPlan.draw(4, 1, 50, 2, True).order)
    assert a.shift.min() >= 0 and a.shift.max() <= 4


def test_augment_crops_and_flips():
    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1) + 1
    out = data.augment(images, np.array([[0, 0], [2, 1]]), np.array([False, True]), 1)
    # Offset (0, 0) of the image padded by one: shifted down-right, zeros enter.
    np.testing.assert_array_equal(out[0, 1:, 1:, 0], images[0, :3, :3, 0])
    assert (out[0, 0] == 0).all() and (out[0, :, 0] == 0).all()
    # Offset (2, 1): shifted up by one; then mirrored.
    expected = np.pad(images[1, 1:, :, 0], ((0, 1), (0, 0)))[:, ::-1]
    np.testing.assert_array_equal(out[1, :, :, 0], expected)
    # No padding, no mirror: the identity.
    zero = np.zeros((2, 2), int)
    same = data.augment(images, zero, np.zeros(2, bool), 0)
    np.testing.assert_array_equal(same, images)


def test_train_batches_cover_the_epoch_normalised(tiny):
    tiny = dataclasses.replace(tiny, crop_padding=2, flip=True)
    plan = data.EpochPlan.draw(0, 0, 50, tiny.crop_padding, tiny.flip)
    batches = list(data.train_batches(tiny, 16, plan))
    assert len(batches) == 3 == data.steps_per_epoch(tiny, 16)  # 2 dropped
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels, tiny.train_labels[plan.order[:48]])
    images = np.concatenate([b["image"] for b in batches])
    assert images.shape == (48, 28, 28, 1) and images.dtype == np.float32
    # Crops move pixels but the statistics stay near zero mean, unit variance.
    assert abs(images.mean()) < 0.3 and 0.7 < images.std() < 1.3


def test_process_shares_make_up_the_global_batch(tiny):
    plan = data.EpochPlan.draw(0, 0, 50, 2, False)
    whole = list(data.train_batches(tiny, 16, plan))
    shares = [
        list(data.train_batches(tiny, 16, plan, process_index=i, process_count=4))
        for i in range(4)
    ]
    for step, batch in enumerate(whole):
        for key in ("image", "label"):
            joined = np.concatenate([s[step][key] for s in shares])
            np.testing.assert_array_equal(joined, batch[key])
    with pytest.raises(ValueError, match="divisible"):
        next(data.train_batches(tiny, 15, plan, process_count=4))


def test_test_batches_pad_and_mask(tiny):
    batches = list(data.test_batches(tiny, 8))
    assert [len(b["label"]) for b in batches] == [8, 8]
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 13 and mask[:13].all()
    labels = np.concatenate([b["label"] for b in batches])[:13]
    np.testing.assert_array_equal(labels, tiny.test_labels)
