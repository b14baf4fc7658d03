"""Lesson 16: classifier guidance, steering a diffusion model with the gradient of a separate classifier.

What you will learn
  - the rule eps_hat = eps_theta(x_t, t, y) - s sqrt(1 - abar_t) grad_x log p_phi(y | x_t, t) (Dhariwal & Nichol
    2021), derived from "the noise prediction is a scaled score" and Bayes' rule, and checked against
    tinyddpm.diffusion.guidance.ClassifierGuidedModel;
  - on a 1-D Gaussian mixture whose noisy class posterior p_t(y | x) and its gradient are known in closed form:
    the guided score is the score of p_t(x) p_t(y | x)^s; at s = 1 sampling with it draws exactly p(x | y); at
    s > 1 it draws a sharper distribution, but not the tilted p(x) p(y | x)^s (here it overshoots it, measured);
  - why the classifier must read NOISY images and know t (tinyddpm.classifiers.guide): its accuracy against t,
    and its input gradient, which is one backward pass of its hand-written layers (no autodiff), checked by
    finite differences;
  - on MNIST, from the same starting noise: the unconditional network steered by the classifier, beside
    classifier-free guidance (lesson 15), and the share of digits each gets right.

The math
  A network trained to predict the noise estimates a scaled score (the denoising identity):
      eps*(x_t, t) = E[eps | x_t] = -b_t grad_x log p_t(x_t),        a_t = sqrt(abar_t), b_t = sqrt(1 - abar_t)
  Bayes' rule, p_t(x | y) = p_t(x) p_t(y | x) / p(y), turns into a sum of scores (p(y) does not depend on x):
      grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x)
  Classifier guidance scales the classifier's term by s:
      score_s = grad log p_t(x) + s grad log p_t(y | x) = grad log [p_t(x) p_t(y | x)^s]
      eps_hat = -b_t score_s = eps(x_t, t) - s b_t grad_x log p_t(y | x_t)
  p_t(y | x) is the class posterior of the NOISED data: a classifier trained on x_t = a x0 + b eps at random t
  (and told t) estimates it. At s = 1 the guided score is the score of p_t(x | y) at every t, so a sampler
  draws exactly p(x0 | y). For s != 1, p_t(x) p_t(y | x)^s is not the noised version of p(x) p(y | x)^s (noising
  and raising to a power do not commute), so the samples are only near that tilted density.

  Toy: p(x0) = sum_y pi_y N(m_y, sd^2). Noising keeps each component Gaussian: p_t(x | y) = N(a m_y, v),
  v = a^2 sd^2 + b^2, so p_t(y | x) = softmax_y(log pi_y - (x - a m_y)^2 / 2v) and
      grad_x log p_t(y | x) = (a / v) (m_y - sum_k p_t(k | x) m_k)

Run it
  python lessons/16_classifier_guidance.py          # about a minute on 2 CPU cores (59 s on a shared 2-core
                                                    # machine); the first run on a fresh machine also trains the
                                                    # network, the noisy classifier and the judge (~3 min of CPU)
  python lessons/16_classifier_guidance.py --fast   # tiny sizes, the same code paths (what the tests run)

Figures (in lessons/output/16_classifier_guidance/)
  toy_guidance.png       1-D toy: p(x | y=1), the tilted p(x) p(y=1 | x)^s and histograms of guided samples
  accuracy_vs_t.png      the noise-conditional classifier's accuracy on noised test digits against t
  input_gradients.png    a noisy digit and grad_x log p(y | x_t, t) towards each class y
  side_by_side.png       MNIST from the same noise: unconditional, classifier guidance, classifier-free guidance

Try this
  1. run:    set TOY_SCALES = (1.0, 3.0, 10.0) and rerun. Predict the std of the s = 10 samples and how much of
             their mass stays on the wrong side (x < 0) before you look at toy_guidance.png.
  2. modify: guide with the CLEAN evaluation classifier instead (tinyddpm.classifiers.judge: it never saw noise and
             ignores t). Write its grad(x_t, t, labels) from classifier_forward / classifier_backward and
             class_log_prob_backward, put it in the "classifier" panel and compare accuracy. Where does it fail?
  3. create: a three-class toy, m = (-3, 0, 3), guided towards the MIDDLE class. Write p_t(y | x) and its
             gradient for it, check s = 1 draws N(0, sd^2), and find what s > 1 does to a middle class that is
             squeezed from both sides.

Next: lessons/17_interpolation.py - interpolating noise: why slerp and not lerp.
"""
# %%
import time

