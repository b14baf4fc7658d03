"""Lesson 21: the score view. What a noise-predicting network really estimates, and why DDIM is an ODE solver.

What you will learn
  - Tweedie's formula: the best guess of the clean data from a noisy sample is one step along the score,
        E[x0 | x_t] = (x_t + (1 - abar_t) grad log p_t(x_t)) / sqrt(abar_t),
    the x0_hat that lessons 13 and 14 compute from the network's eps. Checked on a 1-D Gaussian mixture,
    where p_t, its score and E[x0 | x_t] are all exact (a mixture of Gaussians, noised, is still one).
  - The denoising identity of lessons 15-16, derived: the best noise prediction is a scaled score,
        E[eps | x_t] = -sqrt(1 - abar_t) grad log p_t(x_t),
    so training a network to predict the noise is training it to estimate the score.
  - Denoising score matching (Vincent 2011): regressing onto the score of q(x_t | x0), which is known, has the
    unknown score of p_t as its minimiser. A small model fitted that way recovers the mixture's score.
  - The probability-flow ODE (Song et al. 2021), dx/dt = f(t) x - 1/2 g(t)^2 grad log p_t(x): the deterministic
    path with the same marginals p_t as the noising process. In the variables y = x / sqrt(abar) and
    sigma = sqrt((1 - abar) / abar) it reads dy/dsigma = eps_hat, and DDIM (eta = 0) is exactly its solution with
    eps_hat held fixed over each step: a first-order solver. Checked against a fine RK4 solve.
  - v-prediction, v = sqrt(abar) eps - sqrt(1 - abar) x0: the probability-flow ODE's velocity in the angle
    phi = arctan(sigma), and why it helps at high noise, where an eps-model's x0_hat multiplies every error in
    eps by sqrt(1 - abar) / sqrt(abar) (157 at t = 999).

Run it
  python lessons/21_scores.py          # under half a minute on 2 CPU cores; no network, everything is exact
  python lessons/21_scores.py --fast   # fewer samples and steps, the same code paths (what the tests run)

Figures (in lessons/output/21_scores/)
  marginals.png        the mixture noised to five timesteps: p_t in closed form over histograms of q_sample
  tweedie.png          at one timestep: the score, E[x0 | x_t] by Tweedie against binned Monte Carlo, E[eps | x_t]
  dsm.png              denoising score matching: the noisy targets, the exact score and the fitted one
  flow.png             probability-flow paths from noise to data over p_t, and where they land against the data
  ddim_convergence.png DDIM with the exact score against a fine RK4 solve of the ODE: error against steps
  v_prediction.png     how an error in the model's output reaches x0_hat, for eps, v and x0 models; one-step x0_hat

Try this
  1. run:    set N_DSM to a tenth of its value and rerun. The DSM target -eps / b is noisy with std 1 / b: predict
             at which of DSM_TIMESTEPS the fitted score suffers most (relative to the score's own size), then look.
  2. modify: in ddim_in_the_open, replace the DDIM update by a plain Euler step of the ODE in the angle phi,
             x' = x + (phi' - phi) v_hat (section 6: v_hat is dx/dphi). Predict its order of convergence and
             whether it is closer to the exact solution than DDIM at 20 steps; then try data that is a single
             point (one component, std 0), where DDIM is exact in one step.
  3. create: Heun's method in (y, sigma) (Karras et al. 2022): an Euler (= DDIM) step to sigma', then the average
             of eps_hat at both ends. Measure its order on the mixture, and compare it with DDIM at equal numbers
             of model calls (two per step, one for the last step to sigma = 0).

Next: this is the last lesson; lessons/README.md has the map of the course.
"""
# %%
import math
import time

from _common import FAST, banner, check, finish, output_dir, relative_error, saved, section, try_this

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tinyddpm.diffusion import (ddim_sample, ddim_step, ddim_timesteps, eps_from_x0, make_schedule,  # noqa: E402
                                q_sample, training_target, v_from_eps, x0_from_eps, x0_from_v)

started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 21: the score view")

# The data: a 1-D mixture of three Gaussians inside [-1, 1], like one pixel of a dataset with three kinds of image.
MIX_W = np.array([0.3, 0.45, 0.25])             # weights, summing to 1
MIX_M = np.array([-0.6, 0.1, 0.7])              # means
MIX_S = np.array([0.1, 0.2, 0.08])              # standard deviations
N_MC = 40_000 if FAST else 400_000              # Monte Carlo pairs (x0, x_t) for the checks of sections 1-3
N_DSM = 20_000 if FAST else 200_000             # training pairs per timestep for denoising score matching
DSM_TIMESTEPS = (20, 100, 300, 700)
N_FLOW = 500 if FAST else 4000                  # starting points of the probability-flow ODE
RK4_STEPS = 200 if FAST else 400                # the "exact" ODE solve (its own error: below 1e-6)
DDIM_STEPS = (5, 10, 20, 40, 100, 200) if FAST else (5, 10, 20, 40, 100, 200, 500, 1000)   # divisors of T
schedule = make_schedule("linear", 1000)
T = schedule.num_timesteps
rng = np.random.default_rng(0)


def ab_at(t):
    """a = sqrt(abar_t) and b = sqrt(1 - abar_t) as floats: x_t = a x0 + b eps."""
    return float(schedule.sqrt_alpha_bar[t]), float(schedule.sqrt_one_minus_alpha_bar[t])


