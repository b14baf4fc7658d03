"""Lesson 14: DPM-Solver++(2M), a second-order solver of the diffusion ODE.

What you will learn
  - The probability-flow ODE in the half log-SNR lambda = log(alpha / sigma) (alpha = sqrt(abar), sigma =
    sqrt(1 - abar)), written with the network's x0 estimate (Lu et al. 2022, "DPM-Solver++"):
        d(x / sigma) / d lambda = e^lambda x0_hat(x, lambda)
    and how DDIM's step (lesson 13) already is this ODE's step with x0_hat frozen.
  - The exponential integrator: solve the linear part exactly, approximate only x0_hat,
        x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda x0_hat(lambda) d lambda,
    giving the first-order update (= DDIM, eta = 0) and, with x0_hat a straight line in lambda through the
    last two estimates, the second-order multistep update DPM-Solver++(2M); both checked against
    tinyddpm.diffusion (dpm_solver_first_order_step, dpm_solver_second_order_step, DPMSolverSampler).
  - First vs second order shown by convergence: on Gaussian data, where the ODE's exact solution is known,
    the error falls like 1/n and 1/n^2 with the number of steps n; then on the trained network.

Run it
  python lessons/14_dpm_solver.py          # under a minute on 2 CPU cores (plus ~1 min once if no network exists yet)
  python lessons/14_dpm_solver.py --fast   # tiny sizes, the same code paths (what the tests run)

Figures (in lessons/output/14_dpm_solver/)
  convergence_gaussian.png  error against the exact ODE solution vs steps: first order, 2M, tinyddpm's sampler
  convergence_network.png   the same on the trained network, against a many-step solution
  few_steps.png             digits from DDIM and DPM-Solver++(2M) at a few steps, one starting noise per column,
                            above 2M with many steps, guided and clipped like them

Try this
  1. run:    set S = 0.05 at the top (the data is almost a single point, MU) and rerun. Predict what happens to
             the first-order error: how much does x0_hat change along the path now?
  2. modify: in my_second_order_step replace the midpoint factor 0.5 / r by 1 / r (the line read at the end of
             the step instead of its middle). Predict the slope of the "2M" line, then see which check fails.
  3. create: the noise form, DPM-Solver-2M (Lu et al.'s first paper): with eps_hat instead of x0_hat the ODE reads
             d(x / alpha) / d lambda = -e^(-lambda) eps_hat. Derive its first-order step (is it DDIM again?) and
             its multistep second-order step, and measure their convergence on the Gaussian data.

Next: lessons/15_guidance.py - classifier-free guidance: steering towards the requested digit.
"""
# %%
import math
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import (FAST, banner, check, finish, output_dir, relative_error, saved, section,  # noqa: E402
                     trained_model, try_this)
from tinyddpm.diffusion import (DPMSolverSampler, GuidedModel, ddim_sample, ddim_step,  # noqa: E402
                                dpm_solver_first_order_step, dpm_solver_sample, dpm_solver_second_order_step,
                                eps_from_x0, make_schedule)
from tinyddpm.sampling import unet_model  # noqa: E402
from tinyddpm.viz import plot_sample_grid  # noqa: E402

# %%
started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 14: DPM-Solver++(2M)")

MU, S = 0.2, 0.6                                # the Gaussian data of section 3: x0 ~ N(MU, S^2), per pixel
N_GAUSS = 2000                                  # independent scalar "images"
GAUSS_STEPS = (4, 8, 16, 32, 64, 128)           # step counts of the convergence study (cheap: no network)
NET_STEPS = (4, 8, 16) if FAST else (8, 16, 32)
NET_REFERENCE = 48 if FAST else 120             # the network's "exact" answer: 2M with this many steps
schedule = make_schedule("linear", 1000)


def alpha_sigma(lam):
    """alpha = sqrt(abar) and sigma = sqrt(1 - abar) at half log-SNR lam: abar = sigmoid(2 lam)."""
    return np.sqrt(1 / (1 + np.exp(-2 * lam))), np.sqrt(1 / (1 + np.exp(2 * lam)))


def lam_of(abar):
    return 0.5 * np.log(abar / (1 - abar))


