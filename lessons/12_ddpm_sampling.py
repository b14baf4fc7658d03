"""Lesson 12: DDPM sampling.

What you will learn
  - The posterior of one step back when the data is known,
        q(x_{t-1} | x_t, x0) = N( mu_tilde(x_t, x0), beta_tilde_t I ),
    derived by completing the square, checked against tinyddpm's schedule tables, and checked again by
    sampling (Bayes' rule seen in a million draws).
  - How DDPM's ancestral sampler uses it: replace the unknown x0 by the network's estimate, step from
    t = T-1 down to 0, adding fresh noise with variance sigma_t^2 = beta_tilde_t ('fixed_small') or
    beta_t ('fixed_large'), and how different those two choices are.
  - That the sampler is right, shown on data whose perfect denoiser is known in closed form.
  - What 1000 steps of it look like with a trained network: x_t and the predicted x0 along the way.

Run it:
    python lessons/12_ddpm_sampling.py          # 1-1.5 minutes on one CPU core: 1000 network calls (plus, once,
                                                # the lessons' network if none exists)
    python lessons/12_ddpm_sampling.py --fast   # tiny sizes, the same code paths (what the tests run)

Figures, written to lessons/output/12_ddpm_sampling/:
    posterior.png     pairs (x_t, x_{t-1}) drawn forward at t = 1: the posterior mean, and the spread around it
    variances.png     beta_t and beta_tilde_t against t, for the linear and cosine schedules, and their ratio
    trajectory.png    a few digits being sampled: x_t and the predicted x0 at several t
    samples.png       the finished digits, one per label
    denoising.gif     the whole run, x_t beside the predicted x0

Try this
  1. run:    set VARIANCE = "fixed_large" at the top and rerun. The Gaussian check still passes; look at how
             the digits and the late frames of trajectory.png change with the larger noise.
  2. modify: in ddpm_in_the_open, add the noise at t = 0 too (remove both `if t > 0`). Predict what changes
             with VARIANCE = "fixed_small" (what is beta_tilde_0?) and with "fixed_large", and which check
             notices (the range check only can when the digits touch -1 or 1).
  3. create: write a "skipping" DDPM that visits only every 10th timestep: build a new beta for each jump,
             beta'_k = 1 - abar_{t_k} / abar_{t_{k-1}}, and reuse the posterior formulas with it. Compare its
             100-step digits with the 1000-step ones, and with tinyddpm's ddim_sample(..., eta=1.0), which
             takes the same jumps.

Next: lessons/13_ddim.py - DDIM: a deterministic sampler that skips timesteps.
"""
# %%
import math
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import (FAST, banner, check, finish, output_dir, relative_error, saved, section, try_this,  # noqa: E402
                     trained_model)
from tinyddpm.diffusion import ddpm_sample, ddpm_step, make_schedule  # noqa: E402
from tinyddpm.sampling import unet_model  # noqa: E402
from tinyddpm.viz import plot_sample_grid, save_denoising_gif, side_by_side  # noqa: E402

# %%
started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 12: DDPM sampling")

VARIANCE = "fixed_small"                      # sigma_t^2 = beta_tilde_t; "fixed_large": sigma_t^2 = beta_t
N_DRAWS = 200_000 if FAST else 1_000_000      # Monte Carlo pairs per timestep in section 2
N_GAUSS = 4_000 if FAST else 20_000           # scalar "images" in the Gaussian sampler check
DIGITS = [3, 7] if FAST else list(range(10))  # one sample of each label
FAST_T = 100                                  # fast mode samples with a 100-step schedule (see section 6)

