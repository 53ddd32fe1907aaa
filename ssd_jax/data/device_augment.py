"""SSD training augmentation on the device: the host only decodes.

The same augmentation as :mod:`ssd_jax.data.augment` (photometric distortion,
zoom-out, the paper's min-IoU crop, flip, resize), written in ``jax.numpy`` for
one image and ``vmap``-batched, so that a jit-compiled train step can run it on
the accelerator. The host hands over each image as uint8 (S, S, 3), padded at
the bottom and right, with its valid ``image_hw`` (height, width), and its
training targets padded to M rows (``boxes`` normalized xyxy of the valid
image, ``labels``, ``mask``): :class:`ssd_jax.data.pipeline.DecodeTransform`.

The random parameters (:class:`Params`) are drawn per image from a
``jax.random`` key folded with the image's index in the global batch
(:func:`augment_batch`), so the result depends only on (key, image): a run on
one device and on eight, or resumed from a checkpoint, sees the same batches.
The pixels come from one separable bilinear resampling of the selected window
(as the host path's single affine warp), after the photometric distortion,
which is computed in float32 where the host rounds to uint8 at each stage.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ssd_jax.boxes import iou_xyxy

# the paper's sampler, as augment.CROP_MIN_IOUS with NaN for "no crop"
CROP_MIN_IOUS = (float("nan"), 0.1, 0.3, 0.5, 0.7, 0.9, 0.0)


class Params(NamedTuple):
    """One image's random augmentation (float32 scalars unless stated).

    ``brightness`` offset, ``contrast_before`` / ``contrast_after`` factors (before
    or after the HSV part), ``saturation`` factor, ``hue`` shift in degrees,
    ``permutation`` int32 (3,) channel order; ``canvas`` (4,) zoom-out canvas
    (height, width, top, left) in pixels, the image itself when not zoomed out;
    ``cropped`` bool and ``patch`` (4,) normalized xyxy of the canvas ((0, 0, 1, 1)
    when not cropped); ``flip`` bool.
    """

    brightness: jax.Array
    contrast_before: jax.Array
    saturation: jax.Array
    hue: jax.Array
    contrast_after: jax.Array
    permutation: jax.Array
    canvas: jax.Array
    cropped: jax.Array
    patch: jax.Array
    flip: jax.Array


def _maybe(key: jax.Array, probability: float, low: float, high: float, identity: float):
    """U(low, high) with ``probability``, else ``identity``."""
    on_key, value_key = jax.random.split(key)
    value = jax.random.uniform(value_key, (), jnp.float32, low, high)
    return jnp.where(jax.random.uniform(on_key) < probability, value, identity)


def _sample_photometric(key: jax.Array) -> dict:
    """As :func:`ssd_jax.data.photometric.draw_photometric`."""
    keys = jax.random.split(key, 8)
    contrast_first = jax.random.uniform(keys[0]) < 0.5
    contrast = _maybe(keys[1], 0.5, 0.5, 1.5, 1.0)
    permute = jax.random.uniform(keys[6]) < 0.5
    return {
        "brightness": _maybe(keys[2], 0.5, -32.0, 32.0, 0.0),
        "contrast_before": jnp.where(contrast_first, contrast, 1.0),
        "saturation": _maybe(keys[3], 0.5, 0.5, 1.5, 1.0),
        "hue": _maybe(keys[4], 0.5, -18.0, 18.0, 0.0),
        "contrast_after": jnp.where(contrast_first, 1.0, contrast),
        "permutation": jnp.where(permute, jax.random.permutation(keys[7], 3), jnp.arange(3)),
    }


# the photometric parameters that change nothing (data.photometric False)
_NO_PHOTOMETRIC = {
    "brightness": 0.0,
    "contrast_before": 1.0,
    "saturation": 1.0,
    "hue": 0.0,
    "contrast_after": 1.0,
}


def _sample_canvas(
    key: jax.Array, image_hw: jax.Array, max_ratio: float, probability: float
) -> jax.Array:
    """As :func:`ssd_jax.data.augment.sample_expand`: (height, width, top, left)
    float32 pixels; the image itself (h, w, 0, 0) without zoom-out."""
    on_key, ratio_key, offset_key = jax.random.split(key, 3)
    height, width = image_hw.astype(jnp.float32)
    ratio = jax.random.uniform(ratio_key, (), jnp.float32, 1.0, max_ratio)
    canvas_hw = jnp.floor(jnp.stack([height, width]) * ratio)
    top, left = jnp.floor(jax.random.uniform(offset_key, (2,)) * (canvas_hw - image_hw + 1))
    expanded = jnp.stack([canvas_hw[0], canvas_hw[1], top, left])
    on = jax.random.uniform(on_key) < probability
    return jnp.where(on, expanded, jnp.stack([height, width, 0.0, 0.0]))


def canvas_boxes(boxes_xyxy: jax.Array, image_hw: jax.Array, canvas: jax.Array) -> jax.Array:
    """Normalized (M, 4) xyxy boxes of the image -> of the zoom-out ``canvas``."""
    height, width = image_hw.astype(jnp.float32)
    canvas_height, canvas_width, top, left = canvas
    scale = jnp.stack([width, height, width, height])
    offset = jnp.stack([left, top, left, top])
    return (boxes_xyxy * scale + offset) / jnp.stack([canvas_width, canvas_height] * 2)


def _centres_inside(boxes_xyxy: jax.Array, patches_xyxy: jax.Array) -> jax.Array:
    """(T, M): the centre of box m lies strictly inside patch t."""
    centres = (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]) / 2
    above = centres[None] > patches_xyxy[:, None, :2]
    below = centres[None] < patches_xyxy[:, None, 2:]
    return jnp.all(above & below, axis=-1)


def _sample_patch(
    key: jax.Array,
    boxes_xyxy: jax.Array,
    mask: jax.Array,
    canvas_hw: jax.Array,
    min_scale: float,
    max_trials: int,
) -> tuple[jax.Array, jax.Array]:
    """As :func:`ssd_jax.data.augment.sample_crop` on the canvas: a mode from
    :data:`CROP_MIN_IOUS`, then the first of ``max_trials`` pixel-aligned patches
    that holds the centre of a box with IoU >= the mode's minimum. Returns
    ``(cropped, patch)``: bool and (4,) normalized xyxy."""
    mode_key, scale_key, aspect_key, x_key, y_key = jax.random.split(key, 5)
    min_iou = jnp.asarray(CROP_MIN_IOUS, jnp.float32)[
        jax.random.randint(mode_key, (), 0, len(CROP_MIN_IOUS))
    ]
    height, width = canvas_hw
    scale = jax.random.uniform(scale_key, (max_trials,), jnp.float32, min_scale, 1.0)
    low, high = jnp.maximum(0.5, scale**2), jnp.minimum(2.0, 1 / scale**2)
    aspect = low + (high - low) * jax.random.uniform(aspect_key, (max_trials,))
    patch_w = jnp.maximum(1.0, jnp.round(scale * jnp.sqrt(aspect) * width))
    patch_h = jnp.maximum(1.0, jnp.round(scale / jnp.sqrt(aspect) * height))
    left = jnp.floor(jax.random.uniform(x_key, (max_trials,)) * (width - patch_w + 1))
    top = jnp.floor(jax.random.uniform(y_key, (max_trials,)) * (height - patch_h + 1))
    patches = jnp.stack([left, top, left + patch_w, top + patch_h], 1)
    patches = patches / jnp.stack([width, height, width, height])  # (T, 4)

    holds = _centres_inside(boxes_xyxy, patches) & mask[None]
    good = jnp.any(holds & (iou_xyxy(boxes_xyxy[None], patches[:, None]) >= min_iou), axis=1)
    has_boxes = jnp.any(mask)
    # an image without boxes takes the first patch (as the host sampler)
    cropped = ~jnp.isnan(min_iou) & (jnp.any(good) | ~has_boxes)
    patch = patches[jnp.where(has_boxes, jnp.argmax(good), 0)]
    return cropped, jnp.where(cropped, patch, jnp.array([0.0, 0.0, 1.0, 1.0]))


def sample_params(
    key: jax.Array,
    image_hw: jax.Array,
    boxes_xyxy: jax.Array,
    mask: jax.Array,
    *,
    photometric: bool = True,
    zoom_out: bool = True,
    expand_max_ratio: float = 4.0,
    expand_probability: float = 0.5,
    min_scale: float = 0.3,
    max_trials: int = 50,
) -> Params:
    """Draws one image's :class:`Params` with the host path's distributions.

    Args:
      key: a ``jax.random`` key.
      image_hw: int32 (2,) the valid (height, width) in pixels.
      boxes_xyxy: (M, 4) normalized xyxy of the valid image; rows where not ``mask``
        are ignored.
      mask: (M,) bool, real training targets.
      photometric, zoom_out: False gives the identity distortion / no zoom-out
        (the other parameters are drawn as with True, from the same keys).
    """
    photometric_key, canvas_key, patch_key, flip_key = jax.random.split(key, 4)
    if zoom_out:
        canvas = _sample_canvas(canvas_key, image_hw, expand_max_ratio, expand_probability)
    else:
        canvas = jnp.concatenate([image_hw.astype(jnp.float32), jnp.zeros(2, jnp.float32)])
    if photometric:
        distortion = _sample_photometric(photometric_key)
    else:
        distortion = {k: jnp.float32(v) for k, v in _NO_PHOTOMETRIC.items()}
        distortion["permutation"] = jnp.arange(3)
    boxes = canvas_boxes(boxes_xyxy, image_hw, canvas)
    cropped, patch = _sample_patch(patch_key, boxes, mask, canvas[:2], min_scale, max_trials)
    return Params(
        **distortion,
        canvas=canvas,
        cropped=cropped,
        patch=patch,
        flip=jax.random.uniform(flip_key) < 0.5,
    )


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
    """float RGB in [0, 255] (..., 3) -> HSV with H in [0, 360), S in [0, 1], V in
    [0, 255] (OpenCV's float convention)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = jnp.max(rgb, axis=-1)
    spread = value - jnp.min(rgb, axis=-1)
    saturation = jnp.where(value > 0, spread / jnp.where(value > 0, value, 1), 0.0)
    safe = jnp.where(spread > 0, spread, 1)
    hue = jnp.where(
        value == r,
        60 * (g - b) / safe,
        jnp.where(value == g, 120 + 60 * (b - r) / safe, 240 + 60 * (r - g) / safe),
    )
    hue = jnp.where(spread > 0, hue, 0.0)
    hue = jnp.where(hue < 0, hue + 360, hue)
    return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    """Inverse of :func:`rgb_to_hsv`."""
    hue, saturation, value = hsv[..., 0] / 60, hsv[..., 1], hsv[..., 2]
    sector = jnp.floor(hue)
    fraction = hue - sector
    p = value * (1 - saturation)
    q = value * (1 - saturation * fraction)
    t = value * (1 - saturation * (1 - fraction))
    sector = jnp.mod(sector, 6).astype(jnp.int32)[..., None]
    # (r, g, b) per sector: (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q)
    choices = jnp.stack([value, t, p, q], axis=-1)  # indices 0 v, 1 t, 2 p, 3 q
    table = jnp.array([[0, 1, 2], [3, 0, 2], [2, 0, 1], [2, 3, 0], [1, 2, 0], [0, 2, 3]])
    return jnp.take_along_axis(choices, table[sector[..., 0]], axis=-1)


def distort(image: jax.Array, params: Params) -> jax.Array:
    """The photometric distortion of ``params`` on a float32 RGB image in [0, 255]
    (..., 3), as :func:`ssd_jax.data.photometric.apply_photometric` without its
    rounding to uint8 between stages."""
    x = jnp.clip((image + params.brightness) * params.contrast_before, 0, 255)
    hsv = rgb_to_hsv(x)
    hue = jnp.mod(hsv[..., 0] + params.hue, 360.0)
    saturation = jnp.minimum(hsv[..., 1] * params.saturation, 1.0)
    shifted = hsv_to_rgb(jnp.stack([hue, saturation, hsv[..., 2]], axis=-1))
    x = jnp.where((params.saturation != 1) | (params.hue != 0), shifted, x)
    x = jnp.clip(x * params.contrast_after, 0, 255)
    return jnp.take(x, params.permutation, axis=-1)


def window(params: Params) -> jax.Array:
    """The pixel window (x0, y0, x1, y1) of the valid image that the crop of the
    zoom-out canvas selects; it extends past the image where the canvas shows the
    fill colour."""
    canvas_height, canvas_width, top, left = params.canvas
    scale = jnp.stack([canvas_width, canvas_height, canvas_width, canvas_height])
    return jnp.round(params.patch * scale) - jnp.stack([left, top, left, top])


def _axis_weights(start, stop, length, size: int, mirror, replicate):
    """Bilinear sampling along one axis: output pixel u of ``size`` reads source
    coordinate start + (u + 0.5) * (stop - start) / size - 0.5 (OpenCV's
    pixel-centre convention; from ``stop`` backwards when ``mirror``). Returns the
    two source indices (clamped into [0, length)) and their weights, which are 0
    for sources outside the image unless ``replicate`` (then the edge repeats)."""
    step = (stop - start) / size
    centres = (jnp.arange(size, dtype=jnp.float32) + 0.5) * step
    coordinate = jnp.where(mirror, stop - centres, start + centres) - 0.5
    first = jnp.floor(coordinate)
    fraction = coordinate - first
    indices = jnp.stack([first, first + 1]).astype(jnp.int32)  # (2, size)
    weights = jnp.stack([1 - fraction, fraction])
    inside = (indices >= 0) & (indices < length)
    weights = jnp.where(inside | replicate, weights, 0.0)
    return jnp.clip(indices, 0, length - 1), weights


def warp(
    image: jax.Array,
    image_hw: jax.Array,
    window_xyxy: jax.Array,
    mirror: jax.Array,
    size: int,
    fill_rgb: tuple[float, float, float],
) -> jax.Array:
    """Resamples a pixel window of the valid (height, width) part of ``image`` (S,
    S', 3) to (size, size, 3) float32, mirrored left-right if ``mirror``: bilinear,
    separable (rows, then columns). Where the window extends past the image the
    output shows ``fill_rgb``; a window inside the image repeats its edge pixels
    (as :func:`ssd_jax.data.augment.apply_geometry`)."""
    x0, y0, x1, y1 = window_xyxy
    height, width = image_hw[0], image_hw[1]
    replicate = (x0 >= 0) & (y0 >= 0) & (x1 <= width) & (y1 <= height)
    rows, row_weights = _axis_weights(y0, y1, height, size, False, replicate)
    cols, col_weights = _axis_weights(x0, x1, width, size, mirror, replicate)
    image = image.astype(jnp.float32)
    by_rows = sum(
        row_weights[k][:, None, None] * jnp.take(image, rows[k], axis=0) for k in range(2)
    )  # (size, S', 3)
    out = sum(col_weights[k][None, :, None] * jnp.take(by_rows, cols[k], axis=1) for k in range(2))
    covered = row_weights.sum(0)[:, None] * col_weights.sum(0)[None, :]  # (size, size)
    fill = jnp.where(replicate, 0.0, 1 - covered)[..., None] * jnp.asarray(fill_rgb, jnp.float32)
    return out + fill


def transform_boxes(
    params: Params, image_hw: jax.Array, boxes_xyxy: jax.Array, mask: jax.Array, size: int
) -> tuple[jax.Array, jax.Array]:
    """The boxes after zoom-out, crop (boxes whose centre leaves the patch are
    dropped, the others clipped to it) and flip; boxes under one output pixel are
    dropped (as the host path). Returns boxes (M, 4) normalized xyxy, zero where
    dropped, and the new mask (M,)."""
    boxes = canvas_boxes(boxes_xyxy, image_hw, params.canvas)
    patch = params.patch
    inside = _centres_inside(boxes, patch[None])[0]
    mask = mask & (inside | ~params.cropped)
    corners = jnp.clip(boxes.reshape(-1, 2, 2), patch[:2], patch[2:])
    boxes = ((corners - patch[:2]) / (patch[2:] - patch[:2])).reshape(-1, 4)
    flipped = jnp.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], axis=1)
    boxes = jnp.clip(jnp.where(params.flip, flipped, boxes), 0, 1)
    mask = mask & jnp.all((boxes[:, 2:] - boxes[:, :2]) * size >= 1, axis=1)
    return jnp.where(mask[:, None], boxes, 0.0), mask


