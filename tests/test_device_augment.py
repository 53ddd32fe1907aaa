"""Device-side augmentation against the host path (``ssd_jax.data.augment``): the
same random parameters give the same boxes and pixels, and the samplers draw
from the same distributions."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ssd_jax import build, train
from ssd_jax.config_schema import ConfigError, load_config_file, validate
from ssd_jax.data import augment, photometric, pipeline
from ssd_jax.data import device_augment as da
from ssd_jax.data.imagenet import IMAGENET_MEAN_RGB
from ssd_jax.data.synthetic import SyntheticShapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 96  # output size of the comparisons
S = 160  # decoded images fit in S x S


def smooth_image(height, width, seed=0):
    """uint8 RGB that is smooth (neighbouring pixels differ by ~15 levels at most)
    and equals the fill colour at its border, so that bilinear resampling errors
    stay small everywhere, also where a zoom-out shows the fill beside it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    envelope = np.sin(np.pi * x / width) * np.sin(np.pi * y / height)
    channels = [
        np.cos(x / rng.uniform(6, 9) + rng.uniform(0, 6)) * np.sin(y / rng.uniform(6, 9) + c)
        for c in range(3)
    ]
    image = np.asarray(IMAGENET_MEAN_RGB) + 100 * envelope[..., None] * np.stack(channels, -1)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def max_step(image):
    """The largest difference between neighbouring pixels (rows, columns,
    diagonals), with the fill colour around the image."""
    fill = np.round(np.asarray(IMAGENET_MEAN_RGB))
    padded = np.pad(image.astype(float), ((1, 1), (1, 1), (0, 0)))
    padded[0], padded[-1], padded[:, 0], padded[:, -1] = fill, fill, fill, fill
    steps = [np.abs(np.diff(padded, axis=a)).max() for a in (0, 1)]
    steps.append(np.abs(padded[1:, 1:] - padded[:-1, :-1]).max())
    steps.append(np.abs(padded[1:, :-1] - padded[:-1, 1:]).max())
    return max(steps)


def decoded(image, boxes, labels, max_boxes=6):
    """One image as the host hands it over: padded to (S, S, 3), targets padded."""
    height, width = image.shape[:2]
    padded = np.zeros((S, S, 3), np.uint8)
    padded[:height, :width] = image
    targets = pipeline.pad_objects(boxes, labels, max_boxes)
    hw = np.array([height, width], np.int32)
    return padded, hw, targets["boxes"], targets["labels"], targets["mask"]


EXAMPLE_BOXES = np.array(
    [[0.1, 0.2, 0.45, 0.7], [0.5, 0.1, 0.9, 0.5], [0.3, 0.55, 0.6, 0.95]], np.float32
)
EXAMPLE_LABELS = np.array([1, 2, 3], np.int32)


def host_params(params, image_hw):
    """The host's :class:`Photometric` and :class:`Geometry` of device ``params``."""
    canvas = tuple(int(v) for v in np.asarray(params.canvas))
    expanded = canvas[:2] != tuple(int(v) for v in image_hw)
    photo = photometric.Photometric(
        float(params.brightness),
        float(params.contrast_before),
        float(params.saturation),
        float(params.hue),
        float(params.contrast_after),
        tuple(int(c) for c in np.asarray(params.permutation)),
    )
    patch = np.asarray(params.patch, np.float64) if bool(params.cropped) else None
    return photo, augment.Geometry(canvas if expanded else None, patch, bool(params.flip))


def host_result(image, boxes, labels, photo, geometry):
    """The host path (photometric, one warp, box filter) with given parameters."""
    distorted = photometric.apply_photometric(image, photo)
    out, new_boxes, kept = augment.apply_geometry(
        distorted, boxes, geometry, SIZE, IMAGENET_MEAN_RGB
    )
    example = {"image_id": 0, "height": 0, "width": 0}
    return augment.training_output(example, out, new_boxes, labels[kept], SIZE)


def test_crop_modes_equal_the_host_samplers():
    host = [math.nan if t is None else t for t in augment.CROP_MIN_IOUS]
    np.testing.assert_array_equal(da.CROP_MIN_IOUS, host)


