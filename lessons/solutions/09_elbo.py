"""Solutions to lesson 09 (the variational bound): the three "Try this" exercises, worked and checked.

Try each exercise in lessons/09_elbo.py yourself first; then run this file and compare.

Run it:   python lessons/solutions/09_elbo.py          (--fast: fewer Monte-Carlo draws)

Figures (in lessons/output/09_elbo/, with a solution_ prefix):
  solution_cosine.png      lambda_t and the bound's terms, linear against cosine
  solution_fixed_large.png the constant a variance mismatch adds to each KL term, against t
  solution_importance.png  the one-sample estimate of the bound, t uniform against t drawn by importance
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the lessons folder, for _common

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import FAST, banner, check, finish, output_dir, saved, section  # noqa: E402
from tinyddpm.diffusion import make_schedule  # noqa: E402

started = time.perf_counter()
out = output_dir(__file__)
banner("Solutions to lesson 09: the variational bound")

T = 1000
MU, S = 0.2, 0.6                                   # the lesson's toy data x_0 ~ N(MU, S^2)
N_DATA = 2000 if FAST else 20000                   # data points for the estimators of exercise 3
rng = np.random.default_rng(0)
ts = np.arange(2, T + 1)                           # the steps with a KL term (paper numbering)


# The lesson's toy, rebuilt: tables in the paper's indexing, the optimal-eps model's linear step, the closed-form terms.
def tables(schedule_name, sigma2):
    sch = make_schedule(schedule_name, T)
    beta = np.concatenate([[0.0], sch.betas])
    alpha = 1.0 - beta
    abar = np.concatenate([[1.0], sch.alpha_bar])
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    bt = np.zeros(T + 1)
    bt[1:] = (1 - abar_prev[1:]) / (1 - abar[1:]) * beta[1:]
    coef1, coef2 = np.zeros(T + 1), np.zeros(T + 1)
    coef1[1:] = np.sqrt(abar_prev[1:]) * beta[1:] / (1 - abar[1:])
    coef2[1:] = np.sqrt(alpha[1:]) * (1 - abar_prev[1:]) / (1 - abar[1:])
    sig2 = np.where(np.arange(T + 1) >= 2, bt if sigma2 == "beta_tilde" else beta, beta)
    k = np.sqrt(1 - abar) / (abar * S**2 + 1 - abar)                       # eps_theta = k (x_t - a MU)
    A, c = np.full(T + 1, np.nan), np.full(T + 1, np.nan)
    A[1:] = (1 - beta[1:] / np.sqrt(1 - abar[1:]) * k[1:]) / np.sqrt(alpha[1:])
    c[1:] = beta[1:] / np.sqrt(1 - abar[1:]) * k[1:] * np.sqrt(abar[1:]) * MU / np.sqrt(alpha[1:])
    return dict(beta=beta, alpha=alpha, abar=abar, abar_prev=abar_prev, bt=bt, coef1=coef1, coef2=coef2, sig2=sig2,
                A=A, c=c)


def kl_gauss(m1, v1, m2, v2):
    return 0.5 * np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5


def mean_term(x0, tb):
    """E[d^2] of the lesson's section 3: the squared gap between posterior and model means, averaged over x_t."""
    x0 = np.asarray(x0, np.float64)[:, None]
    a, b = np.sqrt(tb["abar"][ts]), np.sqrt(1 - tb["abar"][ts])
    d_mean = tb["coef1"][ts] * x0 + (tb["coef2"][ts] - tb["A"][ts]) * a * x0 - tb["c"][ts]
    return d_mean**2 + ((tb["coef2"][ts] - tb["A"][ts]) * b) ** 2                # (N, T - 1)


def bound_terms(x0, tb):
    """Closed-form (L_T (N,), L_{t-1} (N, T - 1), L_0 (N,)) for each data point, as in the lesson."""
    x0 = np.asarray(x0, np.float64)
    L_T = kl_gauss(np.sqrt(tb["abar"][T]) * x0, 1 - tb["abar"][T], 0.0, 1.0)
    v1, v2 = tb["bt"][ts], tb["sig2"][ts]
    L_steps = 0.5 * np.log(v2 / v1) + (v1 + mean_term(x0, tb)) / (2 * v2) - 0.5
    a1, b1 = np.sqrt(tb["abar"][1]), np.sqrt(1 - tb["abar"][1])
    e2 = (x0 - tb["A"][1] * a1 * x0 - tb["c"][1]) ** 2 + (tb["A"][1] * b1) ** 2
    L_0 = 0.5 * np.log(2 * np.pi * tb["sig2"][1]) + e2 / (2 * tb["sig2"][1])
    return L_T, L_steps, L_0


