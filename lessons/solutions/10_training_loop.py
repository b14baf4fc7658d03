"""Solutions to lesson 10 (the training loop): the three "Try this" exercises, worked and checked.

Try each exercise in lessons/10_training_loop.py yourself first; then run this file and compare.

Run it:   python lessons/solutions/10_training_loop.py          (--fast: the lesson's fast-mode network, fewer steps)

Three training runs of the lesson's section-3 network: BASE_STEPS and 2 x BASE_STEPS steps predicting eps, and
BASE_STEPS predicting x0. The lesson runs 250 steps; to stay within two minutes on two cores this file doubles
125 -> 250 (its 250-step run is exactly the lesson's). Set BASE_STEPS = 250 below for the exercise's own
250 -> 500 (about two minutes more); the checks hold for both.

Figures (in lessons/output/10_training_loop/, with a solution_ prefix):
  solution_double_steps.png   held-out loss per timestep after BASE_STEPS and 2 x BASE_STEPS steps, and the gain
  solution_ema_memory.png     how much each past step weighs in the EMA after BASE_STEPS steps, 0.99 vs 0.999
  solution_x0_vs_eps.png      the error in x0 space per timestep of the eps-predicting and the x0-predicting network
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the lessons folder, for _common

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import FAST, banner, check, finish, mnist, output_dir, saved, section  # noqa: E402
from tinyddpm import new_state, preset, train_step  # noqa: E402
from tinyddpm.data.pixels import to_model_range  # noqa: E402
from tinyddpm.diffusion import x0_from_eps  # noqa: E402
from tinyddpm.training.optim import EMA  # noqa: E402
from tinyddpm.nn.unet import UNetConfig, unet_forward  # noqa: E402

started = time.perf_counter()
out = output_dir(__file__)
banner("Solutions to lesson 10: the training loop")

BASE_STEPS = 10 if FAST else 125          # the lesson's RUN_STEPS is 40 (fast) / 250 (full)
N_TRAIN = 2_000 if FAST else 10_000       # as the lesson
N_EVAL = 8 if FAST else 32                # held-out digits per timestep bucket (as the lesson)

data = mnist("train")
n_train = min(N_TRAIN, len(data) - N_EVAL)
images, labels = data.images[:n_train], data.labels[:n_train]
held_out, held_out_labels = to_model_range(data.images[-N_EVAL:]), data.labels[-N_EVAL:]


def run_config(steps, **overrides):
    """The lesson's section-3 config (its fast-mode one with --fast) for a run of `steps` steps."""
    if FAST:                                  # the lesson's fast-mode network without its attention: half the time
        unet = UNetConfig(base_channels=8, channel_mults=(1, 2), blocks_per_level=1, attention_resolutions=(),
                          heads=1, groups=4, dropout=0.0)
        ema = 0.9
    else:
        unet = UNetConfig(base_channels=16, channel_mults=(1, 2), blocks_per_level=1, attention_resolutions=(),
                          heads=1, groups=8, dropout=0.0)
        ema = 0.99
    kw = dict(unet=unet, steps=steps, batch_size=16, lr=2e-3, warmup_steps=steps // 10, ema_decay=ema, log_every=10,
              checkpoint_every=0, sample_every=0, prediction="eps")   # the lesson's noise prediction, as in Ho et al.
    return preset("cpu", **{**kw, **overrides})


def train(config, extra_ema=None):
    """Train a fresh state for config.steps steps; `extra_ema` (a decay) keeps a second, library EMA alongside."""
    state = new_state(config, images, labels)
    second = EMA(state.params, decay=extra_ema, warmup=config.ema_warmup) if extra_ema else None
    tic = time.perf_counter()
    for _ in range(config.steps):
        train_step(state)
        if second is not None:
            second.update(state.params)
    state.flush_losses()
    print(f"  trained {config.steps} steps (prediction {config.prediction!r}) in {time.perf_counter() - tic:.1f} s")
    return state, second


