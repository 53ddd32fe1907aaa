"""The run directory on disk: where checkpoints live, what they hold, and every
read and write of them.

A run directory (``--workdir``) holds ``checkpoints/<step>/``, written by Orbax,
each step with these items:

==========  ===================================================================
``state``   the :data:`~ssd_jax.steps.TrainState` (params, batch_stats,
            opt_state, step); an imported detector's holds its variables only
``meta``    JSON: what using the checkpoint on its own needs (:func:`meta_for`)
``data``    the data iterators' states, one per process (training runs only)
==========  ===================================================================

Inference and fine-tuning read only ``params`` and ``batch_stats`` of the
``state`` item, through Orbax's item handlers: no optimizer is needed to build
a template, and neither is Grain (the ``data`` item's handler).
"""

import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx, traverse_util

from ssd_jax import config_schema
from ssd_jax.errors import UserError
from ssd_jax.steps import TrainState, Variables

CHECKPOINTS = "checkpoints"  # the folder of a run directory
STATE, META, DATA = "state", "meta", "data"  # the items of a step
VARIABLE_PARTS = ("params", "batch_stats")


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, incomplete or does not fit the model; the
    message names the path."""


class DamagedCheckpointError(CheckpointError):
    """A saved step cannot be read back: a file of it is missing, cut short or empty."""


def _damaged(location: "Location", error: Exception) -> DamagedCheckpointError:
    detail = (str(error).strip().splitlines() or [""])[0][:200]
    steps = _finished_steps(location.directory)
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


def _finished_steps(directory: str) -> list[int]:
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
    if name.isdigit() and int(name) in _finished_steps(parent):  # one step's folder
        if step is not None and step != int(name):
            raise CheckpointError(f"{path} is step {name}, but step {step} was asked for")
        return Location(parent, int(name))
    for directory in (path, os.path.join(path, CHECKPOINTS)):
        steps = _finished_steps(directory)
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
        "default_boxes": config.model.default_boxes or config.model.architecture,
        "mean": list(config.data.mean),
        "std": list(config.data.std),
        "workdir": workdir,
    }


# What a resumed run must share with the run it continues: meta keys, or
# "config." paths into the saved configuration.
RESUME_KEYS = (
    "class_names", "architecture", "default_boxes", "mean", "std", "config.model.batch_norm",
    "config.model.width", "config.data.train",
)  # fmt: skip


def _value(meta: dict, key: str):
    for part in key.split("."):
        meta = meta.get(part) if isinstance(meta, dict) else None
    return meta


def resume_differences(saved: dict, meta: dict) -> list[str]:
    """``"key: saved -> now"`` for each of :data:`RESUME_KEYS` that differs
    between the ``meta`` of a checkpoint and that of the run about to resume it
    (of a block such as ``config.data.train``, the keys the checkpoint has)."""
    differences = []
    for key in RESUME_KEYS:
        before, now = _value(saved, key), _value(meta, key)
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
        raise _damaged(location, error) from error


def saved_config(meta: dict) -> ml_collections.ConfigDict:
    """The configuration a checkpoint was written with, on today's schema
    (:func:`ssd_jax.config_schema.from_saved`), with the class names and input
    normalization the network was trained with."""
    config = config_schema.from_saved(meta["config"])
    config.data.class_names = tuple(meta["class_names"])
    config.data.mean, config.data.std = tuple(meta["mean"]), tuple(meta["std"])
    return config


def _read_variables(location: Location) -> dict:
    """``params`` and ``batch_stats`` of the ``state`` item as flat dicts (keyed by
    :func:`_variable_path`) of arrays on this process's first device; the rest of
    the item (optimizer state, step) is not read."""
    try:
        return _read_variable_arrays(location)
    except Exception as error:  # any read failure of a written step is damage
        raise _damaged(location, error) from error


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
    for part in VARIABLE_PARTS:
        ours = traverse_util.flatten_dict(nnx.to_pure_dict(variables[part]))
        for key, value in ours.items():
            found = saved[part].get(_variable_path(key))
            if found is not None and found.shape == value.shape:
                ours[key] = found
            elif strict:
                name = f"{part}/{'/'.join(map(str, key))}"
                there = "is not in it" if found is None else f"has shape {found.shape} there"
                raise CheckpointError(
                    f"{location.directory} step {location.step} does not hold this network: "
                    f"{name} {there}, the model's has shape {value.shape}"
                )
        nnx.replace_by_pure_dict(variables[part], traverse_util.unflatten_dict(ours))
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
    mean, std = (tuple(map(float, weights[key])) for key in NORMALIZATION_KEYS)
    return mean, std


def load_backbone(model: nnx.Module, path: str) -> None:
    """Loads converted VGG16 weights into ``model.vgg``: an ``.npz`` (from
    ``convert_torch_vgg.py``) whose keys are the trunk's variable paths, e.g.
    ``vgg/conv1_1/conv/kernel`` (HWIO), besides :data:`NORMALIZATION_KEYS`."""
    weights = _backbone_file(path)
    for key in NORMALIZATION_KEYS:
        weights.pop(key, None)
    trunk = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model.vgg)), sep="/")
    for key, value in weights.items():
        name = key.removeprefix("vgg/")
        if name not in trunk:
            raise CheckpointError(f"{path}: {key} is not a VGG16 trunk variable")
        if trunk[name].shape != value.shape:
            raise CheckpointError(
                f"{path}: {key} has shape {value.shape}, the model {trunk[name].shape}"
            )
        trunk[name] = jnp.asarray(value, trunk[name].dtype)
    state = nnx.state(model.vgg)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(trunk, sep="/"))
    nnx.update(model.vgg, state)


def _check_shapes(location: Location, state: TrainState) -> None:
    """Raises :class:`CheckpointError` if the saved train state's arrays differ in
    number or shape from ``state``'s, :class:`DamagedCheckpointError` if its metadata
    cannot be read."""
    try:
        tree = ocp.PyTreeCheckpointHandler().metadata(location.item(STATE)).tree
    except Exception as error:
        raise _damaged(location, error) from error
    is_leaf = lambda x: hasattr(x, "shape")  # noqa: E731
    saved = sorted(tuple(m.shape) for m in jax.tree.leaves(tree, is_leaf=is_leaf))
    ours = sorted(tuple(x.shape) for x in jax.tree.leaves(state))
    if saved != ours:
        raise CheckpointError(
            f"{location.directory} step {location.step} holds a train state of other shapes "
            f"({len(saved)} arrays, this configuration has {len(ours)}): another optimizer "
            "or network. Give another --workdir, with --config.init.checkpoint to start from "
            "its weights"
        )


def _check_iterator_states(location: Location) -> None:
    """:class:`DamagedCheckpointError` if a data-iterator state of the step is not
    a JSON object (checked before the arrays are read, which it would cut short)."""
    for path in sorted(location.item(DATA).glob("*.json")):
        try:
            if not isinstance(json.loads(path.read_text()), dict):
                raise ValueError("not a JSON object")
        except ValueError as error:
            raise _damaged(location, ValueError(f"{path.name}: {error}")) from error


class TrainingCheckpoints:
    """The checkpoints of a training run, ``<workdir>/checkpoints``: the newest
    ``keep`` steps, each with the train state, every process's data-iterator
    state and the meta. Saving is asynchronous; :meth:`close` waits for it."""

    def __init__(self, workdir: str, keep: int):
        self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def steps(self) -> list[int]:
        """The finished steps, newest first."""
        return sorted(self._manager.all_steps(), reverse=True)

    def location(self, step: int) -> Location:
        return Location(self.directory, step)

    def read_meta(self, step: int) -> dict:
        return read_meta(self.location(step))

    def restore(self, step: int, state: TrainState, iterator) -> TrainState:
        """The train state saved at ``step`` (``state`` gives its structure) and,
        in place, the Grain ``iterator``'s position. :class:`DamagedCheckpointError` if
        the step cannot be read, :class:`CheckpointError` if it holds a train state
        of other shapes (another optimizer or network)."""
        import grain  # here: inference reads checkpoints without loading Grain

        location = self.location(step)
        _check_shapes(location, state)
        _check_iterator_states(location)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        items = {
            STATE: ocp.args.StandardRestore(abstract),
            DATA: grain.checkpoint.CheckpointRestore(iterator),
        }
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**items))[STATE]
        except Exception as error:  # the shapes fit: a failed read is damage
            raise _damaged(location, error) from error

    def set_aside(self, step: int) -> str:
        """Renames a damaged step's folder to ``<step>.damaged`` (kept for a look,
        no longer a step) so that the run can go on from an older one."""
        folder = os.path.join(self.directory, str(step))
        aside = folder + ".damaged"
        for count in range(1, 1000):
            if not os.path.exists(aside):
                break
            aside = f"{folder}.damaged{count}"
        if jax.process_index() == 0:
            os.rename(folder, aside)
        self._manager.reload()
        return aside

    def save(self, step: int, state: TrainState, iterator, meta: dict) -> None:
        import grain  # here: inference reads checkpoints without loading Grain

        items = {
            STATE: ocp.args.StandardSave(state),
            DATA: grain.checkpoint.CheckpointSave(iterator),
            META: ocp.args.JsonSave(meta),
        }
        self._manager.save(step, args=ocp.args.Composite(**items))

    def close(self) -> None:
        """Waits for a checkpoint being written, then releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
