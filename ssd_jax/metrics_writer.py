"""Training metrics: JSON lines, TensorBoard event files (tensorboardX, no
TensorFlow) and a learning-curve PNG, all in the work directory."""

import json
import os

import numpy as np
from tensorboardX import SummaryWriter


class MetricsWriter:
    """Writes ``{step, name: value}`` records to ``<workdir>/metrics.jsonl`` and
    TensorBoard; only process 0 should create one."""

    def __init__(self, workdir: str):
        os.makedirs(workdir, exist_ok=True)
        self.workdir = workdir
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self._jsonl = open(self.jsonl_path, "a")  # noqa: SIM115 (closed in close())
        self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        record = {"step": int(step), **{f"{prefix}/{k}": float(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in record.items():
            if name != "step":
                self._tensorboard.add_scalar(name, value, int(step))

    def close(self) -> None:
        self._jsonl.close()
        self._tensorboard.close()


def read_metrics(jsonl_path: str) -> list[dict]:
    """All records of a metrics.jsonl, in order."""
    with open(jsonl_path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_learning_curve(jsonl_path: str, png_path: str) -> None:
    """Total, localization and confidence training loss against the step (and the
    eval loss when present), as pytorch_SSD's learning-curve figure."""
    # A bare Figure: no pyplot, so the caller's matplotlib backend (e.g. a
    # notebook's inline one) is left alone.
    from matplotlib.figure import Figure

    records = read_metrics(jsonl_path)
    if not records:
        return
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
    axes.legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
