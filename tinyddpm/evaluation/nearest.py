"""The memorisation check: is a generated sample new, or a copy of a training image?

    idx, dist = nearest_neighbours(samples, train)            # (M,) indices into train, (M,) L2 distances
    report = memorisation_check(samples, train)                # the medians, with the train-to-train baseline
    plot_nearest("nearest.png", samples, train, idx, dist)     # each sample beside its nearest training image

Legend: M = samples (queries), N = training images (reference), D = C*H*W pixels per image. Images are
compared as vectors of D pixels in the model range [-1, 1] (NumPy or CuPy in, NumPy out); any C, H, W.

For a sample q_i and a training image r_j the squared Euclidean distance expands into three terms,

    d(i, j)^2 = ||q_i - r_j||^2 = ||q_i||^2 - 2 q_i . r_j + ||r_j||^2
    nearest(i) = argmin_j d(i, j)^2

and the middle term for a block of samples against a block of training images is one matrix product
(float32 GEMM), so a block of (chunk, chunk) distances costs one product and two broadcasts. Blocks of
``chunk`` rows on each side bound the memory (chunk^2 distances) however large N is. The expansion loses
precision where d is small beside ||q||^2 (float32 rounding of a sum near 2||q||^2), so the distance of each
chosen pair is computed again directly, in float64: an exact copy comes out at 0.

What a distance means. A model that memorises draws samples at (nearly) zero distance from a training
image. One that generalises draws samples about as far from their nearest training image as the training
images are from each other: the baseline is the median, over a random set of training images, of the
distance to the nearest *other* training image (itself excluded). Median sample distance well below that
baseline: look at the picture for copies.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..backend import to_numpy


def _flat(where: str, name: str, images) -> np.ndarray:
    """(n, D) float32 NumPy rows of images (n, ...) with finite values; ValueError naming ``name`` otherwise."""
    x = np.asarray(to_numpy(images))
    if x.ndim < 2 or x.shape[0] == 0 or np.dtype(x.dtype).kind != "f":
        raise ValueError(f"{where}: {name} must be a non-empty float array (n, ...) in [-1, 1], got "
                         f"{x.dtype} {x.shape}")
    x = x.reshape(len(x), -1).astype(np.float32, copy=False)   # (n, D)
    if not np.isfinite(x).all():
        raise ValueError(f"{where}: {name} {x.shape} hold NaN or infinite values")
    return x


def _checked(queries, reference, exclude):
    """(queries (M, D), reference (N, D), exclude (M,) or None) after the checks of nearest_neighbours."""
    where = "nearest_neighbours"
    q, r = _flat(where, "queries", queries), _flat(where, "reference", reference)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"{where}: queries {tuple(np.shape(queries))} and reference {tuple(np.shape(reference))} "
                         "differ in image shape")
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64)
        if exclude.shape != (len(q),) or len(r) < 2:
            raise ValueError(f"{where}: exclude must be (M,) = ({len(q)},) with N >= 2 reference rows, got "
                             f"exclude {exclude.shape}, reference {r.shape}")
    return q, r, exclude


def nearest_neighbours(queries, reference, chunk: int = 1024, exclude=None):
    """(indices (M,) int64, distances (M,) float64): each query's nearest reference row in L2 and its distance.

    queries (M, ...) and reference (N, ...) float arrays of the same per-image shape. ``exclude`` (M,) int:
    a reference index each query may not match (itself, for the train-to-train baseline); then N >= 2.
    Ties go to the lowest index.
    """
    q, r, exclude = _checked(queries, reference, exclude)        # (M, D), (N, D) float32, (M,) or None
    M, N = len(q), len(r)
    r_sq = (r * r).sum(axis=1)                                       # (N,) ||r_j||^2
    best = np.full(M, np.inf, dtype=np.float32)                      # (M,) smallest d^2 so far
    indices = np.zeros(M, dtype=np.int64)
    for qs in range(0, M, chunk):                                    # a loop over blocks, to bound memory
        qc = q[qs:qs + chunk]                                        # (m, D)
        q_sq = (qc * qc).sum(axis=1)                                 # (m,)
        rows = np.arange(len(qc))
        for rs in range(0, N, chunk):
            d = q_sq[:, None] - 2.0 * (qc @ r[rs:rs + chunk].T) + r_sq[None, rs:rs + chunk]   # (m, n) d^2
            if exclude is not None:
                d[(exclude[qs:qs + chunk, None] - rs) == np.arange(d.shape[1])[None, :]] = np.inf
            j = d.argmin(axis=1)                                     # (m,) within the block
            dj = d[rows, j]
            better = dj < best[qs:qs + chunk]                        # strictly: ties keep the earlier index
            best[qs:qs + chunk] = np.where(better, dj, best[qs:qs + chunk])
            indices[qs:qs + chunk] = np.where(better, rs + j, indices[qs:qs + chunk])
    diff = q.astype(np.float64) - r[indices].astype(np.float64)     # (M, D) the chosen pairs, exactly
    return indices, np.sqrt((diff * diff).sum(axis=1))


def train_baseline(train, n: int, seed: int = 0, chunk: int = 1024) -> np.ndarray:
    """Distances (n,) from ``n`` random training images (without replacement) to their nearest other one."""
    N = len(train)
    pick = np.random.default_rng(seed).choice(N, size=min(n, N), replace=False)   # (n,)
    return nearest_neighbours(np.asarray(to_numpy(train))[pick], train, chunk, exclude=pick)[1]


def memorisation_check(samples, train, n_baseline: int | None = None, seed: int = 0, chunk: int = 1024) -> dict:
    """The nearest training image of every sample and the train-to-train baseline.

    Returns {"indices", "distances"} (per sample), "median" (of the sample distances), "baseline_median" (of
    the distances of ``n_baseline`` random training images, default as many as samples, to their nearest
    other training image) and "copies" (samples at distance 0: exact copies).
    """
    indices, distances = nearest_neighbours(samples, train, chunk)
    baseline = train_baseline(train, n_baseline or len(distances), seed, chunk)
    return {"indices": indices, "distances": distances, "median": float(np.median(distances)),
            "baseline_median": float(np.median(baseline)), "copies": int((distances == 0).sum())}


def plot_nearest(path, samples, train, indices, distances, pairs_per_row: int = 4, title: str | None = None):
    """A grid of (sample | nearest training image) pairs, the closest pair first; returns the path (viz).

    samples (M, C, H, W) and train (N, C, H, W) in [-1, 1], C = 1 or 3; indices and distances as returned
    by nearest_neighbours.
    """
    from .. import viz

    s = np.asarray(to_numpy(samples), dtype=np.float64)
    s = s[:, None] if s.ndim == 3 else s                             # (M, C, H, W)
    t = np.asarray(to_numpy(train))[np.asarray(indices)].astype(np.float64)
    t = t[:, None] if t.ndim == 3 else t                             # (M, C, H, W) the nearest ones
    order = np.argsort(distances, kind="stable")                     # closest (most suspicious) first
    rows = -(-len(order) // pairs_per_row)
    cols = 3 * pairs_per_row - 1                                     # sample, nearest, gap, sample, ...
    grid = np.full((rows, cols) + s.shape[1:], np.nan)               # NaN cells draw blank
    for k, i in enumerate(order):
        r, c = divmod(k, pairs_per_row)
        grid[r, 3 * c], grid[r, 3 * c + 1] = s[i], t[i]
    labels = (["sample", "nearest", ""] * pairs_per_row)[:cols]
    return viz.plot_sample_grid(Path(path), grid, col_labels=labels, title=title)
