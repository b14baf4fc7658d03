"""Flat buffers and the one-pass clip + AdamW + EMA: equal to optim.py's per-tensor reference, in a step and a run.

The error is max |fused - reference| / max |reference| over all tensors of a dict. On a GPU (TINYDDPM_DEVICE=cuda)
the same tests run the CuPy kernels of kernels/adamw_ema.cu; without one, a test compiles that file's per-element
arithmetic for the host with nvcc and checks it against the NumPy path.
"""
import ctypes
import math
import re
import shutil
import subprocess
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import randn
from tinyddpm import TrainConfig, new_state, train_step
from tinyddpm.backend import get_device, get_xp, to_device, to_numpy
from tinyddpm.kernels import KERNEL_DIR, read_source
from tinyddpm.kernels.adamw_ema import HYPER
from tinyddpm.nn.unet import UNetConfig
from tinyddpm.training.flat import FlatBuffer, flatten_in_place
from tinyddpm.training.fused_update import FusedUpdate, StepScalars, step_scalars, update_arrays
from tinyddpm.training.optim import EMA, AdamW, clip_grad_norm, lr_schedule

FLOAT64_TOLERANCE = 1e-12
FLOAT32_TOLERANCE = 1e-6


def relative_error(ours: dict, reference: dict) -> float:
    """max |ours - reference| / max |reference| over every array of the two dicts (same keys)."""
    assert set(ours) == set(reference)
    diff = max(float(np.max(np.abs(to_numpy(ours[k]) - to_numpy(reference[k])), initial=0.0)) for k in reference)
    scale = max(float(np.max(np.abs(to_numpy(reference[k])), initial=0.0)) for k in reference)
    return diff / max(scale, 1e-300)


# --------------------------------------------------------------------------------------------
# flat buffers
# --------------------------------------------------------------------------------------------

def test_flat_buffer_views_are_the_data():
    rng = np.random.default_rng(0)
    arrays = {"w": randn(rng, 2, 3), "b": randn(rng, 3), "g": randn(rng, 1, 1, 2)}
    flat = FlatBuffer.holding(arrays, order=["b", "w", "g"])
    assert flat.data.shape == (11,) and flat.data.dtype == np.float64
    assert list(flat.views) == ["w", "b", "g"]                     # the dict's order, whatever the storage order
    assert np.array_equal(to_numpy(flat.data), np.concatenate([to_numpy(arrays[k]).ravel() for k in "bwg"]))
    flat.views["w"][1, 2] = 7.0                                     # a view writes the one array ...
    assert float(flat.data[3 + 5]) == 7.0
    flat.data[0] = -1.0                                             # ... and the array is what the views show
    assert float(flat.views["b"][0]) == -1.0
    grads = {k: randn(rng, *a.shape) for k, a in arrays.items()}
    assert flat.gather(grads) is flat.data
    for k in grads:
        assert np.array_equal(to_numpy(flat.views[k]), to_numpy(grads[k]))
    zeros = flat.zeros_like()
    assert zeros.order == flat.order and zeros.offsets == flat.offsets and not to_numpy(zeros.data).any()
    with pytest.raises(TypeError, match="one dtype"):
        FlatBuffer.holding({"a": randn(rng, 2), "b": randn(rng, 2, dtype=np.float32)})
    with pytest.raises(ValueError, match=r"order must name each array once; missing \['g'\]"):
        FlatBuffer.holding(arrays, order=["b", "w"])


def test_flatten_in_place_keeps_the_dict_and_its_values():
    rng = np.random.default_rng(1)
    params = {"conv.w": randn(rng, 4, 3), "conv.b": randn(rng, 4)}
    before = {k: to_numpy(v).copy() for k, v in params.items()}
    same_dict = params
    flat = flatten_in_place(params, order=["conv.b", "conv.w"])
    assert params is same_dict and list(params) == ["conv.w", "conv.b"]
    for k in params:
        assert np.array_equal(to_numpy(params[k]), before[k])
    params["conv.w"] *= 2.0                                         # in place, as the optimizer writes: seen flat
    assert np.array_equal(to_numpy(flat.data[4:]), 2.0 * before["conv.w"].ravel())


# --------------------------------------------------------------------------------------------
# the fused update against the per-tensor reference
# --------------------------------------------------------------------------------------------

def to_dev(a, dtype):
    """A host array as ``dtype`` on the current device."""
    return to_device(np.asarray(a, dtype=dtype))


