"""Default boxes (called priors or anchors in other SSD code; this project says default boxes).

A :class:`DefaultBoxSpec` describes them; :func:`generate` returns the ``(A, 4)``
float32 array of cxcywh boxes, normalized to [0, 1], in the order the SSD heads
predict them: feature map, then row y, then column x, then box slot. The slots at
one location are::

    (s, s), (s', s'), then for each aspect ratio r: (s*sqrt(r), s/sqrt(r)), (s/sqrt(r), s*sqrt(r))

with ``s = min_size / image_size`` and ``s' = sqrt(min_size * max_size) / image_size``.

Presets (:func:`preset`):

* ``ssd300``, ``ssd512``: the paper / original Caffe values (step-based centres,
  no clipping). 8732 and 24564 boxes.
* ``ssd300_pytorch_ssd``, ``ssd512_pytorch_ssd``: exactly the boxes of the PyTorch
  project jjjkkkjjj/pytorch_SSD (centres ``(i + 0.5) / map_size``, linear scales
  with the last ``s'`` extrapolated past ``s_max``, and cx, cy, w, h each clamped to
  [0, 1]); needed to run detectors trained with it.
* ``ssd300_ssd_pytorch``: the paper's SSD300 boxes clipped in cxcywh, as
  amdegroot/ssd.pytorch builds them (``ssd300_ssd_pytorch_coco``: its COCO sizes).
* ``ssd300_torchvision``: torchvision's ``ssd300_vgg16`` boxes.
* ``ssd300_nvidia``: NVIDIA's SSD300 v1.1 boxes (equal to ``ssd300_ssd_pytorch_coco``).
* ``ssdlite320``: torchvision's ``ssdlite320_mobilenet_v3_large`` boxes.

:data:`PRESETS` holds them all; ``model.default_boxes`` names one ('': the
architecture's own).
"""

import dataclasses
import math

import numpy as np

CLIP_MODES = ("none", "cxcywh", "wh")


@dataclasses.dataclass(frozen=True)
class DefaultBoxSpec:
    """Layout of the default boxes of one SSD model.

    Attributes:
      image_size: side of the square network input, in pixels.
      feature_map_sizes: side of each square source feature map, in head order.
      min_sizes: per map, the box size s in pixels.
      max_sizes: per map, the size used with min_size for the extra square box s'.
      aspect_ratios: per map, the ratios r != 1; each adds the boxes r and 1/r.
      steps: per map, the pixel distance between box centres, so centres are
        ``(i + 0.5) * step / image_size``; ``None`` puts them at ``(i + 0.5) / map_size``.
      clip: ``"none"``; ``"cxcywh"`` to clamp each of cx, cy, w, h to [0, 1]
        (pytorch_SSD, ssd.pytorch); ``"wh"`` to clamp only w and h (torchvision,
        whose centres may lie beyond 1 when map_size * step > image_size).
    """

    image_size: int
    feature_map_sizes: tuple[int, ...]
    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    aspect_ratios: tuple[tuple[float, ...], ...]
    steps: tuple[float, ...] | None = None
    clip: str = "none"

    def __post_init__(self) -> None:
        num_maps = len(self.feature_map_sizes)
        per_map = {"min_sizes": self.min_sizes, "max_sizes": self.max_sizes}
        per_map["aspect_ratios"] = self.aspect_ratios
        if self.steps is not None:
            per_map["steps"] = self.steps
        for name, values in per_map.items():
            if len(values) != num_maps:
                raise ValueError(
                    f"DefaultBoxSpec.{name} has {len(values)} entries but there are "
                    f"{num_maps} feature maps"
                )
        if self.image_size <= 0 or any(size <= 0 for size in self.feature_map_sizes):
            raise ValueError("DefaultBoxSpec image_size and feature_map_sizes must be positive")
        if any(size <= 0 for size in (*self.min_sizes, *self.max_sizes)):
            raise ValueError("DefaultBoxSpec min_sizes and max_sizes must be positive")
        for ratios in self.aspect_ratios:
            if any(r <= 0 or r == 1 for r in ratios):
                raise ValueError(
                    f"DefaultBoxSpec.aspect_ratios {ratios}: ratios must be positive and not 1 "
                    "(the two square boxes are always present)"
                )
        if self.clip not in CLIP_MODES:
            raise ValueError(f"DefaultBoxSpec.clip={self.clip!r}; expected one of {CLIP_MODES}")

    @property
    def boxes_per_location(self) -> tuple[int, ...]:
        """Number of box slots at each location of each feature map."""
        return tuple(2 + 2 * len(ratios) for ratios in self.aspect_ratios)

    @property
    def num_boxes(self) -> int:
        """Total number of default boxes A."""
        return sum(
            size * size * slots
            for size, slots in zip(self.feature_map_sizes, self.boxes_per_location, strict=True)
        )