def test_distortion_equals_the_float_formulas():
    """Device photometric distortion against OpenCV's float32 HSV conversion and
    plain NumPy: equal to float32 rounding (values <= 255, a handful of operations:
    ~1e-4 absolute; the uint8 host path rounds at each stage, see
    test_augment.test_uint8_saturation_hue_follows_the_float_version)."""
    image = SyntheticShapes(1, image_size=(40, 50), seed=4)[0]["image"].astype(np.float32)
    image = (image * 0.6 + np.random.default_rng(0).uniform(0, 100, image.shape)).astype(np.float32)
    sample = jax.jit(
        lambda key: da.sample_params(key, jnp.array([40, 50]), EXAMPLE_BOXES, np.ones(3, bool))
    )
    distort = jax.jit(da.distort)
    checked = 0
    for seed in range(40):
        params = sample(jax.random.key(seed))
        x = np.clip((image + float(params.brightness)) * float(params.contrast_before), 0, 255)
        if float(params.saturation) != 1 or float(params.hue) != 0:
            x = photometric.adjust_saturation_hue(
                x.astype(np.float32), float(params.saturation), float(params.hue)
            )
            checked += 1
        x = np.clip(x * float(params.contrast_after), 0, 255)[..., np.asarray(params.permutation)]
        np.testing.assert_allclose(distort(image, params), x, atol=2e-3)
    assert checked >= 20  # the HSV part ran in most draws


@pytest.mark.parametrize("seed", range(12))
def test_same_parameters_give_the_host_paths_boxes_and_pixels(seed):
    """Random geometry (zoom-out, crop, flip) and brightness, contrast and channel
    order; the HSV part is left to the test above (8-bit HSV on the host).

    Pixel bound: OpenCV's bilinear warp places sources on a 1/32-pixel grid
    (position off by <= 1/64 px in x and y, so values by <= max_step / 32) and
    both sides round to uint8 (0.5 each); the host's lookup tables round before
    the contrast (<= 0.5 x 1.5). Boxes: float32 against float64, 1e-6."""
    image = smooth_image(70, 110, seed)
    padded, hw, boxes, labels, mask = decoded(image, EXAMPLE_BOXES, EXAMPLE_LABELS)
    params = jax.jit(da.sample_params)(jax.random.key(seed), hw, boxes, mask)
    params = params._replace(saturation=jnp.float32(1), hue=jnp.float32(0))
    out = jax.jit(da.apply_params, static_argnums=(6, 7))(
        params, padded, hw, boxes, labels, mask, SIZE, IMAGENET_MEAN_RGB
    )
    expected = host_result(image, EXAMPLE_BOXES, EXAMPLE_LABELS, *host_params(params, hw))

    mask_out = np.asarray(out["mask"])
    np.testing.assert_allclose(np.asarray(out["boxes"])[mask_out], expected["boxes"], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out["labels"])[mask_out], expected["labels"])
    bound = max_step(image) * 1.5 / 32 + 1 + 0.75
    difference = np.abs(np.asarray(out["image"], int) - expected["image"].astype(int))
    assert difference.max() <= bound, (difference.max(), bound)


def draws(num):
    """``num`` device and host draws for the same image (h, w) = (90, 120)."""
    hw = np.array([90, 120], np.int32)
    _, _, boxes, _, mask = decoded(np.zeros((90, 120, 3), np.uint8), EXAMPLE_BOXES, EXAMPLE_LABELS)
    keys = jax.random.split(jax.random.key(7), num)
    device = jax.jit(jax.vmap(lambda k: da.sample_params(k, hw, boxes, mask)))(keys)
    device = [jax.tree.map(lambda leaf, i=i: leaf[i], device) for i in range(num)]
    device = [host_params(p, hw) for p in jax.device_get(device)]
    rng = np.random.default_rng(7)
    host = []
    for _ in range(num):
        photo = photometric.draw_photometric(rng)
        host.append((photo, augment.draw_geometry(EXAMPLE_BOXES, (90, 120), rng)))
    return device, host


def canvas_boxes_np(boxes, geometry, image_hw):
    if geometry.canvas is None:
        return boxes
    return augment.expand_boxes(boxes, image_hw, geometry.canvas)


def features(draw):
    """Scalar features of one (Photometric, Geometry) draw; None where undefined."""
    photo, geometry = draw
    patch = geometry.patch
    canvas_boxes = canvas_boxes_np(EXAMPLE_BOXES, geometry, (90, 120))
    best_iou = None if patch is None else augment.iou_with_patches(canvas_boxes, patch[None]).max()
    return {
        "flip": float(geometry.flip),
        "expanded": float(geometry.canvas is not None),
        "cropped": float(patch is not None),
        "permuted": float(photo.permutation not in (None, (0, 1, 2))),
        "brightness_on": float(photo.brightness != 0),
        "contrast_before_on": float(photo.contrast_before != 1),
        "contrast_after_on": float(photo.contrast_after != 1),
        "saturation_on": float(photo.saturation != 1),
        "hue_on": float(photo.hue != 0),
        "zoom_ratio": None if geometry.canvas is None else geometry.canvas[1] / 120,
        "patch_area": None if patch is None else np.prod(patch[2:] - patch[:2]),
        "patch_aspect": None
        if patch is None
        else math.log((patch[2] - patch[0]) * 120 / ((patch[3] - patch[1]) * 90)),
        "best_iou": best_iou,
        "brightness": photo.brightness or None,
        "hue": photo.hue or None,
    }


