"""Lesson 00: generate first - handwritten digits out of pure noise, before any of the theory.

What you will see
  - a trained network turning Gaussian noise into digits in 20 steps, as a GIF: on the left the noisy picture
    x_t the sampler holds, on the right the network's guess of the clean digit at that moment;
  - the loop that does it, written out: call the network, take one sampler step, repeat;
  - a grid of digits, a row per digit you ask for, and a classifier's reading of them;
  - where in the course each piece of that loop is taken apart.

Which network: the one the lessons ship (lessons/assets/network.npz, the weights of one run of
examples/train_mnist.py), which draws clean digits from the first run; once you have trained your own with
`python examples/train_mnist.py` (about 13 minutes on 2 CPU cores, runs/mnist/checkpoint.npz), that one, and the
lesson says so.

Run it
  python lessons/00_generate_first.py          # under a minute on 2 CPU cores
  python lessons/00_generate_first.py --fast   # tiny sizes, the same code paths (what the tests run)

Figures (in lessons/output/00_generate_first/)
  denoising.gif   the whole run, one frame per step: x_t | the network's clean-digit guess
  steps.png       the same as a still: x_t and x0_hat of five digits after a few of the steps
  samples.png     the finished digits, a row per requested digit

Try this
  1. run:    set SEED = 1 at the top and rerun: other digits. Set it back to 0: the first pictures return,
             pixel for pixel. Which checks tell you so?
  2. modify: set STEPS = 1: the one step returns the network's guess x0_hat at t = 999. The best possible guess
             from pure noise is the average of all the ways to write the digit, a blur. Predict what this network's
             guess looks like instead, knowing x0_hat = (x_T - sqrt(1 - abar) eps_hat) / sqrt(abar) and
             sqrt(abar_999) = 0.0064. How many steps does it take before digits appear? (The checks still hold:
             the one step divides the network's float32 round-off by sqrt(abar_999) too, and the check against
             sample_digits allows for exactly that; it prints the allowance.)
  3. create: write draw_number("2025") that draws a number as one image, its digits side by side, with a single
             call of the sampling loop, and save it. Is each digit the same as when you draw it alone from the
             same starting noise?

Next: lessons/01_noise_schedules.py - how much noise each timestep adds: linear, cosine and sigmoid schedules.
"""
# %%
import time

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402

from _common import (FAST, banner, check, finish, judge, output_dir, saved, section,  # noqa: E402
                     train_first_note, trained_model, try_this, uses_small_network)
from tinyddpm import sample_digits  # noqa: E402
from tinyddpm.classifiers.judge import predict_proba  # noqa: E402
from tinyddpm.diffusion import DPMSolverSampler, GuidedModel  # noqa: E402
from tinyddpm.sampling import unet_model  # noqa: E402
from tinyddpm.viz import plot_sample_grid, save_denoising_gif, side_by_side  # noqa: E402

# %%
started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 00: generate first")

SEED = 0                                    # which starting noise
STEPS = 5 if FAST else 20                   # network calls from noise to digit
PER_DIGIT = 2 if FAST else 8                # samples of each digit in the grid
DIGITS = np.arange(10)                      # the digits we ask for

# %% 1. A trained network
# ---------------------------------------------------------------------------------------------------
section("1. A trained network")
# A diffusion model is a network that looks at a noisy picture x_t and says which noise is in it, eps_hat. It was
# trained on MNIST digits with noise of every strength t added (t = 0: a whisper of noise, t = 999: nothing else).
# Lessons 03-08 build it from scratch, lessons 09-11 train it. Here we only use it.
params, config, schedule, where = trained_model()
print(f"  network: {where}")
print(f"  {sum(v.size for v in params.values()):,} numbers, trained for {config.steps} steps; "
      f"the noise levels t run from 0 to {schedule.num_timesteps - 1}")
train_first_note(where)
model = unet_model(params, config.unet)                      # model(x_t, t, labels) -> eps_hat
guided = GuidedModel(model, config.guidance, config.unet.null_label)
check("the network answers a batch of noisy pictures with one noise guess each, of the same shape",
      model(np.zeros((2, 1, 28, 28), dtype=params["conv_in.w"].dtype), np.array([999, 0]), np.array([3, 7])).shape
      == (2, 1, 28, 28), "(2, 1, 28, 28) in, (2, 1, 28, 28) out")