# %% 1. The ODE in log-SNR, read off DDIM
# ---------------------------------------------------------------------------------------------------
section("1. The ODE in log-SNR, read off DDIM")
# Notation: at timestep t, alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), so x_t = alpha_t x0 + sigma_t eps and
# alpha^2 + sigma^2 = 1. The half log-SNR lambda_t = log(alpha_t / sigma_t) rises from about -5 (t = 999, pure noise)
# to about +5 (t = 0): sampling walks up in lambda. tinyddpm keeps the full log-SNR, log(abar / (1 - abar)) = 2
# lambda.
lam_table = lam_of(schedule.alpha_bar)
err = relative_error(2 * lam_table, schedule.log_snr)
check("lambda = log(alpha / sigma) == tinyddpm's log_snr / 2, and it rises as t falls",
      err < 1e-12 and bool(np.all(np.diff(lam_table) < 0)),
      f"max relative error {err:.1e}; lambda from {lam_table[-1]:.2f} (t = 999) to {lam_table[0]:.2f} (t = 0)")
# DDIM with eta = 0 steps from s to t (lesson 13) by
#     x_t = alpha_t x0_hat + sigma_t eps_hat,     eps_hat = (x_s - alpha_s x0_hat) / sigma_s.
# Divide by sigma_t and use alpha / sigma = e^lambda:
#     x_t / sigma_t - x_s / sigma_s = (e^{lambda_t} - e^{lambda_s}) x0_hat
# In the coordinate y = x / sigma, DDIM adds x0_hat times the change of e^lambda: it is the exact solution, over the
# step, of the ODE
#     dy / d lambda = e^lambda x0_hat(x, lambda)                        (y = x / sigma)
# with x0_hat held at its value at the start. Shrinking the steps turns DDIM into this ODE: the probability-flow ODE
# of Song et al. (2021) written in lambda with the data prediction, as Lu et al. (2022) do for DPM-Solver++.
rng = np.random.default_rng(0)
x_s, x0_hat = rng.standard_normal((2, 4, 1, 8, 8))
worst = 0.0
for t, t_next in ((999, 899), (500, 400), (120, 20), (30, 29)):
    eps_hat = eps_from_x0(schedule, x_s, t, x0_hat)
    mean, std = ddim_step(schedule, t, t_next, x0_hat, eps_hat, eta=0.0)
    (a_s, s_s), (a_t, s_t) = alpha_sigma(lam_table[t]), alpha_sigma(lam_table[t_next])
    worst = max(worst, relative_error(mean / s_t - x_s / s_s, (a_t / s_t - a_s / s_s) * x0_hat))
check("DDIM's step: x_t / sigma_t - x_s / sigma_s == (e^lambda_t - e^lambda_s) x0_hat", worst < 1e-10,
      f"4 steps, max relative error {worst:.1e}")

# The Gaussian case, where the ODE can be solved by hand. Data x0 ~ N(MU, S^2) per pixel: then x_t ~ N(alpha MU,
# alpha^2 S^2 + sigma^2), and the best x0 estimate is a regression,
#     x0_hat(x, lambda) = E[x0 | x_t = x] = MU + alpha S^2 (x - alpha MU) / (alpha^2 S^2 + sigma^2).
# The flow must carry N(alpha MU, alpha^2 S^2 + sigma^2) to itself at every lambda and is linear in x, so it keeps
# each point's standard score z = (x - alpha MU) / sqrt(alpha^2 S^2 + sigma^2): the exact path from x_T is
#     x(lambda) = alpha MU + sqrt(alpha^2 S^2 + sigma^2) z.
# Check that this path satisfies the ODE, by central differences in lambda.


def x0_gauss(x, lam):
    a, s = alpha_sigma(lam)
    return MU + a * S**2 * (x - a * MU) / (a**2 * S**2 + s**2)


def exact_path(z, lam):
    a, s = alpha_sigma(lam)
    return a * MU + np.sqrt(a**2 * S**2 + s**2) * z


z = rng.standard_normal(7)
worst = 0.0
for lam in (-4.0, -1.0, 0.0, 2.0, 4.5):
    d = 1e-5
    y = lambda l: exact_path(z, l) / alpha_sigma(l)[1]                           # noqa: E731
    dy = (y(lam + d) - y(lam - d)) / (2 * d)
    worst = max(worst, relative_error(dy, np.exp(lam) * x0_gauss(exact_path(z, lam), lam)))
check("the Gaussian data's exact path satisfies dy / d lambda = e^lambda x0_hat", worst < 1e-7,
      f"5 values of lambda, max relative error {worst:.1e} (central differences)")

