"""Lesson 09: the variational bound (ELBO), and where the training loss comes from.

What you will learn
  - Why a diffusion model can be trained by maximum likelihood at all: log p(x_0) is out of reach, but a
    lower bound on it, the ELBO, splits into one term per timestep,
        -ELBO = L_T  +  sum_{t=2..T} L_{t-1}  +  L_0
        L_T     = KL( q(x_T | x_0) || p(x_T) )                        the prior term, no parameters
        L_{t-1} = E_q KL( q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t) )   one per reverse step
        L_0     = -E_q log p_theta(x_0 | x_1)                          the decoder
    derived by Bayes' rule and a telescoping product, and checked on every sampled trajectory.
  - The KL divergence of two Gaussians in closed form, checked by Monte Carlo (and a wrong formula caught).
  - That on Gaussian data every term is known in closed form: the bound is checked against its Monte-Carlo
    estimates and against the exact log-likelihood it bounds.
  - The weight lambda_t that turns each KL term into a weighted squared error on the noise,
        L_{t-1} = lambda_t E || eps - eps_theta(x_t, t) ||^2,  lambda_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)),
    plotted against t; why Ho et al. (2020) drop it (L_simple), and Min-SNR weighting (Hang et al. 2023), the
    truncation of L_simple's weight that the lessons' own network trains with.

Notation: this lesson counts like the DDPM paper, data x_0 and latents x_1 .. x_T, step t adding noise beta_t.
tinyddpm's arrays count from 0 (lessons 01 and 12), so the paper's beta_t is schedule.betas[t - 1]. The code
below pads every table with a 0-th entry (beta_0 = 0, abar_0 = 1) so that it reads like the paper.

Run it
  python lessons/09_elbo.py          # about 10 s on 2 CPU cores (plus ~1 min once if no network exists yet)
  python lessons/09_elbo.py --fast   # tiny sizes, the same code paths (what the tests run)

Figures (in lessons/output/09_elbo/)
  lambda_t.png     lambda_t against t for both variance choices and two schedules, with L_simple's weight 1
  elbo_terms.png   the toy's bound term by term, and the estimates' spread: direct, KL form, closed form
  weightings.png   a trained network's noise error per t, and how the bound, L_simple and Min-SNR weigh it

Try this
  1. run:    set SCHEDULE = "cosine" at the top and rerun. Predict L_T (what is the cosine schedule's last
             abar?) and whether lambda_t still falls by a factor of ~60 from t = 2 to t = T. (One check fails,
             "lambda_t is largest at the nearly clean end": the cosine's last beta is clipped to 0.999, and that
             one step's lambda_T towers over all the others. Which term of lambda_t makes it so?)
  2. modify: give p_theta the other variance, SIGMA2 = "beta" (sigma_t^2 = beta_t, DDPM's 'fixed_large') in
             section 3. The means still match the posterior's form, but the variances no longer agree: derive the
             parameter-free constant this adds to each KL term, predict where in t it is large, and see whether the
             bound gets tighter or looser.
  3. create: the bound is a sum over T terms; training estimates it from one random t per image. Write that
             one-sample estimator twice - t uniform (T L_{t-1}) and t drawn with probability p_t proportional to
             the closed-form L_{t-1} (weight L_{t-1} / p_t) - and compare their means and variances on the toy.

Next: lessons/10_training_loop.py - one training step in the open, then a short run whose loss falls.
"""
# %%
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import (FAST, banner, check, finish, lesson_train_config, mnist_digits, output_dir,  # noqa: E402
                     relative_error, saved, section, trained_model, try_this)
from tinyddpm.training.config import PRESETS  # noqa: E402
from tinyddpm.diffusion import diffusion_loss, make_schedule, min_snr_weights, q_sample  # noqa: E402
from tinyddpm.sampling import unet_model  # noqa: E402

# %%
started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 09: the variational bound (ELBO)")

SCHEDULE = "linear"                        # the noise schedule of sections 3-5
SIGMA2 = "beta_tilde"                      # p_theta's variance for t >= 2: 'beta_tilde' (fixed_small) or 'beta'
T = 1000
N_TRAJ = 500 if FAST else 2000             # trajectories x_{0:T} of the Gaussian toy
N_MC = 200_000 if FAST else 2_000_000      # draws for the Monte-Carlo check of the Gaussian KL
MU, S = 0.2, 0.6                           # the toy data: x_0 ~ N(MU, S^2), one number per "image"
GAMMA = 5.0                                # Min-SNR's gamma, as in _common.lesson_train_config