def test_sampler_statistics_equal_the_host_samplers():
    """3000 draws on each side. Rates: |difference| <= 4.5 standard errors of a
    difference of two binomial means. Distributions: the two-sample KS test at
    p >= 1e-4. Both sides are seeded, so the outcome is the same on every machine;
    the thresholds say how unlikely a failure of a correct sampler would be."""
    device, host = draws(3000)
    device_features = [features(d) for d in device]
    host_features = [features(h) for h in host]
    for name in device_features[0]:
        a = np.array([f[name] for f in device_features if f[name] is not None], float)
        b = np.array([f[name] for f in host_features if f[name] is not None], float)
        assert len(a) > 200 and len(b) > 200, name
        if name.endswith(("flip", "expanded", "cropped", "permuted", "_on")):
            pooled = (a.sum() + b.sum()) / (len(a) + len(b))
            error = math.sqrt(pooled * (1 - pooled) * (1 / len(a) + 1 / len(b)))
            assert abs(a.mean() - b.mean()) <= 4.5 * error, (name, a.mean(), b.mean())
        else:
            assert stats.ks_2samp(a, b).pvalue >= 1e-4, (name, np.median(a), np.median(b))
    # the ranges themselves: every draw inside, the extremes within 1 % of the ends
    # (a miss has probability 0.99^n with n > 1000 draws)
    for name, low, high in [("brightness", -32, 32), ("hue", -18, 18), ("zoom_ratio", 1, 4)]:
        a = np.array([f[name] for f in device_features if f[name] is not None])
        margin = (high - low) / 100
        assert low <= a.min() <= low + margin and high - margin <= a.max() <= high, name
    for name in ("contrast_before", "contrast_after", "saturation"):
        a = np.array([getattr(p, name) for p, _ in device if getattr(p, name) != 1])
        assert 0.5 <= a.min() <= 0.51 and 1.49 <= a.max() <= 1.5, name


def test_boxes_follow_the_pixels():
    """A bright rectangle on a dark image: after device augmentation its box is
    where its pixels are (within a pixel: the edges are resampled)."""
    image = np.zeros((80, 120, 3), np.uint8)
    image[20:60, 30:70] = 255
    box = np.array([[30 / 120, 20 / 80, 70 / 120, 60 / 80]], np.float32)
    padded, hw, boxes, labels, mask = decoded(image, box, np.array([1], np.int32))
    augment_one = jax.jit(
        lambda key: da.apply_params(
            da.sample_params(key, hw, boxes, mask)._replace(
                brightness=jnp.float32(0),
                contrast_before=jnp.float32(1),
                contrast_after=jnp.float32(1),
                saturation=jnp.float32(1),
                hue=jnp.float32(0),
            ),
            padded,
            hw,
            boxes,
            labels,
            mask,
            SIZE,
            (0.0, 0.0, 0.0),
        )
    )
    seen = 0
    for seed in range(30):
        out = augment_one(jax.random.key(seed))
        if not out["mask"][0]:
            continue
        bright = np.asarray(out["image"])[..., 0] > 128
        rows, cols = np.nonzero(bright)
        region = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        np.testing.assert_allclose(np.asarray(out["boxes"][0]) * SIZE, region, atol=1.0)
        seen += 1
    assert seen >= 15


def test_batch_images_depend_only_on_key_and_index_also_sharded():
    """Image b of a batch uses fold_in(key, b): the same on one device and split
    over eight (pixels within one level: the two compilations may round a float32
    value near .5 differently); the same image at two indices, or at another step,
    is augmented differently."""
    pictures = [smooth_image(60 + 5 * i, 100, i) for i in range(7)]
    images, hws, boxes, labels, masks = zip(
        *[decoded(p, EXAMPLE_BOXES, EXAMPLE_LABELS) for p in [pictures[0], *pictures]]
    )
    batch = {
        "image": np.stack(images),
        "image_hw": np.stack(hws),
        "boxes": np.stack(boxes),
        "labels": np.stack(labels),
        "mask": np.stack(masks),
    }
    step = jax.jit(lambda s, b: da.augment_step(s, b, seed=0, size=SIZE, fill_rgb=(0, 0, 0)))
    one = step(jnp.int32(3), batch)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = jax.device_put(batch, jax.NamedSharding(mesh, jax.P("data")))
    eight = step(jnp.int32(3), sharded)
    for name in ("labels", "mask"):
        np.testing.assert_array_equal(np.asarray(eight[name]), np.asarray(one[name]))
    np.testing.assert_allclose(np.asarray(eight["boxes"]), np.asarray(one["boxes"]), atol=1e-6)
    difference = np.abs(np.asarray(eight["image"], int) - np.asarray(one["image"], int))
    assert difference.max() <= 1
    first, second = np.asarray(one["image"][0]), np.asarray(one["image"][1])  # same picture
    assert np.abs(first.astype(int) - second).mean() > 5
    other_step = np.asarray(step(jnp.int32(4), batch)["image"][0])
    assert np.abs(first.astype(int) - other_step).mean() > 5


