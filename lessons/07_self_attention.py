"""Lesson 07: self-attention over the pixels of a feature map, forward and backward.

What you will learn
- How a feature map (C, H, W) becomes L = H*W tokens of C numbers, and how each token builds a query,
  a key and a value with 1x1 projections; scores = q^T k / sqrt(d), a softmax over the keys, and a
  weighted average of the values, split into several heads.
- The numerically stable softmax (subtract the row max) and its backward
  ds = p * (dp - sum(dp * p)), then the whole backward in plain NumPy.
- Why the key bias gets an exactly zero gradient, and why attention, unlike a convolution, does not
  care where the pixels are (permutation equivariance).
- What a head looks at: hand-set weights on an MNIST digit, one head that looks at ink near the query,
  one that looks for edges facing the same way anywhere.

Run it:  python lessons/07_self_attention.py       (a few seconds; --fast for the test suite's tiny version)

Figures (in lessons/output/07_self_attention/):
- attention_maps.png   for four query pixels of a digit (two stroke edges, background far from and right next to
                       a stroke), where each of the two heads looks

Try this
 1. run:    python lessons/07_self_attention.py --fast: the digit is averaged down to 14 x 14 (L = 196).
            Compare attention_maps.png: head 0's blob covers more of the digit, as GAMMA is per pixel.
 2. modify: set GAMMA = 0.0 at the top. Predict head 0's map: the same for every query (the distance
            term is gone), all fully inked pixels equally bright, so head 0 outputs one number everywhere.
 3. create: add a third head (C = 12, heads = 3) that attends to the pixels in the query's row: score
            -G (r_i - r_j)^2, made from q = [2G r_i, -G] and k = [r_j, r_j^2] as head 0 does, with G large
            enough that the row stands out (at G = GAMMA = 0.1 it spreads over a band of rows). Draw its map.

Next: lessons/08_resblock_and_unet.py - the ResBlock and the U-Net, assembled from these ops.
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
from tinyddpm.ops import attention_backward, attention_forward, conv2d_forward  # noqa: E402

# %%
started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 07: self-attention")
rng = np.random.default_rng(0)

# Legend: N batch, C channels, H x W pixels, L = H*W tokens (positions), heads, d = C / heads channels per
# head, scale = 1 / sqrt(d). Parameters (a 1x1 conv each): w_qkv (3C, C), b_qkv (3C,), w_out (C, C), b_out (C,).
GAMMA = 0.1                       # head 0's distance penalty, per squared pixel (section 4)
BETA = 6.0                        # head 0's bonus for ink
ALPHA = 0.5                       # head 1's weight on edge alignment

# %% 1. The forward, in plain NumPy
# ---------------------------------------------------------------------------------------------------
section("1. The forward, in plain NumPy")
# Read x (N, C, H, W) as X (N, C, L): column i is the C features of pixel i, a "token". Then
#     [Q; K; V] = w_qkv X + b_qkv          (N, 3C, L): rows 0..C-1 are Q, C..2C-1 are K, 2C..3C-1 are V
# Head h owns rows h*d .. (h+1)*d - 1 of each of Q, K, V: a reshape (N, 3C, L) -> (N, 3, heads, d, L).
# For each head (drop h):
#     S = scale * Q^T K                    (L, L): S[i, j] = how well query i matches key j
#     P = softmax of each row of S         (L, L): P[i, j] >= 0, sum_j P[i, j] = 1
#     O = V P^T                            (d, L): O[:, i] = sum_j P[i, j] V[:, j], a weighted average
# The heads' outputs stack back to (C, L), and an output projection mixes them:
#     Y = w_out O + b_out                  (N, C, L) -> (N, C, H, W)
# The 1/sqrt(d) keeps scores of random d-dimensional q, k at unit size, so the softmax starts soft.
#
# The softmax, exp(s_j) / sum_m exp(s_m), overflows for scores of a few hundred. Multiplying above and
# below by exp(-max s) changes nothing mathematically, and then every exponent is <= 0:
#     softmax(s) = exp(s - max s) / sum_m exp(s_m - max s)


def softmax_stable(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))         # every exponent <= 0: no overflow
    return e / e.sum(axis=-1, keepdims=True)              # the largest term is 1, so the sum is >= 1


def attention_mine(x, w_qkv, b_qkv, w_out, b_out, heads):
    N, C, H, W = x.shape
    L, d = H * W, C // heads
    X = x.reshape(N, C, L)                                           # (N, C, L)
    qkv = w_qkv @ X + b_qkv[:, None]                                 # (3C, C) @ (N, C, L) -> (N, 3C, L)
    q, k, v = qkv.reshape(N, 3, heads, d, L).transpose(1, 0, 2, 3, 4)  # each (N, heads, d, L)
    S = q.transpose(0, 1, 3, 2) @ k / np.sqrt(d)                     # (N, heads, L, L)
    P = softmax_stable(S)                                            # (N, heads, L, L)
    O = v @ P.transpose(0, 1, 3, 2)                                  # (N, heads, d, L)
    Y = w_out @ O.reshape(N, C, L) + b_out[:, None]                  # heads merged: (N, C, L)
    return Y.reshape(N, C, H, W), (X, q, k, v, P, O)


def random_attention_params(C, scale=0.5):
    return {"w_qkv": rng.standard_normal((3 * C, C)) * scale, "b_qkv": rng.standard_normal(3 * C) * scale,
            "w_out": rng.standard_normal((C, C)) * scale, "b_out": rng.standard_normal(C) * scale}


x = rng.standard_normal((2, 8, 4, 3))                    # (N, C, H, W): L = 12 tokens of 8 channels
prm = random_attention_params(8)
for heads in (1, 2, 4):
    y_mine, _ = attention_mine(x, **prm, heads=heads)
    y_op, cache = attention_forward(x, **prm, heads=heads)
    err = relative_error(y_mine, y_op)
    check(f"forward == tinyddpm attention_forward, heads={heads} (d={8 // heads})", err < 1e-14,
          f"max relative error {err:.1e}")

# The overflow, shown: scores in the thousands (a large input) make the textbook softmax inf / inf = NaN
# (exp overflows float64 above s = 709).
big = x * 40.0
_, (_, q, k, _, _, _) = attention_mine(big, **prm, heads=2)
S_big = q.transpose(0, 1, 3, 2) @ k / np.sqrt(4)
with np.errstate(over="ignore", invalid="ignore"):
    p_naive = np.exp(S_big) / np.exp(S_big).sum(axis=-1, keepdims=True)
_, cache_big = attention_forward(big, **prm, heads=2)
err = relative_error(softmax_stable(S_big), cache_big.p)
check("for scores in the thousands the textbook softmax gives NaN, the stable one does not",
      np.isnan(p_naive).any() and np.isfinite(cache_big.p).all() and err < 1e-14,
      f"largest |score| {np.abs(S_big).max():.0f}, NaN rows in the textbook version: "
      f"{int(np.isnan(p_naive).any(axis=-1).sum())}, stable == tinyddpm to {err:.1e}")

# %% 2. The backward
# ---------------------------------------------------------------------------------------------------
section("2. The backward")
# Walk the forward from the bottom up (dZ means dLoss/dZ, sums over the batch for the parameters).
#     Y = w_out O + b_out     ->  dw_out = sum_n dY O^T,  db_out = sum_{n, i} dY,  dO = w_out^T dY
#     O = V P^T               ->  dV = dO P,              dP = dO^T V              (per head)
#     P = softmax(S) by rows  ->  see below
#     S = scale Q^T K         ->  dQ = scale K dS^T,      dK = scale Q dS
#     [Q; K; V] = w_qkv X + b ->  dw_qkv = sum_n d[QKV] X^T, db_qkv = sum_{n, i} d[QKV], dX = w_qkv^T d[QKV]
# The softmax, one row p = softmax(s): dp_j / ds_m = p_j (delta_jm - p_m), so
#     ds_m = sum_j dp_j p_j (delta_jm - p_m) = p_m (dp_m - sum_j dp_j p_j)
# i.e. ds = p * (dp - sum(dp * p)): the Jacobian diag(p) - p p^T applied without building it.
s_row, dp_row = rng.standard_normal(7), rng.standard_normal(7)
p_row = softmax_stable(s_row)
J = np.diag(p_row) - np.outer(p_row, p_row)                            # J[j, m] = dp_j / ds_m
err = relative_error(J.T @ dp_row, p_row * (dp_row - (dp_row * p_row).sum()))
check("softmax backward p * (dp - sum(dp * p)) == the full Jacobian", err < 1e-15, f"max relative error {err:.1e}")


def attention_backward_mine(dy, x, w_qkv, w_out, heads, saved_):
    X, q, k, v, P, O = saved_
    N, C, H, W = x.shape
    L, d = H * W, C // heads
    scale = 1.0 / np.sqrt(d)
    dY = dy.reshape(N, C, L)                                         # (N, C, L)
    db_out = dY.sum(axis=(0, 2))                                     # (C,)
    dw_out = (dY @ O.reshape(N, C, L).transpose(0, 2, 1)).sum(axis=0)  # (C, C)
    dO = (w_out.T @ dY).reshape(N, heads, d, L)                      # (N, heads, d, L)
    dv = dO @ P                                                      # (N, heads, d, L)
    dP = dO.transpose(0, 1, 3, 2) @ v                                # (N, heads, L, L)
    dS = P * (dP - (dP * P).sum(axis=-1, keepdims=True))             # (N, heads, L, L)
    dq = scale * k @ dS.transpose(0, 1, 3, 2)                        # (N, heads, d, L)
    dk = scale * q @ dS                                              # (N, heads, d, L)
    dqkv = np.stack([dq, dk, dv], axis=1).reshape(N, 3 * C, L)      # (N, 3C, L), same row order as qkv
    dw_qkv = (dqkv @ X.transpose(0, 2, 1)).sum(axis=0)               # (3C, C)
    db_qkv = dqkv.sum(axis=(0, 2))                                   # (3C,)
    dx = (w_qkv.T @ dqkv).reshape(N, C, H, W)                        # (N, C, H, W)
    return dx, dw_qkv, db_qkv, dw_out, db_out, dP


names = ("dx", "dw_qkv", "db_qkv", "dw_out", "db_out")
for heads in (1, 2):
    y, cache = attention_forward(x, **prm, heads=heads)
    dy = rng.standard_normal(y.shape)
    grads_op = attention_backward(dy, cache)
    _, saved_ = attention_mine(x, **prm, heads=heads)
    *grads, dP = attention_backward_mine(dy, x, prm["w_qkv"], prm["w_out"], heads, saved_)
    errs = [relative_error(a, b) for a, b in zip(grads, grads_op)]
    check(f"backward == tinyddpm attention_backward, heads={heads}", max(errs) < 1e-13,
          ", ".join(f"{n} {e:.1e}" for n, e in zip(names, errs)))
# tinyddpm never multiplies dP by P row by row: sum_j dP[i, j] P[i, j] = sum_j (dO[:, i] . V[:, j]) P[i, j]
# = dO[:, i] . O[:, i], a sum over d channels instead of L keys (FlashAttention uses the same trick).
X_, q_, k_, v_, P_, O_ = saved_
dO_ = (prm["w_out"].T @ dy.reshape(2, 8, -1)).reshape(O_.shape)
err = relative_error((dP * P_).sum(axis=-1), (dO_ * O_).sum(axis=2))
check("row sums: sum_j dP * P == sum_c dO * O", err < 1e-14, f"max relative error {err:.1e}")

# The key bias. Adding a vector b to every key adds, in row i of S, scale * q_i . b to every entry:
# the same constant for all keys j. A softmax ignores a constant added to its whole row (it cancels
# between numerator and denominator, exactly the stable-softmax argument), so P, O and Y do not
# depend on the key bias at all, and its true gradient is exactly zero. The backward computes it as
# a sum of dS over keys, which is 0 up to round-off (every row of dS sums to 0). The gradient checker
# is told so (known_zero) instead of differencing a function that does not change.
C2, heads2 = 8, 2
y_a, _ = attention_forward(x, **prm, heads=heads2)
prm_b = dict(prm, b_qkv=prm["b_qkv"] + np.concatenate([np.zeros(C2), rng.standard_normal(C2) * 5, np.zeros(C2)]))
y_b, _ = attention_forward(x, **prm_b, heads=heads2)
err = relative_error(y_a, y_b)
check("changing the key bias does not change the output", err < 1e-14, f"max relative error {err:.1e}")
_, db_qkv_op = attention_backward(rng.standard_normal(y_a.shape), attention_forward(x, **prm, heads=heads2)[1])[1:3]
ratio = np.abs(db_qkv_op[C2:2 * C2]).max() / np.abs(db_qkv_op).max()
check("... and its gradient is zero to round-off", ratio < 1e-12, f"|db_key| / |db_qkv| = {ratio:.1e}")

entries = 12 if FAST else 32
for heads in (1, 2):
    arrays = {"x": rng.standard_normal((2, 4, 3, 2)), **random_attention_params(4, scale=1.0)}
    errors = check_gradients(lambda *a: attention_forward(*a, heads=heads), attention_backward, arrays,
                             seed=heads, max_entries=entries, known_zero={"b_qkv": np.arange(4, 8)})
    check(f"gradient check of tinyddpm attention, heads={heads}", max(errors.values()) < OP_TOLERANCE,
          ", ".join(f"{n} {e:.1e}" for n, e in errors.items()))


def attention_mine_with_cache(x, w_qkv, b_qkv, w_out, b_out):   # the (y, cache) convention, for the checker
    y, saved_ = attention_mine(x, w_qkv, b_qkv, w_out, b_out, heads=2)
    return y, (x.copy(), w_qkv.copy(), w_out.copy(), saved_)


errors = check_gradients(attention_mine_with_cache,
                         lambda dy, c: attention_backward_mine(dy, c[0], c[1], c[2], 2, c[3])[:5], arrays,
                         seed=5, max_entries=entries, known_zero={"b_qkv": np.arange(4, 8)})
check("gradient check of this lesson's backward, heads=2", max(errors.values()) < OP_TOLERANCE,
      ", ".join(f"{n} {e:.1e}" for n, e in errors.items()))

# %% 3. Attention does not know where pixels are
# ---------------------------------------------------------------------------------------------------
section("3. Attention does not know where pixels are")
# Shuffle the L pixels with a permutation pi. Every token still meets every other token, the scores
# are the same numbers in shuffled rows and columns, and each output token is the same weighted
# average: y(shuffled x) = shuffled y(x). A convolution, which reads fixed neighbours, does not have
# this property. That is why the U-Net puts attention after convolutions: they supply the "where".
xs = rng.standard_normal((2, 8, 5, 4))                    # (N, C, H, W)
perm = rng.permutation(20)                                # a shuffle of the L = 20 pixels


def shuffle(a):
    return a.reshape(a.shape[0], a.shape[1], -1)[:, :, perm].reshape(a.shape)


y_shuf, _ = attention_forward(shuffle(xs), **prm, heads=2)
err = relative_error(y_shuf, shuffle(attention_forward(xs, **prm, heads=2)[0]))
check("attention(shuffle(x)) == shuffle(attention(x))", err < 1e-14, f"max relative error {err:.1e}")
w_conv = rng.standard_normal((8, 8, 3, 3))
c_shuf, _ = conv2d_forward(shuffle(xs), w_conv)
diff = relative_error(c_shuf, shuffle(conv2d_forward(xs, w_conv)[0]))
check("... while conv2d(shuffle(x)) != shuffle(conv2d(x))", diff > 0.1, f"relative difference {diff:.2f}")

# Memory: P is (N, heads, L, L), growing as (H W)^2. At batch 64 with 4 heads (the cpu and gpu presets
# attend at 7 x 7, the tiny one at 14 x 14; 28 x 28 shows why none attends at full resolution):
for side in (7, 14, 28):
    print(f"  {side:>2} x {side:<2} feature map: L = {side * side:>3}, P holds {64 * 4 * side ** 4 / 1e6:6.1f}M numbers"
          f" = {64 * 4 * side ** 4 * 4 / 2 ** 20:6.0f} MiB in float32")

# %% 4. What a head looks at: hand-set weights on a digit
# ---------------------------------------------------------------------------------------------------
section("4. What a head looks at: hand-set weights on a digit")
# A feature map of C = 8 channels made from one digit, with two heads of d = 4:
#     ch 0 ink in [0, 1]   ch 1, 2 column u and row r of the pixel   ch 3 u^2 + r^2
#     ch 4, 5 Sobel-x and Sobel-y of the ink (lesson 04)   ch 6, 7 zero
# Head 0, "ink near me". With q_i = [BETA, 2G u_i, 2G r_i, -G] (G = GAMMA; BETA and -G come from the query
# bias) and k_j = [ink_j, u_j, r_j, u_j^2 + r_j^2], completing the square gives
#     q_i . k_j = BETA ink_j - G |p_i - p_j|^2 + G |p_i|^2
# and the last term is the same for every key j, so the softmax drops it: head 0 scores ink, minus a
# penalty on the squared distance from the query pixel p_i. Its value is the ink: it outputs local ink.
# Head 1, "edges facing my way". q_i = ALPHA [gx_i, gy_i, 0, 0], k_j = [gx_j, gy_j, 0, 0], so the score is
# ALPHA g_i . g_j: large where the key's intensity gradient points the same way as the query's. A query
# with no edge, g_i = 0, scores every key 0 and so attends uniformly, 1/L everywhere. g_i = 0 needs more
# than "no ink at i": the Sobel filter reads the 3x3 window around i, so a background pixel right next to a
# stroke has an edge (g_i != 0) and is not uniform. Only background at least two pixels from any ink is.
# Both heads' weights are multiplied by sqrt(d) = 2 to cancel the 1/sqrt(d) in the scores.
side = 14 if FAST else 28
digit, label = mnist_digits(1, seed=3)
ink = (digit.astype(np.float64) + 1.0) / 2.0                               # (1, 1, 28, 28) in [0, 1]
if FAST:
    ink = ink.reshape(1, 1, 14, 2, 14, 2).mean(axis=(3, 5))               # 2x2 average: (1, 1, 14, 14)
sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
g, _ = conv2d_forward(ink, np.stack([sobel_x, sobel_x.T])[:, None], None)  # (1, 2, side, side)
r_grid, u_grid = np.mgrid[0:side, 0:side].astype(np.float64)              # (side, side) row and column
feat = np.zeros((1, 8, side, side))
feat[0, 0], feat[0, 1], feat[0, 2], feat[0, 3] = ink[0, 0], u_grid, r_grid, u_grid ** 2 + r_grid ** 2
feat[0, 4:6] = g[0]

C, d, root_d = 8, 4, 2.0
w_qkv, b_qkv = np.zeros((3 * C, C)), np.zeros(3 * C)
Qr, Kr, Vr = 0, C, 2 * C                                   # first row of Q, K, V in w_qkv; head h adds h*d
b_qkv[Qr + 0], w_qkv[Qr + 1, 1], w_qkv[Qr + 2, 2], b_qkv[Qr + 3] = BETA, 2 * GAMMA, 2 * GAMMA, -GAMMA   # head 0 q
w_qkv[Kr + 0, 0] = w_qkv[Kr + 1, 1] = w_qkv[Kr + 2, 2] = w_qkv[Kr + 3, 3] = 1.0                      # head 0 k
w_qkv[Vr + 0, 0] = 1.0                                                                                # head 0 v: ink
w_qkv[Qr + d + 0, 4] = w_qkv[Qr + d + 1, 5] = ALPHA                                                    # head 1 q
w_qkv[Kr + d + 0, 4] = w_qkv[Kr + d + 1, 5] = 1.0                                                      # head 1 k
w_qkv[Vr + d + 0, 4] = w_qkv[Vr + d + 1, 5] = 1.0                                                      # head 1 v: edges
w_qkv[:C] *= root_d
b_qkv[:C] *= root_d
y_map, cache = attention_forward(feat, w_qkv, b_qkv, np.eye(C), np.zeros(C), heads=2)
P = cache.p[0]                                                              # (heads, L, L)

rows_sum = relative_error(P.sum(axis=-1), np.ones(P.shape[:2]))
check("every attention row sums to 1", rows_sum < 1e-14, f"max relative error {rows_sum:.1e}")
# The algebra above, checked: head 0's attention is softmax_j(BETA ink_j - GAMMA |p_i - p_j|^2).
pos = np.stack([u_grid.ravel(), r_grid.ravel()], axis=1)                    # (L, 2)
dist2 = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(axis=-1)             # (L, L)
P0 = softmax_stable(BETA * ink.reshape(1, -1) - GAMMA * dist2)
err = relative_error(P0, P[0])
check("head 0 == softmax(BETA ink_j - GAMMA |p_i - p_j|^2): the square was completed right", err < 1e-10,
      f"max relative error {err:.1e}")

gx, gy = g[0, 0].ravel(), g[0, 1].ravel()
# Two background queries, both without ink. "Far": no ink anywhere in its Sobel window (g = 0 exactly), as close to
# the digit as that allows and away from the image border. "Next to a stroke": no ink itself, but ink in its window.
to_ink = np.sqrt(dist2[:, ink.ravel() > 0.5].min(axis=1))                  # (L,) distance to the nearest ink
to_border = np.minimum(np.minimum(u_grid, side - 1 - u_grid), np.minimum(r_grid, side - 1 - r_grid)).ravel()
no_edge = (np.abs(gx) + np.abs(gy) == 0) & (ink.ravel() == 0) & (to_border >= 2)
next_to = (np.abs(gx) + np.abs(gy) > 0) & (ink.ravel() == 0)
background = int(np.flatnonzero(no_edge)[np.argmin(to_ink[no_edge])])
beside = int(np.flatnonzero(next_to)[np.argmax(np.hypot(gx, gy)[next_to])])   # the strongest edge without ink
queries = {"left edge of a stroke": int(np.argmax(gx)), "bottom edge of a stroke": int(np.argmin(gy)),
           "background, 2+ pixels from ink": background, "background next to a stroke": beside}
L = side * side
err_uniform = float(np.max(np.abs(P[1, background] - 1.0 / L)))
check("head 1 at a background pixel with no ink in its 3x3 window: uniform, 1/L everywhere", err_uniform < 1e-15,
      f"g = ({gx[background]:.0f}, {gy[background]:.0f}), max |P - 1/{L}| = {err_uniform:.1e}")
spread = float(P[1, beside].max() * L)
check("... while a background pixel next to a stroke (no ink, but an edge in its window) is not uniform",
      spread > 2.0, f"|g| = {np.hypot(gx[beside], gy[beside]):.2f}, largest weight {spread:.1f} x 1/L")
fig, axes = plt.subplots(len(queries), 3, figsize=(10, 3.3 * len(queries)), squeeze=False)
for row, (name, i) in enumerate(queries.items()):
    qr, qu = divmod(i, side)
    panels = [(ink[0, 0], f"query: {name}"),
              (P[0, i].reshape(side, side), f"head 0: ink near the query\n(largest weight {P[0, i].max():.3f})"),
              (P[1, i].reshape(side, side), f"head 1: edges facing the same way\n(largest weight {P[1, i].max():.3f})")]
    if np.ptp(P[1, i]) < 1e-12:   # no edge at the query: every key scores 0
        panels[2] = (panels[2][0], f"head 1: no edge at the query, so\nuniform: 1/{side * side} everywhere")
    for col, (img, title) in enumerate(panels):
        ax = axes[row, col]
        ax.imshow(img, cmap="gray" if col == 0 else "magma", vmin=0)
        if col:
            ax.contour(ink[0, 0], levels=[0.5], colors="cyan", linewidths=0.6)
        ax.plot(qu, qr, marker="x", color="lime", ms=10, mew=2.5)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
fig.suptitle(f"Attention of one query pixel (green x) over all {side * side} pixels of a '{label[0]}'\n"
             "bright = large weight P[i, j]; cyan outline = the digit's strokes", fontsize=11)
fig.tight_layout()
fig.savefig(out / "attention_maps.png", dpi=90)
plt.close(fig)
saved(out / "attention_maps.png")

# %% Exercises
# ---------------------------------------------------------------------------------------------------
try_this(__doc__)
finish(started)
