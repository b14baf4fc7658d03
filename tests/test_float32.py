"""Float32 stays float32: no float64 sneaks into a training step or a sampler step (issue 23).

NumPy 2 and CuPy 14 promote float32 (op) float64 array or NumPy float64 scalar to float64, silently: one schedule
value read as np.float64 doubles the memory and the traffic of everything computed from it on a GPU. The stand-in
below is a NumPy array that refuses to become float64: every array computed from one stays one of these, and any
float64 result raises where it is made.
"""
import sys

import numpy as np
import pytest

from tinyddpm import preset
from tinyddpm.diffusion.ddim import DDIMSampler
from tinyddpm.diffusion.ddpm import DDPMSampler
from tinyddpm.diffusion.dpm_solver import DPMSolverSampler
from tinyddpm.diffusion import diffusion_loss, q_sample
from tinyddpm.nn.unet import init_params, unet_backward, unet_forward
from tinyddpm.training.config import make_run_schedule


class Float32Only(np.ndarray):
    def __array_finalize__(self, obj):
        if self.dtype == np.float64 and not _deliberate():
            raise AssertionError("a float64 array was made from float32 data")


# Two float64 transients are deliberate and say so where they happen:
#   numpy's mean (numpy/_core/_methods.py _mean) divides a float32 sum by an intp count in float64 and casts the
#   result back (NEP 50: a NumPy integer is not a weak scalar); CuPy's mean does not;
#   ops/embedding.py sums the label table's gradient, (K, D) = (11, 64) numbers, in float64 (bincount's weight type)
#   and casts it back: its docstring says why.
DELIBERATE = {"_mean", "_rows_sum_bincount", "_rows_sum_add_at"}


def _deliberate() -> bool:
    frame = sys._getframe(1)
    for _ in range(3):
        if frame is None:
            return False
        if frame.f_code.co_name in DELIBERATE:
            return True
        frame = frame.f_back
    return False


def f32(a):
    return np.asarray(a).view(Float32Only)


@pytest.mark.parametrize("prediction, min_snr_gamma", [("eps", None), ("v", 5.0), ("x0", None)])
def test_training_forward_loss_backward_stay_float32(prediction, min_snr_gamma):
    cfg = preset("tiny")
    u = cfg.unet
    schedule = make_run_schedule(cfg)
    params = {k: f32(v) for k, v in init_params(u, seed=0, dtype=np.float32).items()}
    rng = np.random.default_rng(0)
    x0 = f32(rng.uniform(-1, 1, (3, 1, 28, 28)).astype(np.float32))
    noise = f32(rng.standard_normal(x0.shape).astype(np.float32))
    t = np.array([0, 500, 999])
    labels = np.array([1, 2, u.null_label])
    x_t = q_sample(schedule, x0, t, noise)
    out, cache = unet_forward(params, u, x_t, t, labels, train=True, rng=np.random.default_rng(1))
    loss, dout = diffusion_loss(schedule, out, x0, t, noise, prediction, "mse", min_snr_gamma)
    dx, grads = unet_backward(dout, cache)
    for name, a in [("x_t", x_t), ("out", out), ("loss", loss), ("dout", dout), ("dx", dx), *grads.items()]:
        assert a.dtype == np.float32, name


@pytest.mark.parametrize("make", [lambda s: DDPMSampler(s), lambda s: DDIMSampler(s, 4),
                                  lambda s: DPMSolverSampler(s, 4)])
def test_sampler_steps_stay_float32(make):
    cfg = preset("tiny")
    sampler = make(make_run_schedule(cfg))
    rng = np.random.default_rng(0)
    x = f32(rng.standard_normal((2, 1, 8, 8)).astype(np.float32))
    for t in sampler.timesteps:
        eps = f32(rng.standard_normal(x.shape).astype(np.float32))
        x = sampler.step(eps, int(t), x, rng=np.random.default_rng(int(t))).prev_sample
        assert x.dtype == np.float32