# %% 2. Start from pure noise
# ---------------------------------------------------------------------------------------------------
section("2. Start from pure noise")
# x_T ~ N(0, I): every pixel an independent draw from the standard normal distribution. Nothing of a digit in it.
labels = np.repeat(DIGITS, PER_DIGIT)                         # 0 0 0 ... 1 1 1 ... : the digit each sample should be
shape = (len(labels), 1, 28, 28)                              # (N, channels, height, width)
x_T = np.random.default_rng(SEED).standard_normal(shape, dtype=np.float32)
check("the start is standard normal noise: mean ~0, standard deviation ~1",
      abs(float(x_T.mean())) < 0.03 and abs(float(x_T.std()) - 1) < 0.02,
      f"{x_T.size:,} pixels: mean {x_T.mean():+.4f}, std {x_T.std():.4f}")

# %% 3. The loop: ask the network, take a step, repeat
# ---------------------------------------------------------------------------------------------------
section("3. The loop: ask the network, take a step, repeat")
# The sampler (DPM-Solver++, lesson 14) picks STEPS noise levels from t = 999 down towards 0. At each one:
#   - the network guesses the noise in x_t (guided towards the requested digit: lesson 15);
#   - from that guess follows a guess of the clean digit, x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
#     (lesson 02), clipped to the pixel range [-1, 1];
#   - the step moves x_t part of the way towards x0_hat, to the next, smaller noise level (lessons 12-14).
# After the last step the picture is the digit.
sampler = DPMSolverSampler(schedule, STEPS, clip="static")
x = x_T
frames, guesses = [x_T], [np.zeros_like(x_T)]                # the GIF's frames: x_t and x0_hat after each step
tic = time.perf_counter()
for t in sampler.timesteps:                                   # e.g. 999, 949, 899, ... : noisiest first
    eps_hat = guided(x, np.full(len(x), t), labels)           # 1. the network: which noise is in x?
    step = sampler.step(eps_hat, t, x)                        # 2. one step towards the clean digit
    x = step.prev_sample                                      #    the picture, a little less noisy
    frames.append(x)
    guesses.append(step.pred_x0)                              #    the network's clean-digit guess at t
seconds = time.perf_counter() - tic
print(f"  {len(labels)} digits, {STEPS} network calls, {seconds:.1f} s; timesteps visited: "
      f"{', '.join(str(t) for t in sampler.timesteps[:6])}{', ...' if STEPS > 6 else ''}")
check("the finished pictures lie in the pixel range [-1, 1]", float(np.abs(x).max()) <= 1.0,
      f"max |pixel| {float(np.abs(x).max()):.3f}")
# The same thing in one call: tinyddpm's sample_digits draws its starting noise from the seed exactly as above. For two
# digits it draws 2 x PER_DIGIT pictures' worth of noise, the first rows of ours (a generator fills arrays in order),
# so its digits must be our first two rows.
x_lib = sample_digits(params, config.unet, schedule, DIGITS[:2], PER_DIGIT, sampler="dpm++2m", steps=STEPS,
                      guidance=config.guidance, seed=SEED)
# A different batch size may change the network's last float32 bits; the last step's x0_hat divides them by
# sqrt(abar_t) (lesson 02), 0.0064 at t = 999: so the allowance grows by that factor when the run ends early.
diff = float(np.max(np.abs(x_lib - x[:2 * PER_DIGIT])))
abar_last = float(schedule.alpha_bar[sampler.timesteps[-1]])
gain = max(1.0, float(np.sqrt((1 - abar_last) / abar_last)))          # x0_hat = (x_t - sqrt(1 - abar) eps) / sqrt(abar)
allowed = 1e-4 * gain
check("tinyddpm.sample_digits with the same seed draws the same digits", diff < allowed,
      f"digits 0 and 1, max |difference| {diff:.1e}, allowed {allowed:.0e} (float32 round-off of another batch size"
      f", times {gain:.1f} in the last step's x0_hat at t = {sampler.timesteps[-1]})")

# %% 4. Pictures: the GIF, a still, the grid
# ---------------------------------------------------------------------------------------------------
section("4. Pictures: the GIF, a still, the grid")
first = np.arange(len(DIGITS)) * PER_DIGIT                      # one sample of each digit for the GIF
rows = 2                                                        # ten digits as two rows of five
captions = ["start: pure noise | (no guess yet)"] + [f"step {i + 1}/{STEPS}, t = {t}: x_t | x0_hat"
                                                     for i, t in enumerate(sampler.timesteps)]