def components(x, a, b, w=MIX_W, m=MIX_M, s=MIX_S):
    """The noised mixture at x: log(w_k N(x; a m_k, v_k)) (..., K), v_k = a^2 s_k^2 + b^2, and x, a as (..., 1).

    x_t = a x0 + b eps with x0 from component k is Gaussian, N(a m_k, a^2 s_k^2 + b^2): p_t is again a mixture.
    a and b may be floats or arrays shaped like x (one noise level per point).
    """
    x = np.asarray(x, dtype=np.float64)[..., None]
    a, b = np.asarray(a, dtype=np.float64)[..., None], np.asarray(b, dtype=np.float64)[..., None]
    v = a**2 * s**2 + b**2
    return np.log(w) - 0.5 * np.log(2 * np.pi * v) - 0.5 * (x - a * m) ** 2 / v, v, x, a


def log_p(x, a, b, **mix):
    logc = components(x, a, b, **mix)[0]
    top = logc.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(logc - top).sum(axis=-1, keepdims=True)))[..., 0]


def responsibilities(logc):
    """p(component k | x_t), the softmax of the log terms over k."""
    r = np.exp(logc - logc.max(axis=-1, keepdims=True))
    return r / r.sum(axis=-1, keepdims=True)


def score(x, a, b, **mix):
    """grad_x log p_t(x) in closed form: each component's Gaussian score, weighted by its responsibility."""
    logc, v, x_, a_ = components(x, a, b, **mix)
    return np.sum(responsibilities(logc) * (-(x_ - a_ * mix.get("m", MIX_M)) / v), axis=-1)


def posterior_mean_x0(x, a, b, **mix):
    """E[x0 | x_t = x] by Bayes, without the score: per component the Gaussian regression (m b^2 + a s^2 x) / v."""
    logc, v, x_, a_ = components(x, a, b, **mix)
    m, s = mix.get("m", MIX_M), mix.get("s", MIX_S)
    return np.sum(responsibilities(logc) * (m * (v - a_**2 * s**2) + a_ * s**2 * x_) / v, axis=-1)


def mixture_cdf(x, a, b):
    """P(x_t <= x) for the noised mixture (the erf of each component, summed)."""
    logc, v, x_, a_ = components(x, a, b)
    erf = np.frompyfunc(math.erf, 1, 1)
    z = ((x_ - a_ * MIX_M) / np.sqrt(2 * v)).astype(np.float64)
    return np.sum(MIX_W * 0.5 * (1 + erf(z).astype(np.float64)), axis=-1)


def sample_data(n, rng):
    k = rng.choice(len(MIX_W), size=n, p=MIX_W)
    return MIX_M[k] + MIX_S[k] * rng.standard_normal(n)


# %%
# ---------------------------------------------------------------------------------------------------
section("1. The data, noised: a mixture stays a mixture")
# q(x_t | x0) = N(a x0, b^2) with a = sqrt(abar_t), b = sqrt(1 - abar_t). If x0 comes from component k, N(m_k, s_k^2),
# then x_t = a x0 + b eps is a sum of independent Gaussians: N(a m_k, a^2 s_k^2 + b^2). So the noised density is the
# mixture with every mean scaled by a and every variance grown to a^2 s_k^2 + b^2,
#     p_t(x) = sum_k w_k N(x; a m_k, a^2 s_k^2 + b^2),
# exact at every t, and so is its score grad log p_t(x) = sum_k r_k(x) (-(x - a m_k) / v_k), r_k = p(k | x_t = x).
# Check the density against tinyddpm's q_sample, and the score against finite differences of log p_t.
x0_mc = sample_data(N_MC, rng)
eps_mc = rng.standard_normal(N_MC)
SHOW_T = (0, 50, 150, 400, 999)
bins = 60
tv_worst, tol_tv = 0.0, 2 * math.sqrt(bins / N_MC)
fig, axes = plt.subplots(1, len(SHOW_T), figsize=(3.2 * len(SHOW_T), 3.0))
for ax, t in zip(axes, SHOW_T):
    a, b = ab_at(t)
    x_t = q_sample(schedule, x0_mc, t, eps_mc)
    edges = np.linspace(x_t.min(), x_t.max(), bins + 1)
    measured = np.histogram(x_t, edges)[0] / N_MC
    exact = np.diff(mixture_cdf(edges, a, b))                             # the mass of each bin in closed form
    tv_worst = max(tv_worst, 0.5 * float(np.abs(measured - exact).sum()))
    grid = np.linspace(edges[0], edges[-1], 400)
    ax.hist(x_t, edges, density=True, color="0.8", label="q_sample")
    ax.plot(grid, np.exp(log_p(grid, a, b)), "C0", lw=2, label="p_t, closed form")
    ax.set(title=f"t = {t}: a = {a:.3f}, b = {b:.3f}", xlabel="x_t")
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(out / "marginals.png", dpi=100)
plt.close(fig)
saved(out / "marginals.png")
check(f"q_sample's histograms == the noised mixture in closed form (t = {', '.join(map(str, SHOW_T))})",
      tv_worst < tol_tv, f"largest total-variation distance of the binned mass {tv_worst:.4f} "
      f"(sampling noise allows {tol_tv:.4f})")
x_grid = np.linspace(-2.5, 2.5, 501)
worst = 0.0
for t in (0, 30, 200, 999):
    a, b = ab_at(t)
    h = 1e-5
    numeric = (log_p(x_grid + h, a, b) - log_p(x_grid - h, a, b)) / (2 * h)
    worst = max(worst, relative_error(numeric, score(x_grid, a, b)))
check("the closed-form score == d/dx log p_t by central differences (t = 0, 30, 200, 999)", worst < 1e-6,
      f"max relative error {worst:.1e}")

