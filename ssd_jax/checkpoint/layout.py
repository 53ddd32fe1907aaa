"""Where checkpoints live and what describes them: the run directory's layout,
finding a checkpoint (:func:`locate`) and its ``meta`` item."""

import hashlib
import json
import os
from collections.abc import Sequence
from typing import NamedTuple

import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from ssd_jax import config_schema
from ssd_jax.errors import UserError
from ssd_jax.models.backbones import BACKBONES

CHECKPOINTS = "checkpoints"  # the folder of a run directory
STATE, META, DATA = "state", "meta", "data"  # the items of a step
TRAIN_IDS = "train_ids"  # the training examples' ids, in order (training runs only)
VARIABLE_PARTS = ("params", "batch_stats")


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, incomplete or does not fit the model; the
    message names the path."""


class DamagedCheckpointError(CheckpointError):
    """A saved step cannot be read back: a file of it is missing, cut short or empty."""


def damaged(location: "Location", error: Exception) -> DamagedCheckpointError:
    """The error for a step whose files cannot be read back (``error``: why)."""
    detail = (str(error).strip().splitlines() or [""])[0][:200]
    steps = finished_steps(location.directory)
    return DamagedCheckpointError(
        f"{location.directory} step {location.step} is damaged or incomplete "
        f"({type(error).__name__}: {detail}); its steps: {steps}"
    )


class Location(NamedTuple):
    """One saved step: ``directory`` (a ``checkpoints/`` folder) and ``step``."""

    directory: str
    step: int

    def item(self, name: str) -> epath.Path:
        return epath.Path(self.directory) / str(self.step) / name


def finished_steps(directory: str) -> list[int]:
    """The finished steps under ``directory`` (Orbax skips unfinished writes)."""
    return sorted(ocp.utils.checkpoint_steps(directory)) if os.path.isdir(directory) else []


def locate(path: str, step: int | None = None) -> Location:
    """The checkpoint that ``path`` names, at ``step`` (default: the newest).

    ``path`` may be a run directory, its ``checkpoints/`` folder, the output
    folder of ``python -m ssd_jax.convert`` or one step's folder
    (``checkpoints/5000``). Nothing is created: a mistyped path is an error
    that says what was looked for.
    """
    path = os.path.abspath(os.path.expanduser(path))
    parent, name = os.path.split(path)
    if name.isdigit() and int(name) in finished_steps(parent):  # one step's folder
        if step is not None and step != int(name):
            raise CheckpointError(f"{path} is step {name}, but step {step} was asked for")
        return Location(parent, int(name))
    for directory in (path, os.path.join(path, CHECKPOINTS)):
        steps = finished_steps(directory)
        if steps and step is None:
            return Location(directory, steps[-1])
        if steps:
            if step not in steps:
                raise CheckpointError(f"{directory} has no step {step}; it has steps {steps}")
            return Location(directory, step)
    if not os.path.exists(path):
        raise CheckpointError(
            f"{path} does not exist: give a run's --workdir, its checkpoints/ folder or the "
            "--output folder of python -m ssd_jax.convert"
        )
    if os.path.isfile(path):
        raise CheckpointError(
            f"{path} is a file, not an ssd_jax checkpoint: import a PyTorch detector with "
            "python -m ssd_jax.convert --from NAME --input FILE --output DIR, then give DIR"
        )
    raise CheckpointError(
        f"no checkpoint in {path}: looked for finished step folders (such as 5000/) in "
        f"{path} and in {os.path.join(path, CHECKPOINTS)}"
    )


def meta_for(config: ml_collections.ConfigDict, class_names: tuple[str, ...], workdir: str) -> dict:
    """The ``meta`` item: the configuration, class names, default-box preset and
    input normalization, so that a checkpoint can be used on its own."""
    return {
        "config": json.loads(config.to_json_best_effort()),
        "class_names": list(class_names),
        "architecture": config.model.architecture,
        "backbone": config.model.backbone,
        "default_boxes": config.model.default_boxes or config.model.architecture,
        "mean": list(config.data.mean),
        "std": list(config.data.std),
        "workdir": workdir,
    }


def train_data_fingerprint(example_ids: Sequence[str]) -> dict:
    """``{"count", "sha256"}`` of the training split's example ids in order: what
    the ``meta`` records of the data a run was trained on."""
    digest = hashlib.sha256("\n".join(example_ids).encode()).hexdigest()
    return {"count": len(example_ids), "sha256": digest}


def train_data_change(saved: Sequence[str], now: Sequence[str], shown: int = 3) -> str:
    """What differs between two lists of example ids, in words: counts, ids added
    and removed (the first ``shown`` of each), or the same ids in another order."""
    before, after = set(saved), set(now)
    added = [i for i in now if i not in before]
    removed = [i for i in saved if i not in after]

    def listed(what: str, ids: list[str]) -> str:
        more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
        return f"{len(ids)} {what} ({', '.join(map(repr, ids[:shown]))}{more})"

    changes = [listed(what, ids) for what, ids in (("added", added), ("removed", removed)) if ids]
    counts = f"{len(saved)} -> {len(now)} images"
    if not changes:
        return f"{counts}, the same ids in another order"
    return f"{counts}, " + ", ".join(changes)


# What a resumed run must share with the run it continues: meta keys, or
# "config." paths into the saved configuration.
RESUME_KEYS = (
    "class_names", "backbone", "architecture", "default_boxes", "mean", "std",
    "config.model.batch_norm", "config.model.width", "config.data.train",
)  # fmt: skip
# What a checkpoint written before a key was recorded had.
RECORDED_SINCE = {"backbone": "vgg16"}


def _value(meta: dict, key: str):
    for part in key.split("."):
        meta = meta.get(part) if isinstance(meta, dict) else None
    return meta


def resume_differences(saved: dict, meta: dict) -> list[str]:
    """``"key: saved -> now"`` for each of :data:`RESUME_KEYS` that differs
    between the ``meta`` of a checkpoint and that of the run about to resume it
    (of a block such as ``config.data.train``, the keys the checkpoint has)."""
    differences = []
    fixed = BACKBONES.get(meta.get("backbone"))
    for key in RESUME_KEYS:
        if key == "config.model.batch_norm" and fixed is not None and fixed.always_batch_norm:
            continue  # the backbone has BatchNorm either way
        before, now = _value(saved, key), _value(meta, key)
        if before is None:
            before = RECORDED_SINCE.get(key)
        if isinstance(before, dict) and isinstance(now, dict):
            now = {name: now.get(name) for name in before}
        if json.dumps(before, sort_keys=True) != json.dumps(now, sort_keys=True):
            differences.append(f"{key}: {before!r} -> {now!r}")
    return differences


def read_meta(location: Location) -> dict:
    """The ``meta`` item of a checkpoint (see :func:`meta_for`)."""
    if not location.item(META).is_dir():
        raise CheckpointError(f"{location.item(META)} is missing: not an ssd_jax checkpoint")
    try:
        return dict(ocp.JsonCheckpointHandler().restore(location.item(META)))
    except Exception as error:  # any read failure of a written step is damage
        raise damaged(location, error) from error


def saved_config(meta: dict) -> ml_collections.ConfigDict:
    """The configuration a checkpoint was written with, on today's schema
    (:func:`ssd_jax.config_schema.from_saved`), with the class names and input
    normalization the network was trained with."""
    config = config_schema.from_saved(meta["config"])
    config.data.class_names = tuple(meta["class_names"])
    config.data.mean, config.data.std = tuple(meta["mean"]), tuple(meta["std"])
    return config
