"""Inverted dropout, used inside the DDPM ResBlock (p = 0.1 on CIFAR-10 in the paper).

Forward in training, for a drop probability p in [0, 1):
    u    ~ Uniform[0, 1)  one draw per entry, from the generator ``rng``
    keep = (u >= p)                     P(keep) = 1 - p
    m    = keep / (1 - p)               the scaled mask: 0 or 1/(1-p)
    y    = x * m

E[m] = (1 - p) / (1 - p) = 1, so E[y] = x: scaling at training time ("inverted" dropout) makes
evaluation the plain identity, with nothing to rescale. In evaluation (train=False), or when
p == 0, y = x and no random numbers are drawn (``rng`` may then be None). Dropping multiplies by 0
rather than writing zeros, so a NaN in x stays NaN even where it is dropped (NaN * 0 = NaN).

Backward: y is linear in x with the mask held fixed, so
    dx = dy * m                          (dx = dy in evaluation)

Repeatability: every draw comes from ``rng``, a NumPy or CuPy Generator
(``np.random.default_rng(seed)`` or ``tinyddpm.backend.make_rng(seed)``) on the same backend as
x, so the same seed gives the same mask on that backend. NumPy and CuPy generators produce
different streams, as do PyTorch's, so masks are only comparable within one backend.

Proof: tests/test_dropout.py (test_gradcheck: finite differences with the mask held fixed, over
hypothesis-drawn shapes, p and train; test_keep_rate_and_expectation; test_matches_torch_where_no_randomness:
the PyTorch oracle in eval and at p = 0); ``python -m tinyddpm.gradcheck --op dropout``, row 'dropout p=0.3'.
"""
from __future__ import annotations

import numbers
from typing import NamedTuple

from ..array_checks import describe, float_inputs, require
from ..backend import is_cupy_array


class DropoutCache(NamedTuple):
    mask: object  # same shape as x: keep / (1 - p) in x's dtype, or None for the identity


def dropout_forward(x, p, rng, train=True):
    """y = x * keep / (1 - p) with keep ~ Bernoulli(1 - p) drawn from ``rng``. Returns (y, cache).

    x any shape (float32 or float64), p a number in [0, 1), rng a Generator on x's backend. In eval
    (train=False) or at p = 0, y is a fresh copy of x and ``rng`` is neither read nor checked.
    """
    _check_dropout(x, p, rng, train)
    if not train or p == 0:
        return x.copy(), DropoutCache(None)
    u = rng.random(x.shape, dtype=x.dtype)  # same shape as x, uniform in [0, 1)
    mask = (u >= p).astype(x.dtype) * (1.0 / (1.0 - p))  # 0 or 1/(1-p), x's dtype
    return x * mask, DropoutCache(mask)


def dropout_backward(dy, cache: DropoutCache):
    """Gradient dx of y = x * mask (dx = dy, as a fresh array, for the identity)."""
    if cache.mask is None:
        return dy.copy()
    # in the forward pass this was: y = x * mask, so now we have:
    return dy * cache.mask


# ----------------------------------------------------------------------------- argument checks

def _check_dropout(x, p, rng, train):
    """Raise, naming dropout and x's shape, unless x is a float array, p is in [0, 1) and, when a mask will
    be drawn (train and p > 0), rng is a Generator on x's backend."""
    op = "dropout"
    float_inputs(op, x=x)
    p_ok = isinstance(p, numbers.Real) and not isinstance(p, bool) and 0.0 <= p < 1.0
    require(op, p_ok, lambda: f"p must be a number in [0, 1), got {p!r} for {describe(x=x)}")
    if not train or p == 0:
        return
    if not hasattr(rng, "random"):
        raise TypeError(f"dropout: rng must be a NumPy or CuPy Generator (np.random.default_rng(seed) or "
                        f"tinyddpm.backend.make_rng(seed)), got {type(rng).__name__} for {describe(x=x)}")
    if _is_cupy_generator(rng) != is_cupy_array(x):
        rng_kind = "cupy" if _is_cupy_generator(rng) else "numpy"
        x_kind = "cupy" if is_cupy_array(x) else "numpy"
        raise TypeError(f"dropout: rng is a {rng_kind} generator but x is a {x_kind} array {describe(x=x)}; "
                        "make the generator on x's device (tinyddpm.backend.make_rng)")


def _is_cupy_generator(rng) -> bool:
    return type(rng).__module__.split(".")[0] == "cupy"
