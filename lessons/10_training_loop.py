"""Lesson 10: the training loop.

What you will learn
  - The DDPM objective L = E || eps - eps_theta( sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t ) ||^2, and
    its gradient with respect to the network's output.
  - One training step written in the open: draw t and eps, noise the batch, run the U-Net, take the loss
    and its gradient, backpropagate, clip, AdamW, EMA; and that it is exactly tinyddpm.training.train_step.
  - That the gradient reaching the weights is right, by finite differences of the loss itself.
  - What a short run on real MNIST looks like: the loss falls, the EMA weights lag and smooth the raw
    ones, small t are the hard ones for the noise prediction, and the x0 the network sees through the noise.

Run it:
    python lessons/10_training_loop.py          # about a minute on one CPU core, most of it the 250-step run
    python lessons/10_training_loop.py --fast   # tiny sizes, the same code paths (what the tests run)

Figures, written to lessons/output/10_training_loop/:
    loss_curve.png        the loss of every step and its running mean; one weight, raw and EMA
    loss_per_timestep.png the trained network's loss at each noise level t (raw and EMA weights)
    x0_predictions.png    held-out digits noised to several t, and the x0 the network recovers

Try this
  1. run:    set RUN_STEPS to twice its value and rerun. How much lower is the last 10%'s loss, and which
             timesteps gained most in loss_per_timestep.png?
  2. modify: in section 3's config, change ema_decay=0.99 to ema_decay=0.999. Predict the orange curve in
             loss_curve.png and whether the EMA weights still beat the raw ones per timestep (how many steps
             does a 0.999 average remember? Mind the EMA warm-up: the decay is min(d, (1 + n) / (10 + n))).
  3. create: train with prediction="x0" in the config (the network outputs x0 itself; see
             tinyddpm.diffusion.training_target) and compare its per-timestep error in x0 space with this
             lesson's noise-predicting network.

Next: lessons/11_data_parallel.py - data-parallel training: the batch's gradient as a sum over shares, the ring Allreduce.
"""
# %%
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import FAST, banner, check, finish, mnist, output_dir, relative_error, saved, section, try_this  # noqa: E402
from tinyddpm.data.pixels import to_model_range  # noqa: E402
from tinyddpm.diffusion import diffusion_loss, x0_from_eps  # noqa: E402
from tinyddpm.gradcheck import BLOCK_STEP, BLOCK_TOLERANCE, OP_TOLERANCE, check_gradients  # noqa: E402
from tinyddpm.ops import mse_loss_backward, mse_loss_forward  # noqa: E402
from tinyddpm import new_state, preset, train_step  # noqa: E402
from tinyddpm.nn.unet import UNetConfig, unet_backward, unet_forward  # noqa: E402
from tinyddpm.viz import plot_sample_grid, smooth_curve  # noqa: E402

# %%
started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 10: the training loop")

RUN_STEPS = 40 if FAST else 250          # optimizer steps of the short run in section 3
N_TRAIN = 2_000 if FAST else 10_000      # MNIST training digits the run draws its batches from
N_EVAL = 8 if FAST else 32               # held-out digits per timestep bucket in the evaluation
STEPS_COMPARED = 3                       # steps of section 2, in the open and by train_step
GRAD_ENTRIES = 2 if FAST else 4          # finite-difference entries per tensor

data = mnist("train")                                            # the full MNIST, or the shipped 5,000-digit subset
n_train = min(N_TRAIN, len(data) - N_EVAL)
images, labels = data.images[:n_train], data.labels[:n_train]
held_out = to_model_range(data.images[-N_EVAL:])                 # (N_EVAL, 1, 28, 28), never trained on
held_out_labels = data.labels[-N_EVAL:]

# %% 1. The objective and its gradient
# ---------------------------------------------------------------------------------------------------
section("1. The objective and its gradient")
# The forward process gives x_t in one jump from the data (lesson 02):
#     x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,       eps ~ N(0, I),  t ~ Uniform{0, ..., T-1}
# The network eps_theta(x_t, t, y) is trained to say which noise was added. Ho et al.'s "simple" loss is the
# plain mean squared error over the batch (B images) and every pixel (M = 1 x 28 x 28 values each):
#     L = 1/(B M) sum_{n, j} (out_nj - eps_nj)^2,         out = eps_theta(x_t, t, y)
# There is no autodiff here, so the gradient is written down; it is where the backward starts:
#     dL/dout_nj = 2 (out_nj - eps_nj) / (B M)
# Why predicting the noise is enough: from x_t and a guess of eps we get a guess of x0,
#     x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t),
# and that is all a sampler needs (lesson 12).
rng = np.random.default_rng(0)
run_unet = UNetConfig(base_channels=8, channel_mults=(1, 2), blocks_per_level=1, attention_resolutions=(14,),
                      heads=2, groups=4, dropout=0.1)
