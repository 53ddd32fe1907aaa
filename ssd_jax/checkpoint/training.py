"""The checkpoints of a training run: saving (a failed write stops the run and
keeps the older steps), and resuming from the newest intact step of the same
configuration and training data (damaged steps set aside, another configuration
or changed data refused with the differences)."""

import glob
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence

import jax
import orbax.checkpoint as ocp

from ssd_jax.checkpoint.layout import (
    CHECKPOINTS,
    DATA,
    META,
    STATE,
    TRAIN_IDS,
    CheckpointError,
    DamagedCheckpointError,
    Location,
    damaged,
    finished_steps,
    read_meta,
    resume_differences,
    train_data_change,
)
from ssd_jax.steps import TrainState

logger = logging.getLogger(__name__)

# meta entries a resumed run continues (each a list of events)
CARRIED_META = ("rollbacks", "train_data_changes")


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (a full disk, a failing file system);
    its unfinished files are removed and the older checkpoints kept."""


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


def _cause(error: Exception) -> str:
    """Why a write failed, shortly: the system's error when there is one (Python's
    or TensorStore's, which ends its long message with it), else the first line."""
    code = getattr(error, "errno", None)
    found = re.search(r"os_error_code='(\d+)'", str(error))
    if code is None and found:
        code = int(found.group(1))
    if code:
        return f"{os.strerror(code)}, errno {code}"
    return f"{type(error).__name__}: " + (str(error).strip().splitlines() or [""])[0][:300]


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
    state, the meta and the training examples' ids. Saving is asynchronous: a
    failed write surfaces as :class:`CheckpointWriteError` at the next
    :meth:`save`, :meth:`check` or :meth:`close` (which waits for it)."""

    def __init__(self, workdir: str, keep: int):
        self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
        # unfinished writes of an earlier run (killed mid-save) are deleted
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._writing: tuple[int, int] | None = None  # (step, bytes) being written
        self._failed = False  # a CheckpointWriteError was raised

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def steps(self) -> list[int]:
        """The finished steps, newest first."""
        return sorted(self._manager.all_steps(), reverse=True)

    def location(self, step: int) -> Location:
        return Location(self.directory, step)

    def read_meta(self, step: int) -> dict:
        return read_meta(self.location(step))

    def restore(self, step: int, state: TrainState, iterator=None) -> TrainState:
        """The train state saved at ``step``, read straight into the shapes, dtypes
        and shardings of ``state``, and, in place, the Grain ``iterator``'s position
        (None: not restored). :class:`DamagedCheckpointError` if the step cannot be
        read, :class:`CheckpointError` if it holds a train state of other shapes
        (another optimizer or network)."""
        import grain  # here: inference reads checkpoints without loading Grain

        self.wait()  # a rollback may restore the step being written
        location = self.location(step)
        _check_shapes(location, state)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        items = {STATE: ocp.args.StandardRestore(abstract)}
        if iterator is not None:
            _check_iterator_states(location)
            items[DATA] = grain.checkpoint.CheckpointRestore(iterator)
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

    def resume(
        self,
        state: TrainState,
        iterator,
        meta: dict,
        train_ids: Sequence[str],
        on_train_change: str = "refuse",
    ) -> TrainState | None:
        """The newest intact step's train state (``state`` gives its structure) and,
        in place, the iterator's position; None when there is no step yet. The
        run's ``meta`` takes over the step's :data:`CARRIED_META` entries.

        A step whose meta differs from the run's ``meta`` in what a resume must
        keep (:data:`~ssd_jax.checkpoint.layout.RESUME_KEYS`) is refused with the
        differences. So is one trained on other examples than ``train_ids`` (the
        training split's ids in order), unless ``on_train_change`` is
        ``"restart_epoch"``: then the train state is restored, the data iterator
        starts a new pass over the new list and the change is recorded in the
        meta. Damaged steps newer than the one resumed are set aside with a
        warning; when every step is damaged, :class:`DamagedCheckpointError`."""
        damaged_steps = []
        for step in self.steps():
            try:
                saved = self.read_meta(step)
                self._check_resumable(saved, meta)
                change = self._train_data_change(step, saved, meta, train_ids)
                if change and on_train_change != "restart_epoch":
                    raise self._changed_data_error(step, change)
                state = self.restore(step, state, None if change else iterator)
            except DamagedCheckpointError as error:
                damaged_steps.append((step, error))
                continue
            for bad_step, error in damaged_steps:
                aside = self.set_aside(bad_step)
                logger.warning(f"{error}\n  set aside as {aside}; going on from step {step}")
            for key in CARRIED_META:
                meta[key] = list(saved.get(key, []))
            if change:
                meta["train_data_changes"].append({"step": step, "change": change})
                logger.info(f"the training data changed ({change}): going on from step {step} "
                            "with a new pass over the new list (data.on_train_change)")  # fmt: skip
            logger.info(f"resumed from {self.directory} at step {step}")
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

    def _train_data_change(
        self, step: int, saved: dict, meta: dict, train_ids: Sequence[str]
    ) -> str | None:
        """How the training examples of ``step`` differ from ``train_ids``, in
        words; None when they are the same or the step recorded none (older runs)."""
        recorded = saved.get("train_data")
        if recorded is None or recorded == meta["train_data"]:
            return None
        location = self.location(step)
        try:
            saved_ids = ocp.JsonCheckpointHandler().restore(location.item(TRAIN_IDS))["ids"]
        except Exception as error:  # any read failure of a written step is damage
            raise damaged(location, error) from error
        return train_data_change(saved_ids, train_ids)

    def _changed_data_error(self, step: int, change: str) -> CheckpointError:
        workdir = os.path.dirname(self.directory)
        return CheckpointError(
            f"{workdir} step {step} was trained on another list of training images "
            f"(saved -> now: {change}): a resume would read other images at the data "
            "iterator's saved position. Put the data back as it was, or go on from step "
            f"{step} with a new pass over the new list: --config.data.on_train_change="
            "restart_epoch"
        )

    def save(
        self, step: int, state: TrainState, iterator, meta: dict, train_ids: Sequence[str]
    ) -> None:
        """Starts writing ``step`` (in the background). :class:`CheckpointWriteError`
        if it or the write before it fails."""
        import grain  # here: inference reads checkpoints without loading Grain

        self.wait()
        items = {
            STATE: ocp.args.StandardSave(state),
            DATA: grain.checkpoint.CheckpointSave(iterator),
            META: ocp.args.JsonSave(meta),
            TRAIN_IDS: ocp.args.JsonSave({"ids": list(train_ids)}),
        }
        size = self._step_bytes() or sum(x.nbytes for x in jax.tree.leaves(state))
        try:
            self._manager.save(step, args=ocp.args.Composite(**items))
        except jax.errors.JaxRuntimeError:
            raise  # a collective between the processes failed: not the writing
        except Exception as error:
            raise self._write_error(step, size, error) from error
        self._writing = (step, size)

    def _step_bytes(self) -> int:
        """The bytes on disk of the newest finished step (0: none yet)."""
        steps = finished_steps(self.directory)
        if not steps:
            return 0
        folders = os.walk(os.path.join(self.directory, str(steps[-1])))
        return sum(os.path.getsize(os.path.join(path, name)) for path, _, names in folders
                   for name in names)  # fmt: skip

    def check(self) -> None:
        """:class:`CheckpointWriteError` if a write that ended in the background
        failed; returns at once while one is still going on."""
        if self._writing is not None and not self._manager.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Waits for the step being written; :class:`CheckpointWriteError` if it failed."""
        if self._writing is None:
            return
        (step, size), self._writing = self._writing, None
        try:
            self._manager.wait_until_finished()
            self._manager.check_for_errors()
        except jax.errors.JaxRuntimeError:
            raise  # a collective between the processes failed: not the writing
        except Exception as error:
            raise self._write_error(step, size, error) from error
        # process 0 finalizes a step; a failure that Orbax only logged leaves it unfinished
        if jax.process_index() == 0 and step not in finished_steps(self.directory):
            raise self._write_error(step, size, RuntimeError("the step was not finalized"))

    def _write_error(self, step: int, size: int, error: Exception) -> CheckpointWriteError:
        """The error for a failed write of ``step`` (``size``: the bytes a step
        takes), after removing what was written of it."""
        self._failed = True
        if jax.process_index() == 0:  # so that it takes no space (resumes skip it anyway)
            for partial in glob.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*")):
                shutil.rmtree(partial, ignore_errors=True)
        try:
            free = f", {_megabytes(shutil.disk_usage(self.directory).free)} free there"
        except OSError:
            free = ""
        steps = finished_steps(self.directory)
        last = f"step {steps[-1]} (older ones kept)" if steps else "none yet"
        return CheckpointWriteError(
            f"cannot write checkpoint step {step} to {self.directory} "
            f"({_cause(error)}); a checkpoint of this run takes about "
            f"{_megabytes(size)}{free}. Nothing of step {step} is kept; the last complete "
            f"checkpoint is {last}. Free space, then rerun the same command to resume"
        )

    def close(self) -> None:
        """Waits for a checkpoint being written (:class:`CheckpointWriteError` if it
        fails), then releases the manager."""
        try:
            self.wait()
        finally:
            try:
                self._manager.close()
            except Exception as error:
                if not self._failed:  # else reported already: the same failure again
                    raise self._write_error(self.latest_step() or 0, 0, error) from error
                logger.info("closing the checkpoint manager after a failed write: %s", error)