# %%
# ---------------------------------------------------------------------------------------------------
section("1. The posterior q(x_{t-1} | x_t, x0), derived")
# Notation (lesson 01): alpha_t = 1 - beta_t, abar_t = alpha_0 alpha_1 ... alpha_t, abar_{-1} = 1.
# Two Gaussians we know:
#     q(x_t | x_{t-1})  = N( sqrt(alpha_t) x_{t-1},  beta_t )            one forward step
#     q(x_{t-1} | x0)   = N( sqrt(abar_{t-1}) x0,   1 - abar_{t-1} )     the jump from the data
# Bayes: q(x_{t-1} | x_t, x0) is proportional to their product, as a function of x_{t-1}. The log of the
# product is a quadratic in x_{t-1}:
#     -1/2 [ (x_t - sqrt(alpha_t) x_{t-1})^2 / beta_t  +  (x_{t-1} - sqrt(abar_{t-1}) x0)^2 / (1 - abar_{t-1}) ]
# so the posterior is Gaussian. Its precision (1/variance) is the coefficient of x_{t-1}^2:
#     alpha_t / beta_t + 1 / (1 - abar_{t-1}) = (alpha_t (1 - abar_{t-1}) + beta_t) / (beta_t (1 - abar_{t-1}))
#                                             = (1 - abar_t) / (beta_t (1 - abar_{t-1}))    [alpha_t + beta_t = 1]
#     beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t
# and its mean is variance times the coefficient of x_{t-1} (the linear terms):
#     mu_tilde = beta_tilde_t ( sqrt(alpha_t) / beta_t x_t + sqrt(abar_{t-1}) / (1 - abar_{t-1}) x0 )
#              = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0  +  sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
#              =            coef1_t x0                      +              coef2_t x_t
schedules = {name: make_schedule(name, 1000) for name in ("linear", "cosine")}
tables = {}
for name, sch in schedules.items():
    betas = sch.betas
    alphas = 1 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    coef1 = np.sqrt(abar_prev) * betas / (1 - abar)
    coef2 = np.sqrt(alphas) * (1 - abar_prev) / (1 - abar)
    beta_tilde = (1 - abar_prev) / (1 - abar) * betas
    tables[name] = dict(betas=betas, alphas=alphas, abar=abar, abar_prev=abar_prev, coef1=coef1, coef2=coef2,
                        beta_tilde=beta_tilde)
    err = max(relative_error(coef1, sch.posterior_mean_coef1), relative_error(coef2, sch.posterior_mean_coef2),
              relative_error(beta_tilde, sch.posterior_variance))
    check(f"coef1, coef2, beta_tilde in NumPy == tinyddpm's {name} schedule tables", err < 1e-13,
          f"T = {len(betas)}, max relative error {err:.1e}")
tb = tables["linear"]
T = len(tb["betas"])

# %% 2. The posterior, checked numerically
# ---------------------------------------------------------------------------------------------------
section("2. The posterior, checked numerically")
# (a) Bayes' rule pointwise: on a grid of x_{t-1} values,
#         log q(x_t | x_{t-1}) + log q(x_{t-1} | x0) - log q(x_t | x0)  ==  log N(x_{t-1}; mu_tilde, beta_tilde)
#     where q(x_t | x0) = N(sqrt(abar_t) x0, 1 - abar_t) is the normaliser (it does not depend on x_{t-1}).


def log_normal(x, mean, var):
    return -0.5 * np.log(2 * np.pi * var) - (x - mean) ** 2 / (2 * var)


x0_val = 0.7
worst = 0.0
for t in (1, 10, 100, 500, 999):
    x_t_val = np.sqrt(tb["abar"][t]) * x0_val + np.sqrt(1 - tb["abar"][t]) * 0.3       # some x_t
    mu = tb["coef1"][t] * x0_val + tb["coef2"][t] * x_t_val
    grid = mu + np.linspace(-5, 5, 401) * np.sqrt(tb["beta_tilde"][t])               # x_{t-1} values
    bayes = (log_normal(x_t_val, np.sqrt(tb["alphas"][t]) * grid, tb["betas"][t])
             + log_normal(grid, np.sqrt(tb["abar_prev"][t]) * x0_val, 1 - tb["abar_prev"][t])
             - log_normal(x_t_val, np.sqrt(tb["abar"][t]) * x0_val, 1 - tb["abar"][t]))
    worst = max(worst, float(np.max(np.abs(bayes - log_normal(grid, mu, tb["beta_tilde"][t])))))
check("q(x_t|x_{t-1}) q(x_{t-1}|x0) / q(x_t|x0) == N(x_{t-1}; mu_tilde, beta_tilde), pointwise", worst < 1e-8,
      f"t = 1, 10, 100, 500, 999; max |difference of log densities| {worst:.1e}")

