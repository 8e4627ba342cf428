"""Datasets for the CNN example: CIFAR-10 and Fashion-MNIST, augmentation, batching.

A whole dataset is held in memory as uint8 NumPy arrays (CIFAR-10 takes 180 MB).
Each epoch's order and augmentation are drawn up front from ``(seed, epoch)``, so
any epoch can be replayed exactly, on any number of processes, and a batch is
assembled by a single gather that shuffles, crops and flips at once.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pickle
import struct
import tarfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_CLASSES = tuple(
    "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot".split(
        ","
    )
)
DATASETS = ("cifar10", "fashion_mnist")

Batch = dict[str, np.ndarray]


class DatasetError(Exception):
    """The data cannot be had; the message says where it was looked for and why."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A labelled image dataset in memory, with its augmentation recipe."""

    name: str
    train_images: np.ndarray  # (N, H, W, C) uint8
    train_labels: np.ndarray  # (N,) int32
    test_images: np.ndarray  # (M, H, W, C) uint8
    test_labels: np.ndarray  # (M,) int32
    classes: tuple[str, ...]
    # The augmentation that suits it: random crops of the image padded by this
    # many pixels, and random horizontal flips.
    crop_padding: int
    flip: bool
    # Per-channel statistics of the training images, for normalisation; computed
    # when not given.
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.mean is None or self.std is None:
            mean, std = channel_stats(self.train_images)
            object.__setattr__(self, "mean", mean)
            object.__setattr__(self, "std", std)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train_images.shape[1:]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ------------------------------------------------------------------ CIFAR-10


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, ...]:
    """Per-channel mean and standard deviation of uint8 ``(N, H, W, C)`` images."""
    sums = np.zeros((2, images.shape[-1]))
    # In float64 chunks: exact enough, and no float copy of the whole set.
    for begin in range(0, len(images), chunk):
        x = images[begin : begin + chunk].astype(np.float64)
        sums += x.sum((0, 1, 2)), np.square(x).sum((0, 1, 2))
    mean, mean_square = sums / np.prod(images.shape[:3])
    std = np.sqrt(np.maximum(mean_square - mean**2, 1e-6))
    return mean.astype(np.float32), std.astype(np.float32)


def md5sum(path: str | os.PathLike[str]) -> str:
    """The MD5 hex digest of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str) -> None:
    """Fetch ``url`` to ``dest`` with a progress bar, keeping it only if ``md5`` holds.

    The bytes go to ``dest.part`` first, so an interrupted download never leaves
    a truncated file under the final name.
    """
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
    except OSError as e:  # URLError, timeouts and disk errors are all OSErrors
        part.unlink(missing_ok=True)
        raise DatasetError(
            f"could not download {url} to {dest}: {e}\n"
            f"Download it by other means and put it in {dest.parent}, or point "
            "--data-dir at a folder that holds it."
        ) from None
    found = md5sum(part)
    if found != md5:
        part.unlink()
        raise DatasetError(
            f"the file downloaded from {url} has MD5 {found}, expected {md5}; it "
            "was deleted. Try again, or fetch it by other means."
        )
    part.replace(dest)


def _read_cifar_batch(f) -> tuple[np.ndarray, np.ndarray]:
    # The files are pickles (written by Python 2) of a dict with bytes keys.
    entry = pickle.load(f, encoding="bytes")
    images = np.asarray(entry[b"data"], np.uint8).reshape(-1, 3, 32, 32)
    labels = np.asarray(entry[b"labels"], np.int32)
    return images.transpose(0, 2, 3, 1), labels


def _read_cifar10(open_member) -> tuple[np.ndarray, ...]:
    parts = [_read_cifar_batch(open_member(f"data_batch_{i}")) for i in range(1, 6)]
    test_images, test_labels = _read_cifar_batch(open_member("test_batch"))
    train_images = np.concatenate([p[0] for p in parts])
    train_labels = np.concatenate([p[1] for p in parts])
    return train_images, train_labels, test_images, test_labels


def load_cifar10(
    data_dir: str | os.PathLike[str],
    *,
    download_if_missing: bool = True,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
) -> Dataset:
    """CIFAR-10's python version, from ``data_dir``, downloading it if allowed.

    ``data_dir`` may hold the extracted ``cifar-10-batches-py/`` folder or the
    ``cifar-10-python.tar.gz`` archive; the archive's MD5 must be ``md5``.
    """
    data_dir = Path(data_dir)
    folder, archive = data_dir / CIFAR10_FOLDER, data_dir / CIFAR10_ARCHIVE
    if folder.is_dir():
        try:
            arrays = _read_cifar10(lambda name: open(folder / name, "rb"))
        except (OSError, pickle.UnpicklingError, KeyError, ValueError) as e:
            raise DatasetError(
                f"{folder} is not a complete CIFAR-10 python folder: {e}\n"
                "Delete it to use (or download) the archive instead."
            ) from None
    else:
        if not archive.is_file():
            if not download_if_missing:
                raise DatasetError(
                    f"CIFAR-10 not found: looked for {folder}/ and {archive}, and "
                    "--no-download forbids fetching it.\nDownload "
                    f"{url} into {data_dir}, or drop --no-download, or point "
                    "--data-dir at a folder that holds it."
                )
            print(f"downloading CIFAR-10 from {url} to {archive}")
            download(url, archive, md5)
        found = md5sum(archive)
        if found != md5:
            raise DatasetError(
                f"{archive} has MD5 {found}, expected {md5}: it is damaged or not "
                "CIFAR-10's python version. Delete it and run again to download it."
            )
        with tarfile.open(archive, "r:gz") as tar:
            arrays = _read_cifar10(
                lambda name: tar.extractfile(f"{CIFAR10_FOLDER}/{name}")
            )
    return Dataset(
        "cifar10", *arrays, classes=CIFAR10_CLASSES, crop_padding=4, flip=True
    )


# ------------------------------------------------------------------ Fashion-MNIST


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """An array from an IDX file (gzipped or not), the format of (Fashion-)MNIST."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        zero, dtype_code, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise DatasetError(f"{path} is not an IDX file of unsigned bytes")
        shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        data = np.frombuffer(f.read(), np.uint8)
    if data.size != np.prod(shape):
        raise DatasetError(f"{path} is truncated: {data.size} of {shape} bytes")
    return data.reshape(shape)


