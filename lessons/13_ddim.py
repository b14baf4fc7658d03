"""Lesson 13: DDIM, sampling in 10 steps instead of 1000.

What you will learn
  - the DDIM update x_{t'} = sqrt(abar_{t'}) x0_hat + sqrt(1 - abar_{t'} - sigma^2) eps_hat + sigma z, derived
    in a few lines of NumPy and checked against tinyddpm.diffusion.ddim_step;
  - why one network trained for DDPM serves every DDIM: the update keeps q(x_{t'} | x0) for any sigma;
  - that eta = 1 with consecutive timesteps is DDPM again (sigma^2 = beta_tilde), and eta = 0 is a
    deterministic map from starting noise to image;
  - how quality depends on the number of steps, on eta, and on which timesteps are visited
    (the 'linspace', 'leading' and 'trailing' spacings of tinyddpm.diffusion.SPACINGS).

Run it
  python lessons/13_ddim.py            # about a minute on 2 CPU cores (plus ~1 min once if no network exists yet)
  python lessons/13_ddim.py --fast     # tiny sizes, the same code paths (what the tests run)

Figures (in lessons/output/13_ddim/)
  steps_grid.png        one row per step count, the same starting noise in every row
  steps_convergence.png how far each step count lands from a many-step reference (the ODE's solution)
  eta_comparison.png    eta = 0 and eta = 1, each with two different noise seeds for the steps
  spacings.png          the timesteps each spacing visits, drawn over alpha_bar_t
  spacing_samples.png   a few-step run with each spacing, the same starting noise

Try this
  1. run:    set STEP_COUNTS = (1, 2, 3, 5) and rerun. One step is the clipped x0_hat at t = 999. The ideal
             estimate there is a blurry average digit, but a noise-predicting network's x0_hat divides its
             error by sqrt(abar_999) = 0.0064: mostly +-1 noise. Watch where the digits become recognisable.
  2. modify: in ddim(), pass prev_timestep="next". 'linspace' with 5 steps calls the model at 999 749 500
             250 0, but each step lands on t - 1000 // 5 (999 -> 799); with "next" it lands where the next
             call is (749). Predict whether the 'linspace' row of spacing_samples.png improves, then look.
  3. create: write ddim_inversion(x0, steps): run the eta = 0 update backwards (from t to the next larger
             timestep, with eps_hat from the model at the current one) to find the noise x_T that DDIM maps
             to a given real digit; sample from it and compare with the digit.

Next: lessons/14_dpm_solver.py - DPM-Solver++(2M), a second-order solver of the same ODE.
"""
# %%
import time

from _common import FAST, banner, check, finish, output_dir, relative_error, saved, section, try_this, trained_model

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tinyddpm.diffusion import (SPACINGS, GuidedModel, ddim_sample, ddim_sigma, ddim_step,  # noqa: E402
                                ddim_timesteps, ddpm_step, eps_from_x0, make_schedule)
from tinyddpm.sampling import unet_model  # noqa: E402
from tinyddpm.viz import plot_sample_grid  # noqa: E402

# %%
started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 13: DDIM")

# %% 1. One DDIM step, derived
# ---------------------------------------------------------------------------------------------------
section("1. One DDIM step, derived")
# At timestep t the network looks at x_t and predicts the noise eps_hat. Since
#     x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
# that also gives an estimate of the clean image:
#     x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
# DDIM (Song et al. 2021) jumps from t to any earlier t' by rebuilding x_{t'} out of those two estimates,
# the way the forward process would have built it, plus optional fresh noise z ~ N(0, I):
#     x_{t'} = sqrt(abar_{t'}) x0_hat  +  sqrt(1 - abar_{t'} - sigma^2) eps_hat  +  sigma z
#     sigma  = eta * sqrt((1 - abar_{t'}) / (1 - abar_t)) * sqrt(1 - abar_t / abar_{t'})
# The noise part has variance (1 - abar_{t'} - sigma^2) + sigma^2 = 1 - abar_{t'}: whatever sigma is, x_{t'}
# has the marginal q(x_{t'} | x0) = N(sqrt(abar_{t'}) x0, (1 - abar_{t'}) I) the network was trained on.
# eta in [0, 1] picks how much of that variance is fresh noise. Past the last step (t' = -1) abar_{t'} = 1.
schedule_lin = make_schedule("linear", 1000)
ab = schedule_lin.alpha_bar
rng = np.random.default_rng(0)
x0_hat = rng.uniform(-1, 1, size=(4, 1, 28, 28))   # any estimates will do to compare two implementations
eps_hat = rng.standard_normal((4, 1, 28, 28))
z = rng.standard_normal((4, 1, 28, 28))


