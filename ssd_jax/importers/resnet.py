"""torchvision's ResNets as our trunk (``resnet/...`` variables,
:class:`ssd_jax.models.resnet.ResNet`): the ImageNet classifiers ``resnet18``
... ``resnet152`` and the trunk inside NVIDIA's SSD300 v1.1.

The classifier's layout: ``conv1``, ``bn1``, ``layer1`` ... ``layer4`` (blocks
``layerN.K`` with ``conv1``/``bn1`` ... and ``downsample.0``/``.1``), ``fc``;
the trunk keeps the stem and the first three stages. NVIDIA's model holds the
same layers as ``feature_extractor.feature_extractor.0`` (conv1), ``.1`` (bn1),
``.4`` ... ``.6`` (layer1 ... layer3); :func:`nvidia_trunk_names` maps them back.
"""

import re

from ssd_jax.importers.common import ConversionError, Weights, batch_norm, take
from ssd_jax.models.resnet import DEPTHS

NVIDIA_TRUNK = "feature_extractor.feature_extractor."


def conv_bn(weights: Weights, conv: str, bn: str, name: str) -> Weights:
    """A bias-free conv ``{conv}.weight`` (OIHW) and the BatchNorm ``bn`` -> our
    ConvBN ``{name}/conv``, ``{name}/bn``."""
    kernel = take(weights, f"{conv}.weight", 4).transpose(2, 3, 1, 0)  # OIHW -> HWIO
    return {f"{name}/conv/kernel": kernel} | batch_norm(weights, bn, f"{name}/bn")


def depth(weights: Weights) -> int:
    """The depth (18, 34, 50, 101 or 152) of the classifier-layout ResNet in
    ``weights``, from its block type and block counts in stages 1-3."""
    counts = []
    for stage in (1, 2, 3):
        blocks = {int(m[1]) for key in weights if (m := re.match(rf"layer{stage}\.(\d+)\.", key))}
        counts.append(len(blocks))
    bottleneck = "layer1.0.conv3.weight" in weights
    for found, spec in DEPTHS.items():
        if spec.bottleneck == bottleneck and spec.blocks == tuple(counts):
            return found
    kind = "bottleneck" if bottleneck else "basic"
    raise ConversionError(f"no torchvision ResNet has {kind} blocks {counts} in stages 1-3")


def trunk(weights: Weights) -> Weights:
    """Our ``resnet/...`` variables from the classifier layout; stage 4 and the
    classifier, if present, are left out."""
    out = conv_bn(weights, "conv1", "bn1", "resnet/stem")
    spec = DEPTHS[depth(weights)]
    convs = ("conv1", "conv2", "conv3") if spec.bottleneck else ("conv1", "conv2")
    for stage, count in enumerate(spec.blocks, start=1):
        for k in range(count):
            theirs, ours = f"layer{stage}.{k}", f"resnet/layer{stage}/{k}"
            for n, layer in enumerate(convs, start=1):
                out |= conv_bn(weights, f"{theirs}.{layer}", f"{theirs}.bn{n}", f"{ours}/{layer}")
            if f"{theirs}.downsample.0.weight" in weights:
                out |= conv_bn(weights, f"{theirs}.downsample.0", f"{theirs}.downsample.1",
                               f"{ours}/downsample")  # fmt: skip
    return out


def nvidia_trunk_names(weights: Weights) -> Weights:
    """NVIDIA's ``feature_extractor.feature_extractor.N...`` weights renamed to
    the classifier layout; other keys are left out."""
    names = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3"}
    renamed = {}
    for key, value in weights.items():
        if key.startswith(NVIDIA_TRUNK):
            index, _, rest = key.removeprefix(NVIDIA_TRUNK).partition(".")
            if index in names:
                renamed[f"{names[index]}.{rest}"] = value
    return renamed


def is_resnet(weights: Weights) -> bool:
    """Whether a state dict is a torchvision ResNet classifier."""
    return "layer1.0.conv1.weight" in weights and "bn1.running_mean" in weights