def apply_params(
    params: Params,
    image: jax.Array,
    image_hw: jax.Array,
    boxes_xyxy: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    size: int,
    fill_rgb: tuple[float, float, float],
    photometric: bool = True,
) -> dict:
    """One image's augmentation with given ``params``: ``image`` uint8 (S, S', 3)
    padded, ``image_hw`` its valid (height, width), targets (M, 4) / (M,) / (M,).
    ``photometric=False`` skips :func:`distort` (for parameters without
    distortion, which it would leave unchanged). Returns ``{"image": uint8
    (size, size, 3), "boxes", "labels", "mask"}``."""
    distorted = image.astype(jnp.float32)
    if photometric:
        distorted = distort(distorted, params)
    pixels = warp(distorted, image_hw, window(params), params.flip, size, fill_rgb)
    boxes, mask = transform_boxes(params, image_hw, boxes_xyxy, mask, size)
    return {
        "image": jnp.clip(jnp.round(pixels), 0, 255).astype(jnp.uint8),
        "boxes": boxes,
        "labels": jnp.where(mask, labels, 0),
        "mask": mask,
    }


def augment_batch(
    key: jax.Array,
    batch: dict,
    size: int,
    fill_rgb: tuple[float, float, float],
    *,
    photometric: bool = True,
    zoom_out: bool = True,
) -> dict:
    """Augments a decoded batch: ``image`` uint8 (B, S, S', 3), ``image_hw`` int32
    (B, 2), ``boxes`` (B, M, 4), ``labels``, ``mask`` (B, M). Image b uses
    ``fold_in(key, b)``, b its index in the (global) batch. ``photometric`` /
    ``zoom_out`` False leave out those steps. Returns the batch with ``image``
    uint8 (B, size, size, 3) and the transformed targets."""
    steps = {"photometric": photometric, "zoom_out": zoom_out}

    def one_image(index, image, image_hw, boxes, labels, mask):
        key_b = jax.random.fold_in(key, index)
        params = sample_params(key_b, image_hw, boxes, mask, **steps)
        return apply_params(
            params, image, image_hw, boxes, labels, mask, size, fill_rgb, photometric
        )

    indices = jnp.arange(batch["image"].shape[0])
    parts = ("image", "image_hw", "boxes", "labels", "mask")
    return {**batch, **jax.vmap(one_image)(indices, *(batch[k] for k in parts))}


def augment_step(
    step: jax.Array,
    batch: dict,
    *,
    seed: int,
    size: int,
    fill_rgb: tuple[float, float, float],
    photometric: bool = True,
    zoom_out: bool = True,
) -> dict:
    """:func:`augment_batch` for train step ``step`` of a run with ``seed``: the
    key is ``fold_in(key(seed), step)``, so a resumed run draws what an
    uninterrupted one would have drawn."""
    key = jax.random.fold_in(jax.random.key(seed), step)
    return augment_batch(key, batch, size, fill_rgb, photometric=photometric, zoom_out=zoom_out)
