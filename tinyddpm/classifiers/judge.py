"""An MNIST classifier built from tinyddpm's own ops: the judge of generated digits (and of other data sets).

Sample-quality metrics for MNIST (tinyddpm/evaluation/metrics.py) need a network that knows what digits look
like: its softmax outputs give the Inception Score and the accuracy of class-conditional samples,
its penultimate activations give the features for FID and precision/recall. This file trains one
with the same hand-written ops the diffusion model uses, and caches the weights on disk.

Legend: N = batch, C = image channels (1, or 3 for RGB), C1, C2, C3 = conv channels, H = W = image size (28;
also 32 or 64), D = feature dimension, K = number of classes (10 for MNIST).

Network (a small LeNet-style CNN; stride-2 convolutions do the downsampling, SiLU everywhere):

    x       (N, C, 28, 28)   images in the model range [-1, 1]
    h1 = silu(conv3x3(x,  w1, b1))            (N, C1, 28, 28)
    h2 = silu(conv3x3(h1, w2, b2, stride 2))  (N, C2, 14, 14)
    h3 = silu(conv3x3(h2, w3, b3, stride 2))  (N, C3,  7,  7)
    f  = silu(linear(flatten(h3), W4, b4))    (N, D)        the features (D = 128)
    z  = linear(f, W5, b5)                    (N, K)        the logits

Loss: softmax cross-entropy of z and the integer labels y (N,), averaged over the batch (ops/losses.py).

With 128 features at 2 stride-2 stages the net has about 0.43 M parameters and takes about
2.3 M multiply-adds per image. Two epochs of AdamW at batch 128 (936 steps) took 65 s on 2 CPU
cores and reached 98.95% accuracy on the 10,000 held-out MNIST test digits. On the 5,000 digits of the subset
shipped with tinyddpm, 2 epochs (78 steps) read 91.5% of its 1,000 test digits; load_or_train_classifier gives a
small training split at least as many steps as the full MNIST gets, each image moved by up to 2 pixels every time
it is seen (training_recipe): 936 steps, 98.5%.

Reference numbers with these features (the MNIST test split, two disjoint random halves of n each,
metrics.real_baseline): n = 5000: FID 4.8, precision 0.887, recall 0.905; n = 1000: FID 19.8,
precision 0.888, recall 0.900. FID shrinks with n (its bias is roughly proportional to D / n), so
compare a model only with a baseline of the same n. Inception Score of the real test digits: 9.62.

Other data sets. The judge of a model trained on Fashion-MNIST, or on a labelled folder of pictures
(tinyddpm/data/folder.py), is the same network trained on that data: ``load_or_train_classifier(dataset=
"fashion-mnist")``, or with ``train_data``/``test_data`` and ``data_key=folder_key(images, labels)``. Each is
cached in its own folder (default_classifier_dir(key)) and its config records the key, so a cache made on
one data set is refused for another. A folder's recipe (its split, steps and real reference pictures), which
examples/evaluate.py and benchmarks/recipe_ab.py share: tinyddpm/evaluation/folder_judge.py.
"""
from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..array_checks import describe, float_inputs, require
from ..backend import device_xp, get_xp, to_numpy
from ..checkpoint import CheckpointError, Expected, load_checkpoint, save_checkpoint
from ..data.batches import Batches
from ..data.mnist import load_dataset
from ..data.pixels import pixels_to_model_range
from ..environment import read_or
from ..ops.conv2d import conv2d_backward, conv2d_forward
from ..ops.linear import linear_backward, linear_forward
from ..ops.losses import softmax, softmax_cross_entropy_backward, softmax_cross_entropy_forward
from ..ops.silu import silu_backward, silu_forward
from ..progress import Progress
from ..training.optim import AdamW, lr_schedule

