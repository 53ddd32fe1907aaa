"""The quickstart with SSDlite320 on MobileNetV3-Large (full size, 3.4 M
parameters with the halved tail) instead of the 1/8-width SSD300: the same
synthetic shapes, batch and optimizer as ``configs/shapes.py``, but 80 steps
instead of 340, which is what its slower CPU train step (about 7 s per batch of
16 here) fits in the quickstart's ~9 minutes on a 2-core CPU.

    python -m ssd_jax.train --config configs/shapes_ssdlite.py --workdir runs/shapes_ssdlite

Measured (2026-12-07, 2-core VM shared with other jobs): 80 steps in 20 min 19 s,
VOC07 mAP 0.005 on 64 eval images, against the VGG quickstart's 0.844 in 9
minutes: from scratch, SSDlite needs far more steps than a CPU quickstart has
(torchvision trains it for 660 COCO epochs). It stays a measurement, not the
quickstart.
"""

from configs import shapes


def get_config():
    config = shapes.get_config()
    config.model.backbone = "mobilenet_v3_large_reduced_tail"
    config.model.architecture = "ssdlite320"
    config.model.width = 1.0
    config.model.batch_norm = True  # MobileNetV3 has BatchNorm anyway
    config.num_steps = 80
    config.optimizer.warmup_steps = 10
    config.optimizer.milestones = (60, 72)
    config.checkpoint_every = config.eval_every = 40
    return config
