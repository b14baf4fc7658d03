"""Lesson 01: noise schedules - how fast the signal disappears.

A diffusion model destroys an image in T small steps of Gaussian noise and learns to undo them. The
noise schedule says how big each step is: beta_t, the variance of the noise added at step t. Everything
the model sees at step t is summarised by one number, alpha_bar_t, the share of the image's variance that
is still signal. In this lesson you will:

  * derive the linear schedule of DDPM (Ho et al. 2020), the cosine schedule of improved DDPM (Nichol &
    Dhariwal 2021) and a sigmoid schedule in a few lines of NumPy, and check them against
    tinyddpm.diffusion (linear_betas, cosine_betas, sigmoid_betas, make_schedule);
  * compute the signal-to-noise ratio SNR_t = alpha_bar_t / (1 - alpha_bar_t) in decibels;
  * measure how fast each schedule destroys the signal: where alpha_bar crosses 0.5 and SNR crosses 1
    (the same place, as you will see), and how many steps each spends on what is almost pure noise;
  * check the properties every schedule must have (alpha_bar strictly decreasing, inside (0, 1)).

Run it:   python lessons/01_noise_schedules.py          (--fast: the same steps with a shorter strip)

Figures (in lessons/output/01_noise_schedules/):
  schedules.png     alpha_bar_t, SNR_t in dB and sqrt(alpha_bar_t) against t, one line per schedule
  noised_strip.png  one digit noised at the same timesteps under each schedule (a row per schedule)

Try this:
  1. run:    set T = 100 at the top and rerun. Every check still passes; compare the crossing points as a
             fraction t / T with the T = 1000 table - all three barely move, the linear one too, because
             linear_betas scales its betas by 1000 / T (without that, T = 100 would leave abar_99 ~ 0.36).
  2. modify: delete the clip np.minimum(..., 0.999) in the cosine derivation. Predict which checks fail,
             then print abar_cos[-1] and its log SNR: why would a step with beta = 1 break sampling?
  3. create: write your own schedule - e.g. Stable Diffusion's "scaled linear" betas,
             np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T) ** 2 - wrap it with tinyddpm.diffusion.Schedule(betas,
             name="scaled linear") and add it to the crossing table and the figures.

Next: lessons/02_forward_diffusion.py - q(x_t | x_0) in closed form, checked against a thousand single steps.
"""
# %%
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import (FAST, banner, check, finish, mnist_digits, output_dir, relative_error, saved, section,  # noqa: E402
                     try_this)
from tinyddpm.diffusion import (cosine_betas, linear_betas, make_schedule, q_sample,  # noqa: E402
                                sigmoid_betas)

# %%
started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 01: noise schedules")

T = 1000  # number of diffusion steps; t runs over 0 .. T-1

# %% 1. The linear schedule and alpha_bar
# ---------------------------------------------------------------------------------------------------
section("1. The linear schedule and alpha_bar")
# One noising step takes x_{t-1} to x_t by shrinking it a little and adding a little noise:
#
#     x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps_t,        eps_t ~ N(0, I)
#
# (tinyddpm counts from t = 0: index t is the (t+1)-th step, and x_{-1} = x0 is the clean image).
# Write alpha_t = 1 - beta_t. Shrinking by sqrt(alpha_t) scales the variance by alpha_t, so after the
# steps 0 .. t the clean image survives with weight sqrt(alpha_bar_t), where
#
#     alpha_bar_t = alpha_0 * alpha_1 * ... * alpha_t = prod_{s <= t} (1 - beta_s)
#
# and the rest of the variance, 1 - alpha_bar_t, is noise (lesson 02 derives this). DDPM's betas rise
# linearly from 1e-4 to 0.02 over T = 1000 steps. For another T, tinyddpm multiplies both ends by
# 1000 / T so that the total noise added (roughly the sum of the betas) stays the same.
scale = 1000 / T
betas_lin = np.linspace(1e-4 * scale, 0.02 * scale, T)  # (T,)
abar_lin = np.cumprod(1.0 - betas_lin)                   # (T,) running product of alpha_t

