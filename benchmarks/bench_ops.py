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

An op whose module is missing is skipped with a note. The exit status is 1 if any check failed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

OPS = ("conv2d", "groupnorm", "silu", "attention", "upsample")
CHECK_TOLERANCE = 1e-3  # float32 outputs and gradients vs torch, relative to the largest entry


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
# One case = an op at one shape: our forward+backward, torch's, and the arrays that must agree.
# Each builder returns (label, ours, theirs, check) or raises ImportError if the op is not written yet.
# ours() / theirs() run forward + backward once and return (y, dx) for the check.
# --------------------------------------------------------------------------------------------------

def _torch_leaf(torch, a):
    return torch.from_numpy(a.copy()).requires_grad_()


def conv2d_cases(np, torch, rng, batch, quick):
    from tinyddpm.ops.conv2d import conv2d_backward, conv2d_forward
    F = torch.nn.functional
    #        C,   H,  Co, stride  (3x3 kernels, padding 1)
    shapes = [(32, 28, 32, 1), (64, 28, 64, 1), (64, 14, 128, 1), (128, 14, 128, 1), (128, 7, 128, 1),
              (64, 28, 64, 2), (128, 14, 128, 2)]
    for C, H, Co, s in shapes[1:2] if quick else shapes:
        x = rng.standard_normal((batch, C, H, H), dtype=np.float32)
        w = (rng.standard_normal((Co, C, 3, 3), dtype=np.float32) / np.sqrt(9 * C)).astype(np.float32)
        b = rng.standard_normal(Co, dtype=np.float32)
        Ho = (H - 1) // s + 1
        dy = rng.standard_normal((batch, Co, Ho, Ho), dtype=np.float32)
        tx, tw, tb, tdy = _torch_leaf(torch, x), _torch_leaf(torch, w), _torch_leaf(torch, b), torch.from_numpy(dy)

        def ours(x=x, w=w, b=b, dy=dy, s=s):
            y, cache = conv2d_forward(x, w, b, stride=s)
            return y, conv2d_backward(dy, cache)[0]

        def theirs(tx=tx, tw=tw, tb=tb, tdy=tdy, s=s):
            tx.grad = tw.grad = tb.grad = None
            y = F.conv2d(tx, tw, tb, stride=s, padding=1)
            y.backward(tdy)
            return y, tx.grad

        yield f"3x3 s{s}", f"({batch},{C},{H},{H})->{Co}", ours, theirs


def groupnorm_cases(np, torch, rng, batch, quick):
    from tinyddpm.ops.groupnorm import groupnorm_backward, groupnorm_forward
    F = torch.nn.functional
    groups = 8
    shapes = [(32, 28), (64, 28), (128, 14), (128, 7)]
    for C, H in shapes[1:2] if quick else shapes:
        x = rng.standard_normal((batch, C, H, H), dtype=np.float32)
        g = (1 + 0.1 * rng.standard_normal(C)).astype(np.float32)
        be = (0.1 * rng.standard_normal(C)).astype(np.float32)
        dy = rng.standard_normal(x.shape, dtype=np.float32)
        tx, tg, tbe, tdy = _torch_leaf(torch, x), _torch_leaf(torch, g), _torch_leaf(torch, be), torch.from_numpy(dy)

        def ours(x=x, g=g, be=be, dy=dy):
            y, cache = groupnorm_forward(x, g, be, groups)
            return y, groupnorm_backward(dy, cache)[0]

        def theirs(tx=tx, tg=tg, tbe=tbe, tdy=tdy):
            tx.grad = tg.grad = tbe.grad = None
            y = F.group_norm(tx, groups, tg, tbe, eps=1e-5)
            y.backward(tdy)
            return y, tx.grad

        yield f"G={groups}", f"({batch},{C},{H},{H})", ours, theirs


def silu_cases(np, torch, rng, batch, quick):
    from tinyddpm.ops.silu import silu_backward, silu_forward
    F = torch.nn.functional
    shapes = [(32, 28), (64, 28), (128, 14), (128, 7)]
    for C, H in shapes[1:2] if quick else shapes:
        x = rng.standard_normal((batch, C, H, H), dtype=np.float32)
        dy = rng.standard_normal(x.shape, dtype=np.float32)
        tx, tdy = _torch_leaf(torch, x), torch.from_numpy(dy)

        def ours(x=x, dy=dy):
            y, cache = silu_forward(x)
            return y, silu_backward(dy, cache)

        def theirs(tx=tx, tdy=tdy):
            tx.grad = None
            y = F.silu(tx)
            y.backward(tdy)
            return y, tx.grad

        yield "", f"({batch},{C},{H},{H})", ours, theirs


