"""Part c: timings beside PyTorch CUDA on the same GPU (float32, TF32 off): every op of bench_ops.py, one
training step of the 'cpu' and 'gpu' presets, sampling throughput per sampler; peak GPU memory of both sides."""
from __future__ import annotations

import math
import os
import statistics
import sys
import time
from dataclasses import replace
from functools import partial

import numpy as np

import tinyddpm
from tinyddpm import backend

from . import DRY_THREADS, REPO
from .common import MB, fmt, on_device, rel_err, run_sections, short_error


# every op and shape of bench_ops.py (its op_cases, at batch OP_BATCH), checked against torch with its
# CHECK_TOLERANCE (1e-3 of the largest entry, float32) before timing
SAMPLERS_TIMED = (("ddpm", None), ("ddim", 50), ("dpm++2m", 20))   # None: the schedule's T


class Peers:
    """The two sides of part c: ours on the device under test, torch on its GPU (CPU in the dry run) or absent."""

    def __init__(self, suite):
        self.suite = suite
        self.torch, self.F, self.device, self.note = None, None, None, ""
        try:
            import torch
            import torch.nn.functional as F
        except ImportError as e:
            self.note = f"PyTorch is not installed ({e}): ours only"
            return
        if suite.dry:
            self.device = "cpu"
        elif torch.cuda.is_available():
            self.device = "cuda"
        else:
            self.note = f"torch {torch.__version__} sees no CUDA device: ours only"
            return
        torch.backends.cuda.matmul.allow_tf32 = False   # plain float32 GEMMs and convolutions, as CuPy's cuBLAS
        torch.backends.cudnn.allow_tf32 = False
        if suite.dry:
            torch.set_num_threads(int(DRY_THREADS))
        torch.set_grad_enabled(True)
        self.torch, self.F = torch, F

    def flags(self) -> dict:
        if self.torch is None:
            return {}
        t = self.torch
        return {"device": self.device, "torch": t.__version__, "torch_cuda": t.version.cuda,
                "gpu": t.cuda.get_device_name(0) if self.device == "cuda" else None,
                "matmul.allow_tf32": t.backends.cuda.matmul.allow_tf32, "cudnn.allow_tf32": t.backends.cudnn.allow_tf32,
                "cudnn.benchmark": t.backends.cudnn.benchmark,
                "float32_matmul_precision": t.get_float32_matmul_precision()}

    def sync_torch(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def ours_peak_mb(self, fn):
        """Peak MB in use in CuPy's memory pool during fn() above the level at its start (a MemoryHook counting
        every malloc and free of the pool), and how much the pool grew from empty-cache (what the device gave)."""
        cupy = self.suite.cupy
        if cupy is None:
            return None
        pool = cupy.get_default_memory_pool()
        cupy.cuda.Device().synchronize()
        pool.free_all_blocks()
        held = pool.total_bytes()

        class Peak(cupy.cuda.MemoryHook):
            name = "gpu_suite_peak"

            def __init__(self):
                self.now = self.peak = 0

            def malloc_postprocess(self, **kw):
                self.now += kw.get("mem_size", 0)
                self.peak = max(self.peak, self.now)

            def free_postprocess(self, **kw):
                self.now -= kw.get("mem_size", 0)

        hook = Peak()
        try:
            with hook:
                fn()
                cupy.cuda.Device().synchronize()
            peak = hook.peak / MB
        except Exception:   # no hook support: the pool's growth is the only figure
            fn()
            cupy.cuda.Device().synchronize()
            peak = None
        return {"peak_mb": peak, "pool_growth_mb": (pool.total_bytes() - held) / MB}

    def torch_peak_mb(self, fn):
        """Peak MB allocated by torch's caching allocator during fn() above what was allocated at its start."""
        if self.device != "cuda":
            return None
        t = self.torch
        t.cuda.synchronize()
        base = t.cuda.memory_allocated()
        t.cuda.reset_peak_memory_stats()
        fn()
        t.cuda.synchronize()
        return {"peak_mb": (t.cuda.max_memory_allocated() - base) / MB,
                "reserved_mb": t.cuda.max_memory_reserved() / MB}


def median_ms(fn, sync, repeats: int, inner: int) -> float:
    """Median over ``repeats`` of the time of ``inner`` back-to-back calls / inner, synchronised, after a warm-up."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times) * 1e3


def time_ops(suite, peers, res):
    """Every op of bench_ops.py: validate against torch, then time both sides, then their peak memory."""
    sz, rows = suite.sizes, res.setdefault("ops", [])
    for case in bench_ops().op_cases(sz.op_batch, sz.op_quick):
        row = {"op": f"{case.op} {case.detail}".strip(), "shape": case.shape}
        rows.append(row)
        try:
            time_op(suite, peers, case, row)
        except Exception as e:
            row["error"] = short_error(e)
        print(f"  {row['op']} {row['shape']}: ours {fmt(row.get('ours_ms'), '.3f')} ms, torch "
              f"{fmt(row.get('torch_ms'), '.3f')} ms {row.get('error', '')}", flush=True)


def time_op(suite, peers, case, row):
    """One op case: validate ours against torch, time both sides, measure their peak memory; fills ``row``."""
    sz, torch = suite.sizes, peers.torch
    with on_device(suite.gpu):
        xp = backend.device_xp()
        ours = partial(case.ours, {k: xp.asarray(v) for k, v in case.arrays.items()})
        y, dx = ours()
        if torch is not None:
            theirs = bench_ops().torch_runner(case, torch, peers.device)
            ty, tdx = theirs()
            row["check_err"] = max(rel_err(y, ty.detach().cpu().numpy()), rel_err(dx, tdx.cpu().numpy()))
            row["check_ok"] = row["check_err"] < bench_ops().CHECK_TOLERANCE
        row["ours_ms"] = median_ms(ours, suite.sync, sz.op_repeats, sz.op_inner)
        if torch is not None:
            row["torch_ms"] = median_ms(theirs, peers.sync_torch, sz.op_repeats, sz.op_inner)
            row["ratio"] = row["ours_ms"] / row["torch_ms"]
            row["torch_mem"] = peers.torch_peak_mb(theirs)
        row["ours_mem"] = peers.ours_peak_mb(ours)


def bench_ops():
    """benchmarks/bench_ops.py as a module: the op cases and the torch runner shared with it."""
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_ops as module

    return module


def random_digits(config):
    """Random uint8 images and labels, 4 batches' worth (the content does not change the cost): bench_train_step's."""
    bench_ops()  # puts benchmarks/ on the path
    from bench_train_step import make_data

    return make_data(config)


def make_torch_step(torch, config, params, images, labels, device):
    """step() for the PyTorch twin on ``device``: bench_train_step.py's twin of train_step, returning the loss
    tensor without waiting for the device."""
    bench_ops()  # puts benchmarks/ on the path
    from bench_train_step import make_torch

    return make_torch(config, params, images, labels, device=device, sync=False)


def step_ms(step, sync, warmup: int, steps: int) -> float:
    """Median ms of ``steps`` synchronised steps after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def time_train_steps(suite, peers, res):
    """One training step of the 'cpu' and 'gpu' presets (dropout 0, as the twin has none), both sides."""
    from tinyddpm.training.config import PRESETS, preset

    sz, rows = suite.sizes, res.setdefault("train", [])
    for name in ("cpu", "gpu"):
        base = PRESETS[name]
        config = preset(name, unet=replace(base.unet, dropout=0.0), batch_size=sz.train_batch or base.batch_size)
        row = {"preset": name, "batch": config.batch_size}
        rows.append(row)
        try:
            time_train_step(suite, peers, config, row)
        except Exception as e:
            row["error"] = short_error(e)
        print(f"  train step {name}: ours {fmt(row.get('ours_ms'), '.1f')} ms, torch {fmt(row.get('torch_ms'), '.1f')} "
              f"ms {row.get('error', '')}", flush=True)


def time_train_step(suite, peers, config, row):
    """One preset's step on both sides (torch's twin starts from our initial weights); fills ``row``."""
    from tinyddpm import new_state, train_step

    sz = suite.sizes
    images, labels = random_digits(config)
    with on_device(suite.gpu):
        state = new_state(config, images, labels)
        row["params"] = tinyddpm.count_params(state.params)
        torch_step = None
        if peers.torch is not None:   # built from the weights before any step: the same start
            torch_step = make_torch_step(peers.torch, config, state.params, images, labels, peers.device)
        ours = partial(train_step, state)
        row["ours_ms"] = step_ms(ours, suite.sync, sz.train_warmup, sz.train_steps)
        row["ours_img_s"] = config.batch_size / row["ours_ms"] * 1e3
        row["ours_mem"] = peers.ours_peak_mb(ours)
        row["ours_loss_finite"] = bool(np.all(np.isfinite(state.flush_losses())))
        time_graphed_step(suite, config, images, labels, row)
    if torch_step is not None:
        row["torch_ms"] = step_ms(torch_step, peers.sync_torch, sz.train_warmup, sz.train_steps)
        row["torch_mem"] = peers.torch_peak_mb(torch_step)
        row["torch_loss_finite"] = bool(math.isfinite(float(torch_step().detach())))
        row["ratio"] = row["ours_ms"] / row["torch_ms"]


def time_graphed_step(suite, config, images, labels, row):
    """The same step replayed from a CUDA graph (training/cuda_graph.py, TINYDDPM_CUDA_GRAPH=1 in training), on a
    fresh state: its ms, and its losses beside eager steps' from the same start (equal: the same draws and kernels).
    In the dry run NumPy runs the same machinery uncaptured."""
    from tinyddpm import new_state, train_step
    from tinyddpm.training import loop
    from tinyddpm.training.cuda_graph import GraphedSteps

    sz = suite.sizes
    try:
        eager, graphed_state = new_state(config, images, labels), new_state(config, images, labels)
        graphed = GraphedSteps(graphed_state, loop.draw_step_inputs, loop.step_on_inputs)
        for _ in range(4):   # two warm-up steps, the capture, one replay: compared with four eager steps
            train_step(eager)
            graphed.step(graphed_state)
        a, b = np.asarray(eager.flush_losses()), np.asarray(graphed_state.flush_losses())
        row["graph_vs_eager_loss_err"] = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12)))
        row["graph_ms"] = step_ms(partial(graphed.step, graphed_state), suite.sync, 1, sz.train_steps)
        row["graph_speedup"] = row["ours_ms"] / row["graph_ms"]
    except Exception as e:
        row["graph_error"] = short_error(e)
    print(f"  train step {config.unet.base_channels}-wide, CUDA graph: {fmt(row.get('graph_ms'), '.1f')} ms, loss "
          f"vs eager {fmt(row.get('graph_vs_eager_loss_err'), '.1e')} {row.get('graph_error', '')}", flush=True)


