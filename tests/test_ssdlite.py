"""SSDlite320 on MobileNetV3-Large against torchvision's own
``ssdlite320_mobilenet_v3_large`` (Python 3.11 suite: torchvision 0.28 beside the
CPU torch). torchvision's compiled ops are CUDA builds that do not load here; the
network, the default boxes and the parameters need none of them, so the import
skips their registration."""

import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, traverse_util

sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("stand-in"))
import torch  # noqa: E402
from torchvision.models.detection import ssdlite320_mobilenet_v3_large  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402

from ssd_jax import default_boxes  # noqa: E402
from ssd_jax.models import SSD  # noqa: E402

BN = (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var"))


def torchvision_ssdlite() -> torch.nn.Module:
    """torchvision's model (91 COCO logits, reduced tail as for its COCO
    release) with random weights and BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=91)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # eval-mode BatchNorm must matter
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def our_variables(state: dict, expands: list[bool]) -> dict[str, np.ndarray]:
    """torchvision's state dict as our variables ("/" paths), written out from
    the two layouts (the importer of issue 26 will own this); ``expands[i]``:
    block i has an expansion conv."""
    ours = {}
    kernel = lambda w: np.transpose(w, (2, 3, 1, 0))  # noqa: E731  OIHW -> HWIO

    def conv_bn(name, prefix):
        ours[f"{name}/conv/kernel"] = kernel(state[f"{prefix}.0.weight"])
        for a, b in BN:
            ours[f"{name}/bn/{a}"] = state[f"{prefix}.1.{b}"]

    def conv(name, prefix):
        ours[f"{name}/kernel"], ours[f"{name}/bias"] = (
            kernel(state[f"{prefix}.weight"]), state[f"{prefix}.bias"])  # fmt: skip

    # features.0: stem, blocks 0-11 and the C4 block's expansion; features.1: the
    # rest of C4 (its slice keeps indices 1-3), blocks 13-14, the last conv
    conv_bn("mobilenet/stem", "backbone.features.0.0")
    for i in range(15):
        if i == 12:
            conv_bn("mobilenet/blocks/12/expand", "backbone.features.0.13")
            prefix, layer = "backbone.features.1.0", 1
        else:
            prefix = f"backbone.features.{0 if i < 12 else 1}.{i + 1 if i < 12 else i - 12}.block"
            layer = int(expands[i])
            if expands[i]:
                conv_bn(f"mobilenet/blocks/{i}/expand", f"{prefix}.0")
        conv_bn(f"mobilenet/blocks/{i}/depthwise", f"{prefix}.{layer}")
        if f"{prefix}.{layer + 1}.fc1.weight" in state:
            conv(f"mobilenet/blocks/{i}/se/fc1", f"{prefix}.{layer + 1}.fc1")
            conv(f"mobilenet/blocks/{i}/se/fc2", f"{prefix}.{layer + 1}.fc2")
            layer += 1
        conv_bn(f"mobilenet/blocks/{i}/project", f"{prefix}.{layer + 1}")
    conv_bn("mobilenet/last", "backbone.features.1.3")
    for k in range(4):
        for n, layer in enumerate(("reduce", "depthwise", "expand")):
            conv_bn(f"extra{k + 1}/{layer}", f"backbone.extra.{k}.{n}")
    for heads, theirs in (("loc_heads", "regression_head"), ("conf_heads", "classification_head")):
        for k in range(6):
            conv_bn(f"{heads}/{k}/depthwise", f"head.{theirs}.module_list.{k}.0")
            conv(f"{heads}/{k}/pointwise", f"head.{theirs}.module_list.{k}.1")
    return ours


@pytest.fixture(scope="module")
def models():
    theirs = torchvision_ssdlite()
    state = {k: v.numpy() for k, v in theirs.state_dict().items() if "num_batches" not in k}
    ours = SSD("ssdlite320", 90, backbone="mobilenet_v3_large_reduced_tail", rngs=nnx.Rngs(0))
    ours.eval()
    graph_state = nnx.state(ours)
    paths = traverse_util.flatten_dict(nnx.to_pure_dict(graph_state))
    converted = our_variables(state, [b.expand is not None for b in ours.mobilenet.blocks])
    assert sorted("/".join(map(str, p)) for p in paths) == sorted(converted)
    nnx.replace_by_pure_dict(graph_state, traverse_util.unflatten_dict(
        {p: jnp.asarray(converted["/".join(map(str, p))]) for p in paths}))  # fmt: skip
    nnx.update(ours, graph_state)
    return ours, theirs


def test_the_network_gives_torchvisions_raw_outputs(models):
    """Same weights, same images: loc and conf logits within float32 rounding of
    the outputs' scale (3,234 boxes x 95 values, each a sum over at most 960
    channels of depthwise-separable layers; measured 5e-7 of a scale of 0.5)."""
    ours, theirs = models
    images = np.random.default_rng(0).normal(size=(2, 320, 320, 3)).astype(np.float32)
    with torch.no_grad():
        features = list(theirs.backbone(torch.from_numpy(images.transpose(0, 3, 1, 2))).values())
        expected = theirs.head(features)
    loc, conf = ours(jnp.asarray(images))
    for got, want in ((loc, expected["bbox_regression"]), (conf, expected["cls_logits"])):
        want = want.numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5 * np.abs(want).max())


def test_the_default_boxes_and_parameter_count_are_torchvisions(models):
    ours, theirs = models
    feature_maps = [torch.zeros(1, 1, s, s) for s in (20, 10, 5, 3, 2, 1)]
    with torch.no_grad():
        (boxes,) = theirs.anchor_generator(ImageList(torch.zeros(1, 3, 320, 320), [(320, 320)]),
                                           feature_maps)  # fmt: skip
    cxcywh = default_boxes.generate(default_boxes.preset("ssdlite320"))
    xyxy = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1)
    np.testing.assert_allclose(xyxy * 320, boxes.numpy(), atol=1e-4)  # pixels, float32
    params = sum(x.size for x in traverse_util.flatten_dict(
        nnx.to_pure_dict(nnx.state(ours, nnx.Param))).values())  # fmt: skip
    assert params == sum(p.numel() for p in theirs.parameters()) == 3_440_060