def log_normal(x, mean, var):
    """log N(x; mean, var), elementwise."""
    return -0.5 * np.log(2 * np.pi * var) - (x - mean) ** 2 / (2 * var)


# %% 1. The bound, and why it splits into one term per step
# ---------------------------------------------------------------------------------------------------
section("1. The bound, and why it splits into one term per step")
# The model is a reverse chain p_theta(x_{0:T}) = p(x_T) prod_{t=1..T} p_theta(x_{t-1} | x_t), with p(x_T) = N(0, I).
# Its likelihood of a data point, log p_theta(x_0) = log int p_theta(x_{0:T}) dx_{1:T}, is an integral over every
# path: hopeless. Multiply and divide by the forward process q(x_{1:T} | x_0) = prod_t q(x_t | x_{t-1}) and use
# Jensen's inequality (log E[.] >= E[log .]):
#     log p_theta(x_0) = log E_q[ p_theta(x_{0:T}) / q(x_{1:T} | x_0) ]
#                     >= E_q[ log p_theta(x_{0:T}) / q(x_{1:T} | x_0) ]  =  ELBO
# Now turn each forward factor around. For t >= 2 the forward chain is Markov, so q(x_t | x_{t-1}) = q(x_t | x_{t-1},
# x_0), and Bayes' rule gives
#     q(x_t | x_{t-1}, x_0) = q(x_{t-1} | x_t, x_0) q(x_t | x_0) / q(x_{t-1} | x_0).
# The ratios q(x_t | x_0) / q(x_{t-1} | x_0) multiply over t = 2..T to q(x_T | x_0) / q(x_1 | x_0) (a telescope),
# and the q(x_1 | x_0) cancels the t = 1 factor. What is left, for every single path x_{0:T}:
#     log q(x_{1:T} | x_0) - log p_theta(x_{0:T})
#       =  [log q(x_T | x_0) - log p(x_T)]                                                   -> L_T
#        + sum_{t=2..T} [log q(x_{t-1} | x_t, x_0) - log p_theta(x_{t-1} | x_t)]             -> L_{t-1}
#        - log p_theta(x_0 | x_1)                                                            -> L_0
# Averaged over q, each bracket is a KL divergence: -ELBO = L_T + sum_t L_{t-1} + L_0.
# Each KL compares two Gaussians: the posterior of lesson 12, q(x_{t-1} | x_t, x_0) = N(mu_tilde, beta_tilde_t),
# and the model's step p_theta(x_{t-1} | x_t) = N(mu_theta(x_t, t), sigma_t^2).
#
# The toy, where every density is known: scalar data x_0 ~ N(MU, S^2), and the model that uses the best possible noise
# prediction for such data (lesson 12, section 5), eps_theta(x_t, t) = b (x_t - a MU) / (a^2 S^2 + b^2) with a =
# sqrt(abar_t), b = sqrt(1 - abar_t), and mu_theta = (x_t - beta_t / b * eps_theta) / sqrt(alpha_t) (section 4 derives
# this form).


def tables(schedule_name, sigma2):
    """The schedule's tables in the paper's indexing: arrays of length T + 1, entry t for step t (entry 0: the data)."""
    sch = make_schedule(schedule_name, T)
    beta = np.concatenate([[0.0], sch.betas])                  # beta_0 = 0: nothing is added to the data
    alpha = 1.0 - beta
    abar = np.concatenate([[1.0], sch.alpha_bar])              # abar_0 = 1
    abar_prev = np.concatenate([[1.0], abar[:-1]])             # abar_{t-1}
    beta_tilde = np.zeros(T + 1)
    beta_tilde[1:] = (1 - abar_prev[1:]) / (1 - abar[1:]) * beta[1:]
    coef1 = np.zeros(T + 1)                                    # mu_tilde = coef1 x_0 + coef2 x_t
    coef2 = np.zeros(T + 1)
    coef1[1:] = np.sqrt(abar_prev[1:]) * beta[1:] / (1 - abar[1:])
    coef2[1:] = np.sqrt(alpha[1:]) * (1 - abar_prev[1:]) / (1 - abar[1:])
    # p_theta's variance: beta_tilde_t (or beta_t) for t >= 2. At t = 1, beta_tilde_1 = 0 (x_0 is known given x_1 and
    # x_0), which a density cannot use, so the decoder p_theta(x_0 | x_1) takes beta_1 in both cases. (Ho et al. use a
    # discrete decoder over the 256 pixel values there; a continuous one keeps this toy in closed form.)
    sig2 = np.where(np.arange(T + 1) >= 2, beta_tilde if sigma2 == "beta_tilde" else beta, beta)
    sig2[0] = np.nan
    return dict(sch=sch, beta=beta, alpha=alpha, abar=abar, abar_prev=abar_prev, beta_tilde=beta_tilde, coef1=coef1,
                coef2=coef2, sig2=sig2)


