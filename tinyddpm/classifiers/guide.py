"""A noise-conditional MNIST classifier p(y | x_t, t), built from tinyddpm's ops: the guide of classifier guidance.

Classifier guidance (Dhariwal & Nichol 2021) steers a diffusion model with the gradient of a classifier at
every sampler step, grad_x log p(y | x_t, t) at the current noisy x_t (tinyddpm/diffusion/guidance.py turns
it into a corrected noise prediction). The evaluation classifier (classifiers/judge.py) has only seen clean
digits, so its gradient at a noisy x_t means little. This one is trained on x_t = q_sample(x0, t, eps) at
uniformly drawn t, and is told t. There is no autodiff: the gradient with respect to the INPUT x comes from
the same hand-written backward that trains the weights.

Legend: N = batch, H = W = image size (28), C1, C2, C3 = conv channels, E = time-embedding width,
D = feature width, K = number of classes (10).

Network: the evaluation classifier's CNN, with the timestep added to every conv stage as the U-Net's
ResBlocks add it (a per-channel shift, broadcast over H and W), SiLU everywhere:

    e0 = timestep_embedding(t, E)                                  (N, E)   sinusoidal (ops/embedding.py)
    e  = silu(linear(e0, We, be))                                  (N, E)
    h1 = silu(conv3x3(x,  w1, b1)           + linear(e, T1, c1))   (N, C1, 28, 28)
    h2 = silu(conv3x3(h1, w2, b2, stride 2) + linear(e, T2, c2))   (N, C2, 14, 14)
    h3 = silu(conv3x3(h2, w3, b3, stride 2) + linear(e, T3, c3))   (N, C3,  7,  7)
    f  = silu(linear(flatten(h3), W4, b4))                         (N, D)
    z  = linear(f, W5, b5)                                         (N, K)   the logits

The class log-probability, and its derivative with respect to the logits (log p = -cross-entropy):

    log p(y | x_t, t) = z_y - logsumexp_k z_k            d log p(y) / d z_k = [k == y] - p_k

Backward. Every layer is undone in reverse (judge.py does the same for the plain CNN). Two lines are new:
  - the time shift: the forward was a = conv + s[:, :, None, None], so ds = da summed over H and W;
  - e feeds all three stages, so its gradient is the sum of theirs: de = ds1 T1 + ds2 T2 + ds3 T3, in one line.
t is an integer: nothing flows back into it. What guidance needs is dx, and for a batch

    grad_{x_n} log p(y_n | x_n, t_n) = d/dx_n of sum_m log p(y_m | x_m, t_m)     (row m depends on x_m only)

so one backward with d log p = 1 for every row gives all N per-sample gradients at once (input_gradient).

Training: softmax cross-entropy on (q_sample(x0, t, eps), t, y) with t ~ U{0 .. T-1} and eps ~ N(0, I) drawn
fresh for every image and step; AdamW with warmup and cosine decay, as for the evaluation classifier. The
classifier depends on the noise schedule (what x_t looks like at t), so the cache is one file per schedule,
$TINYDDPM_CACHE/noisy_classifier/noisy_classifier_<name>_<T>.npz (else ~/.cache/tinyddpm/noisy_classifier/),
holding a fingerprint of alpha_bar that is checked against the schedule it is loaded for. Its accuracy falls
as t grows, since near t = T the image is almost pure noise and p(y | x_t, t) can only be the prior, 10%.
The cached config records the test accuracy at t = 0, 250, 500, 750, 999. The default, four epochs of the
full MNIST (1,872 steps of 128 images; linear schedule, T = 1000), took 339 s on 2 CPU cores shared with
other work (one BLAS thread) and reached 98.6%, 97.0%, 62.4%, 17.8% and 10.8% on the 10,000 test digits
there: at t = 500 the linear schedule has left sqrt(alpha_bar) = 0.28 of the signal.

Proof: tests/test_classifier_guidance.py (the log-probability op and the whole network's input and
parameter gradients against finite differences in float64 over hypothesis-drawn shapes, and against
PyTorch's autograd).
"""
from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..array_checks import describe, float_inputs, require, require_array
from ..backend import device_xp, get_xp, make_rng, to_numpy
from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..checks import check_int, check_real
from ..data.batches import Batches
from ..data.mnist import load_mnist
from ..data.pixels import to_model_range
from ..diffusion import make_schedule, q_sample
from ..ops import (add_backward, add_forward, conv2d_backward, conv2d_forward, linear_backward, linear_forward,
                   silu_backward, silu_forward, timestep_embedding_forward)