# (b) The same by sampling, which is what the formula promises: draw x_{t-1} ~ q(x_{t-1} | x0) and then
#     x_t ~ q(x_t | x_{t-1}), many times. Among the pairs, x_{t-1} given x_t must be a straight line in x_t
#     (slope coef2, intercept coef1 x0) with a scatter of variance beta_tilde around it. A least-squares fit
#     measures all three, and its standard errors say how close a correct formula must come.
rng = np.random.default_rng(0)
pairs = {}
z_worst, z_large = 0.0, 0.0
for t in (1, 10, 100, 999):
    x_prev = np.sqrt(tb["abar_prev"][t]) * x0_val + np.sqrt(1 - tb["abar_prev"][t]) * rng.standard_normal(N_DRAWS)
    x_t_s = np.sqrt(tb["alphas"][t]) * x_prev + np.sqrt(tb["betas"][t]) * rng.standard_normal(N_DRAWS)
    pairs[t] = (x_t_s, x_prev)
    xc = x_t_s - x_t_s.mean()
    slope = np.sum(xc * (x_prev - x_prev.mean())) / np.sum(xc * xc)
    intercept = x_prev.mean() - slope * x_t_s.mean()
    resid_var = np.mean((x_prev - intercept - slope * x_t_s) ** 2)
    se_slope = np.sqrt(resid_var / np.sum(xc * xc))
    se_icpt = np.sqrt(resid_var * (1 / N_DRAWS + x_t_s.mean() ** 2 / np.sum(xc * xc)))
    se_var = resid_var * np.sqrt(2 / N_DRAWS)
    z = [(slope - tb["coef2"][t]) / se_slope, (intercept - tb["coef1"][t] * x0_val) / se_icpt,
         (resid_var - tb["beta_tilde"][t]) / se_var]
    z_worst = max(z_worst, *np.abs(z))
    z_large = max(z_large, abs(resid_var - tb["betas"][t]) / se_var)
    print(f"  t = {t:3d}: slope {slope:.5f} (coef2 {tb['coef2'][t]:.5f}), intercept {intercept:+.5f} "
          f"(coef1 x0 {tb['coef1'][t] * x0_val:+.5f}), scatter variance {resid_var:.3e} "
          f"(beta_tilde {tb['beta_tilde'][t]:.3e}, beta {tb['betas'][t]:.3e})")
check(f"{N_DRAWS:,} forward draws per t agree with mu_tilde and beta_tilde", z_worst < 5,
      f"worst deviation {z_worst:.1f} standard errors (limit 5); beta_t as the variance would be "
      f"{z_large:.0f} standard errors off")

# %% 3. One reverse step: tinyddpm.diffusion.ddpm_step
# ---------------------------------------------------------------------------------------------------
section("3. One reverse step: tinyddpm.diffusion.ddpm_step")
# Sampling does not know x0. DDPM's reverse step uses the network's estimate instead,
#     x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t),
#     x_{t-1} = coef1_t x0_hat + coef2_t x_t + sigma_t z,      z ~ N(0, I),
# with no noise at the last step (t = 0): there coef1_0 = 1 and coef2_0 = 0, so the sample *is* x0_hat.
sch = schedules["linear"]
x_t = rng.standard_normal((3, 1, 4, 4))
x0_guess = rng.uniform(-1, 1, size=(3, 1, 4, 4))
worst = 0.0
for t in (0, 1, 37, 500, 999):
    for variance, var_table in (("fixed_small", tb["beta_tilde"]), ("fixed_large", tb["betas"])):
        mean, std = ddpm_step(sch, x_t, t, x0_guess, variance)
        mine_std = 0.0 if t == 0 else math.sqrt(var_table[t])
        worst = max(worst, relative_error(mean, tb["coef1"][t] * x0_guess + tb["coef2"][t] * x_t),
                    abs(std - mine_std) / max(mine_std, 1e-300))
check("ddpm_step's mean and std == coef1 x0 + coef2 x_t and sqrt(beta_tilde or beta)", worst < 1e-12,
      f"t = 0, 1, 37, 500, 999, both variances, max relative error {worst:.1e}")
mean0, std0 = ddpm_step(sch, x_t, 0, x0_guess)
check("at t = 0 the step adds no noise and returns x0_hat", std0 == 0 and relative_error(mean0, x0_guess) < 1e-12,
      f"std {std0}, max relative error of the mean {relative_error(mean0, x0_guess):.1e} "
      f"(coef1_0 = beta_0 / (1 - abar_0) is 1 up to the rounding of 1 - abar_0)")

