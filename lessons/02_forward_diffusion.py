"""Lesson 02: the forward process - noising an image in one line instead of a thousand.

DDPM destroys an image x0 with T small Gaussian steps. The remarkable fact that makes training cheap is
that the result of all t steps is itself a single Gaussian around a shrunk copy of x0:

    q(x_t | x0) = N( sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I )

so a training example at any t costs one line, not t steps. In this lesson you will:

  * derive that closed form from the one-step rule q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I);
  * check tinyddpm.diffusion.q_sample against the formula, with the same noise, exactly;
  * run many independent noising chains step by step and check that the mean and variance of every
    pixel match the closed form to within a few standard errors (and that a wrong step fails that test);
  * use the reparameterisation x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps backwards: recover
    x0 from (x_t, eps) with x0_from_eps, and see why that gets harder as t grows.

Run it:   python lessons/02_forward_diffusion.py        (--fast: fewer chains, a shorter strip)

Figures (in lessons/output/02_forward_diffusion/):
  forward_strip.png       one digit at t = 0, 50, 100, ..., T-1 (one noise draw shared by every panel)
  closed_vs_iterated.png  per-pixel mean and variance of the step-by-step chains against the closed form,
                          and histograms of one pixel across chains against the closed-form density

Try this:
  1. run:    rerun with --fast (50 chains instead of 1000). The tolerances widen by sqrt(1000 / 50) ~ 4.5x,
             but the checks still pass: look at how much noisier the dots in closed_vs_iterated.png are.
  2. modify: in the line "chains += ..." of the chain loop, replace np.sqrt(betas[t]) by betas[t] (a forgotten
             square root). Predict the variance at t = T-1 before you run it, then see which check fails.
  3. create: do the same round trip for the v prediction, v = sqrt(abar) eps - sqrt(1 - abar) x0
             (tinyddpm.diffusion.training_target(..., prediction="v") and x0_from_v): check that
             x0_from_v(x_t, v) returns x0 at every t and that, unlike x0_from_eps, it stays accurate in
             float32 at t = T-1. (Getting v through v_from_eps divides by sqrt(abar) again: try it.)

Next: lessons/03_linear_and_gradcheck.py - the network's first layer by hand, and the gradient check that proves every backward.
"""
# %%
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import (FAST, banner, check, finish, mnist_digits, output_dir, relative_error, saved, section,  # noqa: E402
                     try_this)
from tinyddpm.diffusion import make_schedule, q_sample, x0_from_eps  # noqa: E402

# %%
started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 02: the forward process q(x_t | x0)")

T = 1000
schedule = make_schedule("linear", T)   # DDPM's betas, 1e-4 .. 0.02 (lesson 01)
betas, abar = schedule.betas, schedule.alpha_bar   # (T,) each, float64
images, labels = mnist_digits(8, seed=1)
x0 = images[0].astype(np.float64)       # (1, 28, 28), values in [-1, 1]
print(f"  a digit '{labels[0]}' of shape {x0.shape}; schedule {schedule}")

# %% 1. From one step to the closed form
# ---------------------------------------------------------------------------------------------------
section("1. From one step to the closed form")
# One step shrinks the previous image and adds fresh noise (alpha_t = 1 - beta_t):
#
#     x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps_t,                 eps_t ~ N(0, I), fresh every step
#
# Claim: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps for one standard normal eps.
# Induction: suppose it holds for x_{t-1} with some noise e. Put it in the step:
#
#     x_t = sqrt(alpha_t alpha_bar_{t-1}) x0 + [ sqrt(alpha_t (1 - alpha_bar_{t-1})) e + sqrt(beta_t) eps_t ]
#
# The bracket is a sum of two independent zero-mean Gaussians, so it is one Gaussian whose variance is
# the sum: alpha_t (1 - alpha_bar_{t-1}) + beta_t = alpha_t - alpha_bar_t + 1 - alpha_t = 1 - alpha_bar_t.
# And alpha_t alpha_bar_{t-1} = alpha_bar_t. So
#
#     q(x_t | x0) = N( sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I ).
#
# The mean shrinks towards 0 and the variance grows towards 1: every image ends as N(0, I).
# Written with a standard normal eps this is the reparameterisation
#
#     x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps
#
# which tinyddpm.diffusion.q_sample computes. With the same eps it must agree with the formula exactly.
rng = np.random.default_rng(0)
batch = images.astype(np.float64)                                   # (8, 1, 28, 28)
t_batch = rng.integers(0, T, size=len(batch))                       # (8,) one timestep per image
eps_batch = rng.standard_normal(batch.shape)                        # (8, 1, 28, 28)
a = np.sqrt(abar[t_batch]).reshape(-1, 1, 1, 1)                     # (8, 1, 1, 1)
b = np.sqrt(1.0 - abar[t_batch]).reshape(-1, 1, 1, 1)               # (8, 1, 1, 1)
x_t_formula = a * batch + b * eps_batch                             # (8, 1, 28, 28)
x_t_lib = q_sample(schedule, batch, t_batch, eps_batch)
err = float(np.max(np.abs(x_t_formula - x_t_lib)))
check("q_sample == sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, float64, same eps", err <= 1e-15,
      f"max absolute difference {err:.1e} over t = {sorted(t_batch.tolist())}")