from ..ops.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from ..parallel.threads import default_shards, run_sharded, shard_slices
from ..progress import Progress
from ..training.optim import AdamW, lr_schedule
from .judge import CONV_LAYERS, ClassifierConfig
from .judge import default_cache_dir as classifier_cache_dir
from .judge import init_params as init_base_params
from .judge import cache_expectation, weights_problem
from .judge import param_shapes as base_param_shapes

BATCH_SIZE = 128                            # images per training step
REPORT_TIMESTEPS = (0, 250, 500, 750, 999)  # the test accuracy saved with the cache is measured at these t (< T)
CACHE_KIND = "tinyddpm.noisy_classifier"


# --------------------------------------------------------------------------------------------
# the class log-probability: one op
# --------------------------------------------------------------------------------------------

def class_log_prob_forward(logits, labels):
    """log p(y_n) = z[n, y_n] - logsumexp_k z[n, k], (N,), of logits (N, K) and integer labels (N,).

    It is minus the per-row softmax cross-entropy (ops/losses.py computes that one without overflow and
    checks the arguments). Returns (log_p, cache).
    """
    ce, cache = softmax_cross_entropy_forward(logits, labels, reduction="none")  # (N,)
    return -ce, cache


def class_log_prob_backward(dlogp, cache):
    """dlogits (N, K) = dlogp[n] * ([k == y_n] - p[n, k]) for an upstream gradient dlogp (N,)."""
    # in the forward pass this was: log_p = -ce, so now we have:
    return softmax_cross_entropy_backward(-dlogp, cache)  # (N, K)


# --------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------

@dataclass
class NoisyClassifierConfig:
    image_size: int = 28             # H = W of the input
    channels: tuple = (16, 32, 64)   # C1, C2, C3
    features: int = 128              # D
    num_classes: int = 10            # K
    time_dim: int = 32               # E, the width of the timestep embedding e0 and of e

    def base(self) -> ClassifierConfig:
        """The plain CNN underneath (judge.py's layout of conv1..conv3, fc1, fc2)."""
        return ClassifierConfig(self.image_size, tuple(self.channels), self.features, self.num_classes)


def init_params(cfg: NoisyClassifierConfig = NoisyClassifierConfig(), seed: int = 0, dtype=np.float32) -> dict:
    """Random weights on the current device: the CNN of classifier.init_params, then the time layers
    ("time.w" (E, E), "time.b" (E,), and "convI.t.w" (CI, E), "convI.t.b" (CI,) per stage), PyTorch's
    default uniform init +-1/sqrt(fan_in)."""
    params = init_base_params(cfg.base(), seed=seed, dtype=dtype)
    rng = np.random.default_rng((seed, 1))
    xp = device_xp()

    def uniform(shape, fan_in):
        bound = 1.0 / np.sqrt(fan_in)
        return xp.asarray(rng.uniform(-bound, bound, size=shape), dtype=dtype)

    E = cfg.time_dim
    params["time.w"], params["time.b"] = uniform((E, E), E), uniform((E,), E)
    for (name, _), c in zip(CONV_LAYERS, cfg.channels):
        params[f"{name}.t.w"], params[f"{name}.t.b"] = uniform((c, E), E), uniform((c,), E)
    return params