# %% 4. Two choices for the variance sigma_t^2
# ---------------------------------------------------------------------------------------------------
section("4. Two choices for the variance sigma_t^2")
# The true reverse step p(x_{t-1} | x_t) is not Gaussian in general, but Ho et al. fix its variance to one
# of two values that are exactly right in two extremes: beta_tilde_t is right when the data is a single
# point (x0 known, the posterior above); beta_t is right when the data is itself N(0, I). Their ratio is
#     beta_tilde_t / beta_t = (1 - abar_{t-1}) / (1 - abar_t)  <  1,
# far below 1 at small t (where abar_{t-1} and abar_t are both near 1) and almost exactly 1 once the
# signal is gone. So the two samplers differ only in the last few dozen steps.
for name, tab in tables.items():
    ratio = tab["beta_tilde"][1:] / tab["betas"][1:]
    above = 1 + int(np.argmax(ratio > 0.99))
    print(f"  {name:6s}: ratio at t = 1: {ratio[0]:.3f}, t = 10: {ratio[9]:.3f}, t = 100: {ratio[99]:.4f}; "
          f"above 0.99 from t = {above}")
    check(f"beta_tilde_t < beta_t at every t >= 1 ({name})", bool(np.all(tab["beta_tilde"][1:] < tab["betas"][1:])),
          f"largest ratio {ratio.max():.6f}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
ts = np.arange(1, T)
for (name, tab), color in zip(tables.items(), ("tab:blue", "tab:orange")):
    ax1.plot(ts, tab["betas"][1:], color=color, label=f"beta_t ({name}): 'fixed_large'")
    ax1.plot(ts, tab["beta_tilde"][1:], color=color, ls="--", label=f"beta_tilde_t ({name}): 'fixed_small'")
    ax2.plot(ts, tab["beta_tilde"][1:] / tab["betas"][1:], color=color, label=name)
ax1.set(xscale="log", yscale="log", xlabel="timestep t (log)", ylabel="variance of the noise added (log)",
        title="The two variance choices of a DDPM step")
ax2.set(xscale="log", xlabel="timestep t (log)", ylabel="beta_tilde_t / beta_t",
        title="Their ratio (1 - abar_{t-1}) / (1 - abar_t): they differ only at small t")
for a in (ax1, ax2):
    a.grid(True, which="both", alpha=0.3)
    a.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "variances.png", dpi=100)
plt.close(fig)
saved(out / "variances.png")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
x_t_s, x_prev = pairs[1]                                       # t = 1: where the two variances differ most
line = np.linspace(x_t_s.min(), x_t_s.max(), 50)
mu_line = tb["coef1"][1] * x0_val + tb["coef2"][1] * line
ax1.scatter(x_t_s[:3000], x_prev[:3000], s=2, alpha=0.3, color="0.4", label="forward draws (x_t, x_{t-1})")
ax1.plot(line, mu_line, color="tab:red", label="posterior mean mu_tilde(x_t, x0)")
for var, style, label in ((tb["beta_tilde"][1], "-", "+-2 sqrt(beta_tilde)"), (tb["betas"][1], ":", "+-2 sqrt(beta)")):
    ax1.plot(line, mu_line + 2 * np.sqrt(var), color="tab:blue", ls=style, label=label)
    ax1.plot(line, mu_line - 2 * np.sqrt(var), color="tab:blue", ls=style)
ax1.set(xlabel="x_t", ylabel="x_{t-1}", title=f"t = 1, x0 = {x0_val}: x_{{t-1}} given x_t is a line plus noise")
ax1.legend(fontsize=8, markerscale=4)
resid = x_prev - (tb["coef1"][1] * x0_val + tb["coef2"][1] * x_t_s)
r = np.linspace(resid.min(), resid.max(), 200)
ax2.hist(resid, bins=100, density=True, color="0.75", label="x_{t-1} - mu_tilde over all draws")
ax2.plot(r, np.exp(log_normal(r, 0.0, tb["beta_tilde"][1])), color="tab:blue", label="N(0, beta_tilde_1)")
ax2.plot(r, np.exp(log_normal(r, 0.0, tb["betas"][1])), color="tab:blue", ls=":", label="N(0, beta_1)")
ax2.set(xlabel="x_{t-1} - mu_tilde", ylabel="density",
        title="The spread around mu_tilde: variance beta_tilde, not beta")
