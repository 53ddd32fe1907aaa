import jax.numpy as jnp
import numpy as np

from ssd_jax import box_coding
from tests import numpy_reference as ref


def test_encode_hand_computed():
    default = jnp.array([0.5, 0.5, 0.2, 0.4])
    # cxcywh (0.55, 0.52, 0.4, 0.4): ((0.05/0.2)/0.1, (0.02/0.4)/0.1, log(2)/0.2, log(1)/0.2)
    deltas = box_coding.encode(jnp.array([0.35, 0.32, 0.75, 0.72]), default)
    np.testing.assert_allclose(deltas, [2.5, 0.5, np.log(2) / 0.2, 0.0], atol=1e-5)


def test_zero_offsets_decode_to_default_box():
    default = jnp.array([[0.5, 0.5, 0.2, 0.4]])
    np.testing.assert_allclose(
        box_coding.decode(jnp.zeros((1, 4)), default), [[0.4, 0.3, 0.6, 0.7]], atol=1e-7
    )


def test_encode_decode_are_inverses_and_match_reference():
    rng = np.random.default_rng(0)
    top_left = rng.uniform(0, 0.7, (50, 2))
    boxes = np.concatenate([top_left, top_left + rng.uniform(0.02, 0.3, (50, 2))], 1)
    defaults = np.concatenate([rng.uniform(0.1, 0.9, (50, 2)), rng.uniform(0.05, 0.6, (50, 2))], 1)
    variances = (0.1, 0.15, 0.2, 0.25)
    deltas = box_coding.encode(boxes, defaults, variances)
    expected = [ref.encode(b, d, variances) for b, d in zip(boxes, defaults)]
    np.testing.assert_allclose(deltas, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(box_coding.decode(deltas, defaults, variances), boxes, atol=1e-6)
    decoded = [ref.decode(x, d, variances) for x, d in zip(np.asarray(deltas), defaults)]
    np.testing.assert_allclose(box_coding.decode(deltas, defaults, variances), decoded, atol=1e-6)
