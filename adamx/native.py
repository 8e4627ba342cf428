r"""The native library: C++ kernels built on first use and registered with XLA.

The kernels (``native_adam.cc``, beside this module) are XLA FFI handlers. They
are compiled with the system's C++ compiler (``$CXX``, else ``g++``) the first
time they are needed, in a few seconds, and cached in ``$ADAMX_CACHE_DIR``
(default ``~/.cache/adamx``), one library per source, flags, compiler, jaxlib
and CPU. Without a compiler, or if the build fails, :func:`native_available`
says so (once, as a warning with the compiler's message) and
:func:`adamx.step` runs the optimizer's chain instead.

Which optimizers each kernel computes is :mod:`adamx.kernels`' table; how a
step hands its leaves to them is :mod:`adamx.inplace`.
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
from pathlib import Path

import jax
import jaxlib

__all__ = ["TARGETS", "native_available"]

SOURCE = Path(__file__).with_name("native_adam.cc")
#: The FFI targets the library registers: XLA's name -> the handler's symbol.
TARGETS = {
    "adamx_adam_step": "AdamxAdamStep",
    "adamx_adam_8bit_step": "AdamxAdam8bitStep",
}
# Contraction into fused multiply-adds as XLA's CPU backend contracts, so that
# the results are the chain's bit for bit. -fno-math-errno (sqrt) and
# -fno-trapping-math (selects over float comparisons) let loops vectorize and
# change no result.
FLAGS = (
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


def build(compiler: str, flags: tuple[str, ...] = FLAGS) -> Path:
    """The library built from :data:`SOURCE` with ``compiler`` and ``flags``.

    Reused from the cache when one fits; built beside its place in the cache and
    renamed into it otherwise, so processes that build at once never load a
    half-written file.

    Args:
        compiler: the C++ compiler's path.
        flags: its flags.

    Returns:
        The path of the shared library.

    Raises:
        RuntimeError: with the compiler's message, if the build fails.
    """
    version = _run([compiler, "--version"])
    key = hashlib.sha256(
        "\0".join(
            [
                SOURCE.read_text(),
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
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        include = f"-I{jax.ffi.include_dir()}"
        _run([compiler, *flags, include, str(SOURCE), "-o", str(built)])
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
def load() -> str | None:
    """Build the library and register its targets once; why it is not there, or None."""
    compiler = os.environ.get("CXX") or shutil.which("g++")
    if not compiler:
        return "no C++ compiler: set $CXX or install g++"
    try:
        library = ctypes.cdll.LoadLibrary(str(build(compiler)))
    except (OSError, RuntimeError) as error:
        return f"building {SOURCE.name} with {compiler} failed: {error}"
    for target, symbol in TARGETS.items():
        handler = getattr(library, symbol)
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
    return None


def native_available() -> bool:
    """Whether :func:`adamx.step` can run its native CPU kernels here.

    The first call builds the kernels (a few seconds) if no cached build fits
    this machine; a failed build is reported once as a warning with the
    compiler's message, and :func:`adamx.step` then runs ``tx.update`` and
    ``apply_updates`` instead.

    Returns:
        ``True`` if the kernels are built and registered with XLA.

    Example:
        >>> import adamx
        >>> adamx.native_available() in (True, False)
        True
    """
    reason = load()
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
