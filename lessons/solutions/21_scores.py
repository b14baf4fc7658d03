"""Solutions to lesson 21 (the score view): the three "Try this" exercises, worked and checked.

Try each exercise in lessons/21_scores.py yourself first; then run this file and compare.

Run it:   python lessons/solutions/21_scores.py          (--fast: fewer samples, fewer starting points)

Everything here uses the lesson's three-component mixture, whose score is exact at every noise level, and its
linear schedule (T = 1000).

Figures (in lessons/output/21_scores/, with a solution_ prefix):
  solution_dsm_samples.png  the DSM fit's error at each timestep with N_DSM and with a tenth of it
  solution_solvers.png      error against steps: DDIM, Euler in phi, and Heun, on the mixture (and on one point)
"""
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the lessons folder, for _common

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import FAST, banner, check, finish, output_dir, saved, section  # noqa: E402
from tinyddpm.diffusion import ddim_timesteps, make_schedule, q_sample  # noqa: E402

started = time.perf_counter()
out = output_dir(__file__)
banner("Solutions to lesson 21: the score view")

MIX = dict(w=np.array([0.3, 0.45, 0.25]), m=np.array([-0.6, 0.1, 0.7]), s=np.array([0.1, 0.2, 0.08]))   # the lesson's
N_DSM = 20_000 if FAST else 200_000
DSM_TIMESTEPS = (20, 100, 300, 700)
N_FLOW = 500 if FAST else 4000
schedule = make_schedule("linear", 1000)
T = schedule.num_timesteps
rng = np.random.default_rng(0)


def ab_at(t):
    return float(schedule.sqrt_alpha_bar[t]), float(schedule.sqrt_one_minus_alpha_bar[t])


def score(x, a, b, w, m, s):
    """grad log p_t(x) of the mixture (w, m, s) noised to x_t = a x0 + b eps (the lesson's section 1)."""
    x = np.asarray(x, dtype=np.float64)[..., None]
    v = a**2 * s**2 + b**2
    logc = np.log(w) - 0.5 * np.log(v) - 0.5 * (x - a * m) ** 2 / v
    r = np.exp(logc - logc.max(axis=-1, keepdims=True))
    return np.sum(r / r.sum(axis=-1, keepdims=True) * (-(x - a * m) / v), axis=-1)


def sample_data(n, rng, w, m, s):
    k = rng.choice(len(w), size=n, p=w)
    return m[k] + s[k] * rng.standard_normal(n)


def rms(a, b):
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def slope(ns, errors, last=4):
    return float(np.polyfit(np.log(ns[-last:]), np.log(errors[-last:]), 1)[0])


# ---------------------------------------------------------------------------------------------------
section("Exercise 1 (run): a tenth of the training pairs")
# A least-squares fit with p features on n noisy targets has a variance error of about (p / n) times the target's
# noise variance. The DSM target -eps / b scatters around the score with std 1 / b (12.6 at t = 20, 1.0 at t = 700),
# and what matters is that noise relative to the score's own size, RMS(score). At small t the score is large (the
# modes are narrow: |score| ~ 1 / (s^2 + b^2)) but the noise grows faster, like 1 / b, so the ratio (1 / b) / RMS(score)
# is largest at the smallest t: prediction, t = 20 suffers most, and a tenth of the pairs multiplies the variance
# part of the error by about sqrt(10) = 3.2 wherever it dominates. At t = 700 the score is almost a straight line,
# which the features (1, x, bumps) hold exactly, so there is little to lose.
def features(x, centres, width):
    return np.concatenate([np.ones((len(x), 1)), x[:, None], np.exp(-0.5 * ((x[:, None] - centres) / width) ** 2)],
                          axis=1)


def dsm_error(t, n, rng, bumps=24, n_test=20_000):
    """The lesson's fit_dsm + relative_score_error: the fitted score's RMS error relative to the score's RMS."""
    a, b = ab_at(t)
    eps = rng.standard_normal(n)
    x = a * sample_data(n, rng, **MIX) + b * eps
    lo, hi = np.quantile(x, [0.002, 0.998])
    centres, width = np.linspace(lo, hi, bumps), 1.5 * (hi - lo) / (bumps - 1)
    coef = np.linalg.lstsq(features(x, centres, width), -eps / b, rcond=None)[0]
    x_test = a * sample_data(n_test, rng, **MIX) + b * rng.standard_normal(n_test)
    exact = score(x_test, a, b, **MIX)
    return float(np.sqrt(np.mean((features(x_test, centres, width) @ coef - exact) ** 2) / np.mean(exact**2)))


