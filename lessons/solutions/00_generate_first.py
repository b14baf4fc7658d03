"""Solutions to lesson 00 (generate first): the three "Try this" exercises, worked and checked.

Try each exercise in lessons/00_generate_first.py yourself first; then run this file and compare.

Run it:   python lessons/solutions/00_generate_first.py          (--fast: the tiny network, fewer steps)

Figures (in lessons/output/00_generate_first/, with a solution_ prefix):
  solution_seeds.png      seed 0, seed 1, seed 0 again
  solution_one_step.png   the class averages (the best guess from pure noise), then 1, 2, 3, 5 and 20 steps
  solution_number.png     a number drawn in one call, and each of its digits drawn alone from the same noise
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the lessons folder, for _common

import numpy as np  # noqa: E402

from _common import (FAST, banner, check, finish, judge, mnist, output_dir, relative_error, saved,  # noqa: E402
                     section, train_first_note, trained_model)
from tinyddpm import sample_digits  # noqa: E402
from tinyddpm.classifiers.judge import predict_proba  # noqa: E402
from tinyddpm.data.pixels import to_model_range  # noqa: E402
from tinyddpm.diffusion import DPMSolverSampler, GuidedModel  # noqa: E402
from tinyddpm.sampling import unet_model  # noqa: E402
from tinyddpm.viz import plot_sample_grid  # noqa: E402

started = time.perf_counter()
out = output_dir(__file__)
banner("Solutions to lesson 00: generate first")

params, config, schedule, where = trained_model()
print(f"  network: {where}")
train_first_note(where)
model = unet_model(params, config.unet)
guided = GuidedModel(model, config.guidance, config.unet.null_label)     # as the lesson samples
STEPS = 5 if FAST else 20                                                # the lesson's step count
DIGITS = np.arange(10)
dtype = params["conv_in.w"].dtype
judge_params, judge_name = judge()


def draw(labels, x_T, steps=STEPS):
    """The lesson's loop: DPM-Solver++ from x_T, guided, x0_hat clipped; returns the finished pictures."""
    sampler = DPMSolverSampler(schedule, steps, clip="static")
    x = x_T
    for t in sampler.timesteps:
        x = sampler.step(guided(x, np.full(len(x), t), labels), t, x).prev_sample
    return x


