"""SSD (Liu et al. 2016) as a Flax NNX module: a backbone of
:data:`ssd_jax.models.backbones.BACKBONES`, its extra layers and 3x3 heads.

The network maps a normalized (B, S, S, 3) image to per-default-box predictions:
``loc`` (B, A, 4) offsets (see :mod:`ssd_jax.box_coding`) and ``conf`` (B, A, C + 1)
class logits with background at index 0, both float32, in the default-box order of
:func:`ssd_jax.default_boxes.generate` (map, row y, column x, slot).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ssd_jax.default_boxes import preset
from ssd_jax.models.backbones import backbone as find_backbone


class SSD(nnx.Module):
    """SSD on a backbone of :data:`~ssd_jax.models.backbones.BACKBONES`.

    Args:
      architecture: the layout of maps and default boxes (``"ssd300"`` or
        ``"ssd512"`` for VGG16): it picks the backbone's extra layers, and its
        default-box preset gives the input size.
      num_classes: C, the number of object classes (background excluded); the
        confidence heads predict C + 1 logits.
      backbone: a key of ``BACKBONES`` (``"vgg16"``).
      boxes_per_location: default boxes per location of each source map; the
        paper's (from the ``architecture`` default-box preset) when None.
      batch_norm: BatchNorm after every conv of trunk and extra layers.
      width: channel multiplier; 1.0 is the real model, smaller values (e.g. 1/8)
        only make fast CPU tests and demos.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); outputs are float32 anyway.
      param_dtype: parameter dtype.
      rngs: initialization randomness.

    Call ``model(images)`` with images (B, S, S, 3) float, already normalized, where
    S is the architecture's input size. Returns ``(loc, conf)``. BatchNorm uses
    batch statistics until ``model.eval()`` (and again after ``model.train()``).
    """

    def __init__(
        self,
        architecture: str,
        num_classes: int,
        *,
        backbone: str = "vgg16",
        boxes_per_location: Sequence[int] | None = None,
        batch_norm: bool = False,
        width: float = 1.0,
        dtype: jnp.dtype = jnp.float32,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        trunk = find_backbone(backbone)
        if architecture not in trunk.extras:
            raise ValueError(f"unknown SSD architecture {architecture!r} for {backbone}; "
                             f"expected one of {sorted(trunk.extras)}")  # fmt: skip
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1 (object classes), got {num_classes}")
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        extras = trunk.extras[architecture]
        if boxes_per_location is None:
            boxes_per_location = preset(architecture).boxes_per_location
        self.architecture, self.backbone = architecture, backbone
        self.image_size = preset(architecture).image_size
        self.num_classes = num_classes
        self.width = width

        kwargs = dict(batch_norm=batch_norm, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.trunk_attribute = trunk.attribute
        setattr(self, trunk.attribute, trunk.trunk(width=width, **kwargs))
        source_features = list(self.trunk.out_features)
        self.boxes_per_location = tuple(boxes_per_location)
        self.extra_stages = []
        for modules, out in trunk.build_extras(extras, source_features[-1], width, **kwargs):
            for name, module in modules.items():
                setattr(self, name, module)
            self.extra_stages.append(tuple(modules))
            source_features.append(out)

        if len(self.boxes_per_location) != len(source_features):
            raise ValueError(
                f"{architecture} has {len(source_features)} source feature maps but "
                f"boxes_per_location has {len(self.boxes_per_location)} entries"
            )
        sources = list(zip(source_features, self.boxes_per_location, strict=True))
        self.loc_heads = nnx.List([trunk.head(f, a * 4, **kwargs) for f, a in sources])
        self.conf_heads = nnx.List(
            [trunk.head(f, a * (num_classes + 1), **kwargs) for f, a in sources]
        )
        self.dtype = dtype

    def _check_images(self, images: jax.Array) -> None:
        expected = (self.image_size, self.image_size, 3)
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(
                f"{self.architecture} expects normalized floating-point images, got dtype "
                f"{images.dtype}; normalize uint8 images before calling the model"
            )
        if images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(
                f"{self.architecture} expects images of shape (B, {self.image_size}, "
                f"{self.image_size}, 3) (NHWC, 3 channels), got {images.shape}"
            )
        if tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"{self.architecture} expects {self.image_size}x{self.image_size} images, got "
                f"{images.shape[1]}x{images.shape[2]} (shape {images.shape}); resize first"
            )

    @property
    def trunk(self) -> nnx.Module:
        """The backbone module (its variables are under ``trunk_attribute``)."""
        return getattr(self, self.trunk_attribute)

    def source_features(self, images: jax.Array) -> list[jax.Array]:
        """The source feature maps the heads read, (B, H_k, W_k, channels_k) each:
        the backbone's maps (VGG16: normalized conv4_3, conv7), then the second
        conv of each extra layer."""
        self._check_images(images)
        sources = list(self.trunk(images.astype(self.dtype)))
        x = sources[-1]
        for stage in self.extra_stages:
            for name in stage:
                x = getattr(self, name)(x)
            sources.append(x)
        return sources

    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(B, S, S, 3) normalized images -> loc (B, A, 4), conf (B, A, C + 1), float32."""
        sources = self.source_features(images)
        batch = images.shape[0]
        # NHWC head outputs flatten to (y, x, slot) order, that of the default boxes.
        loc = [
            head(s).reshape(batch, -1, 4) for head, s in zip(self.loc_heads, sources, strict=True)
        ]
        conf = [
            head(s).reshape(batch, -1, self.num_classes + 1)
            for head, s in zip(self.conf_heads, sources, strict=True)
        ]
        loc = jnp.concatenate(loc, axis=1).astype(jnp.float32)
        conf = jnp.concatenate(conf, axis=1).astype(jnp.float32)
        return loc, conf


def ssd300(num_classes: int, **kwargs) -> SSD:
    """SSD300; keyword arguments as for :class:`SSD` (``rngs`` required)."""
    return SSD("ssd300", num_classes, **kwargs)


def ssd512(num_classes: int, **kwargs) -> SSD:
    """SSD512; keyword arguments as for :class:`SSD` (``rngs`` required)."""
    return SSD("ssd512", num_classes, **kwargs)
