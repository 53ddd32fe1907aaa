import numpy as np
import pytest

from ssd_jax.data import augment, photometric
from ssd_jax.data.synthetic import SyntheticShapes


def image_with_box(height, width, box_pixels, value=255):
    """Black image with a filled rectangle at pixel box (x0, y0, x1, y1), end-exclusive."""
    image = np.zeros((height, width, 3), np.uint8)
    x0, y0, x1, y1 = box_pixels
    image[y0:y1, x0:x1] = value
    return image


def bright_region(image):
    """End-exclusive pixel box of the pixels > 128 in channel 0."""
    rows, cols = np.nonzero(image[..., 0] > 128)
    return cols.min(), rows.min(), cols.max() + 1, rows.max() + 1


@pytest.mark.parametrize(
    ("saturation", "hue", "expected"),
    [
        (1.0, 120.0, (0, 255, 0)),  # red -> green
        (1.0, -18.0, (255, 0, 76.5)),  # wraps to hue 342, not at 180
        (0.5, 0.0, (255, 127.5, 127.5)),
        (2.0, 0.0, (255, 0, 0)),  # saturation clipped at 1
    ],
)
def test_saturation_and_hue_hand_computed(saturation, hue, expected):
    red = np.array([[[255.0, 0.0, 0.0]]], np.float32)
    np.testing.assert_allclose(
        photometric.adjust_saturation_hue(red, saturation, hue)[0, 0], expected, atol=0.1
    )


def test_photometric_distort_keeps_shape_and_is_seeded():
    image = SyntheticShapes(1, image_size=(60, 80), seed=3)[0]["image"]
    a = photometric.photometric_distort(image, np.random.default_rng(5))
    b = photometric.photometric_distort(image, np.random.default_rng(5))
    assert a.shape == image.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    outputs = {
        photometric.photometric_distort(image, np.random.default_rng(s)).tobytes() for s in range(8)
    }
    assert len(outputs) > 4


def test_expand_moves_boxes_with_pixels_and_fills_with_rgb_mean():
    image = image_with_box(40, 60, (10, 5, 30, 25))
    box = np.array([[10 / 60, 5 / 40, 30 / 60, 25 / 40]], np.float32)
    for seed in range(10):
        out, boxes = augment.expand(
            image, box, np.random.default_rng(seed), (123.7, 116.3, 103.5), probability=1.0
        )
        h, w = out.shape[:2]
        assert h >= 40 and w >= 60
        np.testing.assert_allclose(boxes[0] * [w, h, w, h], bright_region(out), atol=1e-3)
        corner = out[0, 0] if bright_region(out)[:2] != (0, 0) else out[-1, -1]
        np.testing.assert_array_equal(corner, [124, 116, 104])  # R, G, B in that order


def test_sampled_crops_satisfy_the_minimum_iou():
    rng = np.random.default_rng(0)
    checked = {t: 0 for t in augment.CROP_MIN_IOUS if t is not None}
    for _ in range(600):
        size = rng.uniform(0.05, 0.9, (3, 2))  # large boxes make the 0.7 / 0.9 modes possible
        top_left = rng.uniform(0, 1 - size)
        boxes = np.concatenate([top_left, top_left + size], 1)
        patch, min_iou = augment.sample_crop(boxes, (300, 400), rng)
        if patch is None:
            continue
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = np.all((centres > patch[:2]) & (centres < patch[2:]), axis=1)
        assert (
            inside.any()
            and augment.iou_with_patches(boxes, patch[None])[0, inside].max() >= min_iou
        )
        # pixel aligned, within the image, scale >= 0.3 per side area-wise
        np.testing.assert_allclose(
            patch * [400, 300, 400, 300], np.round(patch * [400, 300, 400, 300]), atol=1e-9
        )
        assert (patch >= 0).all() and (patch <= 1).all()
        checked[min_iou] += 1
    assert all(count > 0 for count in checked.values()), checked


def test_crop_keeps_centres_inside_and_boxes_follow_pixels():
    image = image_with_box(100, 200, (40, 20, 120, 70))
    boxes = np.array(
        [[40 / 200, 20 / 100, 120 / 200, 70 / 100], [0.9, 0.9, 0.95, 0.95]], np.float32
    )
    patch = np.array([30 / 200, 10 / 100, 100 / 200, 90 / 100])  # cuts the first box on the right
    out, new_boxes, kept = augment.crop(image, boxes, patch)
    assert out.shape == (80, 70, 3)
    np.testing.assert_array_equal(kept, [0])
    np.testing.assert_allclose(new_boxes[0] * [70, 80, 70, 80], bright_region(out), atol=1e-4)