CHECKPOINT_NAME = "classifier.npz"
BATCH_SIZE = 128   # images per training step: the training split must hold at least this many
# The recipe of load_or_train_classifier (training_recipe): 2 epochs of a large training split (MNIST's 60,000:
# 936 steps, 98.95%); a split of fewer than SMALL_DATA images gets at least MIN_STEPS steps, every image moved
# by up to SMALL_DATA_SHIFT pixels each time it is seen. On the shipped 5,000-digit subset 2 epochs (78 steps)
# read 91.5% of its 1,000 test digits, 8 epochs 95.6%, 12 epochs 96.2%; MIN_STEPS (24 epochs) with shifts 98.5%.
SMALL_DATA = 20_000
MIN_STEPS = 936
SMALL_DATA_SHIFT = 2
CONV_LAYERS = (("conv1", 1), ("conv2", 2), ("conv3", 2))  # (name, stride)


# --------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------

@dataclass
class ClassifierConfig:
    image_size: int = 28             # H = W of the input; two stride-2 convs divide it by 4 (rounding up)
    channels: tuple = (16, 32, 64)   # C1, C2, C3
    features: int = 128              # D, the width of the penultimate layer (the FID features)
    num_classes: int = 10            # K
    image_channels: int = 1          # C: 1 (grey) or 3 (RGB)


def _spatial_after_convs(size: int) -> int:
    for _, stride in CONV_LAYERS:
        size = (size - 1) // stride + 1  # a 3x3 conv with padding 1
    return size


def init_params(cfg: ClassifierConfig = ClassifierConfig(), seed: int = 0, dtype=np.float32) -> dict:
    """Random weights (PyTorch's default uniform init, +-1/sqrt(fan_in)) on the current device."""
    rng = np.random.default_rng(seed)
    xp = device_xp()
    params = {}

    def uniform(shape, fan_in):
        bound = 1.0 / np.sqrt(fan_in)
        return xp.asarray(rng.uniform(-bound, bound, size=shape), dtype=dtype)

    c_in = cfg.image_channels
    for (name, _), c_out in zip(CONV_LAYERS, cfg.channels):
        params[f"{name}.w"] = uniform((c_out, c_in, 3, 3), c_in * 9)
        params[f"{name}.b"] = uniform((c_out,), c_in * 9)
        c_in = c_out
    s = _spatial_after_convs(cfg.image_size)
    flat = c_in * s * s
    params["fc1.w"], params["fc1.b"] = uniform((cfg.features, flat), flat), uniform((cfg.features,), flat)
    params["fc2.w"] = uniform((cfg.num_classes, cfg.features), cfg.features)
    params["fc2.b"] = uniform((cfg.num_classes,), cfg.features)
    return params


class ClassifierCache(NamedTuple):
    layers: list       # [(kind, cache)] in forward order: kind "conv", "silu", "flatten", "linear"
    features: object   # (N, D) the penultimate activations


def classifier_forward(params: dict, x):
    """logits (N, K) of images x (N, C, H, W) in [-1, 1]. Returns (logits, cache); cache.features is (N, D).

    The architecture is read from the shapes in ``params`` (as made by init_params).
    """
    op = "classifier"
    float_inputs(op, x=x, **{k: params[k] for k in sorted(params)})
    require(op, x.ndim == 4 and x.shape[1] == params["conv1.w"].shape[1],
            lambda: f"x must be (N, {params['conv1.w'].shape[1]}, H, W), got {describe(x=x)}")
    layers = []
    h = x
    for name, stride in CONV_LAYERS:
        h, c = conv2d_forward(h, params[f"{name}.w"], params[f"{name}.b"], stride=stride)
        layers.append(("conv", c))
        h, c = silu_forward(h)
        layers.append(("silu", c))
    N = h.shape[0]
    require(op, h[0].size == params["fc1.w"].shape[1],
            lambda: f"the conv stack gives {tuple(h.shape[1:])} per image, fc1 expects {params['fc1.w'].shape[1]} "
            f"inputs: {describe(x=x)}; was the net made for another image size?")
    layers.append(("flatten", tuple(h.shape)))
    h = h.reshape(N, -1)  # (N, C3*h*w)
    h, c = linear_forward(h, params["fc1.w"], params["fc1.b"])
    layers.append(("linear", c))
    features, c = silu_forward(h)  # (N, D)
    layers.append(("silu", c))
    logits, c = linear_forward(features, params["fc2.w"], params["fc2.b"])  # (N, K)
    layers.append(("linear", c))
    return logits, ClassifierCache(layers, features)