def load_fashion_mnist(
    data_dir: str | os.PathLike[str],
    *,
    search: tuple[str | os.PathLike[str], ...] = (FASHION_MNIST_SYSTEM_DIR,),
) -> Dataset:
    """Fashion-MNIST's idx files, from ``data_dir`` or else the folders in ``search``.

    ``/usr/share/datasets/fashion-mnist`` is where Debian's
    ``dataset-fashion-mnist`` package installs them.
    """
    folders = [Path(data_dir), *map(Path, search)]
    for folder in folders:
        paths = {k: folder / name for k, name in FASHION_MNIST_FILES.items()}
        if all(p.is_file() for p in paths.values()):
            break
    else:
        raise DatasetError(
            "Fashion-MNIST not found: looked for "
            f"{', '.join(FASHION_MNIST_FILES.values())} in "
            f"{' and '.join(map(str, folders))}.\nInstall it with "
            "`apt-get install dataset-fashion-mnist`, or put the four files in "
            "--data-dir."
        )
    arrays = {k: read_idx(p) for k, p in paths.items()}
    return Dataset(
        "fashion_mnist",
        arrays["train_images"][..., None],
        arrays["train_labels"].astype(np.int32),
        arrays["test_images"][..., None],
        arrays["test_labels"].astype(np.int32),
        classes=FASHION_MNIST_CLASSES,
        # Measured over the ten epochs of the default recipe: shifts of one pixel
        # add 0.3 points of test accuracy; flips would make shoes face right,
        # which none in the test set do.
        crop_padding=1,
        flip=False,
    )


def load(name: str, data_dir: str | os.PathLike[str], *, download: bool = True):
    """The dataset called ``name`` (one of :data:`DATASETS`)."""
    if name == "cifar10":
        return load_cifar10(data_dir, download_if_missing=download)
    if name == "fashion_mnist":
        return load_fashion_mnist(data_dir)
    raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")


# ------------------------------------------------------------------ batches


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """One epoch's example order and augmentation, a function of (seed, epoch)."""

    order: np.ndarray  # (N,) a permutation of the training set
    shift: np.ndarray  # (N, 2) crop offsets in [0, 2 * padding]
    mirror: np.ndarray  # (N,) bool: flip this example
    padding: int = 0  # of the crops: offsets are drawn in [0, 2 * padding]

    @classmethod
    def draw(cls, seed: int, epoch: int, n: int, padding: int, flip: bool):
        # Seeding from the pair makes each epoch reproducible on its own, which is
        # what lets a resumed run see the very batches an uninterrupted one sees.
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n)
        shift = rng.integers(0, 2 * padding + 1, size=(n, 2))
        mirror = rng.random(n) < 0.5 if flip else np.zeros(n, bool)
        return cls(order, shift, mirror, padding)


def augment(
    images: np.ndarray, shift: np.ndarray, mirror: np.ndarray, padding: int
) -> np.ndarray:
    """Crop ``images`` padded with zeros at offsets ``shift``, mirroring some."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    rows = shift[:, :1] + np.arange(h)
    cols = shift[:, 1:] + np.arange(w)
    cols = np.where(mirror[:, None], cols[:, ::-1], cols)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def normalize(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 images to float32, each channel to zero mean and unit variance."""
    return (images.astype(np.float32) - mean) * (1.0 / std)


def _local(rows: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """This process's contiguous share of a global batch."""
    share = len(rows) // process_count
    return rows[process_index * share : (process_index + 1) * share]


def train_batches(
    ds: Dataset,
    batch_size: int,
    plan: EpochPlan,
    *,
    start: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """One epoch of augmented training batches, this process's share of each.

    ``batch_size`` is the global batch; the last partial batch is dropped so that
    every step has the same shape (and one compilation). ``start`` skips batches.
    """
    if batch_size % process_count:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the {process_count} processes"
        )
    for step in range(start, len(plan.order) // batch_size):
        rows = _local(
            np.arange(step * batch_size, (step + 1) * batch_size),
            process_index,
            process_count,
        )
        index = plan.order[rows]
        images = ds.train_images[index]
        if plan.padding or plan.mirror.any():
            images = augment(images, plan.shift[rows], plan.mirror[rows], plan.padding)
        yield {
            "image": normalize(images, ds.mean, ds.std),
            "label": ds.train_labels[index],
        }


def test_batches(
    ds: Dataset, batch_size: int, *, process_index: int = 0, process_count: int = 1
) -> Iterator[Batch]:
    """The test set in order, the last batch padded; ``mask`` marks real examples."""
    n = len(ds.test_labels)
    for begin in range(0, n, batch_size):
        rows = _local(
            np.arange(begin, begin + batch_size), process_index, process_count
        )
        real = rows < n
        index = np.where(real, rows, 0)
        yield {
            "image": normalize(ds.test_images[index], ds.mean, ds.std),
            "label": ds.test_labels[index],
            "mask": real,
        }


def steps_per_epoch(ds: Dataset, batch_size: int) -> int:
    """Training steps in one epoch (the last partial batch is dropped)."""
    return len(ds.train_labels) // batch_size
