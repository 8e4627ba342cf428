r"""An optimizer step that writes the params in place: one pass per buffer on CPU.

Optax's protocol returns updates that ``apply_updates`` then adds to the params,
so an Adam step writes the update out and reads it back; XLA's CPU backend also
writes each new moment in a loop of its own: 40 bytes per float32 parameter
where the step's own traffic is 28 (read g, p, m, v; write p, m, v). With
8-bit state XLA makes four passes, each decoding the moments again.
:func:`step` takes the params and returns the new ones, so for ``adam`` and
``adamw`` it runs a native kernel that reads and writes each buffer or leaf
once, in place when the params and state are donated::

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, batch):
        grads = jax.grad(loss_fn)(params, batch)
        return adamx.step(tx, grads, opt_state, params)

The kernels (``native_adam.cc``, beside this module) are compiled with the
system's C++ compiler (``$CXX``, else ``g++``) on first use and cached in
``$ADAMX_CACHE_DIR`` (default ``~/.cache/adamx``), per source, compiler,
jaxlib and CPU. Any other case (other optimizers, non-float32 leaves, other
platforms, no compiler) runs ``tx.update`` and ``apply_updates``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir

from adamx import lowbit
from adamx.base import (
    GradientTransformation,
    OptState,
    Params,
    ScalarOrSchedule,
    Updates,
    apply_updates,
    check_same_shapes,
)

__all__ = ["native_available", "step"]

_SOURCE = Path(__file__).with_name("native_adam.cc")
_TARGET_32 = "adamx_adam_step"
_TARGET_8 = "adamx_adam_8bit_step"
_BLOCK = 256  # the 8-bit kernel's block size
# Leaves per kernel call. XLA's compile time grows with a call's operands
# (one call for 400 leaves of 500: 4.0 s, 200: 0.73 s, 100: 0.19 s); its
# fusion pass checks each operand against each of the call's in-place pairs.
# A training step over 1000 leaves of 16 floats compiled in 3.2 s in calls of
# 16, 3.35 s in calls of 24 and 3.5 s in calls of 32, and ran at the same
# speed. The 8-bit kernel keeps calls of 32: in calls of 16 it ran on 200
# leaves of 80,000 4% slower and on ResNet-50's 7% slower (each call waits for
# its last chunk, and its chunks are dearer).
_LEAVES_PER_CALL_32 = 16
_LEAVES_PER_CALL_8 = 32
# Contraction into fused multiply-adds as XLA's CPU backend contracts, so that the
# results are the chain's bit for bit. -fno-math-errno (sqrt) and
# -fno-trapping-math (selects over float comparisons) let loops vectorize and
# change no result.
_FLAGS = (
    "-O3",
    "-march=native",
    "-ffp-contract=fast",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fopenmp-simd",
    "-std=c++17",
    "-shared",
    "-fPIC",
)


class _AdamSpec(NamedTuple):
    b1: Any
    b2: Any
    eps: Any
    eps_root: Any
    weight_decay: ScalarOrSchedule | None  # None: adam, no decay term


# Keyed by the update function, so that a wrapper (which has its own) does not
# inherit the spec of the transformation it wraps.
_SPECS: weakref.WeakKeyDictionary[Any, _AdamSpec] = weakref.WeakKeyDictionary()


def register_adam(
    tx: GradientTransformation,
    b1: Any,
    b2: Any,
    eps: Any,
    eps_root: Any,
    weight_decay: ScalarOrSchedule | None,
) -> GradientTransformation:
    """Mark ``tx`` (an Adam or AdamW chain) as one the native kernels run."""
    _SPECS[tx.update] = _AdamSpec(b1, b2, eps, eps_root, weight_decay)
    return tx


def _cache_dir() -> Path:
    if "ADAMX_CACHE_DIR" in os.environ:
        return Path(os.environ["ADAMX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "adamx"


def _cpu_identity() -> str:
    # -march=native code runs only on CPUs with the build machine's features, so
    # a cache shared between machines keeps a library per kind of CPU.
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({ln for ln in lines if ln.startswith(wanted)}))


def _build(compiler: str, flags: tuple[str, ...] = _FLAGS) -> Path:
    version = _run([compiler, "--version"])
    key = hashlib.sha256(
        "\0".join(
            [
                _SOURCE.read_text(),
                " ".join(flags),
                version,
                jaxlib.__version__,
                _cpu_identity(),
            ]
        ).encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"adam-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place, so processes that build
    # at once never load a half-written file.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        include = f"-I{jax.ffi.include_dir()}"
        _run([compiler, *flags, include, str(_SOURCE), "-o", str(built)])
        os.replace(built, target)
    return target


def _run(command: list[str]) -> str:
    """The command's output; a ``RuntimeError`` with its error output if it fails."""
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as error:
        raise RuntimeError(str(error)) from error
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip()[-2000:])
    return result.stdout


