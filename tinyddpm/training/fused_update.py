"""Clip + AdamW + EMA in one pass over flat buffers: the end of every training step.

The arithmetic is optim.py's, unchanged: its per-tensor clip_grad_norm, AdamW.step and EMA.update are the readable
reference, and tests/test_fused_update.py checks this file against them to 1e-12 in float64. Here it is written
once over flat buffers (flat.py) g, p, m, v, e that each hold all n parameters of the model end to end, the
n_decay weight-decayed ones first. For step t with learning rate lr:

    c   = min(1, max_norm / (||g|| + 1e-6))            ||g|| = sqrt(sum_i g_i^2), all gradients together
    g  <- c g                                           global-norm clipping
    p_i <- p_i (1 - lr wd)          for i < n_decay     decoupled weight decay
    m  <- b1 m + (1 - b1) g                             first moment
    v  <- b2 v + (1 - b2) g^2                           second moment
    p  <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)      (bias-corrected m^ and v^)
    e  <- e + (1 - d) (p - e)                           EMA; d = the decay, or its warmup (EMA.current_decay)

Why flat. Per tensor those lines are ~20 array operations for each of the U-Net's tensors (245 in the gpu preset):
on a GPU ~5,000 kernel launches per step, most far too small to fill it, each reading its tensors again. Over flat
buffers the NumPy path (update_arrays) is a dozen whole-array operations, and the CuPy path is two kernels
(kernels/adamw_ema.cu): a reduction for ||g||^2, then one elementwise pass that reads g, p, m, v, e once and writes
p, m, v, e once. Decayed tensors stored first make weight decay one comparison (i < n_decay), not a mask to read.

Nothing waits for the GPU. ||g|| and c stay on the device; the per-step scalars (lr, the bias corrections of step
t, 1 - d) are computed on the host in float64 (step_scalars) and reach the kernel as one small device array copied
before the launch, never as launch arguments, so the step can later be captured in a CUDA graph.

    update = FusedUpdate(params, optimizer, ema)     # params, optimizer.m / .v and ema.params become flat views
    update.grads.gather(grads)                       # the gradient dict into the flat gradient buffer (one copy)
    norm = update.clip_adamw_ema(lr, max_norm)       # = clip_grad_norm; optimizer.step; ema.update
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..backend import get_xp
from ..kernels.adamw_ema import AdamWEMAKernel
from .flat import flatten_in_place
from .optim import EMA, AdamW


class StepScalars(NamedTuple):
    """The per-step scalars of the update, host floats computed in float64. The kernel reads them from one device
    array in this order, which must be kernels/adamw_ema.py's HYPER and adamw_ema.cu's enum Hyper (a test checks)."""
    max_norm: float               # the clip threshold
    weight_decay_factor: float    # 1 - lr wd (1 when wd = 0)
    b1: float
    one_minus_b1: float           # 1 - b1, as optim.AdamW computes it (rounded once, in float64)
    b2: float
    one_minus_b2: float
    step_size: float              # lr / (1 - b1^t): the bias correction of m folded into the rate
    sqrt_bias2: float             # sqrt(1 - b2^t): sqrt(v^) = sqrt(v) / sqrt(1 - b2^t)
    eps: float
    ema_rate: float               # 1 - d


def step_scalars(optimizer: AdamW, ema: EMA, lr: float, max_norm: float) -> StepScalars:
    """The scalars of AdamW step ``optimizer.t`` (already counted) and of the EMA's next update, as optim.py has it."""
    b1, b2, t = optimizer.beta1, optimizer.beta2, optimizer.t
    return StepScalars(max_norm=float(max_norm), weight_decay_factor=1.0 - lr * optimizer.weight_decay,
                       b1=b1, one_minus_b1=1.0 - b1, b2=b2, one_minus_b2=1.0 - b2,
                       step_size=lr / (1.0 - b1 ** t), sqrt_bias2=math.sqrt(1.0 - b2 ** t), eps=optimizer.eps,
                       ema_rate=1.0 - ema.current_decay())


