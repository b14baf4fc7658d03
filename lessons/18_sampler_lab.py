"""Lesson 18: a sampler lab - run it, turn its knobs, build your own experiments.

This lesson is a workbench in three parts:
  EXECUTE  run it as it is. Every knob at the top has a value that works; read the printed tables and the pictures.
  MODIFY   change a knob and rerun. Each knob's comment says what to look for; the checks say what still holds.
  CREATE   the exercises ask for new experiments made from the same few functions.

What the lab shows
  - steps: the same starting noise sampled with 50, 250 and 1000 steps of DDIM (lesson 13): the wall time of each,
    and the quality as (a) the distance to the 1000-step pictures and (b) how sure a classifier is of the requested
    digit. With ETA = 0 the sampler is an ODE solver and more steps converge on one answer; with ETA = 1 and 1000
    steps it is DDPM (lesson 12);
  - forward diffusion: a digit noised to chosen timesteps (0, 25, 50, 100, 250, 500, 750, 999) - what the network is
    shown at each t - with the share of the signal left measured against sqrt(abar_t);
  - seeds: the same seed gives the same picture, bit for bit; another seed gives another picture;
  - denoising captured at chosen timesteps of the 1000-step run: the picture x_t and the network's guess x0_hat;
  - a morph between two noises, lerp and slerp side by side (lesson 17), as one GIF.

Run it
  python lessons/18_sampler_lab.py          # ~1.5 minutes on 2 CPU cores: 1,300+ network calls
  python lessons/18_sampler_lab.py --fast   # tiny sizes, steps 2 / 10 / 40 (what the tests run)

Figures (in lessons/output/18_sampler_lab/)
  steps_compare.png   the same noises after 50, 250 and 1000 steps, with the wall time of each (the distances and the
                      classifier's scores are printed)
  forward.png         one digit at the FORWARD_T timesteps, and the measured signal share against sqrt(abar_t)
  seeds.png           seed, the same seed again, another seed
  captured.png        x_t and x0_hat at the CAPTURE_T timesteps of the 1000-step run
  morph.gif           lerp (left) and slerp (right) from one noise to another, there and back
  morph.png           the two morphs as strips

Try this
  1. run:    set ETA = 1.0 and rerun. With 1000 steps the sampler is now DDPM. Predict: does the same-seed check
             still pass? Do the 50- and 250-step pictures still land near the 1000-step ones?
  2. modify: set CAPTURE_T to every 50th timestep and compare the spread (std) of the sampler's x_t at each captured
             t with the spread of real digits noised to the same t by the forward process. Should they agree?
  3. create: a seed hunt. Draw one digit (say 7) from seeds 0-19 with 50 steps, let the classifier pick the seed it
             is least sure of, and capture that seed's denoising to see where it went wrong. Show that rerunning
             the chosen seed reproduces its picture exactly.

Next: lessons/19_evaluation.py - measuring samples: the Frechet distance, precision and recall.
"""
# %%
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import (FAST, banner, check, finish, judge, mnist_digits, output_dir, saved, section,  # noqa: E402
                     timing_check, train_first_note, trained_model, try_this)
from tinyddpm.classifiers.judge import predict_proba  # noqa: E402
from tinyddpm.diffusion import GuidedModel, ddim_sample, ddim_timesteps, interpolate_noise, q_sample  # noqa: E402
from tinyddpm.sampling import unet_model  # noqa: E402
from tinyddpm.viz import plot_sample_grid, save_denoising_gif, side_by_side  # noqa: E402

# %%
started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 18: the sampler lab")

# ===================================================================================================
# KNOBS (MODIFY: change any of these and rerun)
STEPS = (2, 10, 40) if FAST else (50, 250, 1000)    # DDIM step counts to compare; the last one is the reference
ETA = 0.0                                # 0: deterministic (an ODE solver); 1: fresh noise every step (DDPM-like)
DIGITS = (1, 4) if FAST else (2, 5, 7)              # the digits each run draws, one each
SEED, OTHER_SEED = 0, 1                  # the starting noise (and, for ETA > 0, every step's noise)
SEED_STEPS = 4 if FAST else 20           # steps of the three runs of the seed check
FORWARD_T = (0, 25, 50, 100, 250, 500, 750, 999)     # timesteps of the forward-diffusion strip
CAPTURE_T = (999, 750, 500, 250, 100, 50, 25, 0)     # timesteps at which the reference run is photographed
MORPH_DIGIT = 7                          # the digit of the lerp / slerp morph
MORPH_FRAMES = 5 if FAST else 10         # points along each path, ends included
MORPH_STEPS = 4 if FAST else 20          # DDIM steps of the morph
GUIDANCE = None                          # classifier-free guidance scale (lesson 15); None: the network's own
GUIDANCE_INTERVAL = None                 # (lo, hi): guide only at timesteps lo <= t <= hi, e.g. (100, 600)
                                         # (Kynkaanniemi et al. 2024); None: at every step
