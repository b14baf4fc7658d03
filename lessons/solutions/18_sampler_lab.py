"""Solutions to lesson 18 (the sampler lab): the three "Try this" exercises, worked and checked.

Try each exercise in lessons/18_sampler_lab.py yourself first; then run this file and compare.

Run it:   python lessons/solutions/18_sampler_lab.py          (--fast: the tiny network, a few steps)

To stay within two minutes this file compares 10 / 50 / 200 steps where the lab compares 50 / 250 / 1000; the
answers do not depend on it (the lab itself, with ETA = 1.0, shows the same at its own counts).

Figures (in lessons/output/18_sampler_lab/, with a solution_ prefix):
  solution_eta.png        eta = 0 and eta = 1 at three step counts, one starting noise
  solution_spread.png     the spread of the sampler's x_t against that of real digits noised to the same t
  solution_seed_hunt.png  a 7 from each of 20 seeds with the classifier's certainty, and the least certain one's run
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the lessons folder, for _common

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import (FAST, banner, check, finish, judge, mnist_digits, output_dir, saved, section,  # noqa: E402
                     train_first_note, trained_model)
from tinyddpm.classifiers.judge import predict_proba  # noqa: E402
from tinyddpm.diffusion import GuidedModel, ddim_sample, ddim_timesteps, q_sample  # noqa: E402
from tinyddpm.sampling import unet_model  # noqa: E402
from tinyddpm.viz import plot_sample_grid  # noqa: E402

started = time.perf_counter()
out = output_dir(__file__)
banner("Solutions to lesson 18: the sampler lab")

params, config, schedule, where = trained_model()
print(f"  network: {where}")
train_first_note(where)
model = GuidedModel(unet_model(params, config.unet), config.guidance, config.unet.null_label)   # as the lab samples
dtype = params["conv_in.w"].dtype
T = schedule.num_timesteps
DIGITS = np.array((1, 4) if FAST else (2, 5, 7))                       # the lab's digits
STEPS = (2, 10, 40) if FAST else (10, 50, 200)                         # a fifth of the lab's counts
judge_params, judge_name = judge()


def sample(steps, seed=0, eta=0.0, digits=DIGITS, callback=None, x_T=None):
    """The lab's sampler: DDIM from the noise of `seed` (or x_T), x0_hat clipped, eps re-derived from it."""
    return ddim_sample(model, schedule, None if x_T is not None else (len(digits), 1, 28, 28), num_steps=steps,
                       eta=eta, labels=digits, seed=seed, x_T=x_T, dtype=dtype, clip="static",
                       use_clipped_model_output=True, prev_timestep="next", callback=callback, progress=False)


