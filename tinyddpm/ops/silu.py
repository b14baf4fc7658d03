"""SiLU (swish), the activation of the DDPM U-Net.

Forward, elementwise:
    s = sigmoid(x) = 1 / (1 + exp(-x))
    y = x * s

A stable sigmoid. exp(-x) overflows for x below about -88 in float32 (-709 in float64), which
warns and relies on 1/inf = 0. Instead take e = exp(-|x|), which lies in (0, 1] and never
overflows, and pick the algebraically equal form for each sign:
    x >= 0:  s = 1 / (1 + e)            (e = exp(-x))
    x <  0:  s = e / (1 + e)            (multiply 1 / (1 + exp(-x)) above and below by exp(x) = e)
Both branches are evaluated on the same e, so neither can overflow.

Backward, with ds/dx = s (1 - s):
    dy/dx = s + x * s * (1 - s) = s * (1 + x * (1 - s))
    dx    = dy * s * (1 + x * (1 - s))
"""
from __future__ import annotations

from typing import NamedTuple

from ._checks import float_inputs


class SiLUCache(NamedTuple):
    x: object  # the input
    s: object  # sigmoid(x), same shape: reused so backward needs no exp


def sigmoid(x, xp):
    """1 / (1 + exp(-x)) without overflow for any finite x (see the module docstring)."""
    e = xp.exp(-xp.abs(x))  # in (0, 1]
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def silu_forward(x):
    """y = x * sigmoid(x), elementwise, any shape. Returns (y, cache)."""
    xp = float_inputs("silu", x=x)
    s = sigmoid(x, xp)
    return x * s, SiLUCache(x, s)


def silu_backward(dy, cache: SiLUCache):
    """Gradient dx of y = x * sigmoid(x)."""
    x, s = cache
    # in the forward pass this was: y = x * s with ds/dx = s * (1 - s), so now we have:
    return dy * s * (1.0 + x * (1.0 - s))
