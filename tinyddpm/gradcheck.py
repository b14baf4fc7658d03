"""Gradient checking: prove a hand-written backward right with finite differences in float64.

For an op y = f(x) and a random upstream gradient dy, the backward must return
dL/dx for L = sum(y * dy). Each checked entry x_i is compared with a central difference

    dL/dx_i ~ sum( [8 (f(x + h e_i) - f(x - h e_i)) - (f(x + 2h e_i) - f(x - 2h e_i))] * dy ) / (12 h)

a 4-point stencil whose truncation error is O(h^4), so h = 1e-4 in float64 leaves both truncation
(~1e-16) and round-off (~1e-12) far below the thresholds. Differences of the outputs are taken
before the sum with dy, so outputs that x_i does not touch cancel exactly.

The error reported for a tensor is the largest elementwise relative error

    max_i |a_i - n_i| / max(1e-8, |a_i| + |n_i|)

(analytic a, numerical n). Below 1e-7 means right for one op; a composite of many ops accumulates
more round-off, so blocks and whole networks use 1e-5. Above 1e-4 means a bug.

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

from .backend import get_xp, to_device, to_numpy

OP_TOLERANCE = 1e-7     # one op
BLOCK_TOLERANCE = 1e-5  # a block or the whole network


def relative_error(analytic, numerical) -> float:
    """max_i |a_i - n_i| / max(1e-8, |a_i| + |n_i|) over the entries given."""
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numerical, dtype=np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - n) / np.maximum(1e-8, np.abs(a) + np.abs(n))))


def _as_tuple(grads):
    return grads if isinstance(grads, tuple) else (grads,)


def check_gradients(forward: Callable, backward: Callable, arrays: dict, *, seed: int = 0,
                    h: float = 1e-4, max_entries: int = 32, dy=None) -> dict:
    """Compare ``backward`` with finite differences of ``forward`` for every array in ``arrays``.

    forward(*arrays.values()) returns (y, cache); backward(dy, cache) returns the gradients of those
    arrays in the same order (a tuple, or one array for a one-input op). Tensors with more than
    ``max_entries`` entries are checked at that many randomly chosen entries (seeded).
    Returns {name: max relative error}. The arrays should be float64; they are restored exactly.
    """
    names = list(arrays)
    values = list(arrays.values())
    xp = get_xp(*values, op="check_gradients")
    rng = np.random.default_rng(seed)

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
        size = int(x.size)
        picks = np.arange(size) if size <= max_entries else rng.choice(size, max_entries, replace=False)
        analytic = to_numpy(g).reshape(-1)[picks]
        numerical = np.empty(len(picks))
        for j, i in enumerate(picks):
            i = int(i)
            d1 = output_at(k, i, h) - output_at(k, i, -h)
            d2 = output_at(k, i, 2 * h) - output_at(k, i, -2 * h)
            numerical[j] = float(xp.sum((8 * d1 - d2) * dy)) / (12 * h)
        errors[name] = relative_error(analytic, numerical)
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
    notes: str = ""
    extra: dict = field(default_factory=dict)


def default_cases(seed: int = 0) -> list[GradCase]:
    """Every op of tinyddpm at small shapes, in float64, on the current device."""
    from . import ops

    rng = np.random.default_rng(seed)

    def arr(*shape):
        return to_device(rng.standard_normal(shape))

    cases = [
        GradCase("linear", ops.linear_forward, ops.linear_backward,
                 {"x": arr(5, 7), "w": arr(4, 7), "b": arr(4)}),
    ]
    return cases


def run(cases, *, seed=0, out=sys.stdout) -> bool:
    """Check every case, print the table, return True if all pass."""
    rows, ok = [], True
    for case in cases:
        errors = check_gradients(case.forward, case.backward, case.arrays, seed=seed, h=case.h)
        for name, err in errors.items():
            passed = err < case.tolerance
            ok &= passed
            rows.append((case.op, name, err, case.tolerance, passed))
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'op':<{width}}{'tensor':<10}{'max rel err':>13}{'limit':>9}  result", file=out)
    print("-" * (width + 42), file=out)
    for op, name, err, tol, passed in rows:
        print(f"{op:<{width}}{name:<10}{err:>13.2e}{tol:>9.0e}  {'pass' if passed else 'FAIL'}", file=out)
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