# %%
# ---------------------------------------------------------------------------------------------------
section("2. Tweedie's formula: E[x0 | x_t] is one step along the score")
# p_t(x) = int p(x0) N(x; a x0, b^2) dx0. Differentiate under the integral; the Gaussian's gradient is itself times
# (a x0 - x) / b^2:
#     grad p_t(x) = int p(x0) N(x; a x0, b^2) (a x0 - x) / b^2 dx0
# Divide by p_t(x): p(x0) N(x; a x0, b^2) / p_t(x) is the posterior p(x0 | x_t = x) (Bayes), so
#     grad log p_t(x) = (a E[x0 | x_t = x] - x) / b^2,   that is   E[x0 | x_t] = (x_t + b^2 grad log p_t(x_t)) / a.
# That is Tweedie's formula (Robbins 1956, Efron 2011): the posterior mean of the clean data needs nothing but the
# density of the noisy data. It is the x0_hat of lesson 13 and lesson 14 (x0_gauss there is this formula for one
# Gaussian): x0_hat = (x_t - b eps_hat) / a is Tweedie's formula with eps_hat = -b score (section 3).


def tweedie(x, a, b, **mix):
    return (x + b**2 * score(x, a, b, **mix)) / a


worst = 0.0
for t in (1, 50, 200, 600, 999):
    a, b = ab_at(t)
    worst = max(worst, relative_error(tweedie(x_grid, a, b), posterior_mean_x0(x_grid, a, b)))
check("Tweedie (x + b^2 score) / a == E[x0 | x_t] by Bayes, component by component (5 timesteps)", worst < 1e-10,
      f"max relative error {worst:.1e} (round-off divided by a = 0.0064 at t = 999)")
# Lesson 14's Gaussian data is the one-component case: its x0_gauss is Tweedie's formula too.
MU, S14 = 0.2, 0.6
one = dict(w=np.array([1.0]), m=np.array([MU]), s=np.array([S14]))
a, b = ab_at(300)
err = relative_error(tweedie(x_grid, a, b, **one), MU + a * S14**2 * (x_grid - a * MU) / (a**2 * S14**2 + b**2))
check("... and for one Gaussian it is lesson 14's x0_gauss, MU + a S^2 (x - a MU) / (a^2 S^2 + b^2)", err < 1e-12,
      f"max relative error {err:.1e}")


def binned_means(x_t, values, n_bins=40, min_count=400):
    """Bins of x_t (equal counts): the bin centres, the mean of `values` in each, and its standard error."""
    order = np.argsort(x_t)
    groups = [g for g in np.array_split(order, n_bins) if len(g) >= min_count]
    centres = np.array([x_t[g].mean() for g in groups])
    means = np.array([values[g].mean() for g in groups])
    stderr = np.array([values[g].std() / math.sqrt(len(g)) for g in groups])
    return centres, means, stderr, groups


# Monte Carlo, independent of all algebra: draw pairs (x0, x_t), group them by x_t, average the x0 in each group. The
# average of the residual x0 - tweedie(x_t) must be zero within its standard error in every group.
T_SHOW = 100
a, b = ab_at(T_SHOW)
x_t = q_sample(schedule, x0_mc, T_SHOW, eps_mc)
tw = tweedie(x_t, a, b)
centres, mean_x0, _, groups = binned_means(x_t, x0_mc)
z_x0 = np.array([(x0_mc[g] - tw[g]).mean() / ((x0_mc[g] - tw[g]).std() / math.sqrt(len(g))) for g in groups])
check(f"t = {T_SHOW}: the average x0 of the pairs near each x_t == Tweedie ({len(groups)} groups of "
      f"{len(groups[0])} pairs)", float(np.abs(z_x0).max()) < 4.5,
      f"largest |residual| {float(np.abs(z_x0).max()):.1f} standard errors")

# %%
# ---------------------------------------------------------------------------------------------------
section("3. The noise is a scaled score: E[eps | x_t] = -b grad log p_t(x_t)")
# eps = (x_t - a x0) / b exactly, for every pair. Average over the x0 that could have made a given x_t:
#     E[eps | x_t] = (x_t - a E[x0 | x_t]) / b = (x_t - x_t - b^2 score) / b = -b grad log p_t(x_t)     (Tweedie)
# The mean squared error E|eps_hat(x_t) - eps|^2 is smallest for eps_hat(x_t) = E[eps | x_t] (a mean minimises the
# squared distance), so a network trained with DDPM's loss estimates -b times the score: the "denoising identity"
# lessons 15 and 16 used to turn guidance into a sum of scores. And x0_hat = (x_t - b eps_hat) / a is Tweedie again.
eps_star = -b * score(x_t, a, b)
z_eps = np.array([(eps_mc[g] - eps_star[g]).mean() / ((eps_mc[g] - eps_star[g]).std() / math.sqrt(len(g)))
                  for g in groups])
check(f"t = {T_SHOW}: the average eps of the pairs near each x_t == -b score", float(np.abs(z_eps).max()) < 4.5,
      f"largest |residual| {float(np.abs(z_eps).max()):.1f} standard errors")
worst = 0.0
for t in (1, 50, 200, 600, 999):
    a_, b_ = ab_at(t)
    worst = max(worst, relative_error(eps_from_x0(schedule, x_grid, t, tweedie(x_grid, a_, b_)),
                                      -b_ * score(x_grid, a_, b_)),
                relative_error(x0_from_eps(schedule, x_grid, t, -b_ * score(x_grid, a_, b_)), tweedie(x_grid, a_, b_)))