def test_decode_transform_fits_pads_and_keeps_targets():
    """The host's part: images shrunk only past S, padded; difficult objects
    left out; targets padded."""
    wide = np.full((100, 400, 3), 7, np.uint8)
    fitted = pipeline.fit_within(wide, 160)
    assert fitted.shape == (40, 160, 3)
    assert pipeline.fit_within(wide[:50, :150], 160).shape == (50, 150, 3)
    example = {
        "image": wide,
        "boxes": EXAMPLE_BOXES,
        "labels": EXAMPLE_LABELS,
        "difficult": np.array([False, True, False]),
        "is_crowd": np.zeros(3, bool),
        "image_id": np.int64(5),
    }
    out = pipeline.DecodeTransform(160, 4).map(example)
    assert out["image"].shape == (160, 160, 3)
    np.testing.assert_array_equal(out["image_hw"], [40, 160])
    assert (out["image"][:40] == 7).all() and (out["image"][40:] == 0).all()
    np.testing.assert_array_equal(out["labels"], [1, 3, 0, 0])
    np.testing.assert_array_equal(out["boxes"][:2], EXAMPLE_BOXES[[0, 2]])


def tiny_device_config():
    config = load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    config.data.augment_on = "device"
    config.data.decode_max_side = 128
    config.num_steps, config.checkpoint_every, config.eval_every = 3, 1, 0
    return config


