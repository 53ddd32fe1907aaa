"""Figures of an evaluation: per-class precision-recall curves."""

from collections.abc import Sequence

import numpy as np

from ssd_jax.evaluation import voc


def plot_precision_recall(
    ground_truth: Sequence[voc.ImageGroundTruth],
    detections: Sequence[voc.ImageDetections],
    class_names: Sequence[str],
    png_path: str,
) -> None:
    """Writes ``png_path``: each class's precision against recall (VOC matching at
    IoU 0.5, difficult objects ignored), its VOC07 11-point AP in the legend."""
    # A bare Figure: no pyplot, so the caller's matplotlib backend is left alone.
    from matplotlib.figure import Figure

    result = voc.mean_average_precision(ground_truth, detections, len(class_names))
    figure = Figure(figsize=(7, 5.5))
    axes = figure.subplots()
    for name, ap, (recall, precision) in zip(class_names, result.ap, result.curves, strict=True):
        if len(recall):
            axes.plot(recall, precision, label=f"{name} (AP {ap:.3f})")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
             title=f"precision-recall at IoU 0.5 (mAP {result.map:.3f})")  # fmt: skip
    axes.grid(True, alpha=0.3)
    columns = max(1, int(np.ceil(len(class_names) / 12)))
    axes.legend(loc="lower left", fontsize="small", ncol=columns)
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