def my_ddim_step(t, t_prev, eta):
    """x_{t'} from the estimates above, by the two lines of the formula (float64)."""
    ab_t, ab_prev = ab[t], (ab[t_prev] if t_prev >= 0 else 1.0)
    sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab_t)) * np.sqrt(1 - ab_t / ab_prev)
    return np.sqrt(ab_prev) * x0_hat + np.sqrt(1 - ab_prev - sigma**2) * eps_hat + sigma * z, sigma


worst = 0.0
for t, t_prev, eta in [(999, 899, 0.0), (999, 899, 1.0), (500, 450, 0.3), (20, 0, 0.7), (99, -1, 1.0), (1, 0, 1.0)]:
    mine, my_sigma = my_ddim_step(t, t_prev, eta)
    mean, std = ddim_step(schedule_lin, t, t_prev, x0_hat, eps_hat, eta)   # tinyddpm: a Step(mean, std)
    worst = max(worst, relative_error(mine, mean + std * z), abs(my_sigma - std) / max(my_sigma, 1e-300))
check("my DDIM step == tinyddpm.diffusion.ddim_step (6 steps, eta 0 to 1)", worst < 1e-12,
      f"max relative error {worst:.1e}")

# The marginal is kept for any eta: feed the step the true x0 and eps (a perfect network) and measure the
# variance of x_{t'} - sqrt(abar_{t'}) x0 over many draws. It should be 1 - abar_{t'} for every eta.
t, t_prev = 600, 300
x0_true = rng.uniform(-1, 1, size=(1, 784))
draws = 400 if FAST else 4000
eps_true = rng.standard_normal((draws, 784))
x_t = np.sqrt(ab[t]) * x0_true + np.sqrt(1 - ab[t]) * eps_true
print(f"  t = {t} -> t' = {t_prev}: 1 - abar_t' = {1 - ab[t_prev]:.4f}; measured variance of the noise part:")
worst = 0.0
for eta in (0.0, 0.5, 1.0):
    mean, std = ddim_step(schedule_lin, t, t_prev, x0_true, eps_true, eta)
    x_prev = mean + std * rng.standard_normal(mean.shape)
    var = np.var(x_prev - np.sqrt(ab[t_prev]) * x0_true)
    worst = max(worst, abs(var / (1 - ab[t_prev]) - 1))
    print(f"    eta = {eta:.1f}: sigma = {std:.4f}, variance {var:.4f}")
check("the DDIM step keeps q(x_t' | x0) for every eta", worst < (0.02 if FAST else 0.005),
      f"measured variance within {worst:.2%} of 1 - abar_t' ({draws} x 784 draws)")

# %% 2. eta = 1 over consecutive timesteps is DDPM
# ---------------------------------------------------------------------------------------------------
section("2. eta = 1 over consecutive timesteps is DDPM")
# With t' = t - 1, abar_t / abar_{t-1} = alpha_t = 1 - beta_t, so at eta = 1
#     sigma^2 = (1 - abar_{t-1}) / (1 - abar_t) * beta_t = beta_tilde_t
# the variance of DDPM's posterior q(x_{t-1} | x_t, x0). And the mean, with eps_hat = (x_t - sqrt(abar_t) x0_hat)
# / sqrt(1 - abar_t), rearranges into DDPM's posterior mean coef1_t x0_hat + coef2_t x_t.
ts = np.arange(1, 1000)
sigma2_formula = (1 - ab[ts - 1]) / (1 - ab[ts]) * (1 - ab[ts] / ab[ts - 1])            # (999,) all t at once
sigma2_tinyddpm = np.array([ddim_sigma(schedule_lin, int(t), int(t) - 1, 1.0) ** 2 for t in ts])
err_var = max(relative_error(sigma2_formula, schedule_lin.posterior_variance[ts]),
              relative_error(sigma2_tinyddpm, schedule_lin.posterior_variance[ts]))
check("eta = 1, t' = t - 1: sigma^2 == beta_tilde_t for t = 1..999", err_var < 1e-12,
      f"max relative error {err_var:.1e}")
x_t = rng.standard_normal((4, 1, 28, 28))
worst = 0.0
for t in (1, 10, 250, 999):
    eps_implied = eps_from_x0(schedule_lin, x_t, t, x0_hat)
    ddim_mean, ddim_std = ddim_step(schedule_lin, t, t - 1, x0_hat, eps_implied, eta=1.0)
    ddpm_mean, ddpm_std = ddpm_step(schedule_lin, x_t, t, x0_hat, "fixed_small")
    worst = max(worst, relative_error(ddim_mean, ddpm_mean), abs(ddim_std - ddpm_std) / ddpm_std)