# %% 2. The exponential integrator: first and second order
# ---------------------------------------------------------------------------------------------------
section("2. The exponential integrator: first and second order")
# Multiply out y = x / sigma: the ODE's exact solution from lambda_s to lambda_t (h = lambda_t - lambda_s > 0) is
#     x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda x0_hat(lambda) d lambda.
# Nothing is approximated yet; only x0_hat inside the integral is unknown. ("Exponential integrator": the part of the
# ODE that is linear in x is solved exactly; only the network's output is interpolated.)
# Order 1: x0_hat constant, = m0 (the estimate at s). sigma_t (e^lambda_t - e^lambda_s) = alpha_t (1 - e^{-h}), so
#     x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) m0                          (= DDIM, eta = 0)
# Order 2, multistep: also keep the previous estimate m1 at lambda_s1 = lambda_s - h0 and take x0_hat as the line
# through both, m0 + (lambda - lambda_s) (m0 - m1) / h0. The integral of e^lambda (lambda - lambda_s) is e^lambda
# (lambda - lambda_s - 1):
#     x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) m0 + alpha_t (h - 1 + e^{-h}) (m0 - m1) / h0   (exact)
# DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) reads the line at the middle of the step instead, lambda_s + h / 2,
# and integrates that constant: with r = h0 / h,
#     D = m0 + (m0 - m1) / (2 r),     x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) D
# The two agree up to terms of order h^3 [(1 - e^{-h}) h / 2 = h^2/2 - h^3/4 + ..., h - 1 + e^{-h} = h^2/2 - h^3/6 +
# ...]: both are second order. tinyddpm implements the midpoint form.


def coefficients(lam_s, lam_t):
    """alpha_t, sigma_t / sigma_s and h as Python floats (NumPy float64 scalars would make float32 arrays float64)."""
    (a_s, s_s), (a_t, s_t) = alpha_sigma(lam_s), alpha_sigma(lam_t)
    return float(a_t), float(s_t / s_s), float(lam_t - lam_s)


def my_first_order_step(x, m0, lam_s, lam_t):
    a_t, ratio, h = coefficients(lam_s, lam_t)
    return ratio * x + a_t * (1 - math.exp(-h)) * m0


def my_second_order_step(x, m0, m1, lam_s1, lam_s, lam_t):
    """DPM-Solver++(2M): the line through (lam_s1, m1) and (lam_s, m0), read at the middle of the step."""
    a_t, ratio, h = coefficients(lam_s, lam_t)
    r = float(lam_s - lam_s1) / h                                          # h0 / h
    D = m0 + (0.5 / r) * (m0 - m1)
    return ratio * x + a_t * (1 - math.exp(-h)) * D


def line_exactly_step(x, m0, m1, lam_s1, lam_s, lam_t):
    """The same line, integrated exactly."""
    a_t, ratio, h = coefficients(lam_s, lam_t)
    h0 = float(lam_s - lam_s1)
    return ratio * x + a_t * (1 - math.exp(-h)) * m0 + a_t * (h - 1 + math.exp(-h)) * (m0 - m1) / h0


x, m0, m1 = rng.standard_normal((3, 4, 1, 8, 8))
worst1 = worst2 = worst_ddim = 0.0
for t1, t0, t in ((999, 899, 799), (600, 500, 420), (100, 60, 30), (3, 2, 1)):
    l1, l0, lt = lam_table[t1], lam_table[t0], lam_table[t]
    ab1, ab0, abt = schedule.alpha_bar[t1], schedule.alpha_bar[t0], schedule.alpha_bar[t]
    worst1 = max(worst1, relative_error(my_first_order_step(x, m0, l0, lt),
                                        dpm_solver_first_order_step(x, m0, ab0, abt)))
    worst2 = max(worst2, relative_error(my_second_order_step(x, m0, m1, l1, l0, lt),
                                        dpm_solver_second_order_step(x, m0, m1, ab1, ab0, abt)))
    ddim_mean, _ = ddim_step(schedule, t0, t, m0, eps_from_x0(schedule, x, t0, m0), eta=0.0)
    worst_ddim = max(worst_ddim, relative_error(my_first_order_step(x, m0, l0, lt), ddim_mean))
check("my first-order step == tinyddpm's dpm_solver_first_order_step == DDIM (eta = 0)",
      max(worst1, worst_ddim) < 1e-12,
      f"4 steps, max relative errors {worst1:.1e}, {worst_ddim:.1e}")
