"""torchvision 0.28 beside the CPU torch of the dev extra. Its compiled ops are a
CUDA build that does not load here: importing this module skips their
registration and stands in plain torch for the one its detection models call at
inference, NMS. Import torchvision from it (``from tests.torchvision_stand_ins import
torchvision``), before anything else imports it."""

import sys
import types

sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("stand-in"))

import torch  # noqa: E402
import torchvision  # noqa: E402
import torchvision.models.detection  # noqa: E402
import torchvision.ops.boxes  # noqa: E402


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS as torchvision's kernel computes it: boxes by decreasing score,
    a box suppressed by a kept one it overlaps with IoU > ``iou_threshold``;
    returns the kept indices, best first."""
    order = torch.argsort(scores, descending=True, stable=True)
    overlaps = torchvision.ops.boxes.box_iou(boxes[order], boxes[order]) > iou_threshold
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= overlaps[i]
    return order[torch.as_tensor(keep, dtype=torch.long)]


torchvision.ops.boxes.nms = nms  # batched_nms looks it up in its module at each call
