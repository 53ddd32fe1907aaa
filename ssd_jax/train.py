"""Trains SSD.

    python -m ssd_jax.train --config configs/shapes.py --workdir runs/shapes
    python -m ssd_jax.train --config configs/ssd300_voc.py --workdir runs/voc --config.batch_size=16

Any configuration key can be overridden as ``--config.key=value`` (unknown keys
fail). Rerunning the same command on the same workdir resumes from its last
checkpoint. What lands in the workdir: see ``train_and_evaluate``.
"""

import contextlib
import dataclasses
import logging
import math
import os
import sys
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import app, flags

from ssd_jax import build, checkpoint, config_schema, parallel, preemption, steps, supervisor
from ssd_jax.checkpoint.lock import WorkdirLock, lock_run_directory
from ssd_jax.data import pipeline
from ssd_jax.divergence import NonFiniteLossError, Rollbacks, all_finite
from ssd_jax.evaluation import scoring
from ssd_jax.evaluator import Evaluator, make_evaluator
from ssd_jax.log_window import LogWindow
from ssd_jax.metrics_writer import MetricsWriter, plot_learning_curve
from ssd_jax.progress import Progress

logger = logging.getLogger("ssd_jax.train")  # also when run as __main__

# what the train step reads (image_hw: decoded batches for device augmentation)
TRAIN_KEYS = ("image", "image_hw", "boxes", "labels", "mask")