check("my DPM-Solver++(2M) step == tinyddpm's dpm_solver_second_order_step", worst2 < 1e-12,
      f"4 steps, max relative error {worst2:.1e}")
# In a real solve the two estimates lie on a smooth curve, m1 ~ m0 - h0 * slope, so (m0 - m1) / h0 stays of size 1.
gaps = []
for h in (0.4, 0.2, 0.1, 0.05):                                            # equal steps: h0 = h
    m1_h = m0 - h * m1                                                     # m1 (random) plays the slope
    gaps.append(float(np.max(np.abs(my_second_order_step(x, m0, m1_h, -h, 0.0, h)
                                    - line_exactly_step(x, m0, m1_h, -h, 0.0, h)))))
ratios = [gaps[i] / gaps[i + 1] for i in range(len(gaps) - 1)]
check("midpoint form vs the line integrated exactly: the difference shrinks like h^3 (8x per halving)",
      all(6 < q < 10 for q in ratios), "ratios " + ", ".join(f"{q:.2f}" for q in ratios))

# %% 3. Convergence where the answer is known: Gaussian data
# ---------------------------------------------------------------------------------------------------
section("3. Convergence where the answer is known: Gaussian data")
# Start every run at the same x_T (the noise level of t = 999) and solve to the level of t = 0 on n steps equally
# spaced in lambda. The exact answer is exact_path(z, lambda_end). A method of order p has a global error ~ C / n^p: a
# straight line of slope -p on a log-log plot. The first step of 2M is first order (there is no m1 yet); one such step
# costs nothing in order.
lam_start, lam_end = lam_table[-1], lam_table[0]
x_T = rng.standard_normal(N_GAUSS)
a_T, s_T = alpha_sigma(lam_start)
z_T = (x_T - a_T * MU) / np.sqrt(a_T**2 * S**2 + s_T**2)                 # each point's standard score
x_exact = exact_path(z_T, lam_end)


def solve(x_start, lams, x0_fn, order, second=my_second_order_step):
    """Integrate from lams[0] to lams[-1]: x0_fn(x, i) is the estimate at lams[i]; order 1 or 2 (2M)."""
    x, m_prev = x_start, None
    for i in range(len(lams) - 1):
        m0 = x0_fn(x, i)
        if order == 1 or m_prev is None:
            x = my_first_order_step(x, m0, lams[i], lams[i + 1])
        else:
            x = second(x, m0, m_prev, lams[i - 1], lams[i], lams[i + 1])
        m_prev = m0
    return x


def rms(a, b):
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()   # no broadcasting
    return float(np.sqrt(np.mean((a - b) ** 2)))


def slope(ns, errors, last=4):
    """The fitted slope of log(error) against log(n) over the last `last` points."""
    return float(np.polyfit(np.log(ns[-last:]), np.log(errors[-last:]), 1)[0])


errors = {1: [], 2: []}
for n in GAUSS_STEPS:
    lams = np.linspace(lam_start, lam_end, n + 1)
    for order in (1, 2):
        errors[order].append(rms(solve(x_T, lams, lambda x, i: x0_gauss(x, lams[i]), order), x_exact))
slope1, slope2 = slope(GAUSS_STEPS, errors[1]), slope(GAUSS_STEPS, errors[2])
print("  steps:     " + " ".join(f"{n:>9d}" for n in GAUSS_STEPS))
print("  order 1:   " + " ".join(f"{e:9.2e}" for e in errors[1]))
print("  2M:        " + " ".join(f"{e:9.2e}" for e in errors[2]))
check("first order (DDIM) converges like 1/n", -1.25 < slope1 < -0.8, f"fitted slope {slope1:.2f}")
check("DPM-Solver++(2M) converges like 1/n^2", -2.4 < slope2 < -1.75, f"fitted slope {slope2:.2f}")
check("... so at 16 steps 2M is far closer to the exact solution", errors[2][2] < 0.2 * errors[1][2],
      f"{errors[2][2]:.1e} vs {errors[1][2]:.1e}")