def run_both(shapes, decays, steps, clip, warmup, weight_decay, seed, dtype=np.float64):
    """The same run through clip_grad_norm + AdamW.step + EMA.update and through FusedUpdate.

    clip: 'always' (max_norm below every gradient norm), 'never' (above) or 'sometimes' (near the typical norm,
    with a gradient scale that changes per step). Returns the two (params, m, v, ema) and the norms of each step.
    """
    rng = np.random.default_rng(seed)
    start = {f"t{i}": rng.standard_normal(shape) for i, shape in enumerate(shapes)}
    no_decay = {name for name, decays_it in zip(start, decays) if not decays_it}
    size = sum(a.size for a in start.values())
    adamw_settings = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay, no_decay=no_decay)

    ref_params = {k: to_dev(a, dtype) for k, a in start.items()}
    ref_opt, ref_ema = AdamW(ref_params, **adamw_settings), EMA(ref_params, decay=0.95, warmup=warmup)
    params = {k: to_dev(a, dtype) for k, a in start.items()}
    opt, ema = AdamW(params, **adamw_settings), EMA(params, decay=0.95, warmup=warmup)
    fused = FusedUpdate(params, opt, ema)

    norms = []
    for step in range(steps):
        lr = lr_schedule(step, 1e-2, warmup_steps=5, total_steps=steps + 1)       # a rate that changes every step
        scale = rng.uniform(0.5, 1.5)
        grads = {k: to_dev(scale * rng.standard_normal(a.shape), dtype) for k, a in start.items()}
        max_norm = {"always": 1e-3, "never": 1e9, "sometimes": math.sqrt(size)}[clip]
        ref_grads = {k: g.copy() for k, g in grads.items()}
        ref_norm = clip_grad_norm(ref_grads, max_norm)
        ref_opt.step(ref_params, ref_grads, lr=lr)
        ref_ema.update(ref_params)
        fused.grads.gather(grads)
        norm = fused.clip_adamw_ema(lr, max_norm)
        norms.append((float(ref_norm), float(norm), max_norm))
    assert (opt.t, ema.num_updates) == (ref_opt.t, ref_ema.num_updates) == (steps, steps)
    return (params, opt.m, opt.v, ema.params), (ref_params, ref_opt.m, ref_opt.v, ref_ema.params), norms


def check_run(shapes, decays, steps, clip, warmup, weight_decay, seed, dtype=np.float64, tolerance=FLOAT64_TOLERANCE):
    fused, reference, norms = run_both(shapes, decays, steps, clip, warmup, weight_decay, seed, dtype)
    for what, ours, theirs in zip(("params", "m", "v", "ema"), fused, reference):
        assert relative_error(ours, theirs) < tolerance, what
    for ref_norm, norm, max_norm in norms:
        assert abs(norm - ref_norm) <= tolerance * ref_norm
    clipped = [ref_norm > max_norm for ref_norm, _, max_norm in norms]
    if clip == "always":
        assert all(clipped)
    if clip == "never":
        assert not any(clipped)


@settings(max_examples=30, deadline=None)
@given(shapes=st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=4), min_size=0, max_size=5),
       decays=st.lists(st.booleans(), min_size=6, max_size=6), clip=st.sampled_from(["always", "never", "sometimes"]),
       warmup=st.booleans(), weight_decay=st.sampled_from([0.0, 0.1]), seed=st.integers(0, 2**31 - 1))
def test_fused_update_equals_the_per_tensor_reference(shapes, decays, clip, warmup, weight_decay, seed):
    shapes = [(4,)] + shapes       # at least 4 gradient values: the 'always' threshold 1e-3 then surely clips
    check_run(shapes, decays[:len(shapes)], 50, clip, warmup, weight_decay, seed)