err = relative_error(betas_lin, linear_betas(T))
check("linear betas == tinyddpm linear_betas", err < 1e-12, f"max relative error {err:.1e}")
lin = make_schedule("linear", T)
err = relative_error(abar_lin, lin.alpha_bar)
check("alpha_bar = cumprod(1 - beta) == make_schedule('linear').alpha_bar", err < 1e-12,
      f"max relative error {err:.1e}")
print(f"  linear: alpha_bar goes from {abar_lin[0]:.6f} at t = 0 to {abar_lin[-1]:.2e} at t = {T - 1}")

# %% 2. The cosine schedule: define alpha_bar first, then the betas
# ---------------------------------------------------------------------------------------------------
section("2. The cosine schedule: define alpha_bar first, then the betas")
# Nichol & Dhariwal noticed that with linear betas the last few hundred steps of a small image are
# almost pure noise: the model spends a third of its training on steps that barely matter. They
# design alpha_bar directly, as a smooth curve in u = t / T that falls from 1 to 0 like a cosine:
#
#     f(u) = cos( (u + s) / (1 + s) * pi / 2 )^2,       s = 0.008
#     alpha_bar(u) = f(u) / f(0)                        (so alpha_bar(0) = 1 exactly)
#
# The small offset s keeps the first betas from being vanishingly small. Because alpha_bar is a
# product, each beta is one minus the ratio of consecutive alpha_bars:
#
#     alpha_t = alpha_bar(t+1) / alpha_bar(t),   beta_t = 1 - alpha_bar((t+1)/T) / alpha_bar(t/T)
#
# At u = 1 the cosine is exactly 0, so the last beta would be 1: a step that throws the image away
# completely (and makes 1 / sqrt(alpha_bar) infinite). The betas are therefore clipped at 0.999.
s = 0.008
u = np.arange(T + 1) / T                                  # (T + 1,) from 0 to 1
f = np.cos((u + s) / (1 + s) * np.pi / 2) ** 2           # (T + 1,)
abar_curve = f / f[0]                                    # (T + 1,) the designed alpha_bar(u)
betas_cos = np.minimum(1.0 - abar_curve[1:] / abar_curve[:-1], 0.999)  # (T,)
abar_cos = np.cumprod(1.0 - betas_cos)                   # (T,)

err = relative_error(betas_cos, cosine_betas(T))
check("cosine betas == tinyddpm cosine_betas", err < 1e-12, f"max relative error {err:.1e}")
cos = make_schedule("cosine", T)
err = relative_error(abar_cos, cos.alpha_bar)
check("cosine alpha_bar == make_schedule('cosine').alpha_bar", err < 1e-12, f"max relative error {err:.1e}")
# The product of ratios telescopes back to the designed curve: alpha_bar_t = alpha_bar((t + 1) / T).
# Only the last step, where the clip acted, departs from it.
err = relative_error(abar_cos[:-1], abar_curve[1:-1])
check("cumprod of the betas telescopes back to f((t+1)/T) / f(0) (all but the clipped last step)", err < 1e-12,
      f"max relative error {err:.1e}")
print(f"  cosine: first beta {betas_cos[0]:.2e}, last beta {betas_cos[-1]} (clipped; unclipped it is "
      f"{1.0 - abar_curve[-1] / abar_curve[-2]:.6f})")

# %% 3. The sigmoid schedule
# ---------------------------------------------------------------------------------------------------
section("3. The sigmoid schedule")
# Another designed curve: alpha_bar follows a falling sigmoid. With sig(z) = 1 / (1 + exp(-z)) and
# a window [start, end] = [-3, 3] of the sigmoid, swept as u goes from 0 to 1 (tau sets the steepness):
#
#     alpha_bar(u) = ( sig(end/tau) - sig((start + u (end - start)) / tau) ) / ( sig(end/tau) - sig(start/tau) )
#
# which is 1 at u = 0 and 0 at u = 1. The betas come from ratios and are clipped, as for cosine.
start, end, tau = -3.0, 3.0, 1.0


def sig(z):
    return 1.0 / (1.0 + np.exp(-z))