check("tinyddpm's eps_from_x0(Tweedie) == -b score, and x0_from_eps(-b score) == Tweedie (5 timesteps)",
      worst < 1e-12, f"max relative error {worst:.1e}")
mse_best = float(np.mean((eps_mc - eps_star) ** 2))
mse_other = [float(np.mean((eps_mc - eps_star - d) ** 2)) for d in (-0.05, 0.05)]
check("... and it has the smallest eps-loss: shifting it either way by 0.05 costs more", min(mse_other) > mse_best,
      f"loss {mse_best:.4f} at -b score, {mse_other[0]:.4f} and {mse_other[1]:.4f} shifted")

fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
in_range = (x_grid > x_t.min()) & (x_grid < x_t.max())
axes[0].plot(x_grid[in_range], score(x_grid[in_range], a, b), lw=2)
axes[0].set(title=f"the score grad log p_t at t = {T_SHOW}", xlabel="x_t")
axes[1].plot(x_grid[in_range], tweedie(x_grid[in_range], a, b), lw=2, label="Tweedie: (x + b² score) / a")
axes[1].plot(centres, mean_x0, "k.", ms=5, label="mean of x0 over pairs near x_t")
axes[1].plot(x_grid[in_range], x_grid[in_range] / a, ":", color="0.5", label="x_t / a (no denoising)")
axes[1].set(title="E[x0 | x_t]", xlabel="x_t", ylim=(-1.2, 1.2))
axes[1].legend(fontsize=7)
_, mean_eps, _, _ = binned_means(x_t, eps_mc)
axes[2].plot(x_grid[in_range], -b * score(x_grid[in_range], a, b), lw=2, label="-b score")
axes[2].plot(centres, mean_eps, "k.", ms=5, label="mean of eps over pairs near x_t")
axes[2].set(title="E[eps | x_t]: what an eps-network learns", xlabel="x_t")
axes[2].legend(fontsize=7)
fig.tight_layout()
fig.savefig(out / "tweedie.png", dpi=100)
plt.close(fig)
saved(out / "tweedie.png")

# %%
# ---------------------------------------------------------------------------------------------------
section("4. Denoising score matching: regress on a score you know, get the one you do not")
# To fit a model s(x) to the score we would minimise the explicit score-matching loss E|s(x_t) - grad log p_t(x_t)|^2,
# but grad log p_t is what we do not know. Vincent (2011): replace it by the score of the noising kernel, known for
# every pair:  grad_{x_t} log q(x_t | x0) = -(x_t - a x0) / b^2 = -eps / b, and minimise
#     J_DSM(s) = E |s(x_t) + eps / b|^2.
# By section 3, E[-eps / b | x_t] = grad log p_t(x_t): the regression's target is noisy, but its mean at every x_t is
# the score, so J_DSM(s) = J_ESM(s) + a constant that does not depend on s, and both have the same minimiser. DDPM's
# loss |eps_hat - eps|^2 is J_DSM for eps_hat = -b s, times b^2: training on it is denoising score matching with the
# weight b^2 at each t.
# A small model, fitted by least squares in closed form: per timestep, s(x) = sum_j c_j phi_j(x) with phi = 1, x and
# Gaussian bumps spread over where x_t lies.


def features(x, centres, width):
    return np.concatenate([np.ones((len(x), 1)), x[:, None], np.exp(-0.5 * ((x[:, None] - centres) / width) ** 2)],
                          axis=1)                                          # (N, 2 + bumps)


def fit_dsm(t, n, rng, bumps=24):
    """Least squares of the DSM target -eps / b on the features of x_t: returns the fitted score function."""
    a, b = ab_at(t)
    x0, eps = sample_data(n, rng), rng.standard_normal(n)
    x = a * x0 + b * eps
    lo, hi = np.quantile(x, [0.002, 0.998])
    centres, width = np.linspace(lo, hi, bumps), 1.5 * (hi - lo) / (bumps - 1)
    F = features(x, centres, width)
    coef = np.linalg.lstsq(F, -eps / b, rcond=None)[0]
    return (lambda z: features(z, centres, width) @ coef), (x, -eps / b)


def relative_score_error(s_fn, t, rng, n=20_000):
    """RMS of (fit - exact score) over x_t ~ p_t, relative to the RMS of the score itself."""
    a, b = ab_at(t)
    x = a * sample_data(n, rng) + b * rng.standard_normal(n)
    exact = score(x, a, b)
    return float(np.sqrt(np.mean((s_fn(x) - exact) ** 2) / np.mean(exact**2)))


fits, dsm_errors = {}, {}
for t in DSM_TIMESTEPS:
    fits[t] = fit_dsm(t, N_DSM, rng)
    dsm_errors[t] = relative_score_error(fits[t][0], t, rng)
    print(f"    t = {t:3d}: the DSM fit's score is off by {dsm_errors[t]:.2%} of the score's RMS "
          f"(target noise std 1 / b = {1 / ab_at(t)[1]:.1f})")
limit = 0.15 if FAST else 0.05
check(f"the DSM fit recovers the exact score at t = {', '.join(map(str, DSM_TIMESTEPS))}",
      max(dsm_errors.values()) < limit, f"worst {max(dsm_errors.values()):.2%} of the score's RMS (limit {limit:.0%})")