REPEATS = 3                                             # average a few fits: one fit's error is itself noisy
ratio_noise = {}
err_full, err_tenth = {}, {}
for t in DSM_TIMESTEPS:
    a, b = ab_at(t)
    probe = a * sample_data(20_000, rng, **MIX) + b * rng.standard_normal(20_000)
    ratio_noise[t] = (1 / b) / float(np.sqrt(np.mean(score(probe, a, b, **MIX) ** 2)))
    err_full[t] = float(np.mean([dsm_error(t, N_DSM, rng) for _ in range(REPEATS)]))
    err_tenth[t] = float(np.mean([dsm_error(t, N_DSM // 10, rng) for _ in range(REPEATS)]))
    print(f"    t = {t:3d}: target noise / score RMS {ratio_noise[t]:5.2f}; error with {N_DSM:,} pairs "
          f"{err_full[t]:6.2%}, with {N_DSM // 10:,} {err_tenth[t]:6.2%} ({err_tenth[t] / err_full[t]:.1f}x)")
worst_t = max(err_tenth, key=err_tenth.get)
check("prediction: the target's noise relative to the score is largest at the smallest t",
      max(ratio_noise, key=ratio_noise.get) == DSM_TIMESTEPS[0], f"{ratio_noise[DSM_TIMESTEPS[0]]:.2f} at t = "
      f"{DSM_TIMESTEPS[0]}, {ratio_noise[DSM_TIMESTEPS[-1]]:.2f} at t = {DSM_TIMESTEPS[-1]}")
check("... and that is where the fit with a tenth of the pairs suffers most", worst_t == DSM_TIMESTEPS[0],
      f"{err_tenth[worst_t]:.2%} of the score's RMS at t = {worst_t}")
grow = err_tenth[DSM_TIMESTEPS[0]] / err_full[DSM_TIMESTEPS[0]]
check("... where the variance dominates, a tenth of the data multiplies the error by about sqrt(10) = 3.2",
      2.2 < grow < 4.5, f"{grow:.1f}x at t = {DSM_TIMESTEPS[0]}")

fig, ax = plt.subplots(figsize=(6, 4))
ax.semilogy(DSM_TIMESTEPS, [err_full[t] for t in DSM_TIMESTEPS], "o-", label=f"{N_DSM:,} pairs")
ax.semilogy(DSM_TIMESTEPS, [err_tenth[t] for t in DSM_TIMESTEPS], "s-", label=f"{N_DSM // 10:,} pairs")
ax.set(xlabel="timestep t", ylabel="RMS(fit - score) / RMS(score)", title="DSM: the noisiest targets are at small t")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(out / "solution_dsm_samples.png", dpi=100)
plt.close(fig)
saved(out / "solution_dsm_samples.png")

# ---------------------------------------------------------------------------------------------------
section("Exercise 2 (modify): Euler in the angle phi instead of DDIM")
# x = cos(phi) x0 + sin(phi) eps with tan(phi) = sigma, and the ODE is dx/dphi = v_hat = -tan(phi)(x + score). The plain
# Euler step x' = x + (phi' - phi) v_hat holds v_hat fixed over the step, as DDIM holds eps_hat fixed in (y, sigma).
# Prediction: both are one-step methods exact for a constant right side, so both are first order: error ~ 1 / steps.
# Which is closer at a given step count depends on which quantity changes less along the true path, and nothing makes
# eps_hat the winner in general: on this mixture the measurement says Euler in phi is closer. For data that is one
# point m, though, eps_hat is exactly constant along every path (y = m + sigma eps), so DDIM is exact in one step,
# while v_hat = cos(phi) eps - sin(phi) m still turns with phi and Euler in phi is not.


def start(mix, rng):
    aT, bT = ab_at(T - 1)
    return q_sample(schedule, sample_data(N_FLOW, rng, **mix), T - 1, rng.standard_normal(N_FLOW))


def sigma_grid(n):
    """sigma at the lesson's trailing timesteps for n steps (the model is called there), then 0: the clean end."""
    ts = ddim_timesteps(T, n, "trailing")
    return np.array([ab_at(t)[1] / ab_at(t)[0] for t in ts] + [0.0])


def eps_in_y(y, sigma, mix):
    return -sigma * score(y, 1.0, sigma, **mix)


def ddim(x_T, n, mix):
    """The lesson's ddim_in_the_open: Euler in (y, sigma), i.e. DDIM with eta = 0."""
    sig = sigma_grid(n)
    y = x_T / ab_at(T - 1)[0]
    for i in range(n):
        y = y + (sig[i + 1] - sig[i]) * eps_in_y(y, sig[i], mix)
    return y


def euler_phi(x_T, n, mix):
    """Exercise 2: x' = x + (phi' - phi) v_hat on the same timesteps, v_hat = -tan(phi)(x + score)."""
    phi = np.arctan(sigma_grid(n))
    x = x_T * math.cos(phi[0]) / ab_at(T - 1)[0]                     # cos(phi_T) = a_999 up to round-off
    for i in range(n):
        v_hat = -math.tan(phi[i]) * (x + score(x, math.cos(phi[i]), math.sin(phi[i]), **mix))
        x = x + (phi[i + 1] - phi[i]) * v_hat
    return x


def reference(x_T, mix, steps=400, rho=7.0):
    """The lesson's RK4 in u = sigma^(1/rho), converged to ~1e-7."""
    aT, bT = ab_at(T - 1)
    u = np.linspace((bT / aT) ** (1 / rho), 0.0, steps + 1)
    f = lambda y, u: eps_in_y(y, u**rho, mix) * rho * u ** (rho - 1)   # noqa: E731
    y = x_T / aT
    for i in range(steps):
        h = u[i + 1] - u[i]
        k1 = f(y, u[i])
        k2 = f(y + h / 2 * k1, u[i] + h / 2)
        k3 = f(y + h / 2 * k2, u[i] + h / 2)
        k4 = f(y + h * k3, u[i + 1])
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


STEPS = (5, 10, 20, 40, 100, 200)
x_T = start(MIX, rng)
x_ref = reference(x_T, MIX)
err_ddim = [rms(ddim(x_T, n, MIX), x_ref) for n in STEPS]
err_phi = [rms(euler_phi(x_T, n, MIX), x_ref) for n in STEPS]
print("    steps:         " + "".join(f"{n:>9d}" for n in STEPS))
print("    DDIM:          " + "".join(f"{e:9.1e}" for e in err_ddim))
print("    Euler in phi:  " + "".join(f"{e:9.1e}" for e in err_phi))
s_ddim, s_phi = slope(STEPS, err_ddim), slope(STEPS, err_phi)
check("prediction: Euler in phi is first order too", -1.2 < s_phi < -0.8 and -1.2 < s_ddim < -0.8,
      f"fitted slopes {s_phi:.2f} (Euler in phi) and {s_ddim:.2f} (DDIM)")
i20 = STEPS.index(20)
print(f"    at 20 steps: Euler in phi {err_phi[i20]:.3f}, DDIM {err_ddim[i20]:.3f}")
check("measured: on this mixture Euler in phi is the closer one at 20 steps (its constant is smaller)",
      err_phi[i20] < err_ddim[i20], f"{err_phi[i20]:.3f} vs {err_ddim[i20]:.3f}: "
                                    f"{err_ddim[i20] / err_phi[i20]:.1f}x")
POINT = dict(w=np.array([1.0]), m=np.array([0.3]), s=np.array([0.0]))      # the data is the single point 0.3
x_T_point = start(POINT, rng)
one_ddim = float(np.max(np.abs(ddim(x_T_point, 1, POINT) - 0.3)))
one_phi = float(np.max(np.abs(euler_phi(x_T_point, 1, POINT) - 0.3)))
err_point_phi = [rms(euler_phi(x_T_point, n, POINT), 0.3) for n in STEPS]
check("with one data point DDIM is exact in a single step; Euler in phi is not", one_ddim < 1e-12 and one_phi > 0.1,
      f"max error {one_ddim:.1e} (DDIM, 1 step) vs {one_phi:.2f} (Euler in phi, 1 step; "
      f"{err_point_phi[i20]:.1e} at 20 steps)")

# ---------------------------------------------------------------------------------------------------
section("Exercise 3 (create): Heun's method in (y, sigma)")
# Heun (Karras et al. 2022, Algorithm 1): an Euler step (the DDIM step) to a trial point, eps_hat evaluated there, and
# the step redone with the average of the two slopes:
#     y~ = y + (sigma' - sigma) e0,   e1 = eps_hat(y~, sigma'),   y' = y + (sigma' - sigma) (e0 + e1) / 2
# The trapezoidal rule: second order. The last step ends at sigma = 0, where eps_hat needs no model: at sigma = 0,
# x_0 is x0 itself and eps is independent of it, so E[eps | x_0] = 0 for any data. So every step can be a Heun step,
# at 2n - 1 model calls for n steps. (Karras et al. end with an Euler step instead, from their sigma_min = 0.002. On
# the t-uniform trailing grid the last step starts far higher, at sigma(T / n - 1), right where the mixture's eps_hat
# turns fastest: an Euler step there costs the order; try it - from 40 steps on the error falls only like 1 / n.)


def heun(x_T, n, mix):
    sig = sigma_grid(n)
    y = x_T / ab_at(T - 1)[0]
    for i in range(n):
        h = sig[i + 1] - sig[i]
        e0 = eps_in_y(y, sig[i], mix)                                  # a model call
        e1 = eps_in_y(y + h * e0, sig[i + 1], mix) if sig[i + 1] > 0 else 0.0 * e0   # a call, except at sigma = 0
        y = y + h * (e0 + e1) / 2
    return y


def ddim_calls(x_T, calls, mix):
    """DDIM with `calls` model calls on trailing timesteps (each step to the next listed one), for equal cost."""
    ts = ddim_timesteps(T, calls, "trailing")
    sig = np.array([ab_at(t)[1] / ab_at(t)[0] for t in ts] + [0.0])
    y = x_T / ab_at(T - 1)[0]
    for i in range(calls):
        y = y + (sig[i + 1] - sig[i]) * eps_in_y(y, sig[i], mix)
    return y


HEUN_STEPS = (5, 10, 20, 40, 100)
calls = [2 * n - 1 for n in HEUN_STEPS]
err_heun = [rms(heun(x_T, n, MIX), x_ref) for n in HEUN_STEPS]
err_ddim_calls = [rms(ddim_calls(x_T, c, MIX), x_ref) for c in calls]
print("    Heun steps:       " + "".join(f"{n:>9d}" for n in HEUN_STEPS))
print("    model calls:      " + "".join(f"{c:>9d}" for c in calls))
print("    Heun:             " + "".join(f"{e:9.1e}" for e in err_heun))
print("    DDIM, same calls: " + "".join(f"{e:9.1e}" for e in err_ddim_calls))
s_heun = slope(HEUN_STEPS, err_heun, last=3)
check("Heun converges at second order (error ~ 1 / steps^2)", -2.4 < s_heun < -1.6,
      f"fitted slope {s_heun:.2f} over the last three step counts")
wins = [c for c, eh, ed in zip(calls, err_heun, err_ddim_calls) if eh < ed]
check("at equal model calls DDIM is closer at the fewest calls, Heun from 39 calls on",
      wins == [c for c in calls if c >= 39],
      ", ".join(f"{c} calls: {eh:.1e} vs {ed:.1e}" for c, eh, ed in zip(calls, err_heun, err_ddim_calls)))

fig, ax = plt.subplots(figsize=(7, 4.5))
ax.loglog(STEPS, err_ddim, "o-", label=f"DDIM (slope {s_ddim:.2f})")
ax.loglog(STEPS, err_phi, "s-", label=f"Euler in phi (slope {s_phi:.2f})")
ax.loglog(STEPS, err_point_phi, "s:", color="C1", label="Euler in phi, one data point (DDIM: exact)")
ax.loglog(calls, err_heun, "^-", label=f"Heun, against model calls (slope per step {s_heun:.2f})")
ax.set(xlabel="steps (Heun: model calls)", ylabel="RMS distance to the RK4 solution",
       title="Solvers of the probability-flow ODE on the mixture")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "solution_solvers.png", dpi=100)
plt.close(fig)
saved(out / "solution_solvers.png")

finish(started)