class _StopSampling(Exception):
    pass


def time_sampling(suite, peers, res):
    """images/s of ours per sampler, with guidance, on a fresh network of the sample preset."""
    from tinyddpm import sample_digits
    from tinyddpm.training.config import PRESETS, make_run_schedule
    from tinyddpm.nn.unet import init_params

    sz, rows = suite.sizes, res.setdefault("sampling", [])
    config = PRESETS[sz.sample_preset]
    res["sampling_network"] = f"'{sz.sample_preset}' preset's U-Net, fresh weights, float32"
    with on_device(suite.gpu):
        params = init_params(config.unet, seed=0, dtype=np.float32)
        schedule = make_run_schedule(config)
        run = partial(sample_digits, params, config.unet, schedule, range(10), sz.sample_per_digit,
                      guidance=config.guidance, seed=0)
        run(sampler="ddim", steps=2)   # warm-up: compiles the kernels
        for sampler, steps in SAMPLERS_TIMED:
            total = schedule.T if steps is None else steps
            row = {"sampler": sampler, "steps": total, "images": 10 * sz.sample_per_digit,
                   "guidance": config.guidance, "steps_timed": min(total, sz.ddpm_steps_timed) if sampler == "ddpm"
                   else total}
            rows.append(row)
            try:
                time_sampler(suite, peers, partial(run, sampler=sampler, steps=total), row)
            except Exception as e:
                row["error"] = short_error(e)
            print(f"  sampling {sampler} {total} steps: {fmt(row.get('img_s'), '.1f')} img/s {row.get('error', '')}",
                  flush=True)


