"""The trunks an SSD can stand on, in one table (:data:`BACKBONES`).

A backbone is a module whose call maps a normalized (B, S, S, 3) image to the
feature maps that the first detection heads read, and whose ``out_features``
declares their channels. Its entry names the attribute that holds it in
:class:`ssd_jax.models.SSD` (the prefix of its variables in checkpoints), how to
build it, and the extra layers that continue its last map, per architecture.
``config.model.backbone`` names an entry; the configuration's validation, the
SSD module and ``init.backbone`` read the table. Adding a backbone takes a module
with its trunk and one entry here.
"""

import dataclasses
import functools
from collections.abc import Callable

from flax import nnx

from ssd_jax.models.conv import conv_general_dilated
from ssd_jax.models.mobilenet_v3 import MobileNetV3Large, PredictionBlock, ssdlite_extras
from ssd_jax.models.resnet import DEPTHS, ResNet, resnet_extras
from ssd_jax.models.vgg import VGG16, ConvBlock, scale_channels, xavier_uniform


@dataclasses.dataclass(frozen=True)
class ExtraLayer:
    """One extra feature layer: a 1x1 conv to ``reduced`` channels, then a
    ``kernel`` x ``kernel`` conv to ``out`` channels at ``stride`` and ``padding``;
    its variables are ``{name}_1`` and ``{name}_2``."""

    name: str
    reduced: int
    out: int
    kernel: int
    stride: int
    padding: int


# One extra stage: its modules by attribute name, applied in order, and the
# channels of the map it adds.
Stage = tuple[dict[str, nnx.Module], int]


def vgg_extras(layers: tuple[ExtraLayer, ...], in_features: int, width: float,
               **kwargs) -> list[Stage]:  # fmt: skip
    """SSD's extra layers on VGG16: per layer a 1x1 then a k x k :class:`ConvBlock`."""
    stages = []
    for extra in layers:
        reduced, out = scale_channels(extra.reduced, width), scale_channels(extra.out, width)
        first = ConvBlock(in_features, reduced, 1, **kwargs)
        second = ConvBlock(reduced, out, extra.kernel, stride=extra.stride,
                           padding=extra.padding, **kwargs)  # fmt: skip
        stages.append(({f"{extra.name}_1": first, f"{extra.name}_2": second}, out))
        in_features = out
    return stages


def conv3x3_head(in_features: int, out_features: int, *, dtype, param_dtype, rngs, **_):
    """The paper's head: a 3x3 conv (Xavier-uniform kernel, zero bias)."""
    return nnx.Conv(
        in_features, out_features, (3, 3), padding=((1, 1), (1, 1)),
        kernel_init=xavier_uniform, bias_init=nnx.initializers.zeros,
        conv_general_dilated=conv_general_dilated, dtype=dtype, param_dtype=param_dtype,
        rngs=rngs,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A trunk for SSD: what it is, the SSD attribute (and variable prefix) that
    holds it, ``trunk(*, batch_norm, width, dtype, param_dtype, rngs)`` building
    it, the specification of its extra layers for each architecture it serves (the
    architecture's name is its default-box preset's), ``build_extras(spec,
    in_features, width, **kwargs) -> stages`` and ``head(in_features,
    out_features, **kwargs)``, the module of each loc and conf head;
    ``always_batch_norm`` when trunk and extras have BatchNorm whatever
    ``batch_norm`` says (a resume then ignores that key)."""

    what: str
    attribute: str
    trunk: Callable[..., nnx.Module]
    extras: dict[str, tuple]
    build_extras: Callable[..., list[Stage]] = vgg_extras
    head: Callable[..., nnx.Module] = conv3x3_head
    always_batch_norm: bool = False  # BatchNorm whatever ``model.batch_norm`` says


BACKBONES: dict[str, Backbone] = {
    "vgg16": Backbone(
        "VGG16 with SSD's reduced fc6/fc7 and L2-normalized conv4_3 (maps conv4_3, conv7)",
        "vgg",
        VGG16,
        {
            "ssd300": (
                ExtraLayer("conv8", 256, 512, 3, 2, 1),
                ExtraLayer("conv9", 128, 256, 3, 2, 1),
                ExtraLayer("conv10", 128, 256, 3, 1, 0),
                ExtraLayer("conv11", 128, 256, 3, 1, 0),
            ),
            "ssd512": (
                ExtraLayer("conv8", 256, 512, 3, 2, 1),
                ExtraLayer("conv9", 128, 256, 3, 2, 1),
                ExtraLayer("conv10", 128, 256, 3, 2, 1),
                ExtraLayer("conv11", 128, 256, 3, 2, 1),
                ExtraLayer("conv12", 128, 256, 4, 1, 1),
            ),
        },
    ),
}


# MobileNetV3-Large's two tails: the ImageNet classifier's (torchvision's
# mobilenet_v3_large weights fit it) and the halved one of torchvision's SSDlite
# built without ImageNet weights (its released COCO model).
for _name, _reduced, _what in (
    ("mobilenet_v3_large", False, "the ImageNet classifier's tail (960-channel last conv)"),
    ("mobilenet_v3_large_reduced_tail", True,
     "the halved tail of torchvision's COCO SSDlite (480-channel last conv)"),
):  # fmt: skip
    BACKBONES[_name] = Backbone(
        f"MobileNetV3-Large, {_what}; maps: the C4 expansion, the last conv; SSDlite "
        "extras and depthwise heads",
        "mobilenet",
        functools.partial(MobileNetV3Large, reduced_tail=_reduced),
        {"ssdlite320": (512, 256, 256, 128)},
        ssdlite_extras,
        PredictionBlock,
        always_batch_norm=True,
    )


# torchvision's ResNets cut as NVIDIA's SSD300 v1.1 cuts them; the extra layers'
# output channels are NVIDIA's for each depth.
for _depth in DEPTHS:
    BACKBONES[f"resnet{_depth}"] = Backbone(
        f"ResNet-{_depth} to its third stage at stride 8 (NVIDIA's SSD300 v1.1; one map); "
        "NVIDIA's extra layers with BatchNorm",
        "resnet",
        functools.partial(ResNet, depth=_depth),
        {"ssd300": (512, 512, 256, 256, 128 if _depth == 18 else 256)},
        resnet_extras,
        always_batch_norm=True,
    )


def backbone(name: str) -> Backbone:
    """The entry ``name`` of :data:`BACKBONES`."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}: one of {', '.join(BACKBONES)}")
    return BACKBONES[name]
