"""Lesson 06: SiLU, and the sinusoidal embedding that tells the U-Net which timestep it is denoising.

What you will learn
- SiLU(x) = x * sigmoid(x), the U-Net's activation, its derivative sigmoid(x) (1 + x (1 - sigmoid(x))),
  and how to compute sigmoid without overflow for any input.
- The sinusoidal timestep embedding: t becomes [sin(t w_0), ..., sin(t w_{half-1}), cos(t w_0), ...]
  with frequencies w_i = max_period^(-i / half) spread geometrically from 1 down to ~1/max_period,
  its backward in t, and tinyddpm's layout (sines first, then cosines, a zero column for odd dim).
- Why this encoding: nearby timesteps get similar vectors, and the dot product of two embeddings
  depends only on t - t' (shifting t is a fixed rotation), which a network can use easily.

Run it:  python lessons/06_silu_and_time_embedding.py      (a few seconds; --fast for the tests)

Figures (in lessons/output/06_silu_and_time_embedding/):
- silu.png                SiLU and its derivative next to ReLU and sigmoid
- timestep_embedding.png  the embedding as an image: timestep t down, dimension across
- similarity.png          the cosine-similarity matrix of all timesteps, and similarity vs |t - t'|

Try this
 1. run:    python lessons/06_silu_and_time_embedding.py --fast (T = 200, dim 32) and compare
            similarity.png with the full run: with 16 frequencies instead of 64 the curve is bumpier, so a
            farther timestep can be more alike than a nearer one. Compare at equal lags (fast mode only
            reaches lag 199).
 2. modify: set MAX_PERIOD = 100.0 at the top. Predict: the slow columns (the right side of the sine
            half and of the cosine half of timestep_embedding.png) now wiggle within 1000 steps, so the
            far-lag similarity drops towards 0 and distant timesteps can look alike by accident.
 3. create: a learned alternative is a table with one row per timestep (label_embedding_forward with
            T rows). Write it, and use the rotation check above to argue why the sinusoidal embedding
            still means something for a timestep the table never saw (t = 1000.5, say).

Next: lessons/07_self_attention.py - multi-head self-attention over pixels, forward and backward.
"""
# %%
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _common import FAST, banner, check, finish, output_dir, relative_error, saved, section, try_this  # noqa: E402

from tinyddpm.gradcheck import OP_TOLERANCE, check_gradients  # noqa: E402
from tinyddpm.ops import (  # noqa: E402
    silu_backward,
    silu_forward,
    timestep_embedding_backward,
    timestep_embedding_forward,
)

# %%
started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 06: SiLU and the timestep embedding")
rng = np.random.default_rng(0)

T = 200 if FAST else 1000         # timesteps 0 .. T-1, as in a DDPM schedule
DIM = 32 if FAST else 128         # embedding width (the U-Net uses base_channels: 16 in the cpu preset)
MAX_PERIOD = 10000.0              # as DDPM and the Transformer

# %% 1. SiLU and a sigmoid that never overflows
# ---------------------------------------------------------------------------------------------------
section("1. SiLU and a sigmoid that never overflows")
# SiLU (also "swish"): y = x * s with s = sigmoid(x) = 1 / (1 + exp(-x)). It is ReLU-like for large |x|
# (x * 1 for x >> 0, x * 0 for x << 0) but smooth, and dips slightly below zero for negative x.
# The textbook sigmoid overflows: for x = -800, exp(800) is beyond float64 (float32 already fails near
# x = -89). NumPy then warns and uses inf, and 1 / (1 + inf) = 0 happens to be right, but an overflow
# is an error we want to be able to trap. Two overflow-free forms:
#     branch form:  z = exp(-|x|) <= 1;  s = 1 / (1 + z) for x >= 0,  s = z / (1 + z) for x < 0
#                   (the second is the first multiplied above and below by exp(x))
#     tanh form:    s = (1 + tanh(x / 2)) / 2     (what tinyddpm uses: one function, no branch)


def sigmoid_naive(x):
    return 1.0 / (1.0 + np.exp(-x))


def sigmoid_stable(x):
    z = np.exp(-np.abs(x))                            # in (0, 1]: cannot overflow
    return np.where(x >= 0, 1.0 / (1.0 + z), z / (1.0 + z))


xs = np.linspace(-30, 30, 2001)
err_branch = relative_error(sigmoid_stable(xs), sigmoid_naive(xs))
err_tanh = relative_error((1.0 + np.tanh(xs / 2)) / 2, sigmoid_stable(xs))
check("branch-form sigmoid == textbook sigmoid on [-30, 30]", err_branch < 1e-15, f"max relative error {err_branch:.1e}")
check("tanh-form sigmoid == branch form", err_tanh < 1e-14, f"max relative error {err_tanh:.1e}")

