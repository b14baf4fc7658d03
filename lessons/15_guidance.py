"""Lesson 15: classifier-free guidance, trading diversity for fidelity with one number.

What you will learn
  - the guidance rule eps = eps_uncond + w (eps_cond - eps_uncond), derived and checked against
    tinyddpm.diffusion.cfg_combine and GuidedModel (one network, two predictions, one batch);
  - what it does to the distribution: at every noise level it tilts the density by an implicit classifier,
    p_t(x) p_t(y | x)^w, exactly; yet the samples follow p(x) p(y | x)^w only at w = 0 and w = 1. Guidance is a
    heuristic tilt: shown on a 1-D toy with exact scores, where two samplers even disagree on what it samples;
  - on MNIST digits, with the same starting noise for every w: w = 0 ignores the label, w = 1 is plain
    conditional sampling, and larger w makes the requested digit more certain and the samples more alike,
    measured as accuracy (by tinyddpm's MNIST classifier) and diversity (mean pairwise distance).

Run it
  python lessons/15_guidance.py          # about a minute on 2 CPU cores (once more if the network or the
                                         # classifier has to be trained first)
  python lessons/15_guidance.py --fast   # tiny sizes, the same code paths (what the tests run)

Figures (in lessons/output/15_guidance/)
  toy_tilt.png            1-D toy: the tilted density p(x) p(y | x)^w for several w, and what guided samplers
                          with exact scores actually draw at w = 4
  guidance_grid.png       samples for w = 0, 1, 2, 4, 7: a row per digit, the same noises in every panel
  diversity_accuracy.png  diversity and accuracy of those samples against w

Try this
  1. run:    add w = 15 to SCALES and rerun. Look at the strokes in guidance_grid.png: past some scale the
             digits break up (speckles, blotches) while accuracy gains less and less.
  2. modify: in the sampling section give every digit row its own noise (draw x_T for all images instead of
             tiling NOISES). Predict what happens to the w = 0 panel, which now has identical rows.
  3. create: guidance that grows over the run: a small class whose __call__(x_t, t, labels) picks
             w = w_max * (1 - t / T) and mixes with cfg_combine; compare its grid with constant w.

Next: lessons/16_classifier_guidance.py - classifier guidance: steering with a noise-conditional classifier's gradient.
"""
# %%
import time

from _common import (FAST, banner, check, finish, judge, output_dir, relative_error, saved, section, try_this,
                     trained_model)

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tinyddpm.classifiers.judge import classify  # noqa: E402
from tinyddpm.diffusion import (GuidedModel, cfg_combine, ddim_sample, ddpm_sample, dpm_solver_sample,  # noqa: E402
                                make_schedule)
from tinyddpm.sampling import unet_model  # noqa: E402
from tinyddpm.viz import tile_images  # noqa: E402

# %%
started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 15: classifier-free guidance")

# %% 1. The rule
# ---------------------------------------------------------------------------------------------------
section("1. The rule")
# Training replaced 10% of the labels by a "null" label (id 10), so the same network predicts the noise
# two ways: eps_cond = eps(x_t, t, y) for the digit y we ask for, and eps_uncond = eps(x_t, t, null).
# Guidance with scale w extrapolates from the second towards (and past) the first:
#     eps_w = eps_uncond + w (eps_cond - eps_uncond) = (1 - w) eps_uncond + w eps_cond
#     w = 0: unconditional   w = 1: plain conditional   w > 1: "more of the label" than the network learned
# (Ho & Salimans write it with w' = w - 1: eps = (1 + w') eps_cond - w' eps_uncond; the same rule.)
rng = np.random.default_rng(0)
eps_cond, eps_uncond = rng.standard_normal((2, 6, 1, 28, 28))
worst = 0.0
for w in (0.0, 1.0, 2.0, 4.0, 7.0):
    mine = eps_uncond + w * (eps_cond - eps_uncond)
    worst = max(worst, relative_error(mine, cfg_combine(eps_cond, eps_uncond, w)))
check("my guidance rule == tinyddpm.diffusion.cfg_combine (w = 0, 1, 2, 4, 7)", worst < 1e-14,
      f"max relative error {worst:.1e}")