schedule_T = 1000
buckets = np.linspace(25, schedule_T - 25, 10).astype(int)        # the lesson's ten noise levels
noise_eval = np.random.default_rng(0).standard_normal((len(buckets),) + held_out.shape).astype(np.float32)


def per_timestep(state, weights, config):
    """(MSE of the network's own target, MSE in x0 space) at each bucket, same held-out digits and noise for all."""
    schedule = state.schedule
    target_err, x0_err = [], []
    for i, tb in enumerate(buckets):
        ab = schedule.alpha_bar[tb]
        x_t = (np.sqrt(ab) * held_out + np.sqrt(1 - ab) * noise_eval[i]).astype(np.float32)
        tt = np.full(len(x_t), tb)
        pred, _ = unet_forward(weights, config.unet, x_t, tt, held_out_labels)
        if config.prediction == "eps":
            target_err.append(float(np.mean((pred - noise_eval[i]) ** 2)))
            x0_hat = x0_from_eps(schedule, x_t, tt, pred)
        else:
            x0_hat = pred
            target_err.append(float(np.mean((pred - held_out) ** 2)))
        x0_err.append(float(np.mean((x0_hat - held_out) ** 2)))
    return np.array(target_err), np.array(x0_err)


# ---------------------------------------------------------------------------------------------------
section(f"Exercise 1 (run): twice the steps, {BASE_STEPS} -> {2 * BASE_STEPS}")
# What to expect: a run of twice the steps is not the short run continued - its learning rate decays on a cosine
# over the longer run, so at step BASE_STEPS it is still learning fast - but it ends lower: more data seen, more
# updates. The training loss of single batches is noisy (16 digits, random t: the last 10% of a run is 12-25
# batches), so we measure the gain also on the lesson's held-out evaluation, where both networks see the same
# digits and the same noise at the same ten timesteps: there only the network differs.
cfg1, cfg2 = run_config(BASE_STEPS), run_config(2 * BASE_STEPS)
state1, ema_999 = train(cfg1, extra_ema=0.999)                   # exercise 2 rides along on this run
state2, _ = train(cfg2)
tail = {}
for steps, state in ((BASE_STEPS, state1), (2 * BASE_STEPS, state2)):
    losses = np.array(state.losses)
    n10 = max(1, steps // 10)
    tail[steps] = (losses[:n10].mean(), losses[-n10:].mean())
    print(f"  {steps:4d} steps: mean training loss of the first 10% {tail[steps][0]:.4f}, of the last 10% {tail[steps][1]:.4f}")
eval1, x0_err_eps = per_timestep(state1, state1.ema.params, cfg1)     # the x0 errors serve exercise 3
eval2, _ = per_timestep(state2, state2.ema.params, cfg2)
gain = eval1 - eval2
print("  t:                    " + " ".join(f"{tb:6d}" for tb in buckets))
print(f"  held-out, {BASE_STEPS:4d} steps  " + " ".join(f"{v:6.3f}" for v in eval1))
print(f"  held-out, {2 * BASE_STEPS:4d} steps  " + " ".join(f"{v:6.3f}" for v in eval2))
print("  gain                  " + " ".join(f"{v:6.3f}" for v in gain))
ratio_train = tail[2 * BASE_STEPS][1] / tail[BASE_STEPS][1]
ratio_eval = eval2.mean() / eval1.mean()
print(f"  last 10% of training: {ratio_train:.2f} times the shorter run's; held-out mean over t: {ratio_eval:.2f} times")
check("twice the steps gives a lower held-out loss (EMA weights, mean over the ten timesteps)", ratio_eval < 0.97,
      f"{eval1.mean():.4f} -> {eval2.mean():.4f} ({1 - ratio_eval:.0%} lower)")
# Which timesteps gained most depends on how you look, and on how far training is:
#   - relative to where they were, the large t gain most (their eps loss is small and keeps halving: predicting eps
#     from an x_t that is almost all eps is easy, and extra steps polish it);
#   - in absolute loss, as loss_per_timestep.png's linear axis shows it, after a few hundred steps the small t gain
#     most: they hold most of the remaining loss (an x_t that is almost all image hides its faint noise). Very early
#     (fast mode's 10 -> 20 steps) every t is still far from trained and gains about equally.
rel = gain / eval1
small_share = gain[:3].sum() / gain.sum()
print(f"  relative gain: {rel[0]:.0%} at t = {buckets[0]}, {rel[-1]:.0%} at t = {buckets[-1]}; the three smallest t "
      f"hold {small_share:.0%} of the absolute gain (largest at t = {buckets[int(np.argmax(gain))]})")
check("relative to their loss, the largest timesteps gain more than the smallest", rel[-1] > rel[0],
      f"{rel[-1]:.0%} at t = {buckets[-1]} vs {rel[0]:.0%} at t = {buckets[0]}")
if not FAST:
    check("in absolute loss the three smallest timesteps (t < 300) hold over half of the gain", small_share > 0.5,
          f"{small_share:.0%}")
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
ax1.plot(buckets, eval1, "o--", label=f"{BASE_STEPS} steps")
ax1.plot(buckets, eval2, "s-", label=f"{2 * BASE_STEPS} steps")
ax1.set(xlabel="timestep t", ylabel="held-out MSE(eps_hat, eps)", title="Held-out loss per timestep (EMA weights)")
ax2.bar(buckets, gain, width=60)
ax2.set(xlabel="timestep t", ylabel="loss gained by doubling the steps", title="Where the extra steps helped")
for ax in (ax1, ax2):
    ax.grid(True, alpha=0.3)
ax1.legend()
path = out / "solution_double_steps.png"
fig.savefig(path, dpi=100)
plt.close(fig)
saved(path)

# ---------------------------------------------------------------------------------------------------
section(f"Exercise 2 (modify): ema_decay = 0.999 instead of {cfg1.ema_decay}")
# Prediction: nothing changes - not the orange curve, not a single EMA weight. tinyddpm's EMA warms up: at the
# n-th update the decay is min(ema_decay, (1 + n) / (10 + n)), and (1 + n) / (10 + n) only reaches 0.99 at
# n = 890 (0.9 at n = 80). Within a run of a few hundred steps the cap is never reached, so 0.99 and 0.999 (and
# 0.9 in fast mode) give the same decays, hence the same EMA, bit for bit; the per-timestep comparison of EMA and
# raw weights is the lesson's, unchanged. A plain 0.999 average remembers ~1 / (1 - 0.999) = 1000 steps (the
# weight of the update k steps back is 0.001 * 0.999^k, mean age 999 steps): longer than the whole run. The
# warm-up average instead remembers a share of the run so far: the weight of step k at step n is about
# 9 k^8 / n^9, a mean age of about n / 10 - after 250 steps it averages roughly the last 25.
n_cross = {d: next(n for n in range(100_000) if (1 + n) / (10 + n) >= d) for d in (0.9, 0.99, 0.999)}
print(f"  (1 + n) / (10 + n) reaches 0.9 at n = {n_cross[0.9]}, 0.99 at n = {n_cross[0.99]}, 0.999 at n = {n_cross[0.999]}")
same = all(np.array_equal(ema_999.params[k], state1.ema.params[k]) for k in state1.params)
check(f"prediction: after {BASE_STEPS} steps the EMA with decay 0.999 equals the run's EMA ({cfg1.ema_decay}) bit for bit",
      same and BASE_STEPS < n_cross[cfg1.ema_decay], f"{len(state1.params)} tensors compared; the caps bind from n = "
      f"{n_cross[cfg1.ema_decay]} ({cfg1.ema_decay}) and {n_cross[0.999]} (0.999)")
raw_eval, _ = per_timestep(state1, state1.params, cfg1)
print(f"  held-out mean over t: raw weights {raw_eval.mean():.4f}, EMA weights {eval1.mean():.4f} (either decay)")


def ema_weights(n, decay, warmup=True):
    """The weight of the initial weights (index 0) and of the raw weights after each step 1..n in the EMA after n updates."""
    w = np.zeros(n + 1)
    w[0] = 1.0
    for m in range(n):                                        # update m (0-based) mixes in the raw weights of step m + 1
        d = min(decay, (1 + m) / (10 + m)) if warmup else decay
        w *= d
        w[m + 1] = 1 - d
    return w


n = 2 * BASE_STEPS
w_warm, w_plain = ema_weights(n, 0.999), ema_weights(n, 0.999, warmup=False)
age_warm = float(np.sum(w_warm * (n - np.arange(n + 1))))
check(f"the warm-up EMA after {n} steps has a mean age of about n / 10 (within 20%)", abs(age_warm / (n / 10) - 1) < 0.2,
      f"{age_warm:.1f} steps; without warm-up, 0.999 would still weigh the random init by {w_plain[0]:.2f}")
fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
ax.plot(np.arange(n + 1), w_warm, label=f"with warm-up (0.99 or 0.999: identical up to n = {n_cross[0.99]})")
ax.plot(np.arange(n + 1), w_plain, label="plain 0.999 (no warm-up): 0.1% per step, the init keeps the rest")
ax.set(yscale="log", ylim=(1e-6, 1), xlabel="step whose raw weights are averaged", ylabel="weight in the EMA",
       title=f"What the EMA weights after {n} steps are made of")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
path = out / "solution_ema_memory.png"
fig.savefig(path, dpi=100)
plt.close(fig)
saved(path)

# ---------------------------------------------------------------------------------------------------
section('Exercise 3 (create): prediction="x0"')
# The x0 network is trained on L = mean (x0_hat - x0)^2 (tinyddpm.diffusion.training_target gives x0 as the target;
# the samplers convert any prediction to x0 and eps). Compared in x0 space, the errors are
#     eps network: x0_hat - x0 = -sqrt((1 - abar) / abar) (eps_hat - eps), an eps error magnified at large t
#                  (the factor is ~157 at t = 999 for the linear schedule: lesson 02);
#     x0 network:  its own error, never magnified; at large t the best it can do is the mean digit.
# Prediction: the x0 network is far better in x0 space at large t; at small t, where x_t is nearly x0, the eps
# network's error is shrunk by sqrt((1 - abar) / abar) << 1 and it wins. (The eps loss weighs the timesteps
# differently in x0 terms, SNR_t times the x0 loss: Min-SNR's gamma caps exactly that.)
cfg_x0 = run_config(BASE_STEPS, prediction="x0")
state_x0, _ = train(cfg_x0)
_, x0_err_x0 = per_timestep(state_x0, state_x0.ema.params, cfg_x0)
print("  t:                  " + " ".join(f"{tb:7d}" for tb in buckets))
print("  MSE(x0), eps net    " + " ".join(f"{v:7.3f}" for v in x0_err_eps))
print("  MSE(x0), x0 net     " + " ".join(f"{v:7.3f}" for v in x0_err_x0))
check("prediction: at the largest timestep the x0 network's x0 error is several times smaller",
      x0_err_x0[-1] < 0.5 * x0_err_eps[-1], f"t = {buckets[-1]}: {x0_err_x0[-1]:.3f} vs {x0_err_eps[-1]:.3f}")
check("prediction: at the smallest timestep the eps network's x0 error is smaller",
      x0_err_eps[0] < x0_err_x0[0], f"t = {buckets[0]}: {x0_err_eps[0]:.4f} vs {x0_err_x0[0]:.4f}")
cross = buckets[int(np.argmax(x0_err_x0 < x0_err_eps))]
print(f"  the x0 network is better from t = {cross} on (of the ten timesteps measured)")
fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
ax.plot(buckets, x0_err_eps, "o-", label="eps-predicting network (x0 via x0_from_eps)")
ax.plot(buckets, x0_err_x0, "s-", label="x0-predicting network")
ax.set(yscale="log", xlabel="timestep t", ylabel="held-out MSE(x0_hat, x0) (log)",
       title=f"Error in x0 space after {BASE_STEPS} steps each")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
path = out / "solution_x0_vs_eps.png"
fig.savefig(path, dpi=100)
plt.close(fig)
saved(path)

finish(started)
