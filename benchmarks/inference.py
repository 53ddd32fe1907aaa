r"""Inference speed: the whole detector and post-processing alone.

    python -m benchmarks.inference [--architecture ssd300] [--batch_sizes 1,8,64] \
        [--width 1.0] [--dtype float32] [--output runs/benchmarks/inference.json]

1. The detector (uint8 normalization, network, decode, NMS; one jit) with random
   weights: images/s and per-batch latency at each batch size, and the latency
   of post-processing alone at that batch size (medium case below) with each
   NMS method (``postprocess.greedy_nms``).
2. Post-processing alone on a batch of 8 SSD300 outputs with 20 classes, in a
   dense case (nearly every box and class above the 0.01 threshold), a medium and
   a sparse one: ours (``postprocess.detect``, jitted) against the reference
   pytorch_SSD's algorithm (softmax, per-class threshold, hand-written greedy NMS
   of the top 200, as its ``InferenceBox`` does) run in PyTorch on the same
   outputs, if torch is installed.
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from benchmarks.common import define_output_flag, time_calls, write_report
from ssd_jax import default_boxes, postprocess, steps
from ssd_jax.models import SSD

FLAGS = flags.FLAGS

NUM_CLASSES = 20
CASES = {  # background logit offset; boxes given one confident class
    "dense": (0.0, 0),
    "medium": (4.0, 0),
    "sparse": (9.0, 40),
}


def network_outputs(case: str, num_boxes: int, batch: int = 8, seed: int = 0):
    """Synthetic (loc (B, A, 4), conf (B, A, C + 1)) float32 head outputs."""
    rng = np.random.default_rng(seed)
    background, confident = CASES[case]
    loc = rng.normal(0, 0.5, (batch, num_boxes, 4)).astype(np.float32)
    conf = rng.normal(0, 0.5, (batch, num_boxes, NUM_CLASSES + 1)).astype(np.float32)
    conf[..., 0] += background
    for b in range(batch):
        boxes = rng.choice(num_boxes, confident, replace=False)
        conf[b, boxes, rng.integers(1, NUM_CLASSES + 1, confident)] += background + 6
    return loc, conf


def _area(boxes_xyxy):
    return (boxes_xyxy[..., 2] - boxes_xyxy[..., 0]) * (boxes_xyxy[..., 3] - boxes_xyxy[..., 1])


def reference_postprocess(
    loc, conf, default_boxes_cxcywh, threshold=0.01, nms_iou_threshold=0.45, top_k=200
):
    """pytorch_SSD's inference post-processing (study §8), in PyTorch: per image
    and class, boxes with p > threshold, sorted, the top 200 kept, greedy NMS.
    Background is class 0 here (the reference has it last; same work)."""
    import torch

    loc, conf, defaults = (
        torch.from_numpy(np.asarray(a)) for a in (loc, conf, default_boxes_cxcywh)
    )
    centres = loc[..., :2] * 0.1 * defaults[:, 2:] + defaults[:, :2]
    sizes = torch.exp(loc[..., 2:] * 0.2) * defaults[:, 2:]
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], -1)
    probs = torch.softmax(conf, -1)
    results = []
    for b in range(loc.shape[0]):
        rows = []
        for c in range(1, probs.shape[-1]):
            mask = probs[b, :, c] > threshold
            scores, candidates = probs[b, mask, c], boxes[b, mask]
            order = scores.argsort(descending=True)[:top_k]
            while order.numel() > 0:
                best = order[0]
                rows.append(torch.cat([torch.tensor([c, scores[best]]), candidates[best]]))
                rest = order[1:]
                top_left = torch.maximum(candidates[best, :2], candidates[rest, :2])
                bottom_right = torch.minimum(candidates[best, 2:], candidates[rest, 2:])
                inter = (bottom_right - top_left).clamp(min=0).prod(-1)
                union = _area(candidates[best]) + _area(candidates[rest]) - inter
                iou = inter / union
                order = rest[iou <= nms_iou_threshold]
        results.append(torch.stack(rows) if rows else torch.zeros((0, 6)))
    return results


def main(argv: list[str]) -> None:
    del argv
    spec = default_boxes.preset(FLAGS.architecture)
    boxes_cxcywh = jnp.asarray(default_boxes.generate(spec))
    rows = []

    model = SSD(FLAGS.architecture, NUM_CLASSES, width=FLAGS.width,
                dtype=jnp.dtype(FLAGS.dtype), rngs=nnx.Rngs(0))  # fmt: skip
    graphdef, variables = steps.split_model(model)
    settings = steps.StepSettings(boxes_cxcywh, compute_dtype=FLAGS.dtype)
    detect = jax.jit(steps.make_detect_step(graphdef, settings))
    post = jax.jit(postprocess.detect, static_argnames="nms_method")

    def time_post(loc, conf, nms_method="auto"):
        return time_calls(
            lambda: post(loc, conf, boxes_cxcywh, nms_method=nms_method), FLAGS.repeats
        )

    methods = ("loop", "fixed_point")
    print(f"detector {FLAGS.architecture} width {FLAGS.width} {FLAGS.dtype}; "
          "post-processing alone (medium case) by NMS method")  # fmt: skip
    method_columns = " ".join(f"{m:>12}" for m in methods)
    print(f"{'batch':>6} {'latency ms':>11} {'images/s':>9} {method_columns}")
    for batch_size in map(int, FLAGS.batch_sizes):
        images = np.random.default_rng(0).integers(
            0, 256, (batch_size, spec.image_size, spec.image_size, 3), np.uint8
        )
        seconds = time_calls(lambda images=images: detect(variables, images), FLAGS.repeats)
        loc, conf = network_outputs("medium", len(boxes_cxcywh), batch=batch_size)
        post_s = {m: time_post(loc, conf, m) for m in methods}
        rows.append({"part": "detector", "batch_size": batch_size, "latency_s": seconds,
                     "images_per_s": batch_size / seconds, "postprocess_s": post_s})  # fmt: skip
        print(f"{batch_size:>6} {1000 * seconds:>11.1f} {batch_size / seconds:>9.1f} "
              + " ".join(f"{1000 * post_s[m]:>12.1f}" for m in methods), flush=True)  # fmt: skip

    print("\npost-processing, batch 8, 20 classes (ours: the method 'auto' picks here)")
    print(f"{'case':>7} {'cand./img':>10} {'dets/img':>9} {'ours ms':>8} {method_columns} "
          f"{'reference ms':>13}")  # fmt: skip
    for case in CASES:
        loc, conf = network_outputs(case, len(boxes_cxcywh))
        probs = jax.nn.softmax(conf, -1)[..., 1:]
        candidates = float((probs > 0.01).sum() / len(loc))
        ours_s = time_post(loc, conf)
        method_s = {m: time_post(loc, conf, m) for m in methods}
        found = post(loc, conf, boxes_cxcywh)
        row = {"part": "postprocess", "case": case, "batch_size": 8,
               "candidates_per_image": candidates, "ours_s": ours_s, "method_s": method_s,
               "detections_per_image": float(np.mean(found.num_detections))}  # fmt: skip
        reference_s = None
        if FLAGS.reference:
            reference_s = time_calls(
                lambda loc=loc, conf=conf: reference_postprocess(loc, conf, boxes_cxcywh), 1
            )
            kept = reference_postprocess(loc, conf, boxes_cxcywh)
            row |= {"reference_s": reference_s,
                    "reference_detections_per_image": float(np.mean([len(k) for k in kept])),
                    "speedup": reference_s / ours_s}  # fmt: skip
        rows.append(row)
        ref_text = f"{1000 * reference_s:>13.1f}" if reference_s else f"{'-':>13}"
        print(f"{case:>7} {candidates:>10.0f} {row['detections_per_image']:>9.0f} "
              f"{1000 * ours_s:>8.1f} " + " ".join(f"{1000 * method_s[m]:>12.1f}" for m in methods)
              + f" {ref_text}", flush=True)  # fmt: skip
    write_report(FLAGS.output, "inference", rows, architecture=FLAGS.architecture,
                 width=FLAGS.width, dtype=FLAGS.dtype)  # fmt: skip


if __name__ == "__main__":
    flags.DEFINE_string("architecture", "ssd300", "ssd300 or ssd512.")
    flags.DEFINE_list("batch_sizes", ["1", "8", "64"], "Batch sizes of the detector timing.")
    flags.DEFINE_float("width", 1.0, "Channel multiplier (1.0: the real network).")
    flags.DEFINE_string("dtype", "float32", "Compute dtype of the network.")
    flags.DEFINE_integer("repeats", 5, "Timed calls per measurement (median reported).")
    flags.DEFINE_bool("reference", True, "Also time the PyTorch reference post-processing.")
    define_output_flag("inference")
    app.run(main)
