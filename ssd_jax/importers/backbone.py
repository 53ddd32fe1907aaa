"""ImageNet weights as the SSD trunk: torchvision ``vgg16`` / ``vgg16_bn``
(``vgg/...`` variables; fc6/fc7 reduced to the paper's conv6/conv7),
ssd.pytorch's Caffe-style ``vgg16_reducedfc`` and torchvision
``mobilenet_v3_large`` (``mobilenet/...``; :mod:`ssd_jax.importers.mobilenet`)
and torchvision ``resnet18`` ... ``resnet152`` (``resnet/...``;
:mod:`ssd_jax.importers.resnet`), told apart by their names (:func:`trunk_weights`).

Caffe-style weights read BGR images minus (104, 117, 123): their first kernel's
input channels are reversed so that they read RGB, and the normalization becomes
mean (123, 117, 104), std 1, recorded with the weights.
"""

import numpy as np

from ssd_jax.checkpoint.variables import BACKBONE_KEY, NORMALIZATION_KEYS
from ssd_jax.data.imagenet import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from ssd_jax.importers import mobilenet, resnet
from ssd_jax.importers.common import SIGNATURES, ConversionError, Weights, batch_norm, conv, take

VGG_CONVS = (
    "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
    "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3",
)  # fmt: skip
# Positions of the 13 convs in torchvision's vgg16.features (vgg16_bn: BN at +1).
TORCHVISION_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
TORCHVISION_VGG16_BN_CONVS = (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40)
# ssd.pytorch's vgg ModuleList (also vgg16_reducedfc.pth): the 13 convs, conv6, conv7.
SSD_PYTORCH_VGG_CONVS = (*TORCHVISION_VGG16_CONVS, 31, 33)
CAFFE_MEAN_RGB = (123.0, 117.0, 104.0)  # Caffe's BGR (104, 117, 123), in RGB order
CAFFE_STD_RGB = (1.0, 1.0, 1.0)


