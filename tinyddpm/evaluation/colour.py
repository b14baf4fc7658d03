"""Colour pictures: do the samples' colours match the real ones', and what digit does a coloured picture show?

Pictures are float (N, C, H, W) in the model range [-1, 1] (C = 3: R, G, B): samples as the network makes
them, real pictures through data.pixels.pixels_to_model_range. Values outside [-1, 1] count as -1 or 1, as
they would once saved; NaN or inf raises a ValueError naming the function.

Colour histogram. Each channel in B = 4 equal bins, k = floor((x + 1) / 2 * B) clipped to 0..B-1 (for a uint8
value u, x = u / 127.5 - 1, that is k = u // 64), the three bins make one of B^3 = 64 colour cells:

    cell(r, g, b) = B^2 k_r + B k_g + k_b
    p[c] = (pixels of all the pictures in cell c) / (all their pixels)

Distance: total variation between the histograms p and q of two picture sets,

    TV(p, q) = 1/2 sum_c |p[c] - q[c]|  =  max over sets of cells A of |p(A) - q(A)|,

in [0, 1]: 0 for the same histogram, 1 when no cell holds pixels of both. It is symmetric and, being a distance
between distributions, obeys the triangle inequality.

Floor. Two finite sets of the same pictures' kind still differ: each picture brings a few colours (a coloured MNIST
digit two, and the blends between them), so p is estimated from about as many draws as there are pictures, and
TV shrinks as they grow. ``colour_floor`` is TV between two disjoint random sets of n real pictures each: what a
perfect generator scores with n samples. Quote a model's TV beside the floor of the same n.

Why 4 bins and not 8: most pixels of a coloured MNIST digit are its background, one colour per picture, so the floor
is set by how many cells the backgrounds spread over, and finer cells raise it more than they sharpen the view. On
1,000 coloured test digits (export_images.py --colour, 32x32), n = 500: floor 0.035 (4 bins) and 0.10 (8 bins); the
same pictures in grey 6.4x and 4.0x their floor, half-saturated 3.7x and 2.3x; red raised by 8 of 255 1.5x and 1.75x.

Luminance. The MNIST judge reads grey digits, white ink on black. The luma of a picture (ITU-R 601, the weights
the folder loader uses for grey: Y = 0.299 R + 0.587 G + 0.114 B) is, for a coloured MNIST digit, the grey digit
scaled and shifted (docs/coloured_mnist.md), often with little contrast (blue ink on a dark ground), so each
picture's luma is stretched to [-1, 1], its darkest pixel to -1 and its brightest to 1 (a flat picture stays -1),
which undoes the scale and the shift, then resized to the judge's 28x28 with the folder loader's Lanczos. A stand-in
judge (the label of the nearest of the subset's 5,000 grey train digits) read 88 of 100 coloured test digits from the
stretched luma, 89 from the grey digits themselves, and 66 from the luma unstretched.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..backend import to_numpy
from ..checks import check_int
from ..data.folder import LUMA, RESAMPLE

BINS = 4   # per channel: 64 colour cells


def _pictures(where: str, x, channels=(3,)) -> np.ndarray:
    """x as a NumPy float (N, C, H, W) array clipped to [-1, 1], or a ValueError naming ``where`` and the shape."""
    x = to_numpy(x)   # statistics run on the host (a CuPy array is copied there)
    if x.dtype.kind != "f" or x.ndim != 4 or x.shape[1] not in channels or x.shape[0] == 0:
        raise ValueError(f"{where}: pictures must be float (N, C, H, W) with N >= 1 and C in {list(channels)}, "
                         f"got {x.dtype} {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{where}: pictures {x.shape} contain NaN or inf")
    return np.clip(x, -1.0, 1.0)


def colour_histogram(x, bins: int = BINS) -> np.ndarray:
    """The share of all pixels of pictures x (N, 3, H, W) in [-1, 1] in each of bins^3 colour cells (bins^3,)."""
    x = _pictures("colour_histogram", x)
    k = np.minimum(np.floor((x + 1) / 2 * bins), bins - 1).astype(np.int64)   # (N, 3, H, W) bin of each value
    cells = (k[:, 0] * bins + k[:, 1]) * bins + k[:, 2]                        # (N, H, W) = B^2 k_r + B k_g + k_b
    counts = np.bincount(cells.ravel(), minlength=bins ** 3)
    return counts / counts.sum()


def colour_distance(x, y, bins: int = BINS) -> float:
    """Total variation 1/2 sum |p - q| between the colour histograms of pictures x and y, in [0, 1]."""
    return float(0.5 * np.abs(colour_histogram(x, bins) - colour_histogram(y, bins)).sum())


def colour_floor(real, n: int, seed: int = 0, bins: int = BINS) -> float:
    """colour_distance between two disjoint random sets of n of the real pictures (N, 3, H, W), 2 n <= N."""
    seed = check_int("colour_floor", "seed", seed, minimum=0)
    N = len(real)
    if not 1 <= n <= N // 2:
        raise ValueError(f"colour_floor: n must be in [1, N/2] = [1, {N // 2}], got {n} (pictures {np.shape(real)})")
    order = np.random.default_rng(seed).permutation(N)
    return colour_distance(real[order[:n]], real[order[n:2 * n]], bins)


def luminance(x, size: int = 28) -> np.ndarray:
    """Pictures x (N, C, H, W) in [-1, 1] (C = 3, or 1: already grey) as the MNIST judge reads digits: float32
    (N, 1, size, size) in [-1, 1], each picture's luma stretched to [-1, 1] and resized (module docstring)."""
    x = _pictures("luminance", x, channels=(1, 3))
    y = np.tensordot(LUMA / 1000, x, axes=(0, 1)) if x.shape[1] == 3 else x[:, 0]   # (N, H, W) luma
    low, high = y.min(axis=(1, 2), keepdims=True), y.max(axis=(1, 2), keepdims=True)
    span = np.where(high > low, high - low, 1.0)                                     # a flat picture: no division by 0
    y = ((y - low) / span * 2 - 1).astype(np.float32)                                # (N, H, W) darkest -1, brightest 1
    if y.shape[1:] != (size, size):   # Lanczos overshoots at the edges of strokes: clipped back to [-1, 1]
        y = np.stack([np.asarray(Image.fromarray(p).resize((size, size), RESAMPLE)) for p in y]).clip(-1, 1)
    return y[:, None]                                                                 # (N, 1, size, size)