# prediction="eps": the noise prediction of Ho et al. that this lesson writes out (the cpu preset predicts v)
step_config = preset("cpu", unet=run_unet, batch_size=8, dtype="float64", steps=100, warmup_steps=10, lr=2e-3,
                     ema_decay=0.99, log_every=1, checkpoint_every=0, sample_every=0, prediction="eps")
lib = new_state(step_config, images[:512], labels[:512])     # tinyddpm trains this one with train_step ...
mine = new_state(step_config, images[:512], labels[:512])    # ... and we train its identical twin in the open
schedule, T = mine.schedule, step_config.num_timesteps

out_demo = rng.standard_normal((4, 1, 28, 28))
x0_demo = rng.uniform(-1, 1, size=(4, 1, 28, 28))
eps_demo = rng.standard_normal((4, 1, 28, 28))
t_demo = np.array([3, 250, 600, 999])
loss_mine = np.mean((out_demo - eps_demo) ** 2)
dout_mine = 2 * (out_demo - eps_demo) / out_demo.size
loss_lib, dout_lib = diffusion_loss(schedule, out_demo, x0_demo, t_demo, eps_demo)
err = max(relative_error(loss_mine, loss_lib), relative_error(dout_mine, dout_lib))
check("L and dL/dout in NumPy == tinyddpm.diffusion.diffusion_loss", err < 1e-14, f"max relative error {err:.1e}")
errors = check_gradients(mse_loss_forward, mse_loss_backward, {"pred": out_demo.copy(), "target": eps_demo.copy()})
check("gradient check of the MSE loss (one op)", max(errors.values()) < OP_TOLERANCE,
      f"pred {errors['pred']:.1e}, target {errors['target']:.1e} (limit {OP_TOLERANCE:.0e})")

# %%
# ---------------------------------------------------------------------------------------------------
section(f"2. One training step in the open, {STEPS_COMPARED} times, against train_step")
# Two training states made from the same config are identical twins: the same initial weights (seeded),
# the same batch order, the same two random generators (host: t and label dropout; device: the noise and
# the dropout masks). train_step draws from them in a fixed order, and so do we, in float64:
#
#   1. a batch x0 (B, 1, 28, 28) in [-1, 1] with labels y (B,)
#   2. t ~ U{0..T-1}; then 10% of the labels become the "null" label (classifier-free guidance, lesson 15)
#   3. eps ~ N(0, I) and x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
#   4. out = unet(x_t, t, y) with dropout on; L and dL/dout as above; unet_backward gives every dL/dtheta
#   5. clip: if the global norm ||g|| = sqrt(sum over all tensors of sum g^2) exceeds c, scale g by c / ||g||
#   6. learning rate: linear warmup lr (k + 1) / W for step k < W, then a cosine decay to min_lr
#   7. AdamW, per tensor, at step k = 1, 2, ...:
#          m <- b1 m + (1 - b1) g            v <- b2 v + (1 - b2) g^2           (running mean and square)
#          theta <- theta - lr * (m / (1 - b1^k)) / (sqrt(v / (1 - b2^k)) + eps_adam)
#      The bias corrections 1 - b^k undo the zero start of m and v. (Weight decay is 0 in the presets; AdamW's
#      "decoupled" decay would also shrink theta by lr * wd * theta.)
#   8. EMA of the weights, the ones we sample with: e <- d e + (1 - d) theta, with the warmup
#      d = min(decay, (1 + n) / (10 + n)) at the n-th update so that the average forgets the init early.
cfg = step_config
b1, b2 = cfg.betas
params = mine.params
m = {k: np.zeros_like(p) for k, p in params.items()}
v = {k: np.zeros_like(p) for k, p in params.items()}
ema = {k: p.copy() for k, p in params.items()}
losses_lib, losses_mine = [], []
for k in range(STEPS_COMPARED):
    losses_lib.append(float(train_step(lib)))

    x0, y = next(mine.batches)                                                  # (B, 1, 28, 28), (B,)
    B = x0.shape[0]
    t = mine.host_rng.integers(0, T, size=B)                                    # (B,)
    drop = mine.host_rng.random(B) < cfg.p_uncond                               # (B,) True: forget the label
    y = np.where(drop, cfg.unet.null_label, y)
    eps = mine.device_rng.standard_normal(x0.shape, dtype=x0.dtype)
    abar = schedule.alpha_bar[t][:, None, None, None]                           # (B, 1, 1, 1)
    x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps

    out_k, cache = unet_forward(params, cfg.unet, x_t, t, y, train=True, rng=mine.device_rng)
    losses_mine.append(float(np.mean((out_k - eps) ** 2)))
    _, grads = unet_backward(2 * (out_k - eps) / out_k.size, cache)            # dL/dtheta for every tensor

    norm = np.sqrt(sum(np.sum(g * g) for g in grads.values()))
    scale = min(1.0, cfg.grad_clip / (norm + 1e-6))
    if k < cfg.warmup_steps:
        lr = cfg.lr * (k + 1) / cfg.warmup_steps
    else:
        q = min(1.0, (k - cfg.warmup_steps) / (cfg.steps - cfg.warmup_steps))
        lr = cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + np.cos(np.pi * q))
    d = min(cfg.ema_decay, (1 + k) / (10 + k))
    for name, p in params.items():
        g = grads[name] * scale
        m[name] = b1 * m[name] + (1 - b1) * g
        v[name] = b2 * v[name] + (1 - b2) * g * g
        p -= lr * (m[name] / (1 - b1 ** (k + 1))) / (np.sqrt(v[name] / (1 - b2 ** (k + 1))) + 1e-8)
        ema[name] = d * ema[name] + (1 - d) * p
    print(f"  step {k + 1}: loss {losses_mine[-1]:.6f} (train_step: {losses_lib[-1]:.6f}), gradient norm {norm:.3f}, "
          f"lr {lr:.1e}, EMA decay {d:.3f}")

