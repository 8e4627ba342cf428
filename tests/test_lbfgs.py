"""Tests of adamx/lbfgs.py and adamx/linesearch.py: L-BFGS and both line
searches against Optax 0.2.8 in float64 (iterates and line-search info over
100 steps), the two-loop recursion against a NumPy transcription of Nocedal &
Wright's Algorithm 7.4 and the dense BFGS recurrence, L-BFGS with a fixed step
against a NumPy transcription of their Algorithm 7.5, convergence on
Rosenbrock's function, complex params against the same problem split into real
parts, jit, extra arguments and bad input."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close

import adamx
from adamx.lbfgs import two_loop_recursion

STEPS = 100


# ------------------------------------------------------------ problems


def rosenbrock(w):
    """Rosenbrock's function in 5 dimensions, minimum 0 at (1, ..., 1)."""
    return jnp.sum(100.0 * (w[1:] - w[:-1] ** 2) ** 2 + (1.0 - w[:-1]) ** 2)


ROSENBROCK_START = np.array([-1.2, 1.0, -0.5, 0.8, 1.5])

_rng = np.random.default_rng(0)
A_U, A_V = _rng.normal(size=(7, 3)), _rng.normal(size=(7, 4))
TARGET = _rng.normal(size=7)


def sine_least_squares(p):
    """Least squares in a two-leaf tree, plus a sine term (not convex)."""
    r = A_U @ p["u"] + A_V @ p["v"].reshape(-1) - TARGET
    return 0.5 * jnp.sum(r**2) + 0.3 * jnp.sum(jnp.sin(3.0 * p["v"]))


def sine_least_squares_grad(p):
    """Its gradient in NumPy, for the NumPy transcriptions."""
    r = A_U @ p["u"] + A_V @ p["v"].reshape(-1) - TARGET
    return {
        "u": A_U.T @ r,
        "v": (A_V.T @ r).reshape(2, 2) + 0.9 * np.cos(3.0 * p["v"]),
    }


def tree_start(dtype=np.float64):
    return {"u": np.array([0.5, -1.0, 2.0], dtype), "v": np.ones((2, 2), dtype)}


def barrier(p, x):
    """A log barrier weighted by ``x`` (an extra argument, fresh at each step):
    not finite for w <= 0, so that long steps must be shrunk."""
    return (
        jnp.sum(x[:3] * p["u"] - jnp.log(p["u"]))
        + jnp.sum(x[3:].reshape(2, 2) * p["v"] - jnp.log(p["v"]))
        + 0.1 * jnp.sum(jnp.sin(p["v"]))
    )


def barrier_start():
    return {"u": np.array([0.5, 1.0, 2.0]), "v": np.full((2, 2), 3.0)}


def barrier_weights(steps=STEPS):
    return np.random.default_rng(1).uniform(0.2, 2.0, size=(steps, 7))


# ------------------------------------------------------------ harness


def runner(lib, tx, f, steps=STEPS):
    """``run(w0, xs=None)``: ``tx`` from ``w0`` in one jitted ``lax.scan``;
    the iterates, the line search's info and its step sizes after each step.

    ``lib`` is ``adamx`` or ``optax`` (their ``value_and_grad_from_state`` and
    ``apply_updates``). Without ``xs`` the objective is ``f(w)`` and its value
    and gradient come from the state; with ``xs`` it is ``f(w, x=xs[t])``.
    """
    reuse = lib.value_and_grad_from_state(f)

    def step(carry, x):
        w, state = carry
        if x is None:
            value, grad = reuse(w, state=state)
            kwargs = {}
        else:
            value, grad = jax.value_and_grad(f)(w, x)
            kwargs = {"x": x}
        u, state = tx.update(
            grad, state, w, value=value, grad=grad, value_fn=f, **kwargs
        )
        w = lib.apply_updates(w, u)
        return (w, state), (w, state[-1].info, state[-1].learning_rate)

    @jax.jit
    def run(w0, xs):
        return jax.lax.scan(step, (w0, tx.init(w0)), xs, length=steps)[1]

    return lambda w0, xs=None: run(jax.tree.map(jnp.asarray, w0), xs)