# The slope is a fit; the order shows more sharply in what one doubling of the steps buys: an order-p method divides
# its error by 2^p, 4 for 2M and 2 for DDIM. A first-order method posing as 2M (exercise 2) gives ~2 and fails here.
falls1 = [errors[1][i] / errors[1][i + 1] for i in (-3, -2)]                 # 32 -> 64 and 64 -> 128 steps
falls2 = [errors[2][i] / errors[2][i + 1] for i in (-3, -2)]
check("doubling the steps divides 2M's error by ~4 and DDIM's by ~2 (32 -> 64 -> 128 steps)",
      all(3.4 < q < 4.6 for q in falls2) and all(1.7 < q < 2.3 for q in falls1),
      "2M " + ", ".join(f"{q:.2f}x" for q in falls2) + "; DDIM " + ", ".join(f"{q:.2f}x" for q in falls1))

# tinyddpm's sampler takes the same steps on its own grid of integer timesteps ('linspace' spacing), with the model
# giving eps. With final_sigma='sigma_min' it stops at the level of t = 0, and with lower_order_final=False every step
# after the first is second order: then it must equal my loop on that grid.
def gauss_eps(x_t, t, labels):                                            # the same regression, as a noise prediction
    ab = schedule.alpha_bar[t][:, None, None, None]
    return np.sqrt(1 - ab) * (x_t - np.sqrt(ab) * MU) / (ab * S**2 + 1 - ab)


x_T4 = x_T.reshape(-1, 1, 1, 1)
lib_errors, worst = [], 0.0
for n in GAUSS_STEPS:
    sampler = DPMSolverSampler(schedule, n, final_sigma="sigma_min", lower_order_final=False)
    lams = np.append(lam_table[list(sampler.timesteps)], lam_end)
    mine = solve(x_T4, lams, lambda x, i: x0_gauss(x, lams[i]), 2)
    lib = dpm_solver_sample(gauss_eps, schedule, x_T=x_T4, num_steps=n, final_sigma="sigma_min",
                            lower_order_final=False, progress=False)
    worst = max(worst, relative_error(mine, lib))
    lib_errors.append(rms(lib, x_exact))
check("tinyddpm's DPMSolverSampler on its grid == my 2M loop on the same grid", worst < 1e-9,
      f"{len(GAUSS_STEPS)} runs, max relative error {worst:.1e}")
print("  tinyddpm: " + " ".join(f"{e:9.2e}" for e in lib_errors) + "   (steps uniform in t, not in lambda)")
check("tinyddpm's sampler is second order too", slope(GAUSS_STEPS, lib_errors) < -1.6,
      f"fitted slope {slope(GAUSS_STEPS, lib_errors):.2f}")
# Its default grid is uniform in t, which makes the last steps, near t = 0, long in lambda. What that costs, read off
# the two lines above (the same method, two grids):
worse = [n for n, e_t, e_lam in zip(GAUSS_STEPS, lib_errors, errors[2]) if e_t > e_lam]
better = [n for n in GAUSS_STEPS if n not in worse]
print(f"  the t-uniform grid is less accurate than the lambda-uniform one at n = {', '.join(map(str, worse))}"
      + (f"; more accurate at n = {', '.join(map(str, better))} (at so few steps neither grid follows the path, and"
         " which lands closer is luck)" if better else ""))
costs = [e_t / e_lam for n, e_t, e_lam in zip(GAUSS_STEPS, lib_errors, errors[2]) if n >= 8]
check(f"from 8 steps on, the t-uniform grid costs accuracy ({min(costs):.0f}x to {max(costs):.0f}x), not order",
      all(n in worse for n in GAUSS_STEPS if n >= 8),
      ", ".join(f"n = {n}: {e_t:.1e} vs {e_lam:.1e}" for n, e_t, e_lam in zip(GAUSS_STEPS, lib_errors, errors[2])
                if n >= 8))
# Its default final_sigma='zero' ends with one first-order step to sigma = 0, which returns the x0 estimate itself: the
# right end for making images, not for a convergence study.

fig, ax = plt.subplots(figsize=(7, 4.5))
ax.loglog(GAUSS_STEPS, errors[1], "o-", linewidth=2, label=f"first order = DDIM (slope {slope1:.2f})")
ax.loglog(GAUSS_STEPS, errors[2], "s-", linewidth=2, label=f"DPM-Solver++(2M) (slope {slope2:.2f})")
ax.loglog(GAUSS_STEPS, lib_errors, "^--", linewidth=1.5, label="tinyddpm's sampler, steps uniform in t")
ns = np.array(GAUSS_STEPS, dtype=float)
ax.loglog(ns, errors[1][0] * (ns / ns[0]) ** -1.0, ":", color="0.5", label="1/n and 1/n^2 guides")
ax.loglog(ns, errors[2][0] * (ns / ns[0]) ** -2.0, ":", color="0.5")
ax.set(xlabel="steps n (model calls)", ylabel="RMS error against the exact ODE solution",
       title=f"Gaussian data N({MU}, {S}^2): the order shows as the slope")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "convergence_gaussian.png", dpi=100)