from _common import (FAST, banner, check, finish, judge, keyed_cache, mnist, mnist_digits, output_dir,
                     output_root, relative_error, saved, section, try_this, trained_model)

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tinyddpm.classifiers.judge import classify  # noqa: E402
from tinyddpm.diffusion import GuidedModel, dpm_solver_sample, make_schedule, q_sample  # noqa: E402
from tinyddpm.diffusion.guidance import ClassifierGuidedModel  # noqa: E402
from tinyddpm.gradcheck import BLOCK_STEP, check_gradients  # noqa: E402
from tinyddpm.classifiers.guide import (cache_name, default_cache_dir, gradient_fn, input_gradient,
    load_noisy_classifier, load_or_train_noisy_classifier, log_prob_backward, log_prob_forward, noisy_accuracy,
    train_noisy_classifier)
from tinyddpm.sampling import unet_model  # noqa: E402
from tinyddpm.viz import tile_images  # noqa: E402

# %%
started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 16: classifier guidance")
rng = np.random.default_rng(0)
toy_schedule = make_schedule("linear", 1000)

# %% 1. The rule
# ---------------------------------------------------------------------------------------------------
section("1. The rule")
# eps_hat = eps - s b_t g with b_t = sqrt(1 - abar_t) per sample and g = grad_x log p(y | x_t, t). Check the
# library's wrapper against this line on random arrays: any 'model' and any 'gradient' will do here.
x_t = rng.standard_normal((4, 1, 5, 5))
t = np.array([999, 600, 200, 3])
y = np.array([1, 4, 4, 9])
eps_model = lambda x, t_, y_: np.tanh(x) + 0.01 * y_.reshape(-1, 1, 1, 1)       # noqa: E731  any model(x_t, t, y)
grad_fake = lambda x, t_, y_: np.cos(3 * x) * (1 + y_.reshape(-1, 1, 1, 1))     # noqa: E731  any gradient
s = 2.5
b = np.sqrt(1 - toy_schedule.alpha_bar[t]).reshape(-1, 1, 1, 1)                   # (N, 1, 1, 1)
mine = eps_model(x_t, t, y) - s * b * grad_fake(x_t, t, y)
theirs = ClassifierGuidedModel(eps_model, grad_fake, toy_schedule, s)(x_t, t, y)
err = relative_error(mine, theirs)
check("my eps - s b_t g == ClassifierGuidedModel", err < 1e-14, f"max relative error {err:.1e}")

# %% 2. An exact 1-D toy: a Gaussian mixture
# ---------------------------------------------------------------------------------------------------
section("2. An exact 1-D toy: a Gaussian mixture")
PI, M, SD = np.array([0.5, 0.5]), np.array([-1.5, 1.5]), 1.0     # two classes; we ask for y = 1
TOY_SCALES = (1.0, 3.0)
N_TOY = 20_000 if FAST else 200_000
TOY_STEPS = 20 if FAST else 50


def toy_terms(x, t):
    """a, v, p_t(k | x) (N, K) and d/dx of log p_t(x | k) (N, K) at x (N, 1, 1, 1) and integer t (N,)."""
    a = np.sqrt(toy_schedule.alpha_bar[t]).reshape(-1, 1)                          # (N, 1)
    v = a * a * SD * SD + (1 - a * a)                                          # (N, 1)
    xs = x.reshape(-1, 1)                                                      # (N, 1)
    log_joint = np.log(PI) - (xs - a * M) ** 2 / (2 * v)                       # (N, K), up to a constant
    post = np.exp(log_joint - log_joint.max(axis=1, keepdims=True))
    post /= post.sum(axis=1, keepdims=True)                                    # (N, K) p_t(k | x)
    return a, v, post, -(xs - a * M) / v


