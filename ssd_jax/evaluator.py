"""A model's pass over an evaluation split: the eval loss and the VOC or COCO
metric from the same forward passes. Training runs it every ``eval_every``
steps; ``python -m ssd_jax.evaluate`` runs it on a checkpoint.
"""

import dataclasses
from collections.abc import Callable, Iterator

import cv2
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from ssd_jax import build, checkpoint, config_schema, inference, parallel, steps
from ssd_jax.data import pipeline
from ssd_jax.data.example import DataError
from ssd_jax.evaluation import scoring
from ssd_jax.evaluation.examples import Examples
from ssd_jax.evaluation.plots import plot_precision_recall
from ssd_jax.progress import Progress

STEP_KEYS = ("image", "boxes", "labels", "mask")  # what the eval step reads
GROUND_TRUTH_KEYS = (
    "boxes", "labels", "mask", "difficult", "is_crowd", "is_padding", "height", "width",
    "image_id", "unreadable",
)  # fmt: skip


@dataclasses.dataclass
class Evaluation:
    """One pass over an eval split.

    ``metrics``: the mean ``loss``, ``loc``, ``conf`` and ``num_pos`` over the
    batches, ``unreadable_images`` if any, and the metric's numbers
    (:func:`scoring.score`). ``ground_truth`` and ``detections``: the per-image
    records it scored (:class:`~ssd_jax.evaluation.voc.ImageGroundTruth`,
    :class:`~ssd_jax.evaluation.voc.ImageDetections`, boxes normalized xyxy).
    ``class_names``: the labels' names; ``examples``: its best and worst images
    (one process only; else None).
    """

    metrics: dict[str, float]
    ground_truth: list
    detections: list
    class_names: tuple[str, ...]
    examples: Examples | None