gif_frames = [side_by_side(f[first].reshape((rows, -1) + f.shape[1:]), g[first].reshape((rows, -1) + g.shape[1:]))
              for f, g in zip(frames, guesses)]
saved(save_denoising_gif(out / "denoising.gif", gif_frames, captions=captions, frame_ms=250, last_ms=2500))
shown = sorted({1, STEPS // 4, STEPS // 2, 3 * STEPS // 4, STEPS})                    # frame indices (after step k)
few = first[:5]                                                                      # digits 0-4: x_t, then x0_hat
still = np.stack([np.stack([frames[k][few] for k in shown], axis=1),
                  np.stack([guesses[k][few] for k in shown], axis=1)], axis=1)      # (5, 2, len(shown), 1, 28, 28)
saved(plot_sample_grid(out / "steps.png", still.reshape((-1, len(shown)) + x.shape[1:]),
                       row_labels=[f"{what} '{d}'" for d in DIGITS[:5] for what in ("x_t", "x0_hat")],
                       col_labels=[f"step {k}" for k in shown],
                       title=f"After each step: the picture x_t and the network's guess x0_hat ({STEPS} steps)"))
grid = x.reshape((len(DIGITS), PER_DIGIT) + x.shape[1:])                             # (10, PER_DIGIT, 1, 28, 28)
saved(plot_sample_grid(out / "samples.png", grid, row_labels=[str(d) for d in DIGITS],
                       title=f"{PER_DIGIT} samples of each digit, {STEPS} steps, guidance {config.guidance:g}"))

# %% 5. Do they read as the digits we asked for?
# ---------------------------------------------------------------------------------------------------
section("5. Do they read as the digits we asked for?")
# A separate classifier, trained on real MNIST, reads every sample and says how likely each digit is, p(d | picture).
# Score: the mean probability it gives to the digit we asked for. A network that ignored our request would score no
# better than the same pictures with the requests shuffled among them, so we shuffle them a few thousand times.
judge_params, judge_name = judge()
probs = predict_proba(judge_params, x)                                    # (N, 10), each row sums to 1
n = len(labels)
score = float(probs[np.arange(n), labels].mean())
shuffles = np.random.default_rng(1).permuted(np.tile(labels, (2000, 1)), axis=1)        # (2000, N) shuffled requests
shuffled = probs[np.arange(n), shuffles].mean(axis=1)                                   # (2000,) their scores
read = probs.argmax(axis=1)
print(f"  judge: {judge_name}")
print(f"  read as the requested digit: {int(np.sum(read == labels))} of {n} ({np.mean(read == labels):.0%}); "
      f"mean probability of the requested digit {score:.3f}; with shuffled requests {shuffled.mean():.3f} "
      f"(highest of 2000: {shuffled.max():.3f})")
for d in DIGITS:
    print(f"    asked for {d}: read as {' '.join(str(r) for r in read[labels == d])}")
if FAST:
    print("  (fast mode: the network trained for a few steps only, so its pictures are still noise: not checked)")
else:
    check("the pictures follow the request: they score higher than every one of 2000 shuffled requests",
          score > shuffled.max(), f"{score:.3f} vs at most {shuffled.max():.3f}")
    if uses_small_network(where):
        print("  (the network of examples/train_mnist.py gets nearly all of them right)")

# %% 6. Where each piece is explained
# ---------------------------------------------------------------------------------------------------
section("6. Where each piece is explained")
print("""  the noise levels t and abar_t ........................ 01 noise schedules, 02 forward diffusion
  the network eps_theta(x_t, t, label) .................. 03-08 (linear, conv, groupnorm, SiLU + time embedding,
                                                          attention, ResBlock and U-Net)
  why predicting the noise is the right loss ............ 09 the variational bound (ELBO)
  training it ........................................... 10 training loop, 11 data-parallel training
  the step from x_t to a less noisy picture ............. 12 DDPM, 13 DDIM, 14 DPM-Solver++ (this loop)
  steering towards the requested digit .................. 15 classifier-free guidance, 16 classifier guidance
  interpolating noise, a lab to play with, measuring .... 17 interpolation, 18 sampler lab, 19 evaluation
  running it on a GPU ................................... 20 your first GPU kernel
  the same model seen as a score ........................ 21 Tweedie, score matching, the probability-flow ODE""")
train_first_note(where)

# %% Exercises
try_this(__doc__)
finish(started)
