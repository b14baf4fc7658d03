"""Solutions to lesson 03 (the linear layer and gradient checking): the three "Try this" exercises, checked.

Try each exercise in lessons/03_linear_and_gradcheck.py yourself first; then run this file and compare.

Run it:   python lessons/solutions/03_linear_and_gradcheck.py          (--fast: a coarser grid of step sizes)

Figure (in lessons/output/03_linear_and_gradcheck/, with a solution_ prefix):
  solution_error_vs_h_seeds.png   the lesson's error-vs-h V for SEED = 0, 1, 2, 3, float64 and float32
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the lessons folder, for _common

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import FAST, banner, check, finish, output_dir, relative_error, saved, section  # noqa: E402
from tinyddpm.gradcheck import BLOCK_TOLERANCE, OP_TOLERANCE, check_gradients  # noqa: E402
from tinyddpm.ops import linear_backward, linear_forward, silu_backward, silu_forward  # noqa: E402

started = time.perf_counter()
out = output_dir(__file__)
banner("Solutions to lesson 03: the linear layer and gradient checking")

N, D, F = 5, 7, 4                      # the lesson's sizes: rows, input features, output features


def lesson_arrays(seed):
    """The lesson's arrays for a given SEED, drawn in the lesson's order: x, W, b, dy, x3, dy3, then g."""
    rng = np.random.default_rng(seed)
    x, W, b, dy = (rng.standard_normal((N, D)), rng.standard_normal((F, D)), rng.standard_normal(F),
                   rng.standard_normal((N, F)))
    rng.standard_normal((2, 3, D))     # x3 and dy3 of section 2: drawn only to keep the lesson's sequence
    rng.standard_normal((2, 3, F))
    g = rng.standard_normal((N, F))
    return x, W, b, dy, g


def differences(loss, arrays, k, h):
    """L(p + h) - L(p - h) for every entry p of arrays[k], nudged one at a time (the lesson's helper)."""
    target = arrays[k]
    diff = np.empty(target.size)
    for i in range(target.size):
        old = target.flat[i]
        target.flat[i] = old + h
        plus = loss(*arrays)
        target.flat[i] = old - h
        minus = loss(*arrays)
        target.flat[i] = old
        diff[i] = plus - minus
    return diff.reshape(target.shape)


def rel_error(a, n):
    """max over entries of |a - n| / (|a| + |n|), the lesson's per-entry relative error."""
    a, n = np.asarray(a, dtype=np.float64), np.asarray(n, dtype=np.float64)
    return float(np.max(np.abs(a - n) / np.maximum(np.abs(a) + np.abs(n), 1e-300)))


# ---------------------------------------------------------------------------------------------------
section("Exercise 1 (run): SEED = 0, 1, 2, 3")
# The V of section 4 has two branches whose slopes come from the maths, not from the data: the 2-point central
# difference has truncation error L''' h^2 / 6 (slope 2 on log axes) and round-off ~eps |L| / h (slope -1).
# The seed changes L''' and |L|, so it moves the V up, down and sideways a little (the best h and the best error),
# but not its slopes. And float32's eps is 5e8 times float64's whatever the seed: the bottom of a V sits near
# eps^(2/3) times a seed-dependent factor (the worst entry is the one with the smallest gradient), so float32's
# best error stays 10^5 to 10^6 times float64's - far past the 1000x the lesson asks for - for every seed.
hs = 10.0 ** np.arange(-12, 0.25, 1.0 if FAST else 0.5)


def v_curves(seed):
    """(float64 2-point, float64 4-point, float32 2-point) errors of dL/dW against h, for L = sum(silu(x W^T + b) g)."""
    x, W, b, _, g = lesson_arrays(seed)

    def loss(x, W, b):
        return np.sum(silu_forward(linear_forward(x, W, b)[0])[0] * g.astype(x.dtype))

    def analytic(x, W, b):
        y, lin_cache = linear_forward(x, W, b)
        _, silu_cache = silu_forward(y)
        return linear_backward(silu_backward(g.astype(x.dtype), silu_cache), lin_cache)[1]

    curves = []
    for dtype, four in ((np.float64, False), (np.float64, True), (np.float32, False)):
        arrays = [a.astype(dtype) for a in (x, W, b)]
        exact = analytic(*arrays)
        errors = []
        for h in hs:
            h = dtype(h)
            if four:
                n = (8 * differences(loss, arrays, 1, h) - differences(loss, arrays, 1, 2 * h)) / (12 * h)
            else:
                n = differences(loss, arrays, 1, h) / (2 * h)
            errors.append(rel_error(exact, n))
        curves.append(np.array(errors))
    return curves


def slope(errors, lo, hi):
    pick = (hs >= lo * 0.999) & (hs <= hi * 1.001)
    return float(np.polyfit(np.log10(hs[pick]), np.log10(errors[pick]), 1)[0])


fig, ax = plt.subplots(figsize=(8.5, 5.5), layout="constrained")
print(f"  {'SEED':>4} {'best h (f64)':>13} {'best error':>11} {'best h (f32)':>13} {'best error':>11} "
      f"{'slope right':>12} {'slope left':>11} {'4-point':>8}")
for seed in (0, 1, 2, 3):
    two, four, f32 = v_curves(seed)
    s_trunc, s_round, s_four = slope(two, 1e-3, 1e-1), slope(two, 1e-10, 1e-6), slope(four, 1e-2, 1e-1)
    print(f"  {seed:>4} {hs[np.argmin(two)]:>13.0e} {two.min():>11.1e} {hs[np.argmin(f32)]:>13.0e} {f32.min():>11.1e} "
          f"{s_trunc:>12.2f} {s_round:>11.2f} {s_four:>8.2f}")
    check(f"SEED {seed}: slopes ~2 (right) and ~-1 (left), 4-point ~4, as the lesson's limits ask",
          abs(s_trunc - 2) < 0.3 and abs(s_round + 1) < 0.5 and abs(s_four - 4) < 0.5,
          f"{s_trunc:.2f}, {s_round:.2f}, {s_four:.2f}")
    check(f"SEED {seed}: float32's best error is over 1000x float64's, float64's below 1e-7",
          f32.min() > 1000 * two.min() and two.min() < OP_TOLERANCE, f"{f32.min():.1e} vs {two.min():.1e}")
    ax.plot(hs, np.maximum(two, 1e-16), "o-", color=f"C{seed}", markersize=3, label=f"SEED {seed}, float64")
    ax.plot(hs, np.maximum(f32, 1e-16), "^--", color=f"C{seed}", markersize=3, label=f"SEED {seed}, float32")
ax.set(xscale="log", yscale="log", xlabel="finite-difference step h", ylabel="max relative error of dL/dW",
       title="The V for four seeds: the bottom moves a little, the slopes do not", ylim=(1e-16, 3))
ax.grid(True, which="both", alpha=0.25)
ax.legend(fontsize=8, ncol=2, loc="lower left")
path = out / "solution_error_vs_h_seeds.png"
fig.savefig(path, dpi=100)
plt.close(fig)
saved(path)

# ---------------------------------------------------------------------------------------------------
section("Exercise 2 (modify): dW = dy.T @ x / len(x), a mean where a sum belongs")
# Prediction. Every entry of the wrong dW is the right one divided by N = len(x) = 5: a = n / N for analytic a and
# numerical n (the finite differences measure the true gradient). Then, for every entry with n != 0,
#     |a - n| / (|a| + |n|) = (1 - 1/N) / (1 + 1/N) = (N - 1) / (N + 1) = 4/6 = 0.6667,
# the same for every entry, so the check prints 6.7e-01 (and "dW by hand == tinyddpm linear_backward" prints the
# same number, since relative_error's max |a - b| and max(|a| + |b|) both sit at the largest entry).
# Where the 1/N belongs: if the loss itself were a mean over the rows, L = mean_n(...), then dy = dL/dy would
# already carry the 1/N (as mse_loss_backward's does), and every gradient, dx and db too, would have it.
x, W, b, dy, _ = lesson_arrays(0)
predicted = (N - 1) / (N + 1)
_, cache = linear_forward(x, W, b)
dW_wrong = dy.T @ x / len(x)


def loss_linear(x, W, b):
    return float(np.sum(linear_forward(x, W, b)[0] * dy))


numerical = differences(loss_linear, [x.copy(), W.copy(), b.copy()], 1, 1e-5) / 2e-5
per_entry = np.abs(dW_wrong - numerical) / (np.abs(dW_wrong) + np.abs(numerical))
err_lib = relative_error(dW_wrong, linear_backward(dy, cache)[1])
print(f"  predicted (N - 1) / (N + 1) = {predicted:.6f}; measured against finite differences: "
      f"{rel_error(dW_wrong, numerical):.6f}"
      f" (every entry between {per_entry.min():.6f} and {per_entry.max():.6f}); against tinyddpm: {err_lib:.6f}")
check("prediction: the central-difference check prints (N - 1) / (N + 1) = 0.667 for dW",
      abs(per_entry.max() - predicted) < 1e-8 and abs(per_entry.min() - predicted) < 1e-8,
      f"every entry within {max(abs(per_entry.max() - predicted), abs(per_entry.min() - predicted)):.0e} of {predicted:.4f}")
check("... and the comparison with tinyddpm's dW prints the same number", abs(err_lib - predicted) < 1e-12,
      f"{err_lib:.6f}")

# ---------------------------------------------------------------------------------------------------
section("Exercise 3 (create): tanh as an op, then linear -> tanh -> linear as a block")
# tanh in the lesson's style. The forward keeps its output: the derivative is d tanh(z)/dz = 1 - tanh(z)^2,
# a function of y alone, so the backward needs nothing else (recomputing tanh from x would work too).


def tanh_forward(x):
    y = np.tanh(x)
    return y, y                                                     # (y, cache): the cache is y itself


def tanh_backward(dy, cache):
    y = cache
    return dy * (1.0 - y * y)                                       # in the forward pass y = tanh(x)


def tanh_backward_wrong(dy, cache):                                 # a plausible slip: 1 - y instead of 1 - y^2
    return dy * (1.0 - cache)


rng = np.random.default_rng(3)
errors = check_gradients(tanh_forward, tanh_backward, {"x": rng.standard_normal((4, 6)) * 2.0})
check("check_gradients proves tanh_backward (float64, < 1e-7)", errors["x"] < OP_TOLERANCE, f"x {errors['x']:.1e}")
errors = check_gradients(tanh_forward, tanh_backward_wrong, {"x": rng.standard_normal((4, 6)) * 2.0})
check("... and catches the slip dy * (1 - y) (> 1e-4)", errors["x"] > 1e-4, f"x {errors['x']:.1e}")

# The block: h = tanh(x W1^T + b1), y = h W2^T + b2. Its forward keeps the three caches in a list, its backward
# walks them in reverse, each line undoing one forward line.


def mlp_forward(x, w1, b1, w2, b2):
    z, c1 = linear_forward(x, w1, b1)                               # (N, H)
    h, c2 = tanh_forward(z)                                         # (N, H)
    y, c3 = linear_forward(h, w2, b2)                               # (N, F)
    return y, [c1, c2, c3]


def mlp_backward(dy, caches):
    c1, c2, c3 = caches
    dh, dw2, db2 = linear_backward(dy, c3)                          # y = h W2^T + b2
    dz = tanh_backward(dh, c2)                                      # h = tanh(z)
    dx, dw1, db1 = linear_backward(dz, c1)                          # z = x W1^T + b1
    return dx, dw1, db1, dw2, db2


Hid = 8
arrays = {"x": rng.standard_normal((N, D)), "w1": rng.standard_normal((Hid, D)) / np.sqrt(D),
          "b1": rng.standard_normal(Hid), "w2": rng.standard_normal((F, Hid)) / np.sqrt(Hid), "b2": rng.standard_normal(F)}
errors = check_gradients(mlp_forward, mlp_backward, arrays)
check("check_gradients proves the MLP's backward for all five tensors (< 1e-5, a block's limit)",
      max(errors.values()) < BLOCK_TOLERANCE, ", ".join(f"d{k} {v:.1e}" for k, v in errors.items()))
# The same block by hand, all at once, as a cross-check of the chain: dz = (dy W2) * (1 - h^2), dx = dz W1.
y, caches = mlp_forward(*arrays.values())
g = rng.standard_normal(y.shape)
h = np.tanh(arrays["x"] @ arrays["w1"].T + arrays["b1"])
dx_direct = ((g @ arrays["w2"]) * (1 - h * h)) @ arrays["w1"]
err = relative_error(dx_direct, mlp_backward(g, caches)[0])
check("dx of the block == ((dy W2) * (1 - h^2)) W1 written in one line", err < 1e-14, f"max relative error {err:.1e}")

finish(started)
