"""Solutions to lesson 17 (interpolating noise, lerp vs slerp): the three "Try this" exercises, worked and checked.

Try each exercise in lessons/17_interpolation.py yourself first; then run this file and compare.

Run it:   python lessons/solutions/17_interpolation.py          (--fast: one digit, five points, fewer steps)

Figures (in lessons/output/17_interpolation/, with a solution_ prefix):
  solution_coarse_sampler.png  the slerp morphs with 5 and with 20 DDIM steps
  solution_rescaled_lerp.png   lerp, lerp rescaled to norm sqrt(d) and to the norm from |a| to |b|, and slerp
  solution_label_morph.png     one noise, the conditional prediction mixed from label 3 to label 8
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the lessons folder, for _common

import numpy as np  # noqa: E402

from _common import (FAST, banner, check, finish, output_dir, relative_error, saved, section,  # noqa: E402
                     train_first_note, trained_model)
from tinyddpm.backend import get_xp  # noqa: E402
from tinyddpm.diffusion import GuidedModel, cfg_combine, ddim_sample, interpolate_noise, lerp, slerp  # noqa: E402
from tinyddpm.sampling import unet_model  # noqa: E402
from tinyddpm.viz import plot_sample_grid  # noqa: E402

started = time.perf_counter()
out = output_dir(__file__)
banner("Solutions to lesson 17: interpolating noise")

params, config, schedule, where = trained_model()
print(f"  network: {where}")
train_first_note(where)                             # the lessons' small network: how to get the better one
model = unet_model(params, config.unet)
null = config.unet.null_label
guided = GuidedModel(model, config.guidance, null)
dtype = params["conv_in.w"].dtype
digits = (3,) if FAST else (2, 5, 8)                 # the lesson's digits
K = 5 if FAST else 12                                # points along each path, ends included
D = 28 * 28
noise_rng = np.random.default_rng(3)                 # the lesson's pairs of noises, one pair per digit
pairs = [noise_rng.standard_normal((2, 1, 28, 28)) for _ in digits]


def sample_paths(paths, labels, steps):
    """DDIM (eta = 0) of every path: (rows, K, 1, 28, 28), as the lesson samples."""
    x = ddim_sample(guided, schedule, x_T=np.concatenate(paths).astype(dtype), labels=np.concatenate(labels),
                    num_steps=steps, eta=0.0, clip="static", use_clipped_model_output=True, progress=False)
    return x.reshape(len(paths), K, 1, 28, 28)


def jumps(strip):
    """RMS change between neighbouring images of one strip (K - 1,)."""
    return np.sqrt(np.mean(np.diff(strip.astype(np.float64), axis=0) ** 2, axis=(1, 2, 3)))


def rms(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - b) ** 2)))


slerp_paths = [interpolate_noise(a, b, K, "slerp") for a, b in pairs]
labels = [np.full(K, d) for d in digits]

# ---------------------------------------------------------------------------------------------------
section("Exercise 1 (run): SAMPLER_STEPS = 5")
# An eta = 0 DDIM run of any number of steps is a fixed composition of smooth maps (the network, the step formula;
# the clip to [-1, 1] is continuous too), so a smooth path of noises still gives a continuous path of images:
# the morph stays smooth. What changes is which images: 5 steps solve the same ODE more coarsely, so each frame
# is a little different (usually a little blurrier) from its 20-step version, and the path through image space
# is a different one - but no less even: where the 20-step morph changes quickly (digit 8 here), so does the 5-step.
COARSE, FINE = (2, 4) if FAST else (5, 20)
strips = {steps: sample_paths(slerp_paths, labels, steps) for steps in (COARSE, FINE)}
for steps, st in strips.items():
    for i, d in enumerate(digits):
        j = jumps(st[i])
        print(f"    {steps:2d} steps, digit {d}: neighbour RMS changes mean {j.mean():.3f}, largest {j.max():.3f} "
              f"(largest / mean {j.max() / j.mean():.1f}); end to end {rms(st[i, 0], st[i, -1]):.3f}")
differs = rms(strips[COARSE], strips[FINE])
if FAST:
    print(f"  (fast mode: the network is barely trained; {COARSE} and {FINE} steps differ by RMS {differs:.3f})")
else:
    check(f"{COARSE} steps make different images than {FINE} (a coarser solve of the same ODE)", differs > 0.01,
          f"RMS difference {differs:.3f}")
# Smoothness as the largest neighbour step over the mean one: 1 for a perfectly even morph, K - 1 for a single snap.
uneven = {steps: max(jumps(st[i]).max() / jumps(st[i]).mean() for i in range(len(digits))) for steps, st in strips.items()}
check(f"the {COARSE}-step morph is as smooth as the {FINE}-step one (largest / mean neighbour step within 25%)",
      uneven[COARSE] <= 1.25 * uneven[FINE], f"{uneven[COARSE]:.1f} with {COARSE} steps, {uneven[FINE]:.1f} with {FINE} "
      f"(a single snap would be {K - 1})")
saved(plot_sample_grid(out / "solution_coarse_sampler.png",
                       np.concatenate([strips[COARSE], strips[FINE]]),
                       row_labels=[f"{d}, {s} steps" for s in (COARSE, FINE) for d in digits],
                       col_labels=[f"{w:.2f}" for w in np.linspace(0, 1, K)],
                       title="slerp morphs with a coarse and a finer DDIM"))

# ---------------------------------------------------------------------------------------------------
section("Exercise 2 (modify): lerp, then rescaled to norm sqrt(d)")
# Prediction: mostly, with one catch. The rescaled lerp point x * sqrt(d) / |x| lies on the shell where the noise
# belongs, and on the same great circle as the slerp path (both are combinations of a and b); the two differ in the
# speed along the arc. For two orthogonal noises of equal length, lerp's direction at weight w makes the angle
# atan(w / (1 - w)) with a, slerp's makes w * 90 degrees: equal at w = 0, 1/2 and 1, at most ~4 degrees apart.
# The catch is in "norm sqrt(d)": a fresh noise has norm sqrt(d) +- 0.7, not exactly sqrt(d) (here |a| and |b| are
# printed below), and the rescaling moves the ends too - w = 0 is no longer a, w = 1 no longer b. The sampler is
# sensitive enough to the norm that a few percent changes the digit (with examples/train_mnist.py's network the
# w = 1 image went from a clean 2 to a broken one). So the row as written does not start and end where slerp's
# does. Rescale instead to the norm that moves linearly from |a| to |b|, (1 - w)|a| + w|b| - the length slerp
# keeps up to ~1% - and the ends are exactly a and b, the directions within ~4 degrees of slerp's, and the row looks
# like the slerp row. (The plain lerp row is what the lesson shows: short noise in the middle.)
a, b = pairs[0]
w = np.linspace(0, 1, K)
raw = lerp(a, b, w)                                                         # (K, 1, 28, 28)
raw_norm = np.linalg.norm(raw.reshape(K, -1), axis=1)[:, None, None, None]
as_written = raw * np.sqrt(D) / raw_norm                                    # the exercise: every norm sqrt(d)
norm_ab = (1 - w) * np.linalg.norm(a) + w * np.linalg.norm(b)
rescaled = raw * norm_ab[:, None, None, None] / raw_norm                    # the norm from |a| to |b|
sl = slerp(a, b, w)


def angles(p, q):
    p, q = p.reshape(len(p), -1), q.reshape(len(q), -1)
    c = np.sum(p * q, axis=1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(q, axis=1))
    return np.degrees(np.arccos(np.clip(c, -1, 1)))


theta = np.degrees(np.arccos(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))))
print(f"  |a| = {np.linalg.norm(a):.2f}, |b| = {np.linalg.norm(b):.2f}, sqrt(d) = {np.sqrt(D):.2f}; the pair is "
      f"{theta:.1f} degrees apart")
slerp_norm = np.linalg.norm(sl.reshape(K, -1), axis=1)
check("prediction: rescaled lerp and slerp point the same way to within 5 degrees along the whole path",
      angles(rescaled, sl).max() < 5.0, f"largest angle {angles(rescaled, sl).max():.2f} degrees")
check("... and (1 - w)|a| + w|b| is slerp's own norm to within 1.5%", np.max(np.abs(norm_ab / slerp_norm - 1)) < 0.015,
      f"largest relative difference {np.max(np.abs(norm_ab / slerp_norm - 1)):.2%}")
rows4 = sample_paths([raw, as_written, rescaled, sl], [np.full(K, digits[0])] * 4, FINE)   # (4, K, 1, 28, 28)
ends = {name: max(rms(rows4[i, 0], rows4[3, 0]), rms(rows4[i, -1], rows4[3, -1])) for i, name in
        ((1, "as written"), (2, "norm |a| to |b|"))}
print(f"  image RMS at the ends against slerp's: as written {ends['as written']:.3f}, norm |a| to |b| "
      f"{ends['norm |a| to |b|']:.1e}")
if FAST:
    print("  (fast mode: the network is barely trained, so the image comparisons are printed, not checked)")
else:
    check("as written, the rescaled row's ends are not slerp's (a few percent of norm changes the image)",
          ends["as written"] > 0.02, f"RMS {ends['as written']:.3f} at the worse end")
check("rescaled to (1 - w)|a| + w|b|, the row starts and ends exactly where slerp's does", ends["norm |a| to |b|"] < 1e-4,
      f"RMS {ends['norm |a| to |b|']:.1e}")
mid = slice(K // 3, K - K // 3)
d_rescaled, d_lerp = rms(rows4[2, mid], rows4[3, mid]), rms(rows4[0, mid], rows4[3, mid])
print(f"  middle third, RMS to the slerp row: rescaled {d_rescaled:.3f}, plain lerp {d_lerp:.3f}")
if not FAST:
    check("... and in the middle third its images are under half as far from slerp's as plain lerp's are",
          d_rescaled < 0.5 * d_lerp,
          f"RMS to the slerp row: rescaled {d_rescaled:.3f}, plain lerp {d_lerp:.3f}")
saved(plot_sample_grid(out / "solution_rescaled_lerp.png", rows4,
                       row_labels=["lerp", "lerp, norm sqrt(d)", "lerp, norm |a|..|b|", "slerp"],
                       col_labels=[f"{x:.2f}" for x in w],
                       title=f"digit {digits[0]}: lerp, lerp rescaled two ways, slerp (DDIM {FINE} steps)"))

# ---------------------------------------------------------------------------------------------------
section("Exercise 3 (create): interpolating the label instead of the noise")
# Keep one noise for every frame and mix the two conditional predictions, eps_mix = (1 - w) eps(x, t, 3) +
# w eps(x, t, 8), then guide as usual: eps = eps_uncond + s (eps_mix - eps_uncond). At w = 0 and w = 1 this is
# exactly the guided prediction for 3 and for 8, so the strip ends at the two digits that noise becomes; in
# between, the sampler follows a prediction that is partly "3" and partly "8". The wrapper evaluates the three
# predictions (3, 8, null) in one batch, as GuidedModel does its two; w is per sample, shape (N, 1, 1, 1).


class LabelMix:
    """model(x_t, t, labels) that mixes the conditional predictions for two labels with per-sample weights w."""

    def __init__(self, model, label_a, label_b, weights, scale, null_label):
        self.model, self.a, self.b, self.null = model, int(label_a), int(label_b), int(null_label)
        self.weights, self.scale = np.asarray(weights, dtype=np.float64), float(scale)

    def __call__(self, x_t, t, labels=None):                         # the labels asked for are ignored
        xp = get_xp(x_t)
        n = x_t.shape[0]
        lab = xp.concatenate([xp.full(n, self.a), xp.full(n, self.b), xp.full(n, self.null)]).astype(xp.int64)
        out = self.model(xp.concatenate([x_t, x_t, x_t]), xp.concatenate([t, t, t]), lab)
        w = xp.asarray(self.weights, dtype=x_t.dtype).reshape(n, 1, 1, 1)
        mixed = (1 - w) * out[:n] + w * out[n:2 * n]                 # the conditional prediction, between a and b
        return cfg_combine(mixed, out[2 * n:], self.scale)


LA, LB = 3, 8
params64 = {k: v.astype(np.float64) for k, v in params.items()}
model64 = unet_model(params64, config.unet)
x_t = np.random.default_rng(5).standard_normal((2, 1, 28, 28))
tt = np.array([700, 100])
ends = LabelMix(model64, LA, LB, [0.0, 1.0], config.guidance, null)(x_t, tt)
err = max(relative_error(ends[:1], GuidedModel(model64, config.guidance, null)(x_t[:1], tt[:1], np.array([LA]))),
          relative_error(ends[1:], GuidedModel(model64, config.guidance, null)(x_t[1:], tt[1:], np.array([LB]))))
check(f"at w = 0 and w = 1 the mix is exactly the guided prediction for {LA} and for {LB}", err < 1e-12,
      f"max relative error {err:.1e}")
one_noise = np.repeat(np.random.default_rng(6).standard_normal((1, 1, 28, 28)).astype(dtype), K, axis=0)
mix = LabelMix(model, LA, LB, w, config.guidance, null)
strip = ddim_sample(mix, schedule, x_T=one_noise, labels=np.zeros(K, dtype=np.int64), num_steps=FINE, eta=0.0,
                    clip="static", use_clipped_model_output=True, progress=False)
pure = ddim_sample(guided, schedule, x_T=one_noise[:2], labels=np.array([LA, LB]), num_steps=FINE, eta=0.0,
                   clip="static", use_clipped_model_output=True, progress=False)
err = max(rms(strip[0], pure[0]), rms(strip[-1], pure[1]))
check(f"the strip starts at the noise's '{LA}' and ends at its '{LB}' (the plain guided samples)", err < 1e-5,
      f"RMS difference at the ends {err:.1e}")
j = jumps(strip)
print(f"  neighbour RMS changes along the {LA} -> {LB} strip: " + " ".join(f"{x:.2f}" for x in j))
saved(plot_sample_grid(out / "solution_label_morph.png", strip[None], col_labels=[f"{x:.2f}" for x in w],
                       title=f"One noise, the label mixed from {LA} (w = 0) to {LB} (w = 1), DDIM {FINE} steps"))

finish(started)