# The (1 - w) u + w c form returns exactly c at w = 1 and exactly u at w = 0 (u + 1 * (c - u) would round).
ends = max(float(np.max(np.abs(cfg_combine(eps_cond, eps_uncond, 1.0) - eps_cond))),
           float(np.max(np.abs(cfg_combine(eps_cond, eps_uncond, 0.0) - eps_uncond))))
check("w = 1 gives eps_cond and w = 0 gives eps_uncond, bit for bit", ends == 0.0, f"max |difference| {ends:.1e}")

# %% 2. What the rule samples: a 1-D toy with exact scores
# ---------------------------------------------------------------------------------------------------
section("2. What the rule samples: a 1-D toy with exact scores")
# The network's noise prediction is a scaled score: eps(x_t, t) = -sqrt(1 - abar_t) d/dx log p_t(x_t). So
# guidance mixes scores:
#     score_w = score_uncond + w (score_cond - score_uncond) = d/dx [ log p(x) + w (log p(x | y) - log p(x)) ]
# and by Bayes, log p(x | y) - log p(x) = log p(y | x) - log p(y), a constant away from log p(y | x):
#     score_w = d/dx log [ p(x) p(y | x)^w ]
# Guidance tilts p(x) by an implicit classifier raised to the power w: w > 1 keeps only the x that are very
# clearly y, so the samples become surer and more alike. The score identity is exact; whether a sampler then draws
# from p(x) p(y | x)^w is another matter (section 2b).
# Toy: two classes on a line, p(x | y) = N(m_y, 1) with m = -1.5, +1.5, p(y) = 1/2; we ask for y = 1.
m, sd = np.array([-1.5, 1.5]), 1.0
x = np.linspace(-6, 8, 2801)                                                     # (X,)
dx = x[1] - x[0]
lik = np.exp(-0.5 * ((x[:, None] - m) / sd) ** 2) / (sd * np.sqrt(2 * np.pi))    # (X, 2) p(x | y)
p_x = lik.mean(axis=1)                                                           # (X,) p(x)
post = lik / lik.sum(axis=1, keepdims=True)                                      # (X, 2) p(y | x)
score_cond = -(x - m[1]) / sd**2                                                 # d/dx log p(x | y=1)
score_uncond = (post * (-(x[:, None] - m) / sd**2)).sum(axis=1)                  # d/dx log p(x)
worst = 0.0
print("  the guided density p(x) p(y=1 | x)^w, normalised:")
for w in (0.0, 1.0, 2.0, 4.0, 7.0):
    log_tilt = np.log(p_x) + w * np.log(post[:, 1])                             # log of the unnormalised density
    numeric = np.gradient(log_tilt, dx)                                          # its score by finite differences
    inner = slice(10, -10)                                                       # away from the grid's ends
    worst = max(worst, relative_error(numeric[inner], cfg_combine(score_cond, score_uncond, w)[inner]))
    dens = np.exp(log_tilt - log_tilt.max())
    dens /= dens.sum() * dx
    mean = (x * dens).sum() * dx
    print(f"    w = {w:.0f}: mean {mean:+.2f}, std {np.sqrt(((x - mean) ** 2 * dens).sum() * dx):.2f}")
check("the guided score == d/dx log p(x) p(y|x)^w (finite differences, w = 0 to 7)", worst < 1e-4,
      f"max relative error {worst:.1e}")