tb = tables(SCHEDULE, SIGMA2)
sch = tb["sch"]
err = max(relative_error(tb["beta_tilde"][1:], sch.posterior_variance),
          relative_error(tb["coef1"][1:], sch.posterior_mean_coef1),
          relative_error(tb["coef2"][1:], sch.posterior_mean_coef2))
check("the paper-indexed tables (entry t) == tinyddpm's schedule tables (entry t - 1)", err < 1e-13,
      f"max relative error {err:.1e}")

# The toy model's step is linear in x_t: mu_theta(x_t) = A_t x_t + c_t. Write eps_theta = k_t (x_t - a MU):
k = np.sqrt(1 - tb["abar"]) / (tb["abar"] * S**2 + 1 - tb["abar"])                    # (T + 1,)
A = np.full(T + 1, np.nan)
c = np.full(T + 1, np.nan)
A[1:] = (1 - tb["beta"][1:] / np.sqrt(1 - tb["abar"][1:]) * k[1:]) / np.sqrt(tb["alpha"][1:])
c[1:] = tb["beta"][1:] / np.sqrt(1 - tb["abar"][1:]) * k[1:] * np.sqrt(tb["abar"][1:]) * MU / np.sqrt(tb["alpha"][1:])

# Forward paths: x_0 from the data, then one noising step at a time (float64, (N_TRAJ, T + 1)).
rng = np.random.default_rng(0)
x = np.empty((N_TRAJ, T + 1))
x[:, 0] = MU + S * rng.standard_normal(N_TRAJ)
for t in range(1, T + 1):
    x[:, t] = np.sqrt(tb["alpha"][t]) * x[:, t - 1] + np.sqrt(tb["beta"][t]) * rng.standard_normal(N_TRAJ)
ts = np.arange(2, T + 1)                                       # the steps with a KL term
x0 = x[:, :1]                                                  # (N, 1)
log_q_forward = log_normal(x[:, 1:], np.sqrt(tb["alpha"][1:]) * x[:, :-1], tb["beta"][1:])  # (N, T) log q(x_t | x_t-1)
log_p_steps = log_normal(x[:, :-1], A[1:] * x[:, 1:] + c[1:], tb["sig2"][1:])              # (N, T) log p(x_t-1 | x_t)
log_pT = log_normal(x[:, T], 0.0, 1.0)
direct = log_q_forward.sum(axis=1) - log_pT - log_p_steps.sum(axis=1)                          # (N,) per path
post_mean = tb["coef1"][ts] * x0 + tb["coef2"][ts] * x[:, ts]                                  # (N, T - 1)
prior_term = log_normal(x[:, T], np.sqrt(tb["abar"][T]) * x[:, 0], 1 - tb["abar"][T]) - log_pT
step_terms = log_normal(x[:, ts - 1], post_mean, tb["beta_tilde"][ts]) - log_p_steps[:, 1:]   # (N, T - 1)
decoder_term = -log_p_steps[:, 0]                                                              # -log p(x_0 | x_1)
split = prior_term + step_terms.sum(axis=1) + decoder_term
err = float(np.max(np.abs(direct - split)) / np.max(np.abs(direct)))
check("on every sampled path, log q(x_1:T | x_0) - log p(x_0:T) == prior + sum of step terms + decoder", err < 1e-10,
      f"{N_TRAJ} paths of {T} steps, max relative difference {err:.1e} (the telescope is exact, not only on average)")

# %% 2. The KL divergence of two Gaussians
# ---------------------------------------------------------------------------------------------------
section("2. The KL divergence of two Gaussians")
# KL(q || p) = E_q[log q(x) - log p(x)]. For q = N(m1, s1^2) and p = N(m2, s2^2), log q - log p is a quadratic in x, and
# its mean under q uses only E_q[(x - m1)^2] = s1^2 and E_q[(x - m2)^2] = s1^2 + (m1 - m2)^2:
#     KL = log(s2 / s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2          (per dimension; sum over dimensions)
# It is 0 exactly when the two agree, positive otherwise, and not symmetric.


def kl_gauss(m1, v1, m2, v2):
    """KL( N(m1, v1) || N(m2, v2) ) with variances v1, v2, elementwise."""
    return 0.5 * np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5


def kl_gauss_wrong(m1, v1, m2, v2):
    """A classic slip: log(s2 / s1) written as log(v2 / v1), the ratio of variances instead of standard deviations."""
    return np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5


