"""Lesson 19: measuring samples: FID, precision and recall.

What you will learn
  - the Frechet distance between two Gaussians, ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), derived in
    NumPy with the matrix square root taken through a symmetric form, and checked against tinyddpm.evaluation.metrics;
  - why an FID means nothing without its sample size: even real digits against real digits score far from 0
    at small n, and the bias shrinks like 1/n;
  - k-NN precision and recall (k = 3): derived in NumPy on 2-D point clouds where the answer is known (a
    generator that drops half the modes: high precision, low recall; a blurry one: low precision);
  - the real thing: a few hundred digits from the trained network against real digits, in the features of
    tinyddpm's MNIST classifier, next to the real-vs-real baseline at the same n.

Run it
  python lessons/19_evaluation.py          # about a minute on 2 CPU cores (once more if the network or the
                                           # classifier has to be trained first)
  python lessons/19_evaluation.py --fast   # tiny sizes, the same code paths (what the tests run)

Figures (in lessons/output/19_evaluation/)
  toy_precision_recall.png  2-D point clouds: the real k-NN balls, and which generated points fall inside
  fid_vs_n.png              FID of real vs real digits against n (the bias), with the network's FID at its n
  model_samples.png         the generated digits that were measured

Try this
  1. run:    set K_NN = 1 and then K_NN = 10 and rerun. Watch precision and recall of the toy generators and
             of the network: bigger balls forgive more, so both numbers rise, for good and bad generators alike.
             (At K_NN = 1 two toy checks fail: their bounds are set for k = 3, and with the smallest balls the
             mode-dropping generator's recall and the blurry one's recall fall below them.)
  2. modify: in my_precision_recall take the radius from column k - 1 instead of k of the sorted distances
             (forgetting that column 0 is the point itself). Predict whether precision and recall go up or
             down, then see the check against tinyddpm fail.
  3. create: an "FID of a copycat": take n real training digits as the "generated" set and measure FID,
             precision and recall against real test digits. Then add Gaussian pixel noise of growing std
             and plot how each metric reacts.

Next: lessons/20_your_first_gpu_kernel.py - your first GPU kernel: GroupNorm + SiLU in CUDA C.
"""
# %%
import time

from _common import (FAST, banner, check, finish, judge, mnist_digits, output_dir, relative_error, saved,
                     section, try_this, trained_model)

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import EllipseCollection  # noqa: E402

from tinyddpm.evaluation import metrics  # noqa: E402
from tinyddpm.classifiers.judge import features, predict_proba  # noqa: E402
from tinyddpm.sampling import sample_digits  # noqa: E402
from tinyddpm.viz import plot_sample_grid  # noqa: E402

# %%
started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 19: FID, precision and recall")
K_NN = 3

# %% 1. The Frechet distance, derived
# ---------------------------------------------------------------------------------------------------
section("1. The Frechet distance, derived")
# Fit a Gaussian to each set of features: mean mu (D,) and covariance S (D, D) (ddof = 1). The Frechet (or
# 2-Wasserstein) distance between N(mu1, S1) and N(mu2, S2) is
#     d^2 = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2))
# S1 S2 is not symmetric, but it is similar to the symmetric A = S1^(1/2) S2 S1^(1/2):
#     S1 S2 = S1^(1/2) A S1^(-1/2)
# so both have the same eigenvalues, and Tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(A)). Two symmetric
# eigen-decompositions (eigh) do it: one for S1^(1/2) = V diag(sqrt(l)) V^T, one for A's eigenvalues.
def my_fid(f1, f2):
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)          # (D, D) each
    lam, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(lam, 0, None))) @ v.T                    # S1^(1/2)
    lam_a = np.linalg.eigvalsh(root1 @ s2 @ root1)                        # eigenvalues of A, all >= 0
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(lam_a, 0, None))))


rng = np.random.default_rng(0)
mix1, mix2 = rng.standard_normal((2, 16, 16))
f1 = rng.standard_normal((500, 16)) @ mix1 + 0.5                         # two correlated Gaussian clouds
f2 = rng.standard_normal((400, 16)) @ mix2 - 0.3
err = relative_error(my_fid(f1, f2), metrics.fid_from_features(f1, f2))
check("my FID == tinyddpm.evaluation.metrics.fid_from_features", err < 1e-10, f"relative error {err:.1e}")
# The same trace by another route: eigenvalues of the non-symmetric S1 S2 itself (complex in general,
# real and >= 0 here up to round-off).
s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
tr_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)))
other = np.sum((f1.mean(0) - f2.mean(0)) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
err = relative_error(my_fid(f1, f2), other)
check("the symmetric form == eigenvalues of S1 S2 taken directly", err < 1e-9, f"relative error {err:.1e}")
# And a case with a closed form: diagonal covariances commute, so d^2 = ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2.
va, vb, ma, mb = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16), rng.standard_normal(16), rng.standard_normal(16)
closed = np.sum((ma - mb) ** 2) + np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2)
err = relative_error(metrics.frechet_distance(ma, np.diag(va), mb, np.diag(vb)), closed)
check("frechet_distance of diagonal Gaussians == the closed form", err < 1e-12, f"relative error {err:.1e}")