extreme = np.array([-1000.0, -800.0, -100.0, 0.0, 100.0, 800.0, 1000.0])
with np.errstate(over="raise"):          # turn the overflow warning into an exception we can see
    try:
        sigmoid_naive(extreme)
        naive_overflows = False
    except FloatingPointError:
        naive_overflows = True
    y_op, _ = silu_forward(extreme)         # tinyddpm's silu: must not raise
    s_stable = sigmoid_stable(extreme)
# (The two stable forms round differently far out: tanh(-50) is exactly -1 in float64, so the tanh form
# gives s(-100) = 0 where the branch form gives 3.7e-44. Both are right to float64's resolution.)
err = relative_error(y_op, extreme * s_stable)
check("at x = +-1000 the textbook sigmoid overflows, tinyddpm's SiLU does not", naive_overflows and err < 1e-15,
      f"silu(-1000, 1000) = ({y_op[0]:.1f}, {y_op[-1]:.1f}), max relative error to the branch form {err:.1e}")

# Derivative, by the product rule and ds/dx = s (1 - s):
#     d/dx [x s] = s + x s (1 - s) = s (1 + x (1 - s))
x = rng.standard_normal((4, 5, 6)) * 4.0
y_mine = x * sigmoid_stable(x)
y_op, cache = silu_forward(x)
err_f = relative_error(y_mine, y_op)
check("SiLU forward == tinyddpm silu_forward", err_f < 1e-15, f"max relative error {err_f:.1e}")
dy = rng.standard_normal(x.shape)
s = sigmoid_stable(x)
dx_mine = dy * s * (1.0 + x * (1.0 - s))
err_b = relative_error(dx_mine, silu_backward(dy, cache))
check("SiLU backward == tinyddpm silu_backward", err_b < 1e-15, f"max relative error {err_b:.1e}")
errors = check_gradients(silu_forward, silu_backward, {"x": rng.standard_normal((3, 4, 5)) * 4.0},
                         max_entries=16 if FAST else 60)
check("gradient check of tinyddpm silu", errors["x"] < OP_TOLERANCE, f"x {errors['x']:.1e}")

# The dip: SiLU has one minimum, where the derivative is 0: 1 + x (1 - s) = 0. Solve it by bisection
# on [-3, -0.5] (the derivative is negative at -3 and positive at -0.5). At that point 1 - s = -1/x,
# so s = 1 + 1/x and the minimum value is x * s = x + 1: a small identity the numbers must obey.


def dsilu(x):
    s = sigmoid_stable(x)
    return s * (1.0 + x * (1.0 - s))


lo, hi = -3.0, -0.5
for _ in range(60):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if dsilu(mid) < 0 else (lo, mid)
x_min = (lo + hi) / 2
silu_min = x_min * sigmoid_stable(x_min)
grid = np.linspace(-3, 0, 30001)
x_grid = grid[np.argmin(grid * sigmoid_stable(grid))]
check("SiLU's minimum: bisection on the derivative == argmin on a grid", abs(x_min - x_grid) <= 1e-4,
      f"x* = {x_min:.6f} (grid {x_grid:.4f})")
check("... and the minimum value is x* + 1", abs(silu_min - (x_min + 1.0)) < 1e-12,
      f"silu(x*) = {silu_min:.6f}, x* + 1 = {x_min + 1.0:.6f}")

xp = np.linspace(-6, 6, 601)
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
axes[0].plot(xp, xp * sigmoid_stable(xp), label="SiLU  x sigmoid(x)", lw=2)
axes[0].plot(xp, np.maximum(xp, 0), "--", label="ReLU  max(x, 0)")
axes[0].plot(xp, sigmoid_stable(xp), ":", label="sigmoid(x)")
axes[0].plot([x_min], [silu_min], "o", color="C0")
axes[0].annotate(f"minimum ({x_min:.3f}, {silu_min:.3f})", (x_min, silu_min), (x_min - 1.5, -1.3),
                 arrowprops=dict(arrowstyle="->"))
axes[0].set_title("Activations")
axes[1].plot(xp, dsilu(xp), label="SiLU'  s (1 + x (1 - s))", lw=2)
axes[1].plot(xp, (xp > 0).astype(float), "--", label="ReLU'  (a step)")
axes[1].axhline(0, color="gray", lw=0.5)
axes[1].set_title("Derivatives: SiLU's is smooth, overshoots 1, and is slightly negative for x < -1.28")
axes[1].title.set_fontsize(9)
for ax in axes:
    ax.set_xlabel("x")
    ax.legend()
    ax.grid(alpha=0.3)
