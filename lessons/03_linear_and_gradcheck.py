"""Lesson 03: the linear layer, its backward by hand, and how to prove a backward right.

tinyddpm has no autodiff: every layer comes with a backward written by hand, and every backward is
proven right by a gradient check. This lesson does both for the simplest layer, y = x W^T + b, which the
U-Net uses for its time embedding and inside attention. You will:

  * derive the backward dx = dy W, dW = dy^T x, db = sum_n dy with the chain rule, in plain NumPy, and
    check it against tinyddpm.ops.linear_forward / linear_backward;
  * check it the way every op in tinyddpm is checked: central finite differences, compared by relative
    error |a - n| / (|a| + |n|), where about 1e-7 or less means right and 1e-4 or more means wrong;
  * see why checks run in float64 and how the step h matters: too large and the difference quotient is
    not the derivative (truncation), too small and the difference is drowned in round-off;
  * break the backward on purpose (scale dW by 1.01, forget a transpose, average instead of sum) and watch
    tinyddpm.gradcheck.check_gradients catch each bug and point at the guilty tensor;
  * use the checked layer: fit a linear map by gradient descent and land on the least-squares answer.

Run it:   python lessons/03_linear_and_gradcheck.py     (--fast: a coarser grid of step sizes)

Figures (in lessons/output/03_linear_and_gradcheck/):
  error_vs_h.png   relative error of the finite-difference check against the step h, on log axes:
                   float64 and float32, two stencils, and the linear layer alone
  fit.png          the loss of gradient descent on a linear layer, down to the least-squares minimum

Try this:
  1. run:    change SEED at the top to 1, 2, 3 and rerun. The best h and the best error move a little; the
             slopes of the two branches of the V (about 2 and -1) and the ranking float64 << float32 do not.
  2. modify: in section 2, change dW = dy.T @ x to dW = dy.T @ x / len(x) (a mean where a sum belongs, a
             common slip). Predict the relative error the check prints before you run it (hint: a = n / N);
             that gradient check fails, as it should.
  3. create: write tanh_forward(x) -> (y, cache) and tanh_backward(dy, cache) = dy * (1 - y^2) in the same
             style, prove them with check_gradients (< 1e-7), then chain linear -> tanh -> linear into a tiny
             MLP with one forward and one backward and check the whole block (< 1e-5).

Next: lessons/04_conv2d.py - the convolution, by loops and by im2col + one GEMM, and its backward.
"""
# %%
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import FAST, banner, check, finish, output_dir, relative_error, saved, section, try_this  # noqa: E402
from tinyddpm.gradcheck import OP_TOLERANCE, check_gradients  # noqa: E402
from tinyddpm.ops import (linear_backward, linear_forward, mse_loss_backward, mse_loss_forward,  # noqa: E402
                          silu_backward, silu_forward)

# %%
started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 03: the linear layer and gradient checking")

SEED = 0
rng = np.random.default_rng(SEED)
N, D, F = 5, 7, 4                      # rows (a batch), input features, output features
x = rng.standard_normal((N, D))        # (N, D) float64: checks run in float64 (section 4 shows why)
W = rng.standard_normal((F, D))        # (F, D) PyTorch's (out, in) layout
b = rng.standard_normal(F)             # (F,)
dy = rng.standard_normal((N, F))       # (N, F) an upstream gradient, dL/dy, from "the rest of the network"

# %% 1. Forward: y = x W^T + b
# ---------------------------------------------------------------------------------------------------
section("1. Forward: y = x W^T + b")
# Each output feature f of row n is a weighted sum of that row's inputs plus a bias:
#
#     y_nf = sum_d x_nd W_fd + b_f          i.e.  y = x @ W.T + b,   (N, D) @ (D, F) + (F,) -> (N, F)
y = x @ W.T + b                                                     # (N, F)
y_lib, cache = linear_forward(x, W, b)
err = relative_error(y, y_lib)
check("x @ W.T + b == tinyddpm linear_forward", err < 1e-15, f"max relative error {err:.1e}")