@pytest.mark.parametrize("clip", ["always", "never"])
@pytest.mark.parametrize("warmup", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_fused_update_every_setting(clip, warmup, weight_decay):
    """Each combination once for sure (hypothesis may not draw them all), with some tensors exempt from decay."""
    shapes = [(3, 2, 3, 3), (3,), (5, 4), (4,), (2, 2, 1)]
    check_run(shapes, [True, False, True, False, True], 50, clip, warmup, weight_decay, seed=7)


@pytest.mark.parametrize("clip", ["always", "sometimes"])
def test_fused_update_float32(clip):
    shapes = [(8, 4, 3, 3), (8,), (16, 8), (16,)]
    check_run(shapes, [True, False, True, False], 50, clip, True, 0.1, seed=3, dtype=np.float32,
              tolerance=FLOAT32_TOLERANCE)


def test_nan_gradient_makes_everything_nan_as_the_reference_does():
    rng = np.random.default_rng(4)
    params = {"w": randn(rng, 3, 2), "b": randn(rng, 3)}
    opt, ema = AdamW(params, lr=1e-3, weight_decay=0.1, no_decay={"b"}), EMA(params, decay=0.9)
    fused = FusedUpdate(params, opt, ema)
    grads = {"w": randn(rng, 3, 2), "b": randn(rng, 3)}
    grads["b"][1] = np.nan
    fused.grads.gather(grads)
    norm = fused.clip_adamw_ema(1e-3, 1.0)
    assert np.isnan(float(norm))
    assert all(np.isnan(to_numpy(a)).all() for a in (*params.values(), *ema.params.values()))  # nothing hidden
    with pytest.raises(ValueError, match="FusedUpdate.clip_adamw_ema: max_norm must be > 0, got 0"):
        fused.clip_adamw_ema(1e-3, 0)


def test_state_dicts_keep_their_names_and_load_into_the_flat_buffers():
    """Checkpoints see the same named arrays; loading one writes the flat buffers, and the runs continue alike."""
    rng = np.random.default_rng(5)
    shapes = {"conv.w": (4, 3, 3, 3), "conv.b": (4,), "out.w": (2, 4)}

    def make(seed):
        r = np.random.default_rng(seed)
        params = {k: randn(r, *s) for k, s in shapes.items()}
        opt = AdamW(params, lr=1e-2, weight_decay=0.05, no_decay={"conv.b"})
        ema = EMA(params, decay=0.9, warmup=True)
        return params, opt, ema

    params, opt, ema = make(0)
    names = (list(opt.state_dict()), list(ema.state_dict()))
    fused = FusedUpdate(params, opt, ema)
    assert (list(opt.state_dict()), list(ema.state_dict())) == names
    assert fused.params.order == ["conv.w", "out.w", "conv.b"] and fused.n_decay == 108 + 8   # decayed first
    for _ in range(3):
        fused.grads.gather({k: randn(rng, *s) for k, s in shapes.items()})
        fused.clip_adamw_ema(None, 1.0)

    saved = [{k: (to_numpy(v).copy() if hasattr(v, "shape") else v) for k, v in d.items()}
             for d in (opt.state_dict(), ema.state_dict())]
    params2, opt2, ema2 = make(1)
    fused2 = FusedUpdate(params2, opt2, ema2)
    opt2.load_state_dict(saved[0])
    ema2.load_state_dict(saved[1])
    for k in params:
        params2[k][...] = params[k]
    for a, b in ((fused.m, fused2.m), (fused.v, fused2.v), (fused.avg, fused2.avg), (fused.params, fused2.params)):
        assert np.array_equal(to_numpy(a.data), to_numpy(b.data))
    for _ in range(2):
        grads = {k: randn(rng, *s) for k, s in shapes.items()}
        for f in (fused, fused2):
            f.grads.gather(grads)
            f.clip_adamw_ema(None, 1.0)
    for a, b in ((fused.params, fused2.params), (fused.avg, fused2.avg)):
        assert np.array_equal(to_numpy(a.data), to_numpy(b.data))


# --------------------------------------------------------------------------------------------
# a whole training step: flat path against the per-tensor path
# --------------------------------------------------------------------------------------------

TINY_UNET = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), attention_resolutions=(4,), heads=2,
                       groups=4, dropout=0.1)
TINY64 = TrainConfig(unet=TINY_UNET, steps=4, batch_size=8, lr=1e-3, warmup_steps=2, lr_decay="cosine",
                     ema_decay=0.9, ema_warmup=True, weight_decay=0.01, log_every=2, checkpoint_every=0,
                     sample_every=0, dtype="float64")


class PerTensorUpdate:
    """optim.py's three per-tensor steps behind the two calls train_step makes on ``state.flat``."""

    def __init__(self, state):
        self.state, self.grads = state, self   # train_step calls state.flat.grads.gather(grads)

    def gather(self, grads):
        self.gathered = grads

    def clip_adamw_ema(self, lr, max_norm):
        state = self.state
        norm = clip_grad_norm(self.gathered, max_norm)
        state.optimizer.step(state.params, self.gathered, lr=lr)
        state.ema.update(state.params)
        return norm


