"""Checks the CPU suite cannot make, for a GPU (run by ``benchmarks/gpu_suite.sh``):

    python -m benchmarks.gpu_checks [--inputs DIR] [--output runs/benchmarks/gpu_checks.json]

1. Portable export: every ``DIR/detector_<tag>.jaxexport`` (exported on a CPU with
   ``python -m ssd_jax.export``, possibly by another jax version) runs on this
   device on ``DIR/images.npy`` and finds what the exporting CPU found
   (``DIR/cpu_<tag>.npz``): same confident detections, boxes and scores within
   the reported differences.
2. bfloat16: the full-size SSD300 train step and detector in bf16 are finite and
   follow float32 (loss, gradient direction, best scores), as
   ``tests/test_steps.py`` checks on a small network on the CPU.
"""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

from benchmarks.common import define_output_flag, write_report
from ssd_jax import default_boxes
from ssd_jax.data.pipeline import pad_objects
from ssd_jax.data.synthetic import SyntheticShapes
from ssd_jax.exporters import jax_export
from ssd_jax.models import SSD
from ssd_jax.steps import (
    StepSettings,
    init_train_state,
    make_detect_step,
    make_train_step,
    split_model,
)

FLAGS = flags.FLAGS


def check_exports(folder: str) -> list[dict]:
    images = np.load(os.path.join(folder, "images.npy"))
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "detector_*.jaxexport"))):
        tag = os.path.basename(path)[len("detector_") : -len(".jaxexport")]
        exported, _ = jax_export.load_export(path)
        try:
            found = {k: np.asarray(v) for k, v in exported.call(jnp.asarray(images)).items()}
        except jax.errors.JaxRuntimeError as error:  # e.g. written by a newer jax
            rows.append({"artifact": tag, "error": str(error).splitlines()[0]})
            print(rows[-1])
            continue
        cpu = np.load(os.path.join(folder, f"cpu_{tag}.npz"))
        row = {
            "artifact": tag,
            "platforms": ",".join(exported.platforms),
            **compare_detections(cpu, found),
        }
        rows.append(row)
        print(row)
    return rows


def compare_detections(cpu: dict, found: dict, threshold: float = 0.35) -> dict:
    """Detections above ``threshold`` found on the CPU and here: how many, how many
    of the CPU's have no detection of their class here, and the largest box
    (normalized xyxy) and score differences of the nearest same-class pairs (near
    ties may come out in another order)."""
    box_diffs, score_diffs, unmatched = [0.0], [0.0], 0
    for i in range(len(cpu["scores"])):
        confident_here = found["scores"][i] > threshold
        for j in np.flatnonzero(cpu["scores"][i] > threshold):
            same = confident_here & (found["classes"][i] == cpu["classes"][i, j])
            if not same.any():
                unmatched += 1
                continue
            distances = np.abs(found["boxes_xyxy"][i][same] - cpu["boxes_xyxy"][i, j]).max(axis=1)
            nearest = distances.argmin()
            box_diffs.append(float(distances[nearest]))
            score_diffs.append(float(abs(found["scores"][i][same][nearest] - cpu["scores"][i, j])))
    return {
        "confident_cpu": int((cpu["scores"] > threshold).sum()),
        "confident_here": int((found["scores"] > threshold).sum()),
        "unmatched": unmatched,
        "max_box_diff": max(box_diffs),
        "max_score_diff": max(score_diffs),
    }


def batch(size: int) -> dict:
    source = SyntheticShapes(size, num_classes=8, image_size=(300, 300), max_objects=5, seed=0)
    examples = [source[i] for i in range(size)]
    padded = [pad_objects(e["boxes"], e["labels"], 8) for e in examples]
    stacked = {name: np.stack([p[name] for p in padded]) for name in ("boxes", "labels", "mask")}
    return {"image": np.stack([e["image"] for e in examples]), **stacked}


def check_bfloat16(batch_size: int = 8) -> dict:
    boxes = default_boxes.generate(default_boxes.preset("ssd300"))
    optimizer, schedule = optax.sgd(1e-3), optax.constant_schedule(1e-3)
    data = batch(batch_size)
    results = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model = SSD("ssd300", 20, dtype=dtype, rngs=nnx.Rngs(0))
        graphdef, variables = split_model(model)
        settings = StepSettings(boxes, compute_dtype=dtype)
        step = jax.jit(make_train_step(graphdef, optimizer, schedule, settings))
        state, metrics = step(init_train_state(variables, optimizer), data)
        update = jnp.concatenate(
            [(a - b).ravel() for a, b in zip(jax.tree.leaves(state["params"]),
                                            jax.tree.leaves(variables["params"]), strict=True)]
        )  # fmt: skip
        detections = jax.jit(make_detect_step(graphdef, settings))(variables, data["image"])
        results[dtype] = (float(metrics["loss"]), np.asarray(update), np.asarray(detections.scores))
    (loss32, up32, sc32), (loss16, up16, sc16) = results.values()
    row = {
        "check": "bfloat16 SSD300",
        "finite": bool(np.isfinite(loss16) and np.isfinite(up16).all() and np.isfinite(sc16).all()),
        "loss_float32": loss32,
        "loss_bfloat16": loss16,
        "update_cosine": float(up16 @ up32 / np.linalg.norm(up16) / np.linalg.norm(up32)),
        "best_score_max_rel_diff": float(np.abs(sc16.max(1) / sc32.max(1) - 1).max()),
    }  # fmt: skip
    print(row)
    return row


def main(argv: list[str]) -> None:
    del argv
    print("jax", jax.__version__, jax.devices())
    rows = [*check_exports(FLAGS.inputs), check_bfloat16()]
    write_report(FLAGS.output, "gpu_checks", rows, inputs=FLAGS.inputs)


if __name__ == "__main__":
    flags.DEFINE_string("inputs", ".gpu_inputs", "Folder of exported detectors and images.")
    define_output_flag("gpu_checks")
    app.run(main)
