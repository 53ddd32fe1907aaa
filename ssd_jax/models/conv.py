"""A drop-in ``lax.conv_general_dilated`` whose kernel gradient is fast on CPU,
and whose depthwise convolutions are fast there too.

XLA's CPU backend computes the kernel gradient of a convolution over a large
image as one convolution with an image-sized "kernel", which is very slow: for
SSD300's conv1_2 (300x300, 64 -> 64 channels) it takes about 12x the time of the
input gradient, and the early VGG layers make up most of a training step. For
stride-1 NHWC convolutions this module computes the kernel gradient on CPU as one
matrix product per kernel tap (shifted input, flattened, times the flattened
output gradient), which runs at BLAS speed. The forward pass, the input gradient
and every other backend (GPU, TPU: ``lax.platform_dependent``) are unchanged.

XLA's CPU backend is slow for depthwise convolutions as well (MobileNet's;
``feature_group_count`` = channels), forward and backward. On CPU these become a
sum over the kernel taps of strided input slices times the tap's weights:
elementwise work that XLA fuses into one loop, and whose gradients are slices,
pads and reductions.
"""

import contextlib
import functools

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")
# Below this many channels XLA's own kernel gradient is faster (measured: 8 -> 8
# channels at 300x300 takes 2x longer by taps; 16 -> 16 at 150x150 1.2x shorter).
MIN_TAP_CHANNELS = 16


def _plain_conv(x, kernel, padding, dilation):
    return lax.conv_general_dilated(
        x, kernel, (1, 1), padding, rhs_dilation=dilation, dimension_numbers=_NHWC
    )


def _kernel_grad_by_taps(x, grad, kernel_shape, padding, dilation):
    """d loss / d kernel (HWIO) as kh * kw matrix products (stride 1, NHWC)."""
    kh, kw, c_in, c_out = kernel_shape
    padded = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    out_h, out_w = grad.shape[1:3]
    grad_2d = grad.reshape(-1, c_out)
    taps = []
    for i in range(kh):
        for j in range(kw):
            top, left = i * dilation[0], j * dilation[1]
            window = lax.slice(
                padded,
                (0, top, left, 0),
                (padded.shape[0], top + out_h, left + out_w, c_in),
            )
            taps.append(
                lax.dot(window.reshape(-1, c_in).T, grad_2d, preferred_element_type=jnp.float32)
            )
    return jnp.stack(taps).reshape(kernel_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_stride1(x, kernel, padding, dilation):
    return _plain_conv(x, kernel, padding, dilation)


def _conv_stride1_fwd(x, kernel, padding, dilation):
    return _plain_conv(x, kernel, padding, dilation), (x, kernel)


def _conv_stride1_bwd(padding, dilation, residuals, grad):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x: _plain_conv(x, kernel, padding, dilation), x)
    (grad_x,) = input_vjp(grad)

    def xla_kernel_grad(x, grad):
        _, kernel_vjp = jax.vjp(lambda k: _plain_conv(x, k, padding, dilation), kernel)
        return kernel_vjp(grad)[0].astype(jnp.float32)

    def cpu_kernel_grad(x, grad):
        return _kernel_grad_by_taps(x, grad, kernel.shape, padding, dilation)

    grad_kernel = lax.platform_dependent(x, grad, cpu=cpu_kernel_grad, default=xla_kernel_grad)
    return grad_x, grad_kernel.astype(kernel.dtype)


_conv_stride1.defvjp(_conv_stride1_fwd, _conv_stride1_bwd)


def _depthwise_by_taps(x, kernel, strides, padding):
    """Depthwise NHWC convolution (kernel (kh, kw, 1, C)) as a sum over taps."""
    kh, kw = kernel.shape[:2]
    padded = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    batch, height, width, channels = padded.shape
    out_h = (height - kh) // strides[0] + 1
    out_w = (width - kw) // strides[1] + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            end = (batch, i + (out_h - 1) * strides[0] + 1, j + (out_w - 1) * strides[1] + 1,
                   channels)  # fmt: skip
            window = lax.slice(padded, (0, i, j, 0), end, (1, *strides, 1))
            term = window * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


# Whether depthwise convolutions may take the CPU path (a ``platform_dependent``
# choice, which exporters to formats without it turn off: see lax_convolutions).
_taps = {"on": True}


@contextlib.contextmanager
def lax_convolutions():
    """Within it, depthwise convolutions are traced as ``lax``'s grouped
    convolution only (no ``platform_dependent``): for exports to formats that
    cannot express a per-platform choice, such as ONNX."""
    before = _taps["on"]
    _taps["on"] = False
    try:
        yield
    finally:
        _taps["on"] = before


def _depthwise(x, kernel, strides, padding):
    def xla(x, kernel):
        return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC,
                                        feature_group_count=x.shape[-1])  # fmt: skip

    def cpu(x, kernel):
        return _depthwise_by_taps(x, kernel, strides, padding)

    return lax.platform_dependent(x, kernel, cpu=cpu, default=xla)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
    out_sharding=None,
):
    """``lax.conv_general_dilated``; stride-1, ungrouped NHWC/HWIO convolutions
    with explicit padding and at least ``MIN_TAP_CHANNELS`` input and output
    channels take the fast-kernel-gradient path, undilated depthwise ones (any
    stride) the sum over taps on CPU."""
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    plain = (
        (lhs_dilation is None or tuple(lhs_dilation) == (1, 1))
        and batch_group_count == 1
        and precision is None
        and preferred_element_type is None
        and out_sharding is None
        and not isinstance(padding, str)
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc
    )
    depthwise = (
        plain
        and feature_group_count == lhs.shape[-1] == rhs.shape[-1] > 1
        and rhs.shape[2] == 1
        and (rhs_dilation is None or tuple(rhs_dilation) == (1, 1))
    )
    if depthwise and _taps["on"]:
        padding = tuple((int(low), int(high)) for low, high in padding)
        return _depthwise(lhs, rhs, tuple(int(s) for s in window_strides), padding)
    simple = (
        plain
        and tuple(window_strides) == (1, 1)
        and feature_group_count == 1
        and min(lhs.shape[-1], rhs.shape[-1]) >= MIN_TAP_CHANNELS
    )
    if simple:
        padding = tuple((int(low), int(high)) for low, high in padding)
        dilation = (1, 1) if rhs_dilation is None else tuple(int(d) for d in rhs_dilation)
        return _conv_stride1(lhs, rhs, padding, dilation)
    kwargs = {} if out_sharding is None else {"out_sharding": out_sharding}
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type, **kwargs,
    )  # fmt: skip
