"""SSD300 on ResNet-50 on PASCAL VOC (07+12 trainval -> 07 test): NVIDIA's SSD300
v1.1 network, loss and augmentation on the paper's VOC schedule and default
boxes (VOC's objects are larger than COCO's; the paper's VOC scales start at
0.1, NVIDIA's COCO ones at 0.07).

    python convert_torch_backbone.py --input resnet50-0676ba61.pth --output weights/resnet50
    python -m ssd_jax.train --config configs/ssd300_resnet50_voc.py \\
        --workdir runs/ssd300_resnet50_voc --config.init.backbone=weights/resnet50.npz

Not trained here; no published figure to compare with.
"""

from configs.ssd300_resnet50_coco import get_config as nvidia_config
from configs.ssd300_voc import get_config as voc_config


def get_config():
    config = voc_config()  # VOC folders, 120k steps of batch 32, lr 1e-3, x0.1 at 80k/100k
    nvidia = nvidia_config()
    config.model = nvidia.model
    config.model.default_boxes = ""  # the paper's SSD300 boxes
    config.loss = nvidia.loss
    config.data.zoom_out = nvidia.data.zoom_out
    config.optimizer.weight_decay_on = nvidia.optimizer.weight_decay_on
    return config
