"""Gradient checking: prove a hand-written backward right with finite differences in float64.

For an op y = f(x) and a random upstream gradient dy, the backward must return
dL/dx for L = sum(y * dy). Each checked entry x_i is compared with a central difference

    dL/dx_i ~ sum( [8 (f(x + h e_i) - f(x - h e_i)) - (f(x + 2h e_i) - f(x - 2h e_i))] * dy ) / (12 h)

a 4-point stencil whose truncation error is O(h^4), so h = 1e-4 in float64 leaves both truncation
(~1e-16) and round-off (~1e-12) far below the thresholds. Differences of the outputs are taken
before the sum with dy, so outputs that x_i does not touch cancel exactly.

The error reported for a tensor is the largest elementwise relative error

    max_i |a_i - n_i| / max(1e-8, |a_i| + |n_i|, 1e-4 * max_j |a_j|)

(analytic a, numerical n). Below 1e-7 means right for one op; a composite of many ops accumulates
more round-off, so blocks and whole networks use 1e-5. Above 1e-4 means a bug.

The last term of the denominator is the checker's resolution. The numerical gradient carries an
absolute round-off of about eps * |L| / h whatever the size of the entry, so an entry whose true
gradient is, by a chance cancellation, 1e-5 of its tensor's largest (the whole U-Net draws such
entries) is known to only a few digits even when the backward is exact. Such entries are measured
against a ten-thousandth of the tensor's scale instead of their own size: a wrong value there still
shows (an analytic 0 where the truth is 1e-3 of the scale scores 1), round-off does not.

Run ``python -m tinyddpm.gradcheck`` to check every op and print a table; the exit status is
non-zero if any check fails. The tests in ``tests/`` call ``check_gradients`` with shapes drawn
by hypothesis.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import ops
from .backend import get_xp, make_rng, to_device, to_numpy
from .classifiers import guide
from .nn.unet import UNetConfig, init_params, known_zero_gradients, unet_backward, unet_forward
from .ops.groupnorm_silu import groupnorm_silu_backward, groupnorm_silu_forward

OP_TOLERANCE = 1e-7     # one op
BLOCK_TOLERANCE = 1e-5  # a block or the whole network
# A composite's outputs carry more round-off, which the difference divides by h: a larger step there
# (truncation ~ h^4 = 1e-12 still far below the tolerance) keeps round-off small too.
BLOCK_STEP = 1e-3


RESOLUTION = 1e-4       # entries below this fraction of their tensor's largest gradient are compared at that size


def relative_error(analytic, numerical, scale: float = 0.0) -> float:
    """max_i |a_i - n_i| / max(1e-8, |a_i| + |n_i|, RESOLUTION * scale) over the entries given.

    ``scale`` is the largest analytic gradient of the whole tensor (the entries given may be a sample)."""
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numerical, dtype=np.float64)
    if a.size == 0:
        return 0.0
    floor = max(1e-8, RESOLUTION * float(scale))
    return float(np.max(np.abs(a - n) / np.maximum(floor, np.abs(a) + np.abs(n))))


def _as_tuple(grads):
    return grads if isinstance(grads, tuple) else (grads,)


def check_gradients(forward: Callable, backward: Callable, arrays: dict, *, seed: int = 0,
                    h: float = 1e-4, max_entries: int = 32, dy=None, known_zero=None) -> dict:
    """Compare ``backward`` with finite differences of ``forward`` for every array in ``arrays``.

    forward(*arrays.values()) returns (y, cache); backward(dy, cache) returns the gradients of those
    arrays in the same order (a tuple, or one array for a one-input op). Tensors with more than
    ``max_entries`` entries are checked at that many randomly chosen entries (seeded).
    Returns {name: max relative error}. The arrays should be float64; they are restored exactly.

    ``known_zero`` maps a name to flat indices whose true gradient is exactly zero by the math (the key
    bias of attention: softmax ignores a constant added to every score of a row). A finite difference
    there measures only round-off, so those entries are not sampled; instead the analytic gradient
    must be zero to round-off (at most 1e-12 of the tensor's largest gradient), else the error is 1.
    """
    names = list(arrays)
    values = list(arrays.values())
    xp = get_xp(*values, op="check_gradients")
    # A stream of its own: tests draw their inputs from default_rng(seed), and dy must not repeat them
    # (for a normalising op, dy equal to x makes the true gradient almost zero).
    rng = np.random.default_rng((seed, 2))

    y, cache = forward(*values)
    if dy is None:
        dy = xp.asarray(rng.standard_normal(np.shape(y)), dtype=y.dtype)
    grads = _as_tuple(backward(dy, cache))
    if len(grads) < len(values):
        raise ValueError(f"check_gradients: backward returned {len(grads)} gradients for {len(values)} inputs {names}")

    def output_at(k, flat_index, offset):
        x = values[k]
        flat = x.reshape(-1)  # a view: the arrays handed in must be contiguous
        old = flat[flat_index].copy()
        flat[flat_index] = old + offset
        try:
            out = forward(*values)[0]
        finally:
            flat[flat_index] = old
        return out

    errors = {}
    for k, (name, x) in enumerate(zip(names, values)):
        g = grads[k]
        if g is None:
            raise ValueError(f"check_gradients: backward returned None for {name}")
        if tuple(g.shape) != tuple(x.shape):
            raise ValueError(f"check_gradients: gradient of {name} has shape {tuple(g.shape)}, input {tuple(x.shape)}")
        if not x.flags.c_contiguous:
            raise ValueError(f"check_gradients: {name} must be C-contiguous")
        g_flat = to_numpy(g).reshape(-1)
        candidates = np.arange(int(x.size))
        zero_error = 0.0
        if known_zero and name in known_zero:
            zeros = np.asarray(known_zero[name]).reshape(-1)
            largest = float(np.max(np.abs(g_flat))) if g_flat.size else 0.0
            zero_error = 0.0 if np.all(np.abs(g_flat[zeros]) <= 1e-12 * largest) else 1.0
            candidates = np.setdiff1d(candidates, zeros)
        picks = candidates if candidates.size <= max_entries else rng.choice(candidates, max_entries, replace=False)
        analytic = g_flat[picks]
        numerical = np.empty(len(picks))
        for j, i in enumerate(picks):
            i = int(i)
            d1 = output_at(k, i, h) - output_at(k, i, -h)
            d2 = output_at(k, i, 2 * h) - output_at(k, i, -2 * h)
            numerical[j] = float(xp.sum((8 * d1 - d2) * dy)) / (12 * h)
        scale = float(np.max(np.abs(g_flat))) if g_flat.size else 0.0
        errors[name] = max(relative_error(analytic, numerical, scale), zero_error)
    return errors


@dataclass
class GradCase:
    """One row group of the gradcheck table: an op, its forward/backward and float64 inputs."""

    op: str
    forward: Callable
    backward: Callable
    arrays: dict
    tolerance: float = OP_TOLERANCE
    h: float = 1e-4
    max_entries: int = 32
    known_zero: dict = field(default_factory=dict)  # see check_gradients
    random_masks: bool = False  # draws dropout masks: outputs differ between NumPy's and CuPy's generators


def default_cases(seed: int = 0) -> list[GradCase]:
    """Every op of tinyddpm at small shapes, in float64, on the current device, plus the tiny U-Net."""

    rng = np.random.default_rng(seed)

    def arr(*shape):
        return to_device(rng.standard_normal(shape))

    def bind(fn, **hyper):
        return lambda *arrays: fn(*arrays, **hyper)

    labels = to_device(np.array([0, 3, 3, 1, 3]))  # a repeated label: its rows must sum
    dropout = lambda x: ops.dropout_forward(x, 0.3, make_rng(seed), train=True)  # same mask each call
    t_float = to_device(rng.uniform(0, 1000, size=4))
    pred, target = arr(3, 2, 4), arr(3, 2, 4)
    l1_target = pred - to_device(np.sign(rng.standard_normal((3, 2, 4))) * rng.uniform(0.1, 1.0, (3, 2, 4)))
    weights = to_device(rng.uniform(0.5, 2.0, size=3))
    # the fused GroupNorm + SiLU draws from a stream of its own, so that every row after it keeps its inputs
    fused_rng = np.random.default_rng((seed, 23))
    fused_x, fused_gamma, fused_beta = (to_device(fused_rng.standard_normal(s)) for s in ((2, 4, 3, 3), (4,), (4,)))

    cases = [
        GradCase("linear", ops.linear_forward, ops.linear_backward,
                 {"x": arr(5, 7), "w": arr(4, 7), "b": arr(4)}),
        GradCase("conv2d 3x3 s1", ops.conv2d_forward, ops.conv2d_backward,
                 {"x": arr(2, 3, 6, 5), "w": arr(4, 3, 3, 3), "b": arr(4)}),
        GradCase("conv2d 3x3 s2", bind(ops.conv2d_forward, stride=2), ops.conv2d_backward,
                 {"x": arr(2, 3, 7, 6), "w": arr(4, 3, 3, 3), "b": arr(4)}),
        GradCase("conv2d 5x5 s1 no-bias", ops.conv2d_forward, ops.conv2d_backward,
                 {"x": arr(2, 2, 6, 6), "w": arr(3, 2, 5, 5)}),
        GradCase("conv2d 1x1", ops.conv2d_forward, ops.conv2d_backward,
                 {"x": arr(2, 4, 3, 3), "w": arr(5, 4, 1, 1), "b": arr(5)}),
        GradCase("upsample_nearest2x", ops.upsample_nearest2x_forward, ops.upsample_nearest2x_backward,
                 {"x": arr(2, 3, 3, 4)}),
        GradCase("upsample_conv3x3", ops.upsample_conv3x3_forward, ops.upsample_conv3x3_backward,
                 {"x": arr(2, 3, 3, 4), "w": arr(4, 3, 3, 3), "b": arr(4)}),
        GradCase("ws_conv2d 3x3", ops.ws_conv2d_forward, ops.ws_conv2d_backward,
                 {"x": arr(2, 3, 6, 5), "w": arr(4, 3, 3, 3), "b": arr(4)}),
        GradCase("conv_transpose2d 4x4 s2", bind(ops.conv_transpose2d_forward, stride=2, padding=1),
                 ops.conv_transpose2d_backward, {"x": arr(2, 3, 3, 4), "w": arr(3, 4, 4, 4), "b": arr(4)}),
        GradCase("space_to_depth 2x2", ops.space_to_depth_forward, ops.space_to_depth_backward,
                 {"x": arr(2, 3, 4, 6)}),
        GradCase("groupnorm", bind(ops.groupnorm_forward, groups=2), ops.groupnorm_backward,
                 {"x": arr(2, 4, 3, 3), "gamma": arr(4), "beta": arr(4)}),
        GradCase("groupnorm (fast, the U-Net's)", bind(ops.groupnorm_fast_forward, groups=2),
                 ops.groupnorm_fast_backward, {"x": arr(2, 4, 3, 3), "gamma": arr(4), "beta": arr(4)}),
        GradCase("groupnorm_silu (fused, the U-Net's)", bind(groupnorm_silu_forward, groups=2),
                 groupnorm_silu_backward, {"x": fused_x, "gamma": fused_gamma, "beta": fused_beta}),
        GradCase("groupnorm_silu (fused, no affine)", lambda x: groupnorm_silu_forward(x, None, None, 2),
                 groupnorm_silu_backward, {"x": fused_x.copy()}),
        GradCase("silu", ops.silu_forward, ops.silu_backward, {"x": arr(3, 4, 5)}),
        GradCase("gelu", ops.gelu_forward, ops.gelu_backward, {"x": 3 * arr(3, 4, 5)}),
        GradCase("dropout p=0.3", dropout, ops.dropout_backward, {"x": arr(3, 4, 5)}, random_masks=True),
        GradCase("attention 2 heads", bind(ops.attention_forward, heads=2), ops.attention_backward,
                 {"x": arr(2, 4, 3, 2), "w_qkv": arr(12, 4), "b_qkv": arr(12), "w_out": arr(4, 4), "b_out": arr(4)},
                 known_zero={"b_qkv": np.arange(4, 8)}),  # the key bias: softmax ignores it
        GradCase("timestep_embedding", bind(ops.timestep_embedding_forward, dim=16, max_period=100.0),
                 ops.timestep_embedding_backward, {"t": t_float * 0.01}),
        GradCase("label_embedding", lambda table: ops.label_embedding_forward(labels, table),
                 ops.label_embedding_backward, {"table": arr(4, 6)}),
        GradCase("concat (skip)", bind(ops.concat_forward, axis=1), ops.concat_backward,
                 {"a": arr(2, 3, 2, 2), "b": arr(2, 2, 2, 2)}),
        GradCase("add (residual)", ops.add_forward, ops.add_backward, {"a": arr(2, 3, 2, 2), "b": arr(2, 3, 2, 2)}),
        GradCase("add (broadcast temb)", ops.add_forward, ops.add_backward, {"a": arr(2, 3, 2, 2), "b": arr(2, 3, 1, 1)}),
        GradCase("mse_loss", ops.mse_loss_forward, ops.mse_loss_backward, {"pred": pred, "target": target}),
        GradCase("mse_loss weighted", lambda p, q: ops.mse_loss_forward(p, q, weights), ops.mse_loss_backward,
                 {"pred": pred.copy(), "target": target.copy()}),
        GradCase("l1_loss", ops.l1_loss_forward, ops.l1_loss_backward, {"pred": pred.copy(), "target": l1_target}),
        GradCase("class_log_prob", lambda logits: guide.class_log_prob_forward(logits, labels),
                 guide.class_log_prob_backward, {"logits": arr(5, 4)}),
        GradCase("softmax_cross_entropy loss", lambda logits: ops.softmax_cross_entropy_forward(logits, labels),
                 ops.softmax_cross_entropy_backward, {"logits": arr(5, 4)}),
        noisy_classifier_case(seed),
        unet_case(seed),
        unet_case(seed, block_options=True),
    ]
    return cases


def noisy_classifier_case(seed: int = 0) -> GradCase:
    """The noise-conditional classifier of classifier guidance as one case: log p(y | x_t, t) against its input
    x_t (the gradient guidance uses) and every weight, a tiny config, limit 1e-5. Weights made random as for the
    U-Net."""

    cfg = guide.NoisyClassifierConfig(image_size=8, channels=(2, 3, 4), features=5, num_classes=3, time_dim=6)
    rng = np.random.default_rng(seed + 200)
    params = {k: to_device(to_numpy(v) + 0.3 * rng.standard_normal(v.shape))
              for k, v in guide.init_params(cfg, seed=seed, dtype=np.float64).items()}
    keys = list(params)
    t, labels = to_device(np.array([5, 900])), to_device(np.array([2, 0]))

    def forward(x, *values):
        return guide.log_prob_forward(dict(zip(keys, values)), x, t, labels)

    def backward(dlogp, cache):
        dx, grads = guide.log_prob_backward(dlogp, cache)
        return (dx, *(grads[k] for k in keys))

    x = to_device(rng.standard_normal((2, 1, 8, 8)))
    return GradCase("noisy classifier (x_t and weights)", forward, backward, {"x": x, **params},
                    tolerance=BLOCK_TOLERANCE, h=BLOCK_STEP, max_entries=4)


def unet_case(seed: int = 0, block_options: bool = False) -> GradCase:
    """The whole U-Net (a tiny config with every kind of block, dropout on, class-conditional) as one
    case: the image and every parameter tensor, checked at a few entries each, limit 1e-5.
    ``block_options``: with every block option on (GELU, weight-standardised conv1, space-to-depth
    downsampling, transposed-conv upsampling).

    The zero-initialised weights are made random so that every path carries gradient."""

    options = dict(activation="gelu", weight_standardisation=True, downsample="space_to_depth",
                   upsample="transposed") if block_options else {}
    cfg = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), blocks_per_level=1,
                     attention_resolutions=(4,), heads=2, dropout=0.2, groups=4, num_classes=3, **options)
    rng = np.random.default_rng(seed + 100)
    params = {k: to_device(to_numpy(v) + 0.3 * rng.standard_normal(v.shape))
              for k, v in init_params(cfg, seed=seed, dtype=np.float64).items()}
    keys = list(params)
    t, labels = to_device(np.array([3, 700])), to_device(np.array([1, 3]))  # 3 is the null label

    def forward(x, *values):
        return unet_forward(dict(zip(keys, values)), cfg, x, t, labels, train=True, rng=make_rng(seed))

    def backward(dy, cache):
        dx, grads = unet_backward(dy, cache)
        return (dx, *(grads[k] for k in keys))

    x = to_device(rng.standard_normal((2, 1, 8, 8)))
    name = "unet (tiny, all block options)" if block_options else "unet (tiny, whole network)"
    return GradCase(name, forward, backward, {"x": x, **params},
                    tolerance=BLOCK_TOLERANCE, h=BLOCK_STEP, max_entries=3, known_zero=known_zero_gradients(params),
                    random_masks=True)


def run(cases, *, seed=0, out=None) -> bool:
    """Check every case, print the table (to ``out``, default stdout), return True if all pass."""
    out = out or sys.stdout
    rows, ok = [], True
    for case in cases:
        errors = check_gradients(case.forward, case.backward, case.arrays, seed=seed, h=case.h,
                                 max_entries=case.max_entries, known_zero=case.known_zero)
        if len(errors) > 8:  # a whole network: one summary row (the worst tensor) instead of one per tensor
            worst = max(errors, key=errors.get)
            errors = {f"{len(errors)} tensors, worst {worst}": errors[worst]}
        for name, err in errors.items():
            passed = err < case.tolerance
            ok &= passed
            rows.append((case.op, name, err, case.tolerance, passed))
    width = max(len(r[0]) for r in rows) + 2
    name_width = max(10, max(len(r[1]) for r in rows) + 2)
    print(f"{'op':<{width}}{'tensor':<{name_width}}{'max rel err':>13}{'limit':>9}  result", file=out)
    print("-" * (width + name_width + 32), file=out)
    for op, name, err, tol, passed in rows:
        print(f"{op:<{width}}{name:<{name_width}}{err:>13.2e}{tol:>9.0e}  {'pass' if passed else 'FAIL'}", file=out)
    n_fail = sum(not r[4] for r in rows)
    print(f"\n{len(rows) - n_fail} passed, {n_fail} failed", file=out)
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinyddpm.gradcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--op", action="append", help="check only ops whose name contains this (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cases = default_cases(args.seed)
    if args.op:
        cases = [c for c in cases if any(s in c.op for s in args.op)]
        if not cases:
            parser.error(f"no op matches {args.op}")
    return 0 if run(cases, seed=args.seed) else 1


if __name__ == "__main__":
    sys.exit(main())
