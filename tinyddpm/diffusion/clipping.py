"""Clipping the sampler's estimate of x0 (data assumed to lie in [-1, 1]).

Legend: N = batch, D = entries per sample (C*H*W).

    'none'     x0 as predicted.
    'static'   clip(x0, -1, 1): every entry into the data range.
    'dynamic'  Imagen's dynamic thresholding (Saharia et al. 2022): per sample,
               s = max(1, quantile_p(|x0|))        p = ``percentile``, 0.995 by default (a fraction in (0, 1])
               x0 <- clip(x0, -s, s) / s
               A sample whose entries mostly lie in [-1, 1] (s = 1) is clipped as 'static'; one that
               overshoots is squeezed back into range instead of saturating. Diffusers' version also caps s
               at ``sample_max_value`` (1.0 by default, which makes it static clipping); here s is not capped.
The quantile is NumPy's / CuPy's default ('linear' interpolation), the same as torch.quantile.
NaN entries stay NaN (clip keeps NaN; a sample with a NaN has a NaN quantile and comes out all NaN).
"""
from __future__ import annotations

from ..backend import get_xp
from ..checks import check_choice

CLIP_MODES = ("none", "static", "dynamic")


def dynamic_threshold(x0, percentile: float = 0.995):
    """Imagen's dynamic thresholding of x0 (N, ...): s_n = max(1, quantile_p |x0_n|), x0 -> clip(x0, -s, s) / s."""
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"dynamic_threshold: percentile must be a fraction in (0, 1], got {percentile}")
    xp = get_xp(x0)
    n = x0.shape[0]
    flat = xp.abs(x0.reshape(n, -1))                       # (N, D)
    s = xp.quantile(flat, percentile, axis=1)              # (N,)
    s = xp.where(xp.isnan(flat).any(axis=1), xp.nan, s)    # NaN rows: NumPy's quantile gives NaN, CuPy's need not
    s = xp.maximum(s, 1.0).astype(x0.dtype)                # NaN stays NaN under maximum
    s = s.reshape((n,) + (1,) * (x0.ndim - 1))             # (N, 1, ..., 1)
    return xp.clip(x0, -s, s) / s


def clip_x0(x0, mode: str = "none", percentile: float = 0.995):
    """Apply the clipping ``mode`` ('none', 'static' or 'dynamic') to an x0 estimate; see the module docstring."""
    check_choice("clip_x0", "clip", mode, CLIP_MODES)
    if mode == "none":
        return x0
    if mode == "static":
        return get_xp(x0).clip(x0, -1.0, 1.0)
    return dynamic_threshold(x0, percentile)
