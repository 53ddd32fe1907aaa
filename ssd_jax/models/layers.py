"""Layers shared by the trunks: a conv without bias, BatchNorm and an activation
(:class:`ConvBN`), the building block of MobileNetV3, ResNet and their SSD
extras."""

from collections.abc import Callable

import jax
from flax import nnx

from ssd_jax.models.conv import conv_general_dilated


def hard_swish(x: jax.Array) -> jax.Array:
    return x * jax.nn.relu6(x + 3) / 6


def hard_sigmoid(x: jax.Array) -> jax.Array:
    return jax.nn.relu6(x + 3) / 6


ACTIVATIONS = {"relu": jax.nn.relu, "relu6": jax.nn.relu6, "hard_swish": hard_swish, None: None}

# torchvision's conv init (Kaiming normal, fan out, ReLU gain)
KAIMING_FAN_OUT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvBN(nnx.Module):
    """Conv (no bias; ``groups`` = channels: depthwise) -> BatchNorm -> activation
    (``"relu"``, ``"relu6"``, ``"hard_swish"`` or None).

    ``padding`` is the same on every side (PyTorch's ``padding=p``); None pads
    (kernel - 1) / 2. The BatchNorm defaults are torchvision SSDlite's (Flax
    momentum 0.97, PyTorch's 0.03; epsilon 0.001); ResNet passes PyTorch's
    defaults (0.9, 1e-5).
    """

    def __init__(self, in_features: int, out_features: int, kernel: int, *, stride: int = 1,
                 padding: int | None = None, groups: int = 1, activation: str | None, dtype,
                 param_dtype, rngs: nnx.Rngs, momentum: float = 0.97, epsilon: float = 1e-3,
                 kernel_init: Callable = KAIMING_FAN_OUT):  # fmt: skip
        pad = (kernel - 1) // 2 if padding is None else padding
        self.conv = nnx.Conv(
            in_features, out_features, (kernel, kernel), strides=stride,
            padding=((pad, pad), (pad, pad)), feature_group_count=groups, use_bias=False,
            kernel_init=kernel_init, conv_general_dilated=conv_general_dilated, dtype=dtype,
            param_dtype=param_dtype, rngs=rngs,
        )  # fmt: skip
        self.bn = nnx.BatchNorm(out_features, momentum=momentum, epsilon=epsilon, dtype=dtype,
                                param_dtype=param_dtype, rngs=rngs)  # fmt: skip
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.bn(self.conv(x))
        act = ACTIVATIONS[self.activation]
        return x if act is None else act(x)
