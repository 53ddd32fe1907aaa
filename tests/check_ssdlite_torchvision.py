# ruff: noqa: E402, E702
# Branch work for issue 26: our SSDlite320 vs torchvision's on the same random weights.
import os
import sys
import types

sys.path.insert(0, "/tmp/tv")
sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx, traverse_util
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

sys.path.insert(
    0,
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if "__file__" in dir()
    else "/work/wt26",
)
sys.path.insert(0, "/work/wt26")
from ssd_jax import default_boxes
from ssd_jax.models import SSD

torch.manual_seed(0)
tv = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=91).eval()
for m in tv.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.data.uniform_(0.5, 1.5)
        m.bias.data.uniform_(-0.2, 0.2)
sd = {k: v.detach().numpy() for k, v in tv.state_dict().items()}
ours = SSD("ssdlite320", 90, backbone="mobilenet_v3_large", rngs=nnx.Rngs(0))
ours.eval()
paths = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(ours)))
flat = {"/".join(map(str, p)): v for p, v in paths.items()}
k_ = lambda w: np.transpose(w, (2, 3, 1, 0))
new = {}


def convbn(o, t):
    new[f"{o}/conv/kernel"] = k_(sd[f"{t}.0.weight"])
    for a, b in (
        ("scale", "weight"),
        ("bias", "bias"),
        ("mean", "running_mean"),
        ("var", "running_var"),
    ):
        new[f"{o}/bn/{a}"] = sd[f"{t}.1.{b}"]


def conv(o, t):
    new[f"{o}/kernel"] = k_(sd[f"{t}.weight"])
    new[f"{o}/bias"] = sd[f"{t}.bias"]


# trunk: features.0 = stem, blocks 0..11, C4 expansion; features.1 = C4 rest, blocks 13, 14, last
def tv_block(i):  # our block i -> (prefix of its layers, first layer index)
    if i < 12:
        return f"backbone.features.0.{i + 1}.block", 0
    if i == 12:
        return None, None
    return f"backbone.features.1.{i - 12}.block", 0


convbn("mobilenet/stem", "backbone.features.0.0")
for i, block in enumerate(ours.mobilenet.blocks):
    if i == 12:
        convbn(f"mobilenet/blocks/{i}/expand", "backbone.features.0.13")
        p, j = "backbone.features.1.0", 1  # the slice block[1:] keeps its indices
    else:
        p, j = tv_block(i)
        if block.expand is not None:
            convbn(f"mobilenet/blocks/{i}/expand", f"{p}.{j}")
            j += 1
    convbn(f"mobilenet/blocks/{i}/depthwise", f"{p}.{j}")
    j += 1
    if block.se is not None:
        conv(f"mobilenet/blocks/{i}/se/fc1", f"{p}.{j}.fc1")
        conv(f"mobilenet/blocks/{i}/se/fc2", f"{p}.{j}.fc2")
        j += 1
    convbn(f"mobilenet/blocks/{i}/project", f"{p}.{j}")
convbn("mobilenet/last", "backbone.features.1.3")
for k in range(4):
    for n, layer in enumerate(("reduce", "depthwise", "expand")):
        convbn(f"extra{k + 1}/{layer}", f"backbone.extra.{k}.{n}")
for ours_name, tv_name in (("loc_heads", "regression_head"), ("conf_heads", "classification_head")):
    for k in range(6):
        convbn(f"{ours_name}/{k}/depthwise", f"head.{tv_name}.module_list.{k}.0")
        conv(f"{ours_name}/{k}/pointwise", f"head.{tv_name}.module_list.{k}.1")
print("missing", sorted(set(flat) - set(new))[:5], "extra", sorted(set(new) - set(flat))[:5])
state = nnx.state(ours)
nnx.replace_by_pure_dict(
    state, traverse_util.unflatten_dict({p: jnp.asarray(new["/".join(map(str, p))]) for p in paths})
)
nnx.update(ours, state)
x = np.random.default_rng(0).normal(size=(2, 320, 320, 3)).astype(np.float32)
with torch.no_grad():
    feats = list(tv.backbone(torch.from_numpy(x.transpose(0, 3, 1, 2))).values())
    out = tv.head(feats)
    anchors = (
        tv.anchor_generator.default_boxes if hasattr(tv.anchor_generator, "default_boxes") else None
    )
loc, conf = ours(jnp.asarray(x))
for name, a, b in (("loc", loc, out["bbox_regression"]), ("conf", conf, out["cls_logits"])):
    a, b = np.asarray(a), b.numpy()
    print(name, a.shape, b.shape, float(np.abs(a - b).max()), float(np.abs(b).max()))
# default boxes: torchvision's (cx, cy, w, h) for a 320x320 image
from torchvision.models.detection.image_list import ImageList

with torch.no_grad():
    boxes = tv.anchor_generator(ImageList(torch.zeros(1, 3, 320, 320), [(320, 320)]), feats)[0]
# torchvision returns xyxy in pixels; ours cxcywh normalized
ours_boxes = default_boxes.generate(default_boxes.preset("ssdlite320"))
c, wh = ours_boxes[:, :2], ours_boxes[:, 2:]
ours_xyxy = np.concatenate([c - wh / 2, c + wh / 2], 1) * 320
print("default boxes", boxes.shape, float(np.abs(ours_xyxy - boxes.numpy()).max()))
n_tv = sum(p.numel() for p in tv.parameters())
n_ours = sum(v.size for k, v in flat.items() if not (k.endswith("/mean") or k.endswith("/var")))
print("parameters", n_tv, n_ours)
