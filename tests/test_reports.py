"""What long jobs show: progress off a terminal (CI logs, files) and on one, and
the learning curve's metric axis."""

import io

import numpy as np

from ssd_jax.evaluation import voc
from ssd_jax.evaluation.examples import Examples, image_errors
from ssd_jax.metrics_writer import learning_curve_figure
from ssd_jax.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_off_a_terminal_is_plain_lines_every_so_often():
    stream = io.StringIO()
    progress = Progress(25, "evaluate", "image", line_every=10, stream=stream)
    for _ in range(5):
        progress.update(5, "loss 1.5")
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert [line.split(" ETA ")[0] for line in lines] == [
        "evaluate 10/25 loss 1.5",
        "evaluate 20/25 loss 1.5",
        "evaluate 25/25 loss 1.5",  # the end, whatever line_every says
    ]
    assert lines[-1].endswith("ETA 0:00")


def test_progress_on_a_terminal_is_a_bar_with_the_values():
    stream = Terminal()
    progress = Progress(10, "train", "step", initial=4, stream=stream)
    progress.update(3, "loss 2.250 lr 1.00e-03")
    progress.write("eval at step 7: mAP 0.5")
    progress.close()
    text = stream.getvalue()
    assert "\r" in text and "7/10" in text and "loss 2.250 lr 1.00e-03" in text
    assert "eval at step 7: mAP 0.5\n" in text


def test_the_learning_curve_shows_the_eval_map_on_its_own_axis():
    records = [{"step": s, "train/loss": 10 / s, "train/loc": 4 / s, "train/conf": 6 / s}
               for s in (10, 20, 30, 40)]  # fmt: skip
    records += [{"step": 20, "eval/loss": 0.6, "eval/map": 0.25},
                {"step": 40, "eval/loss": 0.4, "eval/map": 0.75}]  # fmt: skip
    figure = learning_curve_figure(records)
    loss_axes, metric_axes = figure.axes
    (line,) = metric_axes.get_lines()
    np.testing.assert_array_equal(line.get_xdata(), [20, 40])
    np.testing.assert_array_equal(line.get_ydata(), [0.25, 0.75])
    assert metric_axes.get_ylim() == (0, 1) and len(loss_axes.get_lines()) == 4
    assert [text.get_text() for text in loss_axes.get_legend().get_texts()][-1] == "eval/map"


def test_image_errors_count_misses_and_false_detections_at_the_threshold():
    gt = voc.ImageGroundTruth(
        np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0.6, 0.3, 0.9]]),
        np.array([1, 2, 1]),
        np.array([False, False, True]),  # the third is difficult
    )
    det = voc.ImageDetections(
        np.array([[0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0.6, 0.3, 0.9],
                  [0.5, 0.5, 1, 1]]),
        np.array([0.9, 0.8, 0.7, 0.6, 0.4]),
        np.array([1, 1, 1, 1, 2]),
    )  # fmt: skip
    # 0.9 finds object 1; 0.8 finds it again (false); 0.7 has the wrong class
    # (false); 0.6 is on the difficult object (neither); 0.4 is below 0.5
    assert image_errors(gt, det, 0.5) == (1, 2)  # object 2 missed
    assert image_errors(gt, det, 0.3) == (0, 2)  # 0.4 now finds object 2


def test_examples_keep_the_best_and_the_worst_images():
    def record(found: bool):
        gt = voc.ImageGroundTruth(
            np.array([[0.1, 0.1, 0.6, 0.6]]), np.array([1]), np.zeros(1, bool)
        )
        box = [0.1, 0.1, 0.6, 0.6] if found else [0.7, 0.7, 0.9, 0.9]
        return gt, voc.ImageDetections(np.array([box]), np.array([0.9]), np.array([1]))

    examples = Examples(count=2)
    quality = [True, False, True, True, False, True, False]  # image k found its object?
    for start in range(0, 7, 3):  # batches of 3, 3, 1
        images = np.full((len(quality[start : start + 3]), 32, 32, 3), 0, np.uint8)
        images[:, 0, 0, 0] = np.arange(start, start + len(images))  # image k is marked k
        gts, dets = zip(*(record(found) for found in quality[start : start + 3]), strict=True)
        examples.add(images, gts, dets)
    rows = examples.best_and_worst()
    assert [int(image[0, 0, 0]) for _, image, _, _ in rows] == [0, 2, 4, 6]
    assert [caption for caption, *_ in rows][1:3] == [
        "best: found 1 of 1, 0 false",
        "worst: found 0 of 1, 1 false",
    ]
    assert examples.figure(["shape"]).shape == (2 * (22 + 32) + 8, 2 * (2 * 32 + 4) + 8, 3)