def classifier_backward(dlogits, cache: ClassifierCache):
    """Gradients (dx, grads) of classifier_forward: dx (N, C, H, W) and grads {name: array} like params."""
    names = [name for name, _ in CONV_LAYERS] + ["fc1", "fc2"]
    weighted = iter(reversed(names))  # conv and linear layers, last first
    grads = {}
    d = dlogits
    for kind, c in reversed(cache.layers):
        if kind == "silu":
            d = silu_backward(d, c)
        elif kind == "flatten":
            d = d.reshape(c)  # (N, C3, h, w), undoing h.reshape(N, -1)
        else:
            name = next(weighted)
            backward = conv2d_backward if kind == "conv" else linear_backward
            d, grads[f"{name}.w"], grads[f"{name}.b"] = backward(d, c)
    return d, grads


def classifier_loss(params: dict, x, labels):
    """Mean cross-entropy of the classifier on (x, labels) and its gradients: (loss, grads, logits)."""
    logits, cache = classifier_forward(params, x)
    loss, loss_cache = softmax_cross_entropy_forward(logits, labels)
    _, grads = classifier_backward(softmax_cross_entropy_backward(1.0, loss_cache), cache)
    return loss, grads, logits


# --------------------------------------------------------------------------------------------
# batched inference: NumPy in, NumPy out, whatever the device
# --------------------------------------------------------------------------------------------

def _batched(params: dict, images, batch_size: int, what: str):
    """Run the net over images in batches; yield (logits, features) as NumPy arrays per batch."""
    xp = get_xp(*params.values(), op="classifier")
    dtype = params["conv1.w"].dtype
    shape, C = tuple(images.shape), params["conv1.w"].shape[1]
    if len(shape) == 3:
        images = images[:, None]  # (N, 1, H, W)
    if images.ndim != 4 or images.shape[1] != C:
        grey = " or (N, H, W)" if C == 1 else ""
        raise ValueError(f"classifier.{what}: images must be (N, {C}, H, W){grey} in [-1, 1] for this classifier, "
                         f"got shape {shape}")
    if np.dtype(images.dtype).kind != "f":
        raise TypeError(f"classifier.{what}: images must be floats in the model range [-1, 1] "
                        f"(see data.to_model_range), got {images.dtype} {shape}")
    for start in range(0, images.shape[0], batch_size):
        xb = xp.asarray(images[start:start + batch_size], dtype=dtype)  # copies to the params' device
        logits, cache = classifier_forward(params, xb)
        yield to_numpy(logits), to_numpy(cache.features)


def predict_proba(params: dict, images, batch_size: int = 500) -> np.ndarray:
    """Softmax probabilities p(y|x), (N, K) float64 NumPy, of images (N, C, H, W) in [-1, 1]."""
    out = [softmax(z.astype(np.float64), np) for z, _ in _batched(params, images, batch_size, "predict_proba")]
    return np.concatenate(out) if out else np.zeros((0, params["fc2.w"].shape[0]))


def classify(params: dict, images, batch_size: int = 500) -> np.ndarray:
    """Predicted class (N,) int64 NumPy of images (N, C, H, W) in [-1, 1]."""
    out = [z.argmax(axis=1) for z, _ in _batched(params, images, batch_size, "classify")]
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)


def features(params: dict, images, batch_size: int = 500) -> np.ndarray:
    """Penultimate activations (N, D) float64 NumPy of images (N, C, H, W) in [-1, 1]: the FID features."""
    out = [f.astype(np.float64) for _, f in _batched(params, images, batch_size, "features")]
    return np.concatenate(out) if out else np.zeros((0, params["fc1.w"].shape[0]))