# %% 2. Backward by hand: dx = dy W, dW = dy^T x, db = sum over rows of dy
# ---------------------------------------------------------------------------------------------------
section("2. Backward by hand: dx = dy W, dW = dy^T x, db = sum over rows of dy")
# Backprop hands each layer dy = dL/dy, the gradient of the final loss L with respect to the layer's
# output, and asks for the gradients with respect to its inputs. The chain rule sums over every output
# an input touches:
#
#     dL/dx_nd = sum_f dL/dy_nf * dy_nf/dx_nd = sum_f dy_nf W_fd        ->  dx = dy @ W       (N, D)
#     dL/dW_fd = sum_n dL/dy_nf * dy_nf/dW_fd = sum_n dy_nf x_nd        ->  dW = dy.T @ x     (F, D)
#     dL/db_f  = sum_n dL/dy_nf * 1                                     ->  db = dy.sum(0)    (F,)
#
# W and b are shared by all N rows, so their gradients sum over the rows. A gradient always has the
# shape of what it is the gradient of, which is a handy guard: the only product of dy (N, F) and
# x (N, D) that gives W's shape (F, D) is dy.T @ x.
dx = dy @ W                                                         # (N, F) @ (F, D) -> (N, D)
dW = dy.T @ x                                                       # (F, N) @ (N, D) -> (F, D)
db = dy.sum(axis=0)                                                 # (F,)
dx_lib, dW_lib, db_lib = linear_backward(dy, cache)
for name, mine, theirs in (("dx", dx, dx_lib), ("dW", dW, dW_lib), ("db", db, db_lib)):
    err = relative_error(mine, theirs)
    check(f"{name} by hand == tinyddpm linear_backward", err < 1e-15, f"max relative error {err:.1e}")
# Attention applies the same layer to every pixel: x has extra leading axes (B, S, D). Those axes are
# just more rows: flatten them into N, and W's and b's gradients sum over all of them.
x3 = rng.standard_normal((2, 3, D))                                 # (B, S, D)
dy3 = rng.standard_normal((2, 3, F))                                # (B, S, F)
_, cache3 = linear_forward(x3, W, b)
dx3_lib, dW3_lib, db3_lib = linear_backward(dy3, cache3)
dW3 = dy3.reshape(-1, F).T @ x3.reshape(-1, D)                      # (F, B*S) @ (B*S, D) -> (F, D)
err = max(relative_error(dW3, dW3_lib), relative_error(dy3 @ W, dx3_lib),
          relative_error(dy3.sum(axis=(0, 1)), db3_lib))
check("with leading axes (B, S, D): dW sums over every row", err < 1e-15, f"max relative error {err:.1e}")

# %% 3. Gradient checking: central differences and relative error
# ---------------------------------------------------------------------------------------------------
section("3. Gradient checking: central differences and relative error")
# How do we know the formulas above are right, rather than right-looking? Compare them with the
# definition of a derivative. With the scalar L = sum(y * dy), whose gradient with respect to y is
# exactly dy, the backward must return dL/dx, dL/dW, dL/db. Nudge one entry by +h and by -h:
#
#     dL/dp  ~  ( L(p + h) - L(p - h) ) / (2 h)                 (central difference)
#
# Relative error: the same absolute error 1e-6 is excellent for a gradient of size 100 and useless for
# one of size 1e-6, so compare per entry
#
#     rel = |a - n| / (|a| + |n|)          (a analytic, n numerical; we report the worst entry)
#
# In float64 a right backward gives about 1e-7 or (much) less; a wrong one gives 1e-4 or more (a 1%
# error gives 0.005; a missing factor gives O(1)). Between the two, suspect the check before the code:
# the step h, the dtype (section 4), or a kink such as |x| right at the nudged point. One more trap:
# round-off is absolute, so an entry whose true gradient happens to be tiny is known to fewer digits;
# tinyddpm's checker therefore measures such entries against 1e-4 of the tensor's largest gradient.


def loss_linear(x, W, b):
    return float(np.sum(linear_forward(x, W, b)[0] * dy))          # L = sum(y * dy)


def differences(loss, arrays, k, h):
    """L(p + h) - L(p - h) for every entry p of arrays[k], nudged one at a time."""
    target = arrays[k]
    diff = np.empty(target.size)
    for i in range(target.size):                                    # a few dozen entries: a loop is fine
        old = target.flat[i]
        target.flat[i] = old + h
        plus = loss(*arrays)
        target.flat[i] = old - h
        minus = loss(*arrays)
        target.flat[i] = old                                        # restore exactly
        diff[i] = plus - minus
    return diff.reshape(target.shape)


def numerical_gradient(loss, arrays, k, h):
    """Central difference (L(p + h) - L(p - h)) / 2h with respect to every entry of arrays[k]."""
    return differences(loss, arrays, k, h) / (2 * h)


def rel_error(a, n):
    """max over entries of |a - n| / (|a| + |n|)."""
    a, n = np.asarray(a, dtype=np.float64), np.asarray(n, dtype=np.float64)
    return float(np.max(np.abs(a - n) / np.maximum(np.abs(a) + np.abs(n), 1e-300)))