class StageCache(NamedTuple):
    conv: object    # Conv2dCache of conv3x3(h)
    time: object    # LinearCache of linear(e, T, c)
    shift: object   # AddCache of conv + s[:, :, None, None]
    act: object     # SiLUCache


class NoisyClassifierCache(NamedTuple):
    time: object        # LinearCache of linear(e0, We, be)
    time_act: object    # SiLUCache of e
    stages: tuple       # three StageCache, in forward order
    flat_shape: tuple   # (N, C3, h, w) before the flatten
    fc1: object         # LinearCache
    fc1_act: object     # SiLUCache of f
    fc2: object         # LinearCache
    features: object    # (N, D) f


def noisy_classifier_forward(params: dict, x, t):
    """Logits (N, K) of noisy images x (N, 1, H, W) at integer timesteps t (N,). Returns (logits, cache).

    The architecture is read from the shapes in ``params`` (as made by init_params).
    """
    _check_noisy_classifier(params, x, t)
    E = params["time.w"].shape[1]
    e0, _ = timestep_embedding_forward(t, E, dtype=x.dtype)                       # (N, E); t gets no gradient
    a, time_cache = linear_forward(e0, params["time.w"], params["time.b"])         # (N, E)
    e, time_act = silu_forward(a)                                                   # (N, E)
    stages = []
    h = x
    for name, stride in CONV_LAYERS:
        a, conv = conv2d_forward(h, params[f"{name}.w"], params[f"{name}.b"], stride=stride)  # (N, Ci, Hi, Wi)
        s, lin = linear_forward(e, params[f"{name}.t.w"], params[f"{name}.t.b"])             # (N, Ci)
        a, shift = add_forward(a, s[:, :, None, None])                                       # (N, Ci, Hi, Wi)
        h, act = silu_forward(a)
        stages.append(StageCache(conv, lin, shift, act))
    N = h.shape[0]
    flat_shape = tuple(h.shape)
    require("noisy_classifier", h[0].size == params["fc1.w"].shape[1],
            lambda: f"the conv stack gives {flat_shape[1:]} per image, fc1 expects {params['fc1.w'].shape[1]} inputs: "
            f"{describe(x=x)}; was the net made for another image size?")
    a, fc1 = linear_forward(h.reshape(N, -1), params["fc1.w"], params["fc1.b"])      # (N, C3*h*w) -> (N, D)
    f, fc1_act = silu_forward(a)                                                    # (N, D)
    logits, fc2 = linear_forward(f, params["fc2.w"], params["fc2.b"])               # (N, K)
    return logits, NoisyClassifierCache(time_cache, time_act, tuple(stages), flat_shape, fc1, fc1_act, fc2, f)


def noisy_classifier_backward(dlogits, cache: NoisyClassifierCache):
    """Gradients (dx, grads) of noisy_classifier_forward: dx (N, 1, H, W) and grads {name: array} like params."""
    grads = {}
    # in the forward pass this was: z = linear(f, W5, b5); f = silu(linear(flatten(h3), W4, b4)), so now we have:
    d, grads["fc2.w"], grads["fc2.b"] = linear_backward(dlogits, cache.fc2)        # (N, D)
    d = silu_backward(d, cache.fc1_act)
    d, grads["fc1.w"], grads["fc1.b"] = linear_backward(d, cache.fc1)              # (N, C3*h*w)
    d = d.reshape(cache.flat_shape)                                                 # (N, C3, h, w), undoing the flatten
    de_stages = []
    for (name, _), stage in reversed(list(zip(CONV_LAYERS, cache.stages))):
        # in the forward pass this was: h = silu(conv(h_prev) + s[:, :, None, None]), s = linear(e, T, c):
        d = silu_backward(d, stage.act)
        d, ds = add_backward(d, stage.shift)                                        # ds (N, Ci, 1, 1): summed over H, W
        de, grads[f"{name}.t.w"], grads[f"{name}.t.b"] = linear_backward(ds.reshape(ds.shape[:2]), stage.time)
        de_stages.append(de)                                                        # (N, E)
        d, grads[f"{name}.w"], grads[f"{name}.b"] = conv2d_backward(d, stage.conv)  # (N, C_prev, H_prev, W_prev)
    # e fed all three stages, so its gradient is the sum of theirs:
    de = de_stages[0] + de_stages[1] + de_stages[2]                                 # (N, E)
    # in the forward pass this was: e = silu(linear(e0, We, be)); e0 depends on t alone, so it stops here:
    de = silu_backward(de, cache.time_act)
    _, grads["time.w"], grads["time.b"] = linear_backward(de, cache.time)
    return d, grads