def trajectory(lib, tx, f, w0, xs=None, steps=STEPS):
    """One run of :func:`runner`."""
    return runner(lib, tx, f, steps)(w0, xs)


def assert_same_run(ours, theirs, atol=1e-10):
    """Iterates and step sizes within ``atol``; the info's counts equal and
    its errors within ``atol``. Returns the largest difference."""
    (w, info, lr), (w_o, info_o, lr_o) = ours, theirs
    assert_trees_close(w, w_o, 0.0, atol)
    assert_trees_close(lr, lr_o, 0.0, atol)
    assert info._fields == info_o._fields
    np.testing.assert_array_equal(
        info.num_linesearch_steps, info_o.num_linesearch_steps
    )
    for field in info._fields[1:]:
        np.testing.assert_allclose(
            getattr(info, field), getattr(info_o, field), rtol=0.0, atol=atol
        )
    return max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(w), jax.tree.leaves(w_o), strict=True)
    )


# ------------------------------------------------------------ against Optax


def test_lbfgs_matches_optax_on_rosenbrock_and_converges(x64):
    run_ours = runner(adamx, adamx.lbfgs(), rosenbrock)
    run_theirs = runner(optax, optax.lbfgs(), rosenbrock)
    ours, theirs = run_ours(ROSENBROCK_START), run_theirs(ROSENBROCK_START)
    assert_same_run(ours, theirs)
    # From the minimum, a zero gradient: gamma_0 = min(1, 1/0) = 1, a zero
    # direction, a slope of 0; no step, as in Optax.
    at_min = run_ours(np.ones(5))
    assert_same_run(at_min, run_theirs(np.ones(5)))
    np.testing.assert_array_equal(at_min[0], np.ones((STEPS, 5)))
    w, info, _ = ours
    # Converged: to the minimum, with line searches that met both criteria.
    np.testing.assert_allclose(w[-1], np.ones(5), rtol=0, atol=1e-12)
    assert float(rosenbrock(w[-1])) < 1e-24
    assert float(rosenbrock(w[29])) > 1e-3  # not from the start
    assert np.max(info.num_linesearch_steps) > 1  # the zoom phase ran
    assert np.all(np.asarray(info.decrease_error) == 0.0)


LBFGS_OPTIONS = {
    # A short memory that wraps around, no scaling of the initial inverse
    # Hessian, and the backtracking line search keeping the gradient.
    "memory3-unscaled-backtracking": lambda lib: lib.lbfgs(
        memory_size=3,
        scale_init_precond=False,
        linesearch=lib.scale_by_backtracking_linesearch(
            20, decrease_factor=0.5, store_grad=True
        ),
    ),
}


@pytest.mark.parametrize("make", LBFGS_OPTIONS.values(), ids=LBFGS_OPTIONS)
def test_lbfgs_options_match_optax(x64, make):
    ours = trajectory(adamx, make(adamx), sine_least_squares, tree_start())
    theirs = trajectory(optax, make(optax), sine_least_squares, tree_start())
    assert_same_run(ours, theirs)


def test_backtracking_matches_optax_with_extra_args_and_a_barrier(x64):
    def make(lib):
        return lib.chain(
            lib.sgd(1.0),
            lib.scale_by_backtracking_linesearch(
                max_backtracking_steps=12,
                slope_rtol=0.3,
                decrease_factor=0.6,
                increase_factor=2.0,
                max_learning_rate=4.0,
                atol=1e-8,
                rtol=1e-6,
            ),
        )

    xs = barrier_weights()
    start = barrier_start()
    ours = trajectory(adamx, make(adamx), barrier, start, xs)
    theirs = trajectory(optax, make(optax), barrier, start, xs)
    assert_same_run(ours, theirs)
    w, info, lr = ours
    # Steps outside the domain were shrunk; the first guesses grew.
    assert np.max(info.num_linesearch_steps) > 2
    assert np.max(lr) > 1.0
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(w))