for k, (name, analytic) in enumerate((("dx", dx), ("dW", dW), ("db", db))):
    n = numerical_gradient(loss_linear, [x, W, b], k, h=1e-5)
    err = rel_error(analytic, n)
    check(f"{name} == central difference (h = 1e-5, float64)", err < OP_TOLERANCE,
          f"max relative error {err:.1e} (limit {OP_TOLERANCE:.0e})")

# %% 4. The step h and the precision: truncation against round-off
# ---------------------------------------------------------------------------------------------------
section("4. The step h and the precision: truncation against round-off")
# L is linear in each of x, W, b, so for this op the difference quotient is exact up to round-off. Most
# ops are curved, so for this section put a SiLU after the layer (the U-Net's time-embedding MLP does
# exactly that): L(W) = sum( silu(x W^T + b) * g ). Taylor's theorem gives two errors:
#
#   truncation:  (L(W + h) - L(W - h)) / 2h = L'(W) + L'''(W) h^2 / 6 + ...     error ~ h^2, large h
#   round-off:   each L carries an error of about eps |L| (eps = 2.2e-16 in float64, 1.2e-7 in
#                float32), and the division by 2h magnifies it:                  error ~ eps / h, small h
#
# On log axes that is a V: slope 2 on the right, slope -1 on the left, bottom near h ~ eps^(1/3), where
# the error is about eps^(2/3): ~1e-10 in float64, but ~1e-4 to 1e-3 in float32 - as large as a real
# bug. That is why gradient checks run in float64. tinyddpm's check_gradients uses the 4-point stencil
#
#     ( 8 (L(W + h) - L(W - h)) - (L(W + 2h) - L(W - 2h)) ) / (12 h)       truncation ~ h^4
#
# whose V has slope 4 on the right and its bottom lower and further right, so h = 1e-4 is safe.
g = rng.standard_normal((N, F))                                     # upstream gradient of the SiLU's output


def loss_silu(x, W, b):
    z = silu_forward(linear_forward(x, W, b)[0])[0]
    return np.sum(z * g.astype(x.dtype))                            # stays in x's dtype


def silu_layer_dW(x, W, b):
    """Analytic dL/dW of L = sum(silu(x W^T + b) * g): backward through SiLU, then through linear."""
    y, linear_cache = linear_forward(x, W, b)
    _, silu_cache = silu_forward(y)
    dy_silu = silu_backward(g.astype(x.dtype), silu_cache)
    return linear_backward(dy_silu, linear_cache)[1]


def difference_errors(loss, analytic, arrays, hs, four_point=False):
    """Relative error of the finite-difference dL/dW (arrays[1]) against the analytic one, for each h."""
    errors = []
    for h in hs:
        h = arrays[1].dtype.type(h)                                 # h in the arrays' precision
        if four_point:
            n = (8 * differences(loss, arrays, 1, h) - differences(loss, arrays, 1, 2 * h)) / (12 * h)
        else:
            n = numerical_gradient(loss, arrays, 1, h)
        errors.append(rel_error(analytic, n))
    return np.array(errors)


hs = 10.0 ** np.arange(-12, 0.25, 1.0 if FAST else 0.5)             # 1e-12 .. 1
curves = {}
x32, W32, b32 = x.astype(np.float32), W.astype(np.float32), b.astype(np.float32)
curves["float64, central (2-point)"] = difference_errors(loss_silu, silu_layer_dW(x, W, b), [x, W, b], hs)
curves["float64, 4-point (check_gradients)"] = difference_errors(loss_silu, silu_layer_dW(x, W, b), [x, W, b], hs,
                                                                 four_point=True)
curves["float32, central (2-point)"] = difference_errors(loss_silu, silu_layer_dW(x32, W32, b32), [x32, W32, b32], hs)
curves["linear alone, float64, 2-point"] = difference_errors(loss_linear, dW, [x, W, b], hs)

print(f"  {'':<36}{'best h':>8}{'best error':>12}")
for name, errors in curves.items():
    print(f"  {name:<36}{hs[np.argmin(errors)]:>8.0e}{errors.min():>12.1e}")


def slope(errors, lo, hi):
    """Slope of log10(error) against log10(h) fitted over lo <= h <= hi."""
    pick = (hs >= lo * 0.999) & (hs <= hi * 1.001)
    return float(np.polyfit(np.log10(hs[pick]), np.log10(errors[pick]), 1)[0])


two, four, f32 = (curves["float64, central (2-point)"], curves["float64, 4-point (check_gradients)"],
                  curves["float32, central (2-point)"])