x_t_lib32 = q_sample(schedule, batch.astype(np.float32), t_batch, eps_batch.astype(np.float32))
err = relative_error(x_t_formula, x_t_lib32)
check("q_sample in float32 keeps float32 and matches to float32 precision",
      x_t_lib32.dtype == np.float32 and err < 1e-6, f"dtype {x_t_lib32.dtype}, max relative error {err:.1e}")

# %% 2. A digit on its way to noise
# ---------------------------------------------------------------------------------------------------
section("2. A digit on its way to noise")
# One eps for every panel, so the strip shows the same noise pattern slowly taking over. Remember that
# tinyddpm's t = 0 is already one noising step (alpha_bar_0 = 1 - beta_0 = 0.9999).
every = 250 if FAST else 50
strip_t = list(range(0, T, every)) + [T - 1]                       # 0, 50, 100, ..., 950, 999
eps = np.random.default_rng(1).standard_normal(x0.shape)            # (1, 28, 28)
fig, axes = plt.subplots(1, len(strip_t), figsize=(0.95 * len(strip_t) + 0.4, 1.9), layout="constrained")
for ax, t in zip(axes, strip_t):
    x_t = np.sqrt(abar[t]) * x0 + np.sqrt(1.0 - abar[t]) * eps      # (1, 28, 28)
    ax.imshow(np.clip((x_t[0] + 1) / 2, 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(f"t={t}\n" + r"$\bar\alpha$" + f"={abar[t]:.2g}", fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle(r"$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$" +
             f" for one digit and one noise draw, linear schedule, T = {T}", fontsize=10)
path = out / "forward_strip.png"
fig.savefig(path, dpi=100)
plt.close(fig)
saved(path)

# %% 3. The closed form against a thousand steps, with many chains
# ---------------------------------------------------------------------------------------------------
section("3. The closed form against a thousand steps, with many chains")
# Now run the process the slow way: M independent chains, all starting from the same x0, each taking
# the T single steps with its own fresh noise. The chains are one (M, P) array (P = 784 pixels), so
# each step is a few whole-array operations; only the loop over t is a Python loop.
#
# How close must they be? For one pixel, the mean of M independent draws of N(mu, s^2) has standard
# error s / sqrt(M); here mu = sqrt(abar_t) x0 and s^2 = 1 - abar_t. We test z = (mean - mu) / SE at
# every pixel and at several t and demand |z| < 5. For a right process each |z| exceeds 5 with
# probability 5.7e-7, so about 7,000 comparisons give a false alarm well under 1% of the time.
# The variance is the same 1 - abar_t at every pixel, so we pool it over the P pixels: the average of
# the P sample variances divided by (1 - abar_t) is 1 with standard error sqrt(2 / (P (M - 1))).
M = 50 if FAST else 1000
P = x0.size
start = x0.reshape(1, P).astype(np.float32)                         # (1, P)
chains = np.repeat(start, M, axis=0)                                # (M, P) the right process
wrong = chains.copy()                                               # (M, P) a process that forgets to shrink
record_t = [0, 10, 50, 100, 200, 300, 500, 700, T - 1]
stroke, background = int(np.argmax(start)), 0                       # a pixel of the digit (x0 = 1), a corner (x0 = -1)
mean_stroke, mean_background, pooled_var, wrong_var = (np.full(T, np.nan) for _ in range(4))
stats, samples = {}, {}
chain_rng = np.random.default_rng(2)
tic = time.perf_counter()
for t in range(T):
    noise = chain_rng.standard_normal((M, P), dtype=np.float32)     # (M, P) fresh noise for step t
    chains *= np.float32(np.sqrt(1.0 - betas[t]))                   # x_t = sqrt(1 - beta_t) x_{t-1} ...
    chains += np.float32(np.sqrt(betas[t])) * noise                 #       + sqrt(beta_t) eps_t
    wrong += np.float32(np.sqrt(betas[t])) * noise                  # wrong: x_t = x_{t-1} + sqrt(beta_t) eps_t
    mean_stroke[t] = chains[:, stroke].mean()
    mean_background[t] = chains[:, background].mean()
    pooled_var[t] = chains.var(axis=0, ddof=1).mean()
    if t in record_t:
        stats[t] = (chains.mean(axis=0, dtype=np.float64), chains.var(axis=0, ddof=1, dtype=np.float64),
                    wrong.mean(axis=0, dtype=np.float64))           # (P,) each
        samples[t] = chains[:, stroke].copy()                       # (M,) one pixel across the chains
        wrong_var[t] = wrong.var(axis=0, ddof=1).mean()
print(f"  {M} chains x {P} pixels x {T} steps in {time.perf_counter() - tic:.1f} s")

x0_flat = start[0].astype(np.float64)                               # (P,)
worst_z, worst_var, worst_wrong_z = 0.0, 0.0, 0.0
print(f"  {'t':>5} {'abar_t':>9} {'max|z| of means':>16} {'pooled var / (1-abar)':>22} {'in SE':>7}")
for t in record_t:
    mean, var, wrong_mean = stats[t]
    se = np.sqrt((1.0 - abar[t]) / M)                               # standard error of one pixel's mean
    z = np.abs(mean - np.sqrt(abar[t]) * x0_flat) / se              # (P,)
    ratio = var.mean() / (1.0 - abar[t])
    ratio_z = abs(ratio - 1.0) / np.sqrt(2.0 / (P * (M - 1)))
    worst_z, worst_var = max(worst_z, z.max()), max(worst_var, ratio_z)
    worst_wrong_z = max(worst_wrong_z, (np.abs(wrong_mean - np.sqrt(abar[t]) * x0_flat) / se).max())
    print(f"  {t:>5} {abar[t]:>9.2e} {z.max():>16.2f} {ratio:>22.4f} {ratio_z:>7.2f}")
check("iterated per-pixel means == sqrt(abar_t) x0 (every pixel, 9 timesteps)", worst_z < 5,
      f"largest |z| {worst_z:.2f} standard errors (limit 5; SE = sqrt((1 - abar_t) / {M}))")
check("iterated variance == 1 - abar_t (pooled over pixels, 9 timesteps)", worst_var < 5,
      f"largest deviation {worst_var:.2f} standard errors (limit 5)")
# The same test on a process that adds the noise but never shrinks x: its mean stays x0 and its
# variance grows to sum(beta) ~ 10. The test must reject it, or it could not tell right from wrong.
check("the same mean test rejects a step that forgets to shrink x_{t-1}", worst_wrong_z > 5,
      f"largest |z| {worst_wrong_z:.0f} standard errors; its variance at t = {T - 1} is {wrong_var[T - 1]:.2f} "
      f"(sum of betas {betas.sum():.2f}) instead of {1 - abar[T - 1]:.4f}")

# In the first panel, neighbouring dots come from the same chains a few steps apart, so their errors are
# strongly correlated: a run of dots drifting one or two standard errors off the line and back is chance.
fig, axes = plt.subplots(1, 3, figsize=(16, 4.4), layout="constrained")
t_axis = np.arange(T)
dots = t_axis[::10]
for values, x0_value, name, colour in ((mean_stroke, x0_flat[stroke], "stroke pixel", "C0"),
                                       (mean_background, x0_flat[background], "background pixel", "C1")):
    axes[0].plot(t_axis, np.sqrt(abar) * x0_value, color=colour, linewidth=2,
                 label=rf"closed form $\sqrt{{\bar\alpha_t}}\,x_0$, {name} ($x_0$={x0_value:+.0f})")
    band = 2 * np.sqrt((1.0 - abar) / M)                            # two standard errors of a mean of M chains
    axes[0].fill_between(t_axis, np.sqrt(abar) * x0_value - band, np.sqrt(abar) * x0_value + band, color=colour,
                         alpha=0.15, label="closed form +- 2 standard errors")
    axes[0].plot(dots, values[::10], "o", color=colour, markersize=3, alpha=0.6, label=f"mean of {M} chains")
axes[0].set(title="Mean of one pixel across the chains", xlabel="timestep t", ylabel=r"mean of $x_t$")
axes[0].legend(fontsize=8)
axes[1].plot(t_axis, 1.0 - abar, color="k", linewidth=2, label=r"closed form $1-\bar\alpha_t$")
axes[1].plot(dots, pooled_var[::10], "o", color="C2", markersize=3, label=f"iterated, {M} chains (pooled over pixels)")
axes[1].plot(record_t, [wrong_var[t] for t in record_t], "s--", color="C3", markersize=4,
             label=r"wrong step $x_{t-1} + \sqrt{\beta_t}\,\epsilon_t$ (never shrinks)")
axes[1].set(title="Variance of every pixel across the chains", xlabel="timestep t", ylabel=r"variance of $x_t$",
            yscale="log")
axes[1].legend(fontsize=8)
grid = np.linspace(-4, 4, 400)
for t, colour in zip((100, 300, T - 1), ("C0", "C1", "C2")):
    mu, var = np.sqrt(abar[t]) * x0_flat[stroke], 1.0 - abar[t]
    axes[2].hist(samples[t], bins=30 if not FAST else 10, density=True, color=colour, alpha=0.35,
                 label=f"t = {t}: {M} chains")
    axes[2].plot(grid, np.exp(-(grid - mu) ** 2 / (2 * var)) / np.sqrt(2 * np.pi * var), color=colour, linewidth=2,
                 label=rf"t = {t}: N({mu:.2f}, {var:.3f})")
axes[2].set(title=r"One stroke pixel ($x_0$ = 1): chains vs $q(x_t | x_0)$", xlabel=r"value of $x_t$",
            ylabel="density", xlim=(-4, 4))
axes[2].legend(fontsize=8)
for ax in axes:
    ax.grid(True, alpha=0.3)
fig.suptitle(f"{T} single noising steps (points, histograms) against the closed form (lines), linear schedule")
path = out / "closed_vs_iterated.png"
fig.savefig(path, dpi=100)
plt.close(fig)
saved(path)

# %% 4. Running the reparameterisation backwards: x0 from (x_t, eps)
# ---------------------------------------------------------------------------------------------------
section("4. Running the reparameterisation backwards: x0 from (x_t, eps)")
# x_t = a x0 + b eps (a = sqrt(abar_t), b = sqrt(1 - abar_t)) is a deterministic function of x0 and
# eps. Knowing x_t and eps, solve for x0:
#
#     x0 = (x_t - b eps) / a
#
# This is how a network that predicts the noise eps gives an estimate of the clean image (the samplers
# of lessons 12-15 do exactly this). tinyddpm calls it x0_from_eps.
t_all = np.array(record_t)                                          # (K,) timesteps
K = len(t_all)
x0_k = np.repeat(x0[None], K, axis=0)                              # (K, 1, 28, 28) the same digit K times
eps_k = np.random.default_rng(3).standard_normal(x0_k.shape)       # (K, 1, 28, 28)
x_t_k = q_sample(schedule, x0_k, t_all, eps_k)
a_k = np.sqrt(abar[t_all]).reshape(-1, 1, 1, 1)
b_k = np.sqrt(1.0 - abar[t_all]).reshape(-1, 1, 1, 1)
x0_mine = (x_t_k - b_k * eps_k) / a_k
err = relative_error(x0_mine, x0_from_eps(schedule, x_t_k, t_all, eps_k))
check("(x_t - sqrt(1 - abar) eps) / sqrt(abar) == tinyddpm x0_from_eps", err < 1e-14, f"max relative error {err:.1e}")
err = relative_error(x0_from_eps(schedule, x_t_k, t_all, eps_k), x0_k)
check("x0_from_eps(q_sample(x0, eps), eps) recovers x0 at every t (float64)", err < 1e-12,
      f"max relative error {err:.1e}")
# In float32 the subtraction x_t - b eps cancels almost everything at large t (what is left, a x0, is
# tiny), and dividing by a = sqrt(abar) magnifies the round-off by about b / a. That is one reason the
# samplers clip the x0 estimate, and one reason some models predict v instead of eps (exercise 3).
x_t_32 = q_sample(schedule, x0_k.astype(np.float32), t_all, eps_k.astype(np.float32))
x0_32 = x0_from_eps(schedule, x_t_32, t_all, eps_k.astype(np.float32))
print(f"\n  {'t':>5} {'b / a':>9} {'float32 error of x0':>20}")
for k, t in enumerate(t_all):
    e32 = float(np.max(np.abs(x0_32[k].astype(np.float64) - x0_k[k])))
    print(f"  {t:>5} {b_k[k, 0, 0, 0] / a_k[k, 0, 0, 0]:>9.3g} {e32:>20.1e}")

# %% Exercises
# ---------------------------------------------------------------------------------------------------
try_this(__doc__)
finish(started)