ax2.legend(fontsize=8)
for a in (ax1, ax2):
    a.grid(True, alpha=0.3)
fig.tight_layout()
fig.savefig(out / "posterior.png", dpi=100)
plt.close(fig)
saved(out / "posterior.png")

# %% 5. The whole sampler, proven on Gaussian data
# ---------------------------------------------------------------------------------------------------
section("5. The whole sampler, proven on Gaussian data")
# The loop of DDPM, written out. model(x_t, t, labels) predicts the noise; the loop turns it into x0_hat,
# takes the posterior mean, adds sigma_t z (not at t = 0), and goes on from t = T-1 down to 0. With
# clip=True the estimate x0_hat is clipped to [-1, 1], the range of the data (what sample_digits does).
# Every step is checked against tinyddpm's ddpm_step on the way.


def ddpm_in_the_open(model, schedule, x_T, labels=None, seed=0, variance=VARIANCE, clip=False, record=None):
    """x_T -> a sample, one posterior step per t; record(t, x_t, x0_hat) if given. Returns (x0, worst error)."""
    rng = np.random.default_rng(seed)                   # the same generator ddpm_sample makes from its seed
    sqrt_ab, sqrt_1m_ab = schedule.sqrt_alpha_bar, schedule.sqrt_one_minus_alpha_bar
    var_table = schedule.posterior_variance if variance == "fixed_small" else schedule.betas
    x, worst = x_T, 0.0
    for t in range(schedule.num_timesteps - 1, -1, -1):
        eps_hat = model(x, np.full(len(x), t), labels)
        x0_hat = (x - float(sqrt_1m_ab[t]) * eps_hat) / float(sqrt_ab[t])
        if clip:
            x0_hat = np.clip(x0_hat, -1.0, 1.0)
        if record is not None:
            record(t, x, x0_hat)
        mean = float(schedule.posterior_mean_coef1[t]) * x0_hat + float(schedule.posterior_mean_coef2[t]) * x
        std = math.sqrt(var_table[t]) if t > 0 else 0.0
        worst = max(worst, relative_error(mean, ddpm_step(schedule, x, t, x0_hat, variance).mean))
        x = mean + std * rng.standard_normal(x.shape, dtype=x.dtype) if t > 0 else mean
    return x, worst


# Data whose best denoiser we can write down: every "image" is one number x0 ~ N(MU, S^2). Then
# x_t = a x0 + b eps (a = sqrt(abar_t), b = sqrt(1 - abar_t)) is Gaussian too, Var(x_t) = a^2 S^2 + b^2,
# Cov(eps, x_t) = b, and the best prediction of the noise is the regression
#     E[eps | x_t] = b (x_t - a MU) / (a^2 S^2 + b^2).
# A correct sampler driven by it must turn N(0, 1) noise into N(MU, S^2).
MU, S = 0.2, 0.6


def gaussian_eps(x_t, t, labels):
    ab = sch.alpha_bar[t][:, None, None, None]          # (N, 1, 1, 1)
    return np.sqrt(1 - ab) * (x_t - np.sqrt(ab) * MU) / (ab * S * S + 1 - ab)


x_T = rng.standard_normal((N_GAUSS, 1, 1, 1))
tic = time.perf_counter()
for variance in ("fixed_small", "fixed_large"):
    mine, step_err = ddpm_in_the_open(gaussian_eps, sch, x_T, seed=1, variance=variance)
    lib = ddpm_sample(gaussian_eps, sch, x_T=x_T, seed=1, variance=variance, progress=False)
    err = relative_error(mine, lib)
    check(f"ddpm_in_the_open == tinyddpm's ddpm_sample, same seed ({variance})", err < 1e-12 and step_err < 1e-12,
          f"{N_GAUSS:,} samples x {T} steps, max relative error {err:.1e} (per step vs ddpm_step {step_err:.1e})")
    se_mean, se_std = S / np.sqrt(N_GAUSS), S / np.sqrt(2 * N_GAUSS)
    # 5 standard errors of the batch, plus 0.006 for the sampler's own small discretisation error (exact
    # values for this data: std -0.004 with fixed_small, +0.0006 with fixed_large; tests/test_samplers.py).
    ok = abs(mine.mean() - MU) < 5 * se_mean and abs(mine.std() - S) < 5 * se_std + 0.006
    check(f"1000 DDPM steps turn N(0, 1) into N({MU}, {S}^2) ({variance})", ok,
          f"mean {mine.mean():.4f} (+-{se_mean:.4f}), std {mine.std():.4f} (+-{se_std:.4f})")
