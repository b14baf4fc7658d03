"""Optimisation: AdamW, a learning-rate schedule, global-norm gradient clipping, an EMA of the weights.

These per-tensor versions are the readable reference. The training step runs the same arithmetic as one pass over
flat buffers (fused_update.py: clip + AdamW + EMA at once; on the GPU a reduction and one elementwise CUDA kernel,
kernels/adamw_ema.cu), which tests/test_fused_update.py checks against the classes and functions here.

Parameters and gradients are flat dicts with the same keys, ``{"down.0.res.conv1.w": array, ...}``,
NumPy or CuPy. Every update below is a handful of whole-array operations per tensor (a loop over
the dict's tensors, never over elements), done in place so that the arrays keep their identity:
a model that holds ``params`` sees the new values without being told.

AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization"), for step t = 1, 2, ...
with gradient g, learning rate lr and weight decay wd:

    p   <- p * (1 - lr * wd)                     decay, decoupled from the gradient statistics
    m   <- b1 * m + (1 - b1) * g                 first moment (running mean of g)
    v   <- b2 * v + (1 - b2) * g^2               second moment (running mean of g^2)
    m^  =  m / (1 - b1^t)                        bias corrections: m and v start at 0, so early
    v^  =  v / (1 - b2^t)                        averages are too small by exactly these factors
    p   <- p - lr * m^ / (sqrt(v^) + eps)

This is the arithmetic of ``torch.optim.AdamW`` (tests/test_optim.py checks it to 1e-10).

Global-norm clipping (as ``torch.nn.utils.clip_grad_norm_``):

    total = sqrt(sum over tensors of sum(g^2))
    g    <- g * min(1, max_norm / (total + 1e-6))

EMA of the weights (the averaged weights usually sample better than the raw ones):

    e <- d * e + (1 - d) * p,     d = decay, or min(decay, (1 + n) / (10 + n)) with warmup
                                  (n = number of updates before this one)
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np

from ..backend import get_xp, to_numpy
from ..checks import check_int

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------------------------
# checks shared by the classes below: a mismatch names the tensor and the shapes, at once
# --------------------------------------------------------------------------------------------

def _check_params(where: str, params) -> object:
    """Check a flat dict of float arrays on one backend and return its array module."""
    if not isinstance(params, dict):
        raise TypeError(f"{where}: expected a dict {{name: array}}, got {type(params).__name__}")
    if all(type(p) is np.ndarray and isinstance(name, str) and p.dtype in FLOAT_DTYPES for name, p in params.items()):
        return np  # the common case in one pass: this runs three times per training step, over every tensor
    for name, p in params.items():
        if not isinstance(name, str):
            raise TypeError(f"{where}: parameter names must be strings, got {name!r}")
        if not hasattr(p, "dtype") or not hasattr(p, "shape"):
            raise TypeError(f"{where}: {name!r} must be a NumPy or CuPy array, got {type(p).__name__}")
        if np.dtype(p.dtype) not in FLOAT_DTYPES:
            raise TypeError(f"{where}: {name!r} has dtype {p.dtype} (shape {tuple(p.shape)}); "
                            "supported: float32, float64")
    return get_xp(*params.values(), op=where)


def _check_same_keys(where: str, expected: Iterable[str], got: dict, what: str) -> None:
    expected = set(expected)
    missing, extra = sorted(expected - set(got)), sorted(set(got) - expected)
    if missing or extra:
        raise ValueError(f"{where}: {what} do not match the parameters: missing {missing}, unexpected {extra}")


def _check_like(where: str, name: str, a, ref, what: str) -> None:
    """``a`` must have the shape and dtype of ``ref`` (the parameter or state it pairs with)."""
    if tuple(a.shape) != tuple(ref.shape):
        raise ValueError(f"{where}: {what} {name!r} has shape {tuple(a.shape)}, "
                         f"the parameter has {tuple(ref.shape)}")
    if np.dtype(a.dtype) != np.dtype(ref.dtype):
        raise TypeError(f"{where}: {what} {name!r} has dtype {a.dtype}, the parameter has {ref.dtype} "
                        f"(shape {tuple(ref.shape)})")


def _load_array_into(where: str, dst, src, key: str) -> None:
    """Copy ``src`` (NumPy or CuPy, e.g. from a checkpoint) into ``dst`` in place, on dst's device."""
    if not hasattr(src, "shape"):
        raise TypeError(f"{where}: state {key!r} must be an array, got {type(src).__name__}")
    _check_like(where, key, src, dst, "state")
    xp = get_xp(dst)
    dst[...] = to_numpy(src) if xp is np else xp.asarray(src)  # host <- GPU needs an explicit copy


