"""Solutions to lesson 12 (DDPM sampling): the three "Try this" exercises, worked and checked.

Try each exercise in lessons/12_ddpm_sampling.py yourself first; then run this file and compare.

Run it:   python lessons/solutions/12_ddpm_sampling.py          (--fast: a 100-step schedule, two digits)

One 1000-step sampling loop serves exercises 1 and 2: five digits with 'fixed_small' and the same five with
'fixed_large', side by side in one batch, from the same starting noise and with the same noise draws, so that the
variance is the only difference. (The lesson samples all ten digits; five keep this file within two minutes.)

Figures (in lessons/output/12_ddpm_sampling/, with a solution_ prefix):
  solution_variances.png   x_t and x0_hat at several t, fixed_small and fixed_large rows, and the final digits
  solution_skipping.png    1000-step DDPM, the 100-step skipping DDPM, and DDIM with eta = 1 on the same jumps
"""
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the lessons folder, for _common

import numpy as np  # noqa: E402

from _common import (FAST, banner, check, finish, output_dir, relative_error, saved, section,  # noqa: E402
                     train_first_note, trained_model)
from tinyddpm.diffusion import Schedule, ddim_sample, ddim_timesteps, ddpm_sample, make_schedule  # noqa: E402
from tinyddpm.sampling import unet_model  # noqa: E402
from tinyddpm.viz import plot_sample_grid  # noqa: E402

started = time.perf_counter()
out = output_dir(__file__)
banner("Solutions to lesson 12: DDPM sampling")

MU, S = 0.2, 0.6                                    # the lesson's Gaussian data, x0 ~ N(MU, S^2)
N_GAUSS = 20_000                                    # scalars: cheap, so the same in both modes
sch = make_schedule("linear", 1000)


def gaussian_eps_for(schedule):
    """The perfect noise predictor for x0 ~ N(MU, S^2) under `schedule` (lesson 12, section 5)."""
    def model(x_t, t, labels):
        ab = schedule.alpha_bar[t][:, None, None, None]
        return np.sqrt(1 - ab) * (x_t - np.sqrt(ab) * MU) / (ab * S * S + 1 - ab)
    return model


def gaussian_ok(x, extra=0.006):
    """The lesson's acceptance test: mean within 5 SE, std within 5 SE plus the sampler's own small bias."""
    se_mean, se_std = S / np.sqrt(len(x)), S / np.sqrt(2 * len(x))
    return abs(x.mean() - MU) < 5 * se_mean and abs(x.std() - S) < 5 * se_std + extra, \
        f"mean {x.mean():.4f} (+-{se_mean:.4f}), std {x.std():.4f} (+-{se_std:.4f})"


x_T_gauss = np.random.default_rng(0).standard_normal((N_GAUSS, 1, 1, 1))

# The network and the digits.
params, config, schedule, where = trained_model()
print(f"  network: {where}")
train_first_note(where)                             # the lessons' small network: how to get the better one
if FAST:
    schedule = make_schedule(config.schedule, 100)  # as the lesson's fast mode
T = schedule.num_timesteps
net = unet_model(params, config.unet)
DIGITS = np.array([3, 7] if FAST else [0, 2, 4, 6, 8])
K = len(DIGITS)
labels = DIGITS if config.unet.num_classes is not None else None
dtype = params["conv_in.w"].dtype
x_T = np.random.default_rng(2).standard_normal((K, 1, 28, 28)).astype(dtype)
SHOW_T = [T - 1, int(0.5 * T), int(0.2 * T), int(0.1 * T), int(0.05 * T), int(0.02 * T), 0]


def ddpm_both_variances(model, schedule, x_T, labels, seed=3):
    """The lesson's loop on a batch [x_T; x_T]: the first half with fixed_small, the second with fixed_large, the
    same z for both halves at every step. Returns the recorded (x_t, x0_hat) at SHOW_T, and (x, x0_hat, mean) of
    the last step t = 0, before the step's noise question is decided."""
    rng = np.random.default_rng(seed)
    n = len(x_T)
    x = np.concatenate([x_T, x_T])
    lab = None if labels is None else np.concatenate([labels, labels])
    shown = {}
    for t in range(schedule.num_timesteps - 1, -1, -1):
        eps_hat = model(x, np.full(len(x), t), lab)
        x0_hat = np.clip((x - float(schedule.sqrt_one_minus_alpha_bar[t]) * eps_hat) / float(schedule.sqrt_alpha_bar[t]),
                         -1.0, 1.0)
        mean = float(schedule.posterior_mean_coef1[t]) * x0_hat + float(schedule.posterior_mean_coef2[t]) * x
        if t in SHOW_T:
            shown[t] = (x.copy(), x0_hat.copy())
        if t == 0:
            return shown, (x, x0_hat, mean)
        z = rng.standard_normal((n,) + x.shape[1:], dtype=x.dtype)
        std = np.array([math.sqrt(schedule.posterior_variance[t])] * n + [math.sqrt(schedule.betas[t])] * n,
                       dtype=x.dtype)[:, None, None, None]
        x = mean + std * np.concatenate([z, z])


