"""The formats a detector exports to, in one table (:data:`EXPORTERS`), and the
one way each is written: the file and a ``<file>.json`` sidecar describing it.

    from ssd_jax import exporters
    from ssd_jax.inference import load_detector

    info = exporters.export(load_detector("runs/shapes"), "jax", "detector.jaxexport")

``python -m ssd_jax.export`` takes its ``--format`` choices, its per-format flags
and their messages from :data:`EXPORTERS`. Adding a format takes a module with a
``to_bytes(detector, **options) -> (file contents, info)`` function (``info``
with at least ``runs_on``, what runs the file) and one :class:`Exporter` entry
here.
"""

import dataclasses
import importlib
import json
import os
from collections.abc import Callable

from ssd_jax.inference import Detector


@dataclasses.dataclass(frozen=True)
class Exporter:
    """An export format: what it is, its default file suffix, the module with its
    ``to_bytes`` (imported when used: some need extras), the keyword options it
    takes (``python -m ssd_jax.export`` flags of the same names) and what
    checks them (a :class:`~ssd_jax.errors.UserError` before anything is loaded)."""

    what: str
    suffix: str
    module: str
    options: tuple[str, ...] = ()
    check: Callable[..., None] | None = None
    require: Callable[[], object] | None = None  # raises if the format's extra is missing


def _check_jax(**options) -> None:
    from ssd_jax.exporters.jax_export import check_options

    check_options(**options)


def _require_onnx() -> None:
    from ssd_jax.exporters.onnx_export import require_onnx

    require_onnx()


EXPORTERS: dict[str, Exporter] = {
    "jax": Exporter("jax.export artifact for JAX on cpu, cuda, rocm and tpu", ".jaxexport",
                    "ssd_jax.exporters.jax_export", ("batch_size", "platforms"), _check_jax),
    "onnx": Exporter("ONNX model for onnxruntime, any batch size", ".onnx",
                     "ssd_jax.exporters.onnx_export", require=_require_onnx),
}  # fmt: skip


def describe(detector: Detector) -> dict:
    """What every format's sidecar says: class names, input size, input and output."""
    return {
        "class_names": list(detector.class_names),
        "image_size": detector.image_size,
        "input": "uint8 RGB (B, S, S, 3), resized to S x S",
        "output": "boxes_xyxy normalized to [0, 1]; classes 1..C index class_names[c - 1]",
    }


def save(data: bytes, info: dict, path: str) -> None:
    """Writes ``path`` (``data``) and ``path + ".json"`` (``info``)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    with open(path + ".json", "w") as f:
        json.dump(info, f, indent=2)


def export(detector: Detector, format: str, path: str, **options) -> dict:
    """Exports ``detector`` as ``format`` (a key of :data:`EXPORTERS`) to ``path``
    and ``path + ".json"``; returns the sidecar's contents."""
    if format not in EXPORTERS:
        raise ValueError(f"unknown export format {format!r}: one of {', '.join(EXPORTERS)}")
    data, info = importlib.import_module(EXPORTERS[format].module).to_bytes(detector, **options)
    info = describe(detector) | info
    save(data, info, path)
    return info
