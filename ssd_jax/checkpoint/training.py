"""The checkpoints of a training run: saving, and resuming from the newest intact
step of the same configuration (damaged steps set aside, another configuration
refused with its differences)."""

import json
import os

import jax
import orbax.checkpoint as ocp

from ssd_jax.checkpoint.layout import (
    CHECKPOINTS,
    DATA,
    META,
    STATE,
    CheckpointError,
    DamagedCheckpointError,
    Location,
    damaged,
    read_meta,
    resume_differences,
)
from ssd_jax.steps import TrainState


def _check_shapes(location: Location, state: TrainState) -> None:
    """Raises :class:`CheckpointError` if the saved train state's arrays differ in
    number or shape from ``state``'s, :class:`DamagedCheckpointError` if its metadata
    cannot be read."""
    try:
        tree = ocp.PyTreeCheckpointHandler().metadata(location.item(STATE)).tree
    except Exception as error:
        raise damaged(location, error) from error
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
            raise damaged(location, ValueError(f"{path.name}: {error}")) from error


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

        self._manager.wait_until_finished()  # a rollback may restore the step being written
        location = self.location(step)
        _check_shapes(location, state)
        _check_iterator_states(location)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        items = {
            STATE: ocp.args.StandardRestore(abstract),
            DATA: grain.checkpoint.CheckpointRestore(iterator),
        }
        from ssd_jax.data.iterator_state import IteratorStateError

        try:
            return self._manager.restore(step, args=ocp.args.Composite(**items))[STATE]
        except IteratorStateError as error:  # intact, but in a format Grain changed
            raise CheckpointError(
                f"{location.item(DATA)}: {error}; resume with the Grain version that wrote it"
            ) from error
        except Exception as error:  # the shapes fit: a failed read is damage
            raise damaged(location, error) from error

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

    def resume(self, state: TrainState, iterator, meta: dict) -> TrainState | None:
        """The newest intact step's train state (``state`` gives its structure) and,
        in place, the iterator's position; None when there is no step yet.

        A step whose meta differs from the run's ``meta`` in what a resume must
        keep (:data:`~ssd_jax.checkpoint.layout.RESUME_KEYS`) is refused with the
        differences. Damaged steps newer than the one resumed are set aside with a
        warning; when every step is damaged, :class:`DamagedCheckpointError`."""
        damaged_steps = []
        for step in self.steps():
            try:
                self._check_resumable(self.read_meta(step), meta)
                state = self.restore(step, state, iterator)
            except DamagedCheckpointError as error:
                damaged_steps.append((step, error))
                continue
            for bad_step, error in damaged_steps:
                aside = self.set_aside(bad_step)
                print(f"warning: {error}\n  set aside as {aside}; going on from step {step}",
                      flush=True)  # fmt: skip
            print(f"resumed from {self.directory} at step {step}", flush=True)
            return state
        if damaged_steps:
            raise DamagedCheckpointError(
                "no intact checkpoint to resume from: "
                + "; ".join(str(error) for _, error in damaged_steps)
            )
        return None

    def _check_resumable(self, saved: dict, meta: dict) -> None:
        differences = resume_differences(saved, meta)
        if differences:
            workdir = os.path.dirname(self.directory)
            raise CheckpointError(
                f"{workdir} holds a run of another configuration (saved -> now):\n  "
                + "\n  ".join(differences)
                + "\nTo train the new configuration from its weights, give another "
                f"--workdir and --config.init.checkpoint={workdir}"
            )

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
