"""Solutions to lesson 13 (DDIM): the three "Try this" exercises, worked and checked.

Try each exercise in lessons/13_ddim.py yourself first; then run this file and compare.

Run it:   python lessons/solutions/13_ddim.py          (--fast: four digits, fewer steps)

Figures (in lessons/output/13_ddim/, with a solution_ prefix):
  solution_few_steps.png      DDIM with 1, 2, 3 and 5 steps and the many-step reference, one starting noise
  solution_prev_timestep.png  5-step DDIM with each spacing, prev_timestep 'diffusers' and 'next'
  solution_inversion.png      real digits, the noise DDIM inversion finds for them, and DDIM sampled back from it
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the lessons folder, for _common

import numpy as np  # noqa: E402

from _common import (FAST, banner, check, finish, judge, mnist_digits, output_dir, relative_error, saved,  # noqa: E402
                     section, train_first_note, trained_model)
from tinyddpm.classifiers.judge import classify  # noqa: E402
from tinyddpm.diffusion import SPACINGS, GuidedModel, ddim_prev_timesteps, ddim_sample, ddim_timesteps  # noqa: E402
from tinyddpm.sampling import unet_model  # noqa: E402
from tinyddpm.viz import plot_sample_grid  # noqa: E402

started = time.perf_counter()
out = output_dir(__file__)
banner("Solutions to lesson 13: DDIM")

params, config, schedule, where = trained_model()
print(f"  network: {where}")
train_first_note(where)                             # the lessons' small network: how to get the better one
T = schedule.num_timesteps
model = unet_model(params, config.unet)
guided = GuidedModel(model, config.guidance, config.unet.null_label)       # as the lesson samples
digits = np.arange(4) if FAST else np.arange(10)
names = [str(d) for d in digits]
dtype = params["conv_in.w"].dtype
x_T = np.random.default_rng(1).standard_normal((len(digits), 1, 28, 28)).astype(dtype)   # the lesson's noise


def ddim(num_steps, spacing="trailing", prev_timestep="diffusers"):
    """The lesson's eta = 0 DDIM from its fixed starting noise (static clipping, eps re-derived from the clipped x0)."""
    return ddim_sample(guided, schedule, num_steps=num_steps, eta=0.0, spacing=spacing, prev_timestep=prev_timestep,
                       labels=digits, x_T=x_T, clip="static", use_clipped_model_output=True, seed=0, progress=False)


def rms(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - b) ** 2)))


def sharpness(x):
    """Mean |difference| between neighbouring pixels: low for a blur, high for crisp strokes, highest for noise."""
    x = np.asarray(x, np.float64)
    return float(np.mean(np.abs(np.diff(x, axis=-1))) + np.mean(np.abs(np.diff(x, axis=-2))))


REFERENCE_STEPS = 16 if FAST else 100
reference = ddim(REFERENCE_STEPS)

# ---------------------------------------------------------------------------------------------------
section("Exercise 1 (run): STEP_COUNTS = (1, 2, 3, 5)")
# One step with 'trailing' spacing calls the model once at t = 999 and jumps to t' = -1, where abar = 1 and the
# direction term has weight sqrt(1 - 1 - 0) = 0: the sample is x0_hat(x_T, 999), clipped. The exercise expects a
# blurry average digit - and that is what the *ideal* estimate E[x0 | x_T] is. But this network predicts eps, and
#     x0_hat = (x_T - sqrt(1 - abar_999) eps_hat) / sqrt(abar_999),     sqrt(abar_999) = 0.0064,
# divides its small error in eps by 0.0064: an RMS eps error of 0.03 becomes an x0 error of ~5 (lesson 02, exercise
# 3; lesson 10, exercise 3 measured it). Clipped to [-1, 1], that is salt-and-pepper noise, not a digit. From two
# steps on, the later calls happen at t <= 499, where the amplification sqrt(1 - abar) / sqrt(abar) is ~3 or less,
# and the digits appear: readable at 2-3 steps, clean by 5 (with examples/train_mnist.py's network).
STEP_COUNTS = (1, 2, 3, 5)
runs = {n: ddim(n) for n in STEP_COUNTS}
a999, b999 = float(schedule.sqrt_alpha_bar[T - 1]), float(schedule.sqrt_one_minus_alpha_bar[T - 1])
eps_999 = guided(x_T, np.full(len(x_T), T - 1), digits)
x0_raw = (x_T - b999 * eps_999) / a999                                  # float32, as the sampler computes it
err = relative_error(runs[1], np.clip(x0_raw, -1, 1))
check("one DDIM step is exactly the clipped x0_hat at t = 999", err < 1e-6, f"max relative error {err:.1e}")
print(f"  at t = 999 the eps error is multiplied by sqrt(1 - abar) / sqrt(abar) = {b999 / a999:.0f}; the unclipped "
      f"x0_hat has RMS {float(np.sqrt(np.mean(x0_raw.astype(np.float64) ** 2))):.1f} (data: at most 1)")
