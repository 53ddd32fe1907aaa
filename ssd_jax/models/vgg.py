"""The VGG16 trunk of SSD (the paper's "reduced fc" VGG16), as Flax NNX modules.

Layers are NHWC and named after the paper (``conv1_1`` ... ``conv5_3``, ``conv6``,
``conv7``) so that converted ImageNet weights map onto them one to one. Paddings
are explicit, equal to those of the PyTorch/Caffe models.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ssd_jax.models.conv import conv_general_dilated

# Output channels of the five VGG16 blocks.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
FC_CHANNELS = 1024  # conv6 and conv7, the subsampled fc6 and fc7


def xavier_uniform(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32):
    """Xavier/Glorot-uniform conv kernel (HWIO): U(-b, b), b = sqrt(6 / (fan_in + fan_out)).

    Same distribution as ``nnx.initializers.xavier_uniform()``, but drawn as a flat
    vector: XLA compiles partitionable threefry for 4-D shapes about 10x slower on
    CPU, which made building a model take tens of seconds.
    """
    receptive_field = math.prod(shape[:-2])
    fan_in, fan_out = receptive_field * shape[-2], receptive_field * shape[-1]
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    flat = jax.random.uniform(key, (math.prod(shape),), dtype, -bound, bound)
    return flat.reshape(shape)


def scale_channels(channels: int, width: float) -> int:
    """Channels of a layer under the width multiplier (at least 1)."""
    return max(1, round(channels * width))


class ConvBlock(nnx.Module):
    """Conv2D (with bias) -> optional BatchNorm -> ReLU.

    Xavier-uniform kernel, zero bias. ``padding`` is the same on every side, like
    PyTorch's ``padding=p`` (not Flax's "SAME", which pads stride-2 convs
    asymmetrically on even inputs).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        batch_norm: bool = False,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.conv = nnx.Conv(
            in_features,
            out_features,
            (kernel_size, kernel_size),
            strides=stride,
            padding=((padding, padding), (padding, padding)),
            kernel_dilation=dilation,
            kernel_init=xavier_uniform,
            bias_init=nnx.initializers.zeros,
            conv_general_dilated=conv_general_dilated,  # fast kernel gradients on CPU
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        # Flax momentum 0.9 is PyTorch's default BatchNorm momentum 0.1.
        self.bn = (
            nnx.BatchNorm(
                out_features,
                momentum=0.9,
                epsilon=1e-5,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )
            if batch_norm
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return jax.nn.relu(x)


class L2Norm(nnx.Module):
    """ParseNet L2 normalization over channels with a learnable per-channel scale.

    ``y = scale * x / max(||x||_2, eps)``, computed in float32; scale starts at 20.
    """

    def __init__(
        self,
        num_features: int,
        *,
        init_scale: float = 20.0,
        eps: float = 1e-12,
        param_dtype: jnp.dtype = jnp.float32,
    ):
        self.scale = nnx.Param(jnp.full((num_features,), init_scale, param_dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
        y = x32 / jnp.maximum(norm, self.eps) * self.scale[...].astype(jnp.float32)
        return y.astype(x.dtype)


def max_pool(
    x: jax.Array, window: int, stride: int, padding: int = 0, ceil_mode: bool = False
) -> jax.Array:
    """Max pooling of (B, H, W, C) like PyTorch's ``MaxPool2d`` (square, -inf padding).

    ``ceil_mode`` rounds the output size up by padding the bottom/right edge, as
    SSD's pool3 does to turn 75 into 38.
    """
    pads = []
    for size in x.shape[1:3]:
        padded = size + 2 * padding
        extra = 0
        if ceil_mode:
            out = math.ceil((padded - window) / stride) + 1
            if (out - 1) * stride >= size + padding:  # PyTorch drops a window starting in padding
                out -= 1
            extra = max(0, (out - 1) * stride + window - padded)
        pads.append((padding, padding + extra))
    return nnx.max_pool(x, (window, window), strides=(stride, stride), padding=tuple(pads))


class VGG16(nnx.Module):
    """VGG16 trunk with SSD's changes: pool3 in ceil mode, pool5 3x3/1 pad 1, conv6
    (3x3, dilation 6, 1024 channels) and conv7 (1x1, 1024 channels) in place of fc6
    and fc7, and L2 normalization of conv4_3.

    Call: (B, H, W, 3) normalized image -> (conv4_3 normalized (B, H/8, W/8, 512w),
    conv7 (B, H/16, W/16, 1024w)), rounding up at pool3 and down at the other pools.
    """

    def __init__(
        self,
        *,
        batch_norm: bool = False,
        width: float = 1.0,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kwargs = dict(batch_norm=batch_norm, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        in_features = 3
        for block, block_channels in enumerate(VGG16_BLOCKS, start=1):
            for layer, channels in enumerate(block_channels, start=1):
                out_features = scale_channels(channels, width)
                conv = ConvBlock(in_features, out_features, 3, padding=1, **kwargs)
                setattr(self, f"conv{block}_{layer}", conv)
                in_features = out_features
        self.conv4_3_norm = L2Norm(scale_channels(512, width), param_dtype=param_dtype)
        fc_features = scale_channels(FC_CHANNELS, width)
        self.conv6 = ConvBlock(in_features, fc_features, 3, padding=6, dilation=6, **kwargs)
        self.conv7 = ConvBlock(fc_features, fc_features, 1, **kwargs)

    @property
    def out_features(self) -> tuple[int, int]:
        """Channels of the two outputs (conv4_3, conv7)."""
        return self.conv4_3_norm.scale.shape[0], self.conv7.conv.out_features

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        conv4_3 = None
        for block, block_channels in enumerate(VGG16_BLOCKS, start=1):
            for layer in range(1, len(block_channels) + 1):
                x = getattr(self, f"conv{block}_{layer}")(x)
            if block == 3:
                x = max_pool(x, 2, 2, ceil_mode=True)
            elif block == 4:
                conv4_3 = self.conv4_3_norm(x)
                x = max_pool(x, 2, 2)
            elif block == 5:
                x = max_pool(x, 3, 1, padding=1)
            else:
                x = max_pool(x, 2, 2)
        x = self.conv7(self.conv6(x))
        return conv4_3, x