tic = time.perf_counter()
shown, (x_last, x0_last, mean_last) = ddpm_both_variances(net, schedule, x_T, labels)
print(f"  {2 * K} digits x {T} steps in {time.perf_counter() - tic:.1f} s")
samples_small, samples_large = mean_last[:K], mean_last[K:]

# ---------------------------------------------------------------------------------------------------
section('Exercise 1 (run): VARIANCE = "fixed_large"')
# The Gaussian check still passes: for data that is itself close to a standard normal beta_t is the exact reverse
# variance, and in between both choices give the right distribution up to a small bias (lesson 12, section 5).
# For the digits: beta_tilde_t / beta_t = (1 - abar_{t-1}) / (1 - abar_t) is above 0.99 for every t past the first
# ~100 steps (of 1000), so for 90% of the run the two samplers add the same noise and stay together; only in the
# last ~100 steps does fixed_large add more (at t = 1 about twice the variance: beta_1 against beta_tilde_1), and
# that noise is what the last frames of trajectory.png show. The network removes most of it again - each step
# predicts the noise in x_t, whatever put it there - so the digits barely change: the file prints the RMS difference
# of the finished digits and checks it stays under 0.1 on a range of 2.
for variance in ("fixed_small", "fixed_large"):
    x = ddpm_sample(gaussian_eps_for(sch), sch, x_T=x_T_gauss, seed=1, variance=variance, progress=False)
    ok, detail = gaussian_ok(x)
    check(f"the lesson's Gaussian check passes with {variance}", ok, detail)
ratio = sch.posterior_variance[1:] / sch.betas[1:]
first = 1 + int(np.argmax(ratio > 0.99))
print(f"  beta_tilde / beta: {ratio[0]:.2f} at t = 1, above 0.99 from t = {first} on (of 1000)")
rms = {t: float(np.sqrt(np.mean((shown[t][0][:K] - shown[t][0][K:]) ** 2))) for t in SHOW_T}
print("  RMS distance between the fixed_small and fixed_large states x_t:  "
      + ", ".join(f"t = {t}: {rms[t]:.3f}" for t in SHOW_T))
half_t = int(0.5 * T)
final = float(np.sqrt(np.mean((samples_small - samples_large) ** 2)))
check(f"the two runs coincide through the first half of the run (RMS < 0.005 at t = {half_t})", rms[half_t] < 0.005,
      f"RMS {rms[half_t]:.4f}")
check("they part only in the second half, most of it near the end: final difference over twice that at T/2",
      final > 2 * rms[half_t], f"final RMS difference {final:.4f} against {rms[half_t]:.4f} at t = {half_t}")
check("... and the finished digits barely change (RMS difference under 0.1 on a range of 2)", final < 0.1,
      f"{final:.4f}: the network removes most of the extra noise, each step predicting the noise in x_t")
grid = np.stack([np.stack([shown[t][k] for t in SHOW_T], axis=1) for k in (0, 1)], axis=1)   # (2K, 2, T', ...)
rows = [grid[:K, 0], grid[K:, 0], grid[:K, 1], grid[K:, 1]]                                     # each (K, T', ...)
order = np.stack(rows, axis=1).reshape(4 * K, len(SHOW_T), 1, 28, 28)
saved(plot_sample_grid(out / "solution_variances.png", order,
                       row_labels=[f"{w} '{d}'" for d in DIGITS for w in ("x_t small", "x_t large", "x0 small", "x0 large")],
                       col_labels=[f"t={t}" for t in SHOW_T],
                       title="DDPM, fixed_small and fixed_large from the same noise: they part only at the end"))