dist = {n: rms(x, reference) for n, x in runs.items()}
sharp = {n: sharpness(x) for n, x in runs.items()}
judge_params, judge_name = judge()
read = {n: float(np.mean(classify(judge_params, x) == digits)) for n, x in runs.items()}
read[REFERENCE_STEPS] = float(np.mean(classify(judge_params, reference) == digits))
for n in STEP_COUNTS:
    print(f"    {n} step(s): RMS distance to the {REFERENCE_STEPS}-step images {dist[n]:.3f}, neighbour-pixel "
          f"contrast {sharp[n]:.3f}, read as the requested digit {read[n]:.0%}")
print(f"    {REFERENCE_STEPS} steps: contrast {sharpness(reference):.3f}, read as requested {read[REFERENCE_STEPS]:.0%} "
      f"({judge_name})")
if FAST:
    print("  (fast mode: the network is barely trained, so noise and convergence are printed, not checked)")
else:
    check("one step is not a digit but amplified noise: its unclipped x0_hat leaves the data range (RMS > 2)",
          float(np.sqrt(np.mean(x0_raw.astype(np.float64) ** 2))) > 2, "clipped, it is salt-and-pepper")
    check("... the noisiest row: neighbouring pixels differ more at 1 step than at 5 or at the reference",
          sharp[1] > sharp[5] and sharp[1] > sharpness(reference),
          f"contrast {sharp[1]:.3f} at 1 step, {sharp[5]:.3f} at 5, {sharpness(reference):.3f} at {REFERENCE_STEPS}")
    check(f"the images move towards the {REFERENCE_STEPS}-step solution as the steps grow (5 steps 1.5x closer)",
          dist[5] * 1.5 < dist[1], f"RMS {dist[1]:.3f} at 1 step -> {dist[5]:.3f} at 5")
saved(plot_sample_grid(out / "solution_few_steps.png", np.stack([runs[n] for n in STEP_COUNTS] + [reference]),
                       col_labels=names, row_labels=[f"{n} step(s)" for n in STEP_COUNTS] + [f"{REFERENCE_STEPS} steps"],
                       title="DDIM (eta = 0) with very few steps; the first row is the clipped x0_hat at t = 999"))

# ---------------------------------------------------------------------------------------------------
section('Exercise 2 (modify): prev_timestep="next"')
# With 'linspace' and 5 steps the model is called at 999 749 500 250 0, but the diffusers rule steps by T // 5 = 200:
# 999 -> 799, 749 -> 549, 500 -> 300, 250 -> 50, 0 -> clean. So every call after the first is told a timestep
# (749) below the noise the state really has (799): the network underestimates the noise and leaves some in. The
# worst is the last call: the state is at t = 50 (noise std sqrt(1 - abar_50) ~ 0.2), the model is told t = 0
# (noise std 0.01), so its x0_hat is essentially the noisy state itself, and that is the output. With "next" every
# step lands where the next call is (999 -> 749 -> 500 -> 250 -> 0 -> clean): prediction, the 'linspace' row
# improves - closer to the many-step solution. 'leading' (800 ... 0, steps of 200) and 'trailing' when T divisible by
# n (999 799 ... 199) already land on their next call: "next" changes nothing there, bit for bit.
STEPS = 3 if FAST else 5
rows, labels_rows = [], []
for spacing in SPACINGS:
    ts = ddim_timesteps(T, STEPS, spacing)
    rule = {r: np.maximum(ddim_prev_timesteps(ts, T, r), -1).tolist() for r in ("diffusers", "next")}   # -1: clean
    result = {r: ddim(STEPS, spacing, r) for r in ("diffusers", "next")}
    d = {r: rms(x, reference) for r, x in result.items()}
    print(f"    {spacing:9s} calls at {ts.tolist()}; lands (diffusers) {rule['diffusers']}, (next) {rule['next']}; "
          f"RMS to the {REFERENCE_STEPS}-step images: {d['diffusers']:.3f} -> {d['next']:.3f}")
    if rule["diffusers"] == rule["next"]:
        check(f"{spacing}: the two rules land on the same timesteps, so the samples are identical",
              np.array_equal(result["diffusers"], result["next"]), "bit for bit")
    if spacing == "linspace":
        check('prediction: with "next" the linspace samples land closer to the many-step solution',
              d["next"] < 0.8 * d["diffusers"], f"RMS {d['diffusers']:.3f} -> {d['next']:.3f}")
    rows += [result["diffusers"], result["next"]]
    labels_rows += [f"{spacing}, diffusers", f"{spacing}, next"]