# %% 2b. What is exact, and what is not
# ---------------------------------------------------------------------------------------------------
section("2b. What is exact, and what is not")
# A sampler runs through every noise level t. There the network sees x_t, whose density is the noised one,
#     p_t(x | y) = N(a m_y, a^2 + b^2) = N(a m_y, 1)          (a = sqrt(abar_t), b = sqrt(1 - abar_t), sd = 1)
# and guidance mixes the scores of p_t(x | y) and p_t(x). By the same Bayes argument that is exactly the score of
#     p_t(x) p_t(y | x)^w,                the noisy marginal tilted by the noisy classifier, at every t.
# So far exact (given exact scores). But a sampler is only right for a family of densities that are each other's noisy
# versions (lesson 02: q_t = q_0 noised), and these are not: noising p(x) p(y | x)^w does not give p_t(x) p_t(y | x)^w
# unless w = 0 (p(x)) or w = 1 (p(x | y)), where the tilt is itself a data density. For other w, nothing guarantees
# that the samples follow p(x) p(y | x)^w - at the clean end or anywhere - and different samplers, each exact for a
# proper family, land in different places. Classifier-free guidance is a heuristic tilt in that direction.
# The toy, with exact scores: sample it with DDPM (1000 steps) and with deterministic DDIM, and compare with the target.
sched = make_schedule("linear", 1000)
N_TOY = 2000 if FAST else 10000


def toy_model(w):
    """The guided noise prediction of the toy, exact: eps = -b * [(1 - w) score_t(x) + w score_t(x | y = 1)]."""
    def model(x_t, t, labels):
        ab = sched.alpha_bar[t][:, None, None, None]                                    # (N, 1, 1, 1)
        a_, b_ = np.sqrt(ab), np.sqrt(1 - ab)
        v = a_**2 * sd**2 + b_**2                                                       # variance of p_t(x | y)
        scores_y = np.stack([-(x_t - a_ * m_y) / v for m_y in m])                       # (2, N, 1, 1, 1)
        lik_t = np.stack([np.exp(-0.5 * (x_t - a_ * m_y) ** 2 / v) for m_y in m])
        post_t = lik_t / lik_t.sum(axis=0)                                              # p_t(y | x)
        return -b_ * cfg_combine(scores_y[1], (post_t * scores_y).sum(axis=0), w)
    return model


x_T_toy = np.random.default_rng(2).standard_normal((N_TOY, 1, 1, 1))
toy_samples = {}
for w in (1.0, 4.0):
    log_tilt = np.log(p_x) + w * np.log(post[:, 1])
    dens = np.exp(log_tilt - log_tilt.max())
    dens /= dens.sum() * dx
    target_mean = (x * dens).sum() * dx
    target_std = np.sqrt(((x - target_mean) ** 2 * dens).sum() * dx)
    runs = {"DDPM, 1000 steps": ddpm_sample(toy_model(w), sched, x_T=x_T_toy, seed=3, progress=False).ravel(),
            "DDIM (eta = 0), 100 steps": ddim_sample(toy_model(w), sched, x_T=x_T_toy, num_steps=100,
                                                     progress=False).ravel()}
    toy_samples[w] = (dens, runs)
    se = target_std / np.sqrt(N_TOY)
    # 5 standard errors, plus 0.01 for the samplers' own discretisation error (lesson 12 measured under 0.006)
    off = {name: abs(r.mean() - target_mean) for name, r in runs.items()}
    print(f"  w = {w:g}: target mean {target_mean:+.3f} (std {target_std:.3f}); " + "; ".join(
        f"{name}: {r.mean():+.3f} (std {r.std():.3f})" for name, r in runs.items()))
    if w == 1.0:
        check("w = 1 (plain conditional): both samplers draw p(x | y) = p(x) p(y | x)^1",
              max(off.values()) < 5 * se + 0.01,
              f"means off by {max(off.values()):.3f} (allowed {5 * se + 0.01:.3f})")
    else:
        check("w = 4: neither sampler draws p(x) p(y | x)^4, and they disagree with each other",
              min(off.values()) > 10 * se + 0.05 and abs(runs["DDPM, 1000 steps"].mean()
                                                         - runs["DDIM (eta = 0), 100 steps"].mean()) > 10 * se,
              f"means off by {min(off.values()):.2f} to {max(off.values()):.2f} (standard error {se:.3f})")

fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 4.2))
for w in (0.0, 1.0, 2.0, 4.0, 7.0):
    log_tilt = np.log(p_x) + w * np.log(post[:, 1])
    dens = np.exp(log_tilt - log_tilt.max())
    name = {0.0: " (p(x))", 1.0: " (p(x | y=1))"}.get(w, "")
    ax.plot(x, dens / (dens.sum() * dx), linewidth=2, label=f"w = {w:g}{name}")