# J_DSM - J_ESM is the same for every s: the difference of that gap between two functions s1, s2 is a mean of
# 2 (s2 - s1)(target - score), zero in expectation. Measured on fresh pairs, for the fit, half the score and tanh.
t = 100
a, b = ab_at(t)
x0_new, eps_new = sample_data(N_DSM, rng), rng.standard_normal(N_DSM)
x_new = a * x0_new + b * eps_new
target, exact = -eps_new / b, score(x_new, a, b)
candidates = {"the fit": fits[t][0](x_new), "half the score": 0.5 * exact, "tanh(x)": np.tanh(x_new)}
gaps = {k: (s_ - target) ** 2 - (s_ - exact) ** 2 for k, s_ in candidates.items()}    # per pair: DSM - ESM
names = list(gaps)
z_gap = max(abs(float((gaps[i] - gaps[j]).mean())) / (float((gaps[i] - gaps[j]).std()) / math.sqrt(N_DSM))
            for i in names for j in names if i < j)
print("    J_DSM - J_ESM at t = 100: " + ", ".join(f"{k} {float(g.mean()):.2f}" for k, g in gaps.items()))
check("J_DSM = J_ESM + a constant: the gap is the same for three different functions s", z_gap < 4.5,
      f"largest difference {z_gap:.1f} standard errors")

fig, axes = plt.subplots(1, len(DSM_TIMESTEPS), figsize=(3.6 * len(DSM_TIMESTEPS), 3.4))
for ax, t in zip(axes, DSM_TIMESTEPS):
    a, b = ab_at(t)
    xs, ys = fits[t][1]
    ax.plot(xs[:1500], ys[:1500], ".", color="0.75", ms=2, label="targets -eps / b")
    lo, hi = np.quantile(xs, [0.002, 0.998])
    g = np.linspace(lo, hi, 300)
    ax.plot(g, score(g, a, b), "C0", lw=2, label="exact score")
    ax.plot(g, fits[t][0](g), "C3--", lw=1.5, label="DSM fit")
    spread = np.abs(score(g, a, b)).max()
    ax.set(title=f"t = {t}: off by {dsm_errors[t]:.1%}", xlabel="x_t", ylim=(-2 * spread, 2 * spread))
axes[0].legend(fontsize=7)
fig.suptitle(f"Denoising score matching: least squares on {N_DSM:,} noisy targets per timestep")
fig.tight_layout()
fig.savefig(out / "dsm.png", dpi=100)
plt.close(fig)
saved(out / "dsm.png")

# %%
# ---------------------------------------------------------------------------------------------------
section("5. The probability-flow ODE, and DDIM as its first-order solver")
# DDPM's noising is the discretisation of a stochastic differential equation (the VP SDE of Song et al. 2021),
#     dx = f(t) x dt + g(t) dW,     f = d log a / dt,   g^2 = -2 f      (continuous linear schedule: f = -beta / 2,
# g^2 = beta), whose marginals are exactly q(x_t | x0) = N(a x0, b^2). Song et al. show that the ODE
#     dx/dt = f(t) x - 1/2 g(t)^2 grad log p_t(x)
# moves a whole distribution through the same marginals p_t, with no noise: run backwards from x_T ~ p_T it ends on
# the data distribution. Its right side needs only the score, that is the network (eps_hat = -b score).
# Change variables: y = x / a (the data's scale) and sigma = b / a (the noise's size relative to the signal, so
# y = x0 + sigma eps). In those the ODE is simply
#     dy / dsigma = eps_hat(x, t)            [= -sigma grad_y log p(y), the "variance exploding" form]
# Derivation, with d a / dt = f a and -1/2 g^2 = f:
#     x = a y                      =>  dx/dt = a dy/dt + f x
#     the ODE, score = -eps_hat / b  =>  dx/dt = f x + f score = f x - f eps_hat / b
# so a dy/dt = -f eps_hat / b; and sigma^2 = 1 / a^2 - 1 gives dsigma/dt = -f / (a b): dy/dt = eps_hat dsigma/dt.
# (Section 6 checks the same ODE in the angle phi = arctan(sigma) by solving both forms.)
# If eps_hat were constant over a step from sigma to sigma', the exact solution would be y' = y + (sigma' - sigma)
# eps_hat. Multiply by a':  x' = a' (x - b eps_hat) / a + b' eps_hat = a' x0_hat + b' eps_hat: DDIM with eta = 0.
# DDIM is the Euler method of this ODE in (y, sigma): exact for constant eps_hat, first order in general.
# (Lesson 14 found the same step as the exponential integrator in lambda with x0_hat frozen: both describe DDIM.)
worst = 0.0
for t, t_prev in ((999, 899), (999, -1), (500, 250), (40, 39), (20, -1)):
    a, b = ab_at(t)
    a2, b2 = (1.0, 0.0) if t_prev < 0 else ab_at(t_prev)
    x = rng.standard_normal(64)
    eps_hat = -b * score(x, a, b)
    mean, _ = ddim_step(schedule, t, t_prev, x0_from_eps(schedule, x, t, eps_hat), eps_hat, eta=0.0)
    worst = max(worst, relative_error(mean / a2, x / a + (b2 / a2 - b / a) * eps_hat))
check("DDIM's step (eta = 0) == y' = y + (sigma' - sigma) eps_hat in y = x / a, sigma = b / a", worst < 1e-12,
      f"5 steps, t = 999 to the clean end, max relative error {worst:.1e}")


def eps_in_y(y, sigma):
    """The exact eps_hat at noise size sigma in y-space: x = a y has score grad_x = grad_y / a, so eps_hat = -sigma
    grad_y log p_sigma(y), and p_sigma is the mixture with variances s_k^2 + sigma^2 (a = 1, b = sigma)."""
    return -sigma * score(y, 1.0, sigma)