abar_curve_sig = (sig(end / tau) - sig((start + u * (end - start)) / tau)) / (sig(end / tau) - sig(start / tau))
betas_sig = np.minimum(1.0 - abar_curve_sig[1:] / abar_curve_sig[:-1], 0.999)   # (T,)
sgm = make_schedule("sigmoid", T)
err = relative_error(betas_sig, sigmoid_betas(T))
check("sigmoid betas == tinyddpm sigmoid_betas", err < 1e-12, f"max relative error {err:.1e}")
err = relative_error(np.cumprod(1.0 - betas_sig), sgm.alpha_bar)
check("sigmoid alpha_bar == make_schedule('sigmoid').alpha_bar", err < 1e-12, f"max relative error {err:.1e}")

schedules = {"linear": lin, "cosine": cos, "sigmoid": sgm}

# %% 4. Properties every schedule must have
# ---------------------------------------------------------------------------------------------------
section("4. Properties every schedule must have")
# alpha_bar is a product of factors alpha_t = 1 - beta_t. If every beta lies in (0, 1), every factor
# lies in (0, 1), so alpha_bar is strictly decreasing and stays inside (0, 1): the image loses signal at
# every step and is never completely gone. Both matter later: the samplers divide by sqrt(alpha_bar_t)
# and by sqrt(1 - alpha_bar_t).
for name, sched in schedules.items():
    ab = sched.alpha_bar
    steps = np.diff(ab)  # (T - 1,) alpha_bar_{t+1} - alpha_bar_t, must all be negative
    ok = bool(np.all(steps < 0) and np.all(ab > 0) and np.all(ab < 1))
    check(f"{name}: alpha_bar strictly decreasing and inside (0, 1)", ok,
          f"largest step {steps.max():.1e} (< 0), alpha_bar from {ab[0]:.6f} down to {ab[-1]:.2e}")

# %% 5. Signal-to-noise ratio and how fast the signal disappears
# ---------------------------------------------------------------------------------------------------
section("5. Signal-to-noise ratio and how fast the signal disappears")
# At step t, x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, so the signal has variance
# alpha_bar_t (times the image's own) and the noise 1 - alpha_bar_t:
#
#     SNR_t = alpha_bar_t / (1 - alpha_bar_t),       in decibels: 10 log10(SNR_t)
#
# SNR = 1 (0 dB) means as much noise as signal. That happens exactly when alpha_bar = 1 - alpha_bar,
# i.e. alpha_bar = 0.5, so the two crossings below must agree - computed once from alpha_bar and once
# from tinyddpm's own SNR table. Below -20 dB (SNR < 0.01) the image is, for the eye, pure noise.
snr_db = {}
for name, sched in schedules.items():
    mine = 10 * np.log10(sched.alpha_bar / (1.0 - sched.alpha_bar))   # (T,)
    theirs = 10 / np.log(10) * sched.log_snr                          # tinyddpm keeps the natural log
    err = relative_error(mine, theirs)
    check(f"{name}: 10 log10(abar / (1 - abar)) == tinyddpm's log_snr in dB", err < 1e-10,
          f"max relative error {err:.1e}")
    snr_db[name] = mine


def first_below(values, level):
    """The first t where values[t] < level (values decreasing), or T if it never gets there."""
    below = np.flatnonzero(values < level)
    return int(below[0]) if below.size else len(values)


print(f"\n  first t where ...        {'abar<0.9':>9} {'abar<0.5':>9} {'SNR<1':>7} {'abar<0.1':>9} {'abar<0.01':>10}"
      f" {'steps at SNR<-20dB':>19}")
for name, sched in schedules.items():
    ab = sched.alpha_bar
    cross_half, cross_snr = first_below(ab, 0.5), first_below(sched.snr, 1.0)
    print(f"  {name:<24}{first_below(ab, 0.9):>9} {cross_half:>9} {cross_snr:>7} {first_below(ab, 0.1):>9} "
          f"{first_below(ab, 0.01):>10} {int(np.sum(snr_db[name] < -20)):>19}")
    check(f"{name}: alpha_bar crosses 0.5 at the same t as SNR crosses 1", cross_half == cross_snr,
          f"t = {cross_half} vs t = {cross_snr}")
