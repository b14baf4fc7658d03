"""Lesson 05: GroupNorm, the normaliser in front of every convolution of the DDPM U-Net.

What you will learn
- The forward: split the C channels of one sample into G groups, and bring every group (its C/G
  channels times all H*W pixels) to mean 0 and variance 1; then a learned per-channel scale and shift.
- The compact backward dx = (1/sigma) (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), derived
  from the Jacobian of the normalisation, and why it has exactly those three terms.
- Why DDPM uses it: the statistics belong to one sample, so the output never depends on what else is
  in the batch (unlike BatchNorm); groups = 1 is LayerNorm and groups = C is InstanceNorm.
- A float32 trap: the variance as E[x^2] - E[x]^2 loses every digit when the mean is large.

Run it:  python lessons/05_groupnorm.py            (about 10 s; --fast for the test suite's tiny version)

Figures (in lessons/output/05_groupnorm/):
- group_stats.png   per-group mean and std of conv features of MNIST digits, before and after GroupNorm
- histograms.png    the activations of each group as histograms, before and after

Try this
 1. run:    python lessons/05_groupnorm.py --fast. The batch-of-8 vs batches-of-1 check still passes at
            0 difference and the BatchNorm contrast still fails to match: neither depends on the sizes.
 2. modify: set EPS = 1.0 at the top. Predict the std after normalisation, sqrt(var / (var + 1)): near 1
            for the loud groups, far below 1 for group 0 (its features have std ~0.7). Check your guess
            in histograms.png. (eps is a floor under the variance; the U-Net uses 1e-5.)
 3. create: write BatchNorm's forward (statistics over N, H, W per channel) and its backward with the
            same three-term formula (the group is now a channel across the batch), and gradient-check it
            with tinyddpm.gradcheck.check_gradients.

Next: lessons/06_silu_and_time_embedding.py - SiLU, and the sinusoidal embedding that tells the network the timestep.
"""
# %%
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _common import (FAST, banner, check, finish, mnist_digits, output_dir, relative_error, saved, section,  # noqa: E402
                     try_this)

from tinyddpm.gradcheck import OP_TOLERANCE, check_gradients  # noqa: E402
from tinyddpm.ops import conv2d_forward, groupnorm_backward, groupnorm_forward  # noqa: E402

# %%
started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 05: GroupNorm")
rng = np.random.default_rng(0)

# Legend: N batch, C channels, G groups, H x W pixels, M = (C/G) * H * W entries share one mean/variance.
EPS = 1e-5                        # the U-Net's eps (as torch's default)
N_DIGITS = 8 if FAST else 64      # digits pushed through a conv for the pictures

# %% 1. The forward, in plain NumPy
# ---------------------------------------------------------------------------------------------------
section("1. The forward, in plain NumPy")
# For each sample n and group g, take its M entries x_1 .. x_M (C/G channels x all pixels):
#     mu     = (1/M) sum_i x_i
#     var    = (1/M) sum_i (x_i - mu)^2            (biased: divide by M, not M - 1)
#     xhat_i = (x_i - mu) / sqrt(var + eps)        now mean 0, variance var / (var + eps) ~ 1
#     y_i    = gamma_c * xhat_i + beta_c           c = the channel of entry i; gamma, beta are (C,)
# gamma and beta let the network undo the normalisation where that helps (gamma = sigma, beta = mu
# gives back x), so normalising takes nothing away; it only makes the scale easy to learn.
# In NumPy the grouping is a reshape: (N, C, H, W) -> (N, G, M) puts each group's entries in one row,
# because the C/G channels of a group are neighbours in memory.


def groupnorm_mine(x, gamma, beta, G, eps=EPS):
    N, C = x.shape[:2]
    xg = x.reshape(N, G, -1)                                   # (N, G, M)
    mu = xg.mean(axis=2, keepdims=True)                        # (N, G, 1)
    var = ((xg - mu) ** 2).mean(axis=2, keepdims=True)         # (N, G, 1)
    sigma = np.sqrt(var + eps)                                 # (N, G, 1)
    xhat = ((xg - mu) / sigma).reshape(x.shape)                # (N, C, H, W)
    y = gamma[None, :, None, None] * xhat + beta[None, :, None, None]
    return y, xhat, sigma


x = rng.standard_normal((3, 6, 5, 4)) * 3.0 + 2.0              # (N, C, H, W), mean 2, std 3
gamma, beta = rng.standard_normal(6), rng.standard_normal(6)   # (C,)
for G in (1, 2, 3, 6):
    y_mine, _, _ = groupnorm_mine(x, gamma, beta, G)
    y_op, _ = groupnorm_forward(x, gamma, beta, G, eps=EPS)
    err = relative_error(y_mine, y_op)
    check(f"forward == tinyddpm groupnorm_forward, groups={G}", err < 1e-14, f"max relative error {err:.1e}")