def test_device_augmentation_trains_and_resumes_exactly(tmp_path):
    """A run with augmentation on the device, interrupted after step 1 and
    resumed, ends bitwise where the uninterrupted run ends (the keys come from the
    step). (Without the augmentation the 128x128 decoded images would not fit the
    300x300 network's default boxes: the step would fail.)"""
    config = tiny_device_config()
    assert build.augment_on(config.data) == "device"
    straight = train.train_and_evaluate(config, str(tmp_path / "straight"))
    config.num_steps = 1
    train.train_and_evaluate(config, str(tmp_path / "resumed"))
    config.num_steps = 3
    resumed = train.train_and_evaluate(config, str(tmp_path / "resumed"))
    for a, b in zip(jax.tree.leaves(straight["params"]), jax.tree.leaves(resumed["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_augment_on_is_validated_and_auto_picks_the_host_on_cpu():
    config = tiny_device_config()
    config.data.augment_on = "gpu"
    with pytest.raises(ConfigError, match="data.augment_on"):
        validate(config)
    config.data.augment_on = "auto"
    assert build.augment_on(config.data) == "host"
    assert build.device_augmentation(config) is None


def test_a_zoomed_out_canvas_takes_the_configured_mean_on_the_host_and_on_the_device():
    """A zoom-out places the image on a canvas of the input normalization's mean
    (the README: "the dataset mean"). Found: the host path painted the ImageNet
    mean whatever data.mean said; only the device path was given it."""
    config = tiny_device_config()
    config.data.mean = (10.0, 200.0, 30.0)  # far from the ImageNet mean
    source = build.source(config.data.train, config.data.class_names)

    def canvas_share(images) -> float:  # pixels of exactly the fill colour
        return float(np.mean(np.all(np.round(images) == [10, 200, 30], axis=-1)))

    augment_on_device = build.device_augmentation(config)
    batches = pipeline.make_iterator(build.train_dataset(config, source))
    on_device = [augment_on_device(np.int32(k), next(batches))["image"] for k in range(3)]
    config.data.augment_on = "host"
    batches = pipeline.make_iterator(build.train_dataset(config, source))
    on_host = [next(batches)["image"] for _ in range(3)]
    # zoom-outs (half the images) by up to 4x, then crops: a good part is canvas
    assert canvas_share(np.stack(on_device)) > 0.05
    assert canvas_share(np.stack(on_host)) > 0.05


def test_photometric_and_zoom_out_false_draw_identity_and_image_sized_canvases():
    """sample_params with photometric=False gives the identity distortion and with
    zoom_out=False the image itself as canvas (zoom ratio 1), for every key; the
    crop and flip are still drawn. With True, many keys distort and zoom out."""
    hw = jnp.array([60, 90])
    mask = np.ones(3, bool)

    def draw(photometric, zoom_out):
        sample = jax.vmap(lambda k: da.sample_params(k, hw, EXAMPLE_BOXES, mask,
                          photometric=photometric, zoom_out=zoom_out))  # fmt: skip
        return jax.tree.map(np.asarray, sample(jax.random.split(jax.random.key(0), 64)))

    off, on = draw(False, False), draw(True, True)
    np.testing.assert_array_equal(off.canvas, np.tile([60.0, 90.0, 0.0, 0.0], (64, 1)))
    for name, identity in (("brightness", 0), ("contrast_before", 1), ("saturation", 1),
                           ("hue", 0), ("contrast_after", 1)):  # fmt: skip
        assert (getattr(off, name) == identity).all(), name
        assert (getattr(on, name) != identity).sum() >= 10, name
    np.testing.assert_array_equal(off.permutation, np.tile([0, 1, 2], (64, 1)))
    assert (on.canvas[:, :2] > [60, 90]).all(axis=1).sum() >= 20
    assert off.cropped.sum() >= 10 and 10 <= off.flip.sum() <= 54


def test_device_augmentation_without_photometric_and_zoom_out_skips_them():
    """augment_step with photometric=False, zoom_out=False: a one-colour image keeps
    its colour everywhere (no fill, no distortion), and an image its parameters
    neither crop nor flip comes out unchanged; with both True neither holds."""
    colour = np.array([10, 200, 30], np.uint8)
    flat = np.broadcast_to(colour, (SIZE, SIZE, 3))
    shapes = SyntheticShapes(1, num_classes=4, image_size=(SIZE, SIZE), seed=3)[0]["image"]
    pictures = [flat] * 8 + [shapes] * 8
    images, hws, boxes, labels, masks = zip(
        *[decoded(p, EXAMPLE_BOXES, EXAMPLE_LABELS) for p in pictures]
    )
    batch = {"image": np.stack(images), "image_hw": np.stack(hws), "boxes": np.stack(boxes),
             "labels": np.stack(labels), "mask": np.stack(masks)}  # fmt: skip
    key = jax.random.fold_in(jax.random.key(0), 0)  # augment_step's for seed 0, step 0

    def run(on):
        step = jax.jit(lambda b: da.augment_step(jnp.int32(0), b, seed=0, size=SIZE,
                       fill_rgb=IMAGENET_MEAN_RGB, photometric=on, zoom_out=on))  # fmt: skip
        return np.asarray(step(batch)["image"])

    off, on = run(False), run(True)
    assert (off[:8] == colour).all()
    assert sum(not (image == colour).all() for image in on[:8]) >= 4
    unchanged = 0
    for b in range(8, 16):
        params = da.sample_params(jax.random.fold_in(key, b), hws[b], boxes[b], masks[b],
                                  photometric=False, zoom_out=False)  # fmt: skip
        if not bool(params.cropped) and not bool(params.flip):
            np.testing.assert_array_equal(off[b], shapes)
            assert not np.array_equal(on[b], shapes)
            unchanged += 1
    assert unchanged >= 1


def test_the_configurations_photometric_and_zoom_out_reach_both_paths():
    """data.photometric / data.zoom_out False: the host pipeline that build makes
    keeps a one-colour image's colour in every pixel (True: some do not), and the
    device augmentation that build makes gets both switches."""
    config = load_config_file(os.path.join(ROOT, "configs", "tiny.py"))
    colour = (10, 200, 30)
    image = np.empty((60, 80, 3), np.uint8)
    image[...] = colour
    source = [{"image": image, "boxes": EXAMPLE_BOXES, "labels": EXAMPLE_LABELS,
               "difficult": np.zeros(3, bool), "is_crowd": np.zeros(3, bool),
               "image_id": i, "height": 60, "width": 80} for i in range(8)]  # fmt: skip
    for on in (False, True):
        config.data.photometric = config.data.zoom_out = on
        config.data.augment_on = "host"
        images = build.train_dataset(config, source)[0]["image"]
        one_colour = [(im == colour).all() for im in images]
        assert all(one_colour) if not on else not all(one_colour)
        config.data.augment_on = "device"
        keywords = build.device_augmentation(config).keywords
        assert (keywords["photometric"], keywords["zoom_out"]) == (on, on)
