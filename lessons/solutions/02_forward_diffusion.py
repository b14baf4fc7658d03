"""Solutions to lesson 02 (the forward process): the three "Try this" exercises, worked and checked.

Try each exercise in lessons/02_forward_diffusion.py yourself first; then run this file and compare.

Run it:   python lessons/solutions/02_forward_diffusion.py          (--fast: every 8th pixel instead of all 784)

Figures (in lessons/output/02_forward_diffusion/, with a solution_ prefix):
  solution_chains_50_vs_1000.png   the mean of one pixel across 50 and across 1000 chains, against the closed form
  solution_forgotten_sqrt.png      the variance of the chains when the step adds beta eps instead of sqrt(beta) eps
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
from tinyddpm.diffusion import (make_schedule, q_sample, training_target, v_from_eps, x0_from_eps,  # noqa: E402
                                x0_from_v)

started = time.perf_counter()
out = output_dir(__file__)
banner("Solutions to lesson 02: the forward process")

T = 1000
schedule = make_schedule("linear", T)
betas, abar = schedule.betas, schedule.alpha_bar
images, labels = mnist_digits(8, seed=1)                 # the lesson's digit: the first of these
x0 = images[0].astype(np.float64)                        # (1, 28, 28)

# ---------------------------------------------------------------------------------------------------
# One run of the step-by-step chains serves exercises 1 and 2: M = 1000 chains of the right process, whose first
# 50 are 50 independent chains too (what --fast changes in the lesson's section 3), and next to them, with the same
# noise, 1000 chains of the process with the forgotten square root (exercise 2). Fast mode follows every 8th
# pixel: the pixels do not interact, so fewer of them only means fewer comparisons.
M_BIG, M_SMALL = 1000, 50
pixels = np.arange(0, x0.size, 8 if FAST else 1)                   # (P,) the pixels followed
P = len(pixels)
start = x0.reshape(-1)[pixels].astype(np.float32)                  # (P,)
chains = np.repeat(start[None], M_BIG, axis=0)                     # (M, P) x_t = sqrt(1 - b) x + sqrt(b) eps
forgot = chains.copy()                                             # (M, P) x_t = sqrt(1 - b) x + b eps
record_t = [0, 10, 50, 100, 200, 300, 500, 700, T - 1]
stats = {}
trace_big, trace_small = np.empty(T), np.empty(T)                  # the mean of one stroke pixel at every t
var_forgot = np.empty(T)
stroke = int(np.argmax(start))
rng = np.random.default_rng(2)
tic = time.perf_counter()
for t in range(T):
    noise = rng.standard_normal((M_BIG, P), dtype=np.float32)
    shrink = np.float32(np.sqrt(1.0 - betas[t]))
    chains *= shrink
    chains += np.float32(np.sqrt(betas[t])) * noise
    forgot *= shrink
    forgot += np.float32(betas[t]) * noise                          # the exercise's bug: beta_t for sqrt(beta_t)
    trace_big[t], trace_small[t] = chains[:, stroke].mean(), chains[:M_SMALL, stroke].mean()
    var_forgot[t] = forgot.var(axis=0, ddof=1).mean()
    if t in record_t:
        stats[t] = {m: (chains[:m].mean(axis=0, dtype=np.float64), chains[:m].var(axis=0, ddof=1, dtype=np.float64))
                    for m in (M_SMALL, M_BIG)}
        stats[t]["forgot"] = (forgot.mean(axis=0, dtype=np.float64), forgot.var(axis=0, ddof=1, dtype=np.float64))
print(f"  {M_BIG} chains x {P} pixels x {T} steps, both processes, in {time.perf_counter() - tic:.1f} s")
x0_p = start.astype(np.float64)                                    # (P,)


def lesson_tests(m, key):
    """The lesson's two statistics for the chains `key` (m of them): the largest |z| of the per-pixel means and
    the largest deviation of the pooled variance from 1 - abar_t, in standard errors; and the RMS z of the means."""
    worst_z, worst_var, z_all = 0.0, 0.0, []
    for t in record_t:
        mean, var = stats[t][key]
        z = (mean - np.sqrt(abar[t]) * x0_p) / np.sqrt((1.0 - abar[t]) / m)     # (P,)
        ratio_z = abs(var.mean() / (1.0 - abar[t]) - 1.0) / np.sqrt(2.0 / (P * (m - 1)))
        worst_z, worst_var = max(worst_z, np.abs(z).max()), max(worst_var, ratio_z)
        z_all.append(z)
    return worst_z, worst_var, float(np.sqrt(np.mean(np.square(z_all))))


# ---------------------------------------------------------------------------------------------------
section("Exercise 1 (run): 50 chains instead of 1000")
# The standard error of a mean of M chains is sqrt((1 - abar_t) / M): going from 1000 to 50 chains multiplies it
# by sqrt(1000 / 50) = sqrt(20) ~ 4.47. The lesson's limits are "5 standard errors", so they widen by the same
# factor, and a right process still passes. What you see in closed_vs_iterated.png: the dots scatter ~4.5 times
# further from the line, and the +-2 SE band is ~4.5 times wider, so the dots stay inside it just as often.
for m in (M_SMALL, M_BIG):
    worst_z, worst_var, rms_z = lesson_tests(m, m)
    check(f"{m} chains: the lesson's mean and variance checks pass (|z| < 5)", worst_z < 5 and worst_var < 5,
          f"largest |z| of the means {worst_z:.2f}, of the pooled variance {worst_var:.2f}; RMS z {rms_z:.2f}")
dev = {m: np.sqrt(np.mean([(stats[t][m][0] - np.sqrt(abar[t]) * x0_p) ** 2 for t in record_t[1:]])) for m in
       (M_SMALL, M_BIG)}                                            # RMS distance of the dots from the line
ratio = dev[M_SMALL] / dev[M_BIG]
check("the 50-chain means scatter sqrt(20) ~ 4.47 times further from the closed form (within 25%)",
      abs(ratio / np.sqrt(20) - 1) < 0.25, f"RMS deviation {dev[M_SMALL]:.4f} vs {dev[M_BIG]:.4f}: ratio {ratio:.2f}")

fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
t_axis = np.arange(T)
line = np.sqrt(abar) * x0_p[stroke]
for m, trace, colour in ((M_SMALL, trace_small, "C3"), (M_BIG, trace_big, "C0")):
    band = 2 * np.sqrt((1.0 - abar) / m)
    ax.fill_between(t_axis, line - band, line + band, color=colour, alpha=0.15, label=f"+-2 SE for {m} chains")
    ax.plot(t_axis[::10], trace[::10], "o", color=colour, markersize=3, label=f"mean of {m} chains")
ax.plot(t_axis, line, "k", linewidth=2, label=r"closed form $\sqrt{\bar\alpha_t}\,x_0$")
ax.set(xlabel="timestep t", ylabel="mean of a stroke pixel", title="50 chains: 4.5x the scatter, 4.5x the band")
ax.grid(True, alpha=0.3)
ax.legend(fontsize=8)
path = out / "solution_chains_50_vs_1000.png"
fig.savefig(path, dpi=100)
plt.close(fig)
saved(path)

# ---------------------------------------------------------------------------------------------------
section("Exercise 2 (modify): the forgotten square root, x_t = sqrt(1 - beta_t) x_{t-1} + beta_t eps_t")
# Prediction. The mean is untouched: the step still shrinks by sqrt(1 - beta_t), so E[x_t] = sqrt(abar_t) x0 and
# the mean check passes. The variance follows v_t = (1 - beta_t) v_{t-1} + beta_t^2 from v = 0: each step adds
# beta_t^2 instead of beta_t, which is 1/beta_t ~ 50 to 10,000 times too little. Where adding and shrinking balance,
# v = beta^2 / beta = beta, so v_t tracks beta_t from below: at t = T-1 it is a little under beta_999 = 0.02,
# where 1 - abar_999 = 0.99996. The chains end at std ~0.14 around a shrunk x0 instead of at N(0, 1): the
# variance check fails by hundreds of standard errors.
v = 0.0
for t in range(T):
    v = (1.0 - betas[t]) * v + betas[t] ** 2
predicted = v
measured = var_forgot[T - 1]
se = predicted * np.sqrt(2.0 / (P * (M_BIG - 1)))                   # standard error of a pooled variance
print(f"  predicted variance at t = {T - 1}: {predicted:.5f} (beta_999 = {betas[-1]:.3f}); "
      f"measured {measured:.5f}; the right process: {1 - abar[-1]:.5f}")
check("prediction: the variance at t = T-1 is the recursion's v = (1 - beta) v + beta^2, about beta_999",
      abs(measured - predicted) < 5 * se, f"measured {measured:.5f}, predicted {predicted:.5f} (+-{se:.5f})")
worst_z, worst_var, _ = lesson_tests(M_BIG, "forgot")
check("the lesson's mean check still passes for the broken step (the shrinking is right)", worst_z < 5,
      f"largest |z| {worst_z:.2f} (SE from the right variance, so the z are even smaller)")
check("the lesson's variance check fails", worst_var > 5, f"largest deviation {worst_var:.0f} standard errors")

fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
ax.plot(t_axis, 1.0 - abar, "k", linewidth=2, label=r"right: $1 - \bar\alpha_t$")
ax.plot(t_axis, var_forgot, "C3", linewidth=2, label=r"forgotten sqrt: measured (pooled over pixels)")
ax.plot(t_axis, betas, "C3:", label=r"$\beta_t$ (where v = beta balances)")
ax.set(yscale="log", xlabel="timestep t", ylabel="variance of x_t",
       title=r"Adding $\beta_t\epsilon$ instead of $\sqrt{\beta_t}\epsilon$: the noise never builds up")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
path = out / "solution_forgotten_sqrt.png"
fig.savefig(path, dpi=100)
plt.close(fig)
saved(path)

# ---------------------------------------------------------------------------------------------------
section("Exercise 3 (create): the round trip through v = sqrt(abar) eps - sqrt(1 - abar) x0")
# With a = sqrt(abar_t), b = sqrt(1 - abar_t): x_t = a x0 + b eps and v = a eps - b x0. The pair (x_t, v) is
# (x0, eps) turned by the angle phi with cos phi = a, sin phi = b: a rotation, since a^2 + b^2 = 1. Undoing it,
#     x0 = a x_t - b v        (and eps = b x_t + a v)
# is a product and a difference of numbers of size ~1, with no division: nothing to amplify round-off at any t.
# x0_from_eps divides by a, which is 0.0064 at t = 999: float32's ~1e-7 relative error of x_t grows ~150 times.
ts = np.arange(T)                                                   # every timestep, one copy of the digit each
x0_all = np.repeat(x0[None], T, axis=0)                             # (T, 1, 28, 28)
eps_all = np.random.default_rng(3).standard_normal(x0_all.shape)
a = np.sqrt(abar)[:, None, None, None]
b = np.sqrt(1.0 - abar)[:, None, None, None]
v_mine = a * eps_all - b * x0_all
err = relative_error(v_mine, training_target(schedule, x0_all, ts, eps_all, prediction="v"))
check("v = sqrt(abar) eps - sqrt(1 - abar) x0 == training_target(..., prediction='v')", err < 1e-15,
      f"max relative error {err:.1e}")
x_t = q_sample(schedule, x0_all, ts, eps_all)
err = relative_error(x0_from_v(schedule, x_t, ts, v_mine), x0_all)
check("x0_from_v(x_t, v) returns x0 at every t = 0 .. 999 (float64)", err < 1e-14, f"max relative error {err:.1e}")

# Float32, as a network would compute it: its target v (or eps) in float32, x_t in float32.
x0_32, eps_32 = x0_all.astype(np.float32), eps_all.astype(np.float32)
x_t32 = q_sample(schedule, x0_32, ts, eps_32)
v_32 = training_target(schedule, x0_32, ts, eps_32, prediction="v")
err_by = {
    "x0_from_v": x0_from_v(schedule, x_t32, ts, v_32),
    "x0_from_eps": x0_from_eps(schedule, x_t32, ts, eps_32),
    "x0_from_v(v_from_eps)": x0_from_v(schedule, x_t32, ts, v_from_eps(schedule, x_t32, ts, eps_32)),
}
err_by = {k: np.abs(x.astype(np.float64) - x0_all).reshape(T, -1).max(axis=1) for k, x in err_by.items()}   # (T,)
print(f"\n  largest float32 error of x0, by route  {'t = 0':>9} {'t = 500':>9} {'t = 900':>9} {'t = 999':>9}")
for name, e in err_by.items():
    print(f"  {name:<38}" + "".join(f"{e[t]:>10.1e}" for t in (0, 500, 900, T - 1)))
e_v, e_eps, e_via = err_by["x0_from_v"], err_by["x0_from_eps"], err_by["x0_from_v(v_from_eps)"]
check("x0_from_v stays at float32 precision at every t (error < 1e-6)", e_v.max() < 1e-6,
      f"largest error {e_v.max():.1e}, at t = {int(np.argmax(e_v))}")
check("at t = T-1, x0_from_eps is over 30x less accurate than x0_from_v", e_eps[-1] > 30 * e_v[-1],
      f"{e_eps[-1]:.1e} vs {e_v[-1]:.1e} (b / a = {np.sqrt(1 - abar[-1]) / np.sqrt(abar[-1]):.0f})")
# v_from_eps computes v = (eps - b x_t) / a: the division by a is back, and with it the error.
check("v obtained through v_from_eps brings the error back (over 30x x0_from_v's at t = T-1)", e_via[-1] > 30 * e_v[-1],
      f"{e_via[-1]:.1e}: the same order as x0_from_eps's {e_eps[-1]:.1e}")

finish(started)