def rms(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


# ---------------------------------------------------------------------------------------------------
section("Exercise 1 (run): ETA = 1.0")
# With eta = 1 every step adds fresh noise, drawn from the generator the seed made; with T steps the update is DDPM's
# (lesson 13, section 2, proves it step by step). The seed still fixes everything: x_T and every step's noise come
# from default_rng(seed) in a fixed order, so the same seed gives the same picture bit for bit, another seed another.
# But runs of different lengths no longer solve one ODE: they draw different amounts of noise at different times, so
# the 50-step picture is a different sample, not a coarser version of the long run's. Distances between step counts
# stop shrinking towards 0; only the kind of picture (the distribution) converges.
runs = {eta: {n: sample(n, eta=eta) for n in STEPS} for eta in (0.0, 1.0)}
dist = {eta: rms(runs[eta][STEPS[1]], runs[eta][STEPS[-1]]) for eta in (0.0, 1.0)}
for eta in (0.0, 1.0):
    print(f"  eta = {eta:g}: RMS distance to the {STEPS[-1]}-step picture: "
          + ", ".join(f"{n} steps {rms(runs[eta][n], runs[eta][STEPS[-1]]):.3f}" for n in STEPS[:-1]))
check(f"eta = 1: the {STEPS[1]}-step pictures are far from the {STEPS[-1]}-step ones, unlike eta = 0",
      dist[1.0] > 3 * dist[0.0], f"RMS {dist[1.0]:.3f} (eta = 1) vs {dist[0.0]:.3f} (eta = 0)")
seed_steps = 4 if FAST else 20
a, a_again, b = (sample(seed_steps, seed=s, eta=1.0) for s in (0, 0, 1))
check("eta = 1: the same seed still gives the same pictures, bit for bit", float(np.max(np.abs(a - a_again))) == 0.0,
      f"max |difference| {float(np.max(np.abs(a - a_again))):.1e}")
check("... and another seed other pictures", rms(a, b) > 0.1, f"RMS difference {rms(a, b):.3f}")
grid = np.stack([runs[eta][n] for eta in (0.0, 1.0) for n in STEPS])
saved(plot_sample_grid(out / "solution_eta.png", grid, col_labels=[str(d) for d in DIGITS],
                       row_labels=[f"eta {eta:g}, {n} steps" for eta in (0.0, 1.0) for n in STEPS],
                       title="One starting noise: eta = 0 converges with the steps, eta = 1 does not"))

# ---------------------------------------------------------------------------------------------------
section("Exercise 2 (modify): CAPTURE_T every 50th timestep; the spread of x_t against the forward process")
# The sampler is built to walk back through the marginals the network was trained on: at timestep t its state should
# look like real digits noised to t, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, whose pixel spread is
#     std(x_t) = sqrt(abar_t var(x0) + (1 - abar_t))       (x0 and eps independent; var(x0) over pixels and digits).
# So with an exact network the two spreads agree at every t. With a real one they agree at the noisy end, where x_t is
# nearly all noise, and drift apart towards the clean end, the sampler's x_t the more spread. By how much depends on
# the network (a rougher one drifts more) and on the batch (one failed, blotchy sample raises the whole batch's
# spread), so the file prints the table and checks only the shape: agreement at the noisy end, a drift under a quarter
# at the clean end. The lab's sampler clips x0_hat to [-1, 1]; run it without the clip and the drift grows several
# times: the network's x0 estimates overshoot the data range and DDIM carries them into x_t. The clip is what keeps this sampler near the forward marginals. With 'trailing' spacing and n
# steps DDIM visits t = 999 - k T / n; with n = 200 (steps of 5; --fast: 20, steps of 50) that includes every t = 999
# - 50 j.
n_capture = 20 if FAST else 200
visited = ddim_timesteps(T, n_capture, "trailing")
capture_t = [t for t in range(T - 1, -1, -50) if t in visited]
per = 2 if FAST else 4
labels = np.repeat(DIGITS, per)
x_T = np.random.default_rng(3).standard_normal((len(labels), 1, 28, 28), dtype=dtype)


def spreads(clip):
    """The std of the sampler's x_t at each captured t (DDIM from x_T, x0_hat clipped as asked)."""
    states, last = {}, {"x": x_T}

    def photograph(i, t, x_new, x0_hat):
        if t in capture_t:
            states[t] = last["x"].copy()
        last["x"] = x_new

    ddim_sample(model, schedule, x_T=x_T, num_steps=n_capture, labels=labels, clip=clip,
                use_clipped_model_output=clip != "none", callback=photograph, progress=False)
    return np.array([float(np.std(states[t])) for t in capture_t])


real, _ = mnist_digits(16 if FAST else 64, seed=4)
rng = np.random.default_rng(5)
noise = [rng.standard_normal(real.shape).astype(real.dtype) for _ in capture_t]
spread_forward = np.array([float(np.std(q_sample(schedule, real, t, e))) for t, e in zip(capture_t, noise)])
spread_formula = np.sqrt(schedule.alpha_bar[capture_t] * real.var() + 1 - schedule.alpha_bar[capture_t])
spread_clip, spread_raw = spreads("static"), spreads("none")
print(f"  {'t':>5} {'forward':>8} {'formula':>8} {'sampler, clipped':>17} {'sampler, no clip':>17}")
for row in zip(capture_t, spread_forward, spread_formula, spread_clip, spread_raw):
    print(f"  {row[0]:>5} {row[1]:8.3f} {row[2]:8.3f} {row[3]:17.3f} {row[4]:17.3f}")
err = float(np.max(np.abs(spread_formula / spread_forward - 1)))
check("the forward process's spread follows sqrt(abar var(x0) + 1 - abar)", err < 0.05, f"within {err:.1%}")
off_clip, off_raw = spread_clip / spread_forward - 1, spread_raw / spread_forward - 1
noisy = np.array(capture_t) >= 600
if FAST:
    print("  (fast mode: the network is barely trained, so its x_t need not follow the forward process: not checked)")
else:
    check("at the noisy end (t >= 600) the sampler's x_t has the forward process's spread",
          np.abs(off_clip[noisy]).max() < 0.05, f"largest difference {np.abs(off_clip[noisy]).max():.1%}")
    check("towards the clean end it is more spread, but stays within a quarter", 0 < off_clip.max() < 0.25,
          f"largest difference {off_clip.max():+.1%} (at t = {capture_t[int(np.argmax(off_clip))]})")
    check("without clipping x0_hat the drift is several times larger", off_raw.max() > 3 * off_clip.max(),
          f"largest difference {off_raw.max():+.0%} without the clip, {off_clip.max():+.0%} with it")
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(capture_t, spread_forward, "o-", label="real digits noised to t (forward)")
ax.plot(capture_t, spread_clip, "s--", label=f"the sampler's x_t (DDIM, {n_capture} steps, x0_hat clipped)")
ax.plot(capture_t, spread_raw, "^:", label="the same without clipping x0_hat")
ax.set(xlabel="timestep t", ylabel="std of the pixels", yscale="log",
       title="Does the sampler walk back through the forward marginals?")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "solution_spread.png", dpi=100)
