"""Slow, obviously-correct NumPy loop implementations the JAX code is tested against.

Written from the paper's description (and the shared reference study), one box at
a time in float64, sharing no code with ``ssd_jax``.
"""

import math

import numpy as np


def iou(a, b):
    """IoU of two xyxy boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def to_xyxy(box_cxcywh):
    cx, cy, w, h = box_cxcywh
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def encode(box_xyxy, default_cxcywh, variances=(0.1, 0.1, 0.2, 0.2)):
    gx1, gy1, gx2, gy2 = (float(v) for v in box_xyxy)
    gcx, gcy, gw, gh = (gx1 + gx2) / 2, (gy1 + gy2) / 2, gx2 - gx1, gy2 - gy1
    dcx, dcy, dw, dh = (float(v) for v in default_cxcywh)
    return (
        (gcx - dcx) / dw / variances[0],
        (gcy - dcy) / dh / variances[1],
        math.log(gw / dw) / variances[2],
        math.log(gh / dh) / variances[3],
    )


def decode(deltas, default_cxcywh, variances=(0.1, 0.1, 0.2, 0.2)):
    dcx, dcy, dw, dh = (float(v) for v in default_cxcywh)
    cx = dcx + deltas[0] * variances[0] * dw
    cy = dcy + deltas[1] * variances[1] * dh
    w = dw * math.exp(deltas[2] * variances[2])
    h = dh * math.exp(deltas[3] * variances[3])
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def match(gt_boxes, gt_labels, gt_mask, defaults, threshold=0.5):
    """Per-image matching: labels (A,), deltas (A, 4)."""
    num_defaults = len(defaults)
    default_xyxy = [to_xyxy(d) for d in defaults]
    gts = [m for m in range(len(gt_boxes)) if gt_mask[m]]
    gts = [
        m for m in gts if (gt_boxes[m][2] - gt_boxes[m][0]) * (gt_boxes[m][3] - gt_boxes[m][1]) > 0
    ]
    labels = np.zeros(num_defaults, np.int64)
    deltas = np.zeros((num_defaults, 4))
    if not gts:
        return labels, deltas
    overlaps = np.array([[iou(gt_boxes[m], d) for d in default_xyxy] for m in gts])
    matched = {}
    for a in range(num_defaults):
        best = int(np.argmax(overlaps[:, a]))  # first maximum
        if overlaps[best, a] >= threshold:
            matched[a] = gts[best]
    for row, m in enumerate(gts):  # later ground truth overwrites earlier
        matched[int(np.argmax(overlaps[row]))] = m
    for a, m in matched.items():
        labels[a] = gt_labels[m]
        deltas[a] = encode(gt_boxes[m], defaults[a])
    return labels, deltas


def log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max()
    return shifted - math.log(np.exp(shifted).sum())


def smooth_l1(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def multibox_loss(loc, conf, labels, deltas, neg_pos_ratio=3.0, alpha=1.0):
    """(loss, loc_loss, conf_loss, num_pos) by loops over images and boxes."""
    total_pos = int((np.asarray(labels) > 0).sum())
    n = max(total_pos, 1)
    loc_sum = conf_sum = 0.0
    for b in range(len(labels)):
        ce = [-log_softmax(conf[b][a])[labels[b][a]] for a in range(len(labels[b]))]
        positives = [a for a in range(len(labels[b])) if labels[b][a] > 0]
        negatives = [a for a in range(len(labels[b])) if labels[b][a] == 0]
        for a in positives:
            loc_sum += sum(
                smooth_l1(float(loc[b][a][i]) - float(deltas[b][a][i])) for i in range(4)
            )
            conf_sum += ce[a]
        num_neg = min(math.floor(neg_pos_ratio * len(positives)), len(negatives))
        # hardest first; ties go to the lower index (sorted() is stable)
        hardest = sorted(negatives, key=lambda a: -ce[a])[:num_neg]
        conf_sum += sum(ce[a] for a in hardest)
    loc_loss, conf_loss = loc_sum / n, conf_sum / n
    return conf_loss + alpha * loc_loss, loc_loss, conf_loss, total_pos


def nms(boxes, scores, iou_threshold):
    """Greedy NMS over boxes sorted by score; returns kept positions."""
    keep = []
    for i in range(len(boxes)):
        if all(iou(boxes[i], boxes[j]) <= iou_threshold for j in keep):
            keep.append(i)
    return keep


def detect(loc, conf, defaults, score_threshold, iou_threshold, top_k, max_detections):
    """Per-image list of (score, class, box_xyxy) rows, best first."""
    results = []
    for b in range(len(loc)):
        probs = np.array([np.exp(log_softmax(c)) for c in conf[b]])
        boxes = [decode(loc[b][a], defaults[a]) for a in range(len(defaults))]
        rows = []
        for c in range(1, probs.shape[1]):
            order = sorted(range(len(defaults)), key=lambda a: -probs[a, c])[:top_k]
            order = [a for a in order if probs[a, c] > score_threshold]
            kept = nms([boxes[a] for a in order], None, iou_threshold)
            rows += [(probs[order[k], c], c, boxes[order[k]]) for k in kept]
        rows = sorted(rows, key=lambda r: -r[0])[:max_detections]  # stable: class order on ties
        results.append(rows)
    return results