ZOOM_OPTIONS = {
    "defaults": {},
    # Few steps and a strict curvature criterion, so that rounds run out and
    # fall back to the best point with sufficient decrease; Armijo only.
    "strict-fallback": dict(
        max_linesearch_steps=4,
        max_learning_rate=3.0,
        tol=1e-12,
        increase_factor=3.0,
        slope_rtol=0.2,
        curv_rtol=0.05,
        approx_dec_rtol=None,
        stepsize_precision=1e-3,
        initial_guess_strategy="one",
    ),
}


@pytest.mark.parametrize("hyper", ZOOM_OPTIONS.values(), ids=ZOOM_OPTIONS)
def test_zoom_matches_optax_with_extra_args_and_a_barrier(x64, hyper):
    def make(lib):
        return lib.chain(
            lib.sgd(1.0),
            lib.scale_by_zoom_linesearch(**{"max_linesearch_steps": 15, **hyper}),
        )

    xs = barrier_weights()
    start = barrier_start()
    ours = trajectory(adamx, make(adamx), barrier, start, xs)
    theirs = trajectory(optax, make(optax), barrier, start, xs)
    assert_same_run(ours, theirs)
    info = ours[1]
    assert np.max(info.num_linesearch_steps) > 1
    if hyper:
        assert np.max(info.num_linesearch_steps) > 2  # the zoom phase ran
        assert np.max(info.curvature_error) > 0.0  # some rounds fell back


def test_names_arguments_defaults_and_state_fields_follow_optax():
    for name in [
        "lbfgs",
        "scale_by_lbfgs",
        "scale_by_backtracking_linesearch",
        "scale_by_zoom_linesearch",
        "value_and_grad_from_state",
    ]:
        ours = inspect.signature(getattr(adamx, name)).parameters
        theirs = inspect.signature(getattr(optax, name)).parameters
        assert list(ours) == list(theirs), name
        for arg, p in theirs.items():
            assert ours[arg].kind == p.kind, (name, arg)
            if arg != "linesearch":
                assert ours[arg].default == p.default, (name, arg)
    # lbfgs's default line search: the zoom, starting each round at 1.
    default = inspect.signature(adamx.lbfgs).parameters["linesearch"].default
    assert isinstance(default, adamx.GradientTransformationExtraArgs)
    for state in [
        "ScaleByLBFGSState",
        "ScaleByBacktrackingLinesearchState",
        "ScaleByZoomLinesearchState",
        "ZoomLinesearchInfo",
    ]:
        assert getattr(adamx, state)._fields == getattr(optax, state)._fields
    # Optax does not export its class of the backtracking search's info.
    info = optax.scale_by_backtracking_linesearch(1).init(jnp.ones(2)).info
    assert adamx.BacktrackingLinesearchInfo._fields == info._fields


def test_states_have_optax_s_structure_and_dtypes(x64):
    w = jnp.asarray(ROSENBROCK_START)
    for ours, theirs in [
        (adamx.lbfgs(memory_size=4), optax.lbfgs(memory_size=4)),
        (
            adamx.scale_by_backtracking_linesearch(5, store_grad=True),
            optax.scale_by_backtracking_linesearch(5, store_grad=True),
        ),
    ]:
        a, b = jax.tree.leaves(ours.init(w)), jax.tree.leaves(theirs.init(w))
        assert [(x.shape, x.dtype) for x in a] == [(x.shape, x.dtype) for x in b]


def test_init_takes_shape_dtype_structs_as_optax_does():
    # What jax.eval_shape and sharding planners pass: shapes and dtypes only.
    abstract = {"w": jax.ShapeDtypeStruct((2, 4, 8), jnp.float32)}
    concrete = {"w": jnp.zeros((2, 4, 8), jnp.float32)}
    a = jax.tree.leaves(adamx.lbfgs(memory_size=3).init(abstract))
    for make in (adamx.lbfgs, optax.lbfgs):
        b = jax.tree.leaves(make(memory_size=3).init(concrete))
        assert [(x.shape, x.dtype) for x in a] == [(x.shape, x.dtype) for x in b]


# ------------------------------------------------------------ NumPy references


