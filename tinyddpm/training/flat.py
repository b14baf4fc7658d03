"""Flat buffers: many named arrays that are views into ONE contiguous 1-D array.

    flat = FlatBuffer.holding({"conv.w": w, "conv.b": b})     # one array with w's and b's values
    flat.data                  # (w.size + b.size,): one whole-array operation touches every tensor
    flat.views["conv.w"]       # (4, 3, 3, 3), a view: writing it writes flat.data, and the other way round
    flat.gather(grads)         # flat.data <- the dict's arrays, one after another, in one call

Why. The training step updates the weights, the AdamW moments and the EMA of every tensor: 245 tensors in the gpu
preset. Written per tensor that is some 20 array operations per tensor, ~5,000 small kernel launches per step on a
GPU, most too short to fill it. When each of those sets is one flat array, the same arithmetic is one pass over
memory (training/fused_update.py). The network does not notice: it reads its named arrays, which are views.

Layout. The tensors lie one after another in ``order`` (default: the dict's order), each C-contiguous:

    views[name] = data[offsets[name] : offsets[name] + size].reshape(shape)

``views`` keeps the dict's own order whatever the storage order, so code that walks the dict (checkpoints, the
MPI broadcast) sees the same names in the same order as before.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_xp


class FlatBuffer:
    """One 1-D array ``data`` of ``dtype`` and a dict ``views`` of named, shaped views into it (zeros at first)."""

    def __init__(self, shapes: dict, dtype, xp=np, order=None):
        order = list(shapes) if order is None else list(order)
        if sorted(order) != sorted(shapes):
            raise ValueError(f"FlatBuffer: order must name each array once; missing "
                             f"{sorted(set(shapes) - set(order))}, unexpected {sorted(set(order) - set(shapes))}")
        self.order = order                   # storage order
        self.shapes = {name: tuple(shape) for name, shape in shapes.items()}
        self.offsets, offset = {}, 0
        for name in order:
            self.offsets[name] = offset
            offset += math.prod(self.shapes[name])
        self.size = offset
        self.data = xp.zeros(offset, dtype=dtype)   # (size,)
        self.views = {name: self.view(name) for name in shapes}

    def view(self, name: str):
        """The array ``name``: a view into ``data``, in its own shape."""
        start = self.offsets[name]
        return self.data[start:start + math.prod(self.shapes[name])].reshape(self.shapes[name])   # (size,) -> shape

    @classmethod
    def holding(cls, arrays: dict, order=None) -> "FlatBuffer":
        """A FlatBuffer with the names, shapes, dtype and values of ``arrays`` (one dtype, one backend), copied in."""
        xp = get_xp(*arrays.values(), op="FlatBuffer")
        dtypes = sorted({str(a.dtype) for a in arrays.values()})
        if len(dtypes) != 1:
            raise TypeError(f"FlatBuffer: the arrays must share one dtype, got {dtypes}")
        flat = cls({name: a.shape for name, a in arrays.items()}, dtypes[0], xp, order)
        flat.gather(arrays)
        return flat

    def zeros_like(self) -> "FlatBuffer":
        """A new FlatBuffer of zeros with this one's names, shapes, dtype, order and backend."""
        return FlatBuffer(self.shapes, self.data.dtype, get_xp(self.data), self.order)

    def gather(self, arrays: dict):
        """data <- the arrays of ``arrays`` (same names and sizes), flattened and laid end to end: one copy.

        Returns ``data``. A TypeError if an array's dtype is not this buffer's (nothing is cast silently).
        """
        xp = get_xp(self.data)
        return xp.concatenate([arrays[name].reshape(-1) for name in self.order], out=self.data, casting="no")


def flatten_in_place(arrays: dict, order=None) -> FlatBuffer:
    """Move ``arrays`` into one FlatBuffer: the dict keeps its keys and order, its entries become the buffer's views.

    The dict object stays the same, so whoever holds it (the network reading ``state.params``, AdamW's ``m``, the
    EMA's ``params``) sees the views from now on; the old arrays are no longer part of it.
    """
    flat = FlatBuffer.holding(arrays, order)
    arrays.update(flat.views)
    return flat