m1, s1, m2, s2 = 0.3, 0.5, -0.4, 1.2
draws = m1 + s1 * rng.standard_normal(N_MC)
ratio = log_normal(draws, m1, s1**2) - log_normal(draws, m2, s2**2)          # (N_MC,) log q - log p at draws from q
mc, se = ratio.mean(), ratio.std() / np.sqrt(N_MC)
right, wrong = kl_gauss(m1, s1**2, m2, s2**2), kl_gauss_wrong(m1, s1**2, m2, s2**2)
print(f"  q = N({m1}, {s1}^2), p = N({m2}, {s2}^2): Monte Carlo {mc:.5f} +- {se:.5f}; formula {right:.5f}; "
      f"the slip {wrong:.5f}; KL(p || q) = {kl_gauss(m2, s2**2, m1, s1**2):.5f}")
check("closed-form KL == Monte-Carlo mean of log q - log p", abs(mc - right) < 5 * se,
      f"{abs(mc - right) / se:.1f} standard errors apart ({N_MC:,} draws)")
check("the slip log(v2 / v1) is caught by the same Monte Carlo", abs(mc - wrong) > 20 * se,
      f"{abs(mc - wrong) / se:.0f} standard errors off")
check("KL(q || p) != KL(p || q): the order matters", abs(right - kl_gauss(m2, s2**2, m1, s1**2)) > 0.1,
      f"{right:.3f} vs {kl_gauss(m2, s2**2, m1, s1**2):.3f}")

# %% 3. The bound on the toy: three estimates, and the likelihood it bounds
# ---------------------------------------------------------------------------------------------------
section("3. The bound on the toy: three estimates, and the likelihood it bounds")
# Every term of section 1 has a closed form for the toy, given x_0:
#   L_T: KL( N(sqrt(abar_T) x_0, 1 - abar_T) || N(0, 1) ).
#   L_{t-1}: the KL of section 2 between N(mu_tilde, beta_tilde_t) and N(A_t x_t + c_t, sigma_t^2). Its mean difference
#     d = coef1 x_0 + coef2 x_t - A_t x_t - c_t is linear in x_t ~ N(a x_0, b^2),
#     so E[d^2] = (mean of d)^2 + (coef2 - A_t)^2 b^2.
#   L_0: -E log N(x_0; A_1 x_1 + c_1, beta_1) with x_1 ~ N(a_1 x_0, b_1^2), the same kind of expectation.
# And the model's own likelihood is exact too: the reverse chain is linear-Gaussian, so x_0 under p_theta is Gaussian
# with mean and variance from the recursion m <- A_t m + c_t, v <- A_t^2 v + sigma_t^2, started at x_T ~ N(0, 1).


def bound_terms(x0_values, tb, A, c):
    """Closed-form (L_T, L_{t-1} for t = 2..T, L_0) for each x_0: shapes (N,), (N, T - 1), (N,)."""
    x0v = np.asarray(x0_values, dtype=np.float64)[:, None]                       # (N, 1)
    ab = tb["abar"]
    L_T = kl_gauss(np.sqrt(ab[T]) * x0v[:, 0], 1 - ab[T], 0.0, 1.0)
    a, b = np.sqrt(ab[ts]), np.sqrt(1 - ab[ts])
    d_mean = tb["coef1"][ts] * x0v + (tb["coef2"][ts] - A[ts]) * a * x0v - c[ts]                  # (N, T - 1)
    d2 = d_mean**2 + ((tb["coef2"][ts] - A[ts]) * b) ** 2
    v1, v2 = tb["beta_tilde"][ts], tb["sig2"][ts]                                   # posterior and model variances
    L_steps = 0.5 * np.log(v2 / v1) + (v1 + d2) / (2 * v2) - 0.5                    # kl_gauss with E[d^2] inside
    a1, b1 = np.sqrt(ab[1]), np.sqrt(1 - ab[1])
    e2 = (x0v[:, 0] - A[1] * a1 * x0v[:, 0] - c[1]) ** 2 + (A[1] * b1) ** 2
    L_0 = 0.5 * np.log(2 * np.pi * tb["sig2"][1]) + e2 / (2 * tb["sig2"][1])
    return L_T, L_steps, L_0


def model_log_likelihood(x0_values, tb, A, c):
    """log p_theta(x_0) of the linear-Gaussian reverse chain, exactly."""
    m, v = 0.0, 1.0
    for t in range(T, 0, -1):
        m, v = A[t] * m + c[t], A[t] ** 2 * v + tb["sig2"][t]
    return log_normal(np.asarray(x0_values, dtype=np.float64), m, v), m, v