print(f"  The linear schedule is half noise by t = {first_below(lin.alpha_bar, 0.5)} of {T} and spends "
      f"{np.mean(snr_db['linear'] < -20):.0%} of its steps below -20 dB;\n"
      "  cosine and sigmoid reach the halfway point near t = T/2 and waste far fewer steps on pure noise.")

fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
t_axis = np.arange(T)
for name, sched in schedules.items():
    axes[0].plot(t_axis, sched.alpha_bar, label=name, linewidth=2)
    axes[1].plot(t_axis, snr_db[name], label=name, linewidth=2)
    axes[2].plot(t_axis, np.sqrt(sched.alpha_bar), label=name, linewidth=2)
axes[0].axhline(0.5, color="gray", linestyle=":", linewidth=1)
axes[1].axhline(0.0, color="gray", linestyle=":", linewidth=1)
axes[1].axhline(-20.0, color="gray", linestyle="--", linewidth=1)
axes[1].annotate("SNR = 1 (0 dB)", (0.65 * T, 2), color="gray")
axes[1].annotate("-20 dB: almost pure noise", (5, -18), color="gray")
axes[0].set(title=r"Variance of the signal kept: $\bar\alpha_t$", xlabel="timestep t", ylabel=r"$\bar\alpha_t$")
axes[1].set(title=r"Signal-to-noise ratio $\bar\alpha_t / (1 - \bar\alpha_t)$", xlabel="timestep t",
            ylabel="SNR in dB (10 log10)")
axes[2].set(title=r"Weight of the clean image in $x_t$: $\sqrt{\bar\alpha_t}$", xlabel="timestep t",
            ylabel=r"$\sqrt{\bar\alpha_t}$")
for ax in axes:
    ax.grid(True, alpha=0.3)
    ax.legend(title="schedule")
fig.suptitle(f"Three noise schedules, T = {T}")
path = out / "schedules.png"
fig.savefig(path, dpi=100)
plt.close(fig)
saved(path)

# %% 6. What a digit looks like under each schedule
# ---------------------------------------------------------------------------------------------------
section("6. What a digit looks like under each schedule")
# The same digit and the same noise eps, noised to the same timesteps under each schedule with the
# closed form x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (tinyddpm's q_sample). Reading
# down a column compares schedules at equal t.
images, labels = mnist_digits(1, seed=3)
x0 = images[0].astype(np.float64)                         # (1, 28, 28) in [-1, 1]
eps = np.random.default_rng(0).standard_normal(x0.shape)  # one noise draw shared by every panel
columns = 4 if FAST else 10
shown_t = [k * T // columns for k in range(columns)] + [T - 1]   # 0, T/10, ..., 9T/10, T-1

# Check the closed form by hand against q_sample once, for the cosine schedule at t = 500.
t_mid = T // 2
by_hand = np.sqrt(cos.alpha_bar[t_mid]) * x0 + np.sqrt(1.0 - cos.alpha_bar[t_mid]) * eps
err = relative_error(by_hand, q_sample(cos, x0, t_mid, eps))
check(f"sqrt(abar) x0 + sqrt(1 - abar) eps == q_sample (cosine, t = {t_mid})", err < 1e-12,
      f"max relative error {err:.1e}")

fig, axes = plt.subplots(len(schedules), len(shown_t), figsize=(1.25 * len(shown_t) + 0.8, 1.45 * len(schedules) + 0.6),
                         layout="constrained")
for row, (name, sched) in enumerate(schedules.items()):
    for col, t in enumerate(shown_t):
        x_t = q_sample(sched, x0, t, eps)                 # (1, 28, 28)
        ax = axes[row, col]
        ax.imshow(np.clip((x_t[0] + 1) / 2, 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"t={t}  " + r"$\bar\alpha$" + f"={sched.alpha_bar[t]:.2g}", fontsize=7)
        if col == 0:
            ax.set_ylabel(name, fontsize=11)
fig.suptitle(f"A digit '{labels[0]}' noised with the same eps at the same t, one row per schedule")
path = out / "noised_strip.png"
fig.savefig(path, dpi=100)
plt.close(fig)
saved(path)

# %% Exercises
# ---------------------------------------------------------------------------------------------------
try_this(__doc__)
finish(started)