def _slot_sizes(min_size: float, max_size: float, ratios: tuple[float, ...]) -> np.ndarray:
    """(slots, 2) float64 box (w, h) in pixels for one location."""
    extra = math.sqrt(min_size * max_size)
    sizes = [(min_size, min_size), (extra, extra)]
    for r in ratios:
        sizes += [(min_size * math.sqrt(r), min_size / math.sqrt(r))]
        sizes += [(min_size / math.sqrt(r), min_size * math.sqrt(r))]
    return np.array(sizes, np.float64)


def generate(spec: DefaultBoxSpec) -> np.ndarray:
    """All default boxes of ``spec``: (A, 4) float32 cxcywh, normalized.

    Ordered by feature map, then row y, then column x, then slot: the same order
    as the NHWC-flattened head outputs of :class:`ssd_jax.models.SSD`.
    """
    per_map = []
    for k, map_size in enumerate(spec.feature_map_sizes):
        cells_per_side = map_size if spec.steps is None else spec.image_size / spec.steps[k]
        centres = (np.arange(map_size, dtype=np.float64) + 0.5) / cells_per_side
        cy, cx = np.meshgrid(centres, centres, indexing="ij")  # (map, map): y outer, x inner
        sizes = _slot_sizes(spec.min_sizes[k], spec.max_sizes[k], spec.aspect_ratios[k])
        sizes = sizes / spec.image_size
        num_slots = len(sizes)
        boxes = np.empty((map_size, map_size, num_slots, 4), np.float64)
        boxes[..., 0] = cx[:, :, None]
        boxes[..., 1] = cy[:, :, None]
        boxes[..., 2:] = sizes
        per_map.append(boxes.reshape(-1, 4))
    boxes = np.concatenate(per_map)
    if spec.clip == "wh":
        boxes[:, 2:] = np.clip(boxes[:, 2:], 0.0, 1.0)
    elif spec.clip == "cxcywh":
        boxes = np.clip(boxes, 0.0, 1.0)
    return boxes.astype(np.float32)


def location_slice(spec: DefaultBoxSpec, feature_map: int, row: int, col: int) -> slice:
    """The rows of :func:`generate` (and of the head outputs) that hold the default
    boxes centred at cell (``row``, ``col``) of source feature map ``feature_map``."""
    size = spec.feature_map_sizes[feature_map]
    if not (0 <= row < size and 0 <= col < size):
        raise ValueError(f"cell ({row}, {col}) is outside feature map {feature_map} ({size}²)")
    slots = spec.boxes_per_location
    earlier = zip(spec.feature_map_sizes[:feature_map], slots, strict=False)
    start = sum(n * n * k for n, k in earlier)
    start += (row * size + col) * slots[feature_map]
    return slice(start, start + slots[feature_map])


def _pytorch_ssd_spec(
    image_size: int,
    feature_map_sizes: tuple[int, ...],
    first_scale: float,
    scale_range: tuple[float, float],
    aspect_ratios: tuple[tuple[float, ...], ...],
) -> DefaultBoxSpec:
    """pytorch_SSD's scales: s_0 = first_scale, then linear over scale_range,
    with s'_k = s_{k+1} (extrapolated for the last map)."""
    s_min, s_max = scale_range
    num_linear = len(feature_map_sizes) - 1
    linear = [s_min + (s_max - s_min) * j / (num_linear - 1) for j in range(num_linear + 1)]
    scales = [first_scale, *linear]  # one more than the maps: the last s'
    return DefaultBoxSpec(
        image_size=image_size,
        feature_map_sizes=feature_map_sizes,
        min_sizes=tuple(s * image_size for s in scales[:-1]),
        max_sizes=tuple(s * image_size for s in scales[1:]),
        aspect_ratios=aspect_ratios,
        steps=None,
        clip="cxcywh",
    )