axes[0].set_ylim(-1.6, 6)
fig.tight_layout()
fig.savefig(out / "silu.png", dpi=90)
plt.close(fig)
saved(out / "silu.png")

# %% 2. The sinusoidal timestep embedding
# ---------------------------------------------------------------------------------------------------
section("2. The sinusoidal timestep embedding")
# The network is told t, an integer from 0 to 999, as a vector of sines and cosines (half = dim // 2):
#     w_i     = max_period^(-i / half) = exp(-ln(max_period) * i / half)      i = 0 .. half-1
#     emb(t)  = [sin(t w_0), ..., sin(t w_{half-1}), cos(t w_0), ..., cos(t w_{half-1})]
# plus one zero column when dim is odd. w_0 = 1 (a full turn every 2 pi ~ 6.3 steps) down to
# w_{half-1} ~ 1/max_period (a period of ~60,000 steps): fast columns tell close t apart, slow ones
# tell far t apart, like the hands of a clock. Layout in tinyddpm: all sines, then all cosines.
# The U-Net calls timestep_embedding_forward(t, base_channels), then linear -> SiLU -> linear -> SiLU,
# and every ResBlock adds its own linear projection of that, one number per channel, to its features.


def embed_mine(t, dim, max_period=MAX_PERIOD):
    half = dim // 2
    w = max_period ** (-np.arange(half) / half)              # (half,)
    a = t.astype(np.float64)[:, None] * w[None, :]           # (N, half)
    emb = np.concatenate([np.sin(a), np.cos(a)], axis=1)     # (N, 2 * half)
    if dim % 2:
        emb = np.concatenate([emb, np.zeros((len(t), 1))], axis=1)   # (N, dim)
    return emb


# tinyddpm computes w_i as exp(-ln(max_period) i / half); the power above rounds differently in the last
# bit, and t up to 999 multiplies that into ~1e-13 of the angle, so the two agree to ~1e-13, not 1e-16.
t_int = np.array([0, 1, 2, 10, 250, 999])
for dim in (DIM, DIM + 1):
    emb_op, _ = timestep_embedding_forward(t_int, dim, max_period=MAX_PERIOD, dtype=np.float64)
    err = relative_error(embed_mine(t_int, dim), emb_op)
    check(f"embedding == tinyddpm timestep_embedding_forward, dim={dim}", emb_op.shape == (6, dim) and err < 1e-12,
          f"shape {emb_op.shape}, max relative error {err:.1e}")
emb32, _ = timestep_embedding_forward(t_int, DIM, max_period=MAX_PERIOD)   # integer t: float32 by default (training)
err = relative_error(emb32, embed_mine(t_int, DIM))
check("the float32 default (as in training) agrees to float32 precision", emb32.dtype == np.float32 and err < 1e-6,
      f"dtype {emb32.dtype}, max relative error {err:.1e}")

# Backward in t (t is data in training, so nothing needs dt, but it proves the formula and makes a
# gradient check possible with a float t):
#     d sin(t w)/dt = w cos(t w),   d cos(t w)/dt = -w sin(t w)
#     dt = sum_i w_i (demb_sin_i cos(t w_i) - demb_cos_i sin(t w_i))
t_float = rng.uniform(0, T, size=5)
emb_f, cache = timestep_embedding_forward(t_float, DIM, max_period=MAX_PERIOD)
demb = rng.standard_normal(emb_f.shape)
half = DIM // 2
w = MAX_PERIOD ** (-np.arange(half) / half)
a = t_float[:, None] * w
dt_mine = (w * (demb[:, :half] * np.cos(a) - demb[:, half:] * np.sin(a))).sum(axis=1)
err = relative_error(dt_mine, timestep_embedding_backward(demb, cache))
check("dt == tinyddpm timestep_embedding_backward", err < 1e-12, f"max relative error {err:.1e}")
errors = check_gradients(lambda t_: timestep_embedding_forward(t_, DIM, max_period=MAX_PERIOD),
                         timestep_embedding_backward, {"t": rng.uniform(0, T, size=6)})
check("gradient check of tinyddpm timestep_embedding (in t)", errors["t"] < OP_TOLERANCE, f"t {errors['t']:.1e}")