L_T, L_steps, L_0 = bound_terms(x[:, 0], tb, A, c)
neg_elbo = L_T + L_steps.sum(axis=1) + L_0                                      # (N,) exact, per data point
# The KL form: the same paths, but each step term replaced by its closed-form KL given (x_t, x_0). Its mean is the same.
kl_form = (kl_gauss(np.sqrt(tb["abar"][T]) * x[:, 0], 1 - tb["abar"][T], 0.0, 1.0)
           + kl_gauss(post_mean, tb["beta_tilde"][ts], A[ts] * x[:, ts] + c[ts], tb["sig2"][ts]).sum(axis=1)
           + decoder_term)
se_direct, se_kl = direct.std() / np.sqrt(N_TRAJ), kl_form.std() / np.sqrt(N_TRAJ)
print(f"  -ELBO per data point, averaged over {N_TRAJ} x_0: closed form {neg_elbo.mean():.4f}; KL form "
      f"{kl_form.mean():.4f} +- {se_kl:.4f}; direct {direct.mean():.4f} +- {se_direct:.4f}")
z_direct = abs(direct.mean() - neg_elbo.mean()) / se_direct
z_kl = abs((kl_form - neg_elbo).mean()) / ((kl_form - neg_elbo).std() / np.sqrt(N_TRAJ))
check("the direct and the KL-form Monte-Carlo estimates agree with the closed-form bound", max(z_direct, z_kl) < 5,
      f"{z_direct:.1f} and {z_kl:.1f} standard errors")
# What the closed-form KL buys. Training takes one random t per image, so what matters is the noise of one step's
# term. Given (x_t, x_0), the log ratio of the sampled x_{t-1} is the KL plus a zero-mean term (mu_tilde - mu_theta) z
# / sigma_t; replacing it by its average (the KL) can only remove variance, at every t. (Summed over a whole path it
# need not: there the direct terms' noise partly cancels from step to step, and here the direct sum is the quieter
# one.)
one_step_direct = step_terms.var(axis=0)                                          # (T - 1,) per t, over the paths
one_step_kl = kl_gauss(post_mean, tb["beta_tilde"][ts], A[ts] * x[:, ts] + c[ts], tb["sig2"][ts]).var(axis=0)
print(f"  one step's term, variance over the paths: KL form / direct = {np.median(one_step_kl / one_step_direct):.1e} "
      f"(median over t); whole path: direct {direct.std():.2f}, KL form {kl_form.std():.2f} (standard deviations)")
check("for every single t the closed-form KL is a less noisy estimate of L_(t-1) than the sampled log ratio",
      bool(np.all(one_step_kl < one_step_direct)),
      f"largest ratio of variances {np.max(one_step_kl / one_step_direct):.2f}")

log_lik, m_end, v_end = model_log_likelihood(x[:, 0], tb, A, c)
gap = log_lik + neg_elbo                                                         # log p_theta(x_0) - ELBO >= 0
data_entropy = 0.5 * np.log(2 * np.pi * np.e * S**2)                          # H(p_data) of N(MU, S^2)
cross_entropy = 0.5 * np.log(2 * np.pi * v_end) + (S**2 + (MU - m_end) ** 2) / (2 * v_end)   # E_data[-log p_theta]
print(f"  p_theta(x_0) = N({m_end:.4f}, {np.sqrt(v_end):.4f}^2) (data: N({MU}, {S}^2)); mean -log p_theta(x_0) = "
      f"{-log_lik.mean():.4f}, data entropy {data_entropy:.4f}; gap log p - ELBO from {gap.min():.4f} to "
      f"{gap.max():.4f}")
check("ELBO <= log p_theta(x_0) for every data point (Jensen), with exact values on both sides", gap.min() >= 0,
      f"smallest gap {gap.min():.2e}")
check("... and on average -log p_theta(x_0) (exact: a cross-entropy) >= the data's own entropy",
      cross_entropy >= data_entropy, f"{cross_entropy:.5f} >= {data_entropy:.5f}")
# The prior term has no parameter and almost nothing in it: abar_T is tiny, so q(x_T | x_0) is already almost N(0, 1).
# (L_0 is negative: the decoder is a density with a small variance, beta_1, and densities can exceed 1. Ho et al.'s
# discrete decoder gives a probability of the observed 8-bit pixel value instead, so their L_0 is >= 0.)
print(f"  the terms on average: L_T {L_T.mean():.2e}, sum of L_(t-1) {L_steps.sum(axis=1).mean():.4f}, "
      f"L_0 {L_0.mean():.4f}")