def time_sampler(suite, peers, run, row):
    """Time run() (one sampling call) over its first row['steps_timed'] steps, extrapolated to all; fills ``row``."""
    timed, total = row["steps_timed"], row["steps"]

    def stop_after(i, t, x, x0):
        if i + 1 >= timed and timed < total:
            raise _StopSampling

    if row["sampler"] == "dpm++2m":   # peak memory of one whole run, on a second, untimed run
        row["ours_mem"] = peers.ours_peak_mb(run)
    suite.sync()
    start = time.perf_counter()
    try:
        run(callback=stop_after)
    except _StopSampling:
        pass
    suite.sync()
    row["seconds"] = (time.perf_counter() - start) * total / timed   # extrapolated to all steps
    row["img_s"] = row["images"] / row["seconds"]


def part_c_timings(suite, res, cap):
    peers = Peers(suite)
    res["torch"] = peers.flags()
    res["notes"] = [n for n in (peers.note,) if n]
    if peers.device == "cuda":
        res["notes"].append("torch: TF32 off (torch.backends.cuda.matmul.allow_tf32 = False, "
                            "torch.backends.cudnn.allow_tf32 = False), cuDNN autotuning off (benchmark False)")
    if suite.cupy is not None:
        res["notes"].append("CuPy: cuBLAS in plain float32 (TF32 only with CUPY_TF32=1; it is "
                            f"{os.environ.get('CUPY_TF32', 'unset')})")
    res["notes"].append("time: median of synchronised repeats after a warm-up (GPU: cupy.cuda.Device().synchronize(), "
                        "torch.cuda.synchronize()); ratio = ours / torch, below 1 we are faster")
    res["notes"].append("memory: ours = peak bytes in use in CuPy's default memory pool during one call above the "
                        "level at its start (a cupy.cuda.MemoryHook summing every malloc and free of the pool); "
                        "torch = torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus "
                        "memory_allocated() at the start. Both exclude what the allocators cache but do not use.")
    run_sections(res, [(name, partial(fn, suite, peers, res)) for name, fn in
                       (("ops", time_ops), ("train", time_train_steps), ("sampling", time_sampling))])
    ratios = [r["ratio"] for r in res.get("ops", []) if r.get("ratio")]
    res["ops_ratio_geomean"] = float(np.exp(np.mean(np.log(ratios)))) if ratios else None
    rows = [r for key in ("ops", "train", "sampling") for r in res.get(key, [])]
    checks = [r["check_ok"] for r in rows if "check_ok" in r]
    finite = [r[k] for r in rows for k in ("ours_loss_finite", "torch_loss_finite") if k in r]
    res["passed_checks"] = (all(checks) and all(finite) and not res.get("errors")
                            and not any("error" in r for r in rows))