s_trunc, s_round, s_four = slope(two, 1e-3, 1e-1), slope(two, 1e-10, 1e-6), slope(four, 1e-2, 1e-1)
check("truncation: the 2-point error grows like h^2 for large h", abs(s_trunc - 2) < 0.3,
      f"fitted slope {s_trunc:.2f} over h = 1e-3 .. 1e-1")
check("truncation: the 4-point error grows like h^4", abs(s_four - 4) < 0.5, f"fitted slope {s_four:.2f} over h = 1e-2 .. 1e-1")
check("round-off: the 2-point error grows like 1/h for small h", abs(s_round + 1) < 0.5,
      f"fitted slope {s_round:.2f} over h = 1e-10 .. 1e-6")
check("float64 at its best h proves the backward right (< 1e-7)", two.min() < OP_TOLERANCE,
      f"best {two.min():.1e} at h = {hs[np.argmin(two)]:.0e}")
check("float32 at its best h is 1000x worse than float64", f32.min() > 1000 * two.min(),
      f"float32 best {f32.min():.1e} at h = {hs[np.argmin(f32)]:.0e}: "
      f"{'above' if f32.min() > 1e-4 else 'near'} the 1e-4 line where bugs live")

fig, ax = plt.subplots(figsize=(8.5, 5.5), layout="constrained")
styles = {"float64, central (2-point)": ("C0", "o-"), "float64, 4-point (check_gradients)": ("C2", "s-"),
          "float32, central (2-point)": ("C3", "^-"), "linear alone, float64, 2-point": ("gray", "x:")}
for name, errors in curves.items():
    colour, style = styles[name]
    ax.plot(hs, np.maximum(errors, 1e-16), style, color=colour, label=name, markersize=4)
ax.axhspan(1e-4, 3, color="C3", alpha=0.08, label="1e-4 and above: a bug (or a bad check)")
ax.axhline(1e-7, color="k", linestyle="--", linewidth=1, label="1e-7: a right op in float64 is below")
ax.set(xscale="log", yscale="log", xlabel="finite-difference step h",
       ylabel="max relative error |a - n| / (|a| + |n|) over entries of dW",
       title="Checking dL/dW of silu(x W^T + b): truncation (right branch) vs round-off (left branch)",
       ylim=(1e-16, 3))
ax.grid(True, which="both", alpha=0.25)
ax.legend(loc="lower left", fontsize=9)
path = out / "error_vs_h.png"
fig.savefig(path, dpi=100)
plt.close(fig)
saved(path)

# %% 5. Break the backward on purpose: the check must catch it
# ---------------------------------------------------------------------------------------------------
section("5. Break the backward on purpose: the check must catch it")
# A check that never fails proves nothing. tinyddpm.gradcheck.check_gradients(forward, backward, arrays)
# nudges entries of every array (4-point stencil, h = 1e-4, a random upstream gradient) and returns the
# worst relative error per array. Feed it three wrong backwards; it must flag the guilty tensor (above
# 1e-4) and leave the others clean (below 1e-7), which tells you where to look.
Ds = Fs = 6                                                         # a square W, so that a transpose keeps the shape
arrays = {"x": rng.standard_normal((N, Ds)), "w": rng.standard_normal((Fs, Ds)), "b": rng.standard_normal(Fs)}


def backward_scaled(dy, cache):                                     # dW off by 1%
    dx, dw, db = linear_backward(dy, cache)
    return dx, 1.01 * dw, db


def backward_transposed(dy, cache):                                 # x.T @ dy is (D, F): W's shape only when D = F
    return dy @ cache.w, cache.x.T @ dy, dy.sum(axis=0)


def backward_mean(dy, cache):                                       # db averaged over rows instead of summed
    return dy @ cache.w, dy.T @ cache.x, dy.mean(axis=0)


for bug, backward, guilty in (("dW scaled by 1.01", backward_scaled, "w"),
                              ("dW = x^T dy (forgot a transpose)", backward_transposed, "w"),
                              ("db = mean of dy instead of sum", backward_mean, "b")):
    errors = check_gradients(linear_forward, backward, arrays, seed=SEED)
    clean = max(e for name, e in errors.items() if name != guilty)
    check(f"check_gradients catches '{bug}' in d{guilty} only", errors[guilty] > 1e-4 and clean < OP_TOLERANCE,
          f"error of d{guilty} {errors[guilty]:.1e}, of the others {clean:.1e}")
# With a non-square W the forgotten transpose has the wrong shape, and the checker refuses at once.
wide = {"x": rng.standard_normal((N, D)), "w": rng.standard_normal((F, D)), "b": rng.standard_normal(F)}
try:
    check_gradients(linear_forward, backward_transposed, wide, seed=SEED)
    message = ""
