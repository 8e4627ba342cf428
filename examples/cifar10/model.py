"""The example's CNN, a Flax NNX module, and its pure-function form for jitted steps.

Built for throughput on small machines as much as for accuracy: a space-to-depth
stem halves the resolution for free, so that no convolution runs at full size
(where on CPU the weight gradients of a one-channel convolution cost more than
the rest of the network), and a dense hidden layer, cheap as a matrix product,
adds capacity where convolutions would not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def space_to_depth(x: jax.Array, size: int = 2) -> jax.Array:
    """``(N, H, W, C)`` to ``(N, H/size, W/size, C*size*size)``: each block a pixel."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // size, size, w // size, size, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // size, w // size, -1)


class ConvBlock(nnx.Module):
    """A 3x3 convolution, batch normalisation and a ReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(
            in_channels, out_channels, (3, 3), use_bias=False, rngs=rngs
        )
        self.norm = nnx.BatchNorm(out_channels, momentum=0.9, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return nnx.relu(self.norm(self.conv(x), use_running_average=not train))


class CNN(nnx.Module):
    """Space-to-depth stem, conv-BN-ReLU blocks, a dense hidden layer, the logits.

    A 2x2 max-pool comes before each block that widens the network, as in VGG,
    and no pooling after the last: the flattened map keeps where each feature is.
    With the defaults on a 28x28x1 image: 14x14x4 after the stem, 32 channels,
    pooled to 7x7, 64 channels, flattened to 3136, a hidden layer of 256, and the
    logits.

    Args:
        image_shape: ``(height, width, channels)`` of the input.
        num_classes: the number of logits.
        widths: the output channels of each 3x3 convolution.
        hidden: the width of the dense hidden layer.
        rngs: the random streams for initialisation.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        widths: tuple[int, ...] = (32, 64),
        hidden: int = 256,
        *,
        rngs: nnx.Rngs,
    ):
        height, width, channels = image_shape
        height, width, channels = height // 2, width // 2, 4 * channels
        self.pool_before = tuple(
            i > 0 and w > widths[i - 1] for i, w in enumerate(widths)
        )
        blocks = []
        for out, pool in zip(widths, self.pool_before, strict=True):
            height, width = (height // 2, width // 2) if pool else (height, width)
            blocks.append(ConvBlock(channels, out, rngs=rngs))
            channels = out
        self.blocks = nnx.List(blocks)
        # No bias where a batch norm follows: its offset takes the bias's place.
        self.hidden = nnx.Linear(
            height * width * channels, hidden, use_bias=False, rngs=rngs
        )
        self.hidden_norm = nnx.BatchNorm(hidden, momentum=0.9, rngs=rngs)
        self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = space_to_depth(x)
        for block, pool in zip(self.blocks, self.pool_before, strict=True):
            if pool:
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
            x = block(x, train=train)
        x = self.hidden(x.reshape(x.shape[0], -1))
        x = nnx.relu(self.hidden_norm(x, use_running_average=not train))
        return self.out(x)


def split(module: CNN) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """The module as (structure, trainable params, batch-norm statistics)."""
    return nnx.split(module, nnx.Param, nnx.BatchStat)


def apply(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    batch_stats: nnx.State,
    images: jax.Array,
    *,
    train: bool,
) -> tuple[jax.Array, nnx.State]:
    """Logits, and the batch statistics updated by this batch if ``train``.

    A pure function of its arguments, so it can be differentiated and jitted
    like any other: the module is rebuilt from copies of the states, run, and
    its new statistics read back out.
    """
    module = nnx.merge(graphdef, params, batch_stats, copy=True)
    logits = module(images, train=train)
    return logits, nnx.state(module, nnx.BatchStat)


def count_params(params: nnx.State) -> int:
    """The number of trainable scalars."""
    return sum(jnp.size(x) for x in jax.tree.leaves(params))