def np_two_loop(g, pairs, gamma):
    """Nocedal & Wright's Algorithm 7.4 on flat vectors: ``pairs`` is the list
    of (s, y) from oldest to newest."""
    q = g.copy()
    alphas = []
    for s, y in reversed(pairs):
        rho = 1.0 / (y @ s)
        alpha = rho * (s @ q)
        q = q - alpha * y
        alphas.append(alpha)
    r = gamma * q
    for (s, y), alpha in zip(pairs, reversed(alphas), strict=True):
        rho = 1.0 / (y @ s)
        beta = rho * (y @ r)
        r = r + s * (alpha - beta)
    return r


def np_bfgs_matrix(pairs, gamma, n):
    """The same inverse Hessian as a matrix: H <- V^T H V + rho s s^T with
    V = I - rho y s^T, from H = gamma I (their (7.19))."""
    h = gamma * np.eye(n)
    for s, y in pairs:
        rho = 1.0 / (y @ s)
        v = np.eye(n) - rho * np.outer(y, s)
        h = v.T @ h @ v + rho * np.outer(s, s)
    return h


def test_two_loop_recursion_is_algorithm_7_4(x64):
    rng = np.random.default_rng(3)
    n, m, oldest = 7, 5, 2
    b = rng.normal(size=(n, n))
    hessian = b @ b.T + n * np.eye(n)
    pairs = [(s, hessian @ s) for s in rng.normal(size=(m, n))]  # <y, s> > 0
    g, gamma = rng.normal(size=n), 0.37
    # The ring buffer: slot (oldest + i) % m holds the i-th oldest pair.
    slots = [(oldest + i) % m for i in range(m)]
    s_mem, y_mem, rho = np.zeros((m, n)), np.zeros((m, n)), np.zeros(m)
    for slot, (s, y) in zip(slots, pairs, strict=True):
        s_mem[slot], y_mem[slot], rho[slot] = s, y, 1.0 / (y @ s)

    def tree(x):  # a two-leaf tree over the leading axis
        return {"a": jnp.asarray(x[..., :3]), "b": jnp.asarray(x[..., 3:])}

    r = two_loop_recursion(
        tree(g), tree(s_mem), tree(y_mem), jnp.asarray(rho), gamma, jnp.asarray(oldest)
    )
    r = np.concatenate([r["a"], r["b"]])
    np.testing.assert_allclose(r, np_two_loop(g, pairs, gamma), rtol=1e-12)
    np.testing.assert_allclose(
        r, np_bfgs_matrix(pairs, gamma, n) @ g, rtol=1e-10, atol=1e-12
    )
    # Empty slots (rho = 0, zero pairs) change nothing.
    rho[slots[0]] = 0.0
    s_mem[slots[0]] = y_mem[slots[0]] = 0.0
    r = two_loop_recursion(
        tree(g), tree(s_mem), tree(y_mem), jnp.asarray(rho), gamma, jnp.asarray(oldest)
    )
    np.testing.assert_allclose(
        np.concatenate([r["a"], r["b"]]), np_two_loop(g, pairs[1:], gamma), rtol=1e-12
    )


def np_lbfgs(w0, grad_fn, lr, steps, memory_size, scale_init):
    """L-BFGS with a fixed step size (Nocedal & Wright's Algorithm 7.5 with
    alpha_k = lr(k)), on flat NumPy vectors; gamma_0 = min(1, 1/|g_0|)."""
    w, pairs, out = w0.copy(), [], []
    w_prev = g_prev = None
    for k in range(steps):
        g = grad_fn(w)
        if k > 0:
            s, y = w - w_prev, g - g_prev
            pairs = (pairs + [(s, y)])[-memory_size:]
            gamma = (s @ y) / (y @ y) if scale_init else 1.0
        else:
            gamma = min(1.0, 1.0 / np.linalg.norm(g)) if scale_init else 1.0
        w_prev, g_prev = w, g
        w = w - lr(k) * np_two_loop(g, pairs, gamma)
        out.append(w)
    return np.array(out)