# %% 2. The features, and FID's bias at small n
# ---------------------------------------------------------------------------------------------------
section("2. The features, and FID's bias at small n")
# FID compares feature statistics, not pixels: the features are the 128 penultimate activations of an MNIST
# classifier built from tinyddpm's ops (_common.judge(): the evaluation classifier of examples/evaluate.py when
# it is cached, else a lighter one trained once here in ~8 s). Fast mode uses a stand-in trained for a few
# seconds on 1,000 digits: the pipeline runs, the numbers are not the real ones.
judge_params, judge_name = judge()
print(f"  features: {judge_name}")
# Two disjoint sets of n real test digits come from the same distribution, so the true distance is 0. But
# the means and covariances are estimated from n samples each: their errors (~1/sqrt(n) per entry, over
# D = 128 dimensions and D^2 covariance entries) add a positive bias of roughly c / n.
NS = (25, 50, 100, 200) if FAST else (50, 100, 200, 500, 1000, 2000)
real_images, real_labels = mnist_digits(2 * NS[-1], split="test", seed=0)
real_feats = features(judge_params, real_images)                                 # (2 n_max, 128)
REPEATS = 3
fid_real = np.array([[metrics.real_baseline(real_feats, n, seed=s)["fid"] for s in range(REPEATS)] for n in NS])
for n, row in zip(NS, fid_real):
    print(f"    n = {n:5d}: real vs real FID {row.mean():8.2f} (+- {row.std():.2f} over {REPEATS} splits),  "
          f"n * FID = {n * row.mean():.0f}")
check("FID of real vs real digits shrinks with n (bias ~ 1/n)", fid_real[-1].mean() < fid_real[0].mean() / 4,
      f"{fid_real[0].mean():.1f} at n = {NS[0]} -> {fid_real[-1].mean():.1f} at n = {NS[-1]}")

# %% 3. k-NN precision and recall on toy point clouds
# ---------------------------------------------------------------------------------------------------
section("3. k-NN precision and recall on toy point clouds")
# Estimate each set's support (its "manifold") as a union of balls, one per sample, with radius the distance
# to that sample's k-th nearest neighbour in its own set (k = 3). Then
#     precision = share of generated samples inside the real manifold    (are the samples realistic?)
#     recall    = share of real samples inside the generated manifold    (is every kind of real sample made?)
# (Kynkaanniemi et al. 2019). One number cannot tell a generator that makes only some digits perfectly from
# one that makes all digits badly; these two can.
def ring(n, modes, spread, rng):
    """n points from a mixture of Gaussians centred on 8 points of the unit circle, only the listed modes."""
    centre = rng.choice(modes, size=n)
    angle = 2 * np.pi * centre / 8
    return np.stack([np.cos(angle), np.sin(angle)], axis=1) + spread * rng.standard_normal((n, 2))


def my_precision_recall(real, fake, k):
    d_rr = np.linalg.norm(real[:, None] - real[None], axis=-1)          # (N, N) real to real
    d_ff = np.linalg.norm(fake[:, None] - fake[None], axis=-1)          # (M, M) fake to fake
    d_fr = np.linalg.norm(fake[:, None] - real[None], axis=-1)          # (M, N) fake to real
    r_real = np.sort(d_rr, axis=1)[:, k]                                # index 0 is the point itself
    r_fake = np.sort(d_ff, axis=1)[:, k]
    precision = np.mean(np.any(d_fr <= r_real[None, :], axis=1))        # fake inside some real ball
    recall = np.mean(np.any(d_fr.T <= r_fake[None, :], axis=1))         # real inside some fake ball
    return float(precision), float(recall), r_real


N_TOY = 200 if FAST else 400
real = ring(N_TOY, np.arange(8), 0.08, rng)
generators = {"faithful": ring(N_TOY, np.arange(8), 0.08, rng),       # the same distribution
              "half the modes": ring(N_TOY, np.arange(4), 0.08, rng),  # mode dropping
              "blurry": ring(N_TOY, np.arange(8), 0.3, rng)}           # every mode, smeared
results, worst = {}, 0.0
for name, fake in generators.items():
    p, r, radii = my_precision_recall(real, fake, K_NN)
    p_lib, r_lib = metrics.precision_recall(real, fake, k=K_NN)
    worst = max(worst, abs(p - p_lib), abs(r - r_lib))
    results[name] = (p, r)
    print(f"    {name:15s} precision {p:.3f}  recall {r:.3f}")
check("my precision/recall == tinyddpm.evaluation.metrics.precision_recall (3 generators)", worst <= 1 / N_TOY,
      f"max difference {worst:.4f} (one point = {1 / N_TOY:.4f})")
p, r = results["half the modes"]
check("dropping half the modes: high precision, recall about one half", p > 0.85 and 0.35 < r < 0.65,
      f"precision {p:.2f}, recall {r:.2f}")
p, r = results["blurry"]
check("a blurry generator: low precision, high recall", p < 0.6 and r > 0.85, f"precision {p:.2f}, recall {r:.2f}")

