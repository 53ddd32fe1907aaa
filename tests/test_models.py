import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssd_jax import default_boxes
from ssd_jax.models import SSD, ConvBlock, L2Norm, ssd300, ssd512
from ssd_jax.models.vgg import max_pool


def count_params(model):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# Non-BN counts are those of the PyTorch reference (shared doc §2, verified there).
# BN adds scale and bias for every conv of trunk and extras: trunk 6272 channels
# (2*64 + 2*128 + 3*256 + 6*512 + 2*1024), extras 1920 (SSD300) or 2304 (SSD512);
# SSD300-BN is the reference's 26,301,358 plus the 512 of conv11_2, which it left out.
@pytest.mark.parametrize(
    ("factory", "num_classes", "batch_norm", "expected"),
    [
        (ssd300, 20, False, 26_285_486),
        (ssd300, 80, False, 34_305_206),
        (ssd512, 20, False, 27_188_676),
        (ssd512, 80, False, 36_038_196),
        (ssd300, 20, True, 26_285_486 + 2 * (6272 + 1920)),
        (ssd300, 20, True, 26_301_358 + 512),
        (ssd512, 80, True, 36_038_196 + 2 * (6272 + 2304)),
    ],
)
def test_parameter_counts(factory, num_classes, batch_norm, expected):
    model = nnx.eval_shape(lambda: factory(num_classes, batch_norm=batch_norm, rngs=nnx.Rngs(0)))
    assert count_params(model) == expected


@nnx.jit
def forward(model, images):
    return model(images)


@pytest.mark.parametrize(("factory", "name"), [(ssd300, "ssd300"), (ssd512, "ssd512")])
def test_full_size_forward_pass(factory, name):
    model = factory(20, rngs=nnx.Rngs(0))
    size = model.image_size
    images = jax.random.normal(jax.random.key(1), (1, size, size, 3))
    loc, conf = forward(model, images)
    num_boxes = default_boxes.preset(name).num_boxes
    assert loc.shape == (1, num_boxes, 4) and conf.shape == (1, num_boxes, 21)
    assert loc.dtype == conf.dtype == jnp.float32
    assert np.isfinite(np.asarray(loc)).all() and np.isfinite(np.asarray(conf)).all()


@pytest.mark.parametrize(
    ("name", "batch_norm", "backbone"),
    [("ssd300", True, "vgg16"), ("ssd512", True, "vgg16"),
     ("ssdlite320", True, "mobilenet_v3_large_reduced_tail"),
     ("ssdlite320", True, "mobilenet_v3_large"),
     ("ssd300", True, "resnet50"), ("ssd300", True, "resnet18")],
)  # fmt: skip
def test_source_feature_maps_match_default_box_preset(name, batch_norm, backbone):
    model = SSD(name, 3, backbone=backbone, batch_norm=batch_norm, width=1 / 8, rngs=nnx.Rngs(0))
    size = model.image_size
    images = jnp.zeros((2, size, size, 3))
    shapes = nnx.eval_shape(lambda m, x: m.source_features(x), model, images)
    spec = default_boxes.preset(name)
    assert [s.shape[1:3] for s in shapes] == [(f, f) for f in spec.feature_map_sizes]
    loc, conf = nnx.eval_shape(lambda m, x: m(x), model, images)
    assert loc.shape == (2, spec.num_boxes, 4) and conf.shape == (2, spec.num_boxes, 4)


def test_head_order_is_default_box_order():
    # Zero the loc heads, then set one bias: only the default boxes of that
    # head's slot may move, and they must sit at map offset + (y * W + x) * A + slot.
    model = ssd300(2, width=1 / 8, rngs=nnx.Rngs(0))
    for head in model.loc_heads:
        head.kernel[...] = jnp.zeros_like(head.kernel[...])
    head = model.loc_heads[1]  # 19x19 map, 6 slots, after 5776 boxes
    head.bias[...] = jnp.zeros_like(head.bias[...]).at[4 * 4 + 2].set(1.0)  # slot 4, coord w
    loc, _ = forward(model, jnp.zeros((1, 300, 300, 3)))
    moved = np.argwhere(np.asarray(loc[0]) != 0)
    expected_rows = 5776 + np.arange(19 * 19) * 6 + 4
    np.testing.assert_array_equal(moved[:, 0], expected_rows)
    np.testing.assert_array_equal(moved[:, 1], 2)