def accuracy(params: dict, images, labels, batch_size: int = 500) -> float:
    """Share of images whose predicted digit equals its label."""
    return float(np.mean(classify(params, images, batch_size) == to_numpy(labels)))


# --------------------------------------------------------------------------------------------
# training and the on-disk cache
# --------------------------------------------------------------------------------------------

def random_shifts(x, max_shift: int, rng):
    """x (N, C, H, W) with each image moved by its own random (dy, dx), each in [-max_shift, max_shift] pixels,
    the edge pixels repeated into the space it leaves (MNIST's edges are background). A fresh array."""
    xp = get_xp(x)
    N, _, H, W = x.shape
    s = max_shift
    padded = xp.pad(x, ((0, 0), (0, 0), (s, s), (s, s)), mode="edge")   # (N, C, H + 2s, W + 2s)
    dy, dx = rng.integers(0, 2 * s + 1, size=(2, N))                    # each image's window, drawn on the host
    rows = xp.asarray(dy[:, None] + np.arange(H))                       # (N, H)
    cols = xp.asarray(dx[:, None] + np.arange(W))                       # (N, W)
    moved = padded[xp.arange(N)[:, None, None], :, rows[:, :, None], cols[:, None, :]]   # (N, H, W, C)
    return xp.ascontiguousarray(moved.transpose(0, 3, 1, 2))            # (N, C, H, W)