def eps_uncond(x, t, labels):
    """The optimal noise prediction of the mixture: -b * sum_k p_t(k | x) d/dx log p_t(x | k)."""
    a, _, post, cond_scores = toy_terms(x, t)
    return (-np.sqrt(1 - a * a) * (post * cond_scores).sum(axis=1, keepdims=True)).reshape(x.shape)


def eps_cond(x, t, labels):
    """The optimal noise prediction of p(x | y): -b d/dx log p_t(x | y)."""
    a, _, _, cond_scores = toy_terms(x, t)
    return (-np.sqrt(1 - a * a)[:, 0] * cond_scores[np.arange(len(labels)), labels]).reshape(x.shape)


def toy_grad(x, t, labels):
    """The exact noisy classifier's gradient: d/dx log p_t(y | x) = (a / v) (m_y - sum_k p_t(k | x) m_k)."""
    a, v, post, _ = toy_terms(x, t)
    return (a[:, 0] / v[:, 0] * (M[labels] - post @ M)).reshape(x.shape)


def log_post(x, t, y):
    a, _, post, _ = toy_terms(x, t)
    return np.log(post[np.arange(len(x)), y])


# The gradient formula against central differences of log p_t(y | x), on a grid of x and t
xg = np.linspace(-4, 4, 41).reshape(-1, 1, 1, 1).repeat(3, axis=0)             # (123, 1, 1, 1)
tg = np.repeat([50, 400, 900], 41)                                              # (123,)
yg = np.ones(123, dtype=np.int64)
h = 1e-5
numeric = (log_post(xg + h, tg, yg) - log_post(xg - h, tg, yg)) / (2 * h)
err = relative_error(toy_grad(xg, tg, yg).reshape(-1), numeric)
check("d/dx log p_t(y | x) in closed form == central differences", err < 1e-8, f"max relative error {err:.1e}")
# At s = 1 the guided prediction IS the conditional one, at every x and t: Bayes' rule for scores.
guided1 = ClassifierGuidedModel(eps_uncond, toy_grad, toy_schedule, 1.0)(xg, tg, yg)
err = relative_error(guided1, eps_cond(xg, tg, yg))
check("at s = 1: eps_uncond - b_t grad log p_t(y | x) == eps_cond (exactly, by Bayes)", err < 1e-12,
      f"max relative error {err:.1e}")

# Sample with DPM-Solver++ (deterministic, so the only randomness is x_T) at each scale; the reference densities
# are computed on a fine grid.
grid = np.linspace(-6, 8, 2801)
dgrid = grid[1] - grid[0]
lik = np.exp(-0.5 * ((grid[:, None] - M) / SD) ** 2) / (SD * np.sqrt(2 * np.pi))   # (G, K) p(x | k)
p_x = lik @ PI                                                                       # (G,) p(x)
post_clean = lik * PI / p_x[:, None]                                                 # (G, K) p(k | x)


def normalised(d):
    return d / (d.sum() * dgrid)


def tv_distance(samples, density, edges):
    """Total variation between a histogram of samples and a density (on the grid) over the same bins."""
    hist, _ = np.histogram(samples, bins=edges)
    cdf = np.concatenate([[0.0], np.cumsum(density) * dgrid])                       # (G + 1,)
    mass = np.diff(np.interp(edges, np.concatenate([[grid[0] - dgrid], grid]), cdf))  # per bin
    return 0.5 * float(np.abs(hist / len(samples) - mass).sum())


def moments(density):
    mean = (grid * density).sum() * dgrid
    return mean, np.sqrt(((grid - mean) ** 2 * density).sum() * dgrid)


