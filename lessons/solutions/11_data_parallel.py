"""Solutions to lesson 11 (data-parallel SGD): the three "Try this" exercises, worked and checked.

Try each exercise in lessons/11_data_parallel.py yourself first; then run this file and compare.

Run it:   python lessons/solutions/11_data_parallel.py     (--fast: the lesson's smaller network, 2 and 4 shares)

Figure (in lessons/output/11_data_parallel/, with a solution_ prefix):
  solution_float32_gaps.png   the sharded gradient against the whole batch's, float32 and float64, by shares
"""
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the lessons folder, for _common

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import FAST, banner, check, finish, mnist_digits, output_dir, relative_error, saved, section  # noqa: E402
from tinyddpm.diffusion import make_schedule, q_sample  # noqa: E402
from tinyddpm.parallel.mpi import DataParallel  # noqa: E402
from tinyddpm.gradcheck import OP_TOLERANCE, check_gradients  # noqa: E402
from tinyddpm.nn.unet import UNetConfig, init_params, unet_backward, unet_forward  # noqa: E402

started = time.perf_counter()
out = output_dir(__file__)                                 # lessons/output/11_data_parallel/, as the lesson
banner("Solutions to lesson 11: data-parallel SGD")

# The lesson's problem, rebuilt here: a batch of 8 digits at random t, the noise, a small U-Net whose zero-initialised
# layers are woken up so that every weight carries gradient.
BATCH = 8
UNET = UNetConfig(base_channels=8, channel_mults=(1, 2), blocks_per_level=1, attention_resolutions=(14,) if not FAST
                  else (), heads=2, groups=4, dropout=0.0)
x0, labels = mnist_digits(BATCH, seed=11)
rng = np.random.default_rng(3)
t = rng.integers(0, 1000, BATCH)
noise64 = rng.standard_normal(x0.shape)
x_t64 = q_sample(make_schedule("linear", 1000), x0.astype(np.float64), t, noise64)
params64 = init_params(UNET, seed=0, dtype=np.float64)
for p in params64.values():
    if not np.any(p):
        p[...] = rng.standard_normal(p.shape) * 0.02


def problem(dtype):
    return x_t64.astype(dtype), noise64.astype(dtype), {k: p.astype(dtype) for k, p in params64.items()}


def share_gradient(params, x_t, noise, rows, weight):
    """weight * (the gradient of the mean loss over the images in ``rows``): a worker's g_r."""
    out_, cache = unet_forward(params, UNET, x_t[rows], t[rows], labels[rows])
    dout = 2 * (out_ - noise[rows]) / out_.size                          # d(own mean)/dout
    return {k: weight * g for k, g in unet_backward(dout, cache)[1].items()}


def flat(grads):
    return np.concatenate([g.reshape(-1) for _, g in sorted(grads.items())])


def sharded(params, x_t, noise, sizes, weights):
    """sum_r weight_r * g(share r), for consecutive shares of the given sizes."""
    bounds = np.cumsum([0, *sizes])
    parts = [share_gradient(params, x_t, noise, slice(a, b), w) for a, b, w in zip(bounds[:-1], bounds[1:], weights)]
    return flat({k: sum(p[k] for p in parts) for k in parts[0]})


