"""Solutions to lesson 07 (self-attention): the three "Try this" exercises, worked and checked.

Try each exercise in lessons/07_self_attention.py yourself first; then run this file and compare.

Run it:   python lessons/solutions/07_self_attention.py          (--fast: the lesson's fast-mode digit)

Figures (in lessons/output/07_self_attention/, with a solution_ prefix):
  solution_blob_28_vs_14.png   head 0's attention for one query at 28 x 28 and at 14 x 14
  solution_gamma0.png          head 0 with GAMMA = 0: the same map for three different queries
  solution_row_head.png        the three heads of the 12-channel map for one query; the row head at G = GAMMA and G = 2
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the lessons folder, for _common

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import banner, check, finish, mnist_digits, output_dir, relative_error, saved, section  # noqa: E402
from tinyddpm.ops import attention_forward, conv2d_forward  # noqa: E402

started = time.perf_counter()
out = output_dir(__file__)
banner("Solutions to lesson 07: self-attention")

GAMMA, BETA, ALPHA = 0.1, 6.0, 0.5                  # the lesson's values
digit, label = mnist_digits(1, seed=3)              # the lesson's digit
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)


def softmax(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def feature_map(side, channels=8):
    """The lesson's feature map at side x side (28, or 14 by 2x2 averaging as --fast does), with spare channels.

    ch 0 ink, ch 1 column u, ch 2 row r, ch 3 u^2 + r^2, ch 4-5 Sobel-x and -y of the ink; ch 8 (if there) r^2."""
    ink = (digit.astype(np.float64) + 1.0) / 2.0
    if side == 14:
        ink = ink.reshape(1, 1, 14, 2, 14, 2).mean(axis=(3, 5))
    g, _ = conv2d_forward(ink, np.stack([SOBEL_X, SOBEL_X.T])[:, None], None)
    r, u = np.mgrid[0:side, 0:side].astype(np.float64)
    feat = np.zeros((1, channels, side, side))
    feat[0, 0], feat[0, 1], feat[0, 2], feat[0, 3] = ink[0, 0], u, r, u ** 2 + r ** 2
    feat[0, 4:6] = g[0]
    if channels > 8:
        feat[0, 8] = r ** 2
    return feat, ink[0, 0], np.stack([u.ravel(), r.ravel()], axis=1)


def lesson_weights(C, gamma=GAMMA):
    """Heads 0 and 1 of the lesson (d = 4 channels per head) in a (3C, C) w_qkv; Q rows scaled by sqrt(d) = 2."""
    w, b = np.zeros((3 * C, C)), np.zeros(3 * C)
    Qr, Kr, Vr, d = 0, C, 2 * C, 4
    b[Qr + 0], w[Qr + 1, 1], w[Qr + 2, 2], b[Qr + 3] = BETA, 2 * gamma, 2 * gamma, -gamma
    w[Kr + 0, 0] = w[Kr + 1, 1] = w[Kr + 2, 2] = w[Kr + 3, 3] = 1.0
    w[Vr + 0, 0] = 1.0
    w[Qr + d + 0, 4] = w[Qr + d + 1, 5] = ALPHA
    w[Kr + d + 0, 4] = w[Kr + d + 1, 5] = 1.0
    w[Vr + d + 0, 4] = w[Vr + d + 1, 5] = 1.0
    return w, b


def attend(feat, w, b, heads):
    C = feat.shape[1]
    w, b = w.copy(), b.copy()
    w[:C] *= 2.0                                    # sqrt(d) = 2 cancels the 1 / sqrt(d) of the scores
    b[:C] *= 2.0
    y, cache = attention_forward(feat, w, b, np.eye(C), np.zeros(C), heads=heads)
    return y, cache.p[0]                            # (1, C, H, W), (heads, L, L)


def show(ax, img, ink, title, query=None):
    ax.imshow(img, cmap="magma", vmin=0)
    ax.contour(ink, levels=[0.5], colors="cyan", linewidths=0.6)
    if query is not None:
        ax.plot(*query, marker="x", color="lime", ms=9, mew=2.5)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------------------------------------------
section("Exercise 1 (run): the digit at 14 x 14 (--fast) against 28 x 28")
# Head 0 scores BETA ink_j - GAMMA |p_i - p_j|^2 with distances counted in pixels of the map it sees. At 14 x 14 a
# pixel spans 2 pixels of the original digit, so a distance of d' digit pixels is d'/2 map pixels and costs
# GAMMA d'^2 / 4: the same as GAMMA / 4 at full resolution. The Gaussian blob is twice as wide on the digit (as far
# as the ink lets it: the BETA ink term still holds it to the strokes) and covers a larger part of it. Measured over
# every inked query pixel: the attention-weighted RMS distance from the query (in original-digit pixels), and the
# share of the digit's inked pixels inside the blob (keys with at least half the row's largest weight).
stats, maps = {}, {}
for side in (28, 14):
    feat, ink, pos = feature_map(side)
    _, P = attend(feat, *lesson_weights(8), heads=2)
    dist2 = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(axis=-1)               # (L, L) in map pixels
    on_ink = ink.ravel() > 0.5
    radius = np.sqrt((P[0] * dist2).sum(axis=1)) * (28 / side)                    # (L,) in digit pixels
    blob = P[0] >= 0.5 * P[0].max(axis=1, keepdims=True)
    cover = (blob & on_ink[None, :]).sum(axis=1) / on_ink.sum()                   # (L,)
    stats[side] = (radius[on_ink].mean(), cover[on_ink].mean())
    query = int(np.argmax(feat[0, 4].ravel()))                                    # the lesson's "left edge" query
    maps[side] = (P[0, query].reshape(side, side), ink, divmod(query, side)[::-1])
    print(f"  {side} x {side}: mean RMS reach of head 0 {stats[side][0]:.2f} digit pixels, "
          f"blob covers {stats[side][1]:.1%} of the inked pixels (averaged over {on_ink.sum()} inked queries)")
ratio = stats[14][0] / stats[28][0]
check("at 14 x 14 head 0 reaches farther across the digit (RMS reach over 1.4x, ideally 2x)", ratio > 1.4,
      f"{stats[14][0]:.2f} vs {stats[28][0]:.2f} digit pixels: {ratio:.2f}x")
check("... and its blob covers a larger share of the digit", stats[14][1] > stats[28][1],
      f"{stats[14][1]:.1%} vs {stats[28][1]:.1%}")
fig, axes = plt.subplots(1, 2, figsize=(7, 3.6), layout="constrained")
for ax, side in zip(axes, (28, 14)):
    show(ax, *maps[side][:2], f"head 0 at {side} x {side}", maps[side][2])
fig.suptitle("The same GAMMA per pixel: a coarser map means a wider blob on the digit", fontsize=10)
path = out / "solution_blob_28_vs_14.png"
fig.savefig(path, dpi=90)
plt.close(fig)
saved(path)

# ---------------------------------------------------------------------------------------------------
section("Exercise 2 (modify): GAMMA = 0")
# Prediction. With GAMMA = 0 head 0's score is BETA ink_j + 0: it does not involve the query at all. Every row of
# P[0] is the same softmax(BETA ink), every key with the same ink gets the same weight (fully inked pixels are
# equally bright; MNIST's strokes are not all at full ink, so their core varies by up to exp(BETA * 0.1) = 1.8x),
# and the output at every pixel is the same number, sum_j softmax(BETA ink)_j ink_j, a
# weighted mean ink tilted towards the strokes. A head whose query is constant is a global pooling.
feat, ink, pos = feature_map(28)
y0, P = attend(feat, *lesson_weights(8, gamma=0.0), heads=2)
rows = float(np.max(np.abs(P[0] - P[0][:1])))
check("prediction: head 0's map is the same for every query", rows == 0.0, f"max |row i - row 0| = {rows:.1e}")
err = relative_error(P[0, 0], softmax(BETA * ink.ravel()))
check("prediction: every row is softmax(BETA ink): a key's brightness is a function of its ink alone", err < 1e-14,
      f"max relative error {err:.1e}")
values, inverse, counts = np.unique(ink.ravel(), return_inverse=True, return_counts=True)
spread = max(float(np.ptp(P[0, 0][inverse == k])) for k in np.flatnonzero(counts > 1)) / float(P[0, 0].max())
strokes = ink.ravel() > 0.9
check("prediction: keys with equal ink are equally bright, and the strokes' core (ink > 0.9) is near-uniform",
      spread == 0.0 and P[0, 0][strokes].max() / P[0, 0][strokes].min() <= np.exp(BETA * 0.1) * (1 + 1e-12),
      f"{int(np.sum(counts > 1))} ink values shared by several pixels, weight spread within each {spread:.1e}; "
      f"{int(strokes.sum())} core pixels within a factor {P[0, 0][strokes].max() / P[0, 0][strokes].min():.2f} "
      f"(at most exp(BETA * 0.1) = {np.exp(BETA * 0.1):.2f})")
expected = float(softmax(BETA * ink.ravel()) @ ink.ravel())
head0_out = y0[0, 0]                                                      # head 0's value is the ink: channel 0
err = float(np.max(np.abs(head0_out - expected)))
check("prediction: head 0 outputs one number everywhere, sum_j softmax(BETA ink)_j ink_j", err < 1e-12,
      f"output {head0_out.mean():.4f} at all {head0_out.size} pixels, expected {expected:.4f} (max error {err:.1e})")
fig, axes = plt.subplots(1, 3, figsize=(9, 3.3), layout="constrained")
for ax, i in zip(axes, (0, int(np.argmax(feat[0, 4].ravel())), 28 * 14 + 14)):
    show(ax, P[0, i].reshape(28, 28), ink, f"query {divmod(i, 28)[::-1]}", divmod(i, 28)[::-1])
fig.suptitle("GAMMA = 0: three queries, one map (the ink, softmaxed)", fontsize=10)
path = out / "solution_gamma0.png"
fig.savefig(path, dpi=90)
plt.close(fig)
saved(path)

# ---------------------------------------------------------------------------------------------------
section("Exercise 3 (create): a third head that attends along the query's row")
# q_i = [2G r_i, -G, 0, 0] and k_j = [r_j, r_j^2, 0, 0] give q_i . k_j = 2G r_i r_j - G r_j^2 = -G (r_i - r_j)^2 + G r_i^2;
# the last term is the same for every key, so the softmax drops it and the head scores -G (r_i - r_j)^2: every key
# in the query's row scores 0, the rows above and below lose G per squared row of distance, and the column does
# not matter at all. The key needs r^2, which no channel holds (ch 3 is u^2 + r^2), so the map gets C = 12 channels
# (three heads of d = 4) with r^2 in channel 8; r_j comes from channel 2 as for head 0. The value is the ink: the
# head outputs a row-weighted mean of the ink.
# How sharp: with G = GAMMA = 0.1, the next row gets exp(-0.1) = 90% of the own row's weight - a soft band several
# rows high, not "the row". For attention to the row itself G must be a few units: at G = 2 the neighbours get
# exp(-2) = 14% each and the own row most of the weight. Both are drawn; the exercise leaves G open.
C3, d = 12, 4
feat12, ink, pos = feature_map(28, channels=C3)
r = pos[:, 1]


def three_heads(G):
    w, b = lesson_weights(C3)
    Qr, Kr, Vr, h = 0, C3, 2 * C3, 2 * d                     # head 2 owns rows 8..11 of Q, K and V
    w[Qr + h + 0, 2], b[Qr + h + 1] = 2 * G, -G              # q = [2G r_i, -G, 0, 0]
    w[Kr + h + 0, 2], w[Kr + h + 1, 8] = 1.0, 1.0            # k = [r_j, r_j^2, 0, 0]
    w[Vr + h + 0, 0] = 1.0                                   # v = [ink, 0, 0, 0]
    return attend(feat12, w, b, heads=3)


_, P2 = attend(feature_map(28)[0], *lesson_weights(8), heads=2)   # the lesson's two heads alone
y3, P3 = three_heads(GAMMA)
err = max(relative_error(P3[0], P2[0]), relative_error(P3[1], P2[1]))
check("adding the third head leaves heads 0 and 1 exactly as they were", err < 1e-12, f"max relative error {err:.1e}")
err = relative_error(P3[2], softmax(-GAMMA * (r[:, None] - r[None, :]) ** 2))
check("head 2 == softmax_j(-G (r_i - r_j)^2): the square was completed right", err < 1e-10, f"max relative error {err:.1e}")
by_row = P3[2].reshape(28 * 28, 28, 28)                                   # (query, key row, key column)
col_spread = float(np.max(np.ptp(by_row, axis=2) / by_row.max(axis=2)))
check("head 2's weight depends only on the key's row (equal along every row)", col_spread < 1e-12,
      f"largest relative spread along a row {col_spread:.1e}")
query = 14 * 28 + int(np.argmax(ink[14]))                                  # a stroke pixel in the middle row
own_row = {}
for G in (GAMMA, 2.0):
    P_G = three_heads(G)[1][2]
    own_row[G] = float(P_G[query].reshape(28, 28)[14].sum())
print(f"  weight on the query's own row: {own_row[GAMMA]:.0%} at G = {GAMMA}, {own_row[2.0]:.0%} at G = 2")
check("at G = 2 most of the weight is on the query's own row; at G = 0.1 it is a band", own_row[2.0] > 0.7 > 0.3 > own_row[GAMMA],
      f"{own_row[2.0]:.0%} vs {own_row[GAMMA]:.0%}")
y_sharp, _ = three_heads(50.0)                                             # G -> large: exactly the row
err = float(np.max(np.abs(y_sharp[0, 8] - ink.mean(axis=1, keepdims=True))))
check("with a very large G (50) head 2 outputs the mean ink of the query's row", err < 1e-12, f"max error {err:.1e}")
fig, axes = plt.subplots(1, 4, figsize=(12, 3.4), layout="constrained")
qxy = divmod(query, 28)[::-1]
show(axes[0], P3[0, query].reshape(28, 28), ink, "head 0: ink near the query", qxy)
show(axes[1], P3[1, query].reshape(28, 28), ink, "head 1: edges facing the same way", qxy)
show(axes[2], P3[2, query].reshape(28, 28), ink, f"head 2, G = {GAMMA}: a band of rows", qxy)
show(axes[3], three_heads(2.0)[1][2, query].reshape(28, 28), ink, "head 2, G = 2: the query's row", qxy)
fig.suptitle(f"Three heads of a 12-channel map over a '{label[0]}', one query (green x)", fontsize=10)
path = out / "solution_row_head.png"
fig.savefig(path, dpi=90)
plt.close(fig)
saved(path)

finish(started)