class Evaluator:
    """Runs a jitted :func:`ssd_jax.steps.make_eval_step` over every image of
    ``source`` (or its first ``max_batches`` batches), each process on its shard,
    and scores the gathered detections with ``metric`` (a key of
    :data:`scoring.METRICS`): ``evaluator(variables)`` is an :class:`Evaluation`.
    """

    def __init__(
        self,
        eval_step: Callable,
        source,
        *,
        image_size: int,
        batch_size: int,
        max_boxes: int,
        metric: str,
        mesh: jax.sharding.Mesh,
        max_batches: int = 0,
    ):
        if len(source) == 0:
            raise DataError("the eval split holds no image: check config.data.eval")
        if metric not in scoring.METRICS:
            raise ValueError(f"unknown metric {metric!r}: one of {', '.join(scoring.METRICS)}")
        self.source = source
        self.metric = metric
        self.max_batches = max_batches
        self._eval_step = eval_step
        self._mesh = mesh
        self._batch_size = batch_size
        self._dataset = pipeline.eval_dataset(
            source,
            image_size=image_size,
            batch_size=batch_size // jax.process_count(),
            max_boxes=max_boxes,
            shard_index=jax.process_index(),
            shard_count=jax.process_count(),
        )

    @property
    def num_images(self) -> int:
        """How many images of the split a pass scores (all, or the first batches')."""
        if not self.max_batches:
            return len(self.source)
        return min(len(self.source), self.max_batches * self._batch_size)

    def batches(self) -> Iterator[dict]:
        """This process's host batches of a pass (``pipeline.eval_dataset``)."""
        for index, batch in enumerate(pipeline.make_iterator(self._dataset)):
            if self.max_batches and index >= self.max_batches:
                return
            yield batch

    def _progress(self, show: bool) -> Progress | None:
        if not show or jax.process_index() != 0:
            return None
        return Progress(self.num_images, "evaluate", "image", line_every=self.num_images // 10)

    def __call__(self, variables: steps.Variables, show_progress: bool = False) -> Evaluation:
        examples = Examples() if jax.process_count() == 1 else None
        losses, pass_ = [], Evaluation({}, [], [], tuple(self.source.class_names), examples)
        unreadable, progress = 0, self._progress(show_progress)
        for batch in self.batches():
            batch_losses, found = self._eval_step(
                variables, parallel.global_batch(batch, self._mesh, STEP_KEYS)
            )
            losses.append(batch_losses)
            gts, dets, missing = self._gather(batch, found, pass_.examples)
            pass_.ground_truth += gts
            pass_.detections += dets
            unreadable += missing
            if progress:  # the real images of the batch, read or not
                progress.update(min(len(gts) + missing, progress.total - progress.done))
        if progress:
            progress.close()
        losses = jax.device_get(losses)
        pass_.metrics = {key: float(np.mean([loss[key] for loss in losses])) for key in losses[0]}
        if unreadable:  # left out of the metric (scored as padding): say so
            pass_.metrics["unreadable_images"] = unreadable
        pass_.metrics |= scoring.score(
            pass_.ground_truth,
            pass_.detections,
            self.source.class_names,
            self.metric,
            category_ids=self.source.category_ids,
            coco_annotation_file=self.source.annotation_file,
        )
        return pass_

    def _gather(self, batch: dict, found, examples: Examples | None) -> tuple[list, list, int]:
        """The records of one batch from every process, and its unreadable images."""
        local = {key: np.asarray(batch[key]) for key in GROUND_TRUTH_KEYS}
        gathered = multihost_utils.process_allgather({"found": found, "gt": local}, tiled=True)
        gts, dets = scoring.batch_records(gathered["gt"], gathered["found"])
        if examples is not None:  # one process: its batch rows are the records' images
            real = ~np.asarray(batch["is_padding"])
            examples.add(np.asarray(batch["image"])[real], gts, dets)
        return gts, dets, int(gathered["gt"]["unreadable"].sum())


def make_evaluator(
    config: ml_collections.ConfigDict, graphdef, mesh: jax.sharding.Mesh, metric: str | None = None
) -> Evaluator:
    """The :class:`Evaluator` of ``config.data.eval`` for the network ``graphdef``
    (settings from ``config``; ``metric`` defaults to ``config.eval_metric``)."""
    class_names = build.class_names(config.data)
    eval_step = jax.jit(steps.make_eval_step(graphdef, build.step_settings(config)))
    return Evaluator(
        eval_step,
        build.source(config.data.eval, class_names),
        image_size=build.image_size(config.model),
        batch_size=config.batch_size,
        max_boxes=config.data.max_boxes,
        metric=metric or config.eval_metric,
        mesh=mesh,
        max_batches=config.eval_batches,
    )


def evaluate_checkpoint(
    path: str,
    step: int | None = None,
    config: ml_collections.ConfigDict | None = None,
    metric: str | None = None,
) -> Evaluation:
    """The :class:`Evaluation` of the checkpoint at ``path`` (see
    :func:`ssd_jax.checkpoint.locate`) over a whole eval split (its figures:
    :func:`write_figures`).

    The split, batch size and metric come from the checkpoint's own configuration,
    or from ``config`` when given (the network's description always comes from the
    checkpoint); ``metric`` (a key of :data:`scoring.METRICS`) overrides the
    configuration's.
    """
    location = checkpoint.locate(path, step)
    saved = checkpoint.saved_config(checkpoint.read_meta(location))
    if config is not None:
        config = config_schema.with_network_of(config, saved)
        config_schema.validate(config)
    else:
        config = saved
    with config.unlocked():
        config.eval_batches = 0  # the whole split
    graphdef, variables = inference.restore_network(location, config)
    mesh = parallel.make_data_mesh()
    evaluator = make_evaluator(config, graphdef, mesh, metric)
    return evaluator(jax.device_put(variables, parallel.replicated(mesh)), show_progress=True)


def write_figures(evaluation: Evaluation, curves_png: str, examples_jpg: str) -> None:
    """Each class's precision-recall curve in ``curves_png`` and the best and
    worst images (when the evaluation kept them) in ``examples_jpg``."""
    names = evaluation.class_names
    plot_precision_recall(evaluation.ground_truth, evaluation.detections, names, curves_png)
    if evaluation.examples:
        figure = evaluation.examples.figure(names)
        cv2.imwrite(examples_jpg, cv2.cvtColor(figure, cv2.COLOR_RGB2BGR))


LOSS_KEYS = ("loss", "loc", "conf", "num_pos")  # the eval step's, see steps.make_eval_step


def format_table(result: dict[str, float]) -> str:
    """Per-class AP, then the metric's summary numbers, then the eval loss (its
    parts and the mean positives per batch), one per line."""
    per_class = {k.removeprefix("ap/"): v for k, v in result.items() if k.startswith("ap/")}
    summary = {k: v for k, v in result.items() if not k.startswith("ap/") and k not in LOSS_KEYS}
    losses = {k: result[k] for k in LOSS_KEYS if k in result}
    width = max(len(name) for name in [*per_class, *summary, *losses, "class"])
    rule = "-" * (width + 8)

    def rows(values: dict[str, float]) -> list[str]:
        return [f"{name:<{width}}  {value:.4f}" for name, value in values.items()]

    return "\n".join([f"{'class':<{width}}  AP", *rows(per_class), rule, *rows(summary), rule,
                      *rows(losses)])  # fmt: skip
