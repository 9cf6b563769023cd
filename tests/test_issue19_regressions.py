"""Regression tests for the second adversarial probe (issue 19), one per bug, named by item.

Items handled elsewhere: 1 (tests/test_linear_xent*.py), 2-4, 6, 7 (the sparse test files),
8 (the sharded workers), 10 (tests/test_debug_flags.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jsoftmax

Z = jax.random.normal(jax.random.key(0), (2, 5))

WRAPPING = [
    (jnp.uint32, 2**32 - 100),  # wraps onto ignore_index=-100 in int32
    (jnp.uint32, 2**31),  # wraps onto int32's minimum
    (jnp.uint32, 2**32 - 1),  # wraps onto -1
]


def _losses(ignore):
    w = jax.random.normal(jax.random.key(1), (5, 5))
    return {
        "cross_entropy": lambda z, y: jsoftmax.cross_entropy(
            z, y, ignore_index=ignore, reduction="none"
        ),
        "cross_entropy_smoothing": lambda z, y: jsoftmax.cross_entropy(
            z, y, ignore_index=ignore, label_smoothing=0.1, reduction="none"
        ),
        "nll_loss": lambda z, y: jsoftmax.nll_loss(z, y, ignore_index=ignore, reduction="none"),
        "linear_cross_entropy": lambda z, y: jsoftmax.linear_cross_entropy(
            z, w, y, ignore_index=ignore, reduction="none"
        ),
    }


@pytest.mark.parametrize(("dtype", "label"), WRAPPING)
@pytest.mark.parametrize("name", list(_losses(-100)))
def test_5_unsigned_labels_that_wrap_are_out_of_range_not_ignored(name, dtype, label):
    ignore = int(np.array(label, dtype).astype(np.int32))  # the value a plain cast wraps to
    f = _losses(ignore)[name]
    y = jnp.array([0, label], dtype)
    with pytest.raises(ValueError, match="labels must be class indices"):
        f(Z, y)  # concrete labels: the error names the label
    out = jax.jit(f)(Z, y)
    assert np.isfinite(float(out[0])) and np.isnan(float(out[1])), out
    # the loss of the valid label is the int32 one
    np.testing.assert_allclose(float(out[0]), float(jax.jit(f)(Z, jnp.array([0, 1]))[0]))
    grad = jax.jit(jax.grad(lambda z, y: jnp.sum(f(z, y))))(Z, y)
    # a NaN in the bad row (every entry; nll_loss: the one it reads), none in the good row
    assert np.any(np.isnan(np.asarray(grad[1]))) and np.all(np.isfinite(np.asarray(grad[0])))
    if name != "nll_loss":
        assert np.all(np.isnan(np.asarray(grad[1])))


def test_5_uint64_labels_under_x64_wrap_to_out_of_range():
    with jax.enable_x64(True):
        z = Z.astype(jnp.float64)
        y = jnp.array([0, 2**64 - 100], jnp.uint64)
        out = jax.jit(
            lambda z, y: jsoftmax.cross_entropy(z, y, ignore_index=-100, reduction="none")
        )(z, y)
        assert np.isfinite(float(out[0])) and np.isnan(float(out[1]))


def test_5_ignore_index_may_not_take_the_reserved_label():
    # int32's maximum is where too-large unsigned labels go: it cannot also be ignored
    top = int(np.iinfo(np.int32).max)
    with pytest.raises(ValueError, match=r"ignore_index must fit in int32 below its maximum"):
        jsoftmax.cross_entropy(Z, jnp.array([0, 1]), ignore_index=top)
    jsoftmax.cross_entropy(Z, jnp.array([0, 1]), ignore_index=top - 1)  # the largest allowed


def test_5_small_unsigned_labels_are_unchanged():
    # uint8/uint16 never exceed int32: cast as before, every value kept
    for dtype in (jnp.uint8, jnp.uint16):
        y = jnp.array([0, 4], dtype)
        got = jax.jit(lambda z, y: jsoftmax.cross_entropy(z, y, reduction="none"))(Z, y)
        want = jsoftmax.cross_entropy(Z, jnp.array([0, 4]), reduction="none")
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