# ===================================================================================================

params, config, schedule, where = trained_model()
print(f"  network: {where}")
train_first_note(where)
w = config.guidance if GUIDANCE is None else GUIDANCE
model = GuidedModel(unet_model(params, config.unet), w, config.unet.null_label, interval=GUIDANCE_INTERVAL)
dtype = params["conv_in.w"].dtype
labels = np.array(DIGITS)
T = schedule.num_timesteps
judge_params, judge_name = judge()
print(f"  judge: {judge_name}")


def sample(steps, seed=SEED, eta=ETA, digits=labels, callback=None):
    """DDIM samples of `digits` from the noise of `seed` (as tinyddpm samples: x0_hat clipped to [-1, 1]). Each step
    lands on the next timestep the run visits (prev_timestep="next"), so any step count works, not only divisors of T
    (lesson 13, exercise 2)."""
    return ddim_sample(model, schedule, (len(digits), 1, 28, 28), num_steps=steps, eta=eta, labels=digits,
                       seed=seed, dtype=dtype, clip="static", use_clipped_model_output=True, prev_timestep="next",
                       callback=callback, progress=False)


def sureness(images, digits):
    """The classifier's probability of the requested digit, one per image: how sure it is that we got what we asked."""
    return predict_proba(judge_params, images)[np.arange(len(digits)), digits]


def rms(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)))


# %%
# ---------------------------------------------------------------------------------------------------
section(f"1. Steps: {' / '.join(str(n) for n in STEPS)}, from the same noise (ETA = {ETA:g})")
# Each run starts from the noise of SEED. The reference run (the last step count) is photographed at CAPTURE_T on the
# way: the callback receives, after each step, the timestep t just used, the new (less noisy) state and x0_hat at t,
# so x_t itself is the state the previous call left behind.
x_T = np.random.default_rng(SEED).standard_normal((len(labels), 1, 28, 28), dtype=dtype)   # what `sample` starts from
# DDIM with n steps visits ddim_timesteps(T, n) ('trailing': 999, 999 - T/n, ...): with n = 1000 every t. With fewer
# steps each requested timestep is photographed at the nearest one the run visits.
visited = ddim_timesteps(T, STEPS[-1], "trailing")
nearest = {t: int(visited[np.argmin(np.abs(visited - t))]) for t in CAPTURE_T}
captured = {}
state = {"x": x_T}


def photograph(i, t, x_new, x0_hat):
    if t in nearest.values():
        captured[t] = (state["x"].copy(), x0_hat.copy())
    state["x"] = x_new


results = {}
for n in STEPS:
    tic = time.perf_counter()
    images = sample(n, callback=photograph if n == STEPS[-1] else None)
    results[n] = (images, time.perf_counter() - tic)
reference = results[STEPS[-1]][0]
print(f"  {'steps':>6} {'wall time':>10} {'per step':>9} {'RMS to ' + str(STEPS[-1]):>12} {'classifier sure':>16}")
for n, (images, seconds) in results.items():
    print(f"  {n:>6} {seconds:>8.1f} s {1000 * seconds / n:>6.0f} ms {rms(images, reference):>12.4f} "
          f"{sureness(images, labels).mean():>15.1%}")
t_first, t_last = results[STEPS[0]][1], results[STEPS[-1]][1]
timing_check(f"wall time grows with the steps: {STEPS[-1]} steps take more than {STEPS[-1] // STEPS[0] // 4}x as long "
             f"as {STEPS[0]}", t_last > (STEPS[-1] / STEPS[0] / 4) * t_first,
             f"{t_last:.1f} s vs {t_first:.1f} s ({STEPS[-1] // STEPS[0]}x the network calls)")