print(f"  ({time.perf_counter() - tic:.1f} s for the four Gaussian runs)")

# %% 6. Sampling digits with a trained network
# ---------------------------------------------------------------------------------------------------
section("6. Sampling digits with a trained network")
params, config, schedule, where = trained_model()
print(f"  network: {where}")
# One network call per step makes this the slow part: 1000 calls for a batch of one digit per label, with
# the plain conditional prediction (classifier-free guidance, lesson 15, sharpens the digits at twice the
# cost). How good the digits are is the network's doing: DDPM asks it for a prediction at every one of the
# 1000 noise levels, so a briefly trained network's weak spots show as blur and grey backgrounds (the
# lessons' own 360-step network); the checkpoint of examples/train_mnist.py draws cleaner ones.
# Fast mode (for the tests, whose network is untrained noise anyway) runs the same loop on a 100-step schedule.
if FAST:
    schedule = make_schedule(config.schedule, FAST_T)
T_net = schedule.num_timesteps
SHOW_T = [T_net - 1] + [int(f * T_net) for f in (0.8, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05)] + [0]
net = unet_model(params, config.unet)                   # model(x_t, t, labels) -> eps_hat, eval mode
labels = np.array(DIGITS) if config.unet.num_classes is not None else None
x_T = np.random.default_rng(2).standard_normal((len(DIGITS), 1, 28, 28)).astype(params["conv_in.w"].dtype)
frames, frame_t, shown = [], [], {}
gif_rows = 2 if len(DIGITS) >= 6 and len(DIGITS) % 2 == 0 else 1        # 10 digits: two rows of five in the GIF


def record(t, x, x0_hat):
    if t in SHOW_T:
        shown[t] = (x.copy(), x0_hat.copy())
    if t % (T_net // 25) == 0 or t == T_net - 1:
        frames.append(side_by_side(x.reshape((gif_rows, -1) + x.shape[1:]),              # (rows, cols, C, H, W)
                                   x0_hat.reshape((gif_rows, -1) + x.shape[1:])))
        frame_t.append(t)


tic = time.perf_counter()
samples, step_err = ddpm_in_the_open(net, schedule, x_T, labels, seed=3, clip=True, record=record)
seconds = time.perf_counter() - tic
print(f"  {len(DIGITS)} digits x {schedule.num_timesteps} steps in {seconds:.1f} s "
      f"({1000 * seconds / schedule.num_timesteps:.0f} ms per step, {VARIANCE}, x0_hat clipped to [-1, 1])")
check(f"every one of the {T_net} steps == ddpm_step", step_err < 1e-6, f"max relative error {step_err:.1e} (float32)")
check("the samples lie in [-1, 1] (the last step returns the clipped x0_hat, without noise)",
      float(np.abs(samples).max()) <= 1.0, f"max |x| = {float(np.abs(samples).max()):.4f}")

n_rows = min(4, len(DIGITS))
grid = np.stack([np.stack([shown[t][k][:n_rows] for t in SHOW_T], axis=1) for k in (0, 1)], axis=1)
grid = grid.reshape(2 * n_rows, len(SHOW_T), 1, 28, 28)                        # rows: x_t, x0_hat, x_t, ...
plot_sample_grid(out / "trajectory.png", grid,
                 row_labels=[f"{what} '{d}'" for d in DIGITS[:n_rows] for what in ("x_t", "x0_hat")],
                 col_labels=[f"t={t}" for t in SHOW_T],
                 title="DDPM sampling: the state x_t and the network's x0 estimate as t falls")
saved(out / "trajectory.png")
plot_sample_grid(out / "samples.png", samples[None], col_labels=[str(d) for d in DIGITS],
                 title=f"DDPM, {schedule.num_timesteps} steps, {VARIANCE}")
saved(out / "samples.png")
save_denoising_gif(out / "denoising.gif", frames, captions=[f"t = {t}: x_t | x0_hat" for t in frame_t])
saved(out / "denoising.gif")

# %% Exercises
try_this(__doc__)
finish(started)