def log_prob_forward(params: dict, x, t, labels):
    """log p(y | x_t, t), (N,), for noisy images x (N, 1, H, W), timesteps t (N,), labels (N,). Returns (log_p, cache)."""
    logits, net = noisy_classifier_forward(params, x, t)
    log_p, head = class_log_prob_forward(logits, labels)
    return log_p, (net, head)


def log_prob_backward(dlogp, cache):
    """Gradients (dx, grads) of sum_n dlogp[n] * log p(y_n | x_n, t_n)."""
    net, head = cache
    return noisy_classifier_backward(class_log_prob_backward(dlogp, head), net)


def input_gradient(params: dict, x_t, t, labels):
    """(grad_x log p(y | x_t, t), log p): the per-sample input gradients (N, C, H, W) and log-probabilities (N,).

    x_t is cast to the weights' dtype for the network (float32 images with float32 weights: no copy) and the
    gradient comes back in x_t's dtype. This is the one backward pass classifier guidance takes per step.
    """
    dtype = params["conv1.w"].dtype
    x = x_t.astype(dtype, copy=False)
    log_p, cache = log_prob_forward(params, x, t, labels)
    xp = get_xp(x)
    dx, _ = log_prob_backward(xp.ones_like(log_p), cache)   # d(sum_n log p_n): each row's own gradient
    return dx.astype(x_t.dtype, copy=False), log_p


def gradient_fn(params: dict, shards: int | None = None):
    """grad(x_t, t, labels) -> grad_x log p(y | x_t, t): the callable ClassifierGuidedModel asks for.

    On the CPU the batch is cut into ``shards`` (None: one per core) run in parallel threads with BLAS held to one
    thread, as the U-Net's forward is when sampling (parallel/threads.py): the rows are independent, so the
    gradients are those of one call, up to float round-off. On CuPy, one call.
    """

    def grad(x_t, t, labels):
        xp = get_xp(x_t)
        parts = shard_slices(x_t.shape[0], 1 if xp is not np else (shards or default_shards()))
        outs = run_sharded(lambda part: input_gradient(params, x_t[part], t[part], labels[part])[0], parts)
        return outs[0] if len(outs) == 1 else xp.concatenate(outs)      # (N, C, H, W)
    return grad


# --------------------------------------------------------------------------------------------
# accuracy at a noise level
# --------------------------------------------------------------------------------------------

def noisy_accuracy(params: dict, schedule, images, labels, t: int, seed: int = 0, batch_size: int = 500) -> float:
    """Share of ``images`` (N, 1, H, W) in [-1, 1] whose label the classifier reads from q_sample(images, t, eps)."""

    xp = get_xp(*params.values(), op="noisy_accuracy")
    dtype = params["conv1.w"].dtype
    t = check_int("noisy_accuracy", "t", t, minimum=0, maximum=schedule.T - 1)
    rng = np.random.default_rng(seed)
    labels = to_numpy(labels)
    right = 0
    for start in range(0, len(labels), batch_size):
        x0 = xp.asarray(to_numpy(images[start:start + batch_size]), dtype=dtype)   # (B, 1, H, W)
        noise = xp.asarray(rng.standard_normal(x0.shape), dtype=dtype)
        tb = xp.full((x0.shape[0],), t, dtype=xp.int64)                            # (B,)
        logits, _ = noisy_classifier_forward(params, q_sample(schedule, x0, tb, noise), tb)
        right += int((to_numpy(logits).argmax(axis=1) == labels[start:start + batch_size]).sum())
    return right / max(1, len(labels))


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------

