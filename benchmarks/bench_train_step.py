"""Time one whole training step of tinyddpm's U-Net against a PyTorch twin of the same network on the CPU.

    python benchmarks/bench_train_step.py                    # cpu preset, its batch, threads = os.cpu_count()
    python benchmarks/bench_train_step.py --threads 1 --steps 10
    python benchmarks/bench_train_step.py --quick            # a smoke run: tiny preset, 1 timed step

One step = what training does per batch:

    ours   tinyddpm.training.train_step on a state from new_state (random uint8 images, labels 0..9):
           batch draw, t and label dropout, noise, q_sample, unet_forward, diffusion_loss (MSE on eps),
           unet_backward, clip_grad_norm, AdamW (lr schedule, no decay on biases / norms), EMA update.
    torch  the same on the twin (tests/torch_twin.py), starting from the same float32 weights:
           batch draw, t and label dropout, noise, x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, torch_unet_forward,
           F.mse_loss(out, eps), backward, clip_grad_norm_, torch.optim.AdamW (same lr, betas, eps,
           weight decay and no-decay groups), EMA with torch._foreach_lerp_.

The twin has no dropout, so the U-Net's dropout is set to 0 on both sides (the cpu preset already has 0;
the tiny preset's 0.1 is overridden). Both sides get the same batch and the same number of threads
(OMP/OpenBLAS/MKL variables are set before NumPy and torch are imported, and torch.set_num_threads).

Timing: after warm-up steps, the two sides take steps alternately in one process, so that noise from
other programs hits both alike; ms/step is the best of --steps, the median is shown too.
Memory: each side runs again in a subprocess of its own (this script with --side ours / --side torch),
which reports its peak RSS (VmHWM on Linux, whose getrusage ru_maxrss is inherited across exec; else
ru_maxrss) minus the RSS after imports and set-up (weights, optimizer, data), and the total peak RSS
of the process. The ours subprocess does not import torch.
It prints a Markdown table; ratio = ours / torch (below 1: we are faster).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))
from blas_env import blas_description, unset_blas_overrides  # noqa: E402
TESTS = BENCH_DIR.parent / "tests"
MEM_TAG = "MEMORY "
GOAL_RATIO = 1.5    # a training step within 1.5x of PyTorch's time on the same cores (issue 23)
GOAL_MEMORY = 1.5   # and its peak step memory within 1.5x of PyTorch's


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both sides (default: all cores)")
    parser.add_argument("--preset", default=None, choices=("cpu", "tiny"), help="training preset (default cpu; tiny with --quick)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per side (default 5, 1 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per side first (default 2, 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, 1 warm-up and 1 timed step: a smoke test")
    parser.add_argument("--side", choices=("ours", "torch"), default=None, help=argparse.SUPPRESS)  # memory subprocess
    args = parser.parse_args(argv)
    args.preset = args.preset or ("tiny" if args.quick else "cpu")
    args.steps = args.steps or (1 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if args.threads < 1 or args.steps < 1 or args.warmup < 0 or (args.batch is not None and args.batch < 1):
        parser.error("--threads, --steps and --batch must be >= 1, --warmup >= 0")
    return args


def set_threads(n: int) -> None:
    """Pin the BLAS/OpenMP pools of NumPy and torch to n threads; must run before either is imported."""
    if "numpy" in sys.modules or "torch" in sys.modules:
        print("note: numpy/torch were imported before the thread count was set; env vars may be ignored",
              file=sys.stderr)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def make_config(args):
    from dataclasses import replace

    from tinyddpm.training.config import PRESETS, preset

    base = PRESETS[args.preset]
    return preset(args.preset, unet=replace(base.unet, dropout=0.0), batch_size=args.batch or base.batch_size)


def make_data(config):
    """Random uint8 images (4 batches' worth) and labels 0..9: the content does not change the cost."""
    import numpy as np

    rng = np.random.default_rng(0)
    n, size = 4 * config.batch_size, config.unet.image_size
    return rng.integers(0, 256, size=(n, size, size), dtype=np.uint8), rng.integers(0, 10, size=n)


def make_ours(config, images, labels):
    """(step, params): step() runs tinyddpm.training.train_step once and returns the loss as a float."""
    from tinyddpm import new_state, train_step

    state = new_state(config, images, labels)

    def step():
        train_step(state)
        return state.flush_losses()[-1]  # also keeps the pending list from growing

    return step, state.params


def make_torch(config, params, images, labels, device="cpu", sync=True):
    """step() for the twin on ``device``: the same work as train_step, with torch.nn.functional and torch.optim.

    step() returns the loss as a float (sync=True, which waits for the device) or as a 0-d tensor (sync=False).
    benchmarks/gpu_suite.py uses it on CUDA.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from torch_twin import params_to_torch, torch_unet_forward

    from tinyddpm.training.config import make_run_schedule
    from tinyddpm.training.state import no_decay

    cfg, u = config, config.unet
    p = params_to_torch(params, dtype=torch.float32, device=device)
    groups = [{"params": [v for k, v in p.items() if not no_decay(k)], "weight_decay": cfg.weight_decay},
              {"params": [v for k, v in p.items() if no_decay(k)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=1e-8)
    plist = list(p.values())
    ema = [v.detach().clone() for v in plist]
    x0_all = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)[:, None].to(device)   # (N, 1, H, W) in [-1, 1]
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    ab = make_run_schedule(cfg).alpha_bar
    sqrt_ab = torch.tensor(np.sqrt(ab), dtype=torch.float32, device=device)
    sqrt_1mab = torch.tensor(np.sqrt(1.0 - ab), dtype=torch.float32, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    B, N, updates = cfg.batch_size, x0_all.shape[0], [0]

    def step():
        idx = torch.randint(N, (B,), generator=gen, device=device)
        x0, y = x0_all[idx], y_all[idx]                                              # (B, 1, H, W), (B,)
        t = torch.randint(cfg.num_timesteps, (B,), generator=gen, device=device)
        if cfg.p_uncond > 0:
            y = torch.where(torch.rand(B, generator=gen, device=device) < cfg.p_uncond, u.null_label, y)
        noise = torch.randn(x0.shape, generator=gen, device=device)
        x_t = sqrt_ab[t].view(B, 1, 1, 1) * x0 + sqrt_1mab[t].view(B, 1, 1, 1) * noise
        loss = F.mse_loss(torch_unet_forward(p, u, x_t, t, y), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plist, cfg.grad_clip)
        opt.step()
        n = updates[0]
        d = min(cfg.ema_decay, (1.0 + n) / (10.0 + n)) if cfg.ema_warmup else cfg.ema_decay
        with torch.no_grad():
            torch._foreach_lerp_(ema, plist, 1.0 - d)                                # e <- d e + (1 - d) p
        updates[0] += 1
        return float(loss.item()) if sync else loss

    return step


def _status_mb(field: str):
    """A field of /proc/self/status (VmRSS, VmHWM) in MB, or None where there is no such file."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**10   # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rss_mb() -> float:
    """The current resident set size in MB (falls back to the peak where /proc is missing)."""
    rss = _status_mb("VmRSS")
    return _peak_mb() if rss is None else rss


def _peak_mb() -> float:
    """This process's peak RSS in MB.

    On Linux, VmHWM: getrusage's ru_maxrss survives exec, so a subprocess started by a big parent
    (pytest, or this script after a torch run) would report the parent's peak. Elsewhere ru_maxrss.
    """
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10   # bytes on macOS, KiB elsewhere


def run_side(args) -> int:
    """The memory subprocess: set up one side, take warm-up + 1 steps, print the RSS figures as JSON."""
    import numpy as np

    config = make_config(args)
    images, labels = make_data(config)
    if args.side == "ours":
        step, _ = make_ours(config, images, labels)
    else:  # only the weights from tinyddpm (as new_state makes them), none of its optimizer state
        import torch

        from tinyddpm.nn.unet import init_params

        torch.set_num_threads(args.threads)
        params = init_params(config.unet, seed=config.seed, dtype=np.dtype(config.dtype))
        step = make_torch(config, params, images, labels)
    base = _rss_mb()
    losses = [step() for _ in range(args.warmup + 1)]
    ok = bool(np.all(np.isfinite(losses)))
    print(MEM_TAG + json.dumps({"setup_mb": base, "peak_mb": _peak_mb(), "finite": ok}))
    return 0 if ok else 1


def measure_memory(args, side: str):
    """Run this script as ``--side side`` in a fresh process; its JSON figures, or an error string."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--preset", args.preset,
           "--threads", str(args.threads), "--warmup", str(args.warmup)]
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(MEM_TAG):
            result = json.loads(line[len(MEM_TAG):])
            if proc.returncode == 0 and result["finite"]:
                return result
    return f"{side} memory run failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-500:]}"


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    if args.side is not None:
        return run_side(args)
    import numpy as np  # noqa: E402  (after the thread variables)
    import torch

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(True)
    config = make_config(args)
    images, labels = make_data(config)
    ours, params = make_ours(config, images, labels)
    theirs = make_torch(config, params, images, labels)   # built before ours steps: the same initial weights
    B = config.batch_size
    print(f"# one training step (fwd + bwd + clip + AdamW + EMA), tinyddpm vs torch {torch.__version__} (CPU), "
          f"NumPy {np.__version__}, float32, preset {args.preset!r} (dropout 0), batch {B}, "
          f"{args.threads} thread(s), {args.warmup} warm-up + best of {args.steps} steps per side")
    print(f"# {blas_description()}\n")

    losses, failed, notes = [], False, []
    for _ in range(args.warmup):
        losses += [ours(), theirs()]
    t_ours, t_torch = [], []
    for _ in range(args.steps):  # alternate, so that machine noise hits both sides alike
        t0 = time.perf_counter()
        losses.append(ours())
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        losses.append(theirs())
        t_torch.append(time.perf_counter() - t0)
        print(f"  step: ours {t_ours[-1] * 1e3:.1f} ms, torch {t_torch[-1] * 1e3:.1f} ms", file=sys.stderr, flush=True)
    if not np.all(np.isfinite(losses)):
        failed = True
        notes.append(f"a loss was not finite: {losses}")

    mem = {}
    for side in ("ours", "torch"):
        mem[side] = measure_memory(args, side)
        if isinstance(mem[side], str):
            failed = True
            notes.append(mem[side])

    def mem_cells(key):
        cells = []
        for side in ("ours", "torch"):
            m = mem[side]
            if isinstance(m, str):
                cells.append("n/a")
            elif key == "step":
                cells.append(f"{max(0.0, m['peak_mb'] - m['setup_mb']):.0f}")
            else:
                cells.append(f"{m['peak_mb']:.0f}")
        return cells

    best_ours, best_torch = min(t_ours) * 1e3, min(t_torch) * 1e3
    med_ours, med_torch = statistics.median(t_ours) * 1e3, statistics.median(t_torch) * 1e3
    step_mem, total_mem = mem_cells("step"), mem_cells("total")
    print("| preset | batch | threads | ours ms/step | torch ms/step | ratio (ours/torch) | ours img/s | torch img/s "
          "| ours peak MB (step) | torch peak MB (step) | ours peak RSS MB | torch peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.preset} | {B} | {args.threads} | {best_ours:.1f} | {best_torch:.1f} | {best_ours / best_torch:.2f} "
          f"| {B / best_ours * 1e3:.0f} | {B / best_torch * 1e3:.0f} | {step_mem[0]} | {step_mem[1]} "
          f"| {total_mem[0]} | {total_mem[1]} |")
    print(f"\nms/step is the best of {args.steps}; medians: ours {med_ours:.1f}, torch {med_torch:.1f} "
          f"(ratio {med_ours / med_torch:.2f}). Peak MB (step) = peak RSS minus the RSS after imports and set-up, "
          f"each side in its own process; peak RSS = the whole process's peak.")
    for note in notes:
        print(f"\nnote: {note}")
    ratio = med_ours / med_torch   # the figure the speed goal is judged by: medians, not the best steps
    print(f"\nratio: ours / torch = {ratio:.2f}x (median of {args.steps} steps, {args.threads} thread(s)); "
          f"goal <= {GOAL_RATIO:.2f}x: {'met' if ratio <= GOAL_RATIO else 'not met'}")
    if not isinstance(mem["ours"], str) and not isinstance(mem["torch"], str):
        ours_mb = max(0.0, mem["ours"]["peak_mb"] - mem["ours"]["setup_mb"])
        torch_mb = max(1e-9, mem["torch"]["peak_mb"] - mem["torch"]["setup_mb"])
        print(f"memory: ours / torch = {ours_mb / torch_mb:.2f}x (peak step MB); "
              f"goal <= {GOAL_MEMORY:.2f}x: {'met' if ours_mb / torch_mb <= GOAL_MEMORY else 'not met'}")
    return 1 if failed else 0


if __name__ == "__main__":
    unset_blas_overrides()   # before NumPy loads OpenBLAS (blas_env.py says why; tests leave them alone)
    sys.exit(main())