def exact_eps_model(x_t, t, labels):
    """model(x_t, t, labels) for tinyddpm's samplers: the mixture's exact eps_hat = -b score, shape (N, 1, 1, 1)."""
    a, b = schedule.sqrt_alpha_bar[t], schedule.sqrt_one_minus_alpha_bar[t]                 # (N,)
    return (-b * score(x_t.reshape(len(x_t)), a, b)).reshape(x_t.shape)


def rk4_in_sigma(y, sigma_start, steps, rho=7.0):
    """dy/dsigma = eps_hat by classical RK4 on a grid uniform in u = sigma^(1/rho), from sigma_start to 0 (fine
    near the data, where eps_hat changes fastest; Karras et al. 2022 use the same grid)."""
    u = np.linspace(sigma_start ** (1 / rho), 0.0, steps + 1)
    f = lambda y, u: eps_in_y(y, u**rho) * rho * u ** (rho - 1)            # noqa: E731  dy/du = dy/dsigma dsigma/du
    for i in range(steps):
        h = u[i + 1] - u[i]
        k1 = f(y, u[i])
        k2 = f(y + h / 2 * k1, u[i] + h / 2)
        k3 = f(y + h / 2 * k2, u[i] + h / 2)
        k4 = f(y + h * k3, u[i + 1])
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


# Start from x_T drawn exactly from p_999 (q_sample of data; a sampler would draw N(0, 1), which is p_999 to within
# a = 0.0064 in the mean) and solve to sigma = 0, the clean end.
aT, bT = ab_at(T - 1)
x0_flow = sample_data(N_FLOW, rng)
x_T = q_sample(schedule, x0_flow, T - 1, rng.standard_normal(N_FLOW))
tic = time.perf_counter()
x_ode = rk4_in_sigma(x_T / aT, bT / aT, RK4_STEPS)                       # at sigma = 0, y = x
x_ode_half = rk4_in_sigma(x_T / aT, bT / aT, RK4_STEPS // 2)
own_error = float(np.max(np.abs(x_ode - x_ode_half)))
check(f"the RK4 solve ({RK4_STEPS} steps) is converged: halving its steps moves it by < 1e-5", own_error < 1e-5,
      f"max change {own_error:.1e} ({time.perf_counter() - tic:.1f} s)")


def ddim_in_the_open(x_T, n):
    """n DDIM steps (eta = 0, 'trailing' timesteps) written as Euler in (y, sigma), with the exact eps_hat."""
    ts = ddim_timesteps(T, n, "trailing")
    sigmas = [ab_at(t)[1] / ab_at(t)[0] for t in ts] + [0.0]           # ... to the clean end, sigma = 0
    y = x_T / ab_at(ts[0])[0]
    for i, t in enumerate(ts):
        y = y + (sigmas[i + 1] - sigmas[i]) * eps_in_y(y, sigmas[i])     # the DDIM update
    return y


x_T4 = x_T.reshape(-1, 1, 1, 1)                                          # the samplers want (N, C, H, W)
lib = {n: ddim_sample(exact_eps_model, schedule, x_T=x_T4, num_steps=n, eta=0.0, spacing="trailing",
                      progress=False).ravel() for n in DDIM_STEPS}
err = max(relative_error(ddim_in_the_open(x_T, n), lib[n]) for n in DDIM_STEPS[:3])
check("my Euler loop in (y, sigma) == tinyddpm's ddim_sample (eta = 0, trailing)", err < 1e-10,
      f"{DDIM_STEPS[:3]} steps, max relative error {err:.1e}")
ddim_err = [float(np.sqrt(np.mean((lib[n] - x_ode) ** 2))) for n in DDIM_STEPS]
slope = float(np.polyfit(np.log(DDIM_STEPS[-4:]), np.log(ddim_err[-4:]), 1)[0])
print("    steps:       " + "".join(f"{n:>9d}" for n in DDIM_STEPS))
print("    RMS error:   " + "".join(f"{e:9.1e}" for e in ddim_err))
check("DDIM's error against the fine ODE solve falls as the steps grow", all(np.diff(ddim_err) < 0),
      f"{ddim_err[0]:.3f} at {DDIM_STEPS[0]} steps -> {ddim_err[-1]:.1e} at {DDIM_STEPS[-1]}")
check("... at first order: error ~ 1 / steps", -1.15 < slope < -0.85,
      f"fitted slope {slope:.2f} over the last four step counts")

fig, ax = plt.subplots(figsize=(6, 4.2))
ax.loglog(DDIM_STEPS, ddim_err, "o-", lw=2, label=f"DDIM, exact score (slope {slope:.2f})")
ax.loglog(DDIM_STEPS, ddim_err[0] * DDIM_STEPS[0] / np.array(DDIM_STEPS), ":", color="0.5", label="1 / steps")
ax.set(xlabel="DDIM steps (eta = 0, trailing)", ylabel="RMS distance to the RK4 solution",
       title="DDIM is a first-order solver of the probability-flow ODE")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "ddim_convergence.png", dpi=100)
plt.close(fig)
saved(out / "ddim_convergence.png")

# Where the ODE lands. It carries p_T to p_0, the data: the samples' distribution must match the mixture. In 1-D the
# paths cannot cross (two solutions of one ODE that meet are the same solution), so the map keeps the order of the
# points: it is the monotone map that sends each quantile of p_T to the same quantile of the data.
ks = float(np.max(np.abs(np.arange(1, N_FLOW + 1) / N_FLOW - mixture_cdf(np.sort(x_ode), 1.0, 0.0))))
ks_start = float(np.max(np.abs(np.arange(1, N_FLOW + 1) / N_FLOW - mixture_cdf(np.sort(x_T), 1.0, 0.0))))
ks_limit = 1.63 / math.sqrt(N_FLOW)                                      # the 1% critical value of the KS test
check("the ODE maps samples of p_T to samples of the data (Kolmogorov-Smirnov distance to the mixture's CDF)",
      ks < ks_limit, f"KS {ks:.4f} (1% critical value {ks_limit:.4f}; the starting points themselves: {ks_start:.3f})")