@dataclasses.dataclass
class Run:
    """What a training run works with, built by :func:`setup`."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    state: steps.TrainState
    train_step: Callable[[steps.TrainState, dict], tuple[steps.TrainState, dict]]
    iterator: object  # Grain iterator of training batches (state saved with checkpoints)
    checkpoints: checkpoint.TrainingCheckpoints
    meta: dict
    train_ids: list[str]  # the training examples' ids in order (saved with checkpoints)
    evaluator: Evaluator | None
    writer: MetricsWriter | None  # process 0 only
    unreadable: pipeline.UnreadableImages
    rollbacks: Rollbacks
    stop: preemption.StopRequests
    lock: WorkdirLock | None  # process 0's

    def close(self) -> None:
        """Completes a checkpoint being written, stops Grain's worker processes,
        closes the metrics files and frees the run directory (each step runs even
        if an earlier one fails)."""
        with contextlib.ExitStack() as stack:
            if self.lock:
                stack.callback(self.lock.release)
            stack.callback(self.stop.close)
            if self.writer:
                stack.callback(self.writer.close)
            if hasattr(self.iterator, "close"):
                stack.callback(self.iterator.close)
            stack.callback(self.checkpoints.close)  # callbacks run last-in, first-out


def resolve_config(
    config: ml_collections.ConfigDict, class_names: tuple[str, ...]
) -> ml_collections.ConfigDict:
    """The run's configuration, settled before anything is built: a copy of
    ``config`` with the training data's ``class_names`` and, when
    ``init.backbone`` records one, the input normalization its weights expect."""
    config = ml_collections.ConfigDict(config.to_dict())  # the caller's stays as it is
    config.data.class_names = tuple(class_names)
    if config.init.backbone and not config.init.checkpoint:
        normalization = checkpoint.backbone_normalization(config.init.backbone)
        if normalization is not None:  # the backbone's input convention wins
            config.data.mean, config.data.std = normalization
            logger.info(f"input normalization of {config.init.backbone}: mean "
                        f"{normalization[0]} std {normalization[1]}")  # fmt: skip
    return config


def _initial_state(config, checkpoints, state: steps.TrainState, iterator, meta, train_ids):
    """The newest intact checkpoint of this run (if it is a run of this
    configuration and training data), else ``init.checkpoint``'s weights (heads of
    another class count stay fresh), else ``state`` as it is."""
    resumed = checkpoints.resume(
        state, iterator, meta, train_ids, on_train_change=config.data.on_train_change
    )
    if resumed is not None:
        return resumed
    if config.init.checkpoint:
        variables = {part: state[part] for part in checkpoint.VARIABLE_PARTS}
        location = checkpoint.locate(config.init.checkpoint)
        sharding = jax.tree.map(lambda x: x.sharding, variables)
        restored = checkpoint.restore_variables(location, variables, strict=False)
        # read whole on every process: host copies are placed without cross-host transfers
        state = {**state, **jax.device_put(jax.device_get(restored), sharding)}
    return state


def _no_compilation_cache_on_cpu_jobs() -> None:
    """A multi-process CPU job compiles its programs instead of loading them from
    JAX's persistent compilation cache: on jax 0.12, processes that load the train
    step from it hang in its first gloo collective (2 of 3 two-process jobs on
    the development machine; none without the cache)."""
    if jax.process_count() == 1 or jax.default_backend() != "cpu":
        return
    if jax.config.jax_enable_compilation_cache and jax.config.jax_compilation_cache_dir:
        logger.info("the persistent compilation cache is off for this multi-process CPU job")
    jax.config.update("jax_enable_compilation_cache", False)


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
    """Builds the run of ``config`` in ``workdir``: data, model, state (resumed,
    fine-tuned or fresh), the jitted train step, checkpoints, evaluator, metrics.
    The run holds ``workdir`` (:class:`WorkdirInUseError` if another live run does)
    until :meth:`Run.close`."""
    config_schema.validate(config)
    workdir = os.path.abspath(workdir)
    if config.distributed and not jax.distributed.is_initialized():
        # finds the cluster (SLURM, TPU pod, ...) by itself
        jax.distributed.initialize(heartbeat_timeout_seconds=math.ceil(config.heartbeat_timeout_s))
    _no_compilation_cache_on_cpu_jobs()
    if config.batch_size % jax.device_count():
        raise config_schema.ConfigError(
            f"batch_size = {config.batch_size}: must be a multiple of the {jax.device_count()} "
            "devices"
        )
    mesh = parallel.make_data_mesh()
    lock = lock_run_directory(workdir)
    with contextlib.ExitStack() as opened:  # released here if the setup fails past this
        if lock:  # a failed setup leaves no run directory it created
            opened.callback(lock.release, tidy=True)
        return _setup_locked(config, workdir, mesh, lock, opened)


def _setup_locked(config, workdir: str, mesh, lock, opened: contextlib.ExitStack) -> Run:
    """The rest of :func:`setup`, once the run directory is this run's; what it
    opens is closed through ``opened`` if it fails."""
    class_names = build.class_names(config.data)
    train_source = build.source(config.data.train, class_names)
    if jax.process_index() == 0:  # every process reads the same annotations: one report
        logger.info(train_source.skipped.report("train data"))
    config = resolve_config(config, train_source.class_names)

    model = build.model(config.model, len(config.data.class_names), config.seed)
    if config.init.backbone and not config.init.checkpoint:
        checkpoint.load_backbone(model, config.init.backbone)
    optimizer, schedule = build.optimizer(config)
    graphdef, variables = steps.split_model(model)
    settings, augment = build.step_settings(config), build.device_augmentation(config)
    train_step = steps.make_train_step(graphdef, optimizer, schedule, settings, augment)
    evaluator = make_evaluator(config, graphdef, mesh) if config.eval_every else None
    iterator = pipeline.make_iterator(
        build.train_dataset(config, train_source, jax.process_index(), jax.process_count()),
        num_workers=config.data.num_workers,
    )
    if hasattr(iterator, "close"):
        opened.callback(iterator.close)
    checkpoints = checkpoint.TrainingCheckpoints(workdir, config.keep_checkpoints)
    opened.callback(checkpoints.close)
    meta = checkpoint.meta_for(config, config.data.class_names, workdir)
    train_ids = train_source.example_ids()
    meta["train_data"] = checkpoint.train_data_fingerprint(train_ids)
    # Placed before anything is restored: a checkpoint is read straight into the
    # mesh's sharding (placing restored arrays afterwards would be a cross-host
    # transfer in a multi-process run, which the CPU and GPU backends refuse).
    state = jax.device_put(steps.init_train_state(variables, optimizer), parallel.replicated(mesh))
    state = _initial_state(config, checkpoints, state, iterator, meta, train_ids)
    start_step = int(jax.device_get(state["step"]))
    stop = preemption.StopRequests()
    opened.callback(stop.close)
    run = Run(
        config=config,
        mesh=mesh,
        state=state,
        train_step=jax.jit(train_step, donate_argnums=0),
        iterator=iterator,
        checkpoints=checkpoints,
        meta=meta,
        train_ids=train_ids,
        evaluator=evaluator,
        writer=MetricsWriter(workdir, start_step) if jax.process_index() == 0 else None,
        unreadable=pipeline.UnreadableImages(train_source, config.data.max_unreadable_images),
        rollbacks=Rollbacks(config, meta),
        stop=stop,
        lock=lock,
    )
    opened.pop_all()  # the run owns them now: Run.close releases them
    return run


def save_finite(run: Run, step: int, window: LogWindow, last_checkpoint: int | None) -> None:
    """Saves the run at ``step`` unless a step since the last check was not finite
    or the variables are not: a checkpoint never holds a diverged state."""
    window.check_finite(last_checkpoint)
    variables = {part: run.state[part] for part in checkpoint.VARIABLE_PARTS}
    if not all_finite(variables):
        raise NonFiniteLossError(
            f"the parameters are not finite after step {step}", step, last_checkpoint
        )
    run.checkpoints.save(step, run.state, run.iterator, run.meta, run.train_ids)


def _progress(start_step: int, num_steps: int, log_every: int) -> Progress:
    """The training progress: a bar on a terminal, a line per log window elsewhere."""
    return Progress(num_steps, "train", "step", initial=start_step, line_every=log_every,
                    stream=sys.stdout)  # fmt: skip


def _values(record: dict) -> str:
    """The progress values of a log window's summary."""
    unreadable = record["unreadable_images"]
    return (
        f"loss {record['loss']:.3f} (loc {record['loc']:.3f} conf {record['conf']:.3f}) "
        f"lr {record['learning_rate']:.2e} {record['images_per_s']:.1f} img/s"
        + (f", {unreadable} unreadable images" if unreadable else "")
    )