ax.set(xlabel="x", ylabel="density", xlim=(-5, 6),
       title="The tilt p(x) p(y=1 | x)^w: narrower and further from class 0 as w grows")
ax.legend()
dens4, runs4 = toy_samples[4.0]
bins = np.linspace(-2, 6, 80)
for name, r in runs4.items():
    ax2.hist(r, bins=bins, density=True, histtype="step", linewidth=2, label=f"{name}: what guidance draws")
ax2.plot(x, dens4, "k--", linewidth=2, label="p(x) p(y=1 | x)^4, the tilt")
ax2.set(xlabel="x", xlim=(-2, 6), title="w = 4 with exact scores: a heuristic tilt, not the tilted density")
ax2.legend(fontsize=8)
for a_ in (ax, ax2):
    a_.grid(True, alpha=0.3)
fig.tight_layout()
fig.savefig(out / "toy_tilt.png")
plt.close(fig)
saved(out / "toy_tilt.png")

# %% 3. GuidedModel: both predictions in one call
# ---------------------------------------------------------------------------------------------------
section("3. GuidedModel: both predictions in one call")
params, config, schedule, where = trained_model()
print(f"  network: {where}")
null = config.unet.null_label
# GuidedModel stacks the batch twice, [x_t; x_t] with labels [y; null], runs the network once on 2N images
# and mixes the halves. Check it against two separate calls, in float64 so that only real differences show.
params64 = {name: value.astype(np.float64) for name, value in params.items()}
model64 = unet_model(params64, config.unet)
x_t = rng.standard_normal((3, 1, 28, 28))
t = np.array([999, 500, 20])
labels = np.array([3, 7, 0])
w = 3.0
by_hand = cfg_combine(model64(x_t, t, labels), model64(x_t, t, np.full(3, null)), w)
err = relative_error(GuidedModel(model64, w, null)(x_t, t, labels), by_hand)
check("GuidedModel(w = 3) == cfg_combine of two separate network calls", err < 1e-12, f"max relative error {err:.1e}")

# %% 4. Samples for w = 0, 1, 2, 4, 7 from the same noise
# ---------------------------------------------------------------------------------------------------
section("4. Samples for w = 0, 1, 2, 4, 7 from the same noise")
# Every digit row gets the same NOISES starting images, so a column is "one noise asked to be each digit";
# the same grid of noises is used at every w. Sampler: DPM-Solver++(2M), deterministic given x_T.
SCALES = (0.0, 1.0, 2.0, 4.0, 7.0)
digits = np.arange(4) if FAST else np.arange(10)
NOISES = 3 if FAST else 6
STEPS = 4 if FAST else 10
model = unet_model(params, config.unet)
dtype = params["conv_in.w"].dtype
noise = np.random.default_rng(1).standard_normal((NOISES, 1, 28, 28)).astype(dtype)
x_T = np.tile(noise, (len(digits), 1, 1, 1))                                  # (digits * NOISES, 1, 28, 28)
requested = np.repeat(digits, NOISES)                                          # d0 d0 d0 .. d1 d1 d1 ..
samples = {}
for w in SCALES:
    samples[w] = dpm_solver_sample(GuidedModel(model, w, null), schedule, x_T=x_T, labels=requested,
                                   num_steps=STEPS, clip="static", progress=False)
grid0 = samples[0.0].reshape(len(digits), NOISES, -1)                          # (digits, NOISES, 784)
spread = float(np.max(np.abs(grid0 - grid0[:1])))
check("w = 0 ignores the label: every digit row is the same images", spread < 1e-4,
      f"max |difference| between rows {spread:.1e}")

