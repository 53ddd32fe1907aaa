r"""SSD300 on ResNet-50: ours against NVIDIA's SSD300 v1.1 as the tests rebuild
it in PyTorch (tests/nvidia_reference.py), in one process, on the CPU.

    python -m benchmarks.nvidia_speed [--batch_sizes 8] [--train_batch_size 8] \
        [--repeats 3] [--iterations 2] [--warmup 1] [--parts detector,train] \
        [--output /tmp/nvidia_speed.json]

1. The detector in eval mode, random weights, 81 logits, NVIDIA's settings
   (score > 0.05, 200 per class, NMS at 0.45, 200 detections), images/s:
   - ours: the whole jitted detect step (``steps.make_detect_step``), uint8
     (B, 300, 300, 3) images to detections;
   - NVIDIA (a) "network": the network on an already normalized (B, 3, 300,
     300) tensor, no post-processing (a bound in its favour);
   - NVIDIA (b) "full": the network, then its decoding and per-class NMS
     (a loop per image and class, as NVIDIA's own ``decode_single``).
2. The train step: ours (``steps.make_train_step``: normalization, network,
   matching, loss with per-image normalization, gradients, SGD with momentum
   0.9 and weight decay 5e-4 on the conv kernels) against NVIDIA's (forward,
   its loss on targets encoded beforehand, as its data loader does off the
   step; backward; ``torch.optim.SGD``; ``zero_grad``), on the same synthetic
   batch.

Timing as benchmarks/ssdlite_speed.py (median round of interleaved contenders,
compilation and warm-up left out).
"""

import datetime
import os
import platform

import flax
import jax
import jaxlib
import numpy as np
from absl import app, flags

from benchmarks.common import write_report
from benchmarks.train_step import synthetic_batch
from benchmarks.versus import (
    compile_seconds,
    define_timing_flags,
    median_seconds,
    our_train_call,
    timing_settings,
)
from ssd_jax import build, steps
from ssd_jax.config_schema import base_config, data_config, validate

FLAGS = flags.FLAGS

NUM_CLASSES = 80
IMAGE_SIZE = 300
WEIGHT_DECAY = 5e-4
LEARNING_RATE = 1e-4  # small: random weights must not blow up within the timed steps


def nvidia_config():
    """Our configuration of NVIDIA's SSD300 (COCO, 80 classes, its settings)."""
    config = base_config()
    config.data.train = data_config("synthetic")  # no files: only the model rules matter
    config.data.eval = data_config("synthetic")
    config.model.backbone = "resnet50"
    config.model.batch_norm = True
    config.model.default_boxes = "ssd300_nvidia"
    config.loss.normalization = "image"
    config.detection.score_threshold = 0.05
    validate(config)
    return config