x_T = np.random.default_rng(1).standard_normal((N_TOY, 1, 1, 1))
want = np.ones(N_TOY, dtype=np.int64)
edges = np.linspace(-4, 6, 51)
cond = normalised(lik[:, 1])                                                         # p(x | y = 1)
toy = {}
for s in TOY_SCALES:
    guided = ClassifierGuidedModel(eps_uncond, toy_grad, toy_schedule, s)
    toy[s] = dpm_solver_sample(guided, toy_schedule, x_T=x_T, labels=want, num_steps=TOY_STEPS, progress=False).ravel()
    tilted = normalised(p_x * post_clean[:, 1] ** s)                                 # p(x) p(y=1 | x)^s
    m_t, s_t = moments(tilted)
    print(f"  s = {s:g}: samples mean {toy[s].mean():+.3f} std {toy[s].std():.3f}   tilted p(x)p(y|x)^s mean "
          f"{m_t:+.3f} std {s_t:.3f}   TV to tilted {tv_distance(toy[s], tilted, edges):.3f}, to p(x|y) "
          f"{tv_distance(toy[s], cond, edges):.3f}")
se_mean, se_std = SD / np.sqrt(N_TOY), SD / np.sqrt(2 * N_TOY)
SOLVER_BIAS = 0.03   # DPM-Solver++'s own error on this toy: the s = 1 mean comes out 0.012 low at 50 steps, 0.021 at 20
m1, s1 = toy[1.0].mean(), toy[1.0].std()
check("s = 1 samples p(x | y) = N(1.5, 1): mean and std within 5 standard errors + the solver's bias",
      abs(m1 - M[1]) < 5 * se_mean + SOLVER_BIAS and abs(s1 - SD) < 5 * se_std + SOLVER_BIAS,
      f"mean {m1:.4f}, std {s1:.4f} (5 SE: {5 * se_mean:.4f}, {5 * se_std:.4f})")
# A histogram of n samples misses its density by about 0.5 sum_i sqrt(2 p_i / (pi n)) in total variation
# (the mean absolute deviation of each bin's count): allow twice that, plus the solver's share.
bin_mass = np.histogram(grid, bins=edges, weights=cond * dgrid)[0]
tv_noise = 0.5 * float(np.sqrt(2 * bin_mass * (1 - bin_mass) / (np.pi * N_TOY)).sum())
tv1 = tv_distance(toy[1.0], cond, edges)
check("s = 1: the histogram matches p(x | y) (total variation within twice its sampling noise + 0.005)",
      tv1 < 2 * tv_noise + 0.005, f"TV {tv1:.4f}, sampling noise ~{tv_noise:.4f}")
# s > 1: sharper than p(x | y), with less mass on the other class's side ...
s_hi = TOY_SCALES[-1]
wrong = float(np.mean(toy[s_hi] < 0))
wrong_cond = float(cond[grid < 0].sum() * dgrid)                                 # p(x < 0 | y = 1) = 6.7%
check(f"s = {s_hi:g} is sharper: smaller std than p(x | y) and under half its mass on the wrong side (x < 0)",
      toy[s_hi].std() < 0.9 * SD and wrong < 0.5 * wrong_cond,
      f"std {toy[s_hi].std():.3f} vs {SD:.3f}; P(x < 0) {wrong:.2%} vs {wrong_cond:.2%}")
# ... but not the tilted density p(x) p(y|x)^s: here it overshoots it, the mean lands well beyond. The gap is not
# the solver's: twice the steps hardly move the samples.
tilted_hi = normalised(p_x * post_clean[:, 1] ** s_hi)
finer = dpm_solver_sample(ClassifierGuidedModel(eps_uncond, toy_grad, toy_schedule, s_hi), toy_schedule, x_T=x_T,
                          labels=want, num_steps=2 * TOY_STEPS, progress=False).ravel()
moved = float(np.abs(finer - toy[s_hi]).mean())
gap = toy[s_hi].mean() - moments(tilted_hi)[0]
check(f"s = {s_hi:g} does not sample p(x) p(y|x)^s: its mean lands beyond the tilted mean by far more than the "
      f"solver moves it ({TOY_STEPS} vs {2 * TOY_STEPS} steps)", gap > 0.2 and gap > 10 * moved,
      f"gap {gap:+.3f}, solver {moved:.4f}")