err = relative_error(np.array(losses_mine), np.array(losses_lib))
check("the losses of the steps in the open == train_step's", err < 1e-12, f"max relative error {err:.1e}")
err = max(relative_error(params[k], lib.params[k]) for k in params)
check("the weights after the steps == train_step's", err < 1e-10,
      f"{len(params)} tensors, max relative error {err:.1e}")
err = max(relative_error(ema[k], lib.ema.params[k]) for k in params)
check("the EMA weights after the steps == train_step's", err < 1e-10, f"max relative error {err:.1e}")

# The gradient that AdamW received is the gradient of L with respect to the weights. Check it by finite
# differences of the loss itself (network + MSE, float64, dropout off), for a few tensors across the network.
# After three steps no weight is at its zero init any more, so every path carries gradient.
x0, y = next(mine.batches)
x0, y = x0[:4], y[:4]                                                           # 4 images are enough here
t = rng.integers(0, T, size=x0.shape[0])
eps = rng.standard_normal(x0.shape)
abar = schedule.alpha_bar[t][:, None, None, None]
x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
checked = ["time.lin1.w", "label.table", "conv_in.w", "down.0.res.0.conv1.w", "mid.attn.qkv.w", "up.1.res.0.temb.w",
           "up.0.res.1.conv2.w", "conv_out.w"]


def loss_of(*values):
    p = {**params, **dict(zip(checked, values))}
    out_p, unet_cache = unet_forward(p, cfg.unet, x_t, t, y)
    loss, loss_cache = mse_loss_forward(out_p, eps)
    return loss, (unet_cache, loss_cache)


def grad_of(dloss, caches):
    dout, _ = mse_loss_backward(dloss, caches[1])
    _, grads = unet_backward(dout, caches[0])
    return tuple(grads[k] for k in checked)


errors = check_gradients(loss_of, grad_of, {k: params[k].copy() for k in checked}, h=BLOCK_STEP,
                         max_entries=GRAD_ENTRIES)
worst = max(errors, key=errors.get)
check(f"finite differences of L == the gradient train_step uses ({len(checked)} tensors, {GRAD_ENTRIES} entries each)",
      errors[worst] < BLOCK_TOLERANCE, f"worst {worst}: {errors[worst]:.1e} (limit {BLOCK_TOLERANCE:.0e})")

# %%
# ---------------------------------------------------------------------------------------------------
section(f"3. A short run on real MNIST: {RUN_STEPS} steps")
# Now the library's train_step in a loop (section 2 showed it is our step), on a small U-Net in float32.
# We also keep the history of every bias and GroupNorm gain (the 1-D tensors), raw and EMA, to look at the EMA.
run_config = preset("cpu", unet=UNetConfig(base_channels=16, channel_mults=(1, 2), blocks_per_level=1,
                                           attention_resolutions=(), heads=1, groups=8, dropout=0.0),
                    steps=RUN_STEPS, batch_size=16, lr=2e-3, warmup_steps=RUN_STEPS // 10, ema_decay=0.99,
                    log_every=10, checkpoint_every=0, sample_every=0, prediction="eps")
