"""The MobileNetV3-Large trunk (Howard et al. 2019) of SSDlite, as torchvision
defines it, in Flax NNX (NHWC).

Every conv but the squeeze-and-excitation ones is followed by BatchNorm (eps
0.001); activations are ReLU or hard-swish per block (paper, Table 1), the SE
gate is a hard-sigmoid. With ``reduced_tail`` the last stage has half the
channels, as torchvision builds SSDlite's trunk without ImageNet weights (its
released COCO model). For SSDlite the trunk returns two maps (paper, section
6.3): the expansion conv of the C4 block (stride 16, 672 channels) and the last
conv (stride 32, 960 or 480 channels).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ssd_jax.models.conv import conv_general_dilated
from ssd_jax.models.layers import ConvBN, hard_sigmoid


@dataclasses.dataclass(frozen=True)
class Bottleneck:
    """One inverted-residual block: kernel, expanded and out channels, SE,
    hard-swish (else ReLU), stride."""

    kernel: int
    expanded: int
    out: int
    se: bool
    hard_swish: bool
    stride: int


def large_blocks(reduced_tail: bool = False, width: float = 1.0) -> tuple[Bottleneck, ...]:
    """MobileNetV3-Large's 15 blocks (paper, Table 1; input 16 channels), their
    channels times ``width`` rounded by :func:`make_divisible` (torchvision's
    ``width_mult``)."""
    tail = 2 if reduced_tail else 1
    return tuple(
        dataclasses.replace(
            b, expanded=make_divisible(b.expanded * width), out=make_divisible(b.out * width)
        )
        for b in _large_table(tail)
    )


def _large_table(tail: int) -> tuple[Bottleneck, ...]:
    return (
        Bottleneck(3, 16, 16, False, False, 1),
        Bottleneck(3, 64, 24, False, False, 2),
        Bottleneck(3, 72, 24, False, False, 1),
        Bottleneck(5, 72, 40, True, False, 2),
        Bottleneck(5, 120, 40, True, False, 1),
        Bottleneck(5, 120, 40, True, False, 1),
        Bottleneck(3, 240, 80, False, True, 2),
        Bottleneck(3, 200, 80, False, True, 1),
        Bottleneck(3, 184, 80, False, True, 1),
        Bottleneck(3, 184, 80, False, True, 1),
        Bottleneck(3, 480, 112, True, True, 1),
        Bottleneck(3, 672, 112, True, True, 1),
        Bottleneck(5, 672, 160 // tail, True, True, 2),  # C4: SSDlite taps its expansion
        Bottleneck(5, 960 // tail, 160 // tail, True, True, 1),
        Bottleneck(5, 960 // tail, 160 // tail, True, True, 1),
    )


def make_divisible(channels: float, divisor: int = 8) -> int:
    """The nearest multiple of ``divisor`` (at least ``divisor``), rounded up when
    rounding to nearest would lose more than 10 % (the MobileNet rule)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


