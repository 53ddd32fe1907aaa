"""The PyTorch models whose weights ssd_jax imports, rebuilt in plain torch with
the exact module names (so state-dict keys) and forward passes of each project:

- jjjkkkjjj/pytorch_SSD ``SSD300``/``SSD512`` (``feature_layers.convRL1_1.conv``,
  ``convBnRL*`` with BN, ``addon_layers.addon_1.scales``, background-last logits);
- amdegroot/ssd.pytorch ``SSD`` (``vgg.N``, ``L2Norm.weight``, ``extras.N``,
  ``loc.N``, ``conf.N``; BGR input minus (104, 117, 123));
- torchvision ``ssd300_vgg16`` (``backbone.features``, ``backbone.extra``,
  ``backbone.scale_weight``, ``head.*_head.module_list``);
- torchvision ``vgg16`` / ``vgg16_bn`` and ssd.pytorch's ``vgg16_reducedfc``.

``width`` scales every channel count (as ``ssd_jax.models.vgg.scale_channels``)
so that the equivalence tests can run small models; 1.0 is the real network.
Each ``forward`` returns the raw head outputs in the project's own layout.
"""

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch idiom)
from torch import nn

VGG_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512)
EXTRAS = {  # (reduced, out, kernel, stride, padding) per extra layer
    "ssd300": ((256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 1, 0), (128, 256, 3, 1, 0)),
    "ssd512": ((256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 2, 1),
               (128, 256, 4, 1, 1)),
}  # fmt: skip
BOXES = {"ssd300": (4, 6, 6, 6, 4, 4), "ssd512": (4, 6, 6, 6, 6, 4, 4)}


def ch(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def vgg_layers(width: float, batch_norm: bool = False) -> list[nn.Module]:
    """torchvision's ``vgg16(_bn).features`` layer list ('C': ceil-mode pool, as SSD patches)."""
    layers, c_in = [], 3
    for v in VGG_CFG:
        if v in ("M", "C"):
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=v == "C"))
            continue
        layers.append(nn.Conv2d(c_in, ch(v, width), 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(ch(v, width)))
        layers.append(nn.ReLU(inplace=True))
        c_in = ch(v, width)
    layers.append(nn.MaxPool2d(2, 2))
    return layers


def randomize_batch_norm(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = 0.1 * torch.randn(n, generator=g)
            m.running_mean.data = 0.1 * torch.randn(n, generator=g)
            m.running_var.data = 0.5 + torch.rand(n, generator=g)


class TorchvisionVGG16(nn.Module):
    """torchvision ``vgg16`` / ``vgg16_bn`` (``features.N``, ``classifier.0/3/6``)."""

    def __init__(self, batch_norm: bool = False):
        super().__init__()
        self.features = nn.Sequential(*vgg_layers(1.0, batch_norm))
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 1000),
        )  # fmt: skip


# --- jjjkkkjjj/pytorch_SSD ---------------------------------------------------------


class ConvRelu(nn.Module):
    def __init__(self, c_in, c_out, kernel, batch_norm, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, **kwargs)
        self.relu = nn.ReLU(inplace=True)
        self.bn = nn.BatchNorm2d(c_out) if batch_norm else None

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.relu(x)


