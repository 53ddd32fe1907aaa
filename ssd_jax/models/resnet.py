"""The ResNet trunk of NVIDIA's SSD300 v1.1 (DeepLearningExamples,
PyTorch/Detection/SSD) in Flax NNX (NHWC), with its extra layers.

The trunk is torchvision's ResNet (He et al. 2016; v1.5: the stride of a
bottleneck on its 3x3 conv) cut after its third stage, whose first block runs
at stride 1: at 300x300 it returns one map of 38x38 (stride 8), 256 channels for
ResNet-18/34 and 1024 for ResNet-50/101/152. Layers and variables carry
torchvision's names (``stem`` is its conv1/bn1; ``layer1`` ... ``layer3``, each
block ``conv1`` ... and ``downsample``), BatchNorm has PyTorch's defaults.

The extra layers (:func:`resnet_extras`) are NVIDIA's five: a 1x1 conv to 256,
256, 128, 128, 128 channels, then a 3x3 conv (stride 2, padding 1 for the first
three; stride 1, no padding for the last two), each followed by BatchNorm and
ReLU, giving the 19, 10, 5, 3 and 1 maps.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ssd_jax.models.layers import ConvBN
from ssd_jax.models.vgg import max_pool, scale_channels, xavier_uniform

# PyTorch's BatchNorm defaults in Flax terms (momentum 0.1 there)
TORCH_BN = {"momentum": 0.9, "epsilon": 1e-5}


@dataclasses.dataclass(frozen=True)
class Depth:
    """A ResNet of torchvision: bottleneck blocks (expansion 4) or basic ones,
    and the number of blocks in each of the three stages the trunk keeps."""

    bottleneck: bool
    blocks: tuple[int, int, int]


DEPTHS = {
    18: Depth(False, (2, 2, 2)),
    34: Depth(False, (3, 4, 6)),
    50: Depth(True, (3, 4, 6)),
    101: Depth(True, (3, 4, 23)),
    152: Depth(True, (3, 8, 36)),
}


class Block(nnx.Module):
    """A residual block: two 3x3 convs (basic) or 1x1, 3x3, 1x1 (bottleneck, the
    stride on the 3x3), the shortcut through a 1x1 conv with BatchNorm
    (``downsample``) when the stride or the channels change; ReLU after the sum."""

    def __init__(self, in_features: int, planes: int, stride: int, bottleneck: bool, **kwargs):
        out = 4 * planes if bottleneck else planes
        if bottleneck:
            self.conv1 = ConvBN(in_features, planes, 1, activation="relu", **kwargs)
            self.conv2 = ConvBN(planes, planes, 3, stride=stride, activation="relu", **kwargs)
            self.conv3 = ConvBN(planes, out, 1, activation=None, **kwargs)
        else:
            self.conv1 = ConvBN(in_features, planes, 3, stride=stride, activation="relu", **kwargs)
            self.conv2 = ConvBN(planes, out, 3, activation=None, **kwargs)
            self.conv3 = None
        self.downsample = (
            ConvBN(in_features, out, 1, stride=stride, activation=None, **kwargs)
            if stride != 1 or in_features != out
            else None
        )
        self.out_features = out

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv2(self.conv1(x))
        if self.conv3 is not None:
            y = self.conv3(y)
        return jax.nn.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nnx.Module):
    """conv1 (7x7/2, 64 channels), BatchNorm, ReLU, max pool 3x3/2, then stages of
    64, 128 and 256 planes (the first block of each at stride 1, 2 and 1: the
    third stage is NVIDIA's, cut at stride 8).

    Call: (B, S, S, 3) normalized image -> a one-map tuple, (B, S/8, S/8,
    ``out_features[0]``) (38x38 at S = 300).
    """

    def __init__(self, *, depth: int = 50, batch_norm: bool = True, width: float = 1.0,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):  # fmt: skip
        del batch_norm  # always: ResNet has BatchNorm after every conv
        spec = DEPTHS[depth]
        kwargs = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, **TORCH_BN)
        in_features = scale_channels(64, width)
        self.stem = ConvBN(3, in_features, 7, stride=2, activation="relu", **kwargs)
        for n, (planes, stride, count) in enumerate(zip((64, 128, 256), (1, 2, 1), spec.blocks,
                                                        strict=True), start=1):  # fmt: skip
            blocks = []
            for k in range(count):
                block_stride = stride if k == 0 else 1
                block = Block(in_features, scale_channels(planes, width), block_stride,
                              spec.bottleneck, **kwargs)  # fmt: skip
                blocks.append(block)
                in_features = block.out_features
            setattr(self, f"layer{n}", nnx.List(blocks))
        self.out_features = (in_features,)

    def __call__(self, x: jax.Array) -> tuple[jax.Array]:
        x = max_pool(self.stem(x), 3, 2, padding=1)
        for layer in (self.layer1, self.layer2, self.layer3):
            for block in layer:
                x = block(x)
        return (x,)


EXTRA_REDUCED = (256, 256, 128, 128, 128)  # NVIDIA's 1x1 channels of the five extras


def resnet_extras(outs: tuple[int, ...], in_features: int, width: float, *, dtype,
                  param_dtype, rngs, **_) -> list:  # fmt: skip
    """NVIDIA's extra stages ``extra1`` ... ``extra5`` (``_1``: the 1x1 conv,
    ``_2``: the 3x3) to ``outs`` channels times ``width``; Xavier-uniform kernels
    as NVIDIA initializes them."""
    kwargs = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, kernel_init=xavier_uniform,
                  activation="relu", **TORCH_BN)  # fmt: skip
    stages = []
    for k, (reduced, out) in enumerate(zip(EXTRA_REDUCED, outs, strict=True), start=1):
        reduced, out = scale_channels(reduced, width), scale_channels(out, width)
        first = ConvBN(in_features, reduced, 1, **kwargs)
        stride, padding = (2, 1) if k <= 3 else (1, 0)
        second = ConvBN(reduced, out, 3, stride=stride, padding=padding, **kwargs)
        stages.append(({f"extra{k}_1": first, f"extra{k}_2": second}, out))
        in_features = out
    return stages