# The float32 trap. var = E[x^2] - E[x]^2 is algebraically the same, but for features with a large
# mean, E[x^2] and E[x]^2 are two big, nearly equal numbers: float32 keeps ~7 significant digits,
# so with mean 1000 and std 1 (E[x^2] ~ 1e6) their difference, the variance 1, is pure rounding.
# Subtracting the mean first (two passes, as above and in tinyddpm) keeps the small numbers small.
xb = (rng.standard_normal((2, 4, 8, 8)) + 1000.0).astype(np.float32)       # (N, C, H, W), mean 1000, std 1
xbg = xb.reshape(2, 2, -1)
var_true = xbg.astype(np.float64).var(axis=2)                                # float64 reference, (N, G)
var_one_pass = (xbg * xbg).mean(axis=2) - xbg.mean(axis=2) ** 2              # float32, E[x^2] - E[x]^2
var_two_pass = ((xbg - xbg.mean(axis=2, keepdims=True)) ** 2).mean(axis=2)  # float32, two passes
err_one, err_two = relative_error(var_one_pass, var_true), relative_error(var_two_pass, var_true)
y32, _ = groupnorm_forward(xb, None, None, 2)
y64, _ = groupnorm_forward(xb.astype(np.float64), None, None, 2)
err_op = relative_error(y32, y64)
print(f"  variance at mean 1000 in float32: E[x^2] - E[x]^2 off by {err_one:.1e} (relative), two-pass {err_two:.1e}")
check("two-pass float32 variance is accurate where the one-pass formula is not", err_two < 1e-5 < err_one,
      f"two-pass {err_two:.1e} vs one-pass {err_one:.1e}")
check("tinyddpm's float32 GroupNorm matches float64 at mean 1000", err_op < 1e-4, f"max relative error {err_op:.1e}")

# %% 2. The backward: three terms
# ---------------------------------------------------------------------------------------------------
section("2. The backward: three terms")
# The parameters are easy, per-channel sums (gamma and beta act on every entry of their channel):
#     dbeta_c = sum_{n, pixels} dy        dgamma_c = sum_{n, pixels} dy * xhat
# and the gradient reaching xhat is dxhat = dy * gamma_c.
# For x, every xhat_i of a group depends on every x_j of it, through mu and sigma:
#     d mu / d x_j      = 1/M
#     d sigma / d x_j   = (x_j - mu) / (M sigma) = xhat_j / M          (from var = mean((x - mu)^2))
#     d xhat_i / d x_j  = (delta_ij - 1/M) / sigma - (x_i - mu) / sigma^2 * xhat_j / M
#                       = (1/sigma) (delta_ij - 1/M - xhat_i xhat_j / M)
# Contract with dxhat_i (sum over i) and each of the three terms becomes one part of:
#     dx_j = (1/sigma) (dxhat_j - mean_i(dxhat_i) - xhat_j * mean_i(dxhat_i xhat_i))
# Read it: the gradient loses its group mean (a shift of all x does nothing to xhat) and its component
# along xhat (a scaling of x - mu does nothing either), and the rest is scaled by 1/sigma.


def groupnorm_backward_mine(dy, x, gamma, G, eps=EPS):
    N, C = x.shape[:2]
    _, xhat, sigma = groupnorm_mine(x, gamma, np.zeros_like(gamma), G, eps)   # recompute: cheap
    dbeta = dy.sum(axis=(0, 2, 3))                                            # (C,)
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))                                  # (C,)
    dxhat = (dy * gamma[None, :, None, None]).reshape(N, G, -1)               # (N, G, M)
    xh = xhat.reshape(N, G, -1)                                               # (N, G, M)
    dx = (dxhat - dxhat.mean(axis=2, keepdims=True)
          - xh * (dxhat * xh).mean(axis=2, keepdims=True)) / sigma            # (N, G, M)
    return dx.reshape(x.shape), dgamma, dbeta


# First the compact formula against the full Jacobian of one small group (M = 6 entries), built from
# the middle line above as an M x M matrix: dx = J^T dxhat.
xs = rng.standard_normal(6) * 2.0 + 1.0
mu_s, sig_s = xs.mean(), np.sqrt(xs.var() + EPS)
xh_s = (xs - mu_s) / sig_s
J = (np.eye(6) - 1.0 / 6 - np.outer(xh_s, xh_s) / 6) / sig_s            # J[i, j] = d xhat_i / d x_j
dxh_s = rng.standard_normal(6)
dx_full = J.T @ dxh_s
dx_compact = (dxh_s - dxh_s.mean() - xh_s * (dxh_s * xh_s).mean()) / sig_s
err = relative_error(dx_full, dx_compact)
check("compact formula == the full Jacobian J^T dxhat", err < 1e-14, f"max relative error {err:.1e}")

