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
from collections.abc import Callable

from flax import nnx

from ssd_jax.models.vgg import VGG16


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


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A trunk for SSD: what it is, the SSD attribute (and variable prefix) that
    holds it, ``trunk(*, batch_norm, width, dtype, param_dtype, rngs)`` building
    it, and its extra layers for each architecture it serves (the architecture's
    name is its default-box preset's)."""

    what: str
    attribute: str
    trunk: Callable[..., nnx.Module]
    extras: dict[str, tuple[ExtraLayer, ...]]


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


def backbone(name: str) -> Backbone:
    """The entry ``name`` of :data:`BACKBONES`."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}: one of {', '.join(BACKBONES)}")
    return BACKBONES[name]