@functools.cache
def _load() -> str | None:
    """Build and register the kernel once; the reason it is not there, or None."""
    compiler = os.environ.get("CXX") or shutil.which("g++")
    if not compiler:
        return "no C++ compiler: set $CXX or install g++"
    try:
        library = ctypes.cdll.LoadLibrary(str(_build(compiler)))
    except (OSError, RuntimeError) as error:
        return f"building {_SOURCE.name} with {compiler} failed: {error}"
    for target, handler in [
        (_TARGET_32, library.AdamxAdamStep),
        (_TARGET_8, library.AdamxAdam8bitStep),
    ]:
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
    return None


def native_available() -> bool:
    """Whether :func:`step` can run its native CPU kernel here.

    The first call builds the kernel (a few seconds) if no cached build fits
    this machine; a failed build is reported once as a warning with the
    compiler's message, and :func:`step` then runs ``tx.update`` and
    ``apply_updates`` instead.

    Returns:
        ``True`` if the kernel is built and registered with XLA.

    Example:
        >>> import adamx
        >>> adamx.native_available() in (True, False)
        True
    """
    reason = _load()
    if reason is not None:
        _warn_once(reason)
    return reason is None


@functools.cache
def _warn_once(reason: str) -> None:
    warnings.warn(
        f"adamx.step runs without its native kernel: {reason}",
        RuntimeWarning,
        stacklevel=3,
    )