for G in (1, 2, 6):
    y, cache = groupnorm_forward(x, gamma, beta, G, eps=EPS)
    dy = rng.standard_normal(y.shape)
    dx_op, dgamma_op, dbeta_op = groupnorm_backward(dy, cache)
    dx, dgamma, dbeta = groupnorm_backward_mine(dy, x, gamma, G)
    errs = relative_error(dx, dx_op), relative_error(dgamma, dgamma_op), relative_error(dbeta, dbeta_op)
    check(f"backward == tinyddpm groupnorm_backward, groups={G}", max(errs) < 1e-13,
          f"dx {errs[0]:.1e}, dgamma {errs[1]:.1e}, dbeta {errs[2]:.1e}")

# The gradient check: finite differences of sum(y * dy) in float64. One op: below 1e-7 means right.
entries = 12 if FAST else 32
for G in (2, 6):
    arrays = {"x": rng.standard_normal((2, 6, 4, 3)), "gamma": rng.standard_normal(6), "beta": rng.standard_normal(6)}
    errors = check_gradients(lambda x_, g_, b_: groupnorm_forward(x_, g_, b_, G, eps=EPS), groupnorm_backward,
                             arrays, seed=G, max_entries=entries)
    check(f"gradient check of tinyddpm groupnorm, groups={G}", max(errors.values()) < OP_TOLERANCE,
          ", ".join(f"{k} {e:.1e}" for k, e in errors.items()))
errors = check_gradients(lambda x_, g_, b_: (groupnorm_mine(x_, g_, b_, 3)[0], (x_.copy(), g_.copy())),
                         lambda dy, c: groupnorm_backward_mine(dy, c[0], c[1], 3), arrays, seed=9, max_entries=entries)
check("gradient check of this lesson's backward, groups=3", max(errors.values()) < OP_TOLERANCE,
      ", ".join(f"{k} {e:.1e}" for k, e in errors.items()))

# %% 3. Why groups: one sample's statistics, and the two extremes
# ---------------------------------------------------------------------------------------------------
section("3. Why groups: one sample's statistics, and the two extremes")
# BatchNorm normalises each channel over (N, H, W): sample 0's output depends on the other samples
# in its batch, and a diffusion model sees very different batches (noise levels t from 0 to 999 mixed)
# in training and often batch 1 when sampling. GroupNorm's statistics are over (C/G, H, W) of one
# sample, so a batch of 8 gives, row by row, exactly what 8 batches of 1 give.
xs8 = rng.standard_normal((8, 6, 5, 4)) * rng.uniform(0.5, 4.0, (8, 1, 1, 1))   # samples of different scale
y8, _ = groupnorm_forward(xs8, gamma, beta, 3)
y1 = np.concatenate([groupnorm_forward(xs8[n:n + 1], gamma, beta, 3)[0] for n in range(8)])
err = float(np.max(np.abs(y8 - y1)))
check("GroupNorm: batch of 8 == 8 batches of 1, row by row", err < 1e-14, f"max difference {err:.1e}")


def batchnorm_plain(x, eps=EPS):                                # per channel over (N, H, W), no affine
    mu = x.mean(axis=(0, 2, 3), keepdims=True)                  # (1, C, 1, 1)
    return (x - mu) / np.sqrt(x.var(axis=(0, 2, 3), keepdims=True) + eps)


diff_bn = float(np.max(np.abs(batchnorm_plain(xs8)[:1] - batchnorm_plain(xs8[:1]))))
check("BatchNorm (for contrast): sample 0 changes with its batch-mates", diff_bn > 0.1,
      f"max difference {diff_bn:.2f} between batch 8 and batch 1")

# groups = 1: one group holds all of C x H x W of a sample: LayerNorm over (C, H, W).
# groups = C: each channel is its own group: InstanceNorm, over (H, W) per sample and channel.
ln = (xs8 - xs8.mean(axis=(1, 2, 3), keepdims=True)) / np.sqrt(xs8.var(axis=(1, 2, 3), keepdims=True) + EPS)
inorm = (xs8 - xs8.mean(axis=(2, 3), keepdims=True)) / np.sqrt(xs8.var(axis=(2, 3), keepdims=True) + EPS)
err_ln = relative_error(groupnorm_forward(xs8, None, None, 1, eps=EPS)[0], ln)        # the same eps on both sides
err_in = relative_error(groupnorm_forward(xs8, None, None, 6, eps=EPS)[0], inorm)
check("groups=1 is LayerNorm over (C, H, W)", err_ln < 1e-14, f"max relative error {err_ln:.1e}")
check("groups=C is InstanceNorm over (H, W)", err_in < 1e-14, f"max relative error {err_in:.1e}")

