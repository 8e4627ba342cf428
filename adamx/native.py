r"""An optimizer step that writes the params in place: one pass per buffer on CPU.

Optax's protocol returns updates that ``apply_updates`` then adds to the params,
so an Adam step writes the update out and reads it back; XLA's CPU backend also
writes each new moment in a loop of its own. On a float32
:class:`~adamx.FlatParams` that is 40 bytes per parameter where the step's own
traffic is 28 (read g, p, m, v; write p, m, v). :func:`step` takes the params
and returns the new ones, so for ``adam(..., fused=True)`` and
``adamw(..., fused=True)`` it runs a native kernel that reads and writes each
buffer once, in place when the params and state are donated::

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(flat, opt_state, batch):
        grads = jax.grad(loss_fn)(flat, batch)
        return adamx.step(tx, grads, opt_state, flat)

The kernel (``native_adam.cc``, beside this module) is compiled with the
system's C++ compiler (``$CXX``, else ``g++``) on first use and cached in
``$ADAMX_CACHE_DIR`` (default ``~/.cache/adamx``), per source, compiler, jaxlib
and CPU. Its arithmetic is the chain's, operation for operation, so the results
are the same bit for bit. Any other case (other optimizers, plain trees,
non-float32 buffers, other platforms, no compiler) runs ``tx.update`` and
``apply_updates``: the same numbers, XLA's speed.
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
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jaxlib

from adamx.base import (
    GradientTransformation,
    OptState,
    Params,
    ScalarOrSchedule,
    Updates,
    apply_updates,
)
from adamx.fused import FlatParams

__all__ = ["native_available", "step"]

_SOURCE = Path(__file__).with_name("native_adam.cc")
_TARGET = "adamx_adam_step"
# Contraction into fused multiply-adds as XLA's CPU backend contracts, so that the
# results are the chain's bit for bit; -fno-math-errno lets sqrt vectorize and
# changes no result.
_FLAGS = (
    "-O3",
    "-march=native",
    "-ffp-contract=fast",
    "-fno-math-errno",
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
    """Mark ``tx`` (a fused Adam or AdamW chain) as one the native kernel runs."""
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


def _build(compiler: str) -> Path:
    version = _run([compiler, "--version"])
    key = hashlib.sha256(
        "\0".join(
            [
                _SOURCE.read_text(),
                " ".join(_FLAGS),
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
        _run([compiler, *_FLAGS, include, str(_SOURCE), "-o", str(built)])
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
    jax.ffi.register_ffi_target(
        _TARGET, jax.ffi.pycapsule(library.AdamxAdamStep), platform="cpu"
    )
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


def _float32_buffers(*trees: Any) -> bool:
    return all(
        isinstance(t, FlatParams)
        and all(jnp.dtype(b.dtype) == jnp.float32 for b in t.buffers.values())
        for t in trees
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

    The numbers are those of ``tx.update`` followed by
    :func:`~adamx.apply_updates`, bit for bit. For ``adam(..., fused=True)`` or
    ``adamw(..., fused=True)`` (any learning rate or schedule, float weight
    decay or schedule, no mask, ``nesterov=False``, float32 state) on a
    float32 :class:`~adamx.FlatParams` on CPU, one native loop per buffer
    updates the params and both moments together, in place when the jitted
    step donates them. Other cases, and wrappers around those optimizers such
    as :func:`~adamx.inject_hyperparams`, run ``tx.update`` and
    ``apply_updates``.

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
    if spec is None or not _float32_buffers(grads, params) or not native_available():
        updates, opt_state = tx.update(grads, opt_state, params)
        return apply_updates(params, updates), opt_state
    # The chain's own update gives the new counts and learning rate. Its
    # element-wise results are returned only on platforms without the kernel;
    # on CPU nothing reads them and XLA drops them as dead code.
    updates, new_state = tx.update(grads, opt_state, params)
    chain_params = apply_updates(params, updates)
    adam_state, lr_state = new_state[0], new_state[-1]
    scalars, decay = _scalars(spec, adam_state.count, lr_state, opt_state)
    buffers, mu, nu = {}, {}, {}
    for name in params.buffers:
        out = (
            chain_params.buffers[name],
            adam_state.mu.buffers[name],
            adam_state.nu.buffers[name],
        )
        operands = (
            grads.buffers[name],
            params.buffers[name],
            opt_state[0].mu.buffers[name],
            opt_state[0].nu.buffers[name],
            scalars,
        )
        buffers[name], mu[name], nu[name] = jax.lax.platform_dependent(
            out,
            operands,
            cpu=functools.partial(_native_step, decay=decay),
            default=lambda out, operands: out,
        )
    layout = params.layout
    new_adam = adam_state._replace(mu=FlatParams(mu, layout), nu=FlatParams(nu, layout))
    return FlatParams(buffers, layout), (new_adam, *new_state[1:])


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


def _native_step(out: Any, operands: tuple, *, decay: bool) -> tuple:
    del out
    g, p, m, v, scalars = operands
    shape = jax.ShapeDtypeStruct(p.shape, p.dtype)
    return tuple(
        jax.ffi.ffi_call(
            _TARGET,
            (shape, shape, shape),
            input_output_aliases={1: 0, 2: 1, 3: 2},
        )(g, p, m, v, scalars, decay=decay)
    )