except ValueError as error:
    message = str(error)
check("when D != F the forgotten transpose is a shape error", "shape" in message, message)

# %% 6. tinyddpm's linear through check_gradients
# ---------------------------------------------------------------------------------------------------
section("6. tinyddpm's linear through check_gradients")
# The real op, as `python -m tinyddpm.gradcheck --op linear` and the test suite check it: every input
# and parameter, float64, limit 1e-7. Also with leading axes and without a bias.
cases = {
    "x (5, 7), W (4, 7), b (4,)": {"x": x.copy(), "w": W.copy(), "b": b.copy()},
    "x (2, 3, 7) with leading axes": {"x": x3.copy(), "w": W.copy(), "b": b.copy()},
}
for label, arrs in cases.items():
    errors = check_gradients(linear_forward, linear_backward, arrs, seed=SEED)
    worst = max(errors.values())
    check(f"linear, {label}", worst < OP_TOLERANCE,
          ", ".join(f"d{k} {v:.1e}" for k, v in errors.items()) + f" (limit {OP_TOLERANCE:.0e})")
errors = check_gradients(lambda x, w: linear_forward(x, w), lambda dy, c: linear_backward(dy, c)[:2],
                         {"x": x.copy(), "w": W.copy()}, seed=SEED)
check("linear without a bias", max(errors.values()) < OP_TOLERANCE,
      ", ".join(f"d{k} {v:.1e}" for k, v in errors.items()))

# %% 7. Use it: fit a linear map by gradient descent
# ---------------------------------------------------------------------------------------------------
section("7. Use it: fit a linear map by gradient descent")
# With a proven backward we can train. Data from a hidden linear map plus a little noise; the loss is the
# mean squared error L = mean((x W^T + b - y)^2) (tinyddpm.ops.mse_loss, the loss of the diffusion model
# too). Gradient descent: W <- W - lr dL/dW, where dL/dW comes from mse_loss_backward then linear_backward.
# For this loss the best W and b have a closed form, least squares, which the descent must reach.
n_data, lr = 256, 0.2
steps = 300
data_rng = np.random.default_rng(SEED + 1)
x_data = data_rng.standard_normal((n_data, D))                      # (n, D)
W_true, b_true = data_rng.standard_normal((F, D)), data_rng.standard_normal(F)
y_data = x_data @ W_true.T + b_true + 0.01 * data_rng.standard_normal((n_data, F))   # (n, F)

W_fit, b_fit = np.zeros((F, D)), np.zeros(F)
losses = []
for step in range(steps):
    pred, lin_cache = linear_forward(x_data, W_fit, b_fit)          # forward
    loss, loss_cache = mse_loss_forward(pred, y_data)
    dpred, _ = mse_loss_backward(1.0, loss_cache)                   # backward: dL/dpred, then the layer
    _, dW_fit, db_fit = linear_backward(dpred, lin_cache)
    W_fit -= lr * dW_fit                                            # update
    b_fit -= lr * db_fit
    losses.append(float(loss))

# Least squares: append a column of ones to x so that the bias is one more weight, and solve.
x_ones = np.concatenate([x_data, np.ones((n_data, 1))], axis=1)     # (n, D + 1)
solution = np.linalg.lstsq(x_ones, y_data, rcond=None)[0]           # (D + 1, F)
W_ls, b_ls = solution[:D].T, solution[D]
err = max(relative_error(W_fit, W_ls), relative_error(b_fit, b_ls))
check(f"{steps} steps of gradient descent reach the least-squares W and b", err < 1e-6, f"max relative error {err:.1e}")
best = float(np.mean((x_data @ W_ls.T + b_ls - y_data) ** 2))
print(f"  loss {losses[0]:.3f} at step 0, {losses[-1]:.3e} at step {steps - 1}; least-squares minimum {best:.3e}"
      f" (the noise variance 1e-4); W off the hidden map by {relative_error(W_fit, W_true):.1e}")

fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
ax.plot(np.arange(steps), losses, linewidth=2, label="gradient descent, lr = 0.2")
ax.axhline(best, color="k", linestyle="--", linewidth=1, label="least-squares minimum")
ax.set(yscale="log", xlabel="step", ylabel="mean squared error",
       title="Training a linear layer with its hand-written backward")
ax.grid(True, which="both", alpha=0.25)
ax.legend()
path = out / "fit.png"
fig.savefig(path, dpi=100)
plt.close(fig)
saved(path)

# %% Exercises
# ---------------------------------------------------------------------------------------------------
try_this(__doc__)
finish(started)
