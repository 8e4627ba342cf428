"""Adam-mini against the authors' package (adam_mini.Adam_mini 1.1.1), float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from adam_mini import Adam_mini

import adamx
from adamx.adam_mini import dotted_name

DIM, N_HEADS, N_KV_HEADS, VOCAB, HIDDEN, SEQ = 16, 4, 2, 11, 32, 6
HEAD = DIM // N_HEADS

# A one-layer transformer, its weights in torch's (out, in) layout, named as
# torch.nn.Module.named_parameters would: every branch of the reference (bias:
# Adam; q/k: per head, k grouped; embedding, output, v, o, MLP: per row; norms:
# one block).
SHAPES = {
    "embed.weight": (VOCAB, DIM),
    "layers.0.attn_norm.weight": (DIM,),
    "layers.0.attn.q_proj.weight": (DIM, DIM),
    "layers.0.attn.q_proj.bias": (DIM,),
    "layers.0.attn.k_proj.weight": (N_KV_HEADS * HEAD, DIM),
    "layers.0.attn.v_proj.weight": (N_KV_HEADS * HEAD, DIM),
    "layers.0.attn.o_proj.weight": (DIM, DIM),
    "layers.0.ffn_norm.weight": (DIM,),
    "layers.0.mlp.up.weight": (HIDDEN, DIM),
    "layers.0.mlp.down.weight": (DIM, HIDDEN),
    "layers.0.mlp.down.bias": (DIM,),
    "final_norm.weight": (DIM,),
    "lm_head.weight": (VOCAB, DIM),
}


def initial(seed=0):
    rng = np.random.default_rng(seed)
    flat = {}
    for name, shape in SHAPES.items():
        if name.endswith("norm.weight"):
            flat[name] = 1 + 0.1 * rng.normal(size=shape)
        else:
            flat[name] = rng.normal(size=shape) / np.sqrt(shape[-1])
    return flat


def nest(flat):
    """``{"a.0.b": x}`` as ``{"a": [{"b": x}]}`` (one layer: index 0)."""
    tree = {}
    for name, x in flat.items():
        node, keys = tree, name.split(".")
        for key, nxt in zip(keys[:-1], keys[1:], strict=True):
            if key.isdigit():
                continue
            node = node.setdefault(key, [{}] if nxt.isdigit() else {})
            node = node[0] if isinstance(node, list) else node
        node[keys[-1]] = x
    return tree


def _name(path):
    return dotted_name(path)


def rms_norm(x, w):
    return x / jnp.sqrt(jnp.mean(x**2, -1, keepdims=True) + 1e-6) * w


def loss_fn(flat, tokens, targets):
    """The transformer on torch-layout weights (``x @ W.T``)."""
    lin = lambda x, n: x @ flat[n].T  # noqa: E731
    x = flat["embed.weight"][tokens]
    h = rms_norm(x, flat["layers.0.attn_norm.weight"])
    q = lin(h, "layers.0.attn.q_proj.weight") + flat["layers.0.attn.q_proj.bias"]
    k = lin(h, "layers.0.attn.k_proj.weight")
    v = lin(h, "layers.0.attn.v_proj.weight")
    q = q.reshape(SEQ, N_HEADS, HEAD)
    rep = N_HEADS // N_KV_HEADS
    k = jnp.repeat(k.reshape(SEQ, N_KV_HEADS, HEAD), rep, axis=1)
    v = jnp.repeat(v.reshape(SEQ, N_KV_HEADS, HEAD), rep, axis=1)
    scores = jnp.einsum("qhd,khd->hqk", q, k) / np.sqrt(HEAD)
    causal = jnp.tril(jnp.ones((SEQ, SEQ), bool))
    scores = jnp.where(causal, scores, -1e9)
    att = jnp.einsum("hqk,khd->qhd", jax.nn.softmax(scores, -1), v)
    x = x + lin(att.reshape(SEQ, DIM), "layers.0.attn.o_proj.weight")
    h = rms_norm(x, flat["layers.0.ffn_norm.weight"])
    up = jax.nn.gelu(lin(h, "layers.0.mlp.up.weight"))
    x = x + lin(up, "layers.0.mlp.down.weight") + flat["layers.0.mlp.down.bias"]
    logits = lin(rms_norm(x, flat["final_norm.weight"]), "lm_head.weight")
    logp = jax.nn.log_softmax(logits, -1)
    return -jnp.mean(logp[jnp.arange(SEQ), targets])


def data(step):
    rng = np.random.default_rng(1000 + step)
    return rng.integers(0, VOCAB, SEQ), rng.integers(0, VOCAB, SEQ)


def to_jax(flat, layout):
    """The tree adamx sees: torch's, or its matrices transposed (JAX's layout;
    the embedding keeps its rows)."""
    out = {}
    for name, x in flat.items():
        jax_layout = layout == "jax" and x.ndim == 2 and not name.startswith("embed")
        out[name] = jnp.asarray(x.T if jax_layout else x)
    return nest(out)


def from_jax(tree, layout):
    return {n: np.asarray(x) for n, x in from_tree(tree, layout).items()}


STEPS = 120


@pytest.mark.parametrize("layout", ["torch", "jax"])
@pytest.mark.parametrize(
    "hyper",
    [
        {},
        {
            "learning_rate": 3e-3,
            "b1": 0.8,
            "b2": 0.95,
            "eps": 1e-6,
            "weight_decay": 0.1,
        },
    ],
)
def test_matches_the_authors_package_in_float64(x64, layout, hyper):
    lr = hyper.get("learning_rate", 1e-3)
    b1, b2 = hyper.get("b1", 0.9), hyper.get("b2", 0.999)
    eps, wd = hyper.get("eps", 1e-8), hyper.get("weight_decay", 0.0)
    flat0 = initial()
    named = [
        (n, torch.nn.Parameter(torch.tensor(x, dtype=torch.float64)))
        for n, x in flat0.items()
    ]
    ref = Adam_mini(
        named, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd,
        dim=DIM, n_heads=N_HEADS, n_kv_heads=N_KV_HEADS, verbose=False,
    )  # fmt: skip
    tx = adamx.adam_mini(
        **hyper, partition=adamx.adam_mini_partition(N_HEADS, layout=layout)
    )
    params = to_jax(flat0, layout)
    state = tx.init(params)
    grad = jax.jit(jax.grad(loss_fn))

    @jax.jit
    def step(params, state, tokens, targets):
        g = jax.grad(lambda p: loss_fn(from_tree(p, layout), tokens, targets))(params)
        u, state = tx.update(g, state, params)
        return adamx.apply_updates(params, u), state

    worst = 0.0
    for t in range(STEPS):
        tokens, targets = data(t)
        theirs = {n: p.detach().numpy() for n, p in named}
        g = grad({n: jnp.asarray(x) for n, x in theirs.items()}, tokens, targets)
        for n, p in named:
            p.grad = torch.tensor(np.asarray(g[n]))
        ref.step()
        params, state = step(params, state, tokens, targets)
        ours = from_jax(params, layout)
        for n, p in named:
            diff = np.abs(ours[n] - p.detach().numpy()).max()
            worst = max(worst, diff)
            assert diff < 1e-10, (n, t, diff)
    moved = max(np.abs(ours[n] - flat0[n]).max() for n in flat0)
    assert moved > 1e-2, moved  # the run moved the params
    # One v per block, as the reference keeps them.
    vmean = state[0].vmean
    q = vmean["layers"][0]["attn"]["q_proj"]["weight"]
    k = vmean["layers"][0]["attn"]["k_proj"]["weight"]
    assert q.size == N_HEADS and k.size == N_KV_HEADS
    assert vmean["layers"][0]["attn_norm"]["weight"].size == 1
    assert vmean["embed"]["weight"].shape == (VOCAB, 1)
    print(f"max abs diff over {STEPS} steps: {worst:.2e}")


def from_tree(tree, layout):
    """The loss's flat torch-layout view of adamx's tree (traceable)."""
    flat = {_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
    return {
        n: (x.T if layout == "jax" and x.ndim == 2 and not n.startswith("embed") else x)
        for n, x in flat.items()
    }


def test_default_partition_blocks():
    part = adamx.adam_mini_partition()
    assert part("w", (4, 6)) == (1, 6)  # unnamed matrix: per output neuron
    assert part("b", (6,)) == (1,)  # unnamed vector: one block
    assert part("dense.bias", (6,)) is None  # Adam
    assert part("tok_embed.embedding", (10, 4)) == (10, 1)
    assert adamx.adam_mini_partition(2, layout="torch")("q_proj.weight", (8, 8)) == (
        2,
        1,
    )


def test_a_partition_that_does_not_divide_a_leaf_is_refused_at_init():
    tx = adamx.scale_by_adam_mini(partition=lambda name, shape: (3,) * len(shape))
    with pytest.raises(ValueError, match=r"\['a'\]\['w'\].*'a.w'.*shape \(4, 6\)"):
        tx.init({"a": {"w": jnp.zeros((4, 6))}})
    heads = adamx.scale_by_adam_mini(partition=adamx.adam_mini_partition(3))
    with pytest.raises(ValueError, match=r"q_proj.*shape \(8, 8\)"):
        heads.init({"q_proj": jnp.zeros((8, 8))})


def test_a_flat_layout_is_refused():
    flat = adamx.ravel({"w": jnp.zeros((2, 3))})
    with pytest.raises(TypeError, match="scale_by_adam_mini.*FlatParams"):
        adamx.adam_mini().init(flat)


def test_block_second_moment_is_the_mean_square_of_its_block(x64):
    g = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)))}
    tx = adamx.scale_by_adam_mini(b1=0.0, b2=0.0, eps=0.0)
    u, state = tx.update(g, tx.init(g))
    rms = np.sqrt(np.mean(np.asarray(g["w"]) ** 2, axis=0, keepdims=True))
    np.testing.assert_allclose(state.vmean["w"], rms**2, rtol=1e-14)
    np.testing.assert_allclose(u["w"], np.asarray(g["w"]) / rms, rtol=1e-14)


def test_state_bytes_at_32_and_8_bits():
    params = {"mlp": {"kernel": jnp.zeros((1024, 1024))}}
    full = adamx.state_nbytes(jax.eval_shape(adamx.adam_mini().init, params))
    eight = adamx.state_nbytes(
        jax.eval_shape(adamx.adam_mini(state_bits=8).init, params)
    )
    per = 1024 * 1024
    assert full / per < 4.01 and eight / per < 1.04, (full / per, eight / per)