check("... and keeps their order: the paths never cross", bool(np.all(np.diff(x_ode[np.argsort(x_T)]) > 0)),
      f"{N_FLOW} points")

fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.4), gridspec_kw={"width_ratios": [2.2, 1]})
ts_img = np.arange(0, T, 5)
xs_img = np.linspace(-2.5, 2.5, 300)
dens = np.exp(log_p(xs_img[None, :], schedule.sqrt_alpha_bar[ts_img][:, None],
                    schedule.sqrt_one_minus_alpha_bar[ts_img][:, None]))
ax.imshow(dens.T, origin="lower", aspect="auto", extent=(0, T - 1, -2.5, 2.5), cmap="Greys", vmax=np.quantile(dens, 0.99))
paths_from = x_T[np.argsort(x_T)[np.linspace(0, N_FLOW - 1, 30).astype(int)]]
ts_path = ddim_timesteps(T, 200, "trailing")
y, sig = paths_from / aT, bT / aT
track = [paths_from]
for i, t in enumerate(ts_path):                                          # 200 DDIM steps, recorded in x = a y
    nxt = ts_path[i + 1] if i + 1 < len(ts_path) else -1
    s_next = 0.0 if nxt < 0 else ab_at(nxt)[1] / ab_at(nxt)[0]
    y = y + (s_next - sig) * eps_in_y(y, sig)
    sig = s_next
    track.append(y * (1.0 if nxt < 0 else ab_at(nxt)[0]))
ax.plot(np.concatenate([ts_path, [0]]), np.array(track), color="C1", lw=0.8)
ax.set(xlabel="timestep t (sampling runs right to left)", ylabel="x_t", xlim=(T - 1, 0),
       title="Probability-flow paths over p_t (grey): deterministic, never crossing")
ax2.hist(x_ode, 60, density=True, color="C1", alpha=0.6, label=f"ODE from {N_FLOW} points of p_T")
g = np.linspace(-1.2, 1.2, 400)
ax2.plot(g, np.exp(log_p(g, 1.0, 0.0)), "k", lw=1.5, label="the data's density")
ax2.set(xlabel="x0", title=f"Where they land (KS {ks:.3f})")
ax2.legend(fontsize=7)
fig.tight_layout()
fig.savefig(out / "flow.png", dpi=100)
plt.close(fig)
saved(out / "flow.png")

# %%
# ---------------------------------------------------------------------------------------------------
section("6. v-prediction: the ODE's velocity, and an output that never needs amplifying")
# v = a eps - b x0 (Salimans & Ho 2022). Write a = cos(phi), b = sin(phi) (a^2 + b^2 = 1, phi = arctan(sigma) runs from
# 0 at clean data to almost pi/2 at t = 999): x_t = cos(phi) x0 + sin(phi) eps, and v = dx_t / dphi, the speed of a
# point along that quarter circle. In the score view:
#     E[v | x_t] = a E[eps | x_t] - b E[x0 | x_t] = -a b score - (b / a)(x_t + b^2 score) = -(b / a)(x_t + score)
# and with phi as the time of section 5's VP form (f = d log a / dphi = -tan phi, g^2 = -2 f = 2 tan phi) the
# probability-flow ODE is dx/dphi = -tan(phi)(x + score) = E[v | x_t]: a v-model predicts the ODE's velocity in phi.
a, b = ab_at(T_SHOW)
v_star = -(b / a) * (x_t + score(x_t, a, b))
err = max(relative_error(training_target(schedule, x0_mc, T_SHOW, eps_mc, "v"), a * eps_mc - b * x0_mc),
          relative_error(v_from_eps(schedule, x_t, T_SHOW, eps_star), v_star))
check("tinyddpm's v target == a eps - b x0, and v_from_eps(-b score) == -(b / a)(x_t + score)", err < 1e-12,
      f"max relative error {err:.1e}")
v_mc = a * eps_mc - b * x0_mc
z_v = np.array([(v_mc[g] - v_star[g]).mean() / ((v_mc[g] - v_star[g]).std() / math.sqrt(len(g))) for g in groups])
check(f"t = {T_SHOW}: the average v of the pairs near each x_t == -(b / a)(x_t + score)", float(np.abs(z_v).max()) < 4.5,
      f"largest |residual| {float(np.abs(z_v).max()):.1f} standard errors")


def rk4_in_phi(x, phi_start, steps):
    """Section 5's VP form with time phi: dx/dphi = f x - 1/2 g^2 score = -tan(phi)(x + score), to phi = 0."""
    f = lambda x, p: -math.tan(p) * (x + score(x, math.cos(p), math.sin(p)))   # noqa: E731
    phis = np.linspace(phi_start, 0.0, steps + 1)
    for i in range(steps):
        h = phis[i + 1] - phis[i]
        k1 = f(x, phis[i])
        k2 = f(x + h / 2 * k1, phis[i] + h / 2)
        k3 = f(x + h / 2 * k2, phis[i] + h / 2)
        k4 = f(x + h * k3, phis[i + 1])
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


