"""Solutions to lesson 04 (conv2d as im2col + one matrix multiply): the three "Try this" exercises, checked.

Try each exercise in lessons/04_conv2d.py yourself first; then run this file and compare.

Run it:   python lessons/solutions/04_conv2d.py          (--fast: timings for 1 and 2 images instead of 1 to 8)

Figures (in lessons/output/04_conv2d/, with a solution_ prefix):
  solution_timing.png    loop and im2col time against the number of images (outputs), log-log
  solution_flipped.png   Sobel-x, Sobel-y, Laplacian, blur of one digit: the lesson's bank and the flipped one
  solution_gaussian.png  a digit, its 5x5 Gaussian blur at stride 1, at stride 2, and the stride-1 result subsampled
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the lessons folder, for _common

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import (FAST, banner, check, finish, mnist_digits, output_dir, relative_error, saved,  # noqa: E402
                     section, timing_check)
from tinyddpm.ops import conv2d_forward  # noqa: E402

started = time.perf_counter()
out = output_dir(__file__)
banner("Solutions to lesson 04: conv2d")
rng = np.random.default_rng(0)
digits, labels = mnist_digits(8, seed=4)                       # the lesson's digits: (8, 1, 28, 28) in [-1, 1]


def out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def conv_naive(x, w, b, s, p):
    """The lesson's definition: one window, one dot product per output number."""
    N, C, H, W = x.shape
    F, _, k, _ = w.shape
    Ho, Wo = out_size(H, k, s, p), out_size(W, k, s, p)
    xpad = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    y = np.zeros((N, F, Ho, Wo), dtype=x.dtype)
    for n in range(N):
        for f in range(F):
            for u in range(Ho):
                for v in range(Wo):
                    y[n, f, u, v] = b[f] + np.sum(w[f] * xpad[n, :, s * u:s * u + k, s * v:s * v + k])
    return y


def conv_im2col(x, w, b, s, p):
    """The lesson's im2col + one GEMM."""
    N, C, H, W = x.shape
    F, _, k, _ = w.shape
    Ho, Wo = out_size(H, k, s, p), out_size(W, k, s, p)
    xpad = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    rows = np.arange(k)[:, None] + s * np.arange(Ho)[None, :]
    cols_idx = np.arange(k)[:, None] + s * np.arange(Wo)[None, :]
    patches = xpad[:, :, rows[:, None, :, None], cols_idx[None, :, None, :]]            # (N, C, k, k, Ho, Wo)
    cols = patches.transpose(1, 2, 3, 0, 4, 5).reshape(C * k * k, N * Ho * Wo)          # (K, L)
    return (w.reshape(F, -1) @ cols + b[:, None]).reshape(F, N, Ho, Wo).transpose(1, 0, 2, 3)


def best_time(fn, repeats=3):
    """The fastest of a few runs: other work on the machine only ever adds time, so the minimum is the cleanest."""
    best = np.inf
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - tic)
    return best


# ---------------------------------------------------------------------------------------------------
section("Exercise 1 (run): loop against im2col, for more and more images")
# The loop does a fixed amount of Python work per output number (a slice, a multiply, a sum: a few microseconds),
# so its time is proportional to the number of outputs N * F * Ho * Wo: twice the images, twice the time.
# im2col + GEMM also grows with N, but its cost per output is a few nanoseconds, so the gap (~100-1000x) stays.
# In the lesson, --fast times 1 image and the full run 4; here both modes time a series of batch sizes.
counts = (1, 2) if FAST else (1, 2, 4, 8)
wt, bt = rng.standard_normal((8, 1, 3, 3)), np.zeros(8)
times = {}
for n in counts:
    xt = digits[:n].astype(np.float64)
    err = relative_error(conv_naive(xt, wt, bt, 1, 1), conv_im2col(xt, wt, bt, 1, 1))
    times[n] = (best_time(lambda: conv_naive(xt, wt, bt, 1, 1)), best_time(lambda: conv_im2col(xt, wt, bt, 1, 1)))
    outputs = n * 8 * 28 * 28
    print(f"  {n} image(s), {outputs:6d} outputs: loop {times[n][0] * 1e3:7.1f} ms ({times[n][0] / outputs * 1e6:.2f} us "
          f"per output), im2col {times[n][1] * 1e3:6.2f} ms ({times[n][0] / times[n][1]:.0f}x faster); "
          f"same result to {err:.0e}")
