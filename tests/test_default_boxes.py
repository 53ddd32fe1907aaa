import math

import numpy as np
import pytest

from ssd_jax import default_boxes


def pytorch_ssd_boxes(image_size, fmap_sizes, scale_conv4_3, scale_range, aspect_ratios):
    """jjjkkkjjj/pytorch_SSD's DBoxSSDOriginal, written from the shared study §3:
    ratios include 1; slot 2i is (s*sqrt(ar), s/sqrt(ar)), slot 2i+1 uses ar' = 1/ar
    with scale sqrt(s_k * s_k+) when ar' == 1; centres (i + 0.5) / fmap; whole
    (cx, cy, w, h) clamped to [0, 1]."""
    s_min, s_max = scale_range
    m = len(fmap_sizes) - 1

    def scale(k):
        if k == 0:
            return scale_conv4_3
        return s_min + (s_max - s_min) * (k - 1) / (m - 1)

    rows = []
    for k, f in enumerate(fmap_sizes):
        s_k = scale(k)
        s_next = s_min if k == 0 else scale(k + 1)
        for j in range(f):  # y outer
            for i in range(f):
                cx, cy = (i + 0.5) / f, (j + 0.5) / f
                for ar in (1, *aspect_ratios[k]):
                    rows.append((cx, cy, s_k * math.sqrt(ar), s_k / math.sqrt(ar)))
                    ar_inv = 1 / ar
                    s = math.sqrt(s_k * s_next) if ar_inv == 1 else s_k
                    rows.append((cx, cy, s * math.sqrt(ar_inv), s / math.sqrt(ar_inv)))
    return np.clip(np.array(rows), 0, 1)


SSD300_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
SSD512_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ssd300_pytorch_ssd", (300, (38, 19, 10, 5, 3, 1), 0.1, (0.2, 0.9), SSD300_RATIOS)),
        ("ssd512_pytorch_ssd", (512, (64, 32, 16, 8, 4, 2, 1), 0.07, (0.15, 0.9), SSD512_RATIOS)),
    ],
)
def test_pytorch_ssd_presets_reproduce_reference(name, expected):
    result = default_boxes.generate(default_boxes.preset(name))
    reference = pytorch_ssd_boxes(*expected)
    assert result.shape == reference.shape and result.dtype == np.float32
    np.testing.assert_allclose(result, reference, atol=1e-6, rtol=0)


def test_pytorch_ssd300_extra_square_scales_match_study_table():
    boxes = default_boxes.generate(default_boxes.preset("ssd300_pytorch_ssd"))
    spec = default_boxes.preset("ssd300_pytorch_ssd")
    offsets = np.cumsum(
        [0] + [f * f * a for f, a in zip(spec.feature_map_sizes, spec.boxes_per_location)]
    )
    # slot 1 of the first location of each map: sqrt(s_k * s_k+), shared doc §3
    table = [0.141421, 0.273861, 0.454148, 0.631467, 0.807775, 0.983616]
    np.testing.assert_allclose(boxes[offsets[:-1] + 1, 2], table, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "per_map", "total"),
    [
        ("ssd300", [5776, 2166, 600, 150, 36, 4], 8732),
        ("ssd512", [16384, 6144, 1536, 384, 96, 16, 4], 24564),
        ("ssd300_pytorch_ssd", [5776, 2166, 600, 150, 36, 4], 8732),
        ("ssd512_pytorch_ssd", [16384, 6144, 1536, 384, 96, 16, 4], 24564),
    ],
)
def test_counts(name, per_map, total):
    spec = default_boxes.preset(name)
    counts = [f * f * a for f, a in zip(spec.feature_map_sizes, spec.boxes_per_location)]
    assert counts == per_map
    assert spec.num_boxes == total == len(default_boxes.generate(spec))


def test_ssd300_first_location_hand_computed():
    boxes = default_boxes.generate(default_boxes.preset("ssd300"))
    c = 0.5 * 8 / 300  # first centre: half a step of 8 px
    s, s_extra, r2 = 0.1, math.sqrt(30 * 60) / 300, math.sqrt(2)
    expected = [
        (c, c, s, s),
        (c, c, s_extra, s_extra),
        (c, c, s * r2, s / r2),
        (c, c, s / r2, s * r2),
    ]
    np.testing.assert_allclose(boxes[:4], expected, atol=1e-7)


def test_ssd300_order_is_map_row_column_slot():
    boxes = default_boxes.generate(default_boxes.preset("ssd300"))
    # map 1 (19x19, 6 slots, after 5776 boxes of map 0), row y=3, column x=5, slot 4 (ratio 3)
    index = 5776 + (3 * 19 + 5) * 6 + 4
    s = 60 / 300
    expected = (5.5 * 16 / 300, 3.5 * 16 / 300, s * math.sqrt(3), s / math.sqrt(3))
    np.testing.assert_allclose(boxes[index], expected, atol=1e-7)


def test_paper_presets_are_not_clipped_and_ssd512_last_box():
    boxes = default_boxes.generate(default_boxes.preset("ssd512"))
    np.testing.assert_allclose(boxes[-4], (0.5, 0.5, 460.8 / 512, 460.8 / 512), atol=1e-7)
    np.testing.assert_allclose(
        boxes[-2], (0.5, 0.5, 0.9 * math.sqrt(2), 0.9 / math.sqrt(2)), atol=1e-6
    )
    assert boxes[:, 2:].max() > 1  # Caffe VOC: clip=false


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown default-box preset 'ssd301'"):
        default_boxes.preset("ssd301")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"min_sizes": (30.0,)}, "min_sizes has 1 entries but there are 2 feature maps"),
        ({"steps": (8.0,)}, "steps has 1 entries"),
        ({"aspect_ratios": ((1.0,), (2.0,))}, "not 1"),
        ({"clip": "xyxy"}, "clip='xyxy'"),
        ({"max_sizes": (0.0, 60.0)}, "must be positive"),
    ],
)
def test_invalid_spec(change, message):
    spec = dict(
        image_size=64,
        feature_map_sizes=(4, 2),
        min_sizes=(16.0, 32.0),
        max_sizes=(32.0, 48.0),
        aspect_ratios=((2.0,), (2.0, 3.0)),
    )
    with pytest.raises(ValueError, match=message):
        default_boxes.DefaultBoxSpec(**(spec | change))


def test_location_slice_finds_the_boxes_of_one_cell():
    spec = default_boxes.preset("ssd300")
    boxes = default_boxes.generate(spec)
    covered = np.zeros(len(boxes), int)
    for k, size in enumerate(spec.feature_map_sizes):
        for row in range(size):
            for col in range(size):
                where = default_boxes.location_slice(spec, k, row, col)
                covered[where] += 1
                assert where.stop - where.start == spec.boxes_per_location[k]
    assert (covered == 1).all()  # every default box belongs to exactly one cell
    where = default_boxes.location_slice(spec, 1, 3, 5)  # 19x19 map, step 16
    np.testing.assert_allclose(boxes[where][:, 0], 5.5 * 16 / 300, rtol=1e-6)
    np.testing.assert_allclose(boxes[where][:, 1], 3.5 * 16 / 300, rtol=1e-6)
    with pytest.raises(ValueError, match="outside feature map 5"):
        default_boxes.location_slice(spec, 5, 1, 0)