# %% 4. Using it: conv features of MNIST digits, before and after
# ---------------------------------------------------------------------------------------------------
section("4. Using it: conv features of MNIST digits, before and after")
# Push digits through a random 3x3 conv with 16 channels whose filters have very different scales and
# biases (as an untrained layer, or one deep in a network, can have), then GroupNorm with G = 4 groups
# of 4 channels, gamma = 1, beta = 0. Before: each group has its own mean and spread. After: every
# (sample, group) is at mean 0, std sqrt(var / (var + eps)) ~ 1, the same for every digit.
G4 = 4
digits, _ = mnist_digits(N_DIGITS, seed=5)                              # (n, 1, 28, 28) in [-1, 1]
w = rng.standard_normal((16, 1, 3, 3)) * np.repeat([0.2, 1.0, 3.0, 8.0], 4)[:, None, None, None]
b = np.repeat([-2.0, 0.5, 4.0, -10.0], 4) + rng.standard_normal(16)     # (16,)
feats, _ = conv2d_forward(digits.astype(np.float64), w, b)              # (n, 16, 28, 28)
normed, _ = groupnorm_forward(feats, np.ones(16), np.zeros(16), G4, eps=EPS)

before = feats.reshape(N_DIGITS, G4, -1)                                # (n, G, M)
after = normed.reshape(N_DIGITS, G4, -1)
var_before = before.var(axis=2)                                         # (n, G)
mean_after, std_after = after.mean(axis=2), after.std(axis=2)
expected_std = np.sqrt(var_before / (var_before + EPS))
check("after GroupNorm every (digit, group) has mean 0", np.abs(mean_after).max() < 1e-12,
      f"largest |mean| {np.abs(mean_after).max():.1e}")
err = relative_error(std_after, expected_std)
check("... and std sqrt(var / (var + eps))", err < 1e-12,
      f"max relative error {err:.1e}; std ranges {std_after.min():.6f} .. {std_after.max():.6f}")

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
jitter = rng.uniform(-0.25, 0.25, N_DIGITS)
for g in range(G4):
    for ax, data, name in ((axes[0], before, "before"), (axes[1], after, "after")):
        ax.errorbar(g + jitter, data[:, g].mean(axis=1), yerr=data[:, g].std(axis=1), fmt="o", ms=3, alpha=0.6,
                    color=f"C{g}", label=f"group {g}" if name == "before" else None)
axes[0].set_title(f"Before: conv features, {N_DIGITS} digits x 4 groups")
axes[1].set_title("After GroupNorm (gamma = 1, beta = 0)")
for ax in axes:
    ax.set_xticks(range(G4), [f"group {g}\n(ch {4 * g}-{4 * g + 3})" for g in range(G4)])
    ax.set_ylabel("group mean +- group std")
    ax.axhline(0, color="gray", lw=0.5)
axes[1].set_ylim(-1.6, 1.6)
fig.suptitle("Statistics of each (digit, group), over its 4 channels x 784 pixels: one dot and bar per digit")
fig.tight_layout()
fig.savefig(out / "group_stats.png", dpi=90)
plt.close(fig)
saved(out / "group_stats.png")

fig, axes = plt.subplots(2, G4, figsize=(3.2 * G4, 5.5))
for g in range(G4):
    axes[0, g].hist(before[:, g].ravel(), bins=60, color=f"C{g}")
    axes[0, g].set_title(f"group {g} before: mean {before[:, g].mean():.1f}, std {before[:, g].std():.1f}", fontsize=9)
    axes[1, g].hist(after[:, g].ravel(), bins=60, color=f"C{g}")
    axes[1, g].set_xlim(-5, 5)
    axes[1, g].set_title(f"after: mean {after[:, g].mean():.2f}, std {after[:, g].std():.2f}", fontsize=9)
    axes[1, g].set_xlabel("activation value")
axes[0, 0].set_ylabel("count (all digits, pixels)")
axes[1, 0].set_ylabel("count")
fig.suptitle("Histograms of the activations of each group: different scales before, one scale after\n"
             "(the spikes are the background pixels, where every window sees the same -1)")
fig.tight_layout()
fig.savefig(out / "histograms.png", dpi=90)
plt.close(fig)
saved(out / "histograms.png")

# %% Exercises
# ---------------------------------------------------------------------------------------------------
try_this(__doc__)
finish(started)