def test_stride_two_conv_pads_one_on_every_side():
    # PyTorch padding=1: the first 3x3/2 window of a 10x10 input covers 2x2 real
    # pixels and the last one 3x3; Flax "SAME" would pad (0, 1) and give 9 and 4.
    block = ConvBlock(1, 1, 3, stride=2, padding=1, rngs=nnx.Rngs(0))
    block.conv.kernel[...] = jnp.ones_like(block.conv.kernel[...])
    out = block(jnp.ones((1, 10, 10, 1)))
    assert out.shape == (1, 5, 5, 1)
    assert out[0, 0, 0, 0] == 4 and out[0, -1, -1, 0] == 9


def torch_max_pool(x, window, stride, padding, ceil_mode):
    """PyTorch MaxPool2d semantics on one (H, W) array, by loops."""
    size = x.shape[0]
    rounding = math.ceil if ceil_mode else math.floor
    out = rounding((size + 2 * padding - window) / stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    result = np.full((out, out), -np.inf)
    for i in range(out):
        for j in range(out):
            y0, x0 = i * stride - padding, j * stride - padding
            patch = x[max(y0, 0) : y0 + window, max(x0, 0) : x0 + window]
            result[i, j] = patch.max()
    return result


@pytest.mark.parametrize(
    ("size", "window", "stride", "padding", "ceil_mode"),
    [(75, 2, 2, 0, True), (76, 2, 2, 0, True), (38, 2, 2, 0, False), (19, 3, 1, 1, False)],
)
def test_max_pool_matches_pytorch_semantics(size, window, stride, padding, ceil_mode):
    x = np.random.default_rng(size).normal(size=(size, size)).astype(np.float32)
    got = max_pool(jnp.asarray(x)[None, :, :, None], window, stride, padding, ceil_mode)
    np.testing.assert_array_equal(
        got[0, :, :, 0], torch_max_pool(x, window, stride, padding, ceil_mode)
    )


def test_l2norm():
    layer = L2Norm(2)
    x = jnp.array([[[[3.0, 4.0], [0.0, 0.0]]]])
    np.testing.assert_allclose(layer(x), [[[[12.0, 16.0], [0.0, 0.0]]]], atol=1e-5)


def test_xavier_uniform_init_and_zero_bias():
    model = ssd300(20, width=1 / 8, rngs=nnx.Rngs(0))
    for conv in (model.conv8_2.conv, model.loc_heads[0], model.conf_heads[2]):
        kernel = np.asarray(conv.kernel[...])
        fan_in, fan_out = np.prod(kernel.shape[:3]), np.prod(kernel.shape[:2]) * kernel.shape[3]
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert np.abs(kernel).max() <= bound
        assert abs(kernel.std() / (bound / math.sqrt(3)) - 1) < 0.1
        assert not np.asarray(conv.bias[...]).any()
    np.testing.assert_array_equal(model.vgg.conv4_3_norm.scale[...], 20.0)


def test_batch_norm_train_and_eval_modes():
    model = ssd300(2, batch_norm=True, width=1 / 8, rngs=nnx.Rngs(0))
    images = jax.random.normal(jax.random.key(0), (2, 300, 300, 3))
    running_mean = np.asarray(model.conv8_1.bn.mean[...]).copy()
    train_loc, _ = forward(model, images)
    assert not np.allclose(model.conv8_1.bn.mean[...], running_mean)  # stats updated
    model.eval()
    running_mean = np.asarray(model.conv8_1.bn.mean[...]).copy()
    pair, _ = forward(model, images)
    alone, _ = forward(model, images[:1])
    np.testing.assert_array_equal(model.conv8_1.bn.mean[...], running_mean)
    np.testing.assert_allclose(alone[0], pair[0], atol=1e-4)  # no batch dependence
    assert not np.allclose(train_loc[0], pair[0], atol=1e-3)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    model32 = ssd300(4, width=1 / 8, rngs=nnx.Rngs(0))
    model16 = ssd300(4, width=1 / 8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    params = jax.tree.leaves(nnx.state(model16, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    images = jax.random.normal(jax.random.key(0), (1, 300, 300, 3))
    loc32, conf32 = forward(model32, images)
    loc16, conf16 = forward(model16, images)
    assert loc16.dtype == conf16.dtype == jnp.float32
    for low, full in ((loc16, loc32), (conf16, conf32)):
        error = np.abs(np.asarray(low) - np.asarray(full)).max()
        assert 0 < error < 0.05 * np.abs(np.asarray(full)).max()


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((1, 299, 299, 3), jnp.float32, "expects 300x300 images, got 299x299"),
        ((1, 300, 300, 1), jnp.float32, "3 channels"),
        ((300, 300, 3), jnp.float32, r"shape \(B, 300, 300, 3\)"),
        ((1, 300, 300, 3), jnp.uint8, "normalize uint8 images"),
    ],
)
def test_bad_images(shape, dtype, message):
    model = ssd300(2, width=1 / 8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=message):
        model(jnp.zeros(shape, dtype))


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("ssd300", 0), {}, "num_classes must be at least 1"),
        (("ssd400", 20), {}, "unknown SSD architecture 'ssd400'"),
        (("ssd300", 20), {"boxes_per_location": (4, 6)}, "6 source feature maps"),
        (("ssd300", 20), {"width": 0.0}, "width must be positive"),
    ],
)
def test_bad_model_arguments(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        SSD(*args, rngs=nnx.Rngs(0), **kwargs)


@pytest.mark.parametrize(
    ("kernel", "padding", "dilation", "stride"),
    [(3, 1, 1, 1), (3, 6, 6, 1), (1, 0, 1, 1), (3, 0, 1, 1), (4, 1, 1, 1), (3, 1, 1, 2)],
)
def test_fast_kernel_gradient_conv_equals_lax(kernel, padding, dilation, stride):
    """conv1_x, conv6 (dilated), 1x1, VALID 3x3, SSD512's 4x4 conv12_2, and a
    stride-2 conv (the unchanged path): values and both gradients as lax's."""
    from jax import lax

    from ssd_jax.models.conv import conv_general_dilated

    rng = np.random.default_rng(kernel + 10 * padding)
    x = jnp.asarray(rng.normal(size=(2, 23, 21, 16)), jnp.float32)  # >= MIN_TAP_CHANNELS
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 16, 17)) * 0.1, jnp.float32)
    args = ((stride, stride), ((padding, padding), (padding, padding)))
    kwargs = {"rhs_dilation": (dilation, dilation), "dimension_numbers": ("NHWC", "HWIO", "NHWC")}

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, *args, **kwargs)))

    jaxpr = str(jax.make_jaxpr(loss(conv_general_dilated))(x, w))
    assert ("custom_vjp_call" in jaxpr) == (stride == 1)  # the fast path is really taken
    ours = jax.value_and_grad(loss(conv_general_dilated), (0, 1))(x, w)
    theirs = jax.value_and_grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6)
    for a, b in zip(ours[1], theirs[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))
    # bfloat16 compute keeps its dtypes
    grads = jax.grad(loss(conv_general_dilated), (0, 1))(
        x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    )
    assert all(g.dtype == jnp.bfloat16 for g in grads)