# ---------------------------------------------------------------------------------------------------
section("Exercise 2 (modify): noise added at t = 0 too")
# Prediction. fixed_small: the variance at t = 0 is beta_tilde_0 = (1 - abar_{-1}) / (1 - abar_0) beta_0 = 0, since
# abar_{-1} = 1: adding sigma_0 z = 0 * z changes nothing, bit for bit (one extra draw from the generator, after the
# last step, which nothing reads). fixed_large: sigma_0 = sqrt(beta_0) = 0.01 (0.03 for fast mode's 100-step
# schedule), so the finished digits get a faint layer of noise that no later step removes. Which checks notice:
# "the samples lie in [-1, 1]" fails as soon as one pixel of the batch lies within the noise's reach of -1 or +1:
# a pixel at distance d from the edge leaves with probability Phi(-d / sigma_0), one half where x0_hat was clipped
# to exactly -1 or +1 (a well-trained network's background often is). Whether a batch has such pixels depends on the
# network and on the batch, so the file counts them below and predicts how many leave, rather than promising an
# outcome. "ddpm_in_the_open == tinyddpm's ddpm_sample" fails for fixed_large (ddpm_sample adds no noise at t = 0).
# The Gaussian N(MU, S^2) check still passes: 0.01^2 more variance moves the std by 1e-4, far inside its tolerance.
rng_t0 = np.random.default_rng(4)
z0 = rng_t0.standard_normal(x_last.shape, dtype=x_last.dtype)
sigma0 = {"fixed_small": math.sqrt(schedule.posterior_variance[0]), "fixed_large": math.sqrt(schedule.betas[0])}
noisy_small = mean_last[:K] + sigma0["fixed_small"] * z0[:K]
noisy_large = mean_last[K:] + sigma0["fixed_large"] * z0[K:]
check("fixed_small: beta_tilde_0 = 0, so noise at t = 0 leaves the digits exactly as they were",
      sigma0["fixed_small"] == 0.0 and np.array_equal(noisy_small, samples_small), "max |difference| 0")
added = (noisy_large - samples_large).astype(np.float64)
check("fixed_large: noise at t = 0 leaves a layer of std sqrt(beta_0) on the finished digits (within 5%)",
      abs(added.std() / sigma0["fixed_large"] - 1) < 0.05, f"std {added.std():.4f}, sqrt(beta_0) = {sigma0['fixed_large']:.4f}")
inside, outside = float(np.abs(samples_large).max()), float(np.abs(noisy_large).max())
distance = 1.0 - np.abs(samples_large.astype(np.float64))                 # each pixel's distance to the nearer edge
at_edge = int(np.sum(distance == 0.0))
phi = np.vectorize(lambda d: 0.5 * math.erfc(d / (sigma0["fixed_large"] * math.sqrt(2))))   # Phi(-d / sigma_0)
expected = float(np.sum(phi(distance)))
left = int(np.sum(np.abs(noisy_large) > 1.0))
print(f"  these {K} digits: max |x| {inside:.4f} without the noise, {outside:.4f} with; {at_edge} of "
      f"{samples_large.size} pixels sit exactly on -1 or +1 (clipped x0_hat)")
check("the pixels pushed out of [-1, 1] are as many as predicted (sum of Phi(-d / sigma_0), within 4 sqrt + 2)",
      abs(left - expected) < 4 * math.sqrt(expected) + 2, f"{left} pushed out, {expected:.1f} expected")
print(f"  so on this batch the lesson's range check {'FAILS' if left else 'still passes'} with the noise at t = 0"
      f" ({left} pixels outside); another batch or network can land on the other side")

def ddpm_noise_at_zero(model, schedule, x_T, variance, seed):
    """The lesson's ddpm_in_the_open with both `if t > 0` removed (no clipping, as its Gaussian runs)."""
    rng = np.random.default_rng(seed)
    var = schedule.posterior_variance if variance == "fixed_small" else schedule.betas
    x = x_T
    for t in range(schedule.num_timesteps - 1, -1, -1):
        eps_hat = model(x, np.full(len(x), t), None)
        x0_hat = (x - float(schedule.sqrt_one_minus_alpha_bar[t]) * eps_hat) / float(schedule.sqrt_alpha_bar[t])
        mean = float(schedule.posterior_mean_coef1[t]) * x0_hat + float(schedule.posterior_mean_coef2[t]) * x
        x = mean + math.sqrt(var[t]) * rng.standard_normal(x.shape, dtype=x.dtype)
    return x


for variance in ("fixed_small", "fixed_large"):
    mine = ddpm_noise_at_zero(gaussian_eps_for(sch), sch, x_T_gauss, variance, seed=1)
    lib = ddpm_sample(gaussian_eps_for(sch), sch, x_T=x_T_gauss, seed=1, variance=variance, progress=False)
    err = relative_error(mine, lib)
    ok, detail = gaussian_ok(mine)
    if variance == "fixed_small":
        check("Gaussian data, fixed_small: still == ddpm_sample, and N(MU, S^2)", err < 1e-12 and ok,
              f"max relative error {err:.1e}; {detail}")
    else:
        check("Gaussian data, fixed_large: no longer == ddpm_sample (that check fails), still N(MU, S^2)",
              err > 1e-4 and ok, f"max relative error {err:.1e}; {detail}")

