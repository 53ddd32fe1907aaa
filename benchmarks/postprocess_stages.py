r"""Where post-processing spends its time: each stage of ``postprocess.detect``
timed as a cumulative prefix (one jit each), on synthetic head outputs.

    python -m benchmarks.postprocess_stages [--architectures ssd300,ssd512] \
        [--batch_sizes 8,64] [--case medium] [--output runs/benchmarks/postprocess_stages.json]

Stages: ``softmax_decode`` (softmax over classes, decoding every default box),
``+top_k`` (the per-class best ``top_k_per_class`` of A boxes and their boxes),
``+iou`` (the (C, K, K) IoU matrices), ``+nms`` (greedy NMS, the backend's
method), ``detect`` (the whole function: the best ``max_detections`` over all
classes). A stage's own cost is its time minus the previous one's.
"""

import functools

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks.common import define_output_flag, time_calls, write_report
from benchmarks.inference import NUM_CLASSES, network_outputs
from ssd_jax import default_boxes, postprocess
from ssd_jax.box_coding import VARIANCES, decode
from ssd_jax.boxes import pairwise_iou_xyxy

FLAGS = flags.FLAGS
TOP_K = 200


def _scores_boxes(loc, conf, boxes_cxcywh):
    probs = jax.nn.softmax(conf, axis=-1)[..., 1:]  # (B, A, C)
    return jnp.swapaxes(probs, 1, 2), jax.vmap(decode, (0, None, None))(
        loc, boxes_cxcywh, VARIANCES
    )


def _top(loc, conf, boxes_cxcywh):
    scores, boxes = _scores_boxes(loc, conf, boxes_cxcywh)  # (B, C, A), (B, A, 4)
    top_scores, index = jax.lax.top_k(scores, TOP_K)  # (B, C, K)
    return top_scores, jax.vmap(lambda b, i: b[i])(boxes, index)  # (B, C, K, 4)


def _iou(loc, conf, boxes_cxcywh):
    top_scores, top_boxes = _top(loc, conf, boxes_cxcywh)
    iou = jax.vmap(jax.vmap(lambda b: pairwise_iou_xyxy(b, b)))(top_boxes)  # (B, C, K, K)
    return top_scores, jnp.sum(iou > 0.45, axis=-1)  # reduced: no (B, C, K, K) output to write


def _nms(loc, conf, boxes_cxcywh):
    top_scores, top_boxes = _top(loc, conf, boxes_cxcywh)
    nms = functools.partial(postprocess.greedy_nms, nms_iou_threshold=0.45)
    keep = jax.vmap(jax.vmap(lambda b, s: nms(b, s > 0.01)))(top_boxes, top_scores)
    return jnp.where(keep, top_scores, -jnp.inf)


STAGES = {
    "softmax_decode": _scores_boxes,
    "+top_k": _top,
    "+iou": _iou,
    "+nms": _nms,
    "detect": postprocess.detect,
}


def main(argv: list[str]) -> None:
    del argv
    rows = []
    print(f"{jax.devices()[0].device_kind}; case {FLAGS.case}, {NUM_CLASSES} classes; ms per batch")
    print(f"{'model':>7} {'batch':>6} " + " ".join(f"{name:>15}" for name in STAGES))
    for architecture in FLAGS.architectures:
        boxes_cxcywh = jnp.asarray(default_boxes.generate(default_boxes.preset(architecture)))
        for batch_size in map(int, FLAGS.batch_sizes):
            loc, conf = network_outputs(FLAGS.case, len(boxes_cxcywh), batch_size)
            inputs = (jax.device_put(loc), jax.device_put(conf), boxes_cxcywh)
            times = {}
            for name, stage in STAGES.items():
                run = functools.partial(jax.jit(stage), *inputs)
                times[name] = 1000 * time_calls(run, FLAGS.repeats)
            rows.append({"architecture": architecture, "batch_size": batch_size, "ms": times})
            print(f"{architecture:>7} {batch_size:>6} "
                  + " ".join(f"{t:>15.2f}" for t in times.values()), flush=True)  # fmt: skip
    write_report(FLAGS.output, "postprocess_stages", rows, case=FLAGS.case)


if __name__ == "__main__":
    flags.DEFINE_list("architectures", ["ssd300", "ssd512"], "Default-box layouts.")
    flags.DEFINE_list("batch_sizes", ["8", "64"], "Batch sizes.")
    flags.DEFINE_enum("case", "medium", ["dense", "medium", "sparse"], "Output case.")
    flags.DEFINE_integer("repeats", 5, "Timed calls per measurement (median reported).")
    define_output_flag("postprocess_stages")
    app.run(main)
