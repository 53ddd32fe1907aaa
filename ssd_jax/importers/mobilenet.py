"""torchvision's MobileNetV3-Large as our trunk (``mobilenet/...`` variables):
its ImageNet classifier ``mobilenet_v3_large`` and the trunk inside its detector
``ssdlite320_mobilenet_v3_large``.

The classifier's layout: ``features.0`` the stem, ``features.1`` ... ``15`` the
inverted-residual blocks (``block.N``: expansion when the block widens,
depthwise, squeeze-and-excitation when it has one, projection), ``features.16``
the last conv. SSDlite splits the same layers in two at the C4 block's expansion
(``backbone.features.0``: stem, blocks 0-11, that expansion;
``backbone.features.1``: the rest of C4, blocks 13-14, the last conv), so its
names are mapped back to the classifier's first (:func:`ssdlite_trunk_names`).
"""

import re

from ssd_jax.importers.common import ConversionError, Weights, batch_norm, conv, take
from ssd_jax.models.mobilenet_v3 import MobileNetV3Large

NUM_BLOCKS = 15
C4 = MobileNetV3Large.C4


def conv_bn(weights: Weights, prefix: str, name: str) -> Weights:
    """torchvision's Conv2dNormActivation ``{prefix}.0`` (conv without bias) and
    ``{prefix}.1`` (BatchNorm) -> our ConvBN ``{name}/conv``, ``{name}/bn``."""
    kernel = take(weights, f"{prefix}.0.weight", 4).transpose(2, 3, 1, 0)  # OIHW -> HWIO
    return {f"{name}/conv/kernel": kernel} | batch_norm(weights, f"{prefix}.1", f"{name}/bn")


def trunk(weights: Weights, prefix: str = "") -> Weights:
    """Our ``mobilenet/...`` variables from the classifier layout
    (``{prefix}features.N...``)."""
    f = f"{prefix}features"
    out = conv_bn(weights, f"{f}.0", "mobilenet/stem")
    for i in range(NUM_BLOCKS):
        block, ours, layer = f"{f}.{i + 1}.block", f"mobilenet/blocks/{i}", 0
        if i > 0:  # block 0 keeps its 16 channels: no expansion
            out |= conv_bn(weights, f"{block}.0", f"{ours}/expand")
            layer = 1
        out |= conv_bn(weights, f"{block}.{layer}", f"{ours}/depthwise")
        if f"{block}.{layer + 1}.fc1.weight" in weights:
            layer += 1
            out |= conv(weights, f"{block}.{layer}.fc1", f"{ours}/se/fc1")
            out |= conv(weights, f"{block}.{layer}.fc2", f"{ours}/se/fc2")
        out |= conv_bn(weights, f"{block}.{layer + 1}", f"{ours}/project")
    out |= conv_bn(weights, f"{f}.{NUM_BLOCKS + 1}", "mobilenet/last")
    return out


def ssdlite_trunk_names(weights: Weights) -> Weights:
    """SSDlite's ``backbone.features.{0,1}...`` weights renamed to the classifier
    layout (``features.N...``); other keys are left out."""
    c4 = f"features.{C4 + 1}.block"
    rules = (
        (rf"backbone\.features\.0\.{C4 + 1}\.(.*)", rf"{c4}.0.\1"),  # C4's expansion
        (r"backbone\.features\.0\.(\d+)\.(.*)", r"features.\1.\2"),
        (r"backbone\.features\.1\.0\.(.*)", rf"{c4}.\1"),  # C4 after its expansion
        (r"backbone\.features\.1\.(\d+)\.(.*)",
         lambda m: f"features.{C4 + 1 + int(m[1])}.{m[2]}"),
    )  # fmt: skip
    renamed = {}
    for key, value in weights.items():
        for pattern, replacement in rules:
            if re.fullmatch(pattern, key):
                renamed[re.sub(pattern, replacement, key)] = value
                break
    return renamed


def reduced_tail(weights: Weights, prefix: str = "") -> bool:
    """Whether the classifier-layout weights have the halved tail (480-channel
    last conv, as torchvision's SSDlite built without ImageNet weights)."""
    channels = take(weights, f"{prefix}features.{NUM_BLOCKS + 1}.0.weight", 4).shape[0]
    if channels not in (480, 960):
        raise ConversionError(
            f"{prefix}features.{NUM_BLOCKS + 1} has {channels} output channels; MobileNetV3-"
            "Large's last conv has 960 (or 480 with the reduced tail): only width 1.0 imports"
        )
    return channels == 480


def is_mobilenet_v3_large(weights: Weights) -> bool:
    """Whether a state dict is torchvision's ``mobilenet_v3_large`` classifier."""
    return f"features.{NUM_BLOCKS + 1}.0.weight" in weights and "features.1.block.0.0.weight" in (
        weights
    )
