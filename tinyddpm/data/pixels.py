"""Pixels and the model's range: uint8 u in 0..255 <-> float x in [-1, 1], x = u / 127.5 - 1.

The network works on [-1, 1] (the data's range should match the noise's scale at t = 0); the pictures and the
data sets hold uint8. NumPy in, NumPy out; CuPy in, CuPy out.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_xp


def to_model_range(images, dtype=np.float32):
    """uint8 images (N, H, W) or (N, 1, H, W) -> float (N, 1, H, W) in [-1, 1]: x = u / 127.5 - 1.

    NumPy in, NumPy out; CuPy in, CuPy out.
    """
    if not hasattr(images, "dtype") or np.dtype(images.dtype) != np.uint8:
        raise TypeError(f"to_model_range: images must be a uint8 array, got "
                        f"{getattr(images, 'dtype', type(images).__name__)}")
    if images.ndim == 3:
        images = images[:, None]  # (N, 1, H, W)
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"to_model_range: images must be (N, H, W) or (N, 1, H, W), got shape {tuple(images.shape)}")
    return pixels_to_model_range(images, dtype)


def pixels_to_model_range(images, dtype=np.float32):
    """uint8 images (N, C, H, W) (C = 1 grey, 3 RGB; each plane alike), or (N, H, W), -> float (N, C, H, W) in
    [-1, 1]: x = u / 127.5 - 1, as to_model_range (which takes one channel only)."""
    shape = tuple(getattr(images, "shape", ()))
    if getattr(images, "dtype", None) != np.uint8 or len(shape) not in (3, 4):
        raise ValueError(f"pixels_to_model_range: images must be uint8 (N, H, W) or (N, C, H, W), "
                         f"got {getattr(images, 'dtype', type(images).__name__)} {shape}")
    if images.ndim == 3:
        images = images[:, None]  # (N, 1, H, W)
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"pixels_to_model_range: dtype must be float32 or float64, got {dtype}")
    return images.astype(dtype) / dtype.type(127.5) - dtype.type(1.0)


def from_model_range(x):
    """float (N, 1, H, W) or (N, H, W) in [-1, 1] -> uint8 (N, H, W): u = round((x + 1) * 127.5), clipped.

    Values outside [-1, 1] are clipped to black or white; NaN raises ValueError (a diverged model
    should be seen, not drawn as black).
    """
    xp = get_xp(x, op="from_model_range")
    if not hasattr(x, "dtype") or np.dtype(x.dtype).kind != "f":
        raise TypeError(f"from_model_range: x must be a float array, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"from_model_range: x must have one channel (N, 1, H, W), got shape {tuple(x.shape)}")
        x = x[:, 0]  # (N, H, W)
    if x.ndim != 3:
        raise ValueError(f"from_model_range: x must be (N, 1, H, W) or (N, H, W), got shape {tuple(x.shape)}")
    if bool(xp.isnan(x).any()):
        raise ValueError(f"from_model_range: x {tuple(x.shape)} contains NaN")
    return xp.rint(xp.clip((x + 1.0) * 127.5, 0.0, 255.0)).astype(np.uint8)