def train_classifier(images, labels, *, cfg: ClassifierConfig | None = None, epochs: float = 2.0,
                     batch_size: int = BATCH_SIZE, lr: float = 2e-3, weight_decay: float = 1e-4, seed: int = 0,
                     max_shift: int = 0, log_every: int = 100, verbose: bool = True):
    """Train on images (N, C, H, W) float32 in [-1, 1] and int labels (N,) with AdamW; returns (params, history).

    The learning rate warms up for 100 steps and then decays by a cosine to 5% of ``lr`` at the end.
    ``max_shift`` > 0: each training image is moved by up to that many pixels each way (random_shifts), a fresh
    draw every time it is seen: on a small data set the net then learns digits, not the positions of its pixels.
    ``history`` is a dict with the per-step "loss" list (read every ``log_every`` steps, so the
    GPU is not made to wait every step), "steps", and "seconds".
    """

    cfg = cfg or ClassifierConfig(image_size=int(images.shape[-1]), image_channels=int(images.shape[1]))
    xp = device_xp()
    images = xp.asarray(images)
    labels = xp.asarray(labels)
    params = init_params(cfg, seed=seed, dtype=np.dtype(images.dtype))
    opt = AdamW(params, lr=lr, weight_decay=weight_decay, no_decay=lambda n: n.endswith(".b"))
    it = Batches(images, labels, batch_size=batch_size, seed=seed)
    lo, hi = int(labels.min()), int(labels.max())  # checked once here: the loss does not read GPU labels back
    if lo < 0 or hi >= cfg.num_classes:
        raise ValueError(f"train_classifier: labels must lie in [0, {cfg.num_classes}), got range [{lo}, {hi}]")
    total = max(1, int(round(epochs * it.batches_per_epoch)))
    history = {"loss": [], "steps": total}
    start = time.perf_counter()
    shifts = np.random.default_rng([seed, 1])   # the shifts' own stream: the batches are those of max_shift=0
    with Progress(total, "classifier", enabled=verbose, lines=max(1, total // log_every), stream=sys.stdout) as bar:
        for step in range(total):
            xb, yb = next(it)
            if max_shift:
                xb = random_shifts(xb, max_shift, shifts)
            loss, grads, _ = classifier_loss(params, xb, yb)
            opt.step(params, grads, lr=lr_schedule(step, lr, warmup_steps=min(100, total // 10),
                                                   total_steps=total, min_lr=0.05 * lr))
            bar.advance()
            if step % log_every == 0 or step == total - 1:
                history["loss"].append((step, float(loss)))
                bar.report(f"loss {history['loss'][-1][1]:.4f}")
    history["seconds"] = time.perf_counter() - start
    return params, history


def default_cache_dir(kind: str = "classifier") -> Path:
    """$TINYDDPM_CACHE/<kind> if that variable is set, else ~/.cache/tinyddpm/<kind> (kind: the cached model's folder)."""
    return read_or("TINYDDPM_CACHE", Path.home() / ".cache" / "tinyddpm") / kind


def folder_key(images, labels) -> str:
    """'folder-' and 16 hex digits of the SHA-256 of a folder's loaded images (uint8, their shape) and labels:
    the cache key of the classifier trained on them (the same pictures give the same key wherever they lie)."""
    digest = hashlib.sha256(repr((tuple(images.shape), str(images.dtype), tuple(labels.shape))).encode())
    digest.update(np.ascontiguousarray(to_numpy(images)).tobytes())
    digest.update(np.ascontiguousarray(to_numpy(labels), dtype=np.int64).tobytes())
    return "folder-" + digest.hexdigest()[:16]


def default_classifier_dir(key: str = "mnist") -> Path:
    """Where the classifier of data set ``key`` is cached: default_cache_dir() for MNIST (as always), a
    subfolder named ``key`` of it for any other ("fashion-mnist", folder_key(...))."""
    return default_cache_dir() if key == "mnist" else default_cache_dir() / key


def load_classifier(path, where: str = "load_classifier", dataset: str | None = None):
    """(params, config) of a classifier cache written by load_or_train_classifier.

    Anything else -- a corrupt file, another kind of checkpoint, weights missing or of shapes that do not
    chain into the network, NaN or inf, or (with ``dataset``, a cache key) a classifier of another data
    set -- raises a CheckpointError naming the file (delete it, or pass retrain=True to
    load_or_train_classifier, to train a new one). A cache that records no data set is MNIST's.
    """

    where = f"{where}: " if where else ""
    try:   # names, shapes, dtype (float32), sizes and finiteness, checked by load_checkpoint against the config
        ckpt = load_checkpoint(path, expect=cache_expectation("tinyddpm.classifier", "a classifier checkpoint", dataset,
                                                              weights_problem, param_shapes))
    except CheckpointError as e:
        raise CheckpointError(f"{where}{e}") from None
    return ckpt.params, ckpt.config


ARCHITECTURE = ("image_size", "channels", "features", "num_classes")   # the config fields that fix the weights' shapes
DTYPE = np.dtype(np.float32)   # a classifier cache's weights (load_or_train_classifier trains in float32)


def config_of(config, cls):
    """``cls`` (ClassifierConfig or NoisyClassifierConfig) from a cache's config dict when it records every field
    of ARCHITECTURE (older caches and hand-made ones may not), else None; ValueError when they are not usable."""
    if not all(key in config for key in ARCHITECTURE):
        return None
    fields = {key: config[key] for key in cls.__dataclass_fields__ if key in config}
    fields["channels"] = tuple(fields["channels"]) if isinstance(fields["channels"], list) else fields["channels"]
    ok = all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 16
             for v in [fields[k] for k in fields if k != "channels"] + list(fields["channels"] or [None]))
    if not ok or len(fields["channels"]) != len(CONV_LAYERS):
        raise ValueError(f"its config's architecture is not usable ({ {k: fields[k] for k in fields} })")
    return cls(**fields)


def cache_expectation(kind: str, what: str, dataset, problem_of, shapes_of, cls=ClassifierConfig):
    """The ``expect`` of load_checkpoint for a classifier cache of ``kind`` (shared with classifiers/guide.py):
    its config's kind (and data set), the weights' names and chained shapes (``problem_of``), the shapes its config
    gives (``shapes_of(cfg)``) where it records them, float32, and no NaN or inf."""
    fix = ("delete it to train a new classifier" if kind == "tinyddpm.classifier"
           else "delete it, or pass retrain=True, to train a new one")

    def expect(config, path, members) -> Expected:
        config = config if isinstance(config, dict) else {}
        if config.get("kind") != kind:
            raise CheckpointError(f"{path} is not {what} (config kind {config.get('kind')!r}, {what} has "
                                  f"{kind!r}); {fix}")
        trained_on = config.get("dataset", "mnist")
        if dataset is not None and trained_on != dataset:
            raise CheckpointError(f"{path} holds a classifier of {trained_on!r}, this evaluation needs one of "
                                  f"{dataset!r}; pass another --classifier-dir, or {fix}")
        declared = {key[len("params/"):]: m for key, m in members.items() if key.startswith("params/")}
        problem = problem_of(declared)
        if problem:
            noun = "classifier weights" if kind == "tinyddpm.classifier" else "noisy-classifier weights"
            raise CheckpointError(f"{path} does not hold {noun} ({problem}); {fix}")
        try:
            cfg = config_of(config, cls)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}; {fix}") from None
        shapes = {name: m.shape for name, m in declared.items()} if cfg is None else shapes_of(cfg)
        label = "the classifier weights" if kind == "tinyddpm.classifier" else "the weights"
        return Expected(arrays={f"params/{name}": (shape, DTYPE) for name, shape in shapes.items()},
                        finite={f"params/{name}": f"{label} {name!r}" for name in shapes}, advice=f"; {fix}")
    return expect


def param_shapes(cfg: ClassifierConfig) -> dict:
    """{name: shape} of init_params(cfg), computed without making the arrays."""
    shapes, c_in = {}, cfg.image_channels
    for (name, _), c_out in zip(CONV_LAYERS, cfg.channels):
        shapes[f"{name}.w"], shapes[f"{name}.b"] = (c_out, c_in, 3, 3), (c_out,)
        c_in = c_out
    s = _spatial_after_convs(cfg.image_size)
    shapes["fc1.w"], shapes["fc1.b"] = (cfg.features, c_in * s * s), (cfg.features,)
    shapes["fc2.w"], shapes["fc2.b"] = (cfg.num_classes, cfg.features), (cfg.num_classes,)
    return shapes


def weights_problem(params: dict) -> str:
    """What keeps ``params`` from being the network of init_params (names, ranks, chained sizes), or ''."""
    names = [name for name, _ in CONV_LAYERS] + ["fc1", "fc2"]
    wanted = {f"{n}.{p}" for n in names for p in "wb"}
    missing, extra = sorted(wanted - set(params)), sorted(set(params) - wanted)
    if missing or extra:
        return f"missing {missing[:4]}, unexpected {extra[:4]}"
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    c_in = shapes["conv1.w"][1] if len(shapes["conv1.w"]) == 4 and shapes["conv1.w"][1] in (1, 3) else 1
    for name in names:
        w, b = shapes[f"{name}.w"], shapes[f"{name}.b"]
        conv = not name.startswith("fc")
        rank_ok = len(w) == (4 if conv else 2) and len(b) == 1 and b[0] == w[0]
        if not rank_ok or (conv and (w[1] != c_in or w[2:] != (3, 3))) or (name == "fc2" and w[1] != c_in):
            return f"{name}.w {w} and {name}.b {b} do not follow a layer of {c_in} outputs"
        c_in = w[0]
    return ""


def training_recipe(n_train: int, batch_size: int = BATCH_SIZE, epochs: float | None = None) -> tuple:
    """(epochs, max_shift) for a training split of ``n_train`` images: ``epochs`` as given (no shifts); else 2
    epochs of a large split, and for a split of fewer than SMALL_DATA images as many epochs as MIN_STEPS steps
    take (at least 2), with random shifts of up to SMALL_DATA_SHIFT pixels: few images seen many times are
    learnt by heart, not as digits, unless each time they look a little different."""
    if epochs is not None:
        return float(epochs), 0
    if n_train >= SMALL_DATA:
        return 2.0, 0
    per_epoch = max(1, n_train // batch_size)
    return max(2.0, MIN_STEPS / per_epoch), SMALL_DATA_SHIFT


def load_or_train_classifier(cache_dir=None, *, epochs: float | None = None, seed: int = 0, data_dir=None,
                             source: str = "auto", retrain: bool = False, verbose: bool = True,
                             train_data=None, test_data=None, dataset: str = "mnist", data_key: str | None = None):
    """The trained classifier of a data set: loaded from ``cache_dir/classifier.npz``, or trained once and saved there.

    Returns (params, info): params on the current device (float32), info the saved config dict
    (architecture, training settings, "dataset" (the cache key), "test_accuracy" on the held-out test
    split, "data_source", "train_seconds"). ``dataset``: "mnist" or "fashion-mnist", whose splits are read
    with load_dataset(dataset, split, data_dir, source) unless given as ``train_data`` / ``test_data``
    (anything with uint8 ``images`` (N, H, W) or (N, C, H, W), int ``labels``, ``source`` and, when not ten,
    ``class_names``). ``epochs`` None: training_recipe's for the split's size (2 epochs of MNIST; on the shipped
    subset MIN_STEPS steps with random shifts); a number: that many epochs, no shifts. ``data_key`` names other
    data (folder_key of a folder's pictures). ``cache_dir`` defaults to default_classifier_dir(key). A cache that is
    not a usable classifier of that data raises a CheckpointError naming it (load_classifier).
    """

    key = data_key or dataset
    path = Path(cache_dir or default_classifier_dir(key)).expanduser() / CHECKPOINT_NAME
    if path.is_file() and not retrain:
        params, config = load_classifier(path, where="load_or_train_classifier", dataset=key)
        if verbose:
            accuracy_ = config.get("test_accuracy")
            shown = f"{accuracy_:.4f}" if isinstance(accuracy_, (int, float)) else "not recorded"
            print(f"tinyddpm.classifiers.judge: loaded {path} (test accuracy {shown})", flush=True)
        return params, config

    train = train_data if train_data is not None else load_dataset(dataset, "train", data_dir=data_dir, source=source)
    test = test_data if test_data is not None else load_dataset(dataset, "test", data_dir=data_dir, source=source)
    x_train, x_test = pixels_to_model_range(train.images), pixels_to_model_range(test.images)   # (N, C, H, W)
    cfg = ClassifierConfig(image_size=int(x_train.shape[-1]), image_channels=int(x_train.shape[1]),
                           num_classes=len(getattr(train, "class_names", None) or range(10)))
    batch_size = min(BATCH_SIZE, len(x_train))   # a small folder: one batch of all its pictures
    epochs, max_shift = training_recipe(len(x_train), batch_size, epochs)
    params, history = train_classifier(x_train, train.labels, cfg=cfg, epochs=epochs, batch_size=batch_size,
                                       seed=seed, max_shift=max_shift, verbose=verbose)
    test_accuracy = accuracy(params, x_test, test.labels)
    config = {"kind": "tinyddpm.classifier", **asdict(cfg), "channels": list(cfg.channels), "dataset": key,
              "epochs": epochs, "max_shift": max_shift, "batch_size": batch_size, "seed": seed,
              "steps": history["steps"],
              "train_seconds": round(history["seconds"], 1), "test_accuracy": test_accuracy,
              "test_size": len(test.labels), "data_source": train.source, "test_source": test.source}
    save_checkpoint(path, config=config, params=params, step=history["steps"],
                    extra={"loss": history["loss"]})
    if verbose:
        print(f"tinyddpm.classifiers.judge: trained in {history['seconds']:.0f} s, test accuracy {test_accuracy:.4f}; "
              f"saved {path}", file=sys.stdout, flush=True)
    return params, config


if __name__ == "__main__":  # python -m tinyddpm.classifiers.judge [--retrain] [fashion-mnist]: train (or load) and report
    _, info = load_or_train_classifier(retrain="--retrain" in sys.argv[1:],
                                       dataset="fashion-mnist" if "fashion-mnist" in sys.argv[1:] else "mnist")
    print({k: info[k] for k in ("test_accuracy", "train_seconds", "steps", "data_source")})
