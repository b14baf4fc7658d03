"""Group normalisation (Wu & He, 2018), the normaliser of every DDPM ResBlock.

Legend: N = batch, C = channels, G = groups, S = spatial positions (H*W for images),
M = (C/G) * S = the number of entries that share one mean and variance.

Forward, for each sample n and group g (its C/G channels times all S positions, M entries x_i):
    mu     = (1/M) sum_i x_i
    var    = (1/M) sum_i (x_i - mu)^2               biased, as torch.nn.functional.group_norm
    rstd   = 1 / sqrt(var + eps)
    xhat_i = (x_i - mu) * rstd
    y_i    = gamma_c * xhat_i + beta_c              c = the channel of entry i (skipped if affine=False)

The variance is the mean of squared deviations, not E[x^2] - E[x]^2: the latter subtracts two
large, nearly equal numbers when |mu| >> std and can even come out negative in float32.

Backward. Write dxhat_i = dy_i * gamma_c. The parameters are per-channel sums:
    dbeta_c  = sum_{n, s} dy          dgamma_c = sum_{n, s} dy * xhat
For dx, within one group xhat depends on every x_j through mu and rstd:
    d mu / d x_j     = 1/M
    d rstd / d x_j   = -rstd^3 * (x_j - mu) / M = -rstd^2 * xhat_j / M
    d xhat_i / d x_j = rstd * (delta_ij - 1/M) + (x_i - mu) * d rstd / d x_j
                     = rstd * (delta_ij - 1/M - xhat_i * xhat_j / M)
(the term from mu inside var vanishes because sum_i (x_i - mu) = 0). Contracting with dxhat_i:
    dx_j = sum_i dxhat_i * d xhat_i / d x_j
         = rstd * (dxhat_j - mean_i(dxhat_i) - xhat_j * mean_i(dxhat_i * xhat_i))
the compact closed form: two group means and one fused elementwise line.

Proof: tests/test_groupnorm.py (test_gradcheck: finite differences over hypothesis-drawn batch,
groups, channels per group, spatial shape and affine; test_matches_torch: the PyTorch oracle;
test_large_offset_is_stable_in_float32); ``python -m tinyddpm.gradcheck --op groupnorm``, row 'groupnorm'.
"""
from __future__ import annotations

from typing import NamedTuple

from ..array_checks import describe, float_inputs, require
from ..backend import get_xp
from ..checks import is_int


class GroupNormCache(NamedTuple):
    xhat: object   # (N, C, *spatial) the normalised input, needed for dgamma and dx
    rstd: object   # (N, G, 1) 1 / sqrt(var + eps) per sample and group
    gamma: object  # (C,) or None (affine=False)
    groups: int


def _channel_view(v, ndim):
    """A (C,) vector as (1, C, 1, ..., 1) so it broadcasts over (N, C, *spatial)."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))  # (1, C, 1, ..., 1)


def groupnorm_forward(x, gamma, beta, groups, eps=1e-5):
    """Normalise x (N, C, *spatial) over (C/groups, *spatial) per sample and group, then scale and shift.

    gamma and beta are (C,) or both None (no affine); groups must divide C; eps > 0 is added to the
    variance. Returns (y, cache), y with x's shape.
    """
    xp = check_groupnorm(x, gamma, beta, groups, eps)
    N, G = x.shape[0], int(groups)
    xg = x.reshape(N, G, -1)                            # (N, G, M)
    M = xg.shape[2]
    mu = xg.mean(axis=2, keepdims=True)                 # (N, G, 1)
    xc = xg - mu                                        # (N, G, M), a fresh array
    var = xp.einsum("ngm,ngm->ng", xc, xc)[:, :, None] / M  # (N, G, 1), the sum of squares without a temporary
    rstd = 1.0 / xp.sqrt(var + eps)                     # (N, G, 1)
    xc *= rstd                                          # in place: xc is now xhat
    xhat = xc.reshape(x.shape)                          # (N, C, *spatial)
    if gamma is None:
        y = xhat.copy()  # a fresh array: the cache keeps xhat, the caller owns y
    else:
        y = xhat * _channel_view(gamma, x.ndim)
        y += _channel_view(beta, x.ndim)
    return y, GroupNormCache(xhat, rstd, gamma, G)


def groupnorm_backward(dy, cache: GroupNormCache):
    """Gradients (dx, dgamma, dbeta); dgamma and dbeta are None when the forward had no affine."""
    xhat, rstd, gamma, G = cache
    xp = get_xp(dy, xhat, op="groupnorm_backward")
    N, C = xhat.shape[:2]
    if gamma is None:
        dgamma = dbeta = None
        dxhat = dy
    else:
        dy3, xhat3 = dy.reshape(N, C, -1), xhat.reshape(N, C, -1)  # (N, C, S): S = all spatial positions
        # in the forward pass this was: y = xhat * gamma + beta, so now we have:
        dbeta = dy3.sum(axis=2).sum(axis=0)                          # (C,)
        dgamma = xp.einsum("ncs,ncs->c", dy3, xhat3)          # (C,) = sum over n, s of dy * xhat
        dxhat = dy * _channel_view(gamma, xhat.ndim)                 # (N, C, *spatial)
    dxhat_g = dxhat.reshape(N, G, -1)                                # (N, G, M)
    xhat_g = xhat.reshape(N, G, -1)                                  # (N, G, M)
    M = xhat_g.shape[2]
    # in the forward pass this was: xhat = (x - mu) * rstd with mu, var over each group, so now we have:
    mean_dxhat = dxhat_g.mean(axis=2, keepdims=True)                 # (N, G, 1)
    mean_dxhat_xhat = xp.einsum("ngm,ngm->ng", dxhat_g, xhat_g)[:, :, None] / M  # (N, G, 1)
    dx = dxhat_g - mean_dxhat                                        # (N, G, M), a fresh array
    dx -= xhat_g * mean_dxhat_xhat
    dx *= rstd                                                       # rstd * (dxhat - mean - xhat * mean2)
    return dx.reshape(xhat.shape), dgamma, dbeta                     # (N, C, *spatial)


# ----------------------------------------------------------------------------- argument checks

def check_groupnorm(x, gamma, beta, groups, eps):
    """Raise, naming groupnorm and the shapes, unless the arguments fit the forward; return xp."""
    op = "groupnorm"
    xp = float_inputs(op, x=x, gamma=gamma, beta=beta)
    require(op, x.ndim >= 3, lambda: f"x must be at least 3-D (N, C, *spatial), got {describe(x=x)}")
    require(op, is_int(groups) and groups >= 1, lambda: f"groups must be a positive integer, got {groups!r} for {describe(x=x)}")
    C = x.shape[1]
    require(op, C % groups == 0, lambda: f"groups={groups} does not divide the {C} channels of {describe(x=x)}")
    require(op, (gamma is None) == (beta is None),
            lambda: f"gamma and beta must both be (C,) arrays or both be None, got {_shape_or_none(gamma=gamma, beta=beta)}"
            f" for {describe(x=x)}")
    if gamma is not None:
        require(op, tuple(gamma.shape) == (C,) and tuple(beta.shape) == (C,),
                lambda: f"gamma and beta must be (C,) = ({C},): {describe(x=x, gamma=gamma, beta=beta)}")
    require(op, float(eps) > 0, f"eps must be positive, got {eps!r}")
    return xp


def _shape_or_none(**arrays):
    return ", ".join(f"{k} {'None' if v is None else tuple(v.shape)}" for k, v in arrays.items())