def log_likelihood(x0, tb):
    m, v = 0.0, 1.0
    for t in range(T, 0, -1):
        m, v = tb["A"][t] * m + tb["c"][t], tb["A"][t] ** 2 * v + tb["sig2"][t]
    x0 = np.asarray(x0, np.float64)
    return -0.5 * np.log(2 * np.pi * v) - (x0 - m) ** 2 / (2 * v)


def lam(tb):
    return tb["beta"][ts] ** 2 / (2 * tb["sig2"][ts] * tb["alpha"][ts] * (1 - tb["abar"][ts]))


x0_data = MU + S * rng.standard_normal(N_DATA)

# ---------------------------------------------------------------------------------------------------
section('Exercise 1 (run): SCHEDULE = "cosine"')
# The cosine schedule clips its last beta at 0.999, so abar_T = abar_{T-1} * 0.001: q(x_T | x_0) is N(0, 1) to within
# ~1e-8, and L_T, which is about abar_T x_0^2 / 2 for small abar_T, all but vanishes (linear: abar_T = 4e-5). lambda_t
# still falls from t = 2 across the body of the schedule, but not "by ~60 to t = T": its last step has beta_T = 0.999,
# alpha_T = 0.001, and lambda_T = beta_T / (2 alpha_T (1 - abar_{T-1})) ~ 500, the largest weight of all. That step is
# what the clip makes: nearly a whole image's worth of noise added at once. So the lesson's check "lambda_t is
# largest at the nearly clean end" fails with cosine. Everything else of the lesson holds: the bound is still below the
# exact likelihood.
tb_lin, tb_cos = tables("linear", "beta_tilde"), tables("cosine", "beta_tilde")
LT_lin, LT_cos = bound_terms(x0_data, tb_lin)[0].mean(), bound_terms(x0_data, tb_cos)[0].mean()
print(f"  abar_T: linear {tb_lin['abar'][T]:.1e}, cosine {tb_cos['abar'][T]:.1e}; L_T on average: linear {LT_lin:.1e}, "
      f"cosine {LT_cos:.1e} nats")
check("cosine's L_T is far smaller than linear's: its last abar is ~0", LT_cos < 1e-3 * LT_lin,
      f"{LT_cos:.1e} vs {LT_lin:.1e}")
lam_lin, lam_cos = lam(tb_lin), lam(tb_cos)
print(f"  lambda_t, cosine: {lam_cos[0]:.3f} at t = 2, {lam_cos[-2]:.4f} at t = T - 1, {lam_cos[-1]:.0f} at t = T "
      f"(linear: {lam_lin[0]:.3f}, {lam_lin[-2]:.4f}, {lam_lin[-1]:.4f})")
check("cosine: lambda_t falls from t = 2 through the body of the schedule ...", lam_cos[0] / lam_cos[:-1].min() > 20,
      f"{lam_cos[0]:.3f} -> lowest {lam_cos[:-1].min():.4f} before the last step")
check("... but its clipped last step carries the largest weight of all", lam_cos[-1] == lam_cos.max() > 100,
      f"lambda_T = {lam_cos[-1]:.0f}")
gap_cos = log_likelihood(x0_data, tb_cos) + sum(term if term.ndim == 1 else term.sum(axis=1)
                                                 for term in bound_terms(x0_data, tb_cos))
check("the bound still lies below the exact likelihood for every data point (cosine)", gap_cos.min() >= 0,
      f"gap from {gap_cos.min():.3f} to {gap_cos.max():.3f} nats")
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
ax1.loglog(ts, lam_lin, label="linear")
ax1.loglog(ts, lam_cos, label="cosine (last step: beta clipped at 0.999)")
ax1.set(xlabel="step t", ylabel="lambda_t", title="lambda_t, sigma^2 = beta_tilde")
for name, tb_ in (("linear", tb_lin), ("cosine", tb_cos)):
    ax2.loglog(ts, bound_terms(x0_data[:200], tb_)[1].mean(axis=0), label=name)
