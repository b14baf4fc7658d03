"""Time forward + backward of tinyddpm's ops against PyTorch on the CPU at the MNIST U-Net shapes.

    python benchmarks/bench_ops.py                      # all ops, threads = os.cpu_count()
    python benchmarks/bench_ops.py --threads 1 --ops conv2d,attention
    python benchmarks/bench_ops.py --quick              # a smoke run: one shape per op, few repeats

Both sides get the same inputs (float32, batch 64 unless --batch) and the same number of threads:
OMP/OpenBLAS/MKL thread variables are set before NumPy is imported, and torch.set_num_threads(n).
For every shape the script first checks that our output and input gradient agree with torch's
(it validates before it times), then times the two alternately in the same process, best of
several repeats each, so that noise from other programs on the machine hits both sides alike.
It prints a Markdown table: op, shape, ours ms, torch ms, ratio = ours / torch (below 1: we win).
Each op is timed as the U-Net runs it: GroupNorm is ops/groupnorm_fast.py (the reference ops/groupnorm.py is
tested against it; the U-Net runs it alone before attention), "groupnorm_silu" the fused GroupNorm + SiLU of every
ResBlock (ops/groupnorm_silu.py; on a GPU its CUDA kernel, kernels/groupnorm_silu.cu) against torch's two ops,
and "upsample_conv" is the up step, nearest 2x then a 3x3 conv, which the U-Net computes on the small input
(ops/upsample_conv.py) and torch as F.interpolate then F.conv2d.

The exit status is 1 if any check failed.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import NamedTuple

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))
from blas_env import blas_description, unset_blas_overrides  # noqa: E402

OPS = ("conv2d", "groupnorm", "silu", "groupnorm_silu", "attention", "upsample", "upsample_conv")
CHECK_TOLERANCE = 1e-3  # float32 outputs and gradients vs torch, relative to the largest entry
# the MNIST U-Net's shapes: conv2d (C, H, Co, stride) with 3x3 kernels and padding 1; (C, H) for the others
CONV_SHAPES = ((32, 28, 32, 1), (64, 28, 64, 1), (64, 14, 128, 1), (128, 14, 128, 1), (128, 7, 128, 1),
               (64, 28, 64, 2), (128, 14, 128, 2))
NORM_SHAPES = ((32, 28), (64, 28), (128, 14), (128, 7))   # groupnorm (8 groups) and silu
ATTN_SHAPES = ((128, 14), (128, 7))                        # 4 heads
UPSAMPLE_SHAPES = ((128, 7), (128, 14))
GROUPS, HEADS = 8, 4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both sides (default: all cores)")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    parser.add_argument("--quick", action="store_true", help="one shape per op, 1 round, batch 8: a smoke test")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 64, or 8 with --quick)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 5, 1 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per round (default 3, 1 with --quick)")
    args = parser.parse_args(argv)
    args.ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = sorted(set(args.ops) - set(OPS))
    if unknown:
        parser.error(f"unknown op(s) {unknown}; choose from {OPS}")
    args.batch = args.batch or (8 if args.quick else 64)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.repeats = args.repeats or (1 if args.quick else 3)
    return args


def set_threads(n: int) -> None:
    """Pin the BLAS/OpenMP pools of NumPy and torch to n threads; must run before either is imported."""
    if "numpy" in sys.modules or "torch" in sys.modules:
        print("note: numpy/torch were imported before the thread count was set; env vars may be ignored")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


# --------------------------------------------------------------------------------------------------
# One case = an op at one shape: float32 host arrays (inputs and 'dy'), and forward + backward on each
# side, returning (y, dx). benchmarks/gpu_suite.py runs the same cases on a GPU.
# --------------------------------------------------------------------------------------------------

class OpCase(NamedTuple):
    """One op at one shape: host float32 arrays (inputs and 'dy'), and fwd + bwd on each side -> (y, dx)."""

    op: str
    detail: str
    shape: str
    arrays: dict
    ours: object     # ours(a: {name: xp array}) -> (y, dx)
    theirs: object   # theirs(t: {name: torch tensor}, F) -> (y, dx)

def _conv_ours(a, stride):
    from tinyddpm.ops import conv2d_backward, conv2d_forward

    y, cache = conv2d_forward(a["x"], a["w"], a["b"], stride=stride)
    return y, conv2d_backward(a["dy"], cache)[0]


def _conv_torch(t, F, stride):
    y = F.conv2d(t["x"], t["w"], t["b"], stride=stride, padding=1)
    y.backward(t["dy"])
    return y, t["x"].grad


def _groupnorm_ours(a):
    from tinyddpm.ops import groupnorm_fast_backward, groupnorm_fast_forward

    y, cache = groupnorm_fast_forward(a["x"], a["g"], a["b"], GROUPS)
    return y, groupnorm_fast_backward(a["dy"], cache)[0]


def _groupnorm_torch(t, F):
    y = F.group_norm(t["x"], GROUPS, t["g"], t["b"], eps=1e-5)
    y.backward(t["dy"])
    return y, t["x"].grad


def _silu_ours(a):
    from tinyddpm.ops import silu_backward, silu_forward

    y, cache = silu_forward(a["x"])
    return y, silu_backward(a["dy"], cache)


def _silu_torch(t, F):
    y = F.silu(t["x"])
    y.backward(t["dy"])
    return y, t["x"].grad


def _groupnorm_silu_ours(a):
    from tinyddpm.ops.groupnorm_silu import groupnorm_silu_backward, groupnorm_silu_forward

    y, cache = groupnorm_silu_forward(a["x"], a["g"], a["b"], GROUPS)
    return y, groupnorm_silu_backward(a["dy"], cache)[0]


def _groupnorm_silu_torch(t, F):
    y = F.silu(F.group_norm(t["x"], GROUPS, t["g"], t["b"], eps=1e-5))
    y.backward(t["dy"])
    return y, t["x"].grad


def _attention_ours(a):
    from tinyddpm.ops import attention_backward, attention_forward

    y, cache = attention_forward(a["x"], a["w_qkv"], a["b_qkv"], a["w_out"], a["b_out"], HEADS)
    return y, attention_backward(a["dy"], cache)[0]


def _attention_torch(t, F):
    N, C, H, W = t["x"].shape
    L, d = H * W, C // HEADS
    qkv = F.conv2d(t["x"], t["w_qkv"][:, :, None, None], t["b_qkv"])     # (N, 3C, H, W), a 1x1 conv
    q, k, v = qkv.reshape(N, 3, HEADS, d, L).permute(1, 0, 2, 4, 3)       # each (N, heads, L, d)
    o = F.scaled_dot_product_attention(q, k, v)                           # (N, heads, L, d)
    y = F.conv2d(o.permute(0, 1, 3, 2).reshape(N, C, H, W), t["w_out"][:, :, None, None], t["b_out"])
    y.backward(t["dy"])
    return y, t["x"].grad


def _upsample_ours(a):
    from tinyddpm.ops import upsample_nearest2x_backward, upsample_nearest2x_forward

    y, cache = upsample_nearest2x_forward(a["x"])
    return y, upsample_nearest2x_backward(a["dy"], cache)


def _upsample_torch(t, F):
    y = F.interpolate(t["x"], scale_factor=2, mode="nearest")
    y.backward(t["dy"])
    return y, t["x"].grad


def _upsample_conv_ours(a):
    from tinyddpm.ops import upsample_conv3x3_backward, upsample_conv3x3_forward

    y, cache = upsample_conv3x3_forward(a["x"], a["w"], a["b"])
    return y, upsample_conv3x3_backward(a["dy"], cache)[0]


def _upsample_conv_torch(t, F):
    y = F.conv2d(F.interpolate(t["x"], scale_factor=2, mode="nearest"), t["w"], t["b"], padding=1)
    y.backward(t["dy"])
    return y, t["x"].grad


def op_cases(batch: int, quick: bool) -> list:
    """The ops at the U-Net's shapes, float32 host arrays drawn from one seed (quick: one shape per op)."""
    import numpy as np  # here, not at import: main() sets the thread variables before NumPy loads

    rng = np.random.default_rng(0)

    def randn(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    def pick(shapes):
        return shapes[1:2] if quick and len(shapes) > 1 else shapes

    cases = []
    for C, H, Co, s in pick(CONV_SHAPES):
        Ho = (H - 1) // s + 1
        arrays = {"x": randn(batch, C, H, H), "w": randn(Co, C, 3, 3, scale=1 / math.sqrt(9 * C)), "b": randn(Co),
                  "dy": randn(batch, Co, Ho, Ho)}
        cases.append(OpCase("conv2d", f"3x3 s{s}", f"({batch},{C},{H},{H})->{Co}", arrays,
                            partial(_conv_ours, stride=s), partial(_conv_torch, stride=s)))
    for C, H in pick(NORM_SHAPES):
        arrays = {"x": randn(batch, C, H, H), "g": 1 + randn(C, scale=0.1), "b": randn(C, scale=0.1),
                  "dy": randn(batch, C, H, H)}
        cases.append(OpCase("groupnorm", f"G={GROUPS}", f"({batch},{C},{H},{H})", arrays, _groupnorm_ours,
                            _groupnorm_torch))
    for C, H in pick(NORM_SHAPES):
        arrays = {"x": randn(batch, C, H, H), "dy": randn(batch, C, H, H)}
        cases.append(OpCase("silu", "", f"({batch},{C},{H},{H})", arrays, _silu_ours, _silu_torch))
    for C, H in pick(NORM_SHAPES):
        arrays = {"x": randn(batch, C, H, H), "g": 1 + randn(C, scale=0.1), "b": randn(C, scale=0.1),
                  "dy": randn(batch, C, H, H)}
        cases.append(OpCase("groupnorm_silu", f"G={GROUPS}, fused", f"({batch},{C},{H},{H})", arrays,
                            _groupnorm_silu_ours, _groupnorm_silu_torch))
    for C, H in pick(ATTN_SHAPES):
        arrays = {"x": randn(batch, C, H, H), "w_qkv": randn(3 * C, C, scale=1 / math.sqrt(C)),
                  "b_qkv": randn(3 * C, scale=0.1), "w_out": randn(C, C, scale=1 / math.sqrt(C)),
                  "b_out": randn(C, scale=0.1), "dy": randn(batch, C, H, H)}
        cases.append(OpCase("attention", f"heads={HEADS}", f"({batch},{C},{H},{H})", arrays, _attention_ours,
                            _attention_torch))
    for C, H in (UPSAMPLE_SHAPES[:1] if quick else UPSAMPLE_SHAPES):
        arrays = {"x": randn(batch, C, H, H), "dy": randn(batch, C, 2 * H, 2 * H)}
        cases.append(OpCase("upsample", "nearest 2x", f"({batch},{C},{H},{H})", arrays, _upsample_ours,
                            _upsample_torch))
    for C, H in (UPSAMPLE_SHAPES[:1] if quick else UPSAMPLE_SHAPES):
        arrays = {"x": randn(batch, C, H, H), "w": randn(C, C, 3, 3, scale=1 / math.sqrt(9 * C)), "b": randn(C),
                  "dy": randn(batch, C, 2 * H, 2 * H)}
        cases.append(OpCase("upsample_conv", "nearest 2x + 3x3", f"({batch},{C},{H},{H})->{C}", arrays,
                            _upsample_conv_ours, _upsample_conv_torch))
    return cases


def torch_runner(case: OpCase, torch, device="cpu"):
    """theirs() for ``case`` with torch on ``device``: the arrays as leaf tensors (gradients cleared each call)."""
    F = torch.nn.functional
    t = {k: torch.from_numpy(v).to(device).requires_grad_(k != "dy") for k, v in case.arrays.items()}

    def theirs():
        for v in t.values():
            v.grad = None
        return case.theirs(t, F)

    return theirs


# --------------------------------------------------------------------------------------------------

def best_ms(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def rel_err(np, ours, theirs) -> float:
    a = np.asarray(ours, dtype=np.float64)
    b = theirs.detach().numpy().astype(np.float64)
    return float(np.max(np.abs(a - b)) / max(1e-30, float(np.max(np.abs(b)))))


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    import numpy as np  # noqa: E402  (after the thread variables)
    import torch

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(True)
    print(f"# tinyddpm ops vs torch {torch.__version__} (CPU), NumPy {np.__version__}, float32, "
          f"{args.threads} thread(s), batch {args.batch}, best of {args.rounds} x {args.repeats} (fwd + bwd)")
    print(f"# {blas_description()}\n")
    rows, notes, failed = [], [], False
    cases = op_cases(args.batch, args.quick)
    for op in args.ops:
        for case in (c for c in cases if c.op == op):
            name, shape = f"{op} {case.detail}".strip(), case.shape
            ours, theirs = partial(case.ours, case.arrays), torch_runner(case, torch)
            (y, dx), (ty, tdx) = ours(), theirs()  # validate before timing (also warms both up)
            err = max(rel_err(np, y, ty), rel_err(np, dx, tdx))
            if not err < CHECK_TOLERANCE:
                failed = True
                notes.append(f"{name} {shape}: MISMATCH with torch, max relative error {err:.2e}")
            t_ours, t_torch = float("inf"), float("inf")
            for _ in range(args.rounds):  # alternate, so that machine noise hits both sides alike
                t_ours = min(t_ours, best_ms(ours, args.repeats))
                t_torch = min(t_torch, best_ms(theirs, args.repeats))
            rows.append((name, shape, t_ours, t_torch))
            print(f"  measured {name} {shape}: {t_ours:.2f} ms vs {t_torch:.2f} ms", file=sys.stderr, flush=True)

    print("| op | shape | ours ms | torch ms | ratio |")
    print("|---|---|---:|---:|---:|")
    for name, shape, t_ours, t_torch in rows:
        print(f"| {name} | {shape} | {t_ours:.2f} | {t_torch:.2f} | {t_ours / t_torch:.2f} |")
    for op in args.ops:
        mine = [r for r in rows if r[0].split()[0] == op]
        if len(mine) > 1:
            total_ours, total_torch = sum(r[2] for r in mine), sum(r[3] for r in mine)
            print(f"| {op} (all shapes) | sum | {total_ours:.2f} | {total_torch:.2f} | {total_ours / total_torch:.2f} |")
    for note in notes:
        print(f"\nnote: {note}")
    return 1 if failed else 0


if __name__ == "__main__":
    unset_blas_overrides()   # before NumPy loads OpenBLAS (blas_env.py says why; tests leave them alone)
    sys.exit(main())