check("L_T is negligible and has nothing to train: training drops it", L_T.max() < 1e-3,
      f"largest L_T {L_T.max():.1e} nats (abar_T = {tb['abar'][T]:.1e})")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
ax1.loglog(ts, L_steps.mean(axis=0), linewidth=2, label=r"$L_{t-1}$ (closed form, mean over $x_0$)")
ax1.plot([], [], " ", label=f"L_0 = {L_0.mean():.2f} (decoder; negative, off this axis)")
ax1.axhline(max(L_T.mean(), 1e-12), color="0.5", linestyle=":", label=f"L_T = {L_T.mean():.1e} (prior)")
ax1.set(xlabel="step t", ylabel="nats", title=f"The toy's bound, term by term (-ELBO = {neg_elbo.mean():.3f} nats)")
ax1.legend(fontsize=8)
ax2.loglog(ts, one_step_direct, linewidth=2, label="sampled log ratio of x_{t-1}")
ax2.loglog(ts, one_step_kl, linewidth=2, label="closed-form KL given (x_t, x_0)")
ax2.set(xlabel="step t", ylabel=f"variance over {N_TRAJ} paths",
        title="One step's estimate of L_(t-1): same mean, far less noise")
ax2.legend(fontsize=8)
for ax in (ax1, ax2):
    ax.grid(True, which="both", alpha=0.3)
fig.tight_layout()
fig.savefig(out / "elbo_terms.png", dpi=100)
plt.close(fig)
saved(out / "elbo_terms.png")

# %% 4. The weight lambda_t: each KL term is a weighted squared error on the noise
# ---------------------------------------------------------------------------------------------------
section("4. The weight lambda_t: each KL term is a weighted squared error on the noise")
# With equal variances (p_theta uses sigma_t^2 = beta_tilde_t) the KL of section 2 is only its mean term,
#     L_{t-1} = E || mu_tilde(x_t, x_0) - mu_theta(x_t, t) ||^2 / (2 sigma_t^2).
# Write x_0 through the noise, x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), and the posterior mean becomes
#     mu_tilde = ( x_t - beta_t / sqrt(1 - abar_t) * eps ) / sqrt(alpha_t)
# So if the network predicts the noise, mu_theta = ( x_t - beta_t / sqrt(1 - abar_t) * eps_theta ) / sqrt(alpha_t), and
#     mu_tilde - mu_theta = beta_t / (sqrt(alpha_t) sqrt(1 - abar_t)) (eps_theta - eps)
#     L_{t-1} = lambda_t E || eps - eps_theta ||^2,       lambda_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)).
# With sigma_t^2 = beta_tilde_t this simplifies to lambda_t = beta_t / (2 alpha_t (1 - abar_{t-1})), and, measured on
# the x_0 error instead (||eps - eps_theta||^2 = SNR_t ||x_0 - x0_theta||^2), to (SNR_{t-1} - SNR_t) / 2: the bound
# weighs each step by how much signal-to-noise that step removes.
tb_small = tables(SCHEDULE, "beta_tilde")
b_, al_, ab_, abp_ = tb_small["beta"][ts], tb_small["alpha"][ts], tb_small["abar"][ts], tb_small["abar_prev"][ts]
lam = b_**2 / (2 * tb_small["beta_tilde"][ts] * al_ * (1 - ab_))                           # (T - 1,)
eps_demo, eps_hat_demo, xt_demo = rng.standard_normal((3, 5, len(ts)))                 # any noise, any prediction
x0_demo = (xt_demo - np.sqrt(1 - ab_) * eps_demo) / np.sqrt(ab_)
mu_tilde = tb_small["coef1"][ts] * x0_demo + tb_small["coef2"][ts] * xt_demo
mu_theta = (xt_demo - b_ / np.sqrt(1 - ab_) * eps_hat_demo) / np.sqrt(al_)
kl_direct = kl_gauss(mu_tilde, tb_small["beta_tilde"][ts], mu_theta, tb_small["beta_tilde"][ts])
err = relative_error(kl_direct, lam * (eps_demo - eps_hat_demo) ** 2)
check("KL(posterior || model step) == lambda_t (eps - eps_theta)^2, for every t and random eps, eps_theta", err < 1e-9,
      f"max relative error {err:.1e}")
snr = ab_ / (1 - ab_)
snr_prev = abp_ / (1 - abp_)
err = max(relative_error(lam, b_ / (2 * al_ * (1 - abp_))), relative_error(lam * snr, (snr_prev - snr) / 2))
check("lambda_t == beta_t / (2 alpha_t (1 - abar_{t-1})), and lambda_t SNR_t == (SNR_{t-1} - SNR_t) / 2", err < 1e-9,
      f"max relative error {err:.1e}")