def detector_row(torch, nvidia, theirs, config, batch_size: int) -> dict:
    graphdef, variables = steps.split_model(build.model(config.model, NUM_CLASSES, seed=0))
    settings = build.step_settings(config)
    images = np.random.default_rng(0).integers(
        0, 256, (batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8
    )
    device_images = jax.device_put(images)
    detect, compile_s = compile_seconds(
        steps.make_detect_step(graphdef, settings), variables, device_images
    )
    normalized = nvidia.network_input(images).float()
    dboxes = nvidia.default_boxes_xywh().float()
    theirs.eval()

    def network():
        with torch.inference_mode():
            return theirs(normalized)

    def full():
        with torch.inference_mode():
            loc, conf = theirs(normalized)
            return [nvidia.decode(loc[b], conf[b], dboxes) for b in range(batch_size)]

    seconds = median_seconds(
        {"ours": lambda: detect(variables, device_images), "network": network, "full": full}
    )
    row = {
        "part": "detector",
        "batch_size": batch_size,
        "ours_compile_s": compile_s,
        "seconds_per_call": seconds,
        "images_per_s": {k: batch_size / s for k, s in seconds.items()},
        "detections_per_image": {
            "ours": float(np.mean(detect(variables, device_images).num_detections)),
            "nvidia": float(np.mean([len(d[2]) for d in full()])),
        },
        "ratio_vs_network": seconds["network"] / seconds["ours"],
        "ratio_vs_full": seconds["full"] / seconds["ours"],
    }
    print(f"detector batch {batch_size}: " + ", ".join(
        f"{k} {v:.2f} img/s" for k, v in row["images_per_s"].items()), flush=True)  # fmt: skip
    return row


def train_row(torch, nvidia, theirs, config) -> dict:
    batch_size = FLAGS.train_batch_size
    host_batch = synthetic_batch(batch_size, IMAGE_SIZE, config.data.max_boxes)
    batch = jax.device_put(host_batch)
    ours, compile_s = our_train_call(config, NUM_CLASSES, batch, LEARNING_RATE, WEIGHT_DECAY)
    inputs = nvidia.network_input(host_batch["image"]).float()
    dboxes = nvidia.default_boxes_xywh()
    targets = [
        nvidia.encode(torch.from_numpy(b[m]).double(), torch.from_numpy(k[m]).long(), dboxes)
        for b, k, m in zip(host_batch["boxes"], host_batch["labels"], host_batch["mask"],
                           strict=True)
    ]  # fmt: skip
    gloc = torch.stack([t[0] for t in targets]).transpose(1, 2).float()
    glabel = torch.stack([t[1] for t in targets])
    dboxes = dboxes.float()
    theirs.train()
    sgd = torch.optim.SGD(
        theirs.parameters(), lr=LEARNING_RATE, momentum=0.9, weight_decay=WEIGHT_DECAY
    )

    def nvidia_step():
        ploc, plabel = theirs(inputs)
        loss = nvidia.loss(ploc, plabel, gloc, glabel, dboxes)
        loss.backward()
        sgd.step()
        sgd.zero_grad()
        return loss.detach()

    seconds = median_seconds({"ours": ours, "nvidia": nvidia_step})
    row = {
        "part": "train",
        "batch_size": batch_size,
        "ours_compile_s": compile_s,
        "seconds_per_call": seconds,
        "images_per_s": {k: batch_size / s for k, s in seconds.items()},
        "last_loss": {"ours": float(ours()), "nvidia": float(nvidia_step())},
        "ratio": seconds["nvidia"] / seconds["ours"],
    }
    print(f"train batch {batch_size}: " + ", ".join(
        f"{k} {v:.2f} img/s" for k, v in row["images_per_s"].items()), flush=True)  # fmt: skip
    return row


def main(argv: list[str]) -> None:
    del argv
    from tests import nvidia_reference as nvidia  # imports torch and torchvision's stand-ins

    torch = nvidia.torch
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    theirs = nvidia.SSD300("resnet50")
    config = nvidia_config()
    rows = []
    if "detector" in FLAGS.parts:
        rows += [detector_row(torch, nvidia, theirs, config, int(b)) for b in FLAGS.batch_sizes]
    if "train" in FLAGS.parts:
        rows.append(train_row(torch, nvidia, theirs, config))
    write_report(
        FLAGS.output,
        "nvidia_speed",
        rows,
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        model={
            "ours": "SSD('ssd300', 80, backbone='resnet50'), default boxes ssd300_nvidia",
            "nvidia": "tests/nvidia_reference.SSD300('resnet50'), 81 logits",
            "weights": "random (each its own initialization)",
        },
        detection={
            "score_threshold": 0.05,
            "nms_iou_threshold": 0.45,
            "top_k_per_class": 200,
            "max_detections": 200,
        },
        train={
            "optimizer": "SGD",
            "momentum": 0.9,
            "weight_decay": WEIGHT_DECAY,
            "learning_rate": LEARNING_RATE,
        },
        timing=timing_settings(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        python=platform.python_version(),
        versions={
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "flax": flax.__version__,
            "torch": torch.__version__,
        },
    )


if __name__ == "__main__":
    flags.DEFINE_list("batch_sizes", ["8"], "Batch sizes of the detector timing.")
    flags.DEFINE_integer("train_batch_size", 8, "Batch size of the train step timing.")
    flags.DEFINE_list("parts", ["detector", "train"], "detector, train.")
    define_timing_flags(repeats=3, iterations=2, warmup=1)
    flags.DEFINE_string("output", "/tmp/nvidia_speed.json", "Where to write the JSON report.")
    app.run(main)