def test_flip_twice_is_identity_and_boxes_follow_pixels():
    image = image_with_box(40, 60, (10, 5, 30, 25))
    boxes = np.array([[10 / 60, 5 / 40, 30 / 60, 25 / 40]], np.float32)
    flipped, flipped_boxes = augment.horizontal_flip(
        image, boxes, np.random.default_rng(0), probability=1.0
    )
    np.testing.assert_allclose(
        flipped_boxes[0] * [60, 40, 60, 40], bright_region(flipped), atol=1e-4
    )
    back, back_boxes = augment.horizontal_flip(
        flipped, flipped_boxes, np.random.default_rng(0), probability=1.0
    )
    np.testing.assert_array_equal(back, image)
    np.testing.assert_allclose(back_boxes, boxes, atol=1e-7)


def test_train_augment_outputs_and_difficult_handling():
    source = SyntheticShapes(20, num_classes=4, image_size=(90, 120), seed=4)
    for index in range(20):
        example = source[index]
        example["difficult"] = np.arange(len(example["labels"])) == 0  # first object difficult
        out = augment.train_augment(example, np.random.default_rng(index), 64, (124, 116, 104))
        assert out["image"].shape == (64, 64, 3) and out["image"].dtype == np.uint8
        boxes = out["boxes"]
        assert boxes.dtype == np.float32 and out["labels"].dtype == np.int32
        assert len(boxes) == len(out["labels"])
        assert (boxes >= 0).all() and (boxes <= 1).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) * 64 >= 1).all()  # no sub-pixel boxes
        assert len(boxes) <= len(example["labels"]) - (len(example["labels"]) > 0)  # difficult gone
        again = augment.train_augment(example, np.random.default_rng(index), 64, (124, 116, 104))
        np.testing.assert_array_equal(again["image"], out["image"])


def test_difficult_and_crowd_objects_leave_training_unless_kept():
    source = SyntheticShapes(10, num_classes=4, image_size=(90, 120), seed=4)
    counts = {"dropped": 0, "kept": 0}
    for index in range(10):
        example = source[index]
        example["difficult"][:] = True
        example["is_crowd"][:] = True
        rng = np.random.default_rng
        counts["dropped"] += len(
            augment.train_augment(example, rng(index), 64, (0, 0, 0))["labels"]
        )
        kept = augment.train_augment(
            example, rng(index), 64, (0, 0, 0), keep_difficult=True, keep_crowd=True
        )
        counts["kept"] += len(kept["labels"])
    assert counts["dropped"] == 0 and counts["kept"] > 10


def test_eval_preprocess_only_resizes():
    example = SyntheticShapes(1, image_size=(90, 120), seed=4)[0]
    out = augment.eval_preprocess(example, 50)
    assert out["image"].shape == (50, 50, 3)
    np.testing.assert_array_equal(out["boxes"], example["boxes"])
    np.testing.assert_array_equal(out["labels"], example["labels"])