# ---------------------------------------------------------------------------------------------------
section("Exercise 1 (run): DTYPE = np.float32")
# In float64 the sharded gradient matched the whole batch's to ~1e-16. In float32 each number carries ~7 digits
# (eps / 2 = 6e-8), and the two ways add the same terms in a different order: the weight gradient of a convolution
# is one GEMM that sums over all images and pixels of its input; with shares each GEMM sums over its own images and
# the N partial results are added afterwards. A different order of the same additions, so a difference of the size
# of float32 round-off -- about 1e-7 relative to the largest entry -- and not 0. It does not grow with N: every
# order accumulates round-off of the same size (each partial sum is shorter, there are more of them), so 2, 4 and 8
# shares all land within a factor of a few of each other, far below anything training would notice (a step of
# AdamW moves a weight by ~lr = 2e-3 of its scale).
gaps = {}
for dtype in (np.float32, np.float64):
    x_t, noise, params = problem(dtype)
    whole = sharded(params, x_t, noise, [BATCH], [1.0])
    for n in ((2, 4) if FAST else (2, 4, 8)):
        gaps[(np.dtype(dtype).name, n)] = relative_error(sharded(params, x_t, noise, [BATCH // n] * n, [1 / n] * n),
                                                         whole)
f32 = {n: g for (name, n), g in gaps.items() if name == "float32"}
f64 = {n: g for (name, n), g in gaps.items() if name == "float64"}
print("  shares N:          " + "  ".join(f"{n:8d}" for n in f32))
print("  float32 gap:       " + "  ".join(f"{g:8.1e}" for g in f32.values()))
print("  float64 gap:       " + "  ".join(f"{g:8.1e}" for g in f64.values()))
check("float32: the sharded gradient differs from the whole batch's by round-off only (0 < gap < 1e-5)",
      all(0 < g < 1e-5 for g in f32.values()), ", ".join(f"N={n}: {g:.1e}" for n, g in f32.items()))
check("it does not grow with N: the largest and smallest gap are within a factor of 10",
      max(f32.values()) < 10 * min(f32.values()), f"{min(f32.values()):.1e} .. {max(f32.values()):.1e}")
check("float32's gap is float64's times ~eps32 / eps64 (over 1e6 larger)", min(f32.values()) > 1e6 * max(f64.values()),
      f"float32 {min(f32.values()):.1e} vs float64 {max(f64.values()):.1e}")

fig, ax = plt.subplots(figsize=(6.5, 4))
for name, values, style in (("float32", f32, "o-"), ("float64", f64, "s-")):
    ax.plot(list(values), list(values.values()), style, label=name)
    ax.axhline(np.finfo(name).eps / 2, color="0.5", ls=":")
ax.set(yscale="log", xlabel="shares N", ylabel="max relative error of sum_r g_r",
       title="Sharded against whole-batch gradient: round-off of each dtype")
ax.set_xticks(list(f32), [str(n) for n in f32])
ax.legend()
ax.grid(True, which="both", alpha=0.3)
fig.tight_layout()
fig.savefig(out / "solution_float32_gaps.png", dpi=90)
plt.close(fig)
saved(out / "solution_float32_gaps.png")

# ---------------------------------------------------------------------------------------------------
section("Exercise 2 (modify): unequal shares, 3 and 5 images")
# g = (1/B) sum_i dl_i = sum_r (b_r / B) * (1/b_r) sum_{i in S_r} dl_i: a share's own mean gradient weighs b_r / B,
# its share of the images. With equal shares b_r / B = 1/N, which is why 1/N worked. With 3 and 5 images, 1/2 each
# over-weights the 3 images (each counts 1/6 instead of 1/8) and under-weights the 5 (1/10): another gradient.
x_t, noise, params = problem(np.float64)
whole = sharded(params, x_t, noise, [BATCH], [1.0])
wrong = relative_error(sharded(params, x_t, noise, [3, 5], [1 / 2, 1 / 2]), whole)
right = relative_error(sharded(params, x_t, noise, [3, 5], [3 / 8, 5 / 8]), whole)
check("weights 1/N with shares of 3 and 5: not the batch's gradient", wrong > 1e-3, f"max relative error {wrong:.2f}")
check("weights b_r / B = 3/8 and 5/8: the batch's gradient again", right < 1e-12, f"max relative error {right:.1e}")
# tinyddpm's train_step weighs each rank's mean by share = b / B, so the arithmetic would allow unequal shares. It
# refuses them anyway (DataParallel.check_batch; the CLI names --batch-size): every step ends in an Allreduce that
# waits for the slowest rank, so a rank with more images makes all the others wait, and equal shares keep each
# rank's rows one expression, [r B/N, (r + 1) B/N), with no image left out.
stub = SimpleNamespace(Get_rank=lambda: 0, Get_size=lambda: 2, Free=lambda: None)
stub.Split_type = lambda kind, key=0: stub                               # one machine; no message is ever sent
dp = DataParallel(stub, SimpleNamespace(COMM_TYPE_SHARED=None))
try:
    dp.check_batch(7)
    refusal = ""
except ValueError as e:
    refusal = str(e)
check("DataParallel refuses a batch of 7 over 2 processes", "does not split into 2 equal shares" in refusal, refusal)

# ---------------------------------------------------------------------------------------------------
section("Exercise 3 (create): the backward of synchronised BatchNorm")
# Forward, per channel c, over every worker's images and pixels (count M in all):
#     mu = (1/M) sum x,   var = (1/M) sum x^2 - mu^2,   xhat = (x - mu) / sigma,   y = gamma xhat + beta
# with sum x, sum x^2 and the counts Allreduced (the lesson's section 3). Backward: lesson 05's three terms, whose
# means now run over the whole batch:
#     dxhat = dy * gamma
#     dx    = (1/sigma) (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
# mean(dxhat) and mean(dxhat * xhat) span all workers: each worker sends its two per-channel sums, sum dxhat and
# sum dxhat * xhat, through an Allreduce and divides by M; then its dx needs only its own rows. dgamma = sum dy * xhat
# and dbeta = sum dy are weight gradients: they join the step's usual Allreduce of all the gradients.
EPS = 1e-5
AXES = (0, 2, 3)
WORKERS = 2


def allreduce(parts):
    """What every worker gets from an Allreduce of its array: the sum over the workers."""
    return sum(parts)


def sync_batchnorm_forward(x, gamma, beta):
    shares = np.array_split(x, WORKERS)                                     # each worker's rows
    count = allreduce([np.full(x.shape[1], s.size // x.shape[1]) for s in shares])          # (C,) M
    mu = allreduce([s.sum(axis=AXES) for s in shares]) / count                               # (C,)
    var = allreduce([(s * s).sum(axis=AXES) for s in shares]) / count - mu ** 2              # (C,)
    sigma = np.sqrt(var + EPS)[None, :, None, None]
    xhats = [(s - mu[None, :, None, None]) / sigma for s in shares]
    y = np.concatenate([gamma[None, :, None, None] * xh + beta[None, :, None, None] for xh in xhats])
    return y, (xhats, sigma, gamma, count)


def sync_batchnorm_backward(dy, cache):
    xhats, sigma, gamma, count = cache
    dys = np.array_split(dy, WORKERS)
    dxhats = [d * gamma[None, :, None, None] for d in dys]
    mean_dxhat = allreduce([d.sum(axis=AXES) for d in dxhats]) / count                       # Allreduce 1
    mean_dxhat_xhat = allreduce([(d * xh).sum(axis=AXES) for d, xh in zip(dxhats, xhats)]) / count   # Allreduce 2
    dx = np.concatenate([(d - mean_dxhat[None, :, None, None] - xh * mean_dxhat_xhat[None, :, None, None]) / sigma
                         for d, xh in zip(dxhats, xhats)])
    dgamma = allreduce([(d * xh).sum(axis=AXES) for d, xh in zip(dys, xhats)])
    dbeta = allreduce([d.sum(axis=AXES) for d in dys])
    return dx, dgamma, dbeta


def batchnorm_whole_backward(dy, x, gamma):
    """The one-worker BatchNorm backward: the same three terms with numpy's means over the whole batch."""
    mu, sigma = x.mean(axis=AXES, keepdims=True), np.sqrt(x.var(axis=AXES, keepdims=True) + EPS)
    xhat = (x - mu) / sigma
    dxhat = dy * gamma[None, :, None, None]
    dx = (dxhat - dxhat.mean(axis=AXES, keepdims=True) - xhat * (dxhat * xhat).mean(axis=AXES, keepdims=True)) / sigma
    return dx, (dy * xhat).sum(axis=AXES), dy.sum(axis=AXES)


x = rng.standard_normal((6, 4, 3, 3)) * 2.0 + 1.0
gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
dy = rng.standard_normal(x.shape)
y_sync, cache = sync_batchnorm_forward(x, gamma, beta)
mu, sd = x.mean(axis=AXES, keepdims=True), np.sqrt(x.var(axis=AXES, keepdims=True) + EPS)
y_whole = gamma[None, :, None, None] * (x - mu) / sd + beta[None, :, None, None]
check("synchronised forward == whole-batch BatchNorm", relative_error(y_sync, y_whole) < 1e-13,
      f"max relative error {relative_error(y_sync, y_whole):.1e}")
mine = sync_batchnorm_backward(dy, cache)
theirs = batchnorm_whole_backward(dy, x, gamma)
errs = [relative_error(a, b) for a, b in zip(mine, theirs)]
check("synchronised backward (2 Allreduced sums per channel) == the whole batch's", max(errs) < 1e-12,
      f"dx {errs[0]:.1e}, dgamma {errs[1]:.1e}, dbeta {errs[2]:.1e}")
# and without the two sums: each worker's means over its own rows only -- the wrong gradient
local_dx = np.concatenate([batchnorm_whole_backward(d, s, gamma)[0] for d, s in zip(np.array_split(dy, WORKERS),
                                                                                   np.array_split(x, WORKERS))])
check("each worker's own means instead: another dx (and forward)", relative_error(local_dx, theirs[0]) > 1e-2,
      f"max relative error {relative_error(local_dx, theirs[0]):.2f}")
errors = check_gradients(sync_batchnorm_forward, sync_batchnorm_backward,
                         {"x": x.copy(), "gamma": gamma.copy(), "beta": beta.copy()}, max_entries=12 if FAST else 40)
check("finite differences prove the synchronised backward (float64)", max(errors.values()) < OP_TOLERANCE,
      ", ".join(f"{k} {e:.1e}" for k, e in errors.items()))

finish(started)
