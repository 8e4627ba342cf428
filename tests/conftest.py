"""Shared test set-up: eight host devices, strict dtype promotion, float64 on demand."""

import os

# Set before JAX is imported anywhere: pmap and sharding tests need several
# devices. The suite compiles thousands of small programs and runs each a few
# times, so LLVM optimizes the machine code less and XLA's element-wise
# emitters take the place of its fusion emitters, which compile in half the
# time (docs/contributing.md); -O0 changed bits the native-step tests compare,
# -O1 does not. Tests of bit-equality between programs that differ in what is
# constant compile those programs with helpers.DEFAULT_CODEGEN.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=1"
    " --xla_cpu_use_fusion_emitters=false",
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def strict_promotion():
    """Make implicit promotions (bf16 + f32, float ** int32, ...) raise.

    adamx casts on purpose, so it runs under this mode; Optax does not, so the
    comparisons against it run under the default mode.
    """
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    try:
        yield
    finally:
        jax.config.update("jax_numpy_dtype_promotion", "standard")


@pytest.fixture
def x64():
    """Run a test in float64, so that only the formula is compared."""
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", False)