fig, ax = plt.subplots(figsize=(8, 4))
ax.plot(grid, cond, "k--", linewidth=2, label="p(x | y=1)")
colors = ("tab:blue", "tab:red", "tab:green", "tab:purple")
for s, color in zip(TOY_SCALES, colors):
    ax.hist(toy[s], bins=edges, density=True, alpha=0.35, color=color, label=f"guided samples, s = {s:g}")
    if s != 1.0:
        ax.plot(grid, normalised(p_x * post_clean[:, 1] ** s), color=color, linewidth=2,
                label=f"p(x) p(y=1 | x)^{s:g}")
ax.set(xlabel="x", ylabel="density", xlim=(-4, 6),
       title="Exact guidance on a two-class mixture (means -1.5, +1.5; y = 1 asked for)")
ax.legend(fontsize=8)
ax.grid(True, alpha=0.3)
fig.tight_layout()
fig.savefig(out / "toy_guidance.png")
plt.close(fig)
saved(out / "toy_guidance.png")

# %% 3. A classifier that reads noisy digits
# ---------------------------------------------------------------------------------------------------
section("3. A classifier that reads noisy digits")
# On MNIST nobody hands us p_t(y | x): tinyddpm.classifiers.guide learns it. It is the evaluation classifier's small
# CNN with the timestep embedding added to each conv stage, trained with cross-entropy on x_t = q_sample(x0, t, eps)
# at t ~ U{0..T-1}. Its gradient with respect to its INPUT is one backward pass through the same hand-written layers
# that train it: log_prob_backward(1, cache) returns d/dx of sum_n log p(y_n | x_n, t_n), and since row n of the
# batch depends on x_n alone, row n of that is grad_x log p(y_n | x_n, t_n).
params, config, schedule, where = trained_model()
print(f"  network: {where}")
NOISY_STEPS = 400   # the lessons' own noisy classifier (when tinyddpm's is not cached): 400 steps of 128 digits


def noisy_guide(schedule):
    """(params, a sentence naming it): tinyddpm's cached noise-conditional classifier for this schedule when
    examples/evaluate.py or sample.py has trained it; else a lighter one trained here once (about half a minute)
    and cached in lessons/output/_noisy_classifier/; fast mode trains a stand-in for 4 steps."""
    from tinyddpm.data import ImageData

    cached = default_cache_dir() / cache_name(schedule)
    if cached.is_file() and not FAST:
        guide, info = load_noisy_classifier(cached, schedule)
        return guide, f"tinyddpm's noise-conditional classifier ({info['epochs']:g} epochs, {cached})"
    if FAST:
        images, labels = mnist_digits(512, seed=2)
        guide, _ = train_noisy_classifier(images, labels, schedule, epochs=1, verbose=False)
        return guide, "a stand-in trained on 512 digits for 4 steps (fast mode)"
    train, test = mnist("train"), mnist("test")
    folder = output_root() / "_noisy_classifier"
    recipe = {"steps": NOISY_STEPS, "batch_size": 128, "schedule": cache_name(schedule)}   # keyed_cache: with the data

    def train_it():
        print(f"  training the lessons' noisy classifier ({NOISY_STEPS} steps; cached in {folder})")
        return load_or_train_noisy_classifier(schedule, folder, verbose=False, retrain=True,
                                              epochs=NOISY_STEPS * 128 / len(train), train_data=train,
                                              test_data=ImageData(test.images[:1000], test.labels[:1000], "test",
                                                                  test.source))
    guide, _ = keyed_cache(folder, train, recipe, train_it,
                           lambda: load_noisy_classifier(folder / cache_name(schedule), schedule))
    return guide, f"the lessons' noise-conditional classifier ({NOISY_STEPS} steps of 128 digits)"


guide, guide_name = noisy_guide(schedule)
print(f"  noisy classifier: {guide_name}")
judge_params, judge_name = judge()
print(f"  judge: {judge_name}")

# Its input gradient against finite differences, in float64, on real digits noised at t = 300
guide64 = {name: value.astype(np.float64) for name, value in guide.items()}
digits_x, digits_y = mnist_digits(2, split="test", seed=5)
t2 = np.array([300, 300])
x2 = q_sample(schedule, digits_x.astype(np.float64), t2, rng.standard_normal(digits_x.shape))
errors = check_gradients(lambda x: log_prob_forward(guide64, x, t2, digits_y),
                         lambda d, cache: log_prob_backward(d, cache)[0], {"x": x2}, h=BLOCK_STEP, max_entries=8)