@pytest.mark.parametrize(("kernel", "stride"), [(3, 1), (3, 2), (5, 1), (5, 2)])
def test_depthwise_convolutions_by_taps_equal_xlas(kernel, stride):
    """MobileNet's depthwise convolutions take the sum over taps on CPU: value and
    both gradients equal lax's grouped convolution (float32 sums of at most 25
    products in another order), at odd sizes and both strides."""
    from jax import lax

    from ssd_jax.models.conv import conv_general_dilated

    rng = np.random.default_rng(kernel + 10 * stride)
    x = jnp.asarray(rng.normal(size=(2, 23, 21, 24)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 1, 24)), jnp.float32)
    pad = (kernel - 1) // 2
    args = ((stride, stride), ((pad, pad), (pad, pad)))
    kwargs = {"dimension_numbers": ("NHWC", "HWIO", "NHWC"), "feature_group_count": 24}

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, *args, **kwargs)))

    jaxpr = str(jax.make_jaxpr(loss(conv_general_dilated))(x, w))
    assert "platform_index" in jaxpr or "platform_dependent" in jaxpr  # the CPU path exists
    out = conv_general_dilated(x, w, *args, **kwargs)
    expected = lax.conv_general_dilated(x, w, *args, **kwargs)
    np.testing.assert_allclose(out, expected, atol=1e-5 * float(jnp.abs(expected).max()))
    ours = jax.grad(loss(conv_general_dilated), (0, 1))(x, w)
    theirs = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.abs(b).max()))
    grads = jax.grad(loss(conv_general_dilated), (0, 1))(
        x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    )
    assert all(g.dtype == jnp.bfloat16 for g in grads)