def _evaluate(run: Run, step: int, progress: Progress) -> None:
    variables = {part: run.state[part] for part in checkpoint.VARIABLE_PARTS}
    evaluation = run.evaluator(variables)
    result = evaluation.metrics
    if run.writer:
        run.writer.write(step, result, prefix="eval")
        if evaluation.examples:
            figure = evaluation.examples.figure(evaluation.class_names)
            run.writer.write_image(step, "eval/best_and_worst", figure)
        name, value = scoring.headline(result, run.evaluator.metric)
        evaluated, total = run.evaluator.num_images, len(run.evaluator.source)
        subset = f" ({evaluated} of {total} images)" if evaluated < total else ""
        unreadable = result.get("unreadable_images", 0)
        note = f" ({unreadable} unreadable images left out)" if unreadable else ""
        progress.write(f"eval at step {step}{subset}: loss {result['loss']:.3f} {name} "
                       f"{value:.4f}{note}")  # fmt: skip


def train(run: Run) -> steps.TrainState:
    """The training loop, from the run's current step to ``num_steps``: a log line
    every ``log_every`` steps, a checkpoint every ``checkpoint_every``, an
    evaluation every ``eval_every`` (and all three at the last step). A non-finite
    state stops it, or rolls it back (:mod:`ssd_jax.divergence`). A stop request
    (SIGTERM, :mod:`ssd_jax.preemption`) ends it after the current step, which is
    logged and saved (every process stops after the same step)."""
    config = run.config
    step = int(jax.device_get(run.state["step"]))
    if step >= config.num_steps:
        logger.info(f"{run.checkpoints.directory} is at step {step} of {config.num_steps}: "
                    "nothing to train (raise num_steps to go on)")  # fmt: skip
    last_checkpoint = run.checkpoints.latest_step()
    window, progress = LogWindow(), _progress(step, config.num_steps, config.log_every)
    while step < config.num_steps:
        step += 1
        batch = next(run.iterator)
        run.unreadable.add(batch)
        run.state, metrics = run.train_step(
            run.state,
            parallel.global_batch(batch, run.mesh, [k for k in TRAIN_KEYS if k in batch]),
            np.float32(run.rollbacks.learning_rate_scale),
        )
        window.add(step, metrics, batch)
        stopping = run.stop.reached(step)
        try:
            last_checkpoint = _log_save_evaluate(
                run, step, window, last_checkpoint, progress, stopping
            )
        except NonFiniteLossError as error:
            step = _roll_back(run, error)
            progress.close()
            window, progress = LogWindow(), _progress(step, config.num_steps, config.log_every)
        if stopping and step < config.num_steps:
            progress.close()
            logger.info(f"stopped after step {step} on request (SIGTERM) with checkpoint step "
                        f"{last_checkpoint}: rerun the same command to go on")  # fmt: skip
            return run.state
    progress.close()
    if run.unreadable.indices:
        count, names = len(run.unreadable.indices), run.unreadable.names()
        logger.warning(f"skipped {count} unreadable training images (the next readable image "
                       f"took their place): {names}")  # fmt: skip
    return run.state


