"""Tests of adamx/native.py: building, caching and loading the native kernels."""

import ctypes
import functools
import subprocess
import warnings

import jax
import pytest
from helpers import assert_bitwise_equal
from test_inplace import edge_gradients, grads_at, make_flat, make_tree

import adamx
from adamx import kernels, native

needs_kernel = pytest.mark.skipif(
    not adamx.native_available(), reason="no C++ compiler to build the kernel"
)


def test_a_failed_build_names_the_compiler_and_its_message(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAMX_CACHE_DIR", str(tmp_path))
    bad = tmp_path / "broken-c++"
    bad.write_text(
        "#!/bin/sh\n"
        '[ "$1" = --version ] && { echo "broken-c++ 1.0"; exit 0; }\n'
        "echo 'cc1plus: fatal error: out of luck' >&2\n"
        "exit 1\n"
    )
    bad.chmod(0o755)
    with pytest.raises(RuntimeError, match="out of luck"):
        native.build(str(bad))
    assert list(tmp_path.glob("*.so")) == []


@needs_kernel
def test_builds_are_cached_per_source_and_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAMX_CACHE_DIR", str(tmp_path))
    compiler = native.shutil.which("g++")
    first = native.build(compiler)
    assert first.parent == tmp_path and first.exists()
    mtime = first.stat().st_mtime_ns
    assert native.build(compiler) == first
    assert first.stat().st_mtime_ns == mtime  # reused, not rebuilt
    # The library exports the handler XLA calls.
    symbols = subprocess.run(
        ["nm", "-D", str(first)], capture_output=True, text=True
    ).stdout
    assert "AdamxAdamStep" in symbols


def test_without_a_compiler_the_reason_says_so(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    assert native.load.__wrapped__() == "no C++ compiler: set $CXX or install g++"


def test_without_a_kernel_step_warns_once_and_still_steps(monkeypatch):
    monkeypatch.setattr(native, "load", lambda: "no C++ compiler: test")
    native._warn_once.cache_clear()
    tx = adamx.adam(1e-2)
    flat = make_flat()
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler: test"):
        params, state = adamx.step(tx, flat, tx.init(flat), flat)
    updates, ref_state = tx.update(flat, tx.init(flat), flat)
    assert_bitwise_equal(
        (params, state), (adamx.apply_updates(flat, updates), ref_state)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adamx.step(tx, flat, state, params)
    native._warn_once.cache_clear()


# Builds of the 8-bit kernel without some of this machine's instructions,
# each registered under a name of its own. Where the machine lacks them, the
# build is the usual one, and the test compares it with itself.
REDUCED_BUILDS = {
    "portable": "-mno-avx512f",  # the loops without AVX-512
    "no VBMI": "-mno-avx512vbmi",  # AVX-512 decoding by float permutes
}


@functools.cache
def reduced_8bit_target(build):
    compiler = native.shutil.which("g++")
    flags = (*native.FLAGS, REDUCED_BUILDS[build])
    library = ctypes.cdll.LoadLibrary(str(native.build(compiler, flags)))
    name = "adamx_test_8bit_step_" + build.replace(" ", "_")
    jax.ffi.register_ffi_target(
        name, jax.ffi.pycapsule(library.AdamxAdam8bitStep), platform="cpu"
    )
    return name


@needs_kernel
@pytest.mark.internals
@pytest.mark.parametrize("build", list(REDUCED_BUILDS))
@pytest.mark.parametrize("case", ["edges", "tree"])
def test_8bit_kernel_built_without_avx512_paths_steps_to_the_same_bits(
    case, build, monkeypatch
):
    # The fast build (encoder tables, decoding by byte permutes where the CPU
    # has VBMI) against a build without VBMI (decoding by float permutes) and
    # the portable loops, over several steps so that old codes decode too.
    if case == "edges":
        tx, params = adamx.adam(1.0, b1=0.0, b2=0.0, state_bits=8), edge_gradients(1)
    else:
        tx, params = adamx.adamw(2e-2, weight_decay=0.1, state_bits=8), make_tree()

    def compiled_step(state):
        # A function of its own each time: jit would reuse the other's trace.
        def step(p, s, g):
            return adamx.step(tx, g, s, p)

        return jax.jit(step).lower(*state, params).compile()

    fast = (params, tx.init(params))
    target = reduced_8bit_target(build)
    with monkeypatch.context() as patch:
        patch.setattr(kernels.ADAM, "target_8", target)
        reduced_step = compiled_step(fast)
    fast_step = compiled_step(fast)
    assert target in reduced_step.as_text()
    assert target not in fast_step.as_text()
    reduced = fast
    for i in range(4):
        grads = grads_at(params, i) if case == "tree" else edge_gradients(i)
        fast = fast_step(*fast, grads)
        reduced = reduced_step(*reduced, grads)
        assert_bitwise_equal(fast, reduced)
