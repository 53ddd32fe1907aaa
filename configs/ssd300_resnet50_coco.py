"""SSD300 on ResNet-50 on COCO 2017 (train2017 -> val2017): NVIDIA's SSD300 v1.1
(DeepLearningExamples, PyTorch/Detection/SSD) and its recipe.

    python convert_torch_backbone.py --input resnet50-0676ba61.pth --output weights/resnet50
    python -m ssd_jax.train --config configs/ssd300_resnet50_coco.py \\
        --workdir runs/ssd300_resnet50_coco --config.init.backbone=weights/resnet50.npz

NVIDIA's README: 65 epochs on 8 GPUs x batch 32, SGD with momentum 0.9, learning
rate 2.6e-3 x GPUs x (batch / 32), x0.1 before epochs 43 and 54, linear warmup
(``--warmup 300`` iterations), weight decay 5e-4 except on BatchNorm and biases;
the paper's random crop, horizontal flip and color jitter (no zoom out);
ImageNet normalization. Published: COCO AP 0.267-0.274 on val2017 (mean 0.2680
over 15 seeds). Their trained model imports with ``python -m ssd_jax.convert
--from nvidia_ssd``.
"""

from configs.ssd300_coco import get_config as ssd300_coco_config
from ssd_jax.config_schema import base_config

# train2017 without the images that have no annotations: 117,266, in batches of
# 8 x 32 = 256: 459 iterations per epoch.
STEPS_PER_EPOCH = 459
EPOCHS = 65


def get_config():
    config = base_config()
    config.model.backbone = "resnet50"
    config.model.batch_norm = True  # ResNet and its extras have it after every conv
    config.model.default_boxes = "ssd300_nvidia"
    coco = ssd300_coco_config()  # the same COCO 2017 folders and metric
    config.data.train, config.data.eval = coco.data.train, coco.data.eval
    config.eval_metric = coco.eval_metric
    config.data.zoom_out = False  # NVIDIA's augmentation: crop, flip, color jitter

    config.batch_size = 256  # 8 GPUs x 32
    config.num_steps = EPOCHS * STEPS_PER_EPOCH  # 29,835
    config.optimizer.learning_rate = 2.6e-3  # per 32 images, scaled with the batch
    config.optimizer.base_batch_size = 32
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 5e-4
    config.optimizer.weight_decay_on = "kernels"  # none on BatchNorm and biases
    config.optimizer.warmup_steps = 300
    config.optimizer.milestones = (43 * STEPS_PER_EPOCH, 54 * STEPS_PER_EPOCH)

    config.loss.normalization = "image"  # each image's loss over its own positives
    # NVIDIA's post-processing
    config.detection.score_threshold = 0.05
    config.detection.nms_iou_threshold = 0.45
    config.detection.top_k_per_class = 200
    config.detection.max_detections = 200
    config.checkpoint_every = config.eval_every = 5 * STEPS_PER_EPOCH
    return config
