"""Reading PyTorch state dicts and converting their layers: the NumPy core of the
importers (PyTorch names, OIHW kernels in; "/"-joined model variable paths,
HWIO kernels out). torch is needed only to read ``.pth`` files."""

import os

import numpy as np

from ssd_jax.errors import UserError

Weights = dict[str, np.ndarray]

# A key that only the state dicts of each importer's detector
# (ssd_jax.importers.detectors.IMPORTERS) hold, and the
# detector's name: a file given to another importer is refused naming its own.
SIGNATURES: dict[str, tuple[str, str]] = {
    "pytorch_ssd": ("addon_layers.addon_1.scales", "jjjkkkjjj/pytorch_SSD's SSD"),
    "ssd.pytorch": ("L2Norm.weight", "amdegroot/ssd.pytorch's SSD300"),
    "torchvision": ("backbone.scale_weight", "torchvision's ssd300_vgg16"),
    "torchvision_ssdlite": ("backbone.extra.0.0.0.weight",
                            "torchvision's SSDlite (ssdlite320_mobilenet_v3_large)"),
    "nvidia_ssd": ("additional_blocks.0.0.weight", "NVIDIA's SSD300 v1.1"),
}  # fmt: skip


class ConversionError(UserError, ValueError):
    """A weights file does not hold what the chosen converter expects."""


class MissingWeightsError(UserError, FileNotFoundError):
    """The weights file to convert is not there."""


def read_state_dict(path: str) -> Weights:
    """A PyTorch state dict (``.pth``/``.pt``, needs torch), ``.safetensors`` or
    ``.npz`` file as float32/int NumPy arrays. A checkpoint wrapping the weights
    in ``"state_dict"`` or ``"model"`` is unwrapped; DataParallel's ``module.``
    prefixes are removed."""
    if not os.path.isfile(path):
        raise MissingWeightsError(f"no weights file {path}: check --input")
    if path.endswith(".npz"):
        weights = dict(np.load(path))
    elif path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        weights = load_file(path)
    else:
        try:
            import torch
        except ImportError as error:
            raise ImportError(
                f"reading {path} needs PyTorch (pip install torch); .npz and .safetensors "
                "files do not"
            ) from error
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
                loaded = loaded[key]
        weights = {k: v.detach().cpu().numpy() for k, v in loaded.items() if hasattr(v, "numpy")}
    return {key.removeprefix("module."): np.asarray(value) for key, value in weights.items()}


def take(weights: Weights, key: str, shape_rank: int | None = None) -> np.ndarray:
    if key not in weights:
        raise ConversionError(f"missing {key!r} (the file has e.g. {sorted(weights)[:5]})")
    value = weights[key]
    if shape_rank is not None and value.ndim != shape_rank:
        raise ConversionError(f"{key} has shape {value.shape}, expected rank {shape_rank}")
    return np.asarray(value, np.float32)


def conv(weights: Weights, prefix: str, name: str) -> Weights:
    """``{name}/kernel`` (HWIO) and ``{name}/bias`` from PyTorch ``{prefix}.weight``
    (OIHW) and ``{prefix}.bias``."""
    kernel = take(weights, f"{prefix}.weight", 4).transpose(2, 3, 1, 0)
    return {f"{name}/kernel": kernel, f"{name}/bias": take(weights, f"{prefix}.bias", 1)}


def batch_norm(weights: Weights, prefix: str, name: str) -> Weights:
    """Flax BatchNorm ``scale``, ``bias``, ``mean``, ``var`` from a PyTorch one."""
    return {
        f"{name}/scale": take(weights, f"{prefix}.weight", 1),
        f"{name}/bias": take(weights, f"{prefix}.bias", 1),
        f"{name}/mean": take(weights, f"{prefix}.running_mean", 1),
        f"{name}/var": take(weights, f"{prefix}.running_var", 1),
    }


def identity_batch_norm(name: str, channels: int, epsilon: float = 1e-5) -> Weights:
    """A BatchNorm that passes its input through in inference mode, for a layer the
    source model has without BN (``var = 1 - epsilon``, so ``sqrt(var + eps) = 1``)."""
    return {
        f"{name}/scale": np.ones(channels, np.float32),
        f"{name}/bias": np.zeros(channels, np.float32),
        f"{name}/mean": np.zeros(channels, np.float32),
        f"{name}/var": np.full(channels, 1.0 - epsilon, np.float32),
    }