ax2.set(xlabel="step t", ylabel="L_(t-1), nats", title="The toy's step terms")
for ax in (ax1, ax2):
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "solution_cosine.png", dpi=100)
plt.close(fig)
saved(out / "solution_cosine.png")

# ---------------------------------------------------------------------------------------------------
section('Exercise 2 (modify): SIGMA2 = "beta" (fixed_large)')
# With p_theta's variance sigma_t^2 = beta_t and the posterior's beta_tilde_t, the KL of two Gaussians keeps both terms:
#     KL = 1/2 [ log(beta_t / beta_tilde_t) + beta_tilde_t / beta_t - 1 ]  +  E||mu_tilde - mu_theta||^2 / (2 beta_t)
# The first bracket has no parameter in it: a constant c_t >= 0 (log r + 1/r - 1 >= 0 for r = beta / beta_tilde),
# which no training can remove. It is large where beta_tilde_t / beta_t = (1 - abar_{t-1}) / (1 - abar_t) is far from
# 1: at small t (t = 2: about 0.5). The mean term's weight becomes 1 / (2 beta_t) instead of 1 / (2 beta_tilde_t):
# smaller.
tb_large = tables("linear", "beta")
r = tb_lin["bt"][ts] / tb_lin["beta"][ts]                                        # beta_tilde / beta
c_t = 0.5 * (np.log(1 / r) + r - 1)
steps_large = bound_terms(x0_data, tb_large)[1]
err = float(np.max(np.abs(steps_large - (c_t + mean_term(x0_data, tb_large) / (2 * tb_lin["beta"][ts])))))
check("each KL term with fixed_large == the constant c_t + the mean term over 2 beta_t", err < 1e-9,
      f"max |difference| {err:.1e} nats")
draws = 200_000 if FAST else 1_000_000
z = rng.standard_normal(draws) * np.sqrt(tb_lin["bt"][2])                      # x ~ N(0, beta_tilde_2): equal means
mc = np.mean(-0.5 * np.log(tb_lin["bt"][2]) - z**2 / (2 * tb_lin["bt"][2])
             + 0.5 * np.log(tb_lin["beta"][2]) + z**2 / (2 * tb_lin["beta"][2]))
check("c_2 by Monte Carlo: E[log N(x; 0, beta_tilde_2) - log N(x; 0, beta_2)] over x ~ N(0, beta_tilde_2)",
      abs(mc - c_t[0]) < 0.01 * c_t[0], f"{mc:.5f} vs {c_t[0]:.5f}")
check("c_t is largest at the clean end and vanishes with the noise", c_t[0] > 1e3 * c_t[-1] and c_t[0] == c_t.max(),
      f"c_2 = {c_t[0]:.4f}, c_T = {c_t[-1]:.1e} nats")
neg_small = sum(t_ if t_.ndim == 1 else t_.sum(axis=1) for t_ in bound_terms(x0_data, tb_lin))
neg_large = sum(t_ if t_.ndim == 1 else t_.sum(axis=1) for t_ in bound_terms(x0_data, tb_large))
ll_small, ll_large = log_likelihood(x0_data, tb_lin), log_likelihood(x0_data, tb_large)
print(f"  -ELBO: fixed_small {neg_small.mean():.4f}, fixed_large {neg_large.mean():.4f} nats; -log p_theta: "
      f"{-ll_small.mean():.4f} and {-ll_large.mean():.4f}; sum of the constants c_t: {c_t.sum():.4f}")
# Tighter or looser? The prediction "a constant is added to every term, so looser" is wrong here, and the reason is the
# other term. The posterior q(x_{t-1} | x_t, x_0) knows x_0; the model's step does not. At small t its mean misses
# mu_tilde by roughly the posterior uncertainty of x_0 given x_t, and fixed_small divides that squared miss by the tiny
# 2 beta_tilde_t, fixed_large by the larger 2 beta_t. On this data (a spread of S = 0.6) the saving is far bigger than
# the constants c_t cost: the model's broader steps are closer to the true reverse steps p(x_{t-1} | x_t).
check("the bound gets TIGHTER with fixed_large on this toy: the gap to the model's own likelihood almost closes",
      (ll_large + neg_large).mean() < 0.1 * (ll_small + neg_small).mean(),
      f"gap {(ll_small + neg_small).mean():.4f} -> {(ll_large + neg_large).mean():.4f} nats")