def test_train_step_with_flat_buffers_equals_the_per_tensor_step():
    rng = np.random.default_rng(0)
    images = (rng.random((40, 8, 8)) > 0.6).astype(np.uint8) * 255
    labels = rng.integers(0, 10, 40)
    flat = new_state(TINY64, images, labels)
    per_tensor = new_state(TINY64, images, labels)
    for arrays in (per_tensor.params, per_tensor.optimizer.m, per_tensor.optimizer.v, per_tensor.ema.params):
        for name in arrays:   # separate arrays again, nothing shared with the flat buffers
            arrays[name] = arrays[name].copy()
    per_tensor.flat = PerTensorUpdate(per_tensor)
    assert flat.config.weight_decay > 0 and any(not d for d in flat.optimizer.decays.values())
    for _ in range(4):
        assert abs(float(train_step(flat)) - float(train_step(per_tensor))) <= 1e-12
    assert relative_error(flat.params, per_tensor.params) < FLOAT64_TOLERANCE
    assert relative_error(flat.ema.params, per_tensor.ema.params) < FLOAT64_TOLERANCE
    assert relative_error(flat.optimizer.m, per_tensor.optimizer.m) < FLOAT64_TOLERANCE
    assert relative_error(flat.optimizer.v, per_tensor.optimizer.v) < FLOAT64_TOLERANCE
    assert flat.optimizer.t == per_tensor.optimizer.t == 4 and flat.ema.num_updates == 4
    xp = get_xp(flat.flat.params.data)
    assert all(xp.shares_memory(p, flat.flat.params.data) for p in flat.params.values())  # views of one buffer


# --------------------------------------------------------------------------------------------
# kernels/adamw_ema.cu
# --------------------------------------------------------------------------------------------

def test_kernel_scalars_are_listed_in_one_order():
    """adamw_ema.cu's enum Hyper, adamw_ema.py's HYPER and fused_update.StepScalars name the scalars alike."""
    enum = re.search(r"enum Hyper \{(.*?)\};", read_source("adamw_ema"), re.S).group(1)
    names = [n.lower() for n in re.findall(r"\bH_([A-Z0-9_]+)", enum) if n != "COUNT"]
    assert tuple(names) == HYPER == StepScalars._fields


HOST_WRAPPER = r"""
#include "%(source)s"

// The kernels' arithmetic on the host: the same two __host__ __device__ functions, in a plain loop.
template <typename T>
static void host_update(T* p, T* m, T* v, T* e, const T* g, long long n, long long n_decay, const T* hyper,
                        T* norm) {
    T s = T(0);
    for (long long i = 0; i < n; ++i) s += g[i] * g[i];
    T c = clip_coefficient(s, hyper[H_MAX_NORM]);
    *norm = square_root(s);
    for (long long i = 0; i < n; ++i) adamw_ema_element(p[i], m[i], v[i], e[i], g[i], c, i < n_decay, hyper);
}

extern "C" void host_update_f32(float* p, float* m, float* v, float* e, const float* g, long long n,
                                long long n_decay, const float* hyper, float* norm) {
    host_update(p, m, v, e, g, n, n_decay, hyper, norm);
}
extern "C" void host_update_f64(double* p, double* m, double* v, double* e, const double* g, long long n,
                                long long n_decay, const double* hyper, double* norm) {
    host_update(p, m, v, e, g, n, n_decay, hyper, norm);
}
"""