phi_T = math.atan(bT / aT)
x_phi = rk4_in_phi(x_T * math.cos(phi_T) / aT, phi_T, 2 * RK4_STEPS)    # cos(phi_T) = a_999, up to round-off
err = float(np.max(np.abs(x_phi - x_ode)))
check("the VP form dx/dphi = f x - 1/2 g^2 score (= E[v | x]) and dy/dsigma = eps_hat are one ODE: same end points",
      err < 1e-6, f"max |difference| {err:.1e} after RK4 in phi and in sigma")

# When v helps. Any model errs; say its output is off by delta. What that does to x0_hat depends on the output:
#     eps-model: x0_hat = (x_t - b eps_hat) / a      an error delta in eps becomes (b / a) delta in x0_hat
#     v-model:   x0_hat = a x_t - b v_hat            ... becomes b delta <= delta; and eps_hat = b x_t + a v_hat: a delta
#     x0-model:  x0_hat directly                      ... delta; but eps_hat = (x_t - a x0_hat) / b: (a / b) delta
# b / a grows without bound at high noise (157 at t = 999; infinite for a schedule whose last abar is 0) and a / b at
# low noise; v's factors a and b never exceed 1: whichever estimate a sampler needs, a v-model's error reaches it
# unamplified. That is why v-prediction suits few-step sampling (whose first step jumps from t = 999 straight to an
# x0_hat), progressive distillation, and zero-terminal-SNR schedules (Lin et al. 2023), where eps cannot give x0 at all.
# Measure it on the mixture: the exact predictions plus the same error delta z, converted by tinyddpm.
DELTA = 0.03                                            # a good network's RMS error in eps (lesson 13's solution)
z = rng.standard_normal(len(x_t))
ts_all = np.arange(0, T, 1 if not FAST else 9)
gain_eps, gain_v = [], []
for t in ts_all:
    a, b = ab_at(int(t))
    xt = a * x0_mc[:5000] + b * eps_mc[:5000]
    x0_true = tweedie(xt, a, b)
    e_star = -b * score(xt, a, b)
    vv = v_from_eps(schedule, xt, int(t), e_star)
    gain_eps.append(float(np.sqrt(np.mean((x0_from_eps(schedule, xt, int(t), e_star + DELTA * z[:5000]) - x0_true) ** 2))))
    gain_v.append(float(np.sqrt(np.mean((x0_from_v(schedule, xt, int(t), vv + DELTA * z[:5000]) - x0_true) ** 2))))
gain_eps, gain_v = np.array(gain_eps) / DELTA, np.array(gain_v) / DELTA
rms_z = float(np.sqrt(np.mean(z[:5000] ** 2)))
pred_eps = schedule.sqrt_one_minus_alpha_bar[ts_all] / schedule.sqrt_alpha_bar[ts_all] * rms_z
pred_v = schedule.sqrt_one_minus_alpha_bar[ts_all] * rms_z
err = max(relative_error(gain_eps, pred_eps), relative_error(gain_v, pred_v))
check("an output error delta reaches x0_hat as (b / a) delta from an eps-model and b delta from a v-model",
      err < 1e-8, f"{len(ts_all)} timesteps, max relative error {err:.1e}")
check("... so at t = 999 the eps-model multiplies its error by ~157, the v-model by less than 1",
      gain_eps[-1] > 100 and gain_v.max() <= rms_z * (1 + 1e-12),
      f"x {gain_eps[-1] / rms_z:.0f} and x {gain_v[-1] / rms_z:.3f} at t = {ts_all[-1]}")
# One step from t = 999 straight to x0_hat (a 1-step DDIM): the ideal answer, Tweedie, is close to the data's mean.
a, b = ab_at(T - 1)
one_step = {"exact (Tweedie)": tweedie(x_T, a, b),
            f"eps-model, error {DELTA}": x0_from_eps(schedule, x_T, T - 1, -b * score(x_T, a, b) + DELTA * z[:N_FLOW]),
            f"v-model, error {DELTA}": x0_from_v(schedule, x_T, T - 1,
                                                v_from_eps(schedule, x_T, T - 1, -b * score(x_T, a, b)) + DELTA * z[:N_FLOW])}
for k, v in one_step.items():
    print(f"    one step from t = 999, {k:<22}: x0_hat mean {v.mean():+.3f}, std {v.std():.3f}")
print(f"    (the data's mean is {float(MIX_W @ MIX_M):+.3f})")

fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4))
ax.semilogy(ts_all, gain_eps / rms_z, lw=2, label="eps-model: b / a")
ax.semilogy(ts_all, gain_v / rms_z, lw=2, label="v-model: b")
ax.semilogy(ts_all, np.ones_like(gain_v), lw=2, label="x0-model: 1")
ax.set(xlabel="timestep t", ylabel="error in x0_hat / error in the output",
       title="How a model's error reaches x0_hat")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
ax2.axhspan(-1, 1, color="0.92", label="the data's range")
for (k, v), style in zip(one_step.items(), ("C0.", "C1.", "C2.")):
    ax2.plot(x_T[:800], v[:800], style, ms=2, label=k)
ax2.set(xlabel="x_T (t = 999)", ylabel="x0_hat", ylim=(-8, 8),
        title=f"One step from t = 999 to x0_hat: the eps-model's error x {b / a:.0f}")
ax2.legend(fontsize=7)
fig.tight_layout()
fig.savefig(out / "v_prediction.png", dpi=100)
plt.close(fig)
saved(out / "v_prediction.png")

# %%
# ---------------------------------------------------------------------------------------------------
try_this(__doc__)
print("\nNext: this is the last lesson. lessons/README.md has the map of the course: revisit lessons 13 and 14 (DDIM and\n"
      "DPM-Solver++ are solvers of the ODE of section 5), and lesson 16 (guidance is a sum of scores).")
finish(started)
