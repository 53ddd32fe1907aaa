"""Helpers of the tests that compare our networks with PyTorch ones: BatchNorm
statistics that fit the data, state dicts as NumPy, float64 copies of ours."""

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx, traverse_util

from ssd_jax.importers import detectors
from ssd_jax.models import SSD


def randomize_batch_norm(model: torch.nn.Module, forward=None, size: int = 320) -> torch.nn.Module:
    """Random BatchNorm affine parameters and statistics that fit the data
    (one batch of ``size`` x ``size`` noise images through ``forward``, or the
    model, in training mode): random statistics collapse a deep network's
    outputs into near ties that no two implementations order alike. Returns the
    model in eval mode."""
    torch.manual_seed(0)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for module in norms:
        module.weight.data.uniform_(0.5, 1.5)
        module.bias.data.uniform_(-0.2, 0.2)
        module.momentum = 1.0  # the running statistics become this batch's
    model.train()
    with torch.no_grad():
        (forward or model)(torch.rand(4, 3, size, size) * 2 - 1)
    for module in norms:
        module.momentum = 0.1
    return model.eval()


def state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items() if "num_batches" not in k}


def assert_gradients_match(grads: dict, their_grads: dict, num_params: int) -> None:
    """Our gradients (``nnx.value_and_grad``'s state, flattened) against a PyTorch
    model's imported into our names: one per parameter, each to 1e-4 of its
    leaf's largest entry (the float32 loss's rounding, see tests/test_ssdlite.py).
    Biases before a training-mode BatchNorm have no gradient: both sides hold
    float64 noise there, hence a floor of 1e-8 of the largest gradient."""
    assert len(grads) == num_params
    names = {path: "/".join(map(str, path)) for path in grads}
    floor = 1e-8 * max(np.abs(their_grads[name]).max() for name in names.values())
    for path, grad in grads.items():
        want = their_grads[names[path]]
        np.testing.assert_allclose(np.asarray(grad), want,
                                   atol=1e-4 * max(np.abs(want).max(), floor),
                                   err_msg=names[path])  # fmt: skip


def in_float64(model: SSD) -> SSD:
    """A float64 copy of one of our SSDs (call under ``jax.enable_x64``)."""
    copy64 = SSD(model.architecture, model.num_classes, backbone=model.backbone,
                 boxes_per_location=model.boxes_per_location, batch_norm=True,
                 dtype=jnp.float64, param_dtype=jnp.float64, rngs=nnx.Rngs(0))  # fmt: skip
    pure = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model)))
    detectors.assign_weights(
        copy64, {"/".join(map(str, k)): np.asarray(v, np.float64) for k, v in pure.items()}
    )
    return copy64