_SSD300_RATIOS = ((2.0,), (2.0, 3.0), (2.0, 3.0), (2.0, 3.0), (2.0,), (2.0,))
_SSD512_RATIOS = ((2.0,), (2.0, 3.0), (2.0, 3.0), (2.0, 3.0), (2.0, 3.0), (2.0,), (2.0,))

PRESETS: dict[str, DefaultBoxSpec] = {
    "ssd300": DefaultBoxSpec(
        image_size=300,
        feature_map_sizes=(38, 19, 10, 5, 3, 1),
        min_sizes=(30.0, 60.0, 111.0, 162.0, 213.0, 264.0),
        max_sizes=(60.0, 111.0, 162.0, 213.0, 264.0, 315.0),
        aspect_ratios=_SSD300_RATIOS,
        steps=(8.0, 16.0, 32.0, 64.0, 100.0, 300.0),
    ),
    "ssd512": DefaultBoxSpec(
        image_size=512,
        feature_map_sizes=(64, 32, 16, 8, 4, 2, 1),
        min_sizes=(35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8),
        max_sizes=(76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6),
        aspect_ratios=_SSD512_RATIOS,
        steps=(8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0),
    ),
    "ssd300_pytorch_ssd": _pytorch_ssd_spec(
        300, (38, 19, 10, 5, 3, 1), 0.1, (0.2, 0.9), _SSD300_RATIOS
    ),
    "ssd512_pytorch_ssd": _pytorch_ssd_spec(
        512, (64, 32, 16, 8, 4, 2, 1), 0.07, (0.15, 0.9), _SSD512_RATIOS
    ),
}


# The paper's SSD300 layout with cxcywh clipping, as amdegroot/ssd.pytorch builds it (VOC).
PRESETS["ssd300_ssd_pytorch"] = dataclasses.replace(PRESETS["ssd300"], clip="cxcywh")
# torchvision ssd300_vgg16: scales 0.07, 0.15, 0.33, ... 1.05; w, h clamped to 1.
PRESETS["ssd300_torchvision"] = dataclasses.replace(
    PRESETS["ssd300"],
    min_sizes=(21.0, 45.0, 99.0, 153.0, 207.0, 261.0),
    max_sizes=(45.0, 99.0, 153.0, 207.0, 261.0, 315.0),
    clip="wh",
)
# ssd.pytorch's COCO layout: torchvision's sizes, but the whole cxcywh clamped.
PRESETS["ssd300_ssd_pytorch_coco"] = dataclasses.replace(
    PRESETS["ssd300_torchvision"], clip="cxcywh"
)


# NVIDIA's SSD300 v1.1 (DeepLearningExamples): the same boxes as ssd.pytorch's
# COCO layout (scales 21 ... 315 pixels, steps 8 ... 300, cxcywh clamped to [0, 1]).
PRESETS["ssd300_nvidia"] = PRESETS["ssd300_ssd_pytorch_coco"]


# torchvision ssdlite320_mobilenet_v3_large: DefaultBoxGenerator([[2, 3]] * 6,
# min_ratio=0.2, max_ratio=0.95): scales 0.2 ... 0.95 linearly, then 1.0; grid
# centres; w, h clamped to 1.
_SSDLITE_SCALES = (*(0.2 + 0.75 * k / 5 for k in range(6)), 1.0)
PRESETS["ssdlite320"] = DefaultBoxSpec(
    image_size=320,
    feature_map_sizes=(20, 10, 5, 3, 2, 1),
    min_sizes=tuple(s * 320 for s in _SSDLITE_SCALES[:-1]),
    max_sizes=tuple(s * 320 for s in _SSDLITE_SCALES[1:]),
    aspect_ratios=((2.0, 3.0),) * 6,
    steps=None,
    clip="wh",
)


def preset(name: str) -> DefaultBoxSpec:
    """The :class:`DefaultBoxSpec` called ``name`` (one of :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown default-box preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]
