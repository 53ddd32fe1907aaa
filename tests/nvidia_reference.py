"""NVIDIA's SSD300 v1.1 (DeepLearningExamples, PyTorch/Detection/SSD), rebuilt in
PyTorch from its published definition for the equivalence tests: the network
(torchvision ResNet cut after layer3 with that stage's first block at stride 1;
five extra blocks with BatchNorm; 3x3 heads whose outputs are viewed as (N, 4,
-1) and (N, C + 1, -1), so value-major and then slot, row, column), the default
boxes (sizes outer, then rows, then columns; cxcywh clamped to [0, 1]), the
encoder (matching at IoU > 0.5 with each object's best box forced) and decoder
(score > 0.05, 200 per class, NMS keeping IoU < 0.45, best 200), and the loss
(each image's smooth L1 + hard-negative cross-entropy over its positives, then
the batch mean). Written for these tests; nothing is copied from NVIDIA's code."""

import itertools
import math

import torch
from torch import nn

from tests.torchvision_stand_ins import torchvision

OUT_CHANNELS = {
    "resnet18": (256, 512, 512, 256, 256, 128),
    "resnet34": (256, 512, 512, 256, 256, 256),
    "resnet50": (1024, 512, 512, 256, 256, 256),
    "resnet101": (1024, 512, 512, 256, 256, 256),
    "resnet152": (1024, 512, 512, 256, 256, 256),
}
SLOTS = (4, 6, 6, 6, 4, 4)
FEATURE_SIZES = (38, 19, 10, 5, 3, 1)


def resnet_trunk(classifier: nn.Module) -> nn.Sequential:
    """conv1 ... layer3 of a torchvision ResNet, layer3's first block at stride 1."""
    trunk = nn.Sequential(*list(classifier.children())[:7])
    first = trunk[-1][0]
    first.conv1.stride = (1, 1)  # the basic block's strided conv
    first.conv2.stride = (1, 1)  # the bottleneck's
    first.downsample[0].stride = (1, 1)
    return trunk


class SSD300(nn.Module):
    def __init__(self, backbone: str = "resnet50", num_logits: int = 81):
        super().__init__()
        self.trunk = resnet_trunk(getattr(torchvision.models, backbone)(weights=None))
        channels = OUT_CHANNELS[backbone]
        self.num_logits = num_logits
        blocks = []
        for k, (c_in, c_out, mid) in enumerate(
            zip(channels[:-1], channels[1:], (256, 256, 128, 128, 128))
        ):
            stride, padding = (2, 1) if k < 3 else (1, 0)
            blocks.append(nn.Sequential(
                nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, c_out, 3, stride=stride, padding=padding, bias=False),
                nn.BatchNorm2d(c_out), nn.ReLU(),
            ))  # fmt: skip
        self.additional_blocks = nn.ModuleList(blocks)
        self.loc = nn.ModuleList(nn.Conv2d(c, s * 4, 3, padding=1) for c, s in zip(channels, SLOTS))
        self.conf = nn.ModuleList(
            nn.Conv2d(c, s * num_logits, 3, padding=1) for c, s in zip(channels, SLOTS)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, 300, 300) -> loc (N, 4, 8732), conf (N, C + 1, 8732)."""
        maps = [self.trunk(x)]
        for block in self.additional_blocks:
            maps.append(block(maps[-1]))
        n = x.shape[0]
        loc = torch.cat([head(m).reshape(n, 4, -1) for head, m in zip(self.loc, maps)], 2)
        conf = torch.cat(
            [head(m).reshape(n, self.num_logits, -1) for head, m in zip(self.conf, maps)], 2
        )
        return loc, conf

    def nvidia_state_dict(self) -> dict:
        """The state dict under NVIDIA's names (its trunk is
        ``feature_extractor.feature_extractor``)."""
        return {
            k.replace("trunk.", "feature_extractor.feature_extractor.", 1): v
            for k, v in self.state_dict().items()
        }


def network_input(images) -> torch.Tensor:
    """uint8 (N, H, W, 3) NumPy images -> NVIDIA's input: ImageNet-normalized
    (N, 3, H, W) float64."""
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)
    x = (torch.from_numpy(images).double() / 255 - mean) / std
    return x.permute(0, 3, 1, 2).contiguous()


def default_boxes_xywh() -> torch.Tensor:
    """(8732, 4) float64 cxcywh in NVIDIA's order: map, size slot, row, column."""
    steps, scales = (8, 16, 32, 64, 100, 300), (21, 45, 99, 153, 207, 261, 315)
    ratios = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
    boxes = []
    for k, size in enumerate(FEATURE_SIZES):
        cells = 300 / steps[k]
        s, s_next = scales[k] / 300, scales[k + 1] / 300
        sizes = [(s, s), (math.sqrt(s * s_next),) * 2]
        for r in ratios[k]:
            sizes += [(s * math.sqrt(r), s / math.sqrt(r)), (s / math.sqrt(r), s * math.sqrt(r))]
        for w, h in sizes:
            for i, j in itertools.product(range(size), repeat=2):
                boxes.append(((j + 0.5) / cells, (i + 0.5) / cells, w, h))
    return torch.tensor(boxes, dtype=torch.float64).clamp(0, 1)