plt.close(fig)
saved(out / "solution_spread.png")

# ---------------------------------------------------------------------------------------------------
section("Exercise 3 (create): a seed hunt")
# Draw a 7 from each seed; the seed's noise is default_rng(seed).standard_normal((1, 1, 28, 28)), what the lab's
# sample() draws for one digit. All seeds go through the sampler as one batch (each picture meets only its own pixels,
# so the batch changes at most the last float32 bits), the classifier scores each, and the least certain seed is drawn
# again, alone, with its denoising photographed.
HUNT_DIGIT = 7
seeds = list(range(6 if FAST else 20))
hunt_steps = 5 if FAST else 50
noises = np.concatenate([np.random.default_rng(s).standard_normal((1, 1, 28, 28), dtype=dtype) for s in seeds])
hunt = sample(hunt_steps, digits=np.full(len(seeds), HUNT_DIGIT), x_T=noises)
sure = predict_proba(judge_params, hunt)[:, HUNT_DIGIT]
worst, best = seeds[int(np.argmin(sure))], seeds[int(np.argmax(sure))]
print(f"  classifier's p({HUNT_DIGIT}) per seed: " + " ".join(f"{s}:{p:.2f}" for s, p in zip(seeds, sure)))
print(f"  least certain: seed {worst} ({sure.min():.2f}); most certain: seed {best} ({sure.max():.2f})")
capture = {}
show_t = set(int(t) for t in ddim_timesteps(T, hunt_steps, "trailing")[:: max(1, hunt_steps // 6)])


def photograph_worst(i, t, x_new, x0_hat):
    if t in show_t:
        capture[t] = x0_hat.copy()


alone = sample(hunt_steps, seed=worst, digits=np.array([HUNT_DIGIT]), callback=photograph_worst)
alone_again = sample(hunt_steps, seed=worst, digits=np.array([HUNT_DIGIT]))
check(f"rerunning seed {worst} alone reproduces its picture exactly", float(np.max(np.abs(alone - alone_again))) == 0.0,
      f"max |difference| {float(np.max(np.abs(alone - alone_again))):.1e}")
diff = float(np.max(np.abs(alone[0] - hunt[seeds.index(worst)])))
check(f"... and it is the picture the batch drew for seed {worst} (to float32 rounding)", diff < 1e-4,
      f"max |difference| {diff:.1e}")
check("the hunt ranks by certainty: the chosen seed is the least certain of all",
      sure[seeds.index(worst)] == sure.min(),
      f"p({HUNT_DIGIT}) = {sure.min():.2f}")
order = np.argsort(sure)
strip_t = sorted(capture, reverse=True)
fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 0.9 * len(seeds)), 4.4))
ax1.imshow(np.concatenate([np.clip((hunt[k, 0] + 1) / 2, 0, 1) for k in order], axis=1), cmap="gray", vmin=0, vmax=1)
ax1.set_xticks([14 + 28 * i for i in range(len(seeds))], [f"s{seeds[k]}\n{sure[k]:.2f}" for k in order], fontsize=7)
ax1.set_yticks([])
ax1.set_title(f"A {HUNT_DIGIT} from each seed, least certain first (seed, classifier's p({HUNT_DIGIT}))", fontsize=9)
ax2.imshow(np.concatenate([np.clip((capture[t][0, 0] + 1) / 2, 0, 1) for t in strip_t], axis=1), cmap="gray",
           vmin=0, vmax=1)
ax2.set_xticks([14 + 28 * i for i in range(len(strip_t))], [f"t={t}" for t in strip_t], fontsize=8)
ax2.set_yticks([])
ax2.set_title(f"Seed {worst}: the network's guess x0_hat along its run", fontsize=9)
fig.tight_layout()
fig.savefig(out / "solution_seed_hunt.png", dpi=100)
plt.close(fig)
saved(out / "solution_seed_hunt.png")

finish(started)