if FAST:
    run_config = preset("cpu", unet=run_unet, steps=RUN_STEPS, batch_size=16, lr=2e-3, warmup_steps=RUN_STEPS // 10,
                        ema_decay=0.9, log_every=10, checkpoint_every=0, sample_every=0, prediction="eps")
print(f"  U-Net {run_config.unet.base_channels} base channels, mults {run_config.unet.channel_mults}; batch "
      f"{run_config.batch_size}, lr {run_config.lr} with {run_config.warmup_steps} warmup steps then cosine, "
      f"EMA decay {run_config.ema_decay}")
state = new_state(run_config, images, labels)
small = [name for name, p in state.params.items() if p.ndim == 1]                # biases and gains
raw_hist = [np.concatenate([state.params[name] for name in small])]              # at init ...
ema_hist = [np.concatenate([state.ema.params[name] for name in small])]
tic = time.perf_counter()
for k in range(RUN_STEPS):
    train_step(state)
    raw_hist.append(np.concatenate([state.params[name] for name in small]))     # ... and after every step
    ema_hist.append(np.concatenate([state.ema.params[name] for name in small]))
    if (k + 1) % max(1, RUN_STEPS // 5) == 0 or k + 1 == RUN_STEPS:
        window = state.flush_losses()
        print(f"  step {k + 1:4d}: mean loss of the last {len(window)} steps {np.mean(window):.4f}  "
              f"({time.perf_counter() - tic:.1f} s)")
state.flush_losses()
losses = np.array(state.losses)
n10 = max(1, RUN_STEPS // 10)
first, last = losses[:n10].mean(), losses[-n10:].mean()
check("the loss falls: mean of the last 10% of steps is below half the first 10%'s", last < 0.5 * first,
      f"first {first:.4f}, last {last:.4f} (ratio {last / first:.2f})")

# The EMA recursion, recomputed from the raw weights' history, must give the EMA weights the library kept.
raw_hist, ema_hist = np.array(raw_hist), np.array(ema_hist)                      # (steps + 1, weights)
ema_again = [raw_hist[0]]                                                        # the EMA starts as a copy
for n in range(RUN_STEPS):
    d = min(run_config.ema_decay, (1 + n) / (10 + n))
    ema_again.append(d * ema_again[-1] + (1 - d) * raw_hist[n + 1])
err = relative_error(np.array(ema_again), ema_hist)
check("e <- d e + (1 - d) theta, recomputed from the raw history, == the EMA tinyddpm kept", err < 1e-5,
      f"{raw_hist.shape[1]} weights x {RUN_STEPS} steps, max relative error {err:.1e} (float32 weights)")
# For the picture: the weight that went back and forth the most (path length minus net change).
wobble = np.abs(np.diff(raw_hist, axis=0)).sum(axis=0) - np.abs(raw_hist[-1] - raw_hist[0])
j = int(np.argmax(wobble))
sizes = np.cumsum([state.params[name].size for name in small])
tensor = int(np.searchsorted(sizes, j, side="right"))
tracked = f"{small[tensor]}[{j - (sizes[tensor - 1] if tensor else 0)}]"

# Which timesteps are hard? The trained network's loss on held-out digits, t by t (same digits and noise
# for the raw and the EMA weights). An untrained network outputs 0 and scores E[eps^2] = 1 at every t.
# The same error seen in x0 space: x0_hat - x0 = -sqrt(1 - abar_t) / sqrt(abar_t) (eps_hat - eps), so
#     MSE(x0) = (1 - abar_t) / abar_t * MSE(eps):
# a small eps error at large t is a large x0 error.
buckets = np.linspace(25, T - 25, 10).astype(int)
x_eval = held_out
y_eval = held_out_labels
noise_eval = rng.standard_normal((len(buckets),) + x_eval.shape).astype(np.float32)
per_t = {"raw": [], "EMA": []}
for i, tb in enumerate(buckets):
    tt = np.full(len(x_eval), tb)
    xt_eval = np.sqrt(schedule.alpha_bar[tb]) * x_eval + np.sqrt(1 - schedule.alpha_bar[tb]) * noise_eval[i]
    for which, weights in (("raw", state.params), ("EMA", state.ema.params)):
        pred, _ = unet_forward(weights, run_config.unet, xt_eval.astype(np.float32), tt, y_eval)
        per_t[which].append(float(np.mean((pred - noise_eval[i]) ** 2)))
ratio = (1 - schedule.alpha_bar[buckets]) / schedule.alpha_bar[buckets]
print("  t:          " + " ".join(f"{tb:6d}" for tb in buckets))
print("  MSE(eps) EMA" + " ".join(f"{v_:6.3f}" for v_ in per_t["EMA"]))
print("  MSE(x0)  EMA" + " ".join(f"{v_ * r:6.3f}" for v_, r in zip(per_t["EMA"], ratio)))
print(f"  mean over t: raw weights {np.mean(per_t['raw']):.4f}, EMA weights {np.mean(per_t['EMA']):.4f}")

# %% 4. Pictures
# ---------------------------------------------------------------------------------------------------
section("4. Pictures")
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.2))
steps = np.arange(1, len(losses) + 1)
window = max(5, RUN_STEPS // 20)
ax1.plot(steps, losses, lw=0.6, alpha=0.4, color="tab:blue", label="loss of each step")
ax1.plot(steps, smooth_curve(losses, window), lw=2, color="tab:blue", label=f"running mean of {window} steps")
ax1.axhline(first, color="tab:red", ls=":", label=f"mean of the first 10%: {first:.3f}")
ax1.axhline(last, color="tab:green", ls=":", label=f"mean of the last 10%: {last:.3f}")
ax1.set(yscale="log", xlabel="optimizer step", ylabel="MSE between predicted and true noise (log)",
        title="Training loss (an untrained network scores 1)")
ax1.grid(True, which="both", alpha=0.3)
ax1.legend(fontsize=8)
ax2.plot(np.arange(RUN_STEPS + 1), raw_hist[:, j], lw=1, color="0.5", label="raw weight (what AdamW updates)")
ax2.plot(np.arange(RUN_STEPS + 1), ema_hist[:, j], lw=2, color="tab:orange",
         label=f"EMA weight (decay {run_config.ema_decay}, with warmup)")
ax2.set(xlabel="optimizer step", ylabel="value", title=f"The weight that wobbled most: {tracked}")
ax2.grid(True, alpha=0.3)
ax2.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "loss_curve.png", dpi=100)
plt.close(fig)
saved(out / "loss_curve.png")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
for which, style in (("raw", "o--"), ("EMA", "s-")):
    ax1.plot(buckets, per_t[which], style, label=f"{which} weights")
    ax2.plot(buckets, np.array(per_t[which]) * ratio, style, label=f"{which} weights")