def xywh_to_ltrb(boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 4), (M, 4) ltrb -> (N, M)."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def encode(boxes_ltrb: torch.Tensor, labels: torch.Tensor, dboxes: torch.Tensor):
    """One image's objects -> (8732, 4) matched boxes (cxcywh; a default box's
    own for the unmatched) and (8732,) labels (0: background)."""
    overlaps = iou(boxes_ltrb, xywh_to_ltrb(dboxes))  # (objects, 8732)
    best_iou, best_object = overlaps.max(dim=0)
    best_box = overlaps.argmax(dim=1)
    best_iou[best_box] = 2.0
    for k in range(len(boxes_ltrb)):  # the later object wins a shared box
        best_object[best_box[k]] = k
    matched = best_iou > 0.5
    out_labels = torch.zeros(len(dboxes), dtype=torch.long)
    out_labels[matched] = labels[best_object[matched]]
    out = dboxes.clone()
    ltrb = boxes_ltrb[best_object[matched]]
    out[matched] = torch.cat([(ltrb[:, :2] + ltrb[:, 2:]) / 2, ltrb[:, 2:] - ltrb[:, :2]], 1)
    return out, out_labels


def loss(ploc, plabel, gloc, glabel, dboxes):
    """NVIDIA's loss: ploc (N, 4, A), plabel (N, C + 1, A), gloc (N, 4, A) cxcywh
    targets, glabel (N, A)."""
    d = dboxes.T[None]  # (1, 4, A)
    target = torch.cat([10 * (gloc[:, :2] - d[:, :2]) / d[:, 2:],
                        5 * torch.log(gloc[:, 2:] / d[:, 2:])], 1)  # fmt: skip
    positive = glabel > 0
    num_pos = positive.sum(1)
    smooth_l1 = nn.functional.smooth_l1_loss(ploc, target, reduction="none").sum(1)
    loc = (positive * smooth_l1).sum(1)
    ce = nn.functional.cross_entropy(plabel, glabel, reduction="none")  # (N, A)
    ranked = ce.clone().detach()
    ranked[positive] = 0
    rank = ranked.sort(1, descending=True)[1].sort(1)[1]
    negative = rank < torch.clamp(3 * num_pos, max=positive.shape[1])[:, None]
    conf = (ce * (positive | negative)).sum(1)
    per_image = (loc + conf) * (num_pos > 0) / num_pos.clamp(min=1e-6)
    return per_image.mean()


def decode(loc: torch.Tensor, conf: torch.Tensor, dboxes: torch.Tensor):
    """One image: loc (4, A), conf (C + 1, A) -> boxes (K, 4) ltrb, labels, scores."""
    loc = loc.T
    centre = 0.1 * loc[:, :2] * dboxes[:, 2:] + dboxes[:, :2]
    size = torch.exp(0.2 * loc[:, 2:]) * dboxes[:, 2:]
    boxes = xywh_to_ltrb(torch.cat([centre, size], 1))
    probs = torch.softmax(conf.T, -1)
    out_boxes, out_labels, out_scores = [], [], []
    for c in range(1, probs.shape[1]):
        keep = probs[:, c] > 0.05
        cand_boxes, cand_scores = boxes[keep], probs[keep, c]
        order = cand_scores.argsort(descending=True)[:200]
        while len(order):
            best = order[0]
            out_boxes.append(cand_boxes[best])
            out_scores.append(cand_scores[best])
            out_labels.append(c)
            order = order[1:][iou(cand_boxes[order[1:]], cand_boxes[best][None])[:, 0] < 0.45]
    scores = torch.stack(out_scores)
    best = scores.argsort(descending=True)[:200]
    return torch.stack(out_boxes)[best], torch.tensor(out_labels)[best], scores[best]


def ours_from_theirs_order() -> torch.Tensor:
    """(8732,) indices: row ``i`` of our box order (map, row, column, slot) is row
    ``index[i]`` of NVIDIA's (map, slot, row, column)."""
    index, start = [], 0
    for size, slots in zip(FEATURE_SIZES, SLOTS):
        grid = torch.arange(slots * size * size).view(slots, size, size)
        index.append(start + grid.permute(1, 2, 0).reshape(-1))
        start += slots * size * size
    return torch.cat(index)