E = embed_mine(np.arange(T), DIM)                              # (T, DIM), every timestep's embedding
fig, ax = plt.subplots(figsize=(8, 5.5))
im = ax.imshow(E, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
ax.axvline(half - 0.5, color="k", lw=1)
ax.set_xlabel(f"dimension: sin(t w_i) for i = 0..{half - 1} | cos(t w_i) for i = 0..{half - 1}   (w_i falls left to right)")
ax.set_ylabel("timestep t")
ax.set_title(f"Sinusoidal timestep embedding, dim {DIM}, max_period {MAX_PERIOD:g}")
fig.colorbar(im, ax=ax)
fig.tight_layout()
fig.savefig(out / "timestep_embedding.png", dpi=90)
plt.close(fig)
saved(out / "timestep_embedding.png")

# %% 3. What the encoding gives: similarity by distance, and shifts as rotations
# ---------------------------------------------------------------------------------------------------
section("3. What the encoding gives: similarity by distance, and shifts as rotations")
# Every embedding has the same length: sin^2 + cos^2 = 1 per frequency, so |emb(t)|^2 = half.
# The dot product of two of them, by cos(a - b) = cos a cos b + sin a sin b, is
#     emb(t) . emb(t') = sum_i cos((t - t') w_i)
# a function of t - t' alone. So cosine similarity = dot / half, and it is near 1 for close t (every
# cos near 1) and falls as the fast frequencies decorrelate.
norms2 = (E * E).sum(axis=1)
check("every embedding has squared length half", np.abs(norms2 - half).max() < 1e-12,
      f"|emb|^2 in [{norms2.min():.12f}, {norms2.max():.12f}], half = {half}")
lag = np.arange(T)[:, None] - np.arange(T)[None, :]             # (T, T): t - t'
dots = E @ E.T                                                   # (T, T)
err = relative_error(dots, np.cos(lag[..., None] * w).sum(axis=-1))
check("emb(t) . emb(t') == sum_i cos((t - t') w_i), for all pairs", err < 1e-12, f"max relative error {err:.1e}")

# Shifting t by d is a fixed linear map, the same for every t: per frequency, (sin, cos) turns by the
# angle d w_i:  sin(a + b) = sin a cos b + cos a sin b,   cos(a + b) = cos a cos b - sin a sin b.
d = 37
cb, sb = np.cos(d * w), np.sin(d * w)                                             # (half,)
rotated = np.concatenate([E[:-d, :half] * cb + E[:-d, half:] * sb,
                          E[:-d, half:] * cb - E[:-d, :half] * sb], axis=1)       # R(d) emb(t)
err = relative_error(rotated, E[d:])
check(f"emb(t + {d}) == R({d}) emb(t) for every t, one rotation R", err < 1e-12, f"max relative error {err:.1e}")

sim = dots / half                                                # cosine similarity (T, T)
by_lag = np.array([np.mean(np.diagonal(sim, k)) for k in range(T)])   # similarity at each |t - t'|
near, mid, far = by_lag[1:11].mean(), by_lag[11:101].mean(), by_lag[101:].mean()
check("nearby timesteps are more alike: mean similarity at |t - t'| 1-10 > 11-100 > 101+", near > mid > far,
      f"{near:.2f} > {mid:.2f} > {far:.2f}")
# |emb(t) - emb(t')|^2 = 2 half - 2 dot = 2 half (1 - similarity): the closest pair is at the lag of
# highest similarity. It is far from 0, so no two of the T timesteps share an embedding.
closest = 1 + int(np.argmax(by_lag[1:]))
print(f"  every timestep is distinct: the closest two embeddings are {np.sqrt(2 * half * (1 - by_lag[closest])):.3f}"
      f" apart, at |t - t'| = {closest}")

fig, axes = plt.subplots(1, 3, figsize=(16, 5), layout="constrained")
zoom = min(T, 60)
for ax, n, name in ((axes[0], T, "all timesteps"), (axes[1], zoom, f"zoom on t, t' < {zoom}")):
    im = ax.imshow(sim[:n, :n], cmap="viridis", vmin=-0.3, vmax=1, interpolation="nearest")
    ax.set_xlabel("timestep t'")
    ax.set_ylabel("timestep t")
    ax.set_title(f"cosine similarity of emb(t), emb(t'), {name}:\nconstant along diagonals (a function of t - t')",
                 fontsize=10)
fig.colorbar(im, ax=axes[:2], shrink=0.8)
axes[2].plot(by_lag, lw=2)
axes[2].set_xscale("symlog", linthresh=1)
axes[2].set_xlabel("|t - t'|  (log scale past 1)")
axes[2].set_ylabel("cosine similarity")
axes[2].set_title("similarity falls with distance:\nclose timesteps look alike", fontsize=10)
axes[2].grid(alpha=0.3)
fig.savefig(out / "similarity.png", dpi=90)
plt.close(fig)
saved(out / "similarity.png")

# %% Exercises
# ---------------------------------------------------------------------------------------------------
try_this(__doc__)
finish(started)
