"""Part b: CuPy vs NumPy parity in float64 and float32: every op's forward and backward (the gradcheck cases,
built on each device), the whole U-Net forward + backward, and one full training step."""
from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np

from tinyddpm import backend

from .common import on_device, rel_err, run_sections, short_error


# Error = max |gpu - cpu| / max |cpu| per tensor (each tensor's own scale).
# float64: the two sides differ only in summation order (OpenBLAS vs cuBLAS, NumPy's pairwise sums vs
#   CuPy's tree reductions), ~1e-16 per op and ~1e-13 through the whole network.
# float32: the same reorderings at eps = 6e-8: a sum of K terms moves by ~sqrt(K) eps of its scale
#   (K up to ~1e3 here: ~2e-6), and a network chains ~30 such layers, GroupNorm divides by standard
#   deviations and AdamW's first step normalises every gradient entry by its own size. 1e-4 leaves
#   ~50x room over that and stays far below what a wrong index or a missing term gives (1e-2 and up).
#   Each float32 row also shows NumPy's own float32-vs-float64 error: the yardstick of float32 round-off.
PARITY_TOL = {"float64": 1e-9, "float32": 1e-4}
PARITY_DTYPES = ("float64", "float32")
PARITY_UNET_BATCH = 4       # the whole U-Net: the 'tiny' preset's network (28x28), dropout 0
PARITY_TRAIN_BATCH = 8      # one training step of the 'tiny' preset, dropout 0


class HostNoise:
    """Stands in for a state's device generator: draws on the host (seeded NumPy) and copies to the device.

    NumPy's and CuPy's generators give different numbers from one seed, so for a step-for-step comparison
    both sides take their noise from here. Only standard_normal is needed: dropout is 0 in these runs."""

    def __init__(self, seed: int, xp):
        self.rng, self.xp = np.random.default_rng(seed), xp

    def standard_normal(self, shape, dtype=np.float64):
        return self.xp.asarray(self.rng.standard_normal(shape).astype(dtype))


def _parity_row(rows, section, case, tensor, dtype, err, yardstick=None, note="", raised=False):
    """One compared tensor. err None: not compared, either because the NumPy reference cannot run the case in
    this dtype (pass None: not judged) or because the device under test raised (``raised``: a failure)."""
    passed = False if raised else None if err is None else bool(err < PARITY_TOL[dtype])
    rows.append({"section": section, "case": case, "tensor": tensor, "dtype": dtype, "err": err,
                 "yardstick": yardstick, "note": note, "pass": passed})


def _run_grad_case(case, dtype, dy_host, device):
    """Forward and backward of a gradcheck case in ``dtype`` on ``device``: {'out' or input name: host array}."""
    with on_device(device):
        arrays = [a.astype(dtype) for a in case.arrays.values()]
        xp = backend.get_xp(*arrays)
        y, cache = case.forward(*arrays)
        grads = case.backward(xp.asarray(dy_host.astype(dtype)), cache)
        grads = grads if isinstance(grads, tuple) else (grads,)
        got = {"out": backend.to_numpy(y)}
        got.update({name: backend.to_numpy(g) for name, g in zip(case.arrays, grads)})
    return got


def parity_ops(suite, rows):
    """Every gradcheck case but those that draw dropout masks, built on each device from one seed."""
    from tinyddpm import gradcheck

    built = {}
    for side, device in (("cpu", "cpu"), ("gpu", suite.gpu)):
        with on_device(device):
            built[side] = gradcheck.default_cases(seed=0)
    rng = np.random.default_rng(1)
    for case_cpu, case_gpu in zip(built["cpu"], built["gpu"]):
        if case_cpu.random_masks:
            continue
        y64, _ = case_cpu.forward(*case_cpu.arrays.values())
        dy = rng.standard_normal(np.shape(y64))
        ref64 = None
        for dtype in PARITY_DTYPES:
            try:
                ref = _run_grad_case(case_cpu, dtype, dy, "cpu")
            except Exception as e:  # the reference cannot run it: a case that captures float64 arrays, say
                _parity_row(rows, "op", case_cpu.op, "-", dtype, None, note=f"NumPy reference: {short_error(e)}")
                continue
            try:
                got = _run_grad_case(case_gpu, dtype, dy, suite.gpu)
            except Exception as e:  # NumPy ran it, the device did not: a failure
                _parity_row(rows, "op", case_cpu.op, "-", dtype, None, note=f"device raised: {short_error(e)}",
                            raised=True)
                continue
            if dtype == "float64":
                ref64 = ref
            for name in ref:
                yard = rel_err(ref[name], ref64[name]) if dtype == "float32" and ref64 else None
                _parity_row(rows, "op", case_cpu.op, name, dtype, rel_err(got[name], ref[name]), yard)