# --------------------------------------------------------------------------------------------
# AdamW
# --------------------------------------------------------------------------------------------

class AdamW:
    """AdamW over a flat dict of parameters; ``step`` updates them in place.

    Arguments:
        params        {name: array}; the moments m, v are created as zeros like each array
        lr            base learning rate (``step(..., lr=...)`` overrides it for one step, which is
                      how a schedule is applied: ``opt.step(params, grads, lr=lr_schedule(opt.t, ...))``)
        betas         (b1, b2), the decay rates of the first and second moments
        eps           added to sqrt(v^) in the denominator
        weight_decay  decoupled decay rate wd (0 turns it off)
        no_decay      parameters exempt from weight decay: a set of names, or a callable
                      ``name -> bool`` (True = no decay), e.g. ``lambda n: n.endswith((".b", ".g"))``
                      for the U-Net's biases and GroupNorm gains; None decays every parameter, like torch.

    State: ``t`` (the number of steps taken) and the dicts ``m`` and ``v``.
    """

    def __init__(self, params: dict, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, no_decay: Callable[[str], bool] | Iterable[str] | None = None):
        where = "AdamW"
        xp = _check_params(where, params)
        b1, b2 = betas
        if not lr >= 0.0:
            raise ValueError(f"{where}: lr must be >= 0, got {lr}")
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"{where}: betas must lie in [0, 1), got {betas}")
        if not eps > 0.0:
            raise ValueError(f"{where}: eps must be > 0, got {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"{where}: weight_decay must be >= 0, got {weight_decay}")
        self.lr, self.beta1, self.beta2 = float(lr), float(b1), float(b2)
        self.eps, self.weight_decay = float(eps), float(weight_decay)
        self.decays = {name: True for name in params}  # {name: whether weight decay applies}
        if callable(no_decay):
            self.decays = {name: not no_decay(name) for name in params}
        elif no_decay is not None:
            unknown = sorted(set(no_decay) - set(params))
            if unknown:
                raise ValueError(f"{where}: no_decay names {unknown} are not parameters")
            self.decays = {name: name not in set(no_decay) for name in params}
        self.m = {name: xp.zeros_like(p) for name, p in params.items()}
        self.v = {name: xp.zeros_like(p) for name, p in params.items()}
        self.t = 0

    def step(self, params: dict, grads: dict, lr: float | None = None) -> None:
        """One AdamW update of every parameter, in place. ``lr`` overrides the base rate for this step."""
        where = "AdamW.step"
        _check_same_keys(where, self.m, params, "params")
        _check_same_keys(where, self.m, grads, "grads")
        if _check_params(where, params) is not _check_params(where, grads):
            raise TypeError(f"{where}: params and grads are on two backends; move them to one device first")
        for name, p in params.items():
            _check_like(where, name, p, self.m[name], "param")
            _check_like(where, name, grads[name], p, "grad")
        lr = self.lr if lr is None else float(lr)
        self.t += 1
        b1, b2, t = self.beta1, self.beta2, self.t
        step_size = lr / (1.0 - b1 ** t)                  # lr / (1 - b1^t) folds the m^ correction in
        sqrt_bias2 = math.sqrt(1.0 - b2 ** t)             # sqrt(v^) = sqrt(v) / sqrt(1 - b2^t)
        xp = get_xp(*params.values())
        for name, p in params.items():
            g, m, v = grads[name], self.m[name], self.v[name]
            if self.weight_decay and self.decays[name]:
                p *= 1.0 - lr * self.weight_decay         # p <- p (1 - lr wd)
            m *= b1
            m += (1.0 - b1) * g                           # m <- b1 m + (1 - b1) g
            v *= b2
            v += (1.0 - b2) * (g * g)                     # v <- b2 v + (1 - b2) g^2
            denom = xp.sqrt(v) / sqrt_bias2 + self.eps    # sqrt(v^) + eps
            p -= step_size * (m / denom)                  # p <- p - lr m^ / (sqrt(v^) + eps)

    def state_dict(self) -> dict:
        """A flat dict: scalars ``t, lr, beta1, beta2, eps, weight_decay`` and arrays ``m/<name>``, ``v/<name>``.

        The arrays are the live state (not copies), as in torch; save_checkpoint copies them to disk.
        """
        state = {"t": self.t, "lr": self.lr, "beta1": self.beta1, "beta2": self.beta2,
                 "eps": self.eps, "weight_decay": self.weight_decay}
        state.update({f"m/{name}": a for name, a in self.m.items()})
        state.update({f"v/{name}": a for name, a in self.v.items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore ``t``, the hyper-parameters and the moments (copied in place, onto this optimizer's device).

        Scalars may be Python numbers or 0-d arrays (as a checkpoint returns them).
        """
        where = "AdamW.load_state_dict"
        scalars = ("t", "lr", "beta1", "beta2", "eps", "weight_decay")
        expected = set(scalars) | {f"m/{n}" for n in self.m} | {f"v/{n}" for n in self.v}
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or extra:
            raise ValueError(f"{where}: state does not match this optimizer's parameters: "
                             f"missing {missing}, unexpected {extra}")
        for name in self.m:
            _load_array_into(where, self.m[name], state[f"m/{name}"], f"m/{name}")
            _load_array_into(where, self.v[name], state[f"v/{name}"], f"v/{name}")
        self.t = int(state["t"])
        self.lr, self.beta1, self.beta2 = float(state["lr"]), float(state["beta1"]), float(state["beta2"])
        self.eps, self.weight_decay = float(state["eps"]), float(state["weight_decay"])


# --------------------------------------------------------------------------------------------
# learning-rate schedule
# --------------------------------------------------------------------------------------------

def lr_schedule(step: int, base_lr: float, warmup_steps: int = 0, total_steps: int | None = None,
                min_lr: float = 0.0) -> float:
    """The learning rate for update number ``step`` (0 for the first update; pass ``optimizer.t``).

    Linear warmup, then constant, or (when ``total_steps`` is given) a cosine decay to ``min_lr``:

        step < W:        lr = base_lr * (step + 1) / W            W = warmup_steps
        no total_steps:  lr = base_lr
        otherwise:       q  = min(1, (step - W) / (total_steps - W))
                         lr = min_lr + (base_lr - min_lr) * (1 + cos(pi q)) / 2

    A pure function of ``step``: a resumed run gets the same rates without any saved schedule state.
    """
    where = "lr_schedule"
    step = check_int(where, "step", step, minimum=0)
    if warmup_steps < 0:
        raise ValueError(f"{where}: warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps is not None and total_steps <= warmup_steps:
        raise ValueError(f"{where}: total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if total_steps is None:
        return float(base_lr)
    q = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * q))


# --------------------------------------------------------------------------------------------
# gradient clipping
# --------------------------------------------------------------------------------------------

def clip_grad_norm(grads: dict, max_norm: float):
    """Scale every gradient in place so that their global L2 norm is at most ``max_norm``.

    Returns the norm *before* clipping as a 0-d array of the gradients' module. On CuPy it stays on
    the GPU: nothing here waits for the GPU, so call ``float(norm)`` only when you log it (every k
    steps), not every step. As in torch, the scale is applied even when it is 1, and a NaN or inf
    norm makes the gradients NaN (nothing is silently replaced; the NaN shows up in the loss).
    """
    where = "clip_grad_norm"
    xp = _check_params(where, grads)
    if not max_norm > 0.0:
        raise ValueError(f"{where}: max_norm must be > 0, got {max_norm}")
    if not grads:
        return xp.asarray(0.0)
    norms = [xp.linalg.norm(g.reshape(-1)) for g in grads.values()]   # one L2 norm per tensor
    total = xp.linalg.norm(xp.stack([xp.asarray(n) for n in norms]))  # sqrt(sum of squared norms)
    scale = xp.minimum(max_norm / (total + 1e-6), 1.0)                # min(1, max_norm / (total + 1e-6))
    scales = {dt: scale.astype(dt) for dt in {g.dtype for g in grads.values()}}  # one cast per dtype, not per tensor
    for g in grads.values():
        g *= scales[g.dtype]
    return xp.asarray(total)


# --------------------------------------------------------------------------------------------
# exponential moving average of the weights
# --------------------------------------------------------------------------------------------

class EMA:
    """An exponential moving average of the parameters: ``ema.params`` is the dict to sample with.

    ``EMA(params, decay=0.9999, warmup=False)`` starts from a copy of ``params``. Each
    ``update(params)`` (call it after every optimizer step) moves the average towards the current
    weights: e <- d e + (1 - d) p. With ``warmup=True`` the decay starts small,
    d = min(decay, (1 + n) / (10 + n)) for the (n+1)-th update, so the average forgets the random
    initialisation within the first few hundred steps instead of ~1/(1 - decay) steps.
    """

    def __init__(self, params: dict, decay: float = 0.9999, warmup: bool = False):
        where = "EMA"
        xp = _check_params(where, params)
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"{where}: decay must lie in [0, 1], got {decay}")
        self.decay, self.warmup, self.num_updates = float(decay), bool(warmup), 0
        self.params = {name: xp.array(p, copy=True) for name, p in params.items()}

    def current_decay(self) -> float:
        """The decay the next ``update`` will use."""
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    def update(self, params: dict) -> None:
        """e <- d e + (1 - d) p for every tensor, in place."""
        where = "EMA.update"
        _check_same_keys(where, self.params, params, "params")
        _check_params(where, params)
        for name, p in params.items():
            _check_like(where, name, p, self.params[name], "param")
        d = self.current_decay()
        for name, p in params.items():
            e = self.params[name]
            e += (1.0 - d) * (p - e)   # the same as e <- d e + (1 - d) p, written as a step towards p
        self.num_updates += 1

    def state_dict(self) -> dict:
        """Scalars ``decay, warmup, num_updates`` and the averaged arrays as ``avg/<name>`` (live, not copies)."""
        state = {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates}
        state.update({f"avg/{name}": a for name, a in self.params.items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore the average and the counters (arrays copied in place, onto this EMA's device)."""
        where = "EMA.load_state_dict"
        expected = {"decay", "warmup", "num_updates"} | {f"avg/{n}" for n in self.params}
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or extra:
            raise ValueError(f"{where}: state does not match this EMA's parameters: "
                             f"missing {missing}, unexpected {extra}")
        for name, e in self.params.items():
            _load_array_into(where, e, state[f"avg/{name}"], f"avg/{name}")
        self.decay, self.warmup = float(state["decay"]), bool(state["warmup"])
        self.num_updates = int(state["num_updates"])

    @classmethod
    def from_state_dict(cls, state: dict) -> "EMA":
        """An EMA rebuilt from a state dict alone (e.g. ``EMA.from_state_dict(ckpt.ema).params`` to sample)."""
        arrays = {key[len("avg/"):]: a for key, a in state.items() if key.startswith("avg/")}
        ema = cls(arrays, decay=float(state["decay"]), warmup=bool(state["warmup"]))
        ema.num_updates = int(state["num_updates"])
        return ema
