"""Lesson 04: a 2-D convolution as im2col and one matrix multiply, forward and backward.

What you will learn
- What a convolution layer computes (strictly a cross-correlation: the kernel is not flipped), with
  stride and zero padding, written first as a plain loop that *is* the definition.
- im2col: unroll every k x k window of the input into a column of a matrix, so the whole layer becomes
  one matrix multiply Y = W @ cols. This is how tinyddpm.ops.conv2d_forward works.
- The backward: db is a sum, dW = dY @ cols^T is one more matrix multiply, and dx is col2im (the
  columns' gradients added back where they were read from), which is also a convolution of dy with
  the kernel flipped in space (the "transposed convolution").
- Using it: hand-made edge filters (Sobel) applied to an MNIST digit.

Run it:  python lessons/04_conv2d.py            (about 10 s; --fast for the test suite's tiny version)

Figures (in lessons/output/04_conv2d/):
- im2col.png    a digit patch, the im2col matrix made from it, and its rows seen as shifted copies
- filters.png   digits and their Sobel-x, Sobel-y, edge-magnitude, Laplacian and blur responses

Try this
 1. run:    python lessons/04_conv2d.py --fast, and compare the loop vs im2col timing with the full run;
            then raise N_TIMING at the top and watch the loop's time grow with the number of outputs.
 2. modify: flip the filter bank, bank = bank[:, :, ::-1, ::-1] (a mathematician's convolution). Predict:
            the ramp check fails with gx = -8a, red and blue swap in the Sobel panels, and the Laplacian
            and blur panels do not change at all (why?).
 3. create: build a 5x5 Gaussian kernel exp(-(di^2 + dj^2) / 2) / sum, apply it with stride 2, padding 2,
            and check that it equals the stride-1 result subsampled at [::2, ::2].

Next: lessons/05_groupnorm.py - GroupNorm and its compact backward.
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
from tinyddpm.ops import conv2d_backward, conv2d_forward  # noqa: E402
from tinyddpm.ops.conv2d import im2col as tinyddpm_im2col  # noqa: E402

# %%
started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 04: conv2d = im2col + one matrix multiply")
rng = np.random.default_rng(0)

# Shapes used throughout (the op's own legend): N batch, C input channels, F output channels (filters),
# H x W input size, k kernel size (odd), s stride, p zero padding, Ho x Wo output size.
N_TIMING = 1 if FAST else 4       # images in the naive-vs-im2col timing
N_DIGITS = 2 if FAST else 4       # digits in the filter picture

# %% 1. The definition, as a loop
# ---------------------------------------------------------------------------------------------------
section("1. The definition, as a loop")
# A conv layer slides F filters w[f] (each C x k x k) over the zero-padded input xpad and takes a dot
# product at every position. With stride s the window moves s pixels at a time:
#
#     y[n, f, u, v] = b[f] + sum_{c, i, j} w[f, c, i, j] * xpad[n, c, s*u + i, s*v + j]
#
#     Ho = floor((H + 2p - k) / s) + 1        (and the same for Wo)
#
# This is a cross-correlation: the kernel is laid over the image as it is, not flipped. (Mathematics'
# "convolution" flips it; deep learning keeps the name for the unflipped version, and so do we.)
# The loop below is the definition written out: one window, one dot product per output number. It is
# far too slow for real use, but it is the reference everything else is checked against.


def out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def conv_naive(x, w, b, s, p):
    N, C, H, W = x.shape
    F, _, k, _ = w.shape
    Ho, Wo = out_size(H, k, s, p), out_size(W, k, s, p)
    xpad = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))           # (N, C, H + 2p, W + 2p)
    y = np.zeros((N, F, Ho, Wo), dtype=x.dtype)
    for n in range(N):
        for f in range(F):
            for u in range(Ho):
                for v in range(Wo):
                    window = xpad[n, :, s * u:s * u + k, s * v:s * v + k]   # (C, k, k)
                    y[n, f, u, v] = b[f] + np.sum(w[f] * window)
    return y


x = rng.standard_normal((2, 3, 7, 6))    # (N, C, H, W): small, and not square, to catch H/W mix-ups
w = rng.standard_normal((4, 3, 3, 3))    # (F, C, k, k)
b = rng.standard_normal(4)               # (F,)
for s, p in [(1, 1), (2, 1), (1, 0), (2, 0)]:
    y_loop = conv_naive(x, w, b, s, p)
    y_op, _ = conv2d_forward(x, w, b, stride=s, padding=p)
    err = relative_error(y_loop, y_op)
    check(f"loop == tinyddpm conv2d_forward, stride {s} padding {p}", y_loop.shape == y_op.shape and err < 1e-13,
          f"output {y_op.shape[2]}x{y_op.shape[3]}, max relative error {err:.1e}")

# %% 2. im2col: every window becomes a column
# ---------------------------------------------------------------------------------------------------
section("2. im2col: every window becomes a column")
# Look at the sum again: for a fixed output pixel (n, u, v) it is a dot product between the filter,
# flattened to K = C*k*k numbers, and the window under it, flattened the same way. So copy every
# window into a column of one matrix:
#
#     cols[(c, i, j), (n, u, v)] = xpad[n, c, s*u + i, s*v + j]        cols is (K, L), L = N*Ho*Wo
#
# and the whole layer is one matrix multiply, (F, K) @ (K, L) -> (F, L):
#
#     Y = w.reshape(F, K) @ cols + b[:, None],    then (F, L) -> (F, N, Ho, Wo) -> (N, F, Ho, Wo)
#
# The price is memory: every input pixel is copied into up to k*k columns (9x for 3x3). The gain is
# that the multiply runs in an optimised BLAS routine instead of Python.
# The index arithmetic is vectorised with two small index arrays: row s*u + i for kernel row i and
# output row u, column s*v + j likewise. Fancy indexing with them gathers all windows at once.


def im2col(x, k, s, p):
    N, C, H, W = x.shape
    Ho, Wo = out_size(H, k, s, p), out_size(W, k, s, p)
    xpad = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))                # (N, C, H + 2p, W + 2p)
    rows = np.arange(k)[:, None] + s * np.arange(Ho)[None, :]          # (k, Ho): rows[i, u] = s*u + i
    cols_idx = np.arange(k)[:, None] + s * np.arange(Wo)[None, :]      # (k, Wo): cols_idx[j, v] = s*v + j
    patches = xpad[:, :, rows[:, None, :, None], cols_idx[None, :, None, :]]  # (N, C, k, k, Ho, Wo)
    return patches.transpose(1, 2, 3, 0, 4, 5).reshape(C * k * k, N * Ho * Wo)  # (K, L), rows (c,i,j), cols (n,u,v)


def conv_im2col(x, w, b, s, p):
    N, C, H, W = x.shape
    F, _, k, _ = w.shape
    Ho, Wo = out_size(H, k, s, p), out_size(W, k, s, p)
    cols = im2col(x, k, s, p)                                            # (K, L)
    Y = w.reshape(F, -1) @ cols + b[:, None]                             # (F, K) @ (K, L) -> (F, L)
    return Y.reshape(F, N, Ho, Wo).transpose(1, 0, 2, 3), cols           # (N, F, Ho, Wo)


for s, p in [(1, 1), (2, 1), (1, 0), (2, 2)]:
    y_mine, cols = conv_im2col(x, w, b, s, p)
    y_op, cache = conv2d_forward(x, w, b, stride=s, padding=p)
    err_y = relative_error(y_mine, y_op)
    k = w.shape[2]
    Ho, Wo = out_size(x.shape[2], k, s, p), out_size(x.shape[3], k, s, p)
    # tinyddpm unrolls x again in its backward for dW (its cache keeps x: 1/9 of the memory of cols)
    td_cols = tinyddpm_im2col(x.transpose(1, 0, 2, 3), k, k, s, p, p, Ho, Wo)   # reads (C, N, H, W)
    err_c = relative_error(cols, td_cols)
    check(f"im2col conv == tinyddpm, stride {s} padding {p}", err_y < 1e-13 and cols.shape == td_cols.shape
          and err_c == 0.0, f"cols {cols.shape}, output error {err_y:.1e}, cols error {err_c:.1e}")

# Why bother: time the loop against im2col on real MNIST-sized inputs (28 x 28, 8 filters).
digits, labels = mnist_digits(max(N_TIMING, N_DIGITS), seed=4)          # (n, 1, 28, 28) in [-1, 1]
xt = digits[:N_TIMING].astype(np.float64)
wt = rng.standard_normal((8, 1, 3, 3))
bt = np.zeros(8)
t0 = time.perf_counter()
y_loop = conv_naive(xt, wt, bt, 1, 1)
t_loop = time.perf_counter() - t0
t0 = time.perf_counter()
y_fast, _ = conv_im2col(xt, wt, bt, 1, 1)
t_fast = time.perf_counter() - t0
err = relative_error(y_loop, y_fast)
check(f"loop == im2col on {N_TIMING} MNIST digit(s), 8 filters", err < 1e-13, f"max relative error {err:.1e}")
print(f"  time: loop {t_loop * 1e3:.0f} ms, im2col + GEMM {t_fast * 1e3:.1f} ms ({t_loop / t_fast:.0f}x faster)")

# The picture: im2col of a small digit patch with a 3x3 kernel, padding 1, stride 1.
# Which 10 x 10 patch? The one holding the most ink: a convolution with a 10 x 10 box of ones sums
# the ink under every window, so its argmax is the spot. (Our own conv_im2col, because tinyddpm's op
# takes odd kernel sizes only, the ones with a centre pixel; the im2col above works for any k.)
ink_sum, _ = conv_im2col((digits[1:2] + 1.0) / 2.0, np.ones((1, 1, 10, 10)), np.zeros(1), 1, 0)  # (1, 1, 19, 19)
r0, c0 = np.unravel_index(np.argmax(ink_sum[0, 0]), ink_sum.shape[2:])  # top-left corner of the patch
patch = digits[1:2, :, r0:r0 + 10, c0:c0 + 10].astype(np.float64)      # (1, 1, 10, 10)
pcols = im2col(patch, 3, 1, 1)                                          # (9, 100)
u, v = divmod(int(np.argmax(pcols.std(axis=0))), 10)                    # follow the busiest window
fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1, 2.6, 1]})
axes[0].imshow(patch[0, 0], cmap="gray", vmin=-1, vmax=1)
axes[0].add_patch(plt.Rectangle((v - 1.5, u - 1.5), 3, 3, fill=False, color="red", lw=2))
axes[0].set_title(f"10x10 patch of a digit;\nthe 3x3 window of output ({u}, {v}) in red")
axes[1].imshow(pcols, cmap="gray", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
axes[1].axvline(u * 10 + v, color="red", lw=2)
axes[1].set_xlabel("column = output pixel (u, v), u*10 + v   (L = 100)")
axes[1].set_ylabel("row = kernel tap (i, j), 3i + j   (K = 9)")
axes[1].set_title("im2col matrix cols (9 x 100): the red column is the red window, flattened;\n"
                  "gray = the zero padding (the digit's background is -1, black)")
# Each row of cols is the image shifted by one kernel tap: row (i, j) reshaped to 10 x 10 is xpad
# read from offset (i, j). Tiling the 9 rows as a 3x3 grid shows the 9 shifted copies.
grid = np.ones((3 * 11 - 1, 3 * 11 - 1))
for r in range(9):
    i, j = divmod(r, 3)
    grid[i * 11:i * 11 + 10, j * 11:j * 11 + 10] = pcols[r].reshape(10, 10)
axes[2].imshow(grid, cmap="gray", vmin=-1, vmax=1)
axes[2].set_title("the 9 rows, each reshaped to 10x10:\nthe patch shifted by tap (i, j)")
axes[2].axis("off")
fig.tight_layout()
fig.savefig(out / "im2col.png", dpi=90)
plt.close(fig)
saved(out / "im2col.png")
check("the centre row of cols (tap (1, 1)) is the patch itself", np.array_equal(pcols[4], patch.reshape(-1)),
      "a shift by (0, 0)")

# %% 3. The backward: db, dW = dY @ cols^T, dx by col2im
# ---------------------------------------------------------------------------------------------------
section("3. The backward: db, dW = dY @ cols^T, dx by col2im")
# Given dy = dLoss/dy (N, F, Ho, Wo), read it in the forward's (F, L) order as dY. The forward was
#     Y = Wm @ cols + b          with Wm = w.reshape(F, K)
# and for a matrix product Z = A @ B the chain rule gives dA = dZ @ B^T and dB = A^T @ dZ. So:
#     db     = sum over (n, u, v) of dy           (F,)    b was added to every column
#     dW     = dY @ cols^T                         (F, L) @ (L, K) -> (F, K) -> (F, C, k, k)
#     dcols  = Wm^T @ dY                           (K, F) @ (F, L) -> (K, L)
# dcols is the gradient of every copy im2col made. An input pixel was copied into several columns,
# so its gradient is the sum over its copies: col2im adds each tap's (N, C, Ho, Wo) slab back at the
# positions it was read from, s*u + i and s*v + j, then crops the padding. One slab per tap: within
# a slab the positions are distinct, so a strided `+=` is exact (no repeated index in one write).


def col2im(dcols, x_shape, k, s, p):
    N, C, H, W = x_shape
    Ho, Wo = out_size(H, k, s, p), out_size(W, k, s, p)
    d6 = dcols.reshape(C, k, k, N, Ho, Wo)                             # rows (c, i, j), columns (n, u, v)
    dxpad = np.zeros((N, C, H + 2 * p, W + 2 * p))
    for i in range(k):                                                 # a loop over the k*k taps, not pixels
        for j in range(k):
            dxpad[:, :, i:i + s * Ho:s, j:j + s * Wo:s] += d6[:, i, j].transpose(1, 0, 2, 3)  # (N, C, Ho, Wo)
    return dxpad[:, :, p:p + H, p:p + W]                               # the padding gets no gradient


def conv_backward_mine(dy, x, w, s, p):
    F, C, k, _ = w.shape
    dY = dy.transpose(1, 0, 2, 3).reshape(F, -1)                        # (F, L), the forward's column order
    db = dY.sum(axis=1)                                                 # (F,)
    dw = (dY @ im2col(x, k, s, p).T).reshape(w.shape)                   # (F, K) -> (F, C, k, k)
    dx = col2im(w.reshape(F, -1).T @ dY, x.shape, k, s, p)              # (K, L) -> (N, C, H, W)
    return dx, dw, db


# dx is also a convolution. For stride 1, take the sum for y and ask which outputs read input pixel t
# (one axis shown, padding 0): y[u] = sum_i w[i] x[u + i], so x[t] feeds y[t - i] through w[i] and
#     dx[t] = sum_i dy[t - i] w[i] = sum_i' dy[t - (k-1) + i'] w[k-1-i']     (i' = k-1-i)
# which is a cross-correlation of dy, zero-padded by k-1, with the kernel flipped in space. Over
# channels the roles swap: the gradient kernel maps F channels to C, so it is w flipped and transposed
# to (C, F, k, k). Padding p in the forward crops p from each side, i.e. pad dy by k-1-p.
# For stride s the outputs are s apart: spread dy out with s-1 zeros between its entries (and the
# r = (H + 2p - k) mod s rows and columns the forward never reached at the end), then do the same.


def dx_by_flipped_conv(dy, w, x_shape, s, p):
    N, F, Ho, Wo = dy.shape
    k = w.shape[2]
    H, W = x_shape[2:]
    rh, rw = (H + 2 * p - k) % s, (W + 2 * p - k) % s
    spread = np.zeros((N, F, s * (Ho - 1) + 1 + rh, s * (Wo - 1) + 1 + rw))
    spread[:, :, :s * (Ho - 1) + 1:s, :s * (Wo - 1) + 1:s] = dy          # s-1 zeros between entries
    w_flip = np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # (C, F, k, k)
    dx, _ = conv2d_forward(spread, w_flip, None, stride=1, padding=k - 1 - p)
    return dx


for s, p in [(1, 1), (2, 1), (1, 0), (2, 0)]:
    y, cache = conv2d_forward(x, w, b, stride=s, padding=p)
    dy = rng.standard_normal(y.shape)
    dx_op, dw_op, db_op = conv2d_backward(dy, cache)
    dx, dw, db = conv_backward_mine(dy, x, w, s, p)
    dx_flip = dx_by_flipped_conv(dy, w, x.shape, s, p)
    errs = [relative_error(dx, dx_op), relative_error(dw, dw_op), relative_error(db, db_op),
            relative_error(dx_flip, dx_op)]
    check(f"col2im backward == tinyddpm conv2d_backward, stride {s} padding {p}", max(errs[:3]) < 1e-13,
          f"dx {errs[0]:.1e}, dw {errs[1]:.1e}, db {errs[2]:.1e}")
    check(f"dx as a convolution with the flipped kernel, stride {s} padding {p}", errs[3] < 1e-13,
          f"max relative error {errs[3]:.1e}")

# The gradient check: nudge single entries by +-h and compare the change of sum(y * dy) with what
# the backward claims (float64, a 4-point central difference). One op: below 1e-7 means right.
entries = 12 if FAST else 32
for s, p in [(1, 1), (2, 1)]:
    arrays = {"x": rng.standard_normal((2, 3, 7, 6)), "w": rng.standard_normal((4, 3, 3, 3)),
              "b": rng.standard_normal(4)}
    errors = check_gradients(lambda x_, w_, b_: conv2d_forward(x_, w_, b_, stride=s, padding=p),
                             conv2d_backward, arrays, seed=s, max_entries=entries)
    check(f"gradient check of tinyddpm conv2d, stride {s} padding {p}", max(errors.values()) < OP_TOLERANCE,
          ", ".join(f"{k} {e:.1e}" for k, e in errors.items()))
# ... and of our own im2col forward and col2im backward, wrapped in the (y, cache) convention.
arrays = {"x": rng.standard_normal((2, 3, 7, 6)), "w": rng.standard_normal((4, 3, 3, 3)), "b": rng.standard_normal(4)}
errors = check_gradients(lambda x_, w_, b_: (conv_im2col(x_, w_, b_, 2, 1)[0], (x_.copy(), w_.copy())),
                         lambda dy, c: conv_backward_mine(dy, c[0], c[1], 2, 1), arrays, seed=7, max_entries=entries)
check("gradient check of this lesson's im2col/col2im conv, stride 2", max(errors.values()) < OP_TOLERANCE,
      ", ".join(f"{k} {e:.1e}" for k, e in errors.items()))

# %% 4. Using it: edge filters on MNIST digits
# ---------------------------------------------------------------------------------------------------
section("4. Using it: edge filters on MNIST digits")
# A trained network learns its filters; classic image processing wrote them by hand. Sobel-x weighs
# the column to the right of a pixel minus the column to its left (the middle row twice): it responds
# where brightness increases to the right, i.e. at the left edge of a white stroke, and is negative at
# its right edge. Sobel-y is its transpose (top to bottom). sqrt(gx^2 + gy^2) is the edge strength,
# the Laplacian (4 neighbours minus 4 x the centre) lights up thin lines and corners, and a 3x3 box
# blur averages. All five are one conv2d call with F = 5 filters of shape (1, 3, 3).
sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
laplace = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)
bank = np.stack([sobel_x, sobel_x.T, laplace, np.full((3, 3), 1 / 9)])[:, None]  # (4, 1, 3, 3)
names = ["Sobel-x  (d/dx)", "Sobel-y  (d/dy)", "Laplacian", "3x3 box blur"]

# Check the direction convention on an image whose answer we know: a ramp x[h, w] = a * w increases
# to the right by a per pixel, so (cross-correlation, no flip) Sobel-x gives (1 + 2 + 1) * 2a = 8a
# inside the image. A flipped (mathematical) convolution would give -8a.
a = 0.25
ramp = np.broadcast_to(a * np.arange(12.0), (1, 1, 12, 12)).copy()
g, _ = conv2d_forward(ramp, bank[:2], None, padding=1)                   # (1, 2, 12, 12)
inner = g[0, :, 1:-1, 1:-1]
check("Sobel-x of a ramp rising to the right is +8a inside, Sobel-y 0",
      np.allclose(inner[0], 8 * a) and np.allclose(inner[1], 0.0), f"gx = {inner[0].mean():.3f} (8a = {8 * a})")

# One detail first: zero padding pads with 0, but a digit in the models' range [-1, 1] has a background
# of -1, so every filter would see a bright frame around the image (the U-Net sees it too and learns
# around it). For the pictures we filter the ink, (x + 1) / 2 in [0, 1], whose background is 0.
imgs = (digits[:N_DIGITS].astype(np.float64) + 1.0) / 2.0                # (n, 1, 28, 28) ink in [0, 1]
resp, _ = conv2d_forward(imgs, bank, None, padding=1)                    # (n, 4, 28, 28)
mag = np.sqrt(resp[:, 0] ** 2 + resp[:, 1] ** 2)                         # (n, 28, 28) edge strength
blur2, _ = conv2d_forward(imgs, bank[3:], None, stride=2, padding=1)     # (n, 1, 14, 14)
err = relative_error(blur2, resp[:, 3:, ::2, ::2])
check("stride 2 == stride 1 then keep every second pixel", blur2.shape[2:] == (14, 14) and err < 1e-13,
      f"{imgs.shape[2]}x{imgs.shape[3]} -> {blur2.shape[2]}x{blur2.shape[3]}, max relative error {err:.1e}")

panels = [(imgs[:, 0], "digit", "gray"), (resp[:, 0], names[0], "RdBu_r"), (resp[:, 1], names[1], "RdBu_r"),
          (mag, "edge strength sqrt(gx^2+gy^2)", "magma"), (resp[:, 2], names[2], "RdBu_r"),
          (resp[:, 3], names[3], "gray"), (blur2[:, 0], "blur, stride 2 (14x14)", "gray")]
fig, axes = plt.subplots(N_DIGITS, len(panels), figsize=(2.1 * len(panels), 2.2 * N_DIGITS + 0.4), squeeze=False)
for r in range(N_DIGITS):
    for c, (arr, name, cmap) in enumerate(panels):
        lim = np.abs(arr[r]).max()
        kw = dict(vmin=-lim, vmax=lim) if cmap == "RdBu_r" else {}
        axes[r, c].imshow(arr[r], cmap=cmap, **kw)
        axes[r, c].set_xticks([])
        axes[r, c].set_yticks([])
        if r == 0:
            axes[r, c].set_title(name, fontsize=9)
    axes[r, 0].set_ylabel(f"label {labels[r]}")
fig.suptitle("Hand-made 3x3 filters applied with conv2d (red = positive, blue = negative response)")
fig.tight_layout()
fig.savefig(out / "filters.png", dpi=90)
plt.close(fig)
saved(out / "filters.png")

# %% Exercises
# ---------------------------------------------------------------------------------------------------
try_this(__doc__)
finish(started)