d_first, d_mid = rms(results[STEPS[0]][0], reference), rms(results[STEPS[1]][0], reference)
if ETA == 0:
    check(f"with ETA = 0 more steps land closer to the {STEPS[-1]}-step pictures (one ODE, finer steps)",
          d_mid < d_first, f"RMS {d_first:.4f} at {STEPS[0]} steps -> {d_mid:.4f} at {STEPS[1]}")
else:
    print(f"  (ETA = {ETA:g}: every step draws fresh noise, so runs of different lengths take different paths; "
          f"RMS {d_first:.3f} and {d_mid:.3f} are not a convergence)")
titles = [f"{n} steps, {s:.1f} s" for n, (_, s) in results.items()]
saved(plot_sample_grid(out / "steps_compare.png", np.stack([r[0] for r in results.values()]), row_labels=titles,
                       col_labels=[str(d) for d in DIGITS],
                       title=f"DDIM (eta = {ETA:g}, guidance {w:g}) from the noise of seed {SEED}"))

# %% 2. Forward diffusion at chosen timesteps
# ---------------------------------------------------------------------------------------------------
section("2. Forward diffusion at chosen timesteps")
# What the network is trained on at timestep t: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (lessons 01-02). Over many
# digits and pixels, the least-squares slope of x_t against x0 measures how much of the digit is left: sqrt(abar_t).
real, real_labels = mnist_digits(16 if FAST else 64, seed=2)
eps = np.random.default_rng(SEED).standard_normal(real.shape).astype(real.dtype)
x0c = real.astype(np.float64) - real.mean()
print(f"  {'t':>5} {'sqrt(abar_t)':>13} {'measured slope':>15}   (least squares over {real.size:,} pixels)")
worst = 0.0
strip, slopes = [], []
for t in FORWARD_T:
    x_t = q_sample(schedule, real, t, eps).astype(np.float64)
    slope = float(np.sum(x0c * (x_t - x_t.mean())) / np.sum(x0c * x0c))
    se = np.sqrt(1 - schedule.alpha_bar[t]) / np.sqrt(np.sum(x0c * x0c))        # the slope's standard error
    worst = max(worst, abs(slope - np.sqrt(schedule.alpha_bar[t])) / max(se, 1e-12))
    print(f"  {t:>5} {np.sqrt(schedule.alpha_bar[t]):>13.4f} {slope:>15.4f}")
    strip.append(x_t[0])
    slopes.append(slope)
check("at every chosen t, the share of the digit left in x_t is sqrt(abar_t)", worst < 5,
      f"worst deviation {worst:.1f} standard errors")
fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(1.3 * len(FORWARD_T) + 1, 5.2), gridspec_kw={"height_ratios": [1, 1.3]})
ax1.imshow(np.concatenate([np.clip((s[0] + 1) / 2, 0, 1) for s in strip], axis=1), cmap="gray", vmin=0, vmax=1)
ax1.set_xticks([14 + 28 * k for k in range(len(FORWARD_T))], [f"t={t}" for t in FORWARD_T])
ax1.set_yticks([])
ax1.set_title(f"A '{real_labels[0]}' noised to each t (one noise draw for all)")
ax2.plot(np.arange(T), np.sqrt(schedule.alpha_bar), color="0.5", label=r"$\sqrt{\bar\alpha_t}$")
ax2.plot(FORWARD_T, slopes, "o", color="tab:blue",
         label="measured slope of x_t on x0")
ax2.set(xlabel="timestep t", ylabel="share of the digit left")
ax2.grid(True, alpha=0.3)
ax2.legend()
fig.tight_layout()
fig.savefig(out / "forward.png", dpi=100)
plt.close(fig)
saved(out / "forward.png")

# %% 3. Seeds: the same seed, the same picture; another seed, another picture
# ---------------------------------------------------------------------------------------------------
section("3. Seeds: the same seed, the same picture; another seed, another picture")
# The seed fixes the starting noise and, when ETA > 0, every step's fresh noise: the whole run is a function of it.
a = sample(SEED_STEPS, seed=SEED)
a_again = sample(SEED_STEPS, seed=SEED)
b = sample(SEED_STEPS, seed=OTHER_SEED)
same, other = float(np.max(np.abs(a - a_again))), rms(a, b)
check(f"seed {SEED} twice: the same pictures, bit for bit", same == 0.0, f"max |difference| {same:.1e}")
check(f"seed {OTHER_SEED}: other pictures", other > 0.1, f"RMS difference {other:.3f} (pixels span [-1, 1])")
saved(plot_sample_grid(out / "seeds.png", np.stack([a, a_again, b]), col_labels=[str(d) for d in DIGITS],
                       row_labels=[f"seed {SEED}", f"seed {SEED} again", f"seed {OTHER_SEED}"],
                       title=f"DDIM, {SEED_STEPS} steps: the seed decides the picture"))