# ---------------------------------------------------------------------------------------------------
section("Exercise 3 (create): a DDPM that visits only every 10th timestep")
# Take the visited timesteps s_0 < s_1 < ... (9, 19, ..., 999: every 10th, ending at T - 1) and treat them as a
# schedule of their own, with one beta per jump:
#     beta'_0 = 1 - abar_{s_0},   beta'_k = 1 - abar_{s_k} / abar_{s_{k-1}}
# whose cumulative product is abar at the visited steps, so q(x_{s_k} | x0) is unchanged and the network (asked at
# the real timestep s_k) sees what it was trained on. The posterior formulas need nothing else: ddpm_sample runs on
# Schedule(beta') as is, with a model that maps step k to timestep s_k. DDIM with eta = 1 on the same jumps is the
# same sampler: sigma^2 = (1 - abar') / (1 - abar) (1 - abar / abar') = beta_tilde' and the same mean (lesson 13
# shows it for consecutive steps; the algebra never used that the steps were consecutive). With the same seed it
# draws the same z in the same order, so the two agree to round-off.
every = 10
visited = np.sort(ddim_timesteps(T, T // every, "trailing"))                   # 9, 19, ..., T-1
abar_v = schedule.alpha_bar[visited]
betas_skip = 1.0 - abar_v / np.concatenate([[1.0], abar_v[:-1]])
skip = Schedule(betas_skip, name=f"every {every}th step of {schedule.name}")
err = relative_error(skip.alpha_bar, abar_v)
check("the jumps' betas reproduce alpha_bar at the visited timesteps", err < 1e-12,
      f"{len(visited)} steps from t = {visited[-1]} to {visited[0]}, max relative error {err:.1e}")


def on_visited(model):
    """model(x, k, labels) for the skipping schedule: step k is the real timestep visited[k]."""
    return lambda x, k, lab: model(x, visited[k], lab)


# On the Gaussian data, where the right answer is known, the skipping sampler (100 jumps of the 1000-step schedule,
# in both modes) against the full one: both keep the mean, but the jumps cost accuracy in the spread.
visited_g = np.sort(ddim_timesteps(1000, 1000 // every, "trailing"))
abar_g = sch.alpha_bar[visited_g]
skip_g = Schedule(1.0 - abar_g / np.concatenate([[1.0], abar_g[:-1]]))
perfect = gaussian_eps_for(sch)
x_skip = ddpm_sample(lambda x, k, lab: perfect(x, visited_g[k], lab), skip_g, x_T=x_T_gauss, seed=1, progress=False)
x_full = ddpm_sample(perfect, sch, x_T=x_T_gauss, seed=1, progress=False)
bias_skip, bias_full = abs(x_skip.std() - S), abs(x_full.std() - S)
print(f"  Gaussian data: 1000 steps mean {x_full.mean():.4f} std {x_full.std():.4f}; {len(visited_g)} jumps mean "
      f"{x_skip.mean():.4f} std {x_skip.std():.4f} (target {MU}, {S})")
check(f"the {len(visited_g)}-jump DDPM keeps the mean and the spread to within 0.07, but its std is over twice as "
      "far off as the 1000-step one's", abs(x_skip.mean() - MU) < 5 * S / np.sqrt(N_GAUSS) and bias_skip < 0.07
      and bias_skip > 2 * bias_full, f"std off by {bias_skip:.3f} against {bias_full:.3f}")
tic = time.perf_counter()
skipping = ddpm_sample(on_visited(net), skip, x_T=x_T, labels=labels, clip="static", seed=5, progress=False)
ddim_eta1 = ddim_sample(net, schedule, x_T=x_T, labels=labels, num_steps=len(visited), eta=1.0, spacing="trailing",
                        clip="static", use_clipped_model_output=True, seed=5, progress=False)
print(f"  two {len(visited)}-step runs in {time.perf_counter() - tic:.1f} s")
err = relative_error(skipping, ddim_eta1)
check("the skipping DDPM == ddim_sample(eta = 1) on the same jumps, same seed (float32 round-off)", err < 1e-4,
      f"max relative error {err:.1e}")
saved(plot_sample_grid(out / "solution_skipping.png", np.stack([samples_small, skipping, ddim_eta1]),
                       row_labels=[f"DDPM {T} steps", f"skip DDPM {len(visited)}", f"DDIM eta=1 {len(visited)}"],
                       col_labels=[str(d) for d in DIGITS],
                       title=f"Every {every}th timestep: the skipping DDPM is DDIM with eta = 1 (rows 2 and 3)"))
print(f"  The {T}-step and the {len(visited)}-step digits come from the same starting noise but different noise on "
      "the way:\n  different samples, not copies; the Gaussian data above is where their accuracy can be compared.")

finish(started)