plt.close(fig)
saved(out / "convergence_gaussian.png")

# %% 4. The same on the trained network
# ---------------------------------------------------------------------------------------------------
section("4. The same on the trained network")
# Now x0_hat comes from the network: x0_hat = (x - sigma eps_theta) / alpha. Two choices keep the ODE smooth enough
# for the orders to show at a few dozen steps: no clipping (clipping x0_hat changes the ODE being solved) and no
# guidance (w = 1: the plain conditional prediction; guidance extrapolates and makes the field rougher). The steps are
# uniform in lambda, as in section 3; the network is asked at the fractional timestep of each lambda, which its
# sinusoidal time embedding (lesson 06) handles like any other t. (tinyddpm's own grid is uniform in t: its last
# steps, near t = 0, are long in lambda, which section 3 measured.) There is no exact answer, so the reference is 2M
# with NET_REFERENCE steps.
params, config, net_schedule, where = trained_model()
print(f"  network: {where}")
model = unet_model(params, config.unet)
digits = np.arange(4) if FAST else np.arange(8)
dtype = params["conv_in.w"].dtype
x_T_net = np.random.default_rng(1).standard_normal((len(digits), 1, 28, 28)).astype(dtype)
net_lam = lam_of(net_schedule.alpha_bar)                                       # (T,) falling with t
t_axis = np.arange(net_schedule.num_timesteps, dtype=np.float64)


def t_of_lam(lam):
    """The (fractional) timestep at half log-SNR lam, by interpolating the schedule's table."""
    return float(np.interp(lam, net_lam[::-1], t_axis[::-1]))


def solve_network(lams, order, ts=None):
    """Solve on the grid lams; the model is asked at timesteps ts (default: the fractional t of each lambda)."""
    ts = [t_of_lam(lam) for lam in lams[:-1]] if ts is None else ts

    def x0_net(x, i):
        t_vec = np.full(len(x), ts[i], dtype=np.int64 if isinstance(ts[i], int) else dtype)    # (N,)
        a, sig = alpha_sigma(lams[i])
        return (x - float(sig) * model(x, t_vec, digits)) / float(a)                           # x0_hat from eps_hat

    return solve(x_T_net, lams, x0_net, order)


# First, on tinyddpm's integer grid, my loop must reproduce the library's sampler.
sampler = DPMSolverSampler(net_schedule, NET_STEPS[0], final_sigma="sigma_min", lower_order_final=False)
grid_ts = [int(t) for t in sampler.timesteps]
mine_lib_grid = solve_network(np.append(net_lam[grid_ts], net_lam[0]), 2, ts=grid_ts)
lib_small = dpm_solver_sample(model, net_schedule, x_T=x_T_net, labels=digits, num_steps=NET_STEPS[0],
                              final_sigma="sigma_min", lower_order_final=False, progress=False)
err = relative_error(mine_lib_grid, lib_small)
check(f"on the network too, my 2M loop == tinyddpm's dpm_solver_sample ({NET_STEPS[0]} steps, its grid)", err < 1e-5,
      f"max relative error {err:.1e} (float32)")

tic = time.perf_counter()
lam_end_net = net_lam[0]
reference = solve_network(np.linspace(net_lam[-1], lam_end_net, NET_REFERENCE + 1), 2)
net_errors = {1: [], 2: []}
for n in NET_STEPS:
    for order in (1, 2):
        net_errors[order].append(rms(solve_network(np.linspace(net_lam[-1], lam_end_net, n + 1), order), reference))
print(f"  ({sum(NET_STEPS) * 2 + NET_REFERENCE} model calls in {time.perf_counter() - tic:.1f} s)")
print("  steps:     " + " ".join(f"{n:>9d}" for n in NET_STEPS))
print("  order 1:   " + " ".join(f"{e:9.2e}" for e in net_errors[1]))
print("  2M:        " + " ".join(f"{e:9.2e}" for e in net_errors[2]))
net_slope1 = slope(NET_STEPS, net_errors[1], last=len(NET_STEPS))
net_slope2 = slope(NET_STEPS, net_errors[2], last=len(NET_STEPS))
check("on the network 2M is closer to the many-step solution than DDIM at every step count",
      all(e2 < e1 for e1, e2 in zip(net_errors[1], net_errors[2])),
      ", ".join(f"n = {n}: {e2:.3f} vs {e1:.3f}" for n, e1, e2 in zip(NET_STEPS, net_errors[1], net_errors[2])))