# %%
# ---------------------------------------------------------------------------------------------------
section(f"4. Denoising captured at chosen timesteps of the {STEPS[-1]}-step run")
shown_t = [nearest[t] for t in CAPTURE_T]
off = max(abs(nearest[t] - t) for t in CAPTURE_T)
check("every requested timestep was photographed, at the nearest timestep the run visits",
      all(t in captured for t in shown_t) and off < T // STEPS[-1],
      f"captured at {shown_t}" + (f" (at most {off} from the requested ones; {STEPS[-1]} steps)" if off
                                  else ", exactly"))
if shown_t:
    grid = np.stack([np.stack([captured[t][k] for t in shown_t], axis=1) for k in (0, 1)], axis=1)  # (D, 2, K, ...)
    saved(plot_sample_grid(out / "captured.png", grid.reshape((-1, len(shown_t)) + grid.shape[3:]),
                           row_labels=[f"{what} '{d}'" for d in DIGITS for what in ("x_t", "x0_hat")],
                           col_labels=[f"t={t}" for t in shown_t],
                           title=f"The {STEPS[-1]}-step run: x_t and the network's x0_hat"))

# %% 5. Morphing one noise into another: lerp and slerp side by side
# ---------------------------------------------------------------------------------------------------
section("5. Morphing one noise into another: lerp and slerp side by side")
# Lesson 17: N(0, I) noise in d = 784 dimensions lies on a shell of radius ~sqrt(d) = 28. The straight line (lerp)
# between two noises dips inside the shell (its middle has norm ~sqrt(d / 2)), the great circle (slerp) stays on it.
a_noise, b_noise = np.random.default_rng(SEED + 100).standard_normal((2, 1, 28, 28)).astype(dtype)
paths = {m: interpolate_noise(a_noise, b_noise, MORPH_FRAMES, m) for m in ("lerp", "slerp")}      # (K, 1, 28, 28)
mid = MORPH_FRAMES // 2
norms = {m: float(np.linalg.norm(p[mid])) for m, p in paths.items()}
check("the lerp path dips inside the shell of radius sqrt(784) = 28, the slerp path stays on it",
      norms["lerp"] < 0.85 * 28 and abs(norms["slerp"] / 28 - 1) < 0.05,
      f"middle of the path: |lerp| = {norms['lerp']:.1f}, |slerp| = {norms['slerp']:.1f}")
morph_x = np.concatenate([paths["lerp"], paths["slerp"]])                                         # (2K, 1, 28, 28)
morph = ddim_sample(model, schedule, x_T=morph_x, labels=np.full(2 * MORPH_FRAMES, MORPH_DIGIT), num_steps=MORPH_STEPS,
                    eta=0.0, clip="static", use_clipped_model_output=True, progress=False)
lerp_imgs, slerp_imgs = morph[:MORPH_FRAMES], morph[MORPH_FRAMES:]
ends = float(np.max(np.abs(lerp_imgs[[0, -1]] - slerp_imgs[[0, -1]])))
check("both morphs start and end at the same pictures (the same two noises)", ends < 1e-4,
      f"max |difference| {ends:.1e}")
order = list(range(MORPH_FRAMES)) + list(range(MORPH_FRAMES - 2, 0, -1))                        # there and back
weights = np.linspace(0, 1, MORPH_FRAMES)
saved(save_denoising_gif(out / "morph.gif", [side_by_side(lerp_imgs[k:k + 1], slerp_imgs[k:k + 1]) for k in order],
                         captions=[f"w = {weights[k]:.2f}: lerp | slerp" for k in order], scale=4, frame_ms=180,
                         last_ms=180))
saved(plot_sample_grid(out / "morph.png", np.stack([lerp_imgs, slerp_imgs]), row_labels=["lerp", "slerp"],
                       col_labels=[f"{x:.2f}" for x in weights],
                       title=f"A '{MORPH_DIGIT}' from interpolated noise, DDIM {MORPH_STEPS} steps; columns: weight w"))

# %% Exercises
# ---------------------------------------------------------------------------------------------------
try_this(__doc__)
finish(started)
