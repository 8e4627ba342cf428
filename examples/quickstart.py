"""Fit a noisy 1-D regression with Adam: the classic first script, in adamx.

Run: python examples/quickstart.py
"""

import jax
import jax.numpy as jnp

import adamx


def init_mlp(key, sizes=(1, 32, 32, 1)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        (jax.random.normal(k, (m, n)) / jnp.sqrt(m), jnp.zeros(n))
        for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def predict(params, x):
    for w, b in params[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def loss_fn(params, x, y):
    return jnp.mean((predict(params, x) - y) ** 2)


def main(epochs: int = 10, steps_per_epoch: int = 20) -> float:
    kx, kn, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.uniform(kx, (256, 1), minval=-3.0, maxval=3.0)
    y = jnp.sin(x) + 0.1 * jax.random.normal(kn, x.shape)
    params = init_mlp(kp)
    schedule = adamx.cosine_decay_schedule(1e-2, decay_steps=epochs * steps_per_epoch)
    tx = adamx.adam(learning_rate=schedule)
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return adamx.apply_updates(params, updates), opt_state, loss

    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            params, opt_state, loss = train_step(params, opt_state)
        print(f"epoch {epoch + 1:2d}  loss {float(loss):.4f}")
    return float(loss)


if __name__ == "__main__":
    main()
