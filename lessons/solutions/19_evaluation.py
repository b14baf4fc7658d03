"""Solutions to lesson 19 (FID, precision and recall): the three "Try this" exercises, worked and checked.

Try each exercise in lessons/19_evaluation.py yourself first; then run this file and compare.

Run it:   python lessons/solutions/19_evaluation.py          (--fast: smaller sets, a stand-in classifier)

Figures (in lessons/output/19_evaluation/, with a solution_ prefix):
  solution_k.png         precision and recall against k for the three toy generators and the network
  solution_copycat.png   FID, precision and recall of real training digits against real test digits, as noise is added
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
from tinyddpm.evaluation import metrics  # noqa: E402
from tinyddpm.classifiers.judge import features  # noqa: E402
from tinyddpm.sampling import sample_digits  # noqa: E402

started = time.perf_counter()
out = output_dir(__file__)
banner("Solutions to lesson 19: FID, precision and recall")
rng = np.random.default_rng(0)
KS = (1, 3, 10)


def ring(n, modes, spread, rng):
    """The lesson's toy data: a mixture of Gaussians on 8 points of the unit circle, only the listed modes."""
    centre = rng.choice(modes, size=n)
    angle = 2 * np.pi * centre / 8
    return np.stack([np.cos(angle), np.sin(angle)], axis=1) + spread * rng.standard_normal((n, 2))


def my_precision_recall(real, fake, k, column=None):
    """The lesson's k-NN precision and recall; `column` picks the radius column (k, unless told otherwise)."""
    column = k if column is None else column
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)
    d_ff = np.linalg.norm(fake[:, None] - fake[None], axis=-1)
    d_fr = np.linalg.norm(fake[:, None] - real[None], axis=-1)
    r_real = np.sort(d_rr, axis=1)[:, column]
    r_fake = np.sort(d_ff, axis=1)[:, column]
    return float(np.mean(np.any(d_fr <= r_real[None, :], axis=1))), float(np.mean(np.any(d_fr.T <= r_fake[None, :], axis=1)))


N_TOY = 200 if FAST else 400
real = ring(N_TOY, np.arange(8), 0.08, rng)
generators = {"faithful": ring(N_TOY, np.arange(8), 0.08, rng), "half the modes": ring(N_TOY, np.arange(4), 0.08, rng),
              "blurry": ring(N_TOY, np.arange(8), 0.3, rng)}

# ---------------------------------------------------------------------------------------------------
section("Exercise 1 (run): K_NN = 1, 3, 10")
# The radius of a sample's ball is the distance to its k-th nearest neighbour, which can only grow with k: every ball
# grows, so more points fall inside some ball, and precision and recall can only rise - for every generator, good or
# bad. What they cannot do is turn a bad generator into a good one: the half-modes generator's recall stays near one
# half at k = 10 (its balls grow, but the missing modes are far away), while the blurry generator's precision,
# whose misses sit just outside the real balls, climbs a lot. So compare generators only at the same k.
table = {}
for name, fake in generators.items():
    table[name] = [my_precision_recall(real, fake, k) for k in KS]
    lib = [metrics.precision_recall(real, fake, k=k) for k in KS]
    diff = max(abs(a - b) for pr, pr_lib in zip(table[name], lib) for a, b in zip(pr, pr_lib))
    print(f"    {name:15s} " + "   ".join(f"k={k}: P {p:.2f} R {r:.2f}" for k, (p, r) in zip(KS, table[name])))
    ps, rs = [p for p, _ in table[name]], [r for _, r in table[name]]
    check(f"{name}: precision and recall never fall as k grows (1, 3, 10), and match tinyddpm at every k",
          all(np.diff(ps) >= 0) and all(np.diff(rs) >= 0) and diff <= 1 / N_TOY, f"largest difference to tinyddpm {diff:.4f}")
check("bigger balls do not hide dropped modes: the half-modes generator's recall stays below 0.65 at k = 10",
      table["half the modes"][-1][1] < 0.65, f"recall {table['half the modes'][-1][1]:.2f}")
gain = table["blurry"][-1][0] - table["blurry"][0][0]
check("... but they do forgive blur: the blurry generator's precision rises by over 0.1 from k = 1 to 10", gain > 0.1,
      f"{table['blurry'][0][0]:.2f} -> {table['blurry'][-1][0]:.2f}")