def parity_unet(suite, rows):
    """The whole U-Net ('tiny' preset's network, 28x28, dropout 0): out, dx and every parameter gradient.

    Zero-initialised tensors (the last conv of each block) get small random values so that every path
    carries gradient. The same host weights, inputs and upstream gradient go to both devices."""
    from tinyddpm.training.config import PRESETS
    from tinyddpm.nn.unet import init_params, unet_backward, unet_forward

    cfg = replace(PRESETS["tiny"].unet, dropout=0.0)
    rng = np.random.default_rng(2)
    with on_device("cpu"):
        host = init_params(cfg, seed=0, dtype=np.float64)
    host = {k: (0.1 * rng.standard_normal(v.shape) if not np.any(v) else v) for k, v in host.items()}
    N = PARITY_UNET_BATCH
    x = rng.standard_normal((N, cfg.image_channels, cfg.image_size, cfg.image_size))
    t = rng.integers(0, 1000, size=N)
    labels = np.arange(N) % (cfg.num_classes + 1)        # includes the null label
    dout = rng.standard_normal(x.shape)

    def run(device, dtype):
        with on_device(device):
            xp = backend.device_xp()
            params = {k: xp.asarray(v.astype(dtype)) for k, v in host.items()}
            out, cache = unet_forward(params, cfg, xp.asarray(x.astype(dtype)), xp.asarray(t), xp.asarray(labels))
            dx, grads = unet_backward(xp.asarray(dout.astype(dtype)), cache)
            return {"out": backend.to_numpy(out), "dx": backend.to_numpy(dx),
                    **{k: backend.to_numpy(g) for k, g in grads.items()}}

    ref64 = None
    for dtype in PARITY_DTYPES:
        ref, got = run("cpu", dtype), run(suite.gpu, dtype)
        ref64 = ref if dtype == "float64" else ref64
        for name in ref:
            yard = rel_err(ref[name], ref64[name]) if dtype == "float32" else None
            _parity_row(rows, "unet", f"tiny U-Net, batch {N}, fwd + bwd", name, dtype,
                        rel_err(got[name], ref[name]), yard)


def parity_train_step(suite, rows):
    """One tinyddpm.training.train_step ('tiny' preset, dropout 0) on both devices from the same data.

    Batches, timesteps and label dropout come from host generators on both sides already; the noise
    comes from HostNoise instead of the device generator. Compared: the loss, the clipped gradients
    (AdamW's first moment after one step is (1 - beta1) g exactly), the updated weights and the EMA."""
    from tinyddpm import new_state, preset, train_step
    from tinyddpm.training.config import PRESETS

    train, _ = suite.data()
    images, labels = train.images[:64], train.labels[:64]

    def run(device, dtype):
        cfg = preset("tiny", unet=replace(PRESETS["tiny"].unet, dropout=0.0), batch_size=PARITY_TRAIN_BATCH,
                     dtype=dtype)
        with on_device(device):
            state = new_state(cfg, images, labels)
            state.device_rng = HostNoise(7, backend.device_xp())
            loss = train_step(state)
            b1 = state.optimizer.beta1
            got = {"loss": np.asarray(float(loss))}
            got.update({f"grad {k}": backend.to_numpy(m) / (1.0 - b1) for k, m in state.optimizer.m.items()})
            got.update({f"weight {k}": backend.to_numpy(p) for k, p in state.params.items()})
            got.update({f"ema {k}": backend.to_numpy(e) for k, e in state.ema.params.items()})
            return got

    ref64 = None
    for dtype in PARITY_DTYPES:
        ref, got = run("cpu", dtype), run(suite.gpu, dtype)
        ref64 = ref if dtype == "float64" else ref64
        for name in ref:
            yard = rel_err(ref[name], ref64[name]) if dtype == "float32" else None
            _parity_row(rows, "train step", f"train_step, tiny preset, batch {PARITY_TRAIN_BATCH}", name, dtype,
                        rel_err(got[name], ref[name]), yard)


def part_b_parity(suite, res, cap):
    rows = res.setdefault("rows", [])
    res["tolerance"] = PARITY_TOL
    res["gpu_side"] = "CuPy" if not suite.dry else "NumPy (dry run: both sides NumPy, so every error is 0)"
    run_sections(res, [("ops", partial(parity_ops, suite, rows)), ("unet", partial(parity_unet, suite, rows)),
                       ("train step", partial(parity_train_step, suite, rows))])
    judged = [r for r in rows if r["err"] is not None]
    res["worst"] = {d: max((r["err"] for r in judged if r["dtype"] == d), default=None) for d in PARITY_DTYPES}
    res["not_run"] = [f"{r['case']} ({r['dtype']}): {r['note']}" for r in rows
                      if r["err"] is None and r["pass"] is None]   # the NumPy reference could not run these
    res["passed_checks"] = bool(judged) and all(r["pass"] is not False for r in rows) and not res.get("errors")