def attention_cases(np, torch, rng, batch, quick):
    from tinyddpm.ops.attention import attention_backward, attention_forward
    F = torch.nn.functional
    heads = 4
    shapes = [(128, 14), (128, 7)]
    for C, H in shapes[1:] if quick else shapes:
        x = rng.standard_normal((batch, C, H, H), dtype=np.float32)
        w_qkv = (rng.standard_normal((3 * C, C)) / np.sqrt(C)).astype(np.float32)
        b_qkv = (0.1 * rng.standard_normal(3 * C)).astype(np.float32)
        w_out = (rng.standard_normal((C, C)) / np.sqrt(C)).astype(np.float32)
        b_out = (0.1 * rng.standard_normal(C)).astype(np.float32)
        dy = rng.standard_normal(x.shape, dtype=np.float32)
        t = {k: _torch_leaf(torch, v) for k, v in dict(x=x, w_qkv=w_qkv, b_qkv=b_qkv, w_out=w_out, b_out=b_out).items()}
        tdy = torch.from_numpy(dy)

        def ours(x=x, w_qkv=w_qkv, b_qkv=b_qkv, w_out=w_out, b_out=b_out, dy=dy):
            y, cache = attention_forward(x, w_qkv, b_qkv, w_out, b_out, heads)
            return y, attention_backward(dy, cache)[0]

        def theirs(t=t, tdy=tdy, C=C, H=H):
            for v in t.values():
                v.grad = None
            N, L, d = t["x"].shape[0], H * H, C // heads
            qkv = F.conv2d(t["x"], t["w_qkv"][:, :, None, None], t["b_qkv"])  # (N, 3C, H, W), a 1x1 conv
            q, k, v = qkv.reshape(N, 3, heads, d, L).permute(1, 0, 2, 4, 3)   # each (N, heads, L, d)
            o = F.scaled_dot_product_attention(q, k, v)                         # (N, heads, L, d)
            o = o.permute(0, 1, 3, 2).reshape(N, C, H, H)
            y = F.conv2d(o, t["w_out"][:, :, None, None], t["b_out"])
            y.backward(tdy)
            return y, t["x"].grad

        yield f"heads={heads}", f"({batch},{C},{H},{H})", ours, theirs


def upsample_cases(np, torch, rng, batch, quick):
    from tinyddpm.ops.upsample import upsample_nearest2x_backward, upsample_nearest2x_forward
    F = torch.nn.functional
    shapes = [(128, 7), (128, 14)]
    for C, H in shapes[:1] if quick else shapes:
        x = rng.standard_normal((batch, C, H, H), dtype=np.float32)
        dy = rng.standard_normal((batch, C, 2 * H, 2 * H), dtype=np.float32)
        tx, tdy = _torch_leaf(torch, x), torch.from_numpy(dy)

        def ours(x=x, dy=dy):
            y, cache = upsample_nearest2x_forward(x)
            return y, upsample_nearest2x_backward(dy, cache)

        def theirs(tx=tx, tdy=tdy):
            tx.grad = None
            y = F.interpolate(tx, scale_factor=2, mode="nearest")
            y.backward(tdy)
            return y, tx.grad

        yield "nearest 2x", f"({batch},{C},{H},{H})", ours, theirs


BUILDERS = {"conv2d": conv2d_cases, "groupnorm": groupnorm_cases, "silu": silu_cases,
            "attention": attention_cases, "upsample": upsample_cases}


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
    rng = np.random.default_rng(0)
    print(f"# tinyddpm ops vs torch {torch.__version__} (CPU), NumPy {np.__version__}, float32, "
          f"{args.threads} thread(s), batch {args.batch}, best of {args.rounds} x {args.repeats} (fwd + bwd)\n")
    rows, notes, failed = [], [], False
    for op in args.ops:
        try:
            cases = list(BUILDERS[op](np, torch, rng, args.batch, args.quick))
        except ImportError as e:
            notes.append(f"{op}: skipped, its module does not import yet ({e})")
            continue
        for detail, shape, ours, theirs in cases:
            name = f"{op} {detail}".strip()
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
    sys.exit(main())