def test_fused_train_geometry_equals_the_ops_applied_in_turn():
    """train_augment warps once; it must match expand -> crop -> flip -> resize."""
    import cv2

    height, width, size, fill = 90, 120, 64, (124.0, 116.0, 104.0)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 2, yy * 2, (xx + yy)], -1).astype(np.uint8)  # smooth gradients
    image[30:60, 40:100] = 255
    boxes = np.array([[40 / width, 30 / height, 100 / width, 60 / height]], np.float32)
    example = {
        "image": image, "boxes": boxes, "labels": np.array([1], np.int32),
        "difficult": np.zeros(1, bool), "is_crowd": np.zeros(1, bool),
        "image_id": np.int64(0), "height": np.int32(height), "width": np.int32(width),
    }  # fmt: skip
    for seed in range(30):
        fused = augment.train_augment(example, np.random.default_rng(seed), size, fill)
        rng = np.random.default_rng(seed)
        step = photometric.photometric_distort(image, rng)
        step, step_boxes = augment.expand(step, boxes, rng, fill)
        patch, _ = augment.sample_crop(step_boxes, step.shape[:2], rng)
        if patch is not None:
            step, step_boxes, _ = augment.crop(step, step_boxes, patch)
        step, step_boxes = augment.horizontal_flip(step, step_boxes, rng)
        step = cv2.resize(step, (size, size), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(fused["boxes"], np.clip(step_boxes, 0, 1), atol=1e-6)
        # same pixel-centre mapping and bilinear sampling: pixels agree too
        error = np.abs(fused["image"].astype(float) - step.astype(float))
        assert np.median(error) <= 1 and np.mean(error) < 3, (seed, np.mean(error))


def test_uint8_saturation_hue_follows_the_float_version():
    image = SyntheticShapes(1, image_size=(60, 80), seed=4)[0]["image"]
    for saturation, hue in [(1.4, 0.0), (0.6, 0.0), (1.0, 17.0), (1.0, -18.0), (1.3, -9.0)]:
        fast = photometric.adjust_saturation_hue_uint8(image, saturation, hue).astype(float)
        exact = photometric.adjust_saturation_hue(image.astype(np.float32), saturation, hue)
        error = np.abs(fast - np.clip(exact, 0, 255))
        assert error.mean() < 2.5 and np.percentile(error, 99) < 12, (saturation, hue)
    red = np.array([[[255, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(
        photometric.adjust_saturation_hue_uint8(red, 1.0, 120.0), [[[0, 255, 0]]]
    )


FILL = (124, 116, 104)


def flat_example(height, width, colour):
    """One image of a single ``colour`` (far from FILL) with two boxes."""
    image = np.empty((height, width, 3), np.uint8)
    image[...] = colour
    boxes = np.array([[0.1, 0.2, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8]], np.float32)
    return {"image": image, "boxes": boxes, "labels": np.array([1, 2], np.int32),
            "difficult": np.zeros(2, bool), "is_crowd": np.zeros(2, bool),
            "image_id": 0, "height": height, "width": width}  # fmt: skip


def test_zoom_out_false_draws_no_canvas_and_shows_no_fill():
    """With zoom_out=False no seed draws a canvas and every output pixel keeps the
    image's one colour (photometric off, so only a zoom-out could bring the fill
    colour in); with zoom_out=True about half the seeds draw a canvas, and many
    outputs show the fill."""
    colour = (10, 200, 30)
    example = flat_example(60, 80, colour)
    canvases, fills = {True: 0, False: 0}, {True: 0, False: 0}
    for zoom_out in (True, False):
        for seed in range(40):
            rng = np.random.default_rng(seed)
            canvases[zoom_out] += augment.draw_geometry(example["boxes"], (60, 80), rng,
                                                        zoom_out).canvas is not None  # fmt: skip
            out = augment.train_augment(example, np.random.default_rng(seed), 48, FILL,
                                        photometric=False, zoom_out=zoom_out)  # fmt: skip
            fills[zoom_out] += bool(np.any(np.all(out["image"] == FILL, axis=-1)))
            if not zoom_out:
                assert (out["image"] == colour).all()
    assert canvases[False] == fills[False] == 0
    assert 10 <= canvases[True] <= 30 and fills[True] >= 5


def test_photometric_false_keeps_the_pixels_of_an_uncropped_unflipped_image():
    """photometric=False, zoom_out=False: an image that the geometry neither crops
    nor flips comes out as it went in (same size: the warp is the identity); with
    photometric=True the same draws change it."""
    example = SyntheticShapes(1, num_classes=4, image_size=(64, 64), seed=3)[0]
    boxes, _ = augment.training_targets(example, False, False)
    kept = 0
    for seed in range(60):
        geometry = augment.draw_geometry(boxes, (64, 64), np.random.default_rng(seed), False)
        out = augment.train_augment(example, np.random.default_rng(seed), 64, FILL,
                                    photometric=False, zoom_out=False)  # fmt: skip
        if geometry.patch is None and not geometry.flip:
            np.testing.assert_array_equal(out["image"], example["image"])
            np.testing.assert_array_equal(out["boxes"], np.clip(boxes, 0, 1))
            kept += 1
    assert kept >= 5
    distorted = [
        augment.train_augment(example, np.random.default_rng(seed), 64, FILL, zoom_out=False)
        for seed in range(60)
    ]
    assert sum(not np.array_equal(d["image"], example["image"]) for d in distorted) >= 55