def rms(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


# ---------------------------------------------------------------------------------------------------
section("Exercise 1 (run): SEED = 1, then back to SEED = 0")
# The seed is all the randomness there is: DPM-Solver++ is deterministic once x_T is drawn, and x_T comes from
# np.random.default_rng(SEED). So seed 1 draws other noise and other digits, and seed 0 again redraws the very same
# noise and the very same digits. In the lesson two checks say so: "the start is standard normal noise" prints the
# same mean and std for the same seed, and "sample_digits with the same seed draws the same digits" compares two
# separate runs from one seed. Here: one digit of each kind, three runs.
per = 1
seed0 = sample_digits(params, config.unet, schedule, DIGITS, per, steps=STEPS, guidance=config.guidance, seed=0)
seed1 = sample_digits(params, config.unet, schedule, DIGITS, per, steps=STEPS, guidance=config.guidance, seed=1)
again = sample_digits(params, config.unet, schedule, DIGITS, per, steps=STEPS, guidance=config.guidance, seed=0)
check("seed 1 draws other pictures", rms(seed0, seed1) > 0.1, f"RMS difference {rms(seed0, seed1):.3f}")
check("seed 0 again draws the first pictures, pixel for pixel", float(np.max(np.abs(seed0 - again))) == 0.0,
      f"max |difference| {float(np.max(np.abs(seed0 - again))):.1e}")
saved(plot_sample_grid(out / "solution_seeds.png", np.stack([seed0, seed1, again]),
                       row_labels=["seed 0", "seed 1", "seed 0 again"], col_labels=[str(d) for d in DIGITS],
                       title=f"{STEPS} steps of DPM-Solver++: the seed decides the picture"))

# ---------------------------------------------------------------------------------------------------
section("Exercise 2 (modify): STEPS = 1")
# With one step the sampler calls the network once, at t = 999, and its single (first-order) step goes straight to
# sigma = 0, where the update is x = x0_hat: the answer is the network's guess at t = 999, clipped to [-1, 1].
# The best possible guess there is E[x0 | x_T, y]. x_T holds almost nothing of x0 (sqrt(abar_999) = 0.0064), so that is
# nearly the average of all training digits of class y: a blur. But this network predicts the noise, and
#     x0_hat = (x_T - sqrt(1 - abar_999) eps_hat) / sqrt(abar_999)
# divides whatever error eps_hat has by 0.0064: an error of 0.01 in eps becomes 1.6 in x0. The guess is amplified
# noise, and clipped to [-1, 1] it is salt and pepper, not a blur. From the second step on the network is asked at
# t <= ~500, where the amplification sqrt(1 - abar) / sqrt(abar) is ~3 or less, and digits appear.
per = 2 if FAST else 4
labels = np.repeat(DIGITS, per)
x_T = np.random.default_rng(0).standard_normal((len(labels), 1, 28, 28), dtype=dtype)
one = draw(labels, x_T, steps=1)
T = schedule.num_timesteps
a999, b999 = float(schedule.sqrt_alpha_bar[T - 1]), float(schedule.sqrt_one_minus_alpha_bar[T - 1])
x0_raw = (x_T - b999 * guided(x_T, np.full(len(x_T), T - 1), labels)) / a999
err = relative_error(one, np.clip(x0_raw, -1, 1))
check("one step returns the network's guess at t = 999, clipped", err < 1e-6, f"max relative error {err:.1e}")
saturated = float(np.mean(np.abs(one) == 1.0))
print(f"  the unclipped guess has RMS {np.sqrt(np.mean(x0_raw.astype(np.float64) ** 2)):.1f} (pixels live in [-1, 1]): "
      f"the eps error times {b999 / a999:.0f}; {saturated:.0%} of the clipped pixels sit at -1 or +1")
data = mnist("train")
class_means = np.stack([to_model_range(data.images[data.labels == d]).mean(axis=0) for d in DIGITS])   # (10, 1, 28, 28)


def edges(x):
    """Mean |difference| between neighbouring pixels: low for a blur, high for salt and pepper."""
    x = np.asarray(x, np.float64)
    return float(np.mean(np.abs(np.diff(x, axis=-1))) + np.mean(np.abs(np.diff(x, axis=-2))))


check("the one-step picture is not the blur the best guess would be: far more pixel-to-pixel jumps",
      edges(one) > 2 * edges(class_means), f"{edges(one):.2f} vs {edges(class_means):.2f} for the class averages")
counts = (1, 2, 3, 5, STEPS) if not FAST else (1, 2, 3, STEPS)
runs = {n: (one if n == 1 else draw(labels, x_T, steps=n)) for n in counts}
score = {n: float(predict_proba(judge_params, x)[np.arange(len(labels)), labels].mean()) for n, x in runs.items()}
print("  steps:                          " + "".join(f"{n:>7d}" for n in counts))
print("  pixel-to-pixel jumps:           " + "".join(f"{edges(x):7.2f}" for x in runs.values()))
print("  classifier's p(requested digit):" + "".join(f"{score[n]:7.2f}" for n in counts))
if FAST:
    print("  (fast mode: the network is barely trained, its pictures stay noise: the trend is not checked)")
else:
    check("a few more steps bring strokes instead of salt and pepper: at 3 steps far fewer pixel-to-pixel jumps",
          edges(runs[3]) < 0.6 * edges(one), f"{edges(one):.2f} at 1 step, {edges(runs[3]):.2f} at 3")
# (The classifier reads the one-step pictures better than chance: the salt and pepper still leans towards the requested
# digit. With examples/train_mnist.py's network it is sure of the digits from the second step on; the lessons' small
# network stays unsure at every step count.)
first = np.arange(len(DIGITS)) * per
saved(plot_sample_grid(out / "solution_one_step.png",
                       np.stack([class_means] + [x[first] for x in runs.values()]),
                       row_labels=["class average"] + [f"{n} step{'s' if n > 1 else ''}" for n in counts],
                       col_labels=[str(d) for d in DIGITS],
                       title="The blur a perfect guess would give, and what the network's guess gives"))

# ---------------------------------------------------------------------------------------------------
section('Exercise 3 (create): draw_number("2025")')
# One call of the loop with the labels 2, 0, 2, 5 draws the four digits as a batch; putting them side by side is the
# number. Each picture in a batch only ever meets its own pixels (GroupNorm normalises within one image, attention
# looks within one image), so a digit drawn alone from the same noise is the same picture - up to the last bits of
# float32, which a different batch size may change (the matrix products split their sums differently).


def draw_number(number: str, seed: int = 0):
    """(picture (1, 28, 28 * len(number)), the digits (len, 1, 28, 28), their starting noise) in one sampler call."""
    digits = np.array([int(c) for c in number])
    noise = np.random.default_rng(seed).standard_normal((len(digits), 1, 28, 28), dtype=dtype)
    x = draw(digits, noise)                                                   # (len, 1, 28, 28)
    return np.concatenate(list(x), axis=-1), x, noise                         # side by side along the width


picture, parts, noise = draw_number("2025")
check("draw_number('2025') is one picture four digits wide", picture.shape == (1, 28, 4 * 28),
      f"shape {picture.shape}")
alone = np.concatenate([draw(np.array([d]), noise[i:i + 1]) for i, d in enumerate([2, 0, 2, 5])])
diff = float(np.max(np.abs(alone - parts)))
check("each digit drawn alone from the same noise is the same picture (to float32 rounding)", diff < 1e-4,
      f"max |difference| {diff:.1e}")
reads = predict_proba(judge_params, parts).argmax(axis=1)
print(f"  the classifier reads the number as {''.join(str(r) for r in reads)}")
saved(plot_sample_grid(out / "solution_number.png", np.stack([parts, alone]), row_labels=["one call", "alone"],
                       col_labels=list("2025"), title='draw_number("2025"), and its digits drawn one by one'))

finish(started)