n_max = counts[-1]
growth = times[n_max][0] / times[1][0]
timing_check(f"the loop's time grows with the number of outputs: {n_max}x the images, {n_max}x the time (within 1.6x)",
             n_max / 1.6 < growth < n_max * 1.6, f"measured {growth:.2f}x")
speedup = min(t_loop / t_fast for t_loop, t_fast in times.values())
timing_check("im2col + GEMM is over 20x faster than the loop at every size", speedup > 20,
             f"smallest speed-up {speedup:.0f}x")
fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
ax.loglog(counts, [times[n][0] * 1e3 for n in counts], "o-", label="loop (the definition)")
ax.loglog(counts, [times[n][1] * 1e3 for n in counts], "s-", label="im2col + one GEMM")
ax.loglog(counts, [times[1][0] * 1e3 * n for n in counts], "k:", label="proportional to the outputs")
ax.set(xlabel="images (28 x 28, 8 filters)", ylabel="time (ms)", title="Convolution time against batch size")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
path = out / "solution_timing.png"
fig.savefig(path, dpi=100)
plt.close(fig)
saved(path)

# ---------------------------------------------------------------------------------------------------
section("Exercise 2 (modify): the flipped bank, bank[:, :, ::-1, ::-1]")
# Prediction. Flipping a kernel in both axes is a 180-degree rotation. Sobel-x is antisymmetric under it:
# [[-1 0 1], [-2 0 2], [-1 0 1]] rotated is [[1 0 -1], [2 0 -2], [1 0 -1]] = -Sobel-x, and likewise Sobel-y. So the
# flipped bank's gradients are exactly the negatives: the ramp gives gx = -8a (the lesson's check fails) and red and
# blue swap in the two Sobel panels. The Laplacian [[0 1 0], [1 -4 1], [0 1 0]] and the box blur are symmetric
# under the rotation: flipping changes nothing, so their panels stay identical. In general a convolution (flipped)
# and a cross-correlation (not flipped) agree exactly for point-symmetric kernels and only there; a learned filter
# is rarely symmetric, but a network learns the flipped filter just as easily, so deep learning can ignore the flip.
sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
laplace = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)
bank = np.stack([sobel_x, sobel_x.T, laplace, np.full((3, 3), 1 / 9)])[:, None]     # (4, 1, 3, 3), as the lesson
flipped = bank[:, :, ::-1, ::-1]
a = 0.25
ramp = np.broadcast_to(a * np.arange(12.0), (1, 1, 12, 12)).copy()
g, _ = conv2d_forward(ramp, np.ascontiguousarray(flipped[:2]), None, padding=1)
inner = g[0, :, 1:-1, 1:-1]
check("prediction: the flipped Sobel-x gives gx = -8a on the ramp (the lesson's check would fail), Sobel-y still 0",
      np.allclose(inner[0], -8 * a) and np.allclose(inner[1], 0.0), f"gx = {inner[0].mean():.3f} (-8a = {-8 * a})")
imgs = (digits[:2].astype(np.float64) + 1.0) / 2.0
resp, _ = conv2d_forward(imgs, bank, None, padding=1)                # (2, 4, 28, 28)
resp_f, _ = conv2d_forward(imgs, np.ascontiguousarray(flipped), None, padding=1)
sobel_sum = float(np.max(np.abs(resp_f[:, :2] + resp[:, :2])))
check("prediction: both Sobel responses are exactly negated (red and blue swap)", sobel_sum == 0.0,
      f"max |flipped + original| = {sobel_sum:.1e}")
