"""A checkpoint's weights without the rest: restoring the variables for
inference or fine-tuning (no optimizer template, no Grain), writing an imported
detector, and converted VGG16 backbones."""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx, traverse_util

from ssd_jax.checkpoint.layout import (
    CHECKPOINTS,
    META,
    STATE,
    VARIABLE_PARTS,
    CheckpointError,
    Location,
    damaged,
)
from ssd_jax.steps import Variables

logger = logging.getLogger(__name__)


def _read_variables(location: Location) -> dict:
    """``params`` and ``batch_stats`` of the ``state`` item as flat dicts (keyed by
    :func:`_variable_path`) of arrays on this process's first device; the rest of
    the item (optimizer state, step) is not read."""
    try:
        return _read_variable_arrays(location)
    except Exception as error:  # any read failure of a written step is damage
        raise damaged(location, error) from error


def _read_variable_arrays(location: Location) -> dict:
    handler = ocp.PyTreeCheckpointHandler()
    tree = handler.metadata(location.item(STATE)).tree
    parts = {part: tree[part] for part in VARIABLE_PARTS if part in tree}
    # Placed on one device: it may have been written on any number of devices.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    is_leaf = lambda x: hasattr(x, "shape")  # noqa: E731
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), parts, is_leaf=is_leaf
    )
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=device), target)
    restored = handler.restore(
        location.item(STATE),
        args=ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True),
    )
    flat = {part: traverse_util.flatten_dict(restored.get(part, {})) for part in VARIABLE_PARTS}
    return {
        part: {_variable_path(key): value for key, value in flat[part].items()}
        for part in VARIABLE_PARTS
    }


def _variable_path(key: tuple) -> tuple[str, ...]:
    """A flattened key as strings (list indices are ints in nnx, strings in Orbax),
    without the trailing ``value`` level that nnx Variables add in Orbax trees."""
    key = tuple(map(str, key))
    return key[:-1] if key[-1] == "value" else key


def restore_variables(location: Location, variables: Variables, strict: bool = True) -> Variables:
    """``variables`` (nnx States, updated in place and returned) with the values of
    the checkpoint at ``location``.

    With ``strict`` every variable must be in the checkpoint with its shape. Without
    (fine-tuning), variables that are missing or have another shape there, such as
    the confidence heads of a model for another class count, keep their values.
    """
    saved = _read_variables(location)
    kept, total = [], 0
    for part in VARIABLE_PARTS:
        ours = traverse_util.flatten_dict(nnx.to_pure_dict(variables[part]))
        total += len(ours)
        for key, value in ours.items():
            found = saved[part].get(_variable_path(key))
            if found is not None and found.shape == value.shape:
                ours[key] = found
                continue
            kept.append(f"{part}/{'/'.join(map(str, key))}")
            if strict:
                name = f"{part}/{'/'.join(map(str, key))}"
                there = "is not in it" if found is None else f"has shape {found.shape} there"
                raise CheckpointError(
                    f"{location.directory} step {location.step} does not hold this network: "
                    f"{name} {there}, the model's has shape {value.shape}"
                )
        nnx.replace_by_pure_dict(variables[part], traverse_util.unflatten_dict(ours))
    if kept:  # e.g. the confidence heads of another class count: say which
        logger.info(
            f"{location.directory} step {location.step}: {len(kept)} of {total} variables are "
            f"missing or have another shape there and keep their initial values: "
            f"{', '.join(kept[:4])}{' ...' if len(kept) > 4 else ''}"
        )
    return variables


def write_detector(output_dir: str, variables: Variables, meta: dict) -> Location:
    """Writes ``variables`` and ``meta`` as step 0 of ``output_dir/checkpoints``,
    the layout training writes (without optimizer or data state)."""
    directory = os.path.join(os.path.abspath(output_dir), CHECKPOINTS)
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=True))
    items = {STATE: ocp.args.StandardSave(jax.device_get(variables)), META: ocp.args.JsonSave(meta)}
    manager.save(0, args=ocp.args.Composite(**items))
    manager.wait_until_finished()
    manager.close()
    return Location(directory, 0)


NORMALIZATION_KEYS = ("normalization/mean", "normalization/std")  # in a backbone .npz
BACKBONE_KEY = "backbone/name"  # the backbone it fits, since 2026-12-07


def _backbone_file(path: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise CheckpointError(f"no backbone weights file {path} (config.init.backbone)")
    return dict(np.load(path))


def backbone_normalization(path: str) -> tuple[tuple, tuple] | None:
    """The input normalization ``(mean, std)`` (0-255 RGB) that the backbone weights
    in ``path`` expect, or None if the file records none."""
    weights = _backbone_file(path)
    if NORMALIZATION_KEYS[0] not in weights:
        return None
    # stored as float32: read back as the shortest decimal that float32 holds
    # (123.675, not 123.67500305), as a configuration states it
    mean, std = (
        tuple(float(np.format_float_positional(np.float32(v), unique=True)) for v in weights[key])
        for key in NORMALIZATION_KEYS
    )
    return mean, std


def load_backbone(model: nnx.Module, path: str) -> None:
    """Loads converted backbone weights into ``model.trunk``: an ``.npz`` (for
    from ``convert_torch_backbone.py``) whose keys are the trunk's variable
    paths, e.g. ``vgg/conv1_1/conv/kernel`` or ``mobilenet/blocks/3/expand/conv/kernel``
    (HWIO), besides
    :data:`NORMALIZATION_KEYS`."""
    weights = _backbone_file(path)
    for key in NORMALIZATION_KEYS:
        weights.pop(key, None)
    recorded = weights.pop(BACKBONE_KEY, None)  # converted ImageNet weights: full width
    if recorded is not None and str(recorded) != model.backbone:
        raise CheckpointError(f"{path} holds {recorded} weights, the model is a {model.backbone}: "
                              f"set --config.model.backbone={recorded}")  # fmt: skip
    if recorded is not None and model.width != 1.0:
        raise CheckpointError(f"{path} holds full-width weights, the model has width "
                              f"{model.width}: set --config.model.width=1.0")  # fmt: skip
    paths = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model.trunk)))
    path_of = {"/".join(map(str, path)): path for path in paths}  # list indices are ints
    trunk = {name: paths[path] for name, path in path_of.items()}
    for key, value in weights.items():
        name = key.removeprefix(f"{model.trunk_attribute}/")
        if name not in trunk:
            raise CheckpointError(f"{path}: {key} is not a {model.backbone} trunk variable")
        if trunk[name].shape != value.shape:
            raise CheckpointError(
                f"{path}: {key} has shape {value.shape}, the model {trunk[name].shape}"
            )
        trunk[name] = jnp.asarray(value, trunk[name].dtype)
    state = nnx.state(model.trunk)
    pure = {path_of[name]: value for name, value in trunk.items()}
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(pure))
    nnx.update(model.trunk, state)