def update_arrays(p, m, v, e, g, n_decay: int, s: StepScalars):
    """The fused update as whole-array operations on 1-D arrays (NumPy, or CuPy as the kernel's check); in place.

    g is clipped in place too. Returns ||g|| before clipping, a 0-d array of g's module (no host read).
    """
    xp = get_xp(p, g)
    norm = xp.sqrt(xp.dot(g, g))                          # ||g||, over every gradient at once
    g *= xp.minimum(s.max_norm / (norm + 1e-6), 1.0)      # g <- g min(1, max_norm / (||g|| + 1e-6)); NaN stays NaN
    p[:n_decay] *= s.weight_decay_factor                  # p <- p (1 - lr wd), the decayed tensors only
    m *= s.b1
    m += s.one_minus_b1 * g                               # m <- b1 m + (1 - b1) g
    v *= s.b2
    v += s.one_minus_b2 * (g * g)                         # v <- b2 v + (1 - b2) g^2
    denom = xp.sqrt(v) / s.sqrt_bias2 + s.eps             # sqrt(v^) + eps
    p -= s.step_size * (m / denom)                        # p <- p - lr m^ / (sqrt(v^) + eps)
    e += s.ema_rate * (p - e)                             # e <- d e + (1 - d) p, as a step towards p
    return xp.asarray(norm)


class FusedUpdate:
    """The parameters, AdamW's moments and the EMA in flat buffers, and the one-pass update over them.

    Construction moves ``params``, ``optimizer.m``, ``optimizer.v`` and ``ema.params`` into flat buffers (values
    kept): each of those dicts keeps its keys and order and now holds views (flat.flatten_in_place). ``optimizer``
    and ``ema`` stay the owners of the settings and counters (t, num_updates) and of state_dict / load_state_dict,
    which read and write the views: checkpoints keep their named arrays, and loading one fills the flat buffers.

    Buffers (flat.FlatBuffer): ``params``, ``grads``, ``m``, ``v``, ``avg`` (the EMA), all in one storage order,
    the weight-decayed tensors first (``n_decay`` elements). On CuPy the update is kernels/adamw_ema.cu.
    """

    def __init__(self, params: dict, optimizer: AdamW, ema: EMA):
        for what, names in (("AdamW's moments", optimizer.m), ("the EMA's weights", ema.params)):
            if set(names) != set(params):
                raise ValueError(f"FusedUpdate: {what} do not match the parameters: missing "
                                 f"{sorted(set(params) - set(names))}, unexpected {sorted(set(names) - set(params))}")
        decayed = [name for name in params if optimizer.decays[name]]
        order = decayed + [name for name in params if not optimizer.decays[name]]   # decayed first: i < n_decay
        self.optimizer, self.ema = optimizer, ema
        self.params = flatten_in_place(params, order)
        self.m = flatten_in_place(optimizer.m, order)
        self.v = flatten_in_place(optimizer.v, order)
        self.avg = flatten_in_place(ema.params, order)
        self.grads = self.params.zeros_like()
        self.n_decay = sum(math.prod(params[name].shape) for name in decayed)
        xp = get_xp(self.params.data)
        self.kernel = None if xp is np else AdamWEMAKernel(self.params.data.dtype)   # CuPy: the .cu kernels

    def clip_adamw_ema(self, lr: float | None = None, max_norm: float = math.inf):
        """Clip ``grads`` (gathered before), one AdamW step with rate ``lr`` (None: the optimizer's), one EMA update.

        Equals ``clip_grad_norm(grads, max_norm); optimizer.step(params, grads, lr); ema.update(params)`` (optim.py).
        Returns ||g|| before clipping as a 0-d device array (on CuPy a buffer the next step overwrites: copy it to
        keep it). ``max_norm=inf`` does not clip. It is ``prepare`` (the host's part) then ``apply`` (the device's).
        """
        return self.apply(self.prepare(lr, max_norm))

    def prepare(self, lr: float | None = None, max_norm: float = math.inf) -> StepScalars:
        """The host's part of a step: count it, compute its scalars and, on CuPy, copy them to the device.

        Split from ``apply`` so that a CUDA graph (training/cuda_graph.py) can replay ``apply`` with each step's
        scalars: they are written to the device buffer the kernel reads, outside the graph.
        """
        if not max_norm > 0.0:
            raise ValueError(f"FusedUpdate.clip_adamw_ema: max_norm must be > 0, got {max_norm}")
        optimizer, ema = self.optimizer, self.ema
        lr = optimizer.lr if lr is None else float(lr)
        optimizer.t += 1                                   # AdamW counts the step before using t
        scalars = step_scalars(optimizer, ema, lr, max_norm)
        ema.num_updates += 1                               # the EMA counts its update after using it
        if self.kernel is not None:
            self.kernel.load(scalars)                      # host -> device, before the launches
        return scalars

    def apply(self, scalars: StepScalars):
        """The device's part: the update of the flat buffers with the scalars ``prepare`` made (no host work)."""
        buffers = (self.params.data, self.m.data, self.v.data, self.avg.data, self.grads.data)
        if self.kernel is not None:                        # CuPy: two kernels, kernels/adamw_ema.cu
            return self.kernel.launch(*buffers, self.n_decay)
        return update_arrays(*buffers, self.n_decay, scalars)