same = float(np.max(np.abs(resp_f[:, 2:] - resp[:, 2:])))
symmetric = all(np.array_equal(k[0], k[0, ::-1, ::-1]) for k in bank[2:])
check("prediction: the Laplacian and blur panels do not change at all (their kernels equal their own flip)",
      same == 0.0 and symmetric, f"max |difference| {same:.1e}")
fig, axes = plt.subplots(2, 5, figsize=(11, 4.6), layout="constrained")
names = ["Sobel-x", "Sobel-y", "Laplacian", "3x3 box blur"]
for row, (r, what) in enumerate(((resp, "the lesson's bank"), (resp_f, "flipped bank"))):
    axes[row, 0].imshow(imgs[0, 0], cmap="gray")
    axes[row, 0].set_ylabel(what)
    for c in range(4):
        lim = np.abs(r[0, c]).max()
        axes[row, c + 1].imshow(r[0, c], cmap="RdBu_r" if c < 3 else "gray", **({"vmin": -lim, "vmax": lim} if c < 3 else {}))
        axes[row, c + 1].set_title(names[c], fontsize=9)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("Flipping the kernels: Sobel responses change sign, the symmetric kernels do not notice")
path = out / "solution_flipped.png"
fig.savefig(path, dpi=90)
plt.close(fig)
saved(path)

# ---------------------------------------------------------------------------------------------------
section("Exercise 3 (create): a 5x5 Gaussian blur at stride 2, padding 2")
# Output size (28 + 2*2 - 5) // 2 + 1 = 14, and output (u, v) of the strided conv reads the window at (2u, 2v):
# exactly the window that output (2u, 2v) of the stride-1 conv reads. So stride s is the stride-1 result
# subsampled at [::s, ::s] - with s^2 times less work, which is why a U-Net downsamples with a strided conv.
di = np.arange(-2, 3)
kern = np.exp(-(di[:, None] ** 2 + di[None, :] ** 2) / 2.0)
kern /= kern.sum()                                                  # (5, 5), sums to 1: a weighted average
w5 = kern[None, None]                                               # (1, 1, 5, 5)
x = (digits[:4].astype(np.float64) + 1.0) / 2.0                     # ink in [0, 1]
y2, _ = conv2d_forward(x, w5, None, stride=2, padding=2)
y1, _ = conv2d_forward(x, w5, None, stride=1, padding=2)
err = relative_error(y2, y1[:, :, ::2, ::2])
check("stride 2, padding 2 == stride 1, padding 2 subsampled at [::2, ::2]", y2.shape == (4, 1, 14, 14) and err < 1e-13,
      f"shape {y2.shape}, max relative error {err:.1e}")
err = relative_error(y2, conv_naive(x, w5, np.zeros(1), 2, 2))
check("... and == the lesson's loop (the definition) at stride 2", err < 1e-13, f"max relative error {err:.1e}")
flat = np.ones((1, 1, 12, 12))
yc, _ = conv2d_forward(flat, w5, None, stride=2, padding=2)
inside = float(np.max(np.abs(yc[0, 0, 1:-1, 1:-1] - 1.0)))
check("the kernel sums to 1: a constant image stays constant away from the zero padding", inside < 1e-14,
      f"max |y - 1| inside {inside:.1e}; at the corner {yc[0, 0, 0, 0]:.3f} (the zero padding pulls it down)")
fig, axes = plt.subplots(1, 4, figsize=(10, 2.9), layout="constrained")
for ax, img, title in zip(axes, (x[0, 0], y1[0, 0], y2[0, 0], y1[0, 0, ::2, ::2]),
                          ("digit (28x28)", "Gaussian, stride 1", "Gaussian, stride 2 (14x14)", "stride 1, [::2, ::2]")):
    ax.imshow(img, cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
path = out / "solution_gaussian.png"
fig.savefig(path, dpi=90)
plt.close(fig)
saved(path)

finish(started)
