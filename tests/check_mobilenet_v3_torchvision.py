# ruff: noqa: E402
# Branch work for issue 26 (not yet a test: torchvision is not a dev dependency yet).
# Run: pip install --no-deps --target /tmp/tv torchvision; python tests/check_mobilenet_v3_torchvision.py
# Measured: taps equal to 9.5e-7 and 1.4e-6 (max |x| 1.5, 2.9); 1,620,512 parameters both.
import sys
import types

sys.path.insert(0, "/tmp/tv")
sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
from functools import partial

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx, traverse_util
from torchvision.models import mobilenet_v3_large

sys.path.insert(
    0,
    __import__("os").path.dirname(
        __import__("os").path.dirname(__import__("os").path.abspath(__file__))
    ),
)
from ssd_jax.models.mobilenet_v3 import MobileNetV3Large

torch.manual_seed(0)
tv = mobilenet_v3_large(
    weights=None,
    reduced_tail=True,
    norm_layer=partial(torch.nn.BatchNorm2d, eps=0.001, momentum=0.03),
).eval()
# random BN stats so eval-mode BN matters
for m in tv.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.data.uniform_(0.5, 1.5)
        m.bias.data.uniform_(-0.2, 0.2)
sd = {k: v.detach().numpy() for k, v in tv.state_dict().items()}
ours = MobileNetV3Large(reduced_tail=True, rngs=nnx.Rngs(0))
ours.eval()
flat = {
    "/".join(map(str, k)): v
    for k, v in traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(ours))).items()
}


def conv_k(w):  # OIHW -> HWIO ; depthwise: O,1,H,W -> H,W,1,O
    return np.transpose(w, (2, 3, 1, 0))


new = {}


def convbn(ours_prefix, tv_prefix):
    new[f"{ours_prefix}/conv/kernel"] = conv_k(sd[f"{tv_prefix}.0.weight"])
    new[f"{ours_prefix}/bn/scale"] = sd[f"{tv_prefix}.1.weight"]
    new[f"{ours_prefix}/bn/bias"] = sd[f"{tv_prefix}.1.bias"]
    new[f"{ours_prefix}/bn/mean"] = sd[f"{tv_prefix}.1.running_mean"]
    new[f"{ours_prefix}/bn/var"] = sd[f"{tv_prefix}.1.running_var"]


convbn("stem", "features.0")
for i, block in enumerate(ours.blocks):
    j = 0
    p = f"features.{i + 1}.block"
    if block.expand is not None:
        convbn(f"blocks/{i}/expand", f"{p}.{j}")
        j += 1
    convbn(f"blocks/{i}/depthwise", f"{p}.{j}")
    j += 1
    if block.se is not None:
        for fc in ("fc1", "fc2"):
            new[f"blocks/{i}/se/{fc}/kernel"] = conv_k(sd[f"{p}.{j}.{fc}.weight"])
            new[f"blocks/{i}/se/{fc}/bias"] = sd[f"{p}.{j}.{fc}.bias"]
        j += 1
    convbn(f"blocks/{i}/project", f"{p}.{j}")
convbn("last", "features.16")
missing = set(flat) - set(new)
extra = set(new) - set(flat)
print("missing", sorted(missing)[:5], "extra", sorted(extra)[:5])
for k in flat:
    assert flat[k].shape == new[k].shape, (k, flat[k].shape, new[k].shape)
state = nnx.state(ours)
pure = nnx.to_pure_dict(state)
paths = traverse_util.flatten_dict(pure)
nnx.replace_by_pure_dict(
    state, traverse_util.unflatten_dict({p: jnp.asarray(new["/".join(map(str, p))]) for p in paths})
)
nnx.update(ours, state)

x = np.random.default_rng(0).normal(size=(2, 320, 320, 3)).astype(np.float32)
with torch.no_grad():
    t = torch.from_numpy(x.transpose(0, 3, 1, 2))
    feats = tv.features
    h = t
    for k in range(13):
        h = feats[k](h)
    tap_t = feats[13].block[0](h)
    h2 = feats[13].block[1:](tap_t)
    for k in range(14, 17):
        h2 = feats[k](h2)
tap, last = ours(jnp.asarray(x))
for name, a, b in (
    ("tap", np.asarray(tap), tap_t.numpy().transpose(0, 2, 3, 1)),
    ("last", np.asarray(last), h2.numpy().transpose(0, 2, 3, 1)),
):
    print(name, a.shape, b.shape, np.abs(a - b).max(), np.abs(b).max())
n_ours = sum(v.size for v in flat.values() if True)
print(
    "params",
    sum(p.numel() for p in tv.features.parameters()),
    sum(v.size for k, v in flat.items() if not (k.endswith("/mean") or k.endswith("/var"))),
)