check("grad_x log p(y | x_t, t) of the trained classifier == finite differences (8 pixels, float64)",
      errors["x"] < 1e-5, f"max relative error {errors['x']:.1e}")

# Accuracy against t, beside the clean evaluation classifier reading the same noisy digits
T_LIST = (0, 100, 200, 300, 400, 500, 600, 750, 999)
test_x, test_y = mnist_digits(100 if FAST else 500, split="test", seed=3)
acc_noisy = [noisy_accuracy(guide, schedule, test_x, test_y, t_, seed=7) for t_ in T_LIST]
noise = np.random.default_rng(7)
acc_clean = []
for t_ in T_LIST:
    x_noisy = q_sample(schedule, test_x, t_, noise.standard_normal(test_x.shape).astype(test_x.dtype))
    acc_clean.append(float(np.mean(classify(judge_params, x_noisy) == test_y)))
for t_, a_n, a_c in zip(T_LIST, acc_noisy, acc_clean):
    print(f"    t = {t_:3d} (signal a = {np.sqrt(schedule.alpha_bar[t_]):.3f}): noisy classifier {a_n:6.1%}   "
          f"clean classifier {a_c:6.1%}")
if FAST:
    print("  (fast mode: the classifiers are stand-ins, so their accuracies are not checked)")
else:
    i500 = T_LIST.index(500)
    check("the noisy classifier reads clean digits (t = 0) and is down to about chance at t = 999",
          acc_noisy[0] > 0.9 and acc_noisy[-1] < 0.25, f"{acc_noisy[0]:.1%} -> {acc_noisy[-1]:.1%}")
    check("at t = 500 it reads far more digits than the classifier trained on clean ones",
          acc_noisy[i500] > acc_clean[i500] + 0.1, f"{acc_noisy[i500]:.1%} vs {acc_clean[i500]:.1%}")
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(T_LIST, acc_noisy, "o-", linewidth=2, label="noise-conditional classifier p(y | x_t, t)")
ax.plot(T_LIST, acc_clean, "s--", linewidth=2, label="clean evaluation classifier p(y | x)")
ax.axhline(0.1, color="gray", linestyle=":", label="chance")
ax.set(xlabel="timestep t", ylabel="accuracy on noised test digits", ylim=(0, 1.02),
       title="Reading noisy digits: a classifier for guidance must be trained on x_t")
ax.legend()
ax.grid(True, alpha=0.3)
fig.tight_layout()
fig.savefig(out / "accuracy_vs_t.png")
plt.close(fig)
saved(out / "accuracy_vs_t.png")