fig, axes = plt.subplots(1, len(SCALES), figsize=(2.2 * len(SCALES) + 0.6, 2.2 * len(digits) / NOISES + 1.1))
for ax, w in zip(axes, SCALES):
    grid = samples[w].reshape((len(digits), NOISES) + samples[w].shape[1:])    # (digits, NOISES, 1, 28, 28)
    ax.imshow(tile_images(grid), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(f"w = {w:g}" + {0.0: "\n(unconditional)", 1.0: "\n(conditional)"}.get(w, "\n(guided)"))
    ax.set_xticks([])
    ax.set_yticks([(28 + 2) * i + 13.5 for i in range(len(digits))])
    ax.set_yticklabels([str(d) for d in digits] if ax is axes[0] else [])
axes[0].set_ylabel("requested digit")
fig.suptitle(f"Classifier-free guidance: the same {NOISES} noises in every row and panel, DPM-Solver++ {STEPS} steps")
fig.tight_layout()
fig.savefig(out / "guidance_grid.png")
plt.close(fig)
saved(out / "guidance_grid.png")

# %% 5. Diversity and accuracy against w
# ---------------------------------------------------------------------------------------------------
section("5. Diversity and accuracy against w")
# Accuracy: how often an MNIST classifier reads the digit we asked for. _common.judge() uses tinyddpm's
# evaluation classifier (built from tinyddpm's own ops, 98.95% on the test digits) when examples/evaluate.py has
# cached it, else trains a lighter one once (~8 s); fast mode uses a stand-in that only shows the pipeline runs.
judge_params, judge_name = judge()
print(f"  judge: {judge_name}")
# Diversity: for each digit, the mean distance between its NOISES samples, as an RMS per pixel
#     div(d) = mean_{i < j} sqrt(mean_pixels (x_i - x_j)^2),   then averaged over the digits.
accuracy, diversity = [], []
for w in SCALES:
    accuracy.append(float(np.mean(classify(judge_params, samples[w]) == requested)))
    per_digit = samples[w].reshape(len(digits), NOISES, -1).astype(np.float64)  # (digits, NOISES, 784)
    diff = per_digit[:, :, None, :] - per_digit[:, None, :, :]                   # (digits, NOISES, NOISES, 784)
    dist = np.sqrt(np.mean(diff ** 2, axis=-1))                                  # (digits, NOISES, NOISES)
    i, j = np.triu_indices(NOISES, k=1)
    diversity.append(float(dist[:, i, j].mean()))
    print(f"    w = {w:3g}: accuracy {accuracy[-1]:6.1%}   diversity {diversity[-1]:.3f}")
if FAST:
    print("  (fast mode: the network is barely trained, so the trends below are not checked)")
else:
    # w = 0 gets the requested digit by chance (~10%); a network that learned anything about labels does better
    # with guidance (a well-trained one reaches 90% and more; the lessons' one-minute network much less).
    check("guidance makes the requested digit more likely: accuracy at w = 4 > at w = 0 + 10 points",
          accuracy[SCALES.index(4.0)] > accuracy[0] + 0.1, f"{accuracy[0]:.1%} -> {accuracy[SCALES.index(4.0)]:.1%}")
    check("strong guidance makes samples of a digit more alike: diversity at w = 7 < at w = 1",
          diversity[-1] < diversity[1], f"{diversity[1]:.3f} -> {diversity[-1]:.3f}")

fig, ax1 = plt.subplots(figsize=(7, 4))
ax1.plot(SCALES, accuracy, "o-", color="tab:blue", linewidth=2, label="accuracy (left)")
ax1.set(xlabel="guidance scale w", ylabel="share classified as the requested digit", ylim=(-0.02, 1.02))
ax2 = ax1.twinx()
ax2.plot(SCALES, diversity, "s--", color="tab:red", linewidth=2, label="diversity (right)")
ax2.set_ylabel("mean pairwise RMS distance, same digit")
ax1.legend(handles=ax1.get_lines() + ax2.get_lines(), loc="center right")
ax1.grid(True, alpha=0.3)
ax1.set_title(f"Guidance: fidelity up, diversity down ({len(digits) * NOISES} samples per w)")
fig.tight_layout()
fig.savefig(out / "diversity_accuracy.png")
plt.close(fig)
saved(out / "diversity_accuracy.png")

# %% Exercises
# ---------------------------------------------------------------------------------------------------
try_this(__doc__)
finish(started)