# The network, in the classifier's features, as the lesson measures it (fewer samples in fast mode).
judge_params, judge_name = judge()
params, config, schedule, where = trained_model()
print(f"  features: {judge_name}\n  network: {where}")
train_first_note(where)
PER_DIGIT, PER_BATCH, STEPS = (4, 4, 3) if FAST else (20, 5, 10)
batches = [sample_digits(params, config.unet, schedule, range(10), PER_BATCH, sampler="dpm++2m", steps=STEPS,
                         guidance=config.guidance, seed=seed) for seed in range(PER_DIGIT // PER_BATCH)]
samples = np.concatenate(batches)
n = len(samples)
real_images, _ = mnist_digits(n, split="test", seed=0)
fake_feats, real_feats = features(judge_params, samples), features(judge_params, real_images)
net = [metrics.precision_recall(real_feats, fake_feats, k=k) for k in KS]
print(f"    network ({n} samples) " + "   ".join(f"k={k}: P {p:.2f} R {r:.2f}" for k, (p, r) in zip(KS, net)))
check("the network's precision and recall also rise with k", all(np.diff([p for p, _ in net]) >= 0)
      and all(np.diff([r for _, r in net]) >= 0), f"precision {net[0][0]:.2f} -> {net[-1][0]:.2f}, "
      f"recall {net[0][1]:.2f} -> {net[-1][1]:.2f}")
fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
for name, rows in list(table.items()) + [("network", net)]:
    axes[0].plot(KS, [p for p, _ in rows], "o-", label=name)
    axes[1].plot(KS, [r for _, r in rows], "o-", label=name)
for ax, what in zip(axes, ("precision", "recall")):
    ax.set(xscale="log", xlabel="k (log)", ylabel=what, ylim=(-0.02, 1.02), title=f"{what} against k")
    ax.set_xticks(KS, [str(k) for k in KS])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
path = out / "solution_k.png"
fig.savefig(path, dpi=90)
plt.close(fig)
saved(path)

# ---------------------------------------------------------------------------------------------------
section("Exercise 2 (modify): the radius from column k - 1")
# Prediction: both go down (or stay). Row i of the sorted distances starts with d(i, i) = 0, so column k is the k-th
# nearest *other* sample; column k - 1 is the (k-1)-th - a smaller radius, smaller balls, fewer points inside, for
# precision and recall alike. In fact the slip computes exactly the right metric for k - 1, and at k = 1 it gives
# every ball radius 0: precision and recall ~0 (a generated point would have to coincide with a real one).
# The check against tinyddpm then fails by far more than one point.
K_NN = 3
worst = 0.0
for name, fake in generators.items():
    right = my_precision_recall(real, fake, K_NN)
    slip = my_precision_recall(real, fake, K_NN, column=K_NN - 1)
    as_k_minus_1 = metrics.precision_recall(real, fake, k=K_NN - 1)
    worst = max(worst, abs(right[0] - slip[0]), abs(right[1] - slip[1]))
    print(f"    {name:15s} right P {right[0]:.3f} R {right[1]:.3f};  column k - 1: P {slip[0]:.3f} R {slip[1]:.3f}")
    check(f"{name}: the slip lowers (never raises) precision and recall, and equals the right metric at k = {K_NN - 1}",
          slip[0] <= right[0] and slip[1] <= right[1] and np.allclose(slip, as_k_minus_1, atol=1 / N_TOY),
          f"P {right[0]:.3f} -> {slip[0]:.3f}, R {right[1]:.3f} -> {slip[1]:.3f}")
check("the lesson's comparison with tinyddpm (limit: one point) now fails", worst > 1 / N_TOY,
      f"largest difference {worst:.3f} against one point = {1 / N_TOY:.4f}")
zero = my_precision_recall(real, generators["faithful"], 1, column=0)
check("at k = 1 the slip's radius is 0: precision and recall collapse to 0", zero == (0.0, 0.0), f"P, R = {zero}")

# ---------------------------------------------------------------------------------------------------
section("Exercise 3 (create): the FID of a copycat, and of a noisy copycat")
# A "generator" that hands back n real training digits is as good as a generator can be: against n real test digits
# it scores what real data scores against real data at that n - the lesson's real-vs-real floor - not 0 (FID's small-n
# bias), with precision and recall near the floor's too. Gaussian pixel noise then moves the images off the data,
# and FID rises steadily with it. Precision and recall do not fall together, though (this surprised us): in the
# classifier's features the noisy digits do not scatter - they shrink towards a tighter cloud near the middle of the
# real one (noise weakens the features that tell digits apart). A tight cloud inside the real manifold keeps its
# precision (its points still fall in real balls), while its own small balls cover few real digits: recall
# collapses. So noise shows up as lost recall, with precision nearly unchanged - one more reason to quote both.
N_COPY = 100 if FAST else 1000
train_imgs, _ = mnist_digits(N_COPY, split="train", seed=11)
test_imgs, _ = mnist_digits(2 * N_COPY, split="test", seed=12)
test_feats = features(judge_params, test_imgs[:N_COPY])
floor = metrics.real_baseline(features(judge_params, test_imgs), N_COPY, seed=1, k=K_NN)
STDS = (0.0, 0.1, 0.2, 0.4, 0.8)
noise_rng = np.random.default_rng(13)
copy, spread = {}, {}
for std in STDS:
    noisy = np.clip(train_imgs + std * noise_rng.standard_normal(train_imgs.shape).astype(train_imgs.dtype), -1, 1)
    f = features(judge_params, noisy)
    p, r = metrics.precision_recall(test_feats, f, k=K_NN)
    copy[std] = (metrics.fid_from_features(test_feats, f), p, r)
    spread[std] = float(np.sqrt(f.var(axis=0).sum()))                    # the feature cloud's overall size
    print(f"    noise std {std:.1f}: FID {copy[std][0]:8.2f}   precision {p:.3f}   recall {r:.3f}   "
          f"feature spread {spread[std]:.1f}")
print(f"    real vs real (test vs test), n = {N_COPY}: FID {floor['fid']:.2f}, precision {floor['precision']:.3f}, "
      f"recall {floor['recall']:.3f}; the test digits' feature spread {float(np.sqrt(test_feats.var(axis=0).sum())):.1f}")
check("the copycat scores near the real-vs-real floor at the same n (FID within a factor 2, not 0)",
      0.5 * floor["fid"] < copy[0.0][0] < 2 * floor["fid"], f"{copy[0.0][0]:.2f} vs floor {floor['fid']:.2f}")
fids = [copy[s_][0] for s_ in STDS]
check("FID rises with every step of added noise", all(np.diff(fids) > 0), " -> ".join(f"{v:.1f}" for v in fids))
noisiest = STDS[-1]
check("the noise shows as lost recall (down by over 0.3) while precision moves by under 0.2",
      copy[noisiest][2] < copy[0.0][2] - 0.3 and abs(copy[noisiest][1] - copy[0.0][1]) < 0.2,
      f"recall {copy[0.0][2]:.2f} -> {copy[noisiest][2]:.2f}, precision {copy[0.0][1]:.2f} -> {copy[noisiest][1]:.2f}")
check("... because the noisy digits' features shrink to a tighter cloud (spread below 80% of the clean copycat's)",
      spread[noisiest] < 0.8 * spread[0.0], f"spread {spread[0.0]:.1f} -> {spread[noisiest]:.1f}")
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
ax1.plot(STDS, fids, "o-")
ax1.axhline(floor["fid"], color="gray", linestyle=":", label=f"real vs real floor at n = {N_COPY}")
ax1.set(xlabel="std of the added pixel noise", ylabel="FID (log)", yscale="log", title="A copycat's FID")
ax1.legend()
ax2.plot(STDS, [copy[s_][1] for s_ in STDS], "o-", label="precision")
ax2.plot(STDS, [copy[s_][2] for s_ in STDS], "s-", label="recall")
ax2.set(xlabel="std of the added pixel noise", ylim=(-0.02, 1.02), title=f"k-NN precision and recall (k = {K_NN})")
ax2.legend()
for ax in (ax1, ax2):
    ax.grid(True, alpha=0.3)
path = out / "solution_copycat.png"
fig.savefig(path, dpi=90)
plt.close(fig)
saved(path)

finish(started)