class SqueezeExcite(nnx.Module):
    """x * hard_sigmoid(fc2(relu(fc1(mean over H, W of x)))), fc1 and fc2 1x1 convs."""

    def __init__(self, channels: int, squeezed: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kwargs = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = nnx.Conv(channels, squeezed, (1, 1), **kwargs)
        self.fc2 = nnx.Conv(squeezed, channels, (1, 1), **kwargs)

    def __call__(self, x: jax.Array) -> jax.Array:
        scale = jnp.mean(x, axis=(1, 2), keepdims=True)
        return x * hard_sigmoid(self.fc2(jax.nn.relu(self.fc1(scale))))


class InvertedResidual(nnx.Module):
    """1x1 expansion (when it widens), k x k depthwise at the block's stride, SE,
    1x1 projection without activation; the input added when the shapes allow."""

    def __init__(self, in_features: int, spec: Bottleneck, **kwargs):
        act = "hard_swish" if spec.hard_swish else "relu"
        self.expand = (
            ConvBN(in_features, spec.expanded, 1, activation=act, **kwargs)
            if spec.expanded != in_features
            else None
        )
        self.depthwise = ConvBN(spec.expanded, spec.expanded, spec.kernel, stride=spec.stride,
                                groups=spec.expanded, activation=act, **kwargs)  # fmt: skip
        self.se = (
            SqueezeExcite(
                spec.expanded,
                make_divisible(spec.expanded // 4),
                **{k: v for k, v in kwargs.items() if k != "momentum"},
            )
            if spec.se
            else None
        )
        self.project = ConvBN(spec.expanded, spec.out, 1, activation=None, **kwargs)
        self.residual = spec.stride == 1 and in_features == spec.out

    def expanded(self, x: jax.Array) -> jax.Array:
        return x if self.expand is None else self.expand(x)

    def rest(self, x: jax.Array, block_input: jax.Array) -> jax.Array:
        """From the expanded map (SSDlite taps it at C4) to the block's output."""
        x = self.depthwise(x)
        if self.se is not None:
            x = self.se(x)
        x = self.project(x)
        return x + block_input if self.residual else x

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.rest(self.expanded(x), x)


class MobileNetV3Large(nnx.Module):
    """Stem (3x3/2 conv, 16 channels, hard-swish), the 15 blocks of
    :func:`large_blocks`, and a 1x1 conv to 6x the last block's channels
    (hard-swish).

    Call: (B, S, S, 3) normalized image -> (the C4 block's expansion, (B, S/16,
    S/16, 672); the last conv, (B, S/32, S/32, 960 or 480 with ``reduced_tail``)).
    """

    C4 = 12  # the index of the stride-32 block whose expansion SSDlite taps

    def __init__(self, *, reduced_tail: bool = False, batch_norm: bool = True, width: float = 1.0,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):  # fmt: skip
        del batch_norm  # always: MobileNetV3 has BatchNorm after every conv
        kwargs = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        specs = large_blocks(reduced_tail, width)
        stem = make_divisible(16 * width)
        self.stem = ConvBN(3, stem, 3, stride=2, activation="hard_swish", **kwargs)
        blocks, in_features = [], stem
        for spec in specs:
            blocks.append(InvertedResidual(in_features, spec, **kwargs))
            in_features = spec.out
        self.blocks = nnx.List(blocks)
        self.last = ConvBN(in_features, 6 * in_features, 1, activation="hard_swish", **kwargs)
        self.out_features = (specs[self.C4].expanded, 6 * in_features)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = self.stem(x)
        for block in self.blocks[: self.C4]:
            x = block(x)
        c4 = self.blocks[self.C4]
        tap = c4.expanded(x)
        x = c4.rest(tap, x)
        for block in self.blocks[self.C4 + 1 :]:
            x = block(x)
        return tap, self.last(x)


class ExtraBlock(nnx.Module):
    """SSDlite's extra layer: 1x1 to half the output channels, 3x3/2 depthwise,
    1x1 to the output channels, each with BatchNorm and ReLU6."""

    def __init__(self, in_features: int, out_features: int, **kwargs):
        middle = out_features // 2
        self.reduce = ConvBN(in_features, middle, 1, activation="relu6", **kwargs)
        self.depthwise = ConvBN(middle, middle, 3, stride=2, groups=middle, activation="relu6",
                                **kwargs)  # fmt: skip
        self.expand = ConvBN(middle, out_features, 1, activation="relu6", **kwargs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.expand(self.depthwise(self.reduce(x)))


class PredictionBlock(nnx.Module):
    """SSDlite's head: 3x3 depthwise with BatchNorm and ReLU6, then a 1x1 conv
    with bias."""

    def __init__(self, in_features: int, out_features: int, *, dtype, param_dtype, rngs, **_):
        kwargs = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.depthwise = ConvBN(in_features, in_features, 3, groups=in_features,
                                activation="relu6", **kwargs)  # fmt: skip
        self.pointwise = nnx.Conv(in_features, out_features, (1, 1),
                                  conv_general_dilated=conv_general_dilated, **kwargs)  # fmt: skip

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.pointwise(self.depthwise(x))


def ssdlite_extras(channels: tuple[int, ...], in_features: int, width: float, *, dtype,
                   param_dtype, rngs, **_) -> list:  # fmt: skip
    """SSDlite's four extra stages (``extra1`` ...) to ``channels`` (times ``width``,
    at least 16, as torchvision's ``get_depth``)."""
    stages = []
    for k, out in enumerate(channels, start=1):
        out = max(16, int(out * width))
        block = ExtraBlock(in_features, out, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        stages.append(({f"extra{k}": block}, out))
        in_features = out
    return stages