def step(
    tx: GradientTransformation,
    grads: Updates,
    opt_state: OptState,
    params: Params,
) -> tuple[Params, OptState]:
    r"""Apply one step of ``tx``: new params and new state from the gradients.

    .. math:: (u_t, S_t) = \mathrm{update}(g_t, S_{t-1}, \theta_{t-1}), \qquad
        \theta_t = \theta_{t-1} + u_t

    For ``adam`` and ``adamw`` (any learning rate or schedule, float weight
    decay or schedule, no mask, ``nesterov=False``, default moment dtypes,
    ``state_bits`` 32 or 8), on CPU, a native loop updates the params and
    both moments together, in place when the jitted step donates them: one
    pass over each buffer of a :class:`~adamx.FlatParams` (``fused=True``) or
    each leaf of a tree, in calls of up to 16 leaves (32 with 8-bit state)
    that share their work out between threads. With 8-bit state it decodes,
    updates and encodes each block of 256 in one pass. Leaves that are not
    float32, and every other case (other optimizers, wrappers around these
    such as :func:`~adamx.inject_hyperparams`, other platforms, ``vmap``),
    run ``tx.update`` and :func:`~adamx.apply_updates`; for ``adam`` and
    ``adamw``, leaf by leaf, so that XLA compiles only the leaves the loop
    does not update and traces the chain once per kind of leaf rather than
    once per leaf. Which of the two runs is decided when the step is lowered
    for its platform (a module exported for several platforms holds both).

    Each leaf's new values are the chain's on that leaf alone. The float32
    loop computes the formula in the order XLA's CPU compiler evaluates it on
    one buffer, where the results are the jitted chain's bit for bit. On a
    tree of several leaves XLA divides by the bias corrections rather than
    multiplying by their reciprocals, and the chain's results then differ
    from these in the last bit of some params; with 8-bit state, a moment at
    a midpoint between two codes may then take the other code.

    Params sharded over several devices: the results are right, but XLA
    gathers each leaf for the kernel and returns it replicated (with
    ``Explicit`` mesh axes, sharded again as the params were). For sharded
    params use ``tx.update`` and ``apply_updates``, or
    :func:`~adamx.sharded` for sharded state.

    Args:
        tx: the optimizer.
        grads: the gradients, a tree like ``params``.
        opt_state: ``tx``'s state.
        params: the params the gradients were taken at.

    Returns:
        ``(new_params, new_opt_state)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import adamx
        >>> tx = adamx.adam(0.1, fused=True)
        >>> params = adamx.ravel({"w": jnp.array([1.0, -2.0])})
        >>> grads = adamx.ravel({"w": jnp.array([0.5, 0.5])})
        >>> params, state = adamx.step(tx, grads, tx.init(params), params)
        >>> print(params.unravel()["w"].round(4))
        [ 0.9 -2.1]
    """
    spec = _SPECS.get(tx.update)
    if spec is None or not native_available():
        updates, opt_state = tx.update(grads, opt_state, params)
        return apply_updates(params, updates), opt_state
    adam_state = opt_state[0]
    # The chain checks the trees it is given; it is given parts of them here.
    check_same_shapes("grads", grads, "state.mu", lowbit.as_placeholders(adam_state.mu))
    check_same_shapes("grads", grads, "state.nu", lowbit.as_placeholders(adam_state.nu))
    check_same_shapes("grads", grads, "params", params)
    g_leaves = jax.tree.leaves(grads)
    p_leaves, p_def = jax.tree.flatten(params)
    m_leaves, m_def = jax.tree.flatten(adam_state.mu, is_leaf=lowbit.is_quantized)
    v_leaves = jax.tree.flatten(adam_state.nu, is_leaf=lowbit.is_quantized)[0]
    leaves = list(zip(g_leaves, p_leaves, m_leaves, v_leaves, strict=True))
    kernels = [_kernel_for(*leaf) for leaf in leaves]

    # The states' other parts (step counts, schedules' states): the chain on
    # no leaves updates them.
    others = (adam_state._replace(mu=[], nu=[]), *opt_state[1:])
    new_state = tx.update([], others, [])[1]

    @jax.jit
    def chain_leaf(leaf: tuple, others: OptState) -> tuple:
        # The chain is element-wise, so a leaf alone with its moments takes
        # the tree's formula. Jitted, it is traced once per kind of leaf
        # (shape, dtype, moments), not once per leaf.
        g, p, m, v = leaf
        state = (others[0]._replace(mu=[m], nu=[v]), *others[1:])
        updates, state = tx.update([g], state, [p])
        return apply_updates([p], updates)[0], state[0].mu[0], state[0].nu[0]

    # Leaves no kernel takes run the chain; the others, one primitive that
    # each platform lowers its own way.
    rest = [i for i, kernel in enumerate(kernels) if kernel is None]
    native_kernels = {i: k for i, k in enumerate(kernels) if k is not None}
    done = list(native_kernels)
    rest_new = [chain_leaf(leaves[i], others) for i in rest]
    scalars, decay = _scalars(spec, new_state[0].count, new_state[-1], opt_state)
    done_new = _in_place(
        [leaves[i] for i in done],
        others,
        scalars,
        kernels=tuple(native_kernels.values()),
        decay=decay,
        chain_leaf=chain_leaf,
    )
    new: list[Any] = [None] * len(leaves)
    for i, leaf in zip(rest + done, rest_new + list(done_new), strict=True):
        new[i] = leaf
    new_p, new_m, new_v = (
        (list(x) for x in zip(*new, strict=True)) if new else ([],) * 3
    )
    new_adam = new_state[0]._replace(
        mu=jax.tree.unflatten(m_def, new_m), nu=jax.tree.unflatten(m_def, new_v)
    )
    return jax.tree.unflatten(p_def, new_p), (new_adam, *new_state[1:])