saved(plot_sample_grid(out / "solution_prev_timestep.png", np.stack(rows), col_labels=names, row_labels=labels_rows,
                       title=f"DDIM, {STEPS} steps: where each step lands ('diffusers': t - T // n; 'next': the next call)"))

# ---------------------------------------------------------------------------------------------------
section("Exercise 3 (create): DDIM inversion")
# eta = 0 DDIM is a deterministic map from x_T to x0; run its update the other way. From a state x at timestep a
# to the next larger b:
#     eps_hat = model(x, a),   x0_hat = (x - sqrt(1 - abar_a) eps_hat) / sqrt(abar_a),
#     x_b     = sqrt(abar_b) x0_hat + sqrt(1 - abar_b) eps_hat
# the same formula as a sampling step with t and t' swapped. It is exact only in the limit of small steps: the
# forward step uses eps_hat at the end it starts from, and the sampling step back uses it at the other end, so the
# two differ by how much eps_hat changes over one step - the round trip's error shrinks as the steps get smaller.
# The first step starts from the clean digit (a = "-1", abar = 1, where the network was never asked): we ask it at
# t = 0, the nearest timestep it knows. Inversion uses the plain conditional model (guidance scale 1) and no
# clipping: both would break the symmetry between the two directions.


def ddim_inversion(x0, labels, steps):
    """The starting noise x_T that eta = 0 DDIM ('trailing' spacing, `steps` steps, no clipping) maps to x0."""
    ascending = ddim_timesteps(T, steps, "trailing")[::-1]                 # e.g. 99 199 ... 999 for 10 steps
    x, a = x0, -1
    for b in ascending:
        ab_a = 1.0 if a < 0 else float(schedule.alpha_bar[a])
        ab_b = float(schedule.alpha_bar[b])
        eps = model(x, np.full(len(x), max(a, 0)), labels)
        x0_hat = (x - np.sqrt(1.0 - ab_a) * eps) / np.sqrt(ab_a)
        x = (np.sqrt(ab_b) * x0_hat + np.sqrt(1.0 - ab_b) * eps).astype(x0.dtype)
        a = b
    return x


def ddim_plain(x_start, labels, steps):
    return ddim_sample(model, schedule, x_T=x_start, labels=labels, num_steps=steps, eta=0.0, spacing="trailing",
                       seed=0, progress=False)


real, real_labels = mnist_digits(len(digits), split="test", seed=7)
real = real.astype(dtype)
lab = real_labels if config.unet.num_classes is not None else None
errors, inverted = {}, {}
for steps in ((5, 10) if FAST else (10, 50)):
    inverted[steps] = ddim_inversion(real, lab, steps)
    back = ddim_plain(inverted[steps], lab, steps)
    errors[steps] = (rms(back, real), back)
    print(f"    {steps} steps: the inverted noise has mean {inverted[steps].mean():+.2f}, std {inverted[steps].std():.2f}; "
          f"sampled back, RMS distance to the real digits {errors[steps][0]:.3f}")
few, many = sorted(errors)
fresh = np.clip(ddim_plain(np.random.default_rng(9).standard_normal(real.shape).astype(dtype), lab, many), -1, 1)
baseline = rms(fresh, real)
print(f"    for scale: a DDIM sample of the same labels from fresh noise (clipped to [-1, 1]) is {baseline:.3f} "
      "from the real digits")
if FAST:
    print("  (fast mode: the network is barely trained, so the round trip's accuracy is printed, not checked)")
else:
    check(f"DDIM maps the inverted noise back close to the real digit ({many} steps: under a third of a fresh "
          "sample's distance)", errors[many][0] < baseline / 3, f"RMS {errors[many][0]:.3f} vs {baseline:.3f}")
check("smaller steps make a better round trip", errors[many][0] < errors[few][0],
      f"RMS {errors[few][0]:.3f} with {few} steps, {errors[many][0]:.3f} with {many}")
saved(plot_sample_grid(out / "solution_inversion.png",
                       np.stack([real, np.clip(inverted[many] / 3, -1, 1), errors[many][1], errors[few][1], fresh]),
                       col_labels=[str(d) for d in real_labels],
                       row_labels=["real digit", "inverted x_T / 3", f"back, {many} steps", f"back, {few} steps",
                                   "fresh noise"],
                       title="DDIM inversion: find the noise, then sample the digit back from it"))

finish(started)
