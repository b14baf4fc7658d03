"""Solutions to lesson 05 (GroupNorm): the three "Try this" exercises, worked and checked.

Try each exercise in lessons/05_groupnorm.py yourself first; then run this file and compare.

Run it:   python lessons/solutions/05_groupnorm.py          (--fast: 8 digits in exercise 2 instead of 64)

Figure (in lessons/output/05_groupnorm/, with a solution_ prefix):
  solution_histograms_eps1.png   the activations of each group after GroupNorm with eps = 1e-5 and with eps = 1
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the lessons folder, for _common

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import FAST, banner, check, finish, mnist_digits, output_dir, relative_error, saved, section  # noqa: E402
from tinyddpm.gradcheck import OP_TOLERANCE, check_gradients  # noqa: E402
from tinyddpm.ops import conv2d_forward, groupnorm_backward, groupnorm_forward  # noqa: E402

started = time.perf_counter()
out = output_dir(__file__)
banner("Solutions to lesson 05: GroupNorm")
rng = np.random.default_rng(0)

# ---------------------------------------------------------------------------------------------------
section("Exercise 1 (run): batch independence does not depend on the sizes")
# --fast changes only how many digits go into the pictures of section 4; the batch check of section 3 uses its own
# (8, 6, 5, 4) array either way. The reason it holds is structural, not numerical luck: GroupNorm reduces over
# (C/G, H, W) of one sample, so row n of the output is computed from row n of the input by the same operations in
# the same order whether the batch holds 1 sample or 64 - bit for bit, in float64 and in float32. BatchNorm
# reduces over N, so sample 0's output moves with its batch-mates at every size. Here both facts at five sizes:


def batchnorm_plain(x, eps=1e-5):                                  # per channel over (N, H, W), no affine
    return (x - x.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(x.var(axis=(0, 2, 3), keepdims=True) + eps)


for shape, G in (((8, 6, 5, 4), 3), ((64 if not FAST else 16, 16, 28, 28), 4), ((2, 32, 7, 7), 8),
                 ((16, 4, 3, 3), 1), ((5, 12, 14, 14), 12)):
    x = rng.standard_normal(shape) * rng.uniform(0.5, 4.0, (shape[0], 1, 1, 1))    # samples of different scale
    gamma, beta = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    worst = 0.0
    for dtype in (np.float64, np.float32):
        xd, gd, bd = x.astype(dtype), gamma.astype(dtype), beta.astype(dtype)
        together = groupnorm_forward(xd, gd, bd, G)[0]
        alone = np.concatenate([groupnorm_forward(xd[n:n + 1], gd, bd, G)[0] for n in range(shape[0])])
        worst = max(worst, float(np.max(np.abs(together - alone))))
    diff_bn = float(np.max(np.abs(batchnorm_plain(x)[:1] - batchnorm_plain(x[:1]))))
    check(f"x {shape}, groups={G}: GroupNorm batch == batches of 1 exactly (float64 and float32); BatchNorm does not",
          worst == 0.0 and diff_bn > 0.1, f"GroupNorm max difference {worst:.1e}, BatchNorm {diff_bn:.2f}")

# ---------------------------------------------------------------------------------------------------
section("Exercise 2 (modify): EPS = 1.0")
# Prediction. xhat = (x - mu) / sqrt(var + eps), so its variance is var / (var + eps) and its std sqrt(var / (var + 1))
# with eps = 1: ~1 where var >> 1, and much less than 1 where var is ~1 or below. The lesson's group 0 has filters
# scaled by 0.2: its features have std ~0.7, var ~0.5, so its std after GroupNorm is only ~sqrt(0.5 / 1.5) ~ 0.58;
# group 3 (filters x8) has var in the hundreds and keeps std > 0.99; groups 1 and 2 land in between, at
# 0.93-0.99 depending on the random filters (var 7 to 60). eps acts as a floor
# under the variance: a group whose features are nearly constant is not blown up to unit std (it is left almost
# as it is, centred), which is what 1e-5 does for the U-Net at a far smaller scale.
EPS_BIG, G4, n_digits = 1.0, 4, 8 if FAST else 64
digits, _ = mnist_digits(n_digits, seed=5)
w = rng.standard_normal((16, 1, 3, 3)) * np.repeat([0.2, 1.0, 3.0, 8.0], 4)[:, None, None, None]   # as the lesson
b = np.repeat([-2.0, 0.5, 4.0, -10.0], 4) + rng.standard_normal(16)
feats, _ = conv2d_forward(digits.astype(np.float64), w, b)                       # (n, 16, 28, 28)
var = feats.reshape(n_digits, G4, -1).var(axis=2)                                # (n, G) per digit and group
predicted = np.sqrt(var / (var + EPS_BIG))
after = {}
for eps in (1e-5, EPS_BIG):
    normed, _ = groupnorm_forward(feats, np.ones(16), np.zeros(16), G4, eps=eps)
    after[eps] = normed.reshape(n_digits, G4, -1)
measured = after[EPS_BIG].std(axis=2)
print("  group:                        " + "".join(f"{g:>10d}" for g in range(G4)))
print("  std of the features (mean)    " + "".join(f"{s:>10.2f}" for s in np.sqrt(var).mean(axis=0)))
print("  predicted std after, eps = 1  " + "".join(f"{s:>10.4f}" for s in predicted.mean(axis=0)))
print("  measured std after, eps = 1   " + "".join(f"{s:>10.4f}" for s in measured.mean(axis=0)))
err = relative_error(measured, predicted)
check("prediction: std after GroupNorm == sqrt(var / (var + 1)) for every digit and group", err < 1e-12,
      f"max relative error {err:.1e}")
check("group 0 (std under 1 before) ends far below 1, the loudest group (3) above 0.99 for every digit",
      measured[:, 0].max() < 0.8 and measured[:, 3].min() > 0.99,
      f"group 0 at most {measured[:, 0].max():.3f}; group 3 at least {measured[:, 3].min():.4f}")

fig, axes = plt.subplots(2, G4, figsize=(3.2 * G4, 5.2), layout="constrained")
for g in range(G4):
    for row, eps in enumerate((1e-5, EPS_BIG)):
        axes[row, g].hist(after[eps][:, g].ravel(), bins=60, color=f"C{g}")
        axes[row, g].set_xlim(-5, 5)
        axes[row, g].set_title(f"group {g}, eps = {eps:g}: std {after[eps][:, g].std():.2f}", fontsize=9)
fig.suptitle("After GroupNorm: eps = 1e-5 (top) brings every group to std 1; eps = 1 (bottom) does not for quiet groups")
path = out / "solution_histograms_eps1.png"
fig.savefig(path, dpi=90)
plt.close(fig)
saved(path)

# ---------------------------------------------------------------------------------------------------
section("Exercise 3 (create): BatchNorm's forward and its three-term backward")
# BatchNorm normalises each channel c over its N * H * W entries: the "group" is one channel across the batch.
# Everything in the lesson's derivation carries over with M = N H W and the means taken over (N, H, W):
#     dx = (1 / sigma_c) (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),   dxhat = dy * gamma_c
# (Training mode: the batch statistics. At test time BatchNorm uses running averages instead, a constant
# shift and scale whose backward is just dy * gamma / sigma.)


def batchnorm_forward(x, gamma, beta, eps=1e-5):
    mu = x.mean(axis=(0, 2, 3), keepdims=True)                              # (1, C, 1, 1)
    var = ((x - mu) ** 2).mean(axis=(0, 2, 3), keepdims=True)               # (1, C, 1, 1), biased
    sigma = np.sqrt(var + eps)
    xhat = (x - mu) / sigma                                                 # (N, C, H, W)
    y = gamma[None, :, None, None] * xhat + beta[None, :, None, None]
    return y, (xhat, sigma, gamma)


def batchnorm_backward(dy, cache):
    xhat, sigma, gamma = cache
    dbeta = dy.sum(axis=(0, 2, 3))                                          # (C,)
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))                                # (C,)
    dxhat = dy * gamma[None, :, None, None]                                 # (N, C, H, W)
    dx = (dxhat - dxhat.mean(axis=(0, 2, 3), keepdims=True)
          - xhat * (dxhat * xhat).mean(axis=(0, 2, 3), keepdims=True)) / sigma
    return dx, dgamma, dbeta


arrays = {"x": rng.standard_normal((3, 4, 5, 2)) * 2.0 + 1.0, "gamma": rng.standard_normal(4),
          "beta": rng.standard_normal(4)}
errors = check_gradients(batchnorm_forward, batchnorm_backward, arrays, max_entries=12 if FAST else 40)
check("check_gradients proves the BatchNorm backward (float64, < 1e-7)", max(errors.values()) < OP_TOLERANCE,
      ", ".join(f"d{k} {v:.1e}" for k, v in errors.items()))
# Cross-check against tinyddpm: BatchNorm of x (N, C, H, W) is GroupNorm with one group per channel of the array
# (1, C, N*H, W), i.e. x with the batch moved inside each channel. Forward and backward must agree.
x, gamma, beta = arrays["x"], arrays["gamma"], arrays["beta"]
N, C, H, W = x.shape


def to_channels(a):                                                          # (N, C, H, W) -> (1, C, N*H, W)
    return a.transpose(1, 0, 2, 3).reshape(1, C, N * H, W)


def from_channels(a):
    return a.reshape(C, N, H, W).transpose(1, 0, 2, 3)


y_bn, cache = batchnorm_forward(x, gamma, beta)
y_gn, cache_gn = groupnorm_forward(to_channels(x), gamma, beta, C)
dy = rng.standard_normal(y_bn.shape)
mine = batchnorm_backward(dy, cache)
dx_gn, dgamma_gn, dbeta_gn = groupnorm_backward(to_channels(dy), cache_gn)
err = max(relative_error(y_bn, from_channels(y_gn)), relative_error(mine[0], from_channels(dx_gn)),
          relative_error(mine[1], dgamma_gn), relative_error(mine[2], dbeta_gn))
check("BatchNorm == tinyddpm's GroupNorm(groups=C) on the batch folded into each channel, forward and backward",
      err < 1e-13, f"max relative error {err:.1e}")
# A property of the result: for every channel the input gradient sums to 0 over the batch (shifting a channel
# changes nothing) - which is also why a sample's gradient depends on its batch-mates under BatchNorm.
col_sum = float(np.max(np.abs(mine[0].sum(axis=(0, 2, 3)))) / np.abs(mine[0]).max())
check("dx sums to zero over (N, H, W) for every channel", col_sum < 1e-13, f"largest |sum| / max|dx| = {col_sum:.1e}")

finish(started)