print(f"  lambda_t: {lam[0]:.3f} at t = 2, {lam[8]:.4f} at t = 10, {lam[98]:.4f} at t = 100, {lam[-1]:.4f} at t = {T} "
      f"(falls {lam[0] / lam[-1]:.0f}x); the first 1% of steps hold {lam[:T // 100].sum() / lam.sum():.0%} "
      "of the weight")
lowest = int(ts[np.argmin(lam)])
check("lambda_t is largest at the nearly clean end: the bound cares most about the last denoising steps",
      lam[0] > 20 * lam.min() and lam[0] == lam.max(),
      f"{lam[0]:.3f} at t = 2, lowest {lam.min():.4f} at t = {lowest}, then beta_t's growth lifts it to "
      f"{lam[-1]:.4f} at t = {T}")

fig, ax = plt.subplots(figsize=(8, 4.5))
for name, style in (("linear", "-"), ("cosine", "--")):
    for sigma2, color in (("beta_tilde", "tab:blue"), ("beta", "tab:orange")):
        tb_ = tables(name, sigma2)
        lam_ = tb_["beta"][ts] ** 2 / (2 * tb_["sig2"][ts] * tb_["alpha"][ts] * (1 - tb_["abar"][ts]))
        label = f"{name}, sigma^2 = " + ("beta_tilde (fixed_small)" if sigma2 == "beta_tilde" else "beta (fixed_large)")
        if name == "cosine" and sigma2 == "beta_tilde":
            label += f": {lam_[-1]:.0f} at t = T (beta clipped at 0.999)"
        ax.plot(ts, lam_, style, color=color, linewidth=2, label=label)
ax.axhline(1.0, color="k", linewidth=1.5, label="L_simple: weight 1 (up to a constant)")
ax.set(xscale="log", yscale="log", xlabel="step t (paper numbering, 2 .. T)", ylabel=r"$\lambda_t$", ylim=(2e-3, 5),
       title=r"The bound's weight on $||\epsilon - \epsilon_\theta||^2$, step by step")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "lambda_t.png", dpi=100)
plt.close(fig)
saved(out / "lambda_t.png")

# %% 5. L_simple drops lambda_t; Min-SNR truncates it; what the trained networks use
# ---------------------------------------------------------------------------------------------------
section("5. L_simple drops lambda_t; Min-SNR truncates it; what the trained networks use")
# Ho et al. (2020, section 3.4) train instead with
#     L_simple = E_{t ~ U, x_0, eps} || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2,
# every step weighted 1: relative to the bound it turns down the nearly clean steps, where removing the last bit of
# noise is an easy task, and turns up the noisy ones, where the model has to invent structure. They found it gives
# better samples; the true bound gives better log-likelihoods (Nichol & Dhariwal 2021 later mixed the two).
#
# In x_0 terms (||eps error||^2 = SNR_t ||x_0 error||^2) L_simple weighs the x_0 error by SNR_t, which is ~10^4 at the
# clean end: the nearly clean steps still dominate their gradient. Min-SNR-gamma (Hang et al. 2023) caps that weight
# at gamma,
#     x_0 weight min(SNR_t, gamma)      i.e. on the eps error:  w_t = min(SNR_t, gamma) / SNR_t,
# the same as L_simple wherever SNR_t <= gamma (the noisy steps) and a constant gamma, like a plain x_0 loss, beyond.
# They report faster convergence. tinyddpm.diffusion.min_snr_weights computes w_t; diffusion_loss(min_snr_gamma=...)
# applies it as a weight per image.
t_idx = rng.integers(0, T, size=16)                                              # tinyddpm indices 0..T-1
w_lib = min_snr_weights(sch, t_idx, np.zeros((16, 1, 2, 2)), "eps", GAMMA)
snr_lib = sch.alpha_bar[t_idx] / (1 - sch.alpha_bar[t_idx])
err = relative_error(w_lib, np.minimum(snr_lib, GAMMA) / snr_lib)
out_demo, x0_b, eps_b = rng.standard_normal((3, 16, 1, 2, 2))
loss_w, _ = diffusion_loss(sch, out_demo, x0_b, t_idx, eps_b, min_snr_gamma=GAMMA)
loss_mine = np.mean(w_lib * np.mean((out_demo - eps_b) ** 2, axis=(1, 2, 3)))
err = max(err, relative_error(loss_w, loss_mine))
check("min_snr_weights == min(SNR, gamma) / SNR, and diffusion_loss(min_snr_gamma) == mean_n w_n mean_j (out - eps)^2",
      err < 1e-12, f"max relative error {err:.1e}")