check("eta = 1, t' = t - 1: DDIM's mean and std == DDPM's (ddpm_step, fixed_small)", worst < 1e-10,
      f"max relative error {worst:.1e}")
# With skipped steps (t' = t - 100) eta = 1 is still a valid sampler, only no longer DDPM's chain.

# %% 3. A trained network, and eta = 0 as a deterministic map
# ---------------------------------------------------------------------------------------------------
section("3. A trained network, and eta = 0 as a deterministic map")
params, config, schedule, where = trained_model()
print(f"  network: {where}")
# The samplers call model(x_t, t, labels). We sample digits with classifier-free guidance (lesson 15) at the
# scale its training config samples with (config.guidance), clip x0_hat to the data range [-1, 1], and
# re-derive eps_hat from the clipped x0_hat (use_clipped_model_output) so the two estimates stay consistent,
# as tinyddpm's sample_digits does for DDIM.
guided = GuidedModel(unet_model(params, config.unet), config.guidance, config.unet.null_label)
digits = np.arange(4) if FAST else np.arange(10)                          # one sample per digit
dtype = params["conv_in.w"].dtype
x_T = np.random.default_rng(1).standard_normal((len(digits), 1, 28, 28)).astype(dtype)   # the starting noise


def ddim(num_steps, eta=0.0, spacing="trailing", seed=0):
    """DDIM samples of `digits` from the fixed starting noise x_T; `seed` drives only the per-step noise z."""
    return ddim_sample(guided, schedule, num_steps=num_steps, eta=eta, spacing=spacing, labels=digits, x_T=x_T,
                       clip="static", use_clipped_model_output=True, seed=seed, progress=False)


ETA_STEPS = 4 if FAST else 20
a0, b0 = ddim(ETA_STEPS, eta=0.0, seed=1), ddim(ETA_STEPS, eta=0.0, seed=2)
a1, b1 = ddim(ETA_STEPS, eta=1.0, seed=1), ddim(ETA_STEPS, eta=1.0, seed=2)
diff0, diff1 = float(np.max(np.abs(a0 - b0))), float(np.max(np.abs(a1 - b1)))
check("eta = 0: same starting noise, different seeds -> the same images", diff0 == 0.0,
      f"max |difference| {diff0:.1e}")
check("eta = 1: same starting noise, different seeds -> different images", diff1 > 0.1,
      f"max |difference| {diff1:.2f}")
names = [str(d) for d in digits]
saved(plot_sample_grid(out / "eta_comparison.png", np.stack([a0, b0, a1, b1]), col_labels=names,
                       row_labels=["eta 0, seed 1", "eta 0, seed 2", "eta 1, seed 1", "eta 1, seed 2"],
                       title=f"DDIM, {ETA_STEPS} steps, one starting noise: "
                             "eta = 0 ignores the seed, eta = 1 does not"))
# eta = 0 adds no noise after x_T, so with few steps it keeps more detail; eta = 1 re-noises at every step and
# needs more steps to wash that noise out again.

# %% 4. Quality against the number of steps
# ---------------------------------------------------------------------------------------------------
section("4. Quality against the number of steps")
# eta = 0 DDIM is a solver of an ordinary differential equation from noise to data (the "probability flow");
# fewer steps is a coarser discretisation of the same path. So as the step count grows, the samples from one
# x_T must converge to one set of images: the ODE's solution, which we approximate by a many-step run.
STEP_COUNTS = (2, 4, 8) if FAST else (5, 10, 20, 50)
REFERENCE_STEPS = 16 if FAST else 100
runs = [ddim(n) for n in STEP_COUNTS]
reference = ddim(REFERENCE_STEPS)
rms = [float(np.sqrt(np.mean((x - reference) ** 2))) for x in runs]
for n, r in zip(STEP_COUNTS, rms):
    print(f"    {n:3d} steps: RMS distance to the {REFERENCE_STEPS}-step images {r:.4f}")
check(f"more steps land closer to the {REFERENCE_STEPS}-step solution", rms[-1] < 0.5 * rms[0],
      f"RMS {rms[0]:.3f} at {STEP_COUNTS[0]} steps -> {rms[-1]:.3f} at {STEP_COUNTS[-1]}")