def _in_place(
    leaves: list[tuple],
    others: OptState,
    scalars: jax.Array,
    *,
    kernels: tuple[Callable, ...],
    decay: bool,
    chain_leaf: Callable,
) -> list[tuple]:
    """The leaves' new params and moments: by the kernels on CPU, else the chain.

    A primitive rather than ``lax.platform_dependent``: JAX traces neither
    way at trace time and lowers only the platform's way (both, for a module
    exported for several platforms), with no conditional around thousands of
    results for XLA to take apart. A training step over 1000 leaves traced in
    0.25 s less where the leaves have one shape, and in 4.3 s rather than
    10.4 s where each has its own (the chain is traced once per shape).
    """
    if not leaves:
        return []
    flat, in_def = jax.tree.flatten((leaves, others, scalars))
    # Where each leaf's params and moments sit among the operands: the results
    # have their types.
    out_index: list[int] = []
    start = 0
    for leaf in leaves:
        sizes = [len(jax.tree.leaves(x)) for x in leaf]
        out_index += range(start + sizes[0], start + sum(sizes))
        start += sum(sizes)
    out = _in_place_p.bind(
        *map(jnp.asarray, flat),
        in_def=in_def,
        out_index=tuple(out_index),
        kernels=kernels,
        decay=decay,
        chain_leaf=chain_leaf,
    )
    out_def = jax.tree.structure([leaf[1:] for leaf in leaves])
    return jax.tree.unflatten(out_def, out)


def _in_place_abstract(*avals: Any, out_index: tuple[int, ...], **_: Any) -> list:
    return [avals[i].update(weak_type=False) for i in out_index]


def _in_place_run(
    *flat: Any,
    by_kernels: bool,
    in_def: Any,
    kernels: tuple,
    decay: bool,
    chain_leaf: Callable,
    **_: Any,
) -> list:
    leaves, others, scalars = jax.tree.unflatten(in_def, flat)
    if by_kernels:
        new = _native_leaves(list(kernels), leaves, scalars, decay=decay)
    else:
        new = [chain_leaf(leaf, others) for leaf in leaves]
    return jax.tree.leaves(new)


def _in_place_lowering(by_kernels: bool) -> Callable:
    def lower(ctx: Any, *args: Any, **params: Any) -> Any:
        run = functools.partial(_in_place_run, by_kernels=by_kernels, **params)
        return mlir.lower_fun(run, multiple_results=True)(ctx, *args)

    return lower


def _in_place_eager(*flat: Any, **params: Any) -> Any:
    return jax.jit(functools.partial(_in_place_p.bind, **params))(*flat)


def _in_place_batched(args: tuple, dims: tuple, **params: Any) -> tuple:
    # Under vmap (an ensemble of models, say) the kernels have no batched
    # form: the chain runs, as on other platforms.
    run = functools.partial(_in_place_run, by_kernels=False, **params)
    out = jax.vmap(run, in_axes=dims)(*args)
    return out, [0] * len(out)


_in_place_p = Primitive("adamx_in_place_step")
_in_place_p.multiple_results = True
_in_place_p.def_abstract_eval(_in_place_abstract)
_in_place_p.def_impl(_in_place_eager)
mlir.register_lowering(_in_place_p, _in_place_lowering(True), platform="cpu")
mlir.register_lowering(_in_place_p, _in_place_lowering(False))
batching.primitive_batchers[_in_place_p] = _in_place_batched


def _kernel_for(g: Any, p: Any, m: Any, v: Any) -> Callable | None:
    """The kernel that updates this leaf, or None where the chain does."""
    # Empty leaves have nothing to update.
    if g.size == 0 or not (g.dtype == p.dtype == jnp.float32):
        return None
    if _is_8bit(m) and _is_8bit(v) and lowbit.explicit_sharding(g) is None:
        return _adam_8bit
    if _is_32bit(m, v):
        return _adam_32bit
    return None


def _native_leaves(
    kernels: list[Callable], leaves: list[tuple], scalars: jax.Array, *, decay: bool
) -> list[tuple]:
    """The leaves' new params and moments, each by its kernel."""
    new: list[Any] = [None] * len(leaves)
    # A call per kernel for many leaves at once, which it shares out between
    # threads as one range of work; in groups, because XLA's compile time grows
    # faster than the operands of one call.
    for kernel, per_call in (
        (_adam_32bit, _LEAVES_PER_CALL_32),
        (_adam_8bit, _LEAVES_PER_CALL_8),
    ):
        indices = [i for i, k in enumerate(kernels) if k is kernel]
        for start in range(0, len(indices), per_call):
            group = indices[start : start + per_call]
            results = kernel([leaves[i] for i in group], scalars, decay)
            for i, leaf in zip(group, results, strict=True):
                new[i] = leaf
    return new


def _is_32bit(m: Any, v: Any) -> bool:
    return not lowbit.is_quantized(m) and m.dtype == v.dtype == jnp.float32