@pytest.fixture(scope="module")
def host_kernel(tmp_path_factory):
    """kernels/adamw_ema.cu compiled by nvcc (the device kernels too) into a host library, loaded with ctypes."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH: kernels/adamw_ema.cu cannot be compiled for the host here")
    folder = tmp_path_factory.mktemp("adamw_ema")
    wrapper, library = folder / "host_wrapper.cu", folder / "libadamw_ema_host.so"
    wrapper.write_text(HOST_WRAPPER % {"source": KERNEL_DIR / "adamw_ema.cu"})
    result = subprocess.run(["nvcc", "-shared", "-Xcompiler", "-fPIC", "-std=c++17", "-o", str(library), str(wrapper)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return ctypes.CDLL(str(library))


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, FLOAT64_TOLERANCE), (np.float32, FLOAT32_TOLERANCE)])
@pytest.mark.parametrize("max_norm", [1e-2, 1e9])  # clips; does not
def test_kernel_arithmetic_compiled_for_the_host_equals_numpy(host_kernel, dtype, tolerance, max_norm):
    rng = np.random.default_rng(6)
    n, n_decay = 1000, 700
    function = getattr(host_kernel, {np.float32: "host_update_f32", np.float64: "host_update_f64"}[dtype])
    pointer = ctypes.POINTER(ctypes.c_float if dtype == np.float32 else ctypes.c_double)
    function.argtypes = [pointer] * 5 + [ctypes.c_longlong, ctypes.c_longlong, pointer, pointer]
    function.restype = None
    host = {k: rng.standard_normal(n).astype(dtype) for k in ("p", "m", "e")}
    host["v"] = rng.random(n).astype(dtype)
    ours = {k: a.copy() for k, a in host.items()}   # through the compiled C
    ref = {k: a.copy() for k, a in host.items()}    # through NumPy (update_arrays)
    norm = np.zeros(1, dtype)
    opt, ema = AdamW({"w": np.zeros(1)}, lr=1e-2, weight_decay=0.1), EMA({"w": np.zeros(1)}, decay=0.99, warmup=True)
    for t in range(1, 6):
        opt.t = t
        ema.num_updates = t - 1
        scalars = step_scalars(opt, ema, lr_schedule(t - 1, 1e-2, warmup_steps=3), max_norm)
        hyper = np.asarray(scalars, dtype=dtype)
        g = rng.standard_normal(n).astype(dtype)
        function(*(ours[k].ctypes.data_as(pointer) for k in ("p", "m", "v", "e")), g.ctypes.data_as(pointer),
                 n, n_decay, hyper.ctypes.data_as(pointer), norm.ctypes.data_as(pointer))
        ref_norm = update_arrays(ref["p"], ref["m"], ref["v"], ref["e"], g.copy(), n_decay, scalars)
        assert abs(float(norm[0]) - float(ref_norm)) <= tolerance * float(ref_norm)
        assert relative_error(ours, ref) < tolerance, t
    assert not np.array_equal(ours["p"], host["p"])


@pytest.mark.skipif(get_device() != "cuda", reason="the CuPy kernels need a GPU (TINYDDPM_DEVICE=cuda)")
def test_cupy_kernel_equals_the_array_path_and_repeats_bit_for_bit():
    import cupy

    from tinyddpm.kernels.adamw_ema import AdamWEMAKernel

    rng = np.random.default_rng(8)
    n, n_decay = 3_000_017, 2_000_003   # more than MAX_BLOCKS * BLOCK: the grid-stride loops go round
    for dtype, tolerance in ((np.float64, FLOAT64_TOLERANCE), (np.float32, FLOAT32_TOLERANCE)):
        start = {k: cupy.asarray(rng.standard_normal(n).astype(dtype)) for k in ("p", "m", "e")}
        start["v"] = cupy.asarray(rng.random(n).astype(dtype))
        g = cupy.asarray(rng.standard_normal(n).astype(dtype))
        scalars = StepScalars(max_norm=10.0, weight_decay_factor=1 - 1e-3, b1=0.9, one_minus_b1=0.1, b2=0.999,
                              one_minus_b2=1 - 0.999, step_size=1e-2 / (1 - 0.9 ** 3),
                              sqrt_bias2=math.sqrt(1 - 0.999 ** 3), eps=1e-8, ema_rate=0.01)
        runs = []
        for _ in range(2):
            bufs = {k: a.copy() for k, a in start.items()}
            norm = AdamWEMAKernel(dtype)(bufs["p"], bufs["m"], bufs["v"], bufs["e"], g, n_decay, scalars)
            runs.append((float(norm), {k: a.get() for k, a in bufs.items()}))
        ref = {k: a.copy() for k, a in start.items()}
        ref_norm = update_arrays(ref["p"], ref["m"], ref["v"], ref["e"], g.copy(), n_decay, scalars)
        assert abs(runs[0][0] - float(ref_norm)) <= tolerance * float(ref_norm)
        assert relative_error(runs[0][1], ref) < tolerance
        assert runs[0][0] == runs[1][0] and all(np.array_equal(runs[0][1][k], runs[1][1][k]) for k in ref)