ax1.axhline(1.0, color="0.5", ls=":", label="untrained (predicts 0)")
ax1.set(xlabel="timestep t", ylabel="MSE(eps_hat, eps)", ylim=(0, None),
        title="Noise-prediction loss per timestep: small t are hard")
ax2.set(xlabel="timestep t", ylabel="MSE(x0_hat, x0) (log)", yscale="log",
        title="The same errors in x0 space: (1 - abar) / abar x MSE(eps)")
for a in (ax1, ax2):
    a.grid(True, alpha=0.3)
    a.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "loss_per_timestep.png", dpi=100)
plt.close(fig)
saved(out / "loss_per_timestep.png")

# x0 predictions: four held-out digits, each noised to several t; the EMA network's estimate of x0.
show_t = np.array([50, 200, 400, 600, 800, 950])
n_show = min(4, len(x_eval))
x0_rep = np.repeat(x_eval[:n_show], len(show_t), axis=0)                         # (n_show * len(show_t), 1, 28, 28)
t_rep = np.tile(show_t, n_show)
noise_rep = rng.standard_normal(x0_rep.shape).astype(np.float32)
abar = schedule.alpha_bar[t_rep][:, None, None, None]
xt_rep = (np.sqrt(abar) * x0_rep + np.sqrt(1 - abar) * noise_rep).astype(np.float32)
eps_hat, _ = unet_forward(state.ema.params, run_config.unet, xt_rep, t_rep, np.repeat(y_eval[:n_show], len(show_t)))
x0_hat = np.clip(x0_from_eps(schedule, xt_rep, t_rep, eps_hat), -1, 1)
grid = np.stack([xt_rep.reshape(n_show, len(show_t), 1, 28, 28), x0_hat.reshape(n_show, len(show_t), 1, 28, 28)],
                axis=1).reshape(2 * n_show, len(show_t), 1, 28, 28)                # rows: x_t, x0_hat, x_t, ...
plot_sample_grid(out / "x0_predictions.png", grid, row_labels=[f"{r} #{i + 1}" for i in range(n_show)
                                                                for r in ("x_t", "x0_hat")],
                 col_labels=[f"t={tt}" for tt in show_t],
                 title=f"Held-out digits noised to t, and x0 recovered by the EMA network ({RUN_STEPS} steps)")
saved(out / "x0_predictions.png")

# %% Exercises
try_this(__doc__)
finish(started)