def _log_save_evaluate(
    run: Run,
    step: int,
    window: LogWindow,
    last_checkpoint: int | None,
    progress: Progress,
    stopping: bool = False,
) -> int | None:
    """What is due after ``step`` (when ``stopping``: a log line and a checkpoint,
    no evaluation); returns the newest checkpoint's step."""
    config, last = run.config, step == run.config.num_steps
    if step % config.log_every == 0 or last or stopping:
        summary = window.summary(config.batch_size, last_checkpoint)
        run.checkpoints.check()  # a write that failed in the background stops the run
        if run.writer:
            run.writer.write(step, summary)
            progress.update(step - progress.done, _values(summary))
    if step % config.checkpoint_every == 0 or last or stopping:
        save_finite(run, step, window, last_checkpoint)
        last_checkpoint = step
    if stopping and not last:
        return last_checkpoint
    if run.evaluator and (step % config.eval_every == 0 or last):
        window.check_finite(last_checkpoint)
        _evaluate(run, step, progress)
    return last_checkpoint


def _roll_back(run: Run, error: NonFiniteLossError) -> int:
    """Restores the last good checkpoint, skips the batches up to the bad step and
    lowers the learning rate (re-raises ``error`` when rollback is off or used up);
    returns the step restored."""
    restored = run.rollbacks.record(error)
    run.state = run.checkpoints.restore(restored, run.state, run.iterator)  # in its sharding
    for _ in range(error.step - restored):  # the batches that led to the bad state
        run.unreadable.add(next(run.iterator))
    if run.writer:
        run.writer.rewind(restored)
    events, limit = len(run.rollbacks.events), run.rollbacks.max_times
    logger.warning(f"{error.problem}; rolled back to step {restored} ({events} of {limit} "
                   f"rollbacks), skipping the batches of steps {restored + 1}-{error.step}, "
                   f"learning rate x{run.rollbacks.learning_rate_scale:g} from now on")  # fmt: skip
    return restored


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> steps.TrainState:
    """Trains per ``config``, writing to ``workdir``:

    - ``checkpoints/<step>/`` (:mod:`ssd_jax.checkpoint`): parameters, BN
      statistics, optimizer state, step, data-iterator state and ``meta`` (config,
      class names, normalization);
    - ``metrics.jsonl`` and ``tensorboard/`` (train loss / loc / conf, learning rate,
      images/s every ``log_every`` steps; eval loss and metric every ``eval_every``);
    - ``learning_curve.png`` at the end.

    Resumes from the newest checkpoint in ``workdir`` if there is one; otherwise
    starts from ``init.checkpoint``, else ``init.backbone``, else random weights.
    Returns the final train state (replicated arrays).
    """
    run = setup(config, workdir)
    try:  # also on errors and SIGTERM (see main): Grain workers must not outlive us
        state = train(run)
    finally:
        run.close()
    if run.writer:
        plot_learning_curve(run.writer.jsonl_path, os.path.join(workdir, "learning_curve.png"))
    return state


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    if not config.distributed:
        preemption.exit_on_sigterm()
        train_and_evaluate(config, workdir)
    elif not supervisor.supervised():  # the training runs in a child: see ssd_jax.supervisor
        sys.exit(supervisor.run(sys.argv, workdir, config.heartbeat_timeout_s))
    else:
        with supervisor.leave_on_error(config.heartbeat_timeout_s):
            train_and_evaluate(config, workdir)


if __name__ == "__main__":
    from ml_collections import config_flags

    from ssd_jax import cli

    config_flags.DEFINE_config_file(
        "config", None, "Training configuration file.", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go (resumed if present).")
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run(main)