check("... while the model itself barely changed: its exact likelihood moves far less than the bound does",
      abs(ll_large.mean() - ll_small.mean()) < 0.01 * abs(neg_large.mean() - neg_small.mean()),
      f"-log p_theta {-ll_small.mean():.4f} -> {-ll_large.mean():.4f}; -ELBO {neg_small.mean():.4f} -> "
      f"{neg_large.mean():.4f}")
# (The lesson's section 3, run with SIGMA2 = "beta", confirms the closed form by Monte Carlo: the direct estimate
# agrees.)
fig, ax = plt.subplots(figsize=(7, 4))
ax.loglog(ts, c_t, linewidth=2)
ax.set(xlabel="step t", ylabel="c_t (nats)", title="The parameter-free constant of fixed_large, per step")
ax.grid(True, which="both", alpha=0.3)
fig.tight_layout()
fig.savefig(out / "solution_fixed_large.png", dpi=100)
plt.close(fig)
saved(out / "solution_fixed_large.png")

# ---------------------------------------------------------------------------------------------------
section("Exercise 3 (create): one random t per data point, uniform or by importance")
# The bound's step part is S(x_0) = sum_{t=2..T} L_{t-1}(x_0). Training estimates it from one t per image:
#     uniform:     t ~ U{2..T},  estimate (T - 1) L_{t-1}(x_0)        (mean: sum_t (T - 1) L / (T - 1) = S(x_0))
#     importance:  t ~ p_t,      estimate L_{t-1}(x_0) / p_t           (mean: sum_t p_t L / p_t = S(x_0) too)
# Both are unbiased for any p_t > 0. The variance is smallest when p_t follows the terms' size: here p_t proportional
# to the mean L_{t-1} over the data. (Improved DDPM, Nichol & Dhariwal 2021, sample t with p_t ~ sqrt(E[L_t^2]),
# learned from a history of losses, for the same reason.) lambda_t puts most of the bound at small t, so uniform t
# mostly lands where the terms are tiny and rarely where they are large: a noisy estimate.
steps = bound_terms(x0_data, tb_lin)[1]                                         # (N, T - 1) closed form
exact = steps.sum(axis=1)                                                       # (N,) S(x_0)
p = steps.mean(axis=0) / steps.mean(axis=0).sum()                               # (T - 1,) importance weights
t_uni = rng.integers(0, T - 1, size=N_DATA)                                     # column index of t = 2..T
t_imp = rng.choice(T - 1, size=N_DATA, p=p)
rows = np.arange(N_DATA)
est_uni = (T - 1) * steps[rows, t_uni]
est_imp = steps[rows, t_imp] / p[t_imp]
target = exact.mean()
z_uni = abs(est_uni.mean() - target) / (est_uni.std() / np.sqrt(N_DATA))
z_imp = abs(est_imp.mean() - target) / (est_imp.std() / np.sqrt(N_DATA))
print(f"  sum of the step terms, averaged over x_0: exact {target:.4f}; uniform t {est_uni.mean():.4f} "
      f"(std {est_uni.std():.3f}); importance {est_imp.mean():.4f} (std {est_imp.std():.3f})")
check("both one-sample estimators are unbiased: their means match the exact sum", max(z_uni, z_imp) < 5,
      f"{z_uni:.1f} and {z_imp:.1f} standard errors off")
check("drawing t by importance cuts the estimator's variance many times over", est_imp.var() < 0.1 * est_uni.var(),
      f"variance {est_uni.var():.3f} -> {est_imp.var():.4f} ({est_uni.var() / est_imp.var():.0f}x less)")
fig, ax = plt.subplots(figsize=(7, 4))
bins = np.linspace(0, np.percentile(est_uni, 99), 80)
ax.hist(est_uni, bins=bins, alpha=0.6, label=f"t uniform (std {est_uni.std():.2f})")
ax.hist(est_imp, bins=bins, alpha=0.8, label=f"t by importance (std {est_imp.std():.2f})")
ax.axvline(target, color="k", label="exact mean")
ax.set(xlabel="one-sample estimate of sum_t L_(t-1) (nats)", ylabel="data points", yscale="log",
       title="Same mean, far less noise when t follows the terms")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "solution_importance.png", dpi=100)
plt.close(fig)
saved(out / "solution_importance.png")

finish(started)