def train_noisy_classifier(images, labels, schedule, *, cfg: NoisyClassifierConfig | None = None,
                           epochs: float = 4.0, batch_size: int = BATCH_SIZE, lr: float = 2e-3,
                           weight_decay: float = 1e-4, seed: int = 0, log_every: int = 100, verbose: bool = True):
    """Train on images (N, 1, H, W) in [-1, 1], noised by ``schedule`` at t ~ U{0..T-1}; returns (params, history).

    ``history`` holds the loss every ``log_every`` steps (read then only, so a GPU is not made to wait
    every step), "steps" and "seconds".
    """

    where = "train_noisy_classifier"
    epochs = check_real(where, "epochs", epochs, minimum=0.0)
    seed = check_int(where, "seed", seed, minimum=0)
    cfg = cfg or NoisyClassifierConfig(image_size=int(images.shape[-1]))
    xp = device_xp()
    images, labels = xp.asarray(images), xp.asarray(labels)
    lo, hi = int(labels.min()), int(labels.max())   # read once here: the loss does not read GPU labels back
    if lo < 0 or hi >= cfg.num_classes:
        raise ValueError(f"{where}: labels must lie in [0, {cfg.num_classes}), got range [{lo}, {hi}]")
    params = init_params(cfg, seed=seed, dtype=np.dtype(images.dtype))
    opt = AdamW(params, lr=lr, weight_decay=weight_decay, no_decay=lambda n: n.endswith(".b"))
    batches = Batches(images, labels, batch_size=batch_size, seed=seed)
    host_rng, noise_rng = np.random.default_rng((seed, 2)), make_rng(seed)
    total = max(1, int(round(epochs * batches.batches_per_epoch)))
    history = {"loss": [], "steps": total}
    start = time.perf_counter()
    lines = max(1, total // log_every)
    with Progress(total, "noisy classifier", enabled=verbose, lines=lines, stream=sys.stdout) as bar:
        for step in range(total):
            x0, y = next(batches)
            t = xp.asarray(host_rng.integers(0, schedule.T, size=x0.shape[0]))          # (B,) t ~ U{0..T-1}
            noise = noise_rng.standard_normal(x0.shape, dtype=x0.dtype)                  # eps ~ N(0, I)
            x_t = q_sample(schedule, x0, t, noise)                                       # (B, 1, H, W)
            logits, cache = noisy_classifier_forward(params, x_t, t)
            loss, loss_cache = softmax_cross_entropy_forward(logits, y)
            _, grads = noisy_classifier_backward(softmax_cross_entropy_backward(1.0, loss_cache), cache)
            opt.step(params, grads, lr=lr_schedule(step, lr, warmup_steps=min(100, total // 10), total_steps=total,
                                                   min_lr=0.05 * lr))
            bar.advance()
            if step % log_every == 0 or step == total - 1:
                history["loss"].append((step, float(loss)))
                bar.report(f"loss {history['loss'][-1][1]:.4f}")
    history["seconds"] = time.perf_counter() - start
    return params, history


# --------------------------------------------------------------------------------------------
# the on-disk cache
# --------------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """$TINYDDPM_CACHE/noisy_classifier if that variable is set, else ~/.cache/tinyddpm/noisy_classifier."""
    return classifier_cache_dir("noisy_classifier")


def cache_name(schedule) -> str:
    """The cache file of the classifier trained for ``schedule``: noisy_classifier_<name>_<T>.npz."""
    return f"noisy_classifier_{schedule.name}_{schedule.T}.npz"


def schedule_fingerprint(schedule) -> str:
    """16 hex digits of the SHA-256 of alpha_bar (float64): two schedules that noise alike share it."""
    return hashlib.sha256(np.ascontiguousarray(schedule.alpha_bar, dtype=np.float64).tobytes()).hexdigest()[:16]


def load_noisy_classifier(path, schedule=None, where: str = "load_noisy_classifier"):
    """(params, config) of a cache written by load_or_train_noisy_classifier, checked.

    A file that is not one -- not a readable checkpoint, another kind, weights missing, of shapes that do not
    chain into the network, NaN or inf, or (when ``schedule`` is given) trained for another noise schedule --
    raises a CheckpointError naming the file and the fix (delete it, or retrain=True).
    """

    prefix, fix = f"{where}: " if where else "", "delete it, or pass retrain=True, to train a new one"
    expect = cache_expectation(CACHE_KIND, "a noisy-classifier cache", None, _time_weights_problem, param_shapes,
                               NoisyClassifierConfig)
    try:   # names, shapes, dtype (float32), sizes and finiteness, checked by load_checkpoint against the config
        ckpt = load_checkpoint(path, expect=expect)
    except CheckpointError as e:
        raise CheckpointError(f"{prefix}{e}" + ("" if str(e).endswith(fix) else f"; {fix}")) from None
    config = ckpt.config
    if schedule is not None and config.get("schedule_fingerprint") != schedule_fingerprint(schedule):
        raise CheckpointError(f"{prefix}{path} was trained for the schedule {config.get('schedule')!r} with "
                              f"T={config.get('num_timesteps')}, not for {schedule.name!r} with T={schedule.T} "
                              f"(alpha_bar differs); {fix}")
    return ckpt.params, config


def param_shapes(cfg: NoisyClassifierConfig) -> dict:
    """{name: shape} of init_params(cfg), computed without making the arrays."""
    shapes, E = base_param_shapes(cfg.base()), cfg.time_dim
    shapes["time.w"], shapes["time.b"] = (E, E), (E,)
    for (name, _), c in zip(CONV_LAYERS, cfg.channels):
        shapes[f"{name}.t.w"], shapes[f"{name}.t.b"] = (c, E), (c,)
    return shapes


def _time_weights_problem(params: dict) -> str:
    """What keeps ``params`` from being the network of init_params, or ''."""
    time_names = {"time.w", "time.b"} | {f"{n}.t.{p}" for n, _ in CONV_LAYERS for p in "wb"}
    problem = weights_problem({k: v for k, v in params.items() if k not in time_names})
    if problem:
        return problem
    missing = sorted(time_names - set(params))
    if missing:
        return f"missing {missing[:4]}"
    w, b = tuple(params["time.w"].shape), tuple(params["time.b"].shape)
    if len(w) != 2 or b != (w[0],):
        return f"time.w {w} and time.b {b} do not make a linear layer"
    for name, _ in CONV_LAYERS:
        c = params[f"{name}.w"].shape[0]
        tw, tb = tuple(params[f"{name}.t.w"].shape), tuple(params[f"{name}.t.b"].shape)
        if tw != (c, w[0]) or tb != (c,):
            return f"{name}.t.w {tw} and {name}.t.b {tb} must be ({c}, {w[0]}) and ({c},)"
    return ""


def load_or_train_noisy_classifier(schedule, cache_dir=None, *, epochs: float = 4.0, seed: int = 0, data_dir=None,
                                   source: str = "auto", retrain: bool = False, verbose: bool = True,
                                   train_data=None, test_data=None):
    """The noise-conditional classifier for ``schedule``: loaded from ``cache_dir/cache_name(schedule)``, or
    trained once and saved there (atomically, no pickle).

    Returns (params, info): params on the current device (float32); info the saved config dict (architecture,
    schedule, training settings, "test_accuracy_by_t" {t: accuracy} on the test split, "data_source",
    "train_seconds"). A cache that is not a usable classifier for this schedule raises a CheckpointError
    naming it (load_noisy_classifier); ``retrain=True`` trains over it. To train, the splits are read with
    load_mnist(split, data_dir, source) unless given as ``train_data`` / ``test_data`` (ImageData).
    """

    path = Path(cache_dir or default_cache_dir()).expanduser() / cache_name(schedule)
    if path.is_file() and not retrain:
        params, config = load_noisy_classifier(path, schedule, where="load_or_train_noisy_classifier")
        if verbose:
            print(f"tinyddpm.classifiers.guide: loaded {path}", flush=True)
        return params, config

    train = train_data if train_data is not None else load_mnist("train", data_dir=data_dir, source=source)
    test = test_data if test_data is not None else load_mnist("test", data_dir=data_dir, source=source)
    cfg = NoisyClassifierConfig(image_size=int(train.images.shape[-1]))
    params, history = train_noisy_classifier(to_model_range(train.images), train.labels, schedule, cfg=cfg,
                                             epochs=epochs, seed=seed, verbose=verbose)
    test_images = to_model_range(test.images)
    by_t = {str(t): noisy_accuracy(params, schedule, test_images, test.labels, t, seed=seed)
            for t in REPORT_TIMESTEPS if t < schedule.T}
    config = {"kind": CACHE_KIND, **asdict(cfg), "channels": list(cfg.channels),
              "schedule": schedule.name, "num_timesteps": schedule.T,
              "schedule_fingerprint": schedule_fingerprint(schedule),
              "epochs": epochs, "batch_size": BATCH_SIZE, "seed": seed, "steps": history["steps"],
              "train_seconds": round(history["seconds"], 1), "test_accuracy_by_t": by_t,
              "test_size": len(test), "data_source": train.source, "test_source": test.source}
    save_checkpoint(path, config=config, params=params, step=history["steps"], extra={"loss": history["loss"]})
    if verbose:
        shown = ", ".join(f"t={t}: {a:.3f}" for t, a in by_t.items())
        print(f"tinyddpm.classifiers.guide: trained in {history['seconds']:.0f} s, test accuracy {shown}; "
              f"saved {path}", file=sys.stdout, flush=True)
    return params, config


# --------------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------------

def _check_noisy_classifier(params: dict, x, t):
    """Raise, naming noisy_classifier and the shapes, unless x (N, C, H, W) is a float array of the weights'
    dtype and backend and t an integer (N,) array on that backend."""
    op = "noisy_classifier"
    missing = [k for k in ("time.w", "conv1.w", "fc1.w", "fc2.w") if k not in params]
    require(op, not missing, f"params lack {missing}: make them with noisy_classifier.init_params")
    float_inputs(op, x=x, **{k: params[k] for k in sorted(params)})
    require_array(op, "t", t)
    get_xp(x, t, op=op)
    c_in = params["conv1.w"].shape[1]
    require(op, x.ndim == 4 and x.shape[1] == c_in, lambda: f"x must be (N, {c_in}, H, W), got {describe(x=x)}")
    if np.dtype(t.dtype).kind not in "iu":
        raise TypeError(f"{op}: t must hold integer timesteps, got {describe(t=t)} (x {tuple(x.shape)})")
    require(op, tuple(t.shape) == (x.shape[0],), lambda: f"t must be (N,) = ({x.shape[0]},): {describe(x=x, t=t)}")


if __name__ == "__main__":  # python -m tinyddpm.classifiers.guide [--retrain]: train (or load) for the linear schedule

    _, info = load_or_train_noisy_classifier(make_schedule("linear", 1000), retrain="--retrain" in sys.argv[1:])
    print({k: info[k] for k in ("test_accuracy_by_t", "train_seconds", "steps", "data_source")})
