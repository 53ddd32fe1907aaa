r"""Train-step speed with device-resident synthetic batches (no input pipeline).

    python -m benchmarks.train_step --config configs/ssd300_voc.py \
        [--batch_size 32] [--dtypes float32,bfloat16] [--parts full,network] [--steps 10] \
        [--output runs/benchmarks/train_step.json]

For each compute dtype it reports the compile time and steady-state images/s of
the full step (normalize, network, matching, loss, gradients, SGD update) and of
the bare network (forward, backward and update of a plain squared-output loss),
so the cost of matching and the loss is visible. Parts ``augmented`` (the full
step with the augmentation on the device, from decoded 500x375 images padded to
``--max_side``) and ``augment`` (that augmentation alone) show its cost.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from benchmarks.common import define_output_flag, write_report
from ssd_jax import build, optim, parallel, steps
from ssd_jax.data.classes import COCO_CLASSES, VOC_CLASSES
from ssd_jax.steps import StepSettings

FLAGS = flags.FLAGS


def synthetic_batch(batch_size: int, image_size: int, max_boxes: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    top_left = rng.uniform(0, 0.7, (batch_size, max_boxes, 2))
    size = rng.uniform(0.05, 0.3, (batch_size, max_boxes, 2))
    return {
        "image": rng.integers(0, 256, (batch_size, image_size, image_size, 3), np.uint8),
        "boxes": np.concatenate([top_left, top_left + size], -1).astype(np.float32),
        "labels": rng.integers(1, 21, (batch_size, max_boxes)).astype(np.int32),
        "mask": np.arange(max_boxes)[None].repeat(batch_size, 0)
        < rng.integers(1, 8, (batch_size, 1)),
    }


def decoded_batch(batch: dict, max_side: int, height: int = 375, width: int = 500) -> dict:
    """``batch`` as the host hands it over for device augmentation: each image a
    (height, width) picture padded to (max_side, max_side), with ``image_hw``."""
    size = len(batch["image"])
    rng = np.random.default_rng(1)
    images = np.zeros((size, max_side, max_side, 3), np.uint8)
    images[:, :height, :width] = rng.integers(0, 256, (size, height, width, 3), np.uint8)
    hw = np.tile(np.array([[height, width]], np.int32), (size, 1))
    return {**batch, "image": images, "image_hw": hw}


def augment_only_step(augment):
    """The device augmentation alone, as a (state, batch) step."""

    def step(state, batch):
        out = augment(state["step"], batch)
        return {**state, "step": state["step"] + 1}, out["image"]

    return step


def time_step(step, state, batch, num_steps: int) -> tuple[float, float]:
    """(compile seconds, images per second) of ``step(state, batch) -> (state, out)``."""
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    state, out = compiled(state, batch)  # warm-up
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(num_steps):
        state, out = compiled(state, batch)
    jax.block_until_ready(out)
    return compile_s, num_steps * batch["image"].shape[0] / (time.perf_counter() - start)


def bare_network_step(graphdef, optimizer, settings: StepSettings):
    """Forward + backward + update of the network alone (no matching, no SSD loss)."""

    def step(state, batch):
        def loss_fn(params):
            model = nnx.merge(graphdef, params, state["batch_stats"], copy=True)
            loc, conf = model(settings.network_input(batch["image"]))
            return jnp.mean(loc**2) + jnp.mean(conf**2)

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {**state, "params": params, "opt_state": opt_state}, loss

    return step


def main(argv: list[str]) -> None:
    del argv
    config = FLAGS.config
    mesh = parallel.make_data_mesh()
    kind = config.data.train.kind
    num_classes = len(config.data.class_names or (COCO_CLASSES if kind == "coco" else VOC_CLASSES))
    image_size = build.image_size(config.model)
    host_batch = synthetic_batch(FLAGS.batch_size, image_size, config.data.max_boxes)
    batch = parallel.shard_batch(host_batch, mesh)
    decoded = parallel.shard_batch(decoded_batch(host_batch, FLAGS.max_side), mesh)
    config.data.augment, config.data.augment_on = True, "device"
    config.data.decode_max_side = FLAGS.max_side
    augment = build.device_augmentation(config)
    schedule = optim.step_schedule(1e-3, 1, (), 0.1)
    optimizer = optim.make_optimizer("sgd", schedule)
    rows = []
    print(f"{'dtype':>9} {'part':>8} {'compile s':>10} {'images/s':>9}")
    for dtype_name in FLAGS.dtypes:
        config.model.dtype = dtype_name
        graphdef, variables = steps.split_model(build.model(config.model, num_classes, seed=0))
        state = steps.init_train_state(variables, optimizer)
        state = jax.device_put(state, parallel.replicated(mesh))
        settings = build.step_settings(config)
        step_fns = {
            "full": steps.make_train_step(graphdef, optimizer, schedule, settings),
            "network": bare_network_step(graphdef, optimizer, settings),
            "augmented": steps.make_train_step(graphdef, optimizer, schedule, settings, augment),
            "augment": augment_only_step(augment),
        }
        for part in FLAGS.parts:
            step, inputs = step_fns[part], decoded if part.startswith("augment") else batch
            compile_s, rate = time_step(jax.jit(step), state, inputs, FLAGS.steps)
            rows.append(
                {"dtype": dtype_name, "part": part, "compile_s": compile_s, "images_per_s": rate}
            )
            print(f"{dtype_name:>9} {part:>8} {compile_s:>10.1f} {rate:>9.1f}", flush=True)
    model_details = {
        "architecture": config.model.architecture,
        "width": config.model.width,
        "batch_norm": config.model.batch_norm,
    }
    write_report(FLAGS.output, "train_step", rows, model=model_details, batch_size=FLAGS.batch_size,
                 max_side=FLAGS.max_side)  # fmt: skip


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", "configs/ssd300_voc.py", "Training configuration.")
    flags.DEFINE_integer("batch_size", 8, "Global batch size.")
    flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes to measure.")
    flags.DEFINE_list(
        "parts",
        ["full", "network"],
        "full (the train step), network (bare), augmented (full step with device "
        "augmentation), augment (device augmentation alone).",
    )
    flags.DEFINE_integer("max_side", 512, "Decoded image size for the augment parts.")
    flags.DEFINE_integer("steps", 5, "Timed steps after the first (compiling) one.")
    define_output_flag("train_step")
    app.run(main)