fall1, fall2 = net_errors[1][0] / net_errors[1][1], net_errors[2][0] / net_errors[2][1]
if FAST:    # the fast network has trained for 6 steps: its field is rough, and the orders show only as a ranking
    check(f"doubling the steps ({NET_STEPS[0]} -> {NET_STEPS[1]}) divides 2M's error by more than DDIM's "
          "(4x and 2x in theory)", fall2 > 1.3 * fall1, f"{fall2:.1f}x vs {fall1:.1f}x")
else:       # a trained network: near 4x, which a first-order method (~2x) cannot reach
    check(f"doubling the steps ({NET_STEPS[0]} -> {NET_STEPS[1]}) divides 2M's error by ~4 (over 3) and DDIM's by "
          "~2", fall2 > 3.0 and fall2 > 1.5 * fall1, f"{fall2:.1f}x vs {fall1:.1f}x")
# Further down the errors stop falling as cleanly, most visibly with the examples' network: a network is smooth in
# lambda only down to roughly the spacing of the timesteps it was trained at (its output wiggles between them, with
# the fastest sine of its time embedding), and a solver's order pays only where the field it integrates is smooth.

fig, ax = plt.subplots(figsize=(7, 4.5))
ax.loglog(NET_STEPS, net_errors[1], "o-", linewidth=2, label=f"first order = DDIM (slope {net_slope1:.2f})")
ax.loglog(NET_STEPS, net_errors[2], "s-", linewidth=2, label=f"DPM-Solver++(2M) (slope {net_slope2:.2f})")
ax.set(xlabel="steps n (model calls)", ylabel=f"RMS pixel distance to 2M with {NET_REFERENCE} steps",
       title="The trained network: steps uniform in lambda, no guidance, no clipping")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "convergence_network.png", dpi=100)
plt.close(fig)
saved(out / "convergence_network.png")

# %% 5. What it buys: digits in a few steps
# ---------------------------------------------------------------------------------------------------
section("5. What it buys: digits in a few steps")
# As tinyddpm samples for real: x0_hat clipped to [-1, 1], DPM-Solver++ with its defaults (the last step to sigma =
# 0), DDIM with the clipped estimate's eps (use_clipped_model_output, as sample_digits does).
guided = GuidedModel(model, config.guidance, config.unet.null_label)
FEW = (3, 5, 10) if not FAST else (2, 4)
rows, names = [], []
for n in FEW:
    rows.append(ddim_sample(guided, net_schedule, x_T=x_T_net, labels=digits, num_steps=n, clip="static",
                            use_clipped_model_output=True, progress=False))
    names.append(f"DDIM {n}")
    rows.append(dpm_solver_sample(guided, net_schedule, x_T=x_T_net, labels=digits, num_steps=n, clip="static",
                                  progress=False))
    names.append(f"2M {n}")
# The reference row is drawn like the rows above it (guided, clipped, the same starting noise), with many steps.
reference_row = dpm_solver_sample(guided, net_schedule, x_T=x_T_net, labels=digits, num_steps=NET_REFERENCE,
                                  clip="static", progress=False)
rows.append(reference_row)
names.append(f"2M {NET_REFERENCE}")
distances = [rms(row, reference_row) for row in rows[:-1]]
print("  RMS distance to 2M with " + f"{NET_REFERENCE} steps: "
      + ", ".join(f"{name} {d:.3f}" for name, d in zip(names, distances)))
check(f"with more steps both samplers move toward the {NET_REFERENCE}-step picture",
      distances[-2] < distances[0] and distances[-1] < distances[1],
      f"DDIM {distances[0]:.3f} -> {distances[-2]:.3f}, 2M {distances[1]:.3f} -> {distances[-1]:.3f}")
saved(plot_sample_grid(out / "few_steps.png", np.stack(rows), row_labels=names, col_labels=[str(d) for d in digits],
                       title="DDIM vs DPM-Solver++(2M), one noise per column"))

# %% Exercises
# ---------------------------------------------------------------------------------------------------
try_this(__doc__)
finish(started)
