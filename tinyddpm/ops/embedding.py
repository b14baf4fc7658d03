"""Embeddings of the conditioning inputs: the diffusion timestep t and the class label.

Legend: N = batch, D = embedding width (dim), half = D // 2, K = number of classes (table rows).

1. Sinusoidal timestep embedding (the Transformer position encoding, as DDPM uses it for t):
    f_i     = exp(-ln(max_period) * i / half)         i = 0 .. half-1, so f runs from 1 down to ~1/max_period
    a_{n,i} = t_n * f_i
    emb_n   = [sin(a_{n,0}), ..., sin(a_{n,half-1}), cos(a_{n,0}), ..., cos(a_{n,half-1})]   (+ one 0 if D is odd)
   Order: all sines first, then all cosines, then a zero column when D is odd. (The DDPM reference code
   divides by half - 1 instead of half, and some later code puts cos first; the network that reads the
   embedding learns the same thing from any fixed layout, so only consistency matters.)

   Backward: d sin(t f)/dt = f cos(t f) and d cos(t f)/dt = -f sin(t f), so
    dt_n = sum_i f_i * (demb_{n,i} * cos(a_{n,i}) - demb_{n,half+i} * sin(a_{n,i}))
   The padding column is a constant and contributes nothing. Training never needs dt (t is data), but
   the backward proves the formula and lets a gradient check run with a float t.

   Dtype rule. The output dtype is ``dtype`` when given (float32 or float64); otherwise t's dtype for a
   float t, and float32 for an integer t (the usual training case). The arithmetic runs in float64
   unless both t and the output are float32: float64 keeps sin(t f) accurate for t in the thousands,
   and the cast at the end costs nothing. dt has t's dtype for a float t, else the output dtype.

2. Label embedding, a learned lookup table (class-conditional models, classifier-free guidance):
    emb_n = table[labels_n]            labels (N,) integers in [0, K), table (K, D), emb (N, D)
   Reserving the last row for a "null" label is the caller's choice; this op only looks rows up.

   Backward: every row n adds its gradient into the row of its label, so repeated labels must sum:
    dtable_{k,j} = sum_{n : labels_n = k} demb_{n,j}
   A fancy-index ``dtable[labels] += demb`` would be wrong: NumPy applies only one of several writes to the
   same row, and on CuPy the result is undefined. The choice made here is one ``bincount``: entry (n, j)
   of demb goes to flat position labels_n * D + j of the (K*D) output, and bincount sums everything that
   lands on the same position (in float64, bincount's weight type; the result is cast back to demb's
   dtype). It is one vectorised call on both NumPy and CuPy, costs O(N*D), and
   keeps a NaN or Inf gradient in the row it belongs to. The alternatives: a one-hot matmul
   onehot^T @ demb (onehot_{n,k} = [labels_n == k]) is a single GEMM, but multiplies every demb row by the
   zeros of the other classes, so one Inf gradient becomes 0 * Inf = NaN in every row; ``xp.add.at`` is
   correct but a slow unbuffered loop in NumPy. On CuPy the same sum is one ``xp.add.at`` (atomic adds on the
   GPU, in float64 like bincount): CuPy's bincount reads the min and max of its input back to the host, a
   wait for the GPU at every call. (Atomic adds make the order of the additions, and with it the last bit
   of a sum, vary from run to run.)

   Labels outside [0, K) raise for NumPy labels. CuPy labels are not read back to check (a GPU wait at every
   call; training checks its whole label set once, in check_data): their out-of-range rows come out NaN,
   where CuPy's indexing would silently wrap them around (array_checks.py, nan_where_out_of_range).

Proof: tests/test_embedding.py (test_timestep_gradcheck and test_label_gradcheck: finite differences
over hypothesis-drawn batch, widths, periods and table sizes; test_timestep_matches_torch and
test_label_matches_torch: the PyTorch oracle; test_label_repeated_labels_sum);
``python -m tinyddpm.gradcheck --op embedding``, rows 'timestep_embedding' and 'label_embedding'.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

from ..array_checks import (FLOAT_DTYPES, describe, float_inputs, nan_where_out_of_range, require, require_array,
                            require_ndim, values_on_host)
from ..backend import array_home, get_xp
from ..checks import is_int

# ----------------------------------------------------------------------------- timestep embedding

class TimestepEmbeddingCache(NamedTuple):
    args: object      # (N, half) t * f in the working dtype
    freqs: object     # (half,) f in the working dtype
    dt_dtype: object  # dtype of the returned dt


def timestep_embedding_forward(t, dim, max_period=10000.0, dtype=None):
    """Sinusoidal embedding (N, dim) of timesteps t (N,): [sin(t f), cos(t f)] (+ a zero column if dim is odd).

    See the module docstring for the frequencies and the dtype rule. Returns (emb, cache).
    """
    xp = _check_timestep_embedding(t, dim, max_period, dtype)
    t_dtype = np.dtype(t.dtype)  # the dtype rule of the module docstring:
    if dtype is None:
        out_dtype = t_dtype if t_dtype.kind == "f" else np.dtype(np.float32)
    else:
        out_dtype = np.dtype(dtype)
    work = np.float32 if (t_dtype == np.float32 and out_dtype == np.float32) else np.float64

    N, half = t.shape[0], int(dim) // 2
    freqs = _frequencies(xp, half, max_period, work)              # (half,) f_i, built once per device and dtype
    args = t.astype(work)[:, None] * freqs[None, :]               # (N, half)
    parts = [xp.sin(args), xp.cos(args)]                          # (N, half) each
    if dim % 2:
        parts.append(xp.zeros((N, 1), dtype=work))                # (N, 1) padding
    emb = xp.concatenate(parts, axis=1).astype(out_dtype, copy=False)  # (N, dim)
    dt_dtype = t_dtype if t_dtype.kind == "f" else out_dtype
    return emb, TimestepEmbeddingCache(args, freqs, dt_dtype)


def timestep_embedding_backward(demb, cache: TimestepEmbeddingCache):
    """Gradient dt (N,) of emb = [sin(t f), cos(t f)] (+ padding)."""
    args, freqs, dt_dtype = cache
    xp = get_xp(demb, args, op="timestep_embedding")
    half = freqs.shape[0]
    d = demb.astype(args.dtype, copy=False)
    d_sin, d_cos = d[:, :half], d[:, half:2 * half]               # (N, half) each; a padding column is ignored
    # in the forward pass this was: emb = [sin(t * f), cos(t * f)], so now we have:
    dt = ((d_sin * xp.cos(args) - d_cos * xp.sin(args)) * freqs[None, :]).sum(axis=1)  # (N,)
    return dt.astype(dt_dtype, copy=False)


_FREQUENCIES: dict = {}  # (array_home, half, max_period, dtype) -> f (half,): a constant, not rebuilt per call


def _frequencies(xp, half, max_period, work):
    """f_i = exp(-ln(max_period) * i / half), i = 0 .. half-1, on xp in dtype ``work`` (cached, read-only)."""
    key = (array_home(xp), half, float(max_period), np.dtype(work).str)
    if key not in _FREQUENCIES:
        i = xp.arange(half, dtype=work)                            # (half,)
        _FREQUENCIES[key] = xp.exp((-math.log(max_period) / half) * i)
    return _FREQUENCIES[key]


# ----------------------------------------------------------------------------- label embedding

class LabelEmbeddingCache(NamedTuple):
    labels: object    # (N,) the integer labels
    num_classes: int  # K, rows of the table


def label_embedding_forward(labels, table):
    """Rows of ``table`` (K, D) picked by integer ``labels`` (N,) in [0, K). Returns (emb (N, D), cache)."""
    _check_label_embedding(labels, table)
    K = table.shape[0]
    emb = table[labels]  # (N, D), a gather: reading repeated rows is fine, only scatter-writes are not
    if not values_on_host(labels):  # CuPy labels were not range-checked (see the docstring): bad rows become NaN
        emb = nan_where_out_of_range(emb, labels, K)
    return emb, LabelEmbeddingCache(labels, K)


def label_embedding_backward(demb, cache: LabelEmbeddingCache):
    """Gradient dtable (K, D) of emb = table[labels]; repeated labels sum their rows."""
    labels, K = cache
    xp = get_xp(demb, labels, op="label_embedding")
    # in the forward pass this was: emb = table[labels], so now we have (a scatter-add, see the docstring):
    rows_sum = _rows_sum_bincount if xp is np else _rows_sum_add_at  # CuPy's bincount would wait for the GPU
    return rows_sum(xp, labels, demb, K).astype(demb.dtype, copy=False)          # (K, D)


def _rows_sum_bincount(xp, labels, demb, K):
    """dtable (K, D) float64: dtable[k] = sum of the rows demb[n] with labels[n] = k, as one bincount."""
    D = demb.shape[1]
    flat = labels.astype(xp.int64)[:, None] * D + xp.arange(D)[None, :]           # (N, D) positions in (K*D)
    dtable = xp.bincount(flat.reshape(-1), weights=demb.reshape(-1), minlength=K * D)  # (K*D,) float64
    return dtable.reshape(K, D)


def _rows_sum_add_at(xp, labels, demb, K):
    """The same sum as one ``add.at`` (the GPU path: no value is read back to the host)."""
    dtable = xp.zeros((K, demb.shape[1]), dtype=xp.float64)                       # (K, D)
    xp.add.at(dtable, labels, demb.astype(xp.float64))                            # dtable[labels[n]] += demb[n]
    return dtable


# ----------------------------------------------------------------------------- argument checks

def _check_timestep_embedding(t, dim, max_period, dtype):
    """Raise, naming timestep_embedding and t's shape, unless t is an integer or float (N,) array, dim an
    integer >= 2, max_period > 0 and dtype None, float32 or float64; return xp."""
    op = "timestep_embedding"
    require_array(op, "t", t)
    xp = get_xp(t, op=op)
    t_dtype = np.dtype(t.dtype)
    if not (t_dtype.kind in "iu" or t_dtype in FLOAT_DTYPES):
        raise TypeError(f"{op}: t has dtype {t_dtype}; supported: integer, float32, float64 ({describe(t=t)})")
    require_ndim(op, "t", t, 1, "(N,)")
    require(op, is_int(dim) and dim >= 2, lambda: f"dim must be an integer >= 2, got {dim!r} for {describe(t=t)}")
    require(op, isinstance(max_period, numbers.Real) and max_period > 0,
            f"max_period must be a positive number, got {max_period!r}")
    if dtype is not None and np.dtype(dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{op}: dtype {np.dtype(dtype)} is not supported; choose float32 or float64 "
                        f"({describe(t=t)})")
    return xp


def _check_label_embedding(labels, table):
    """Raise, naming label_embedding and the shapes, unless labels (N,) are integers in [0, K) (that range
    checked for NumPy labels only) of a float table (K, D) on the same backend."""
    op = "label_embedding"
    float_inputs(op, table=table)
    require_array(op, "labels", labels)
    get_xp(labels, table, op=op)
    if np.dtype(labels.dtype).kind not in "iu":
        raise TypeError(f"{op}: labels must be an integer array, got {describe(labels=labels)} "
                        f"(table {tuple(table.shape)})")
    require_ndim(op, "labels", labels, 1, "(N,)")
    require_ndim(op, "table", table, 2, "(num_classes, D)")
    K = table.shape[0]
    if labels.size and values_on_host(labels):  # CuPy labels: NaN rows in the forward instead (see the docstring)
        lo, hi = int(labels.min()), int(labels.max())
        require(op, lo >= 0 and hi < K,
                f"label {lo if lo < 0 else hi} is out of range [0, {K}) for table {tuple(table.shape)}")