rows = runs + [reference]
saved(plot_sample_grid(out / "steps_grid.png", np.stack(rows), col_labels=names,
                       row_labels=[f"{n} steps" for n in STEP_COUNTS + (REFERENCE_STEPS,)],
                       title="DDIM (eta = 0): one starting noise, more and more steps"))
fig, ax = plt.subplots(figsize=(6, 4))
ax.loglog(STEP_COUNTS, rms, "o-", linewidth=2)
ax.set(xlabel="DDIM steps (model calls)", ylabel=f"RMS pixel distance to {REFERENCE_STEPS} steps",
       title="eta = 0 converges as the steps grow")
ax.grid(True, which="both", alpha=0.3)
fig.tight_layout()
fig.savefig(out / "steps_convergence.png")
plt.close(fig)
saved(out / "steps_convergence.png")

# %% 5. Which timesteps: linspace, leading, trailing
# ---------------------------------------------------------------------------------------------------
section("5. Which timesteps: linspace, leading, trailing")
# With n steps out of T = 1000 the sampler must pick n timesteps (the names are those of Hugging Face
# diffusers, and Table 2 of Lin et al. 2023):
#     linspace   round(linspace(0, T - 1, n)), reversed             n = 10: 999 888 777 ... 111 0
#     leading    k * (T // n) for k = n-1 .. 0                      n = 10: 900 800 ... 100 0
#     trailing   round(T - k T / n) - 1 for k = 0 .. n-1            n = 10: 999 899 ... 199 99
# and each step goes from t to t - T // n (to the clean image past 0).
# 'leading' never starts at t = 999: its first model call is told that pure noise x_T is x_900, which still
# holds a little signal (abar_900 > abar_999), so the network looks for signal that is not there.
T = schedule.num_timesteps
worst = 0
for n in (3, 5, 7, 10, 20, 50):
    k = np.arange(n)
    mine = {"linspace": np.round(np.linspace(0, T - 1, n))[::-1],
            "leading": (k * (T // n))[::-1],
            "trailing": np.round(T - k * T / n) - 1}
    for spacing in SPACINGS:
        worst = max(worst, int(np.max(np.abs(mine[spacing] - ddim_timesteps(T, n, spacing)))))
check("my three spacings == tinyddpm.diffusion.ddim_timesteps (n = 3 to 50)", worst == 0,
      f"max difference {worst} timesteps")

SPACING_STEPS = 3 if FAST else 5
fig, ax = plt.subplots(figsize=(9, 3.6))
ax_ab = ax.twinx()                                  # alpha_bar_t behind the dots, on its own axis
ax_ab.plot(np.arange(T), schedule.alpha_bar, color="0.65", linewidth=2)
ax_ab.set_ylabel(r"$\bar\alpha_t$ (grey curve)", color="0.4")
ax_ab.set_ylim(-0.05, 1.05)
for i, spacing in enumerate(SPACINGS):
    ts_n = ddim_timesteps(T, 10, spacing)
    ax.scatter(ts_n, np.full(len(ts_n), i), s=40, zorder=3)
    ax.annotate(f"first {ts_n[0]}, last {ts_n[-1]}", (500, i + 0.25), ha="center", fontsize=9)
    print(f"    {spacing:9s} 10 steps: {ts_n.tolist()}   abar at the first: {schedule.alpha_bar[ts_n[0]]:.2e}")
ax.set(xlabel="timestep t  (t = 999: pure noise)", xlim=(-20, T + 20), ylim=(-0.6, len(SPACINGS) - 0.2),
       yticks=range(len(SPACINGS)), yticklabels=SPACINGS,
       title=f"The 10 timesteps DDIM visits with each spacing ({schedule.name} schedule, T = {T})")
ax.grid(True, axis="x", alpha=0.3)
fig.tight_layout()
fig.savefig(out / "spacings.png")
plt.close(fig)
saved(out / "spacings.png")

by_spacing = [ddim(SPACING_STEPS, spacing=spacing) for spacing in SPACINGS]
for spacing, x in zip(SPACINGS, by_spacing):
    r = float(np.sqrt(np.mean((x - reference) ** 2)))
    print(f"    {spacing:9s} {SPACING_STEPS} steps: RMS distance to the {REFERENCE_STEPS}-step images {r:.4f}")
saved(plot_sample_grid(out / "spacing_samples.png", np.stack(by_spacing), col_labels=names,
                       row_labels=list(SPACINGS),
                       title=f"DDIM (eta = 0), {SPACING_STEPS} steps, one starting noise, three spacings"))

# %% Exercises
# ---------------------------------------------------------------------------------------------------
try_this(__doc__)
finish(started)