# What the gradient looks like: one noisy digit, and the direction that makes it more of each class. Towards the
# class the classifier already reads with certainty the gradient is nearly zero: d log p_y / dz = onehot - p -> 0.
x_one = np.repeat(x2[:1].astype(np.float32), 10, axis=0)                       # (10, 1, 28, 28) the same x_t
grads, _ = input_gradient(guide, x_one, np.full(10, 300), np.arange(10))      # (10, 1, 28, 28)
fig, axes = plt.subplots(1, 11, figsize=(16, 2.2))
axes[0].imshow(x_one[0, 0], cmap="gray")
axes[0].set_title(f"x_t, t = 300\n(a {digits_y[0]})")
lim = float(np.abs(grads).max())
for k, ax in enumerate(axes[1:]):
    ax.imshow(grads[k, 0], cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_title(f"towards {k}")
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("grad_x log p(y | x_t, t): red = add ink, blue = remove it (one backward pass per batch)")
fig.tight_layout()
fig.savefig(out / "input_gradients.png")
plt.close(fig)
saved(out / "input_gradients.png")

# %% 4. MNIST: classifier guidance beside classifier-free guidance, from the same noise
# ---------------------------------------------------------------------------------------------------
section("4. MNIST: classifier guidance beside classifier-free guidance, from the same noise")
# Under the classifier sits the UNCONDITIONAL network (GuidedModel at w = 0 calls it with the null label), so every
# bit of "which digit" comes from the classifier's gradient. Classifier-free guidance (lesson 15) gets it from the
# network's own label instead. Every panel starts from the same x_T: a column is one noise asked to be each digit.
CG_SCALES = (4.0, 16.0)
CFG_SCALES = (1.0, 2.5)
digits = np.arange(4) if FAST else np.arange(10)
NOISES = 3 if FAST else 6
STEPS = 4 if FAST else 20
net = unet_model(params, config.unet)
null = config.unet.null_label
dtype = params["conv_in.w"].dtype
x_T = np.tile(np.random.default_rng(1).standard_normal((NOISES, 1, 28, 28)).astype(dtype), (len(digits), 1, 1, 1))
requested = np.repeat(digits, NOISES)                                           # d0 d0 d0 .. d1 d1 d1 ..
unconditional = GuidedModel(net, 0.0, null)
steer = gradient_fn(guide)
probe_t = np.full(len(requested), 500)
err = relative_error(ClassifierGuidedModel(unconditional, steer, schedule, 0.0, config.prediction)(x_T, probe_t,
                                                                                                   requested),
                     unconditional(x_T, probe_t, requested))
check("classifier scale 0 is the unconditional network, bit for bit", err == 0.0, f"max relative error {err:.1e}")
panels = {"unconditional\n(w = 0)": unconditional}
for s in CG_SCALES:
    panels[f"classifier guidance\ns = {s:g}"] = ClassifierGuidedModel(unconditional, steer, schedule, s,
                                                                      prediction=config.prediction)
for w in CFG_SCALES:
    panels[f"classifier-free\nw = {w:g}"] = GuidedModel(net, w, null)
samples, accuracy = {}, {}
for name, model in panels.items():
    start = time.perf_counter()
    samples[name] = dpm_solver_sample(model, schedule, x_T=x_T, labels=requested, num_steps=STEPS,
                                      prediction=config.prediction, clip="static", progress=False)
    accuracy[name] = float(np.mean(classify(judge_params, samples[name]) == requested))
    print(f"    {name.replace(chr(10), ' '):34s} accuracy {accuracy[name]:6.1%}   "
          f"{(time.perf_counter() - start) / len(requested):.3f} s/image")
names = list(panels)
if FAST:
    print("  (fast mode: the network and the classifier are barely trained, so accuracy is not checked)")
else:
    best_cg = names[len(CG_SCALES)]
    check("classifier guidance makes the requested digit more likely: accuracy at the largest s > unconditional "
          "+ 10 points", accuracy[best_cg] > accuracy[names[0]] + 0.1,
          f"{accuracy[names[0]]:.1%} -> {accuracy[best_cg]:.1%}")
    check("so does classifier-free guidance at the largest w", accuracy[names[-1]] > accuracy[names[0]] + 0.1,
          f"{accuracy[names[0]]:.1%} -> {accuracy[names[-1]]:.1%}")

fig, axes = plt.subplots(1, len(names), figsize=(2.2 * len(names) + 0.6, 2.2 * len(digits) / NOISES + 1.3))
for ax, name in zip(axes, names):
    grid_ = samples[name].reshape((len(digits), NOISES) + samples[name].shape[1:])   # (digits, NOISES, 1, 28, 28)
    ax.imshow(tile_images(grid_), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(f"{name}\naccuracy {accuracy[name]:.0%}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([(28 + 2) * i + 13.5 for i in range(len(digits))])
    ax.set_yticklabels([str(d) for d in digits] if ax is axes[0] else [])
axes[0].set_ylabel("requested digit")
fig.suptitle(f"The same {NOISES} noises in every row and panel; DPM-Solver++ {STEPS} steps")
fig.tight_layout()
fig.savefig(out / "side_by_side.png")
plt.close(fig)
saved(out / "side_by_side.png")

# %% Exercises
# ---------------------------------------------------------------------------------------------------
try_this(__doc__)
finish(started)