own_gamma, example_gamma = lesson_train_config().min_snr_gamma, PRESETS["cpu"].min_snr_gamma
check("what each network trains with: the lessons' own network Min-SNR-5, examples/train_mnist.py's 'cpu' preset "
      "L_simple",
      own_gamma == GAMMA and example_gamma is None,
      f"_common.lesson_train_config().min_snr_gamma = {own_gamma}, PRESETS['cpu'].min_snr_gamma = {example_gamma}")

# A trained network's noise error at each step, on held-out digits, and what each weighting makes of it.
params, config, schedule, where = trained_model()
print(f"  network: {where}, trained with " + ("L_simple" if config.min_snr_gamma is None
                                                else f"Min-SNR-{config.min_snr_gamma:g}"))
model = unet_model(params, config.unet)
n_img = 8 if FAST else 24
digits, labels = mnist_digits(n_img, split="test", seed=0)
T_net = schedule.num_timesteps
probe = np.unique(np.round(np.geomspace(1, T_net, 8 if FAST else 24)).astype(int))      # paper steps 1 .. T
mse = []
for t in probe:
    eps = np.random.default_rng(int(t)).standard_normal(digits.shape).astype(digits.dtype)
    t_vec = np.full(n_img, t - 1)                                                          # tinyddpm index
    eps_hat = model(q_sample(schedule, digits, t_vec, eps), t_vec, labels)
    mse.append(float(np.mean((eps_hat - eps) ** 2)))
mse = np.array(mse)
t_all = np.arange(2, T_net + 1)
mse_all = np.exp(np.interp(np.log(t_all), np.log(probe), np.log(mse)))               # every step, log-log interpolation
abar_net = np.concatenate([[1.0], schedule.alpha_bar])
snr_net = abar_net[t_all] / (1 - abar_net[t_all])
beta_net = np.concatenate([[0.0], schedule.betas])[t_all]
lam_net = beta_net / (2 * (1 - beta_net) * (1 - abar_net[t_all - 1]))
weights = {"the bound (lambda_t)": lam_net, "L_simple (1)": np.ones_like(lam_net),
           f"Min-SNR-{GAMMA:g}": np.minimum(snr_net, GAMMA) / snr_net}
first = t_all <= T_net // 100                                                           # the first 1% of the steps
shares = {name: float((w * mse_all)[first].sum() / (w * mse_all).sum()) for name, w in weights.items()}
for name, share in shares.items():
    print(f"    {name:22s}: the first 1% of steps carry {share:6.1%} of the weighted loss")
names = list(shares)
check("on this network's errors the bound puts more of the loss on the first 1% of steps than L_simple, Min-SNR less",
      shares[names[0]] > shares[names[1]] > shares[names[2]],
      f"{shares[names[0]]:.1%} > {shares[names[1]]:.1%} > {shares[names[2]]:.1%}")
print(f"  its noise error: {mse[0]:.3f} at t = 1, {mse[len(mse) // 2]:.3f} at t = {probe[len(probe) // 2]}, "
      f"{mse[-1]:.4f} at t = {T_net} (1.0 = no better than predicting zero noise)")
# Run it with each network (TINYDDPM_LESSON_MODEL=own picks the lessons' one) and compare. The Min-SNR network's noise
# error at t = 1 is about 1.0: it never learned the last step, which Min-SNR weighed ~5 / 10^4. Yet its x_0 error
# there is only sqrt((1 - abar_1) / abar_1) = 0.01 times that, invisible in a sample. The L_simple network gets to
# about 0.3 there.

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.4))
ax1.loglog(probe, mse, "o-", linewidth=2)
ax1.set(xlabel="step t", ylabel=r"mean $(\epsilon - \epsilon_\theta)^2$",
        title=f"Noise error of the network, {n_img} held-out digits per t\n({where.split(' (')[-1].rstrip(')')})")
for name, w in weights.items():
    contrib = w * mse_all
    ax2.loglog(t_all, contrib / contrib.sum(), linewidth=2, label=f"{name}: first 1% carry {shares[name]:.0%}")
ax2.set(xlabel="step t", ylabel="share of the weighted loss per step",
        title="Where each weighting puts this network's loss")
ax2.legend(fontsize=8)
for ax in (ax1, ax2):
    ax.grid(True, which="both", alpha=0.3)
fig.tight_layout()
fig.savefig(out / "weightings.png", dpi=100)
plt.close(fig)
saved(out / "weightings.png")

# %% Exercises
# ---------------------------------------------------------------------------------------------------
try_this(__doc__)
finish(started)
