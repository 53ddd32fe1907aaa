"""The photometric distortion of SSD training (brightness, contrast,
saturation, hue, channel order), NumPy/OpenCV on uint8 RGB images.

:mod:`ssd_jax.data.device_augment` computes the same in float32 on the device.
"""

import dataclasses

import cv2
import numpy as np


def adjust_saturation_hue(
    image: np.ndarray, saturation_factor: float = 1.0, hue_degrees: float = 0.0
) -> np.ndarray:
    """Scales saturation (clipped to [0, 1]) and rotates hue (mod 360 degrees) of a
    float32 RGB image in [0, 255]."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)  # float32: H [0, 360), S [0, 1], V [0, 255]
    hue, saturation, value = cv2.split(hsv)
    if saturation_factor != 1.0:
        saturation = np.minimum(saturation * np.float32(saturation_factor), np.float32(1))
    if hue_degrees != 0.0:
        hue += np.float32(hue_degrees)
        hue[hue >= 360] -= 360
        hue[hue < 0] += 360
    return cv2.cvtColor(cv2.merge((hue, saturation, value)), cv2.COLOR_HSV2RGB)


def adjust_saturation_hue_uint8(
    image: np.ndarray, saturation_factor: float = 1.0, hue_degrees: float = 0.0
) -> np.ndarray:
    """:func:`adjust_saturation_hue` for uint8 RGB in OpenCV's 8-bit HSV (hue in
    2-degree steps) with lookup tables: about 10x faster than the float32 version,
    within a few levels of it (the hue shift is rounded to 2 degrees)."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)  # uint8: H [0, 180), S, V [0, 255]
    hue, saturation, value = cv2.split(hsv)
    levels = np.arange(256, dtype=np.float32)
    if saturation_factor != 1.0:
        table = np.clip(np.round(levels * np.float32(saturation_factor)), 0, 255)
        saturation = cv2.LUT(saturation, table.astype(np.uint8))
    if hue_degrees != 0.0:
        shift = round(hue_degrees / 2)
        table = np.where(levels < 180, (levels + shift) % 180, levels)
        hue = cv2.LUT(hue, table.astype(np.uint8))
    return cv2.cvtColor(cv2.merge((hue, saturation, value)), cv2.COLOR_HSV2RGB)


@dataclasses.dataclass(frozen=True)
class Photometric:
    """The photometric distortion's parameters (identity by default): brightness
    offset, contrast factor before and after the HSV part, saturation factor, hue
    shift in degrees, and a channel permutation (None: keep RGB)."""

    brightness: float = 0.0
    contrast_before: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0
    contrast_after: float = 1.0
    permutation: tuple[int, int, int] | None = None


def draw_photometric(rng: np.random.Generator) -> Photometric:
    """Random brightness (+-32), contrast (x0.5-1.5, before or after the HSV part),
    saturation (x0.5-1.5), hue (+-18 degrees), each with p = 0.5, then a random
    channel permutation with p = 0.5."""
    brightness = rng.uniform(-32, 32) if rng.uniform() < 0.5 else 0.0
    contrast_first = rng.uniform() < 0.5
    contrast_before = rng.uniform(0.5, 1.5) if contrast_first and rng.uniform() < 0.5 else 1.0
    saturation = rng.uniform(0.5, 1.5) if rng.uniform() < 0.5 else 1.0
    hue = rng.uniform(-18, 18) if rng.uniform() < 0.5 else 0.0
    contrast_after = rng.uniform(0.5, 1.5) if not contrast_first and rng.uniform() < 0.5 else 1.0
    permutation = tuple(int(c) for c in rng.permutation(3)) if rng.uniform() < 0.5 else None
    return Photometric(brightness, contrast_before, saturation, hue, contrast_after, permutation)


def apply_photometric(image: np.ndarray, params: Photometric) -> np.ndarray:
    """Applies ``params`` to a uint8 RGB image: brightness and contrast (lookup
    tables), saturation and hue (8-bit HSV), contrast after, channel permutation.
    uint8 RGB out (rounded)."""
    # Everything stays uint8: brightness and contrast act per value (lookup tables,
    # rounded to whole levels, far below the distortion's own scale), saturation
    # and hue in 8-bit HSV. The float32 HSV round trip took ~80 % of the
    # augmentation time.
    levels = np.arange(256, dtype=np.float32)
    table = np.clip((levels + params.brightness) * params.contrast_before, 0, 255)
    x = cv2.LUT(image, np.round(table).astype(np.uint8))
    if params.saturation != 1.0 or params.hue != 0.0:
        x = adjust_saturation_hue_uint8(x, params.saturation, params.hue)
    if params.contrast_after != 1.0:
        table = np.clip(levels * params.contrast_after, 0, 255)
        x = cv2.LUT(x, np.round(table).astype(np.uint8))
    if params.permutation is not None:
        channels = cv2.split(x)
        x = cv2.merge([channels[c] for c in params.permutation])
    return x


def photometric_distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """:func:`apply_photometric` with parameters from :func:`draw_photometric`.
    uint8 RGB in, uint8 RGB out."""
    return apply_photometric(image, draw_photometric(rng))