def test_lbfgs_with_a_fixed_step_is_algorithm_7_5(x64):
    schedule = adamx.linear_schedule(0.5, 0.2, 50)
    tx = adamx.lbfgs(schedule, memory_size=4, linesearch=None)

    def flat(p):
        return np.concatenate([np.ravel(p["u"]), np.ravel(p["v"])])

    def unflat(x):
        return {"u": x[:3], "v": x[3:].reshape(2, 2)}

    @jax.jit
    def run(w):
        def step(carry, _):
            w, state = carry
            g = jax.grad(sine_least_squares)(w)
            u, state = tx.update(g, state, w)
            w = adamx.apply_updates(w, u)
            return (w, state), w

        return jax.lax.scan(step, (w, tx.init(w)), length=STEPS)[1]

    ours = run(jax.tree.map(jnp.asarray, tree_start()))
    ours = np.concatenate([ours["u"], ours["v"].reshape(STEPS, 4)], axis=1)
    theirs = np_lbfgs(
        flat(tree_start()),
        lambda x: flat(sine_least_squares_grad(unflat(x))),
        lambda k: float(schedule(k)),
        STEPS,
        4,
        True,
    )
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10)


# ------------------------------------------------------------ complex, jit


def test_complex_params_follow_the_real_problem(x64):
    """With the conjugate gradient as the updates (the steepest-ascent
    direction) and JAX's gradient as ``grad``, L-BFGS on complex params takes
    the steps it takes on their real and imaginary parts."""
    rng = np.random.default_rng(4)
    a = rng.normal(size=(6, 3)) + 1j * rng.normal(size=(6, 3))
    b = rng.normal(size=6) + 1j * rng.normal(size=6)

    def f_complex(z):
        return jnp.sum(jnp.abs(a @ z - b) ** 2) + 0.1 * jnp.sum(jnp.sin(z.real))

    def f_real(x):
        return f_complex(x[:3] + 1j * x[3:])

    def run(f, w0, conj):
        tx = adamx.lbfgs()
        reuse = adamx.value_and_grad_from_state(f)

        def step(carry, _):
            w, state = carry
            value, grad = reuse(w, state=state)
            u = jnp.conj(grad) if conj else grad
            u, state = tx.update(u, state, w, value=value, grad=grad, value_fn=f)
            w = adamx.apply_updates(w, u)
            return (w, state), w

        return jax.jit(lambda w: jax.lax.scan(step, (w, tx.init(w)), length=30)[1])(w0)

    z = run(f_complex, jnp.zeros(3, jnp.complex128), conj=True)
    x = run(f_real, jnp.zeros(6), conj=False)
    np.testing.assert_allclose(z, x[:, :3] + 1j * x[:, 3:], rtol=0, atol=1e-10)


def test_float32_keeps_its_dtypes_and_converges():
    tx = adamx.lbfgs()
    w, info, lr = trajectory(adamx, tx, rosenbrock, ROSENBROCK_START.astype(np.float32))
    assert w.dtype == lr.dtype == jnp.float32
    np.testing.assert_allclose(w[-1], np.ones(5), atol=1e-4)


# ------------------------------------------------------------ bad input


def test_update_without_the_line_search_arguments_is_refused():
    tx = adamx.scale_by_zoom_linesearch(5)
    w = jnp.ones(3)
    with pytest.raises(TypeError, match=r"value, grad and value_fn.*missing"):
        tx.update(w, tx.init(w), w)
    with pytest.raises(TypeError, match=r"\['y'\].*value_fn does not take"):
        tx.update(
            w, tx.init(w), w, value=1.0, grad=w, value_fn=lambda p, x: 0.0, x=1, y=2
        )
    with pytest.raises(ValueError, match="needs the current params"):
        adamx.scale_by_lbfgs().update(w, adamx.scale_by_lbfgs().init(w))


def test_value_and_grad_from_state_needs_one_stored_value_and_gradient():
    f = adamx.value_and_grad_from_state(rosenbrock)
    w = jnp.ones(3)
    plain = adamx.chain(adamx.sgd(0.1), adamx.scale_by_backtracking_linesearch(5))
    with pytest.raises(ValueError, match="store_grad=True"):
        f(w, state=plain.init(w))
    two = adamx.chain(
        adamx.scale_by_zoom_linesearch(5), adamx.scale_by_zoom_linesearch(5)
    )
    with pytest.raises(KeyError, match="2 fields named 'value'"):
        f(w, state=two.init(w))
