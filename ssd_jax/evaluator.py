"""A model's pass over an evaluation split: the eval loss and the VOC or COCO
metric from the same forward passes. Training runs it every ``eval_every``
steps; ``python -m ssd_jax.evaluate`` runs it on a checkpoint.
"""

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


class Evaluator:
    """Runs a jitted :func:`ssd_jax.steps.make_eval_step` over every image of
    ``source`` (or its first ``max_batches`` batches), each process on its shard,
    and scores the gathered detections with ``metric`` ("voc" or "coco").

    ``evaluator(variables)`` returns the mean ``loss``, ``loc``, ``conf`` and
    ``num_pos`` over the batches, and the metric (:func:`scoring.score`); after it,
    ``records`` holds the pass's ground truth and detections and ``examples``
    (one process) its best and worst images.
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

    def _batches(self) -> Iterator[dict]:
        for index, batch in enumerate(pipeline.make_iterator(self._dataset)):
            if self.max_batches and index >= self.max_batches:
                return
            yield batch

    def __call__(self, variables: steps.Variables, show_progress: bool = False) -> dict[str, float]:
        losses, ground_truth, detections, unreadable = [], [], [], 0
        self.examples = Examples() if jax.process_count() == 1 else None
        progress = None
        if show_progress and jax.process_index() == 0:
            progress = Progress(
                self.num_images, "evaluate", "image", line_every=self.num_images // 10
            )
        for batch in self._batches():
            batch_losses, found = self._eval_step(
                variables, parallel.global_batch(batch, self._mesh, STEP_KEYS)
            )
            losses.append(batch_losses)
            local = {key: np.asarray(batch[key]) for key in GROUND_TRUTH_KEYS}
            gathered = multihost_utils.process_allgather({"found": found, "gt": local}, tiled=True)
            gts, dets = scoring.batch_records(gathered["gt"], gathered["found"])
            if self.examples:  # one process: its batch rows are the records' images
                real = ~np.asarray(batch["is_padding"])
                self.examples.add(np.asarray(batch["image"])[real], gts, dets)
            unreadable += int(gathered["gt"]["unreadable"].sum())
            ground_truth += gts
            detections += dets
            if progress:  # the real images of the batch, read or not
                real = len(gts) + int(gathered["gt"]["unreadable"].sum())
                progress.update(min(real, progress.total - progress.done))
        if progress:
            progress.close()
        self.records = (ground_truth, detections)  # of the last pass, for figures
        losses = jax.device_get(losses)
        result = {key: float(np.mean([loss[key] for loss in losses])) for key in losses[0]}
        if unreadable:  # left out of the metric (scored as padding): say so
            result["unreadable_images"] = unreadable
        return result | scoring.score(
            ground_truth,
            detections,
            self.source.class_names,
            self.metric,
            category_ids=self.source.category_ids,
            coco_annotation_file=self.source.annotation_file,
        )


def make_evaluator(
    config: ml_collections.ConfigDict, graphdef, mesh: jax.sharding.Mesh, metric: str | None = None
) -> Evaluator:
    """The :class:`Evaluator` of ``config.data.eval`` for the network ``graphdef``
    (settings from ``config``; ``metric`` defaults to ``config.eval_metric``)."""
    class_names = tuple(config.data.class_names) if config.data.class_names else None
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
    curves_png: str | None = None,
    examples_jpg: str | None = None,
) -> dict[str, float]:
    """Eval loss and metric of the checkpoint at ``path`` (see
    :func:`ssd_jax.checkpoint.locate`) over a whole eval split; its per-class
    precision-recall curves in ``curves_png`` and its best and worst images in
    ``examples_jpg`` when given.

    The split, batch size and metric come from the checkpoint's own configuration,
    or from ``config`` when given (the network's description always comes from the
    checkpoint); ``metric`` ("voc" or "coco") overrides the configuration's.
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
    result = evaluator(jax.device_put(variables, parallel.replicated(mesh)), show_progress=True)
    if curves_png and jax.process_index() == 0:
        plot_precision_recall(*evaluator.records, evaluator.source.class_names, curves_png)
    if examples_jpg and evaluator.examples:
        figure = evaluator.examples.figure(evaluator.source.class_names)
        cv2.imwrite(examples_jpg, cv2.cvtColor(figure, cv2.COLOR_RGB2BGR))
    return result


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
