"""SSD networks as Flax NNX modules."""

from ssd_jax.models.backbones import BACKBONES, Backbone, ExtraLayer
from ssd_jax.models.ssd import SSD, ssd300, ssd512
from ssd_jax.models.vgg import VGG16, ConvBlock, L2Norm

__all__ = [
    "BACKBONES",
    "SSD",
    "VGG16",
    "Backbone",
    "ConvBlock",
    "ExtraLayer",
    "L2Norm",
    "ssd300",
    "ssd512",
]
