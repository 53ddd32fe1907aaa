"""Synthetic shapes: a deterministic detection dataset that needs no download.

Each image has a textured, noisy background with distractor lines and 0 to
``max_objects`` filled shapes (circle, square, triangle, star, hexagon, diamond,
cross, ring) in random colours, sizes from 3% to 90% of the shorter image side,
rotations, overlaps and partial occlusion, and shapes cut by the image border.
Ground truth is the box of each shape's *visible* pixels; a shape less than 40%
visible is not drawn at all, so every drawn shape is labelled.

Example ``i`` depends only on ``(seed, i)``. The dataset serves examples in
memory (:class:`SyntheticShapes`) and writes VOC-style (:func:`write_voc`) or
COCO-style (:func:`write_coco`) folders, which the local readers load back.

Boxes follow the VOC/TFDS pixel convention the readers use: a shape whose visible
pixels span columns c0..c1 and rows r0..r1 (0-based, inclusive) has the box
``(c0 / W, r0 / H, c1 / W, r1 / H)``.
"""

import json
import math
import os
import xml.etree.ElementTree as ET

import cv2
import numpy as np

from ssd_jax.data.example import SkipCounter, make_example

SHAPE_NAMES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "ring")
MIN_VISIBLE_FRACTION = 0.4


def _polygon(name: str, radius: float, angle: float) -> np.ndarray:
    """(K, 2) float vertices around (0, 0)."""
    if name == "star":
        k = np.arange(10)
        r = np.where(k % 2 == 0, radius, radius * 0.45)
        theta = angle + k * math.pi / 5
    elif name == "cross":
        a, b = radius, radius * 0.35
        pts = np.array([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a),
                        (-b, b), (-a, b), (-a, -b), (-b, -b)])  # fmt: skip
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        return pts @ rot.T
    else:
        sides = {"square": 4, "triangle": 3, "hexagon": 6, "diamond": 4}[name]
        theta = angle + np.arange(sides) * 2 * math.pi / sides
        if name == "square":
            theta = theta + math.pi / 4  # axis-aligned before rotation
        r = np.full(sides, radius)
        if name == "diamond":
            r = r * np.where(np.arange(sides) % 2 == 0, 1.0, 0.55)  # elongated rhombus
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)