def _is_8bit(m: Any) -> bool:
    return lowbit.is_quantized(m) and (m.bits, m.block_size) == (8, _BLOCK)


def _aliases(leaves: int, fixed: int, per_leaf: int) -> dict[int, int]:
    """Each leaf's operands after g aliased with its results, in order."""
    return {
        fixed + i * per_leaf + k: i * (per_leaf - 1) + k - 1
        for i in range(leaves)
        for k in range(1, per_leaf)
    }


def _adam_32bit(
    leaves: list[tuple[jax.Array, jax.Array, jax.Array, jax.Array]],
    scalars: jax.Array,
    decay: bool,
) -> list[tuple[jax.Array, jax.Array, jax.Array]]:
    # Leaves go in with their own shapes: the kernel reads them as row-major
    # runs of elements, and a reshape here would make XLA copy the donated
    # buffers of a leaf of rank 2 or more instead of updating them in place.
    results = [
        jax.ShapeDtypeStruct(x.shape, x.dtype) for leaf in leaves for x in leaf[1:]
    ]
    new = jax.ffi.ffi_call(
        _TARGET_32, results, input_output_aliases=_aliases(len(leaves), 1, 4)
    )(scalars, *[x for leaf in leaves for x in leaf], decay=decay)
    return [(new[3 * i], new[3 * i + 1], new[3 * i + 2]) for i in range(len(leaves))]


def _adam_8bit(
    leaves: list[
        tuple[jax.Array, jax.Array, lowbit.QuantizedArray, lowbit.QuantizedArray]
    ],
    scalars: jax.Array,
    decay: bool,
) -> list[tuple[jax.Array, lowbit.QuantizedArray, lowbit.QuantizedArray]]:
    values, encoders = _maps_8bit()
    operands, results = [], []
    for g, p, m, v in leaves:
        like = (p, m.codes, m.absmax, v.codes, v.absmax)
        operands += [g, *like]
        results += [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in like]
    new = jax.ffi.ffi_call(
        _TARGET_8, results, input_output_aliases=_aliases(len(leaves), 3, 6)
    )(scalars, values, encoders, *operands, decay=decay)
    out = []
    for i, (_, _, m, v) in enumerate(leaves):
        p, m_codes, m_absmax, v_codes, v_absmax = new[5 * i : 5 * i + 5]
        out.append(
            (
                p,
                lowbit.QuantizedArray(m_codes, m_absmax, m.format),
                lowbit.QuantizedArray(v_codes, v_absmax, v.format),
            )
        )
    return out


@functools.cache
def _maps_8bit() -> tuple[np.ndarray, np.ndarray]:
    """The 8-bit maps' values (2, 256) and encoders' constants, for the kernel."""
    maps = [lowbit.map_8bit(signed) for signed in (True, False)]
    values = np.stack([cmap.values for cmap in maps])
    encoders = np.stack(
        [
            np.concatenate(
                [
                    cmap.thresholds,
                    [cmap.zero_cut, cmap.one_cut, cmap.bin_scale],
                ]
            ).astype(np.float32)
            for cmap in maps
        ]
    )
    return values, encoders


def _scalars(
    spec: _AdamSpec, count: jax.Array, lr_state: Any, old_state: Any
) -> tuple[jax.Array, bool]:
    """The kernel's scalars, computed as the chain computes them."""

    def f32(x: Any) -> jax.Array:
        return jnp.asarray(x).astype(jnp.float32)

    b1, b2, eps, eps_root = map(f32, spec[:4])
    t = count.astype(jnp.float32)
    wd = spec.weight_decay
    if callable(wd):
        # add_decayed_weights' state counts its own steps.
        decay, wd = True, wd(old_state[1].count)
    else:
        decay = not (wd is None or (isinstance(wd, (int, float)) and wd == 0.0))
    scalars = jnp.stack(
        [
            1 - b1,
            b1,
            1 - b2,
            b2,
            1 / (1 - b1**t),
            1 / (1 - b2**t),
            eps,
            eps_root,
            f32(0.0 if wd is None else wd),
            # The chain scales by -lr after adding the decay term.
            -lr_state.learning_rate.astype(jnp.float32),
        ]
    )
    return scalars, decay