fig, axes = plt.subplots(1, 3, figsize=(14, 5), layout="constrained")
for ax, (name, fake) in zip(axes, generators.items()):
    p, r, radii = my_precision_recall(real, fake, K_NN)
    balls = EllipseCollection(2 * radii, 2 * radii, 0, units="xy", offsets=real, offset_transform=ax.transData,
                              facecolors="tab:blue", alpha=0.12, edgecolors="none")
    ax.add_collection(balls)
    ax.scatter(real[:, 0], real[:, 1], s=4, color="tab:blue", label="real (with its k-NN balls)")
    d_fr = np.linalg.norm(fake[:, None] - real[None], axis=-1)
    inside = np.any(d_fr <= radii[None, :], axis=1)
    ax.scatter(fake[inside, 0], fake[inside, 1], s=10, marker="x", color="tab:green", label="generated, inside")
    ax.scatter(fake[~inside, 0], fake[~inside, 1], s=10, marker="x", color="tab:red", label="generated, outside")
    ax.set(title=f"{name}: precision {p:.2f}, recall {r:.2f}", xlim=(-2, 2), ylim=(-2, 2), aspect="equal")
    ax.set_xticks([])
    ax.set_yticks([])
axes[0].legend(fontsize=8, loc="center")
fig.suptitle(f"k-NN precision and recall (k = {K_NN}): precision = share of generated points inside the real balls")
fig.savefig(out / "toy_precision_recall.png")
plt.close(fig)
saved(out / "toy_precision_recall.png")

# %% 4. The real thing: the trained network against real digits
# ---------------------------------------------------------------------------------------------------
section("4. The real thing: the trained network against real digits")
params, config, schedule, where = trained_model()
print(f"  network: {where}")
PER_DIGIT, PER_BATCH = (4, 4) if FAST else (20, 5)                            # batches of 50 keep memory small
STEPS = 3 if FAST else 10
batches = [sample_digits(params, config.unet, schedule, range(10), PER_BATCH, sampler="dpm++2m", steps=STEPS,
                         guidance=config.guidance, seed=seed) for seed in range(PER_DIGIT // PER_BATCH)]
samples = np.concatenate(batches)                                                # (10 * PER_DIGIT, 1, 28, 28)
requested = np.tile(np.repeat(np.arange(10), PER_BATCH), len(batches))          # the digit each one was asked to be
n = len(samples)
fake_feats = features(judge_params, samples)
reference = real_feats[:n]                                                       # n real test digits
quality = metrics.sample_quality(fake_feats, reference, predict_proba(judge_params, samples), requested, k=K_NN)
baseline = metrics.real_baseline(real_feats, n, seed=1, k=K_NN)
print(f"    {n} samples (DPM-Solver++ {STEPS} steps, guidance {config.guidance:g}) vs {n} real test digits:")
print(f"    {'':14s} {'FID':>8} {'precision':>10} {'recall':>8}")
print(f"    {'network':14s} {quality['fid']:8.2f} {quality['precision']:10.3f} {quality['recall']:8.3f}"
      f"   (accuracy {quality['accuracy']:.1%}, Inception Score {quality['inception_score']:.2f})")
print(f"    {'real vs real':14s} {baseline['fid']:8.2f} {baseline['precision']:10.3f} {baseline['recall']:8.3f}"
      "   (what a perfect generator would score at this n)")
mine = my_fid(reference, fake_feats)
err = relative_error(mine, quality["fid"])
check("my FID on the network's samples == tinyddpm.evaluation.metrics.sample_quality", err < 1e-6, f"relative error {err:.1e}")
check("the network's FID is above the real-vs-real floor at the same n", quality["fid"] > baseline["fid"],
      f"{quality['fid']:.1f} > {baseline['fid']:.1f}")
show = np.stack(batches).reshape(len(batches), 10, PER_BATCH, 1, 28, 28).transpose(1, 0, 2, 3, 4, 5)
show = show.reshape(10, PER_DIGIT, 1, 28, 28)                                    # a row per digit
saved(plot_sample_grid(out / "model_samples.png", show, row_labels=[str(d) for d in range(10)],
                       title=f"The {n} measured samples (DPM-Solver++ {STEPS} steps, guidance {config.guidance:g})"))

fig, ax = plt.subplots(figsize=(7, 4.5))
ax.errorbar(NS, fid_real.mean(axis=1), yerr=fid_real.std(axis=1), fmt="o-", linewidth=2, capsize=3,
            label="real vs real (disjoint test digits)")
c = np.mean(np.array(NS) * fid_real.mean(axis=1))
ax.plot(NS, c / np.array(NS), ":", color="0.4", label=f"c / n with c = {c:.0f}")
ax.plot([n], [quality["fid"]], "r*", markersize=14, label=f"the network, n = {n}")
ax.set(xscale="log", yscale="log", xlabel="samples per set n", ylabel="FID (log scale)",
       title="FID is biased upwards at small n: compare only at equal n")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(out / "fid_vs_n.png")
plt.close(fig)
saved(out / "fid_vs_n.png")

# %% Exercises
# ---------------------------------------------------------------------------------------------------
try_this(__doc__)
finish(started)
