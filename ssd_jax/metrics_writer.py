"""Training metrics: JSON lines, TensorBoard event files (tensorboardX, no
TensorFlow) and a learning-curve PNG, all in the work directory."""

import contextlib
import json
import os

import numpy as np


class MetricsWriter:
    """Writes ``{step, name: value}`` records to ``<workdir>/metrics.jsonl`` and
    TensorBoard; only process 0 should create one.

    ``start_step`` is the step the run goes on from (0 for a fresh run): records
    of later steps, written by a run that went further before it stopped, are
    dropped, so that after a resume each step is in the metrics once.
    """

    def __init__(self, workdir: str, start_step: int = 0):
        os.makedirs(workdir, exist_ok=True)
        self.workdir = workdir
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self._open(start_step)

    def _open(self, start_step: int) -> None:
        if os.path.exists(self.jsonl_path):
            kept = [r for r in read_metrics(self.jsonl_path) if r["step"] <= start_step]
            with open(self.jsonl_path, "w") as f:
                f.writelines(json.dumps(record) + "\n" for record in kept)
        self._jsonl = open(self.jsonl_path, "a")  # noqa: SIM115 (closed in close())
        # purge_step: TensorBoard hides the earlier event files' later steps
        tensorboard_dir = os.path.join(self.workdir, "tensorboard")
        # imported here: tensorboardX imports torch when it is installed (seconds),
        # which processes that write no metrics (all but process 0) need not
        from tensorboardX import SummaryWriter

        self._tensorboard = SummaryWriter(tensorboard_dir, purge_step=start_step + 1)

    def rewind(self, step: int) -> None:
        """Drops the records after ``step``: the run goes back to it (a rollback)."""
        self.close()
        self._open(step)

    def write(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        record = {"step": int(step), **{f"{prefix}/{k}": float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in record.items():
            if name != "step":
                self._tensorboard.add_scalar(name, value, int(step))

    def write_image(self, step: int, name: str, image: np.ndarray) -> None:
        """An RGB uint8 (H, W, 3) image in TensorBoard."""
        self._tensorboard.add_image(name, image, int(step), dataformats="HWC")

    def close(self) -> None:
        self._jsonl.close()
        self._tensorboard.close()


def read_metrics(jsonl_path: str) -> list[dict]:
    """All records of a metrics.jsonl, in order; a line that is not JSON (a write
    cut short when the process was killed) is skipped."""
    records = []
    with open(jsonl_path) as f:
        for line in f:
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
    return [r for r in records if isinstance(r, dict) and "step" in r]


def plot_learning_curve(jsonl_path: str, png_path: str) -> None:
    """Writes :func:`learning_curve_figure` of a metrics.jsonl (if it has records)."""
    records = read_metrics(jsonl_path)
    if records:
        learning_curve_figure(records).savefig(png_path, dpi=100)


def learning_curve_figure(records: list[dict]):
    """Total, localization and confidence training loss against the step (and the
    eval loss when present), as pytorch_SSD's learning-curve figure, and the eval
    mAP (or COCO AP) on a second axis. Returns a matplotlib ``Figure``."""
    # A bare Figure: no pyplot, so the caller's matplotlib backend (e.g. a
    # notebook's inline one) is left alone.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5))
    axes = figure.subplots()
    for name, style in (
        ("train/loss", "-"),
        ("train/loc", "--"),
        ("train/conf", ":"),
        ("eval/loss", "o-"),
    ):
        points = [(r["step"], r[name]) for r in records if name in r]
        if points:
            steps, values = np.array(points).T
            axes.plot(steps, values, style, label=name)
    axes.set_xlabel("iteration")
    axes.set_ylabel("loss")
    axes.grid(True, alpha=0.3)
    lines, labels = axes.get_legend_handles_labels()
    for name in ("eval/map", "eval/AP"):  # the metric trained for, on its own axis
        points = [(r["step"], r[name]) for r in records if name in r]
        if points:
            metric_axes = axes.twinx()
            steps, values = np.array(points).T
            metric_axes.plot(steps, values, "s-", color="tab:purple", label=name)
            metric_axes.set_ylabel("mAP (VOC07)" if name == "eval/map" else "AP (COCO)")
            metric_axes.set_ylim(0, 1)
            more_lines, more_labels = metric_axes.get_legend_handles_labels()
            lines, labels = lines + more_lines, labels + more_labels
    axes.legend(lines, labels, loc="center right")
    figure.tight_layout()
    return figure