class PytorchSSDL2Norm(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.scales = nn.Parameter(torch.full((channels,), 20.0))

    def forward(self, x):
        return F.normalize(x, p=2, dim=1) * self.scales.view(1, -1, 1, 1)


class PytorchSSD(nn.Module):
    """pytorch_SSD's SSD300/SSD512: forward -> (loc (B, D, 4), conf (B, D, C + 1),
    background last)."""

    def __init__(self, architecture, num_classes, batch_norm=False, width=1.0,
                 conv11_2_bn=False):  # fmt: skip
        super().__init__()
        self.num_classes = num_classes
        layers, c_in, block, index, sources = OrderedDict(), 3, 1, 1, []

        def name(postfix, bn):
            return f"convBnRL{postfix}" if bn else f"convRL{postfix}"

        for v in VGG_CFG:
            if v in ("M", "C"):
                layers[f"pool{block}"] = nn.MaxPool2d(2, 2, ceil_mode=v == "C")
                block, index = block + 1, 1
                continue
            layers[name(f"{block}_{index}", batch_norm)] = ConvRelu(
                c_in, ch(v, width), 3, batch_norm, padding=1
            )
            c_in, index = ch(v, width), index + 1
        sources.append(name("4_3", batch_norm))
        layers["pool5"] = nn.MaxPool2d(3, 1, 1)
        layers[name("6", batch_norm)] = ConvRelu(
            c_in, ch(1024, width), 3, batch_norm, padding=6, dilation=6
        )
        layers[name("7", batch_norm)] = ConvRelu(ch(1024, width), ch(1024, width), 1, batch_norm)
        sources.append(name("7", batch_norm))
        c_in = ch(1024, width)
        for k, (reduced, out, kernel, stride, padding) in enumerate(EXTRAS[architecture], start=8):
            layers[name(f"{k}_1", batch_norm)] = ConvRelu(c_in, ch(reduced, width), 1, batch_norm)
            # pytorch_SSD builds conv11_2 of SSD300 without BN (conv11_2_bn: with, as ours)
            bn = batch_norm and (conv11_2_bn or not (architecture == "ssd300" and k == 11))
            layers[name(f"{k}_2", bn)] = ConvRelu(
                ch(reduced, width), ch(out, width), kernel, bn, stride=stride, padding=padding
            )
            sources.append(name(f"{k}_2", bn))
            c_in = ch(out, width)
        self.feature_layers = nn.ModuleDict(layers)
        self.sources = sources
        self.addon_layers = nn.ModuleDict({"addon_1": PytorchSSDL2Norm(ch(512, width))})
        in_channels = [ch(512, width), ch(1024, width)] + [
            ch(e[1], width) for e in EXTRAS[architecture]
        ]
        boxes = BOXES[architecture]
        self.localization_layers = nn.ModuleDict({
            f"conv_loc_{k + 1}": nn.Conv2d(c, a * 4, 3, padding=1)
            for k, (c, a) in enumerate(zip(in_channels, boxes))
        })  # fmt: skip
        self.confidence_layers = nn.ModuleDict({
            f"conv_conf_{k + 1}": nn.Conv2d(c, a * (num_classes + 1), 3, padding=1)
            for k, (c, a) in enumerate(zip(in_channels, boxes))
        })  # fmt: skip

    def forward(self, x):
        sources = []
        for layer_name, layer in self.feature_layers.items():
            x = layer(x)
            if layer_name == self.sources[0]:
                sources.append(self.addon_layers["addon_1"](x))
            elif layer_name in self.sources:
                sources.append(x)
        b = x.shape[0]
        loc = [h(s).permute(0, 2, 3, 1).reshape(b, -1) for h, s in
               zip(self.localization_layers.values(), sources)]  # fmt: skip
        conf = [h(s).permute(0, 2, 3, 1).reshape(b, -1) for h, s in
                zip(self.confidence_layers.values(), sources)]  # fmt: skip
        return torch.cat(loc, 1).reshape(b, -1, 4), torch.cat(conf, 1).reshape(
            b, -1, self.num_classes + 1
        )


# --- amdegroot/ssd.pytorch ---------------------------------------------------------


def ssd_pytorch_vgg(width: float) -> list[nn.Module]:
    """ssd.pytorch's ``vgg(base['300'], 3)``: VGG16 to conv5_3, pool5, conv6, conv7."""
    layers = vgg_layers(width)[:-1]  # without the last pool
    c5 = ch(512, width)
    return [*layers, nn.MaxPool2d(3, 1, 1),
            nn.Conv2d(c5, ch(1024, width), 3, padding=6, dilation=6), nn.ReLU(inplace=True),
            nn.Conv2d(ch(1024, width), ch(1024, width), 1), nn.ReLU(inplace=True)]  # fmt: skip


class SsdPytorchL2Norm(nn.Module):
    def __init__(self, channels, scale=20.0):
        super().__init__()
        self.eps = 1e-10
        self.weight = nn.Parameter(torch.full((channels,), scale))

    def forward(self, x):
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return self.weight.view(1, -1, 1, 1) * (x / norm)


class SsdPytorchSSD(nn.Module):
    """ssd.pytorch's SSD300 in 'train' phase: forward -> (loc (B, D, 4), conf (B, D, C + 1))."""

    def __init__(self, num_classes, width=1.0):
        super().__init__()
        self.num_classes = num_classes
        self.vgg = nn.ModuleList(ssd_pytorch_vgg(width))
        self.L2Norm = SsdPytorchL2Norm(ch(512, width))
        extras, c_in = [], ch(1024, width)
        for reduced, out, kernel, stride, padding in EXTRAS["ssd300"]:
            extras += [nn.Conv2d(c_in, ch(reduced, width), 1),
                       nn.Conv2d(ch(reduced, width), ch(out, width), kernel, stride, padding)]  # fmt: skip
            c_in = ch(out, width)
        self.extras = nn.ModuleList(extras)
        in_channels = [ch(512, width), ch(1024, width)] + [
            ch(e[1], width) for e in EXTRAS["ssd300"]
        ]
        self.loc = nn.ModuleList(
            nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(in_channels, BOXES["ssd300"])
        )
        self.conf = nn.ModuleList(
            nn.Conv2d(c, a * (num_classes + 1), 3, padding=1)
            for c, a in zip(in_channels, BOXES["ssd300"])
        )

    def forward(self, x):
        sources = []
        for k in range(23):
            x = self.vgg[k](x)
        sources.append(self.L2Norm(x))
        for k in range(23, len(self.vgg)):
            x = self.vgg[k](x)
        sources.append(x)
        for k, v in enumerate(self.extras):
            x = F.relu(v(x), inplace=True)
            if k % 2 == 1:
                sources.append(x)
        b = x.shape[0]
        loc = torch.cat(
            [l(s).permute(0, 2, 3, 1).reshape(b, -1) for s, l in zip(sources, self.loc)], 1
        )
        conf = torch.cat(
            [c(s).permute(0, 2, 3, 1).reshape(b, -1) for s, c in zip(sources, self.conf)], 1
        )
        return loc.view(b, -1, 4), conf.view(b, -1, self.num_classes + 1)


# --- torchvision ssd300_vgg16 ------------------------------------------------------


class TorchvisionSSDBackbone(nn.Module):
    """torchvision's ``SSDFeatureExtractorVGG`` (highres=False) around vgg16.features."""

    def __init__(self, width=1.0):
        super().__init__()
        backbone = vgg_layers(width)
        pools = [i for i, layer in enumerate(backbone) if isinstance(layer, nn.MaxPool2d)]
        maxpool4 = pools[3]
        self.scale_weight = nn.Parameter(torch.ones(ch(512, width)) * 20)
        self.features = nn.Sequential(*backbone[:maxpool4])
        c_in, extra = ch(1024, width), []
        for reduced, out, kernel, stride, padding in EXTRAS["ssd300"]:
            extra.append(nn.Sequential(
                nn.Conv2d(c_in, ch(reduced, width), 1), nn.ReLU(inplace=True),
                nn.Conv2d(ch(reduced, width), ch(out, width), kernel, stride, padding),
                nn.ReLU(inplace=True),
            ))  # fmt: skip
            c_in = ch(out, width)
        fc = nn.Sequential(
            nn.MaxPool2d(3, 1, 1),
            nn.Conv2d(ch(512, width), ch(1024, width), 3, padding=6, dilation=6),
            nn.ReLU(inplace=True),
            nn.Conv2d(ch(1024, width), ch(1024, width), 1),
            nn.ReLU(inplace=True),
        )
        extra.insert(0, nn.Sequential(*backbone[maxpool4:-1], fc))
        self.extra = nn.ModuleList(extra)

    def forward(self, x):
        x = self.features(x)
        output = [self.scale_weight.view(1, -1, 1, 1) * F.normalize(x)]
        for block in self.extra:
            x = block(x)
            output.append(x)
        return output


class TorchvisionHead(nn.Module):
    def __init__(self, in_channels, boxes, k):
        super().__init__()
        self.k = k
        self.module_list = nn.ModuleList(
            nn.Conv2d(c, a * k, 3, padding=1) for c, a in zip(in_channels, boxes)
        )

    def forward(self, features):
        out = []
        for f, module in zip(features, self.module_list):
            r = module(f)
            n, _, h, w = r.shape
            out.append(r.view(n, -1, self.k, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, self.k))
        return torch.cat(out, 1)


class TorchvisionSSDHead(nn.Module):
    def __init__(self, in_channels, boxes, num_classes):
        super().__init__()
        self.classification_head = TorchvisionHead(in_channels, boxes, num_classes)
        self.regression_head = TorchvisionHead(in_channels, boxes, 4)


class TorchvisionSSD300(nn.Module):
    """torchvision ``ssd300_vgg16`` network: forward -> (bbox_regression (B, D, 4),
    cls_logits (B, D, 91)); ``num_classes`` counts the background, as torchvision does."""

    def __init__(self, num_classes=91, width=1.0):
        super().__init__()
        self.backbone = TorchvisionSSDBackbone(width)
        in_channels = [ch(512, width), ch(1024, width)] + [
            ch(e[1], width) for e in EXTRAS["ssd300"]
        ]
        self.head = TorchvisionSSDHead(in_channels, BOXES["ssd300"], num_classes)

    def forward(self, x):
        features = self.backbone(x)
        return self.head.regression_head(features), self.head.classification_head(features)


# --- pytorch_SSD's training computation ------------------------------------------


def iou_xyxy_cxcywh(boxes_xyxy, defaults_cxcywh):
    """IoU (n, D) of ground-truth boxes (n, 4) xyxy and default boxes (D, 4) cxcywh."""
    d = defaults_cxcywh
    d_xyxy = torch.cat([d[:, :2] - d[:, 2:] / 2, d[:, :2] + d[:, 2:] / 2], 1)
    lt = torch.max(boxes_xyxy[:, None, :2], d_xyxy[None, :, :2])
    rb = torch.min(boxes_xyxy[:, None, 2:], d_xyxy[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_b = (boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]).prod(-1)
    area_d = (d_xyxy[:, 2:] - d_xyxy[:, :2]).prod(-1)
    return inter / (area_b[:, None] + area_d[None] - inter)


def pytorch_ssd_match(gt_xyxy, labels, dboxes_cxcywh, num_classes, threshold=0.5):
    """pytorch_SSD's ``matching_strategy`` for one image (study §5): each default
    box takes its best-IoU object; each object forces its best default box (the
    later object wins a shared one); positives have IoU > threshold (strict).
    Returns pos (D,) bool, loc targets (D, 4) (variances 0.1/0.2) and class
    targets (D,) in 0..C-1 for objects, C (the LAST index) for background."""
    d = dboxes_cxcywh
    overlaps = iou_xyxy_cxcywh(gt_xyxy, d)  # (n, D)
    best_iou, obj_idx = overlaps.max(dim=0)
    best_dbox = overlaps.max(dim=1).indices
    for obj, dbox in enumerate(best_dbox.tolist()):
        obj_idx[dbox] = obj
    best_iou[best_dbox] = threshold + 1
    pos = best_iou > threshold
    g = gt_xyxy[obj_idx]
    g_cxcywh = torch.cat([(g[:, :2] + g[:, 2:]) / 2, g[:, 2:] - g[:, :2]], 1)
    loc = torch.cat([(g_cxcywh[:, :2] - d[:, :2]) / d[:, 2:] / 0.1,
                     torch.log(g_cxcywh[:, 2:] / d[:, 2:]) / 0.2], 1)  # fmt: skip
    classes = torch.where(pos, labels[obj_idx] - 1, torch.full_like(obj_idx, num_classes))
    return pos, loc, classes


def pytorch_ssd_loss(loc, conf, pos, loc_t, classes, neg_factor=3):
    """pytorch_SSD's ``SSDLoss`` (study §6), conf + loc: smooth L1 over positives
    and softmax cross-entropy over positives and per-image hard negatives (the
    3 x positives with the largest background loss, background LAST), both divided
    by the batch's number of positives."""
    n = pos.sum()
    loc_loss = F.smooth_l1_loss(loc[pos], loc_t[pos], reduction="sum") / n
    bg_loss = -torch.log_softmax(conf, -1)[..., -1].detach()
    bg_loss[pos] = -float("inf")
    pos_num = pos.sum(1)
    neg_num = torch.minimum(pos.shape[1] - pos_num, neg_factor * pos_num)
    rank = bg_loss.argsort(1, descending=True).argsort(1)
    mask = pos | (rank < neg_num[:, None])
    conf_loss = F.cross_entropy(conf[mask], classes[mask], reduction="sum") / n
    return conf_loss + loc_loss


def imagenet_input(images):
    """uint8 (B, H, W, 3) RGB -> pytorch_SSD's input: /255, ImageNet mean/std, NCHW."""
    x = images.astype(np.float64) / 255
    x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


# --- ssd.pytorch's training computation --------------------------------------------


def ssd_pytorch_match(truths_xyxy, labels, priors_cxcywh, threshold=0.5):
    """ssd.pytorch's ``match`` (layers/box_utils.py), rebuilt from its documented
    algorithm: each prior takes its best-IoU truth; each truth forces its best prior
    (overlap set to 2; the later truth wins a shared one); priors below the
    threshold are background (so positives have IoU >= threshold). Returns class
    targets (D,) with 0 for background (labels 1..C) and loc targets (D, 4)."""
    p = priors_cxcywh
    overlaps = iou_xyxy_cxcywh(truths_xyxy, p)  # (n, D)
    best_prior = overlaps.max(1).indices
    best_overlap, best_truth = overlaps.max(0)
    best_overlap[best_prior] = 2
    for j, prior in enumerate(best_prior.tolist()):
        best_truth[prior] = j
    classes = labels[best_truth].clone()
    classes[best_overlap < threshold] = 0
    g = truths_xyxy[best_truth]
    centre = ((g[:, :2] + g[:, 2:]) / 2 - p[:, :2]) / (0.1 * p[:, 2:])
    size = torch.log((g[:, 2:] - g[:, :2]) / p[:, 2:]) / 0.2
    return classes, torch.cat([centre, size], 1)


def ssd_pytorch_loss(loc, conf, classes, loc_t, negpos_ratio=3):
    """ssd.pytorch's ``MultiBoxLoss``: smooth L1 over positives; softmax
    cross-entropy over positives and, per image, the negatives with the largest
    cross-entropy against their target (background; positives' set to 0), at most
    3 per positive and fewer than the number of priors; both summed and divided by
    the batch's number of positives."""
    pos = classes > 0
    n = pos.sum()
    loss_l = F.smooth_l1_loss(loc[pos], loc_t[pos], reduction="sum")
    loss_c = (torch.logsumexp(conf, -1) - conf.gather(-1, classes[..., None])[..., 0]).detach()
    loss_c[pos] = 0
    rank = loss_c.argsort(1, descending=True).argsort(1)
    num_neg = torch.clamp(negpos_ratio * pos.sum(1, keepdim=True), max=pos.shape[1] - 1)
    mask = pos | (rank < num_neg)
    return (loss_l + F.cross_entropy(conf[mask], classes[mask], reduction="sum")) / n


def caffe_bgr_input(images):
    """uint8 (B, H, W, 3) RGB -> ssd.pytorch's input: BGR minus (104, 117, 123), NCHW."""
    x = images[..., ::-1].astype(np.float64) - np.array([104.0, 117.0, 123.0])
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