def _draw_shape(
    mask: np.ndarray, name: str, centre: tuple[float, float], radius: float, angle: float
):
    """Rasterizes shape ``name`` into the uint8 ``mask`` (value 1)."""
    shift = 4  # sub-pixel precision for OpenCV drawing
    scale = 1 << shift
    cx, cy = centre
    if name in ("circle", "ring"):
        c = (round(cx * scale), round(cy * scale))
        cv2.circle(mask, c, round(radius * scale), 1, -1, cv2.LINE_8, shift)
        if name == "ring":
            cv2.circle(mask, c, round(radius * 0.55 * scale), 0, -1, cv2.LINE_8, shift)
        return
    points = _polygon(name, radius, angle) + np.array([cx, cy])
    cv2.fillPoly(mask, [np.round(points * scale).astype(np.int32)], 1, cv2.LINE_8, shift)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth two-colour texture plus distractor lines, float32 (H, W, 3)."""
    colours = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    grid = rng.uniform(0, 1, (int(rng.integers(2, 9)), int(rng.integers(2, 9)))).astype(np.float32)
    field = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)[..., None]
    image = colours[0] + (colours[1] - colours[0]) * field
    for _ in range(int(rng.integers(0, 7))):
        p0 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(image, p0, p1, rng.uniform(0, 255, 3).tolist(), int(rng.integers(1, 4)))
    return image


def _colour(rng: np.random.Generator) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 360), rng.uniform(0.5, 1.0), rng.uniform(0.35, 1.0)]]])
    return cv2.cvtColor(hsv.astype(np.float32), cv2.COLOR_HSV2RGB)[0, 0] * 255


class SyntheticShapes:
    """In-memory synthetic shapes dataset (a :class:`~ssd_jax.data.formats.Source`).

    Args:
      num_images: number of examples.
      num_classes: shape classes used, 1..8 (``SHAPE_NAMES[:num_classes]``).
      image_size: (height, width) in pixels.
      max_objects: at most this many shapes per image.
      seed: dataset seed; example ``i`` depends only on ``(seed, i)``.
      min_size, max_size: shape diameter as a fraction of the shorter side.
    """

    def __init__(
        self,
        num_images: int,
        num_classes: int = 4,
        image_size: tuple[int, int] = (300, 300),
        max_objects: int = 6,
        seed: int = 0,
        min_size: float = 0.03,
        max_size: float = 0.9,
    ):
        if not 1 <= num_classes <= len(SHAPE_NAMES):
            raise ValueError(f"num_classes must be in 1..{len(SHAPE_NAMES)}, got {num_classes}")
        if num_images < 0 or max_objects < 0 or min(image_size) < 16:
            raise ValueError("need num_images >= 0, max_objects >= 0 and images of 16 px or more")
        self.num_images = num_images
        self.class_names = SHAPE_NAMES[:num_classes]
        self.image_size = tuple(image_size)
        self.max_objects = max_objects
        self.seed = seed
        self.size_range = (min_size, max_size)
        self.skipped = SkipCounter()  # nothing is ever skipped; kept for the source interface

    category_ids = None  # labels are the model's own
    annotation_file = None

    def example_ids(self) -> list[str]:
        """The position of each image (the seed, in the configuration, fixes the rest)."""
        return [str(index) for index in range(self.num_images)]

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_images:
            raise IndexError(f"example {index} of a {self.num_images}-image dataset")
        rng = np.random.default_rng((self.seed, index))
        height, width = self.image_size
        image = _background(rng, height, width)

        num_objects = 0 if rng.uniform() < 0.04 else int(rng.integers(1, self.max_objects + 1))
        low, high = self.size_range
        masks, labels, colours = [], [], []
        for _ in range(num_objects):
            label = int(rng.integers(1, len(self.class_names) + 1))
            diameter = math.exp(rng.uniform(math.log(low), math.log(high))) * min(height, width)
            centre = (rng.uniform(0, width), rng.uniform(0, height))
            name, angle = self.class_names[label - 1], rng.uniform(0, 2 * math.pi)
            mask = np.zeros((height, width), np.uint8)
            _draw_shape(mask, name, centre, diameter / 2, angle)
            # the whole shape on a canvas that holds it, for the share that is visible
            pad = round(diameter / 2) + 2
            full = np.zeros((2 * pad, 2 * pad), np.uint8)
            _draw_shape(full, name, (pad, pad), diameter / 2, angle)
            masks.append((mask.astype(bool), max(int(full.sum()), 1)))
            labels.append(label)
            colours.append(_colour(rng))

        # Later shapes cover earlier ones; shapes too hidden (or cut to a sliver by
        # the border) are not drawn, so every visible shape has a box.
        covered = np.zeros((height, width), bool)
        boxes = [None] * num_objects
        for k in reversed(range(num_objects)):
            mask, full_area = masks[k]
            rows, cols = np.nonzero(mask & ~covered)
            if len(rows) < MIN_VISIBLE_FRACTION * full_area or len(rows) == 0:
                continue
            if cols.max() == cols.min() or rows.max() == rows.min():
                continue
            covered |= mask
            boxes[k] = (
                cols.min() / width,
                rows.min() / height,
                cols.max() / width,
                rows.max() / height,
            )
        drawn = [k for k in range(num_objects) if boxes[k] is not None]
        for k in drawn:
            image[masks[k][0]] = colours[k]
        kept_labels = [labels[k] for k in drawn]
        boxes = [boxes[k] for k in drawn]

        image += rng.standard_normal(image.shape, np.float32) * np.float32(rng.uniform(3, 15))
        image = np.clip(image, 0, 255).astype(np.uint8)
        return make_example(
            image, np.array(boxes, np.float32).reshape(-1, 4), kept_labels, index, height, width
        )


def _pixel_corners(example: dict) -> np.ndarray:
    """(N, 4) 0-based inclusive pixel indices of the boxes."""
    scale = np.array([example["width"], example["height"]] * 2, np.float64)
    return np.round(example["boxes"] * scale).astype(int)


def write_voc(root: str, splits: dict[str, SyntheticShapes]) -> None:
    """Writes a VOC-style folder at ``root`` with one image list per split; split
    ``s`` image ``i`` is named ``{s}_{i:06d}``."""
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for split, source in splits.items():
        names = []
        for index in range(len(source)):
            example = source[index]
            name = f"{split}_{index:06d}"
            names.append(name)
            image_file = os.path.join(root, "JPEGImages", f"{name}.jpg")
            cv2.imwrite(
                image_file,
                cv2.cvtColor(example["image"], cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 95],
            )
            annotation = ET.Element("annotation")
            ET.SubElement(annotation, "filename").text = f"{name}.jpg"
            size = ET.SubElement(annotation, "size")
            for key, value in (
                ("width", example["width"]),
                ("height", example["height"]),
                ("depth", 3),
            ):
                ET.SubElement(size, key).text = str(value)
            for label, corners in zip(example["labels"], _pixel_corners(example), strict=True):
                obj = ET.SubElement(annotation, "object")
                ET.SubElement(obj, "name").text = source.class_names[label - 1]
                ET.SubElement(obj, "difficult").text = "0"
                bndbox = ET.SubElement(obj, "bndbox")
                for key, value in zip(("xmin", "ymin", "xmax", "ymax"), corners + 1, strict=True):
                    ET.SubElement(bndbox, key).text = str(value)  # devkit pixels are 1-based
            ET.ElementTree(annotation).write(os.path.join(root, "Annotations", f"{name}.xml"))
        with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("".join(f"{name}\n" for name in names))


def write_coco(annotation_file: str, image_dir: str, source: SyntheticShapes) -> None:
    """Writes ``source`` as a COCO-style JSON and image folder. Category ids are
    1, 3, 5, ... and image ids 1000 + index, so readers must map both."""
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(annotation_file)), exist_ok=True)
    categories = [{"id": 2 * k + 1, "name": name} for k, name in enumerate(source.class_names)]
    images, annotations = [], []
    for index in range(len(source)):
        example = source[index]
        file_name = f"{index:06d}.jpg"
        image_id = 1000 + index
        cv2.imwrite(
            os.path.join(image_dir, file_name),
            cv2.cvtColor(example["image"], cv2.COLOR_RGB2BGR),
            [cv2.IMWRITE_JPEG_QUALITY, 95],
        )
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": int(example["width"]),
                "height": int(example["height"]),
            }
        )
        for label, (x0, y0, x1, y1) in zip(example["labels"], _pixel_corners(example), strict=True):
            w, h = int(x1 - x0), int(y1 - y0)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 2 * int(label) - 1,
                "bbox": [int(x0), int(y0), w, h], "area": w * h, "iscrowd": 0,
            })  # fmt: skip
    with open(annotation_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def write_yolo(root: str, splits: dict[str, SyntheticShapes]) -> str:
    """Writes a YOLO-format dataset at ``root`` (:mod:`ssd_jax.data.yolo`): split
    ``s`` image ``i`` as ``images/s/{i:06d}.jpg`` with ``labels/s/{i:06d}.txt``
    (boxes to 6 decimals), and ``data.yaml`` naming the classes; returns its path."""
    names = next(iter(splits.values())).class_names
    for split, source in splits.items():
        for sub in ("images", "labels"):
            os.makedirs(os.path.join(root, sub, split), exist_ok=True)
        for index in range(len(source)):
            example = source[index]
            cv2.imwrite(os.path.join(root, "images", split, f"{index:06d}.jpg"),
                        cv2.cvtColor(example["image"], cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])  # fmt: skip
            xyxy = np.asarray(example["boxes"], np.float64)
            cxcywh = np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)
            lines = [f"{label - 1} " + " ".join(f"{v:.6f}" for v in box) + "\n"
                     for label, box in zip(example["labels"], cxcywh, strict=True)]  # fmt: skip
            with open(os.path.join(root, "labels", split, f"{index:06d}.txt"), "w") as file:
                file.writelines(lines)
    path = os.path.join(root, "data.yaml")
    with open(path, "w") as file:
        file.write("path: .\n" + "".join(f"{s}: images/{s}\n" for s in splits))
        file.write("names:\n" + "".join(f"  {k}: {name}\n" for k, name in enumerate(names)))
    return path