def reduce_fc(
    fc6_weight: np.ndarray, fc6_bias: np.ndarray, fc7_weight: np.ndarray, fc7_bias: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """VGG16's fc6 (4096, 25088) and fc7 (4096, 4096) as the paper's conv6 (1024,
    512, 3, 3; used with dilation 6) and conv7 (1024, 1024, 1, 1), OIHW: fc6 viewed
    as (4096, 512, 7, 7) keeps every 4th output channel and every 3rd kernel
    position (0, 3, 6); fc7 keeps every 4th row and column."""
    if fc6_weight.shape != (4096, 512 * 7 * 7) or fc7_weight.shape != (4096, 4096):
        raise ConversionError(
            f"fc6 {fc6_weight.shape} / fc7 {fc7_weight.shape} are not VGG16's (4096, 25088) / "
            "(4096, 4096)"
        )
    conv6 = fc6_weight.reshape(4096, 512, 7, 7)[::4, :, ::3, ::3]
    conv7 = fc7_weight[::4, ::4].reshape(1024, 1024, 1, 1)
    return conv6, fc6_bias[::4], conv7, fc7_bias[::4]


def bgr_to_rgb_input(weights: Weights, first_kernel: str) -> None:
    """Makes a kernel trained on BGR input read RGB (HWIO input axis reversed)."""
    weights[first_kernel] = np.ascontiguousarray(weights[first_kernel][:, :, ::-1, :])


def vgg16_backbone(weights: Weights) -> tuple[Weights, dict]:
    """Trunk weights (``vgg/...`` keys) and their input normalization from
    torchvision ``vgg16`` / ``vgg16_bn`` (fc6/fc7 reduced by :func:`reduce_fc`) or
    ssd.pytorch's ``vgg16_reducedfc`` (Caffe style). Returns ``(weights, info)``,
    ``info = {"source", "backbone", "batch_norm", "mean", "std"}``."""
    out: Weights = {}
    if "classifier.0.weight" in weights:
        bn = "features.1.running_mean" in weights
        positions = TORCHVISION_VGG16_BN_CONVS if bn else TORCHVISION_VGG16_CONVS
        for name, k in zip(VGG_CONVS, positions, strict=True):
            out |= conv(weights, f"features.{k}", f"vgg/{name}/conv")
            if bn:
                out |= batch_norm(weights, f"features.{k + 1}", f"vgg/{name}/bn")
        conv6, bias6, conv7, bias7 = reduce_fc(
            take(weights, "classifier.0.weight"),
            take(weights, "classifier.0.bias"),
            take(weights, "classifier.3.weight"),
            take(weights, "classifier.3.bias"),
        )
        fc = {"classifier.6.weight": conv6, "classifier.6.bias": bias6}
        fc |= {"classifier.7.weight": conv7, "classifier.7.bias": bias7}
        out |= conv(fc, "classifier.6", "vgg/conv6/conv")
        out |= conv(fc, "classifier.7", "vgg/conv7/conv")
        source = "torchvision vgg16_bn" if bn else "torchvision vgg16"
        return out, {"source": source, "backbone": "vgg16", "batch_norm": bn,
                     "mean": IMAGENET_MEAN_RGB, "std": IMAGENET_STD_RGB}  # fmt: skip
    if "31.weight" in weights:
        for name, k in zip((*VGG_CONVS, "conv6", "conv7"), SSD_PYTORCH_VGG_CONVS, strict=True):
            out |= conv(weights, str(k), f"vgg/{name}/conv")
        bgr_to_rgb_input(out, "vgg/conv1_1/conv/kernel")
        return out, {"source": "vgg16_reducedfc (caffe)", "backbone": "vgg16",
                     "batch_norm": False, "mean": CAFFE_MEAN_RGB, "std": CAFFE_STD_RGB}  # fmt: skip
    raise ConversionError(
        "not an ImageNet VGG16, MobileNetV3-Large or ResNet state dict: expected torchvision keys "
        "(VGG16, MobileNetV3: features.N..., classifier.N...; ResNet: conv1, bn1, layerN...) "
        f"or vgg16_reducedfc keys (0.weight ... 33.weight); got e.g. {sorted(weights)[:5]}"
    )


def mobilenet_v3_large_backbone(weights: Weights) -> tuple[Weights, dict]:
    """Trunk weights (``mobilenet/...``) of torchvision's ImageNet
    ``mobilenet_v3_large`` (its classifier is left out) and the ImageNet
    normalization it was trained with. Its tail is the full one: it fits
    ``model.backbone = "mobilenet_v3_large"``."""
    reduced = mobilenet.reduced_tail(weights)
    backbone = "mobilenet_v3_large_reduced_tail" if reduced else "mobilenet_v3_large"
    return mobilenet.trunk(weights), {
        "source": "torchvision mobilenet_v3_large", "backbone": backbone, "batch_norm": True,
        "mean": IMAGENET_MEAN_RGB, "std": IMAGENET_STD_RGB,
    }  # fmt: skip


def resnet_backbone(weights: Weights) -> tuple[Weights, dict]:
    """Trunk weights (``resnet/...``: stem and stages 1-3) of torchvision's
    ImageNet ``resnet18`` ... ``resnet152`` and the ImageNet normalization; the
    backbone is ``resnet<depth>``."""
    depth = resnet.depth(weights)
    return resnet.trunk(weights), {
        "source": f"torchvision resnet{depth}", "backbone": f"resnet{depth}",
        "batch_norm": True, "mean": IMAGENET_MEAN_RGB, "std": IMAGENET_STD_RGB,
    }  # fmt: skip


def trunk_weights(weights: Weights) -> tuple[Weights, dict]:
    """Trunk weights and ``info = {"source", "backbone", "batch_norm", "mean",
    "std"}`` of any ImageNet model this module reads."""
    for kind, (key, what) in SIGNATURES.items():
        if key in weights:
            raise ConversionError(
                f"this is {what}, a trained detector, not ImageNet weights: "
                f"python -m ssd_jax.convert --from {kind} imports it"
            )
    if mobilenet.is_mobilenet_v3_large(weights):
        return mobilenet_v3_large_backbone(weights)
    if resnet.is_resnet(weights):
        return resnet_backbone(weights)
    return vgg16_backbone(weights)


def record_arrays(info: dict) -> Weights:
    """The entries that record, inside a backbone ``.npz``, the input normalization
    its weights expect (``normalization/mean``, ``normalization/std``, 0-255 RGB)
    and, when ``info`` names it, the backbone they fit (``backbone/name``, a
    string array)."""
    mean_key, std_key = NORMALIZATION_KEYS
    record = {
        mean_key: np.asarray(info["mean"], np.float32),
        std_key: np.asarray(info["std"], np.float32),
    }
    if "backbone" in info:
        record[BACKBONE_KEY] = np.asarray(info["backbone"])
    return record
