"""groupnorm_silu: the fused op against groupnorm + silu (fast and reference), gradient check, PyTorch oracle; its
CUDA kernel compiled with nvcc, its arithmetic run on the host against the NumPy twin, and its CuPy launcher driven
through a stand-in for RawKernel that checks every argument against the kernel's C signature.

No test here needs a GPU or CuPy. What they cannot show on the CPU: that the kernels run on a device (launch
configuration, shared memory, shuffles). On a GPU, ``TINYDDPM_DEVICE=cuda pytest tests/test_groupnorm_silu.py`` runs
the op tests with CuPy arrays, so through the kernel, against the unfused CuPy ops and PyTorch.
"""
import ctypes
import re
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import OP_TOLERANCE, ORACLE_TOLERANCE, oracle_error, randn, to_torch
from tinyddpm.backend import to_numpy
from tinyddpm.environment import EnvironmentVariableError
from tinyddpm.gradcheck import check_gradients
from tinyddpm.kernels import KERNEL_DIR, read_source
from tinyddpm.kernels import groupnorm_silu as launcher
from tinyddpm.ops.groupnorm import groupnorm_backward, groupnorm_forward
from tinyddpm.ops.groupnorm_fast import groupnorm_fast_backward, groupnorm_fast_forward
from tinyddpm.ops.groupnorm_silu import groupnorm_silu_backward, groupnorm_silu_forward
from tinyddpm.ops.silu import silu_backward, silu_forward

KERNEL = KERNEL_DIR / "groupnorm_silu.cu"


def unfused(norm_forward, norm_backward):
    """silu(groupnorm(x)) from the two ops, forward then backward: (y, dx, dgamma, dbeta)."""
    def run(x, gamma, beta, groups, eps, dy):
        h, norm = norm_forward(x, gamma, beta, groups, eps)
        y, act = silu_forward(h)
        return (y,) + norm_backward(silu_backward(dy, act), norm)
    return run


def fused(x, gamma, beta, groups, eps, dy):
    y, cache = groupnorm_silu_forward(x, gamma, beta, groups, eps)
    return (y,) + groupnorm_silu_backward(dy, cache)


def relative_to_scale(ours, ref):
    """max |ours - ref| / max |ref|, in float64."""
    ref = np.asarray(to_numpy(ref), dtype=np.float64)
    ours = np.asarray(to_numpy(ours), dtype=np.float64)
    return float(np.max(np.abs(ours - ref))) / max(1e-30, float(np.max(np.abs(ref))))


def assert_equal_results(ours, ref, dtype, tolerance):
    for name, a, r in zip(("y", "dx", "dgamma", "dbeta"), ours, ref):
        if r is None:
            assert a is None, name
            continue
        assert a.dtype == dtype and a.shape == r.shape, name
        assert relative_to_scale(a, r) < tolerance, (name, np.dtype(dtype).name, relative_to_scale(a, r))


def draw_case(rng, n, groups, per_group, spatial, affine, offset):
    c = groups * per_group
    x, dy = randn(rng, n, c, *spatial) + offset, randn(rng, n, c, *spatial)
    gamma, beta = (randn(rng, c), randn(rng, c)) if affine else (None, None)
    # A group of exactly 2 entries normalises to about +-1 whatever x is: the gradient is O(eps), see test_groupnorm
    eps = 0.5 if per_group * int(np.prod(spatial)) == 2 else 1e-5
    return x, gamma, beta, eps, dy


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 4), groups=st.integers(1, 4), per_group=st.integers(1, 4),
       spatial=st.lists(st.integers(1, 9), min_size=1, max_size=2), affine=st.booleans(),
       offset=st.sampled_from([0.0, 3.0, -50.0]), seed=st.integers(0, 2**31 - 1))
def test_matches_reference(n, groups, per_group, spatial, affine, offset, seed):
    x, gamma, beta, eps, dy = draw_case(np.random.default_rng(seed), n, groups, per_group, spatial, affine, offset)
    # float32 too where a group has 8 entries or more and the offset is moderate (test_groupnorm's reasons: in tiny
    # groups and at offset 50 both sides' float32 round-off is a large part of dx); float64 checks the math
    float32_too = per_group * int(np.prod(spatial)) >= 8 and abs(offset) <= 3
    precisions = ((np.float64, 1e-12), (np.float32, 2e-5)) if float32_too else ((np.float64, 1e-12),)
    for dtype, tolerance in precisions:
        x_, g_, b_, dy_ = (None if a is None else a.astype(dtype) for a in (x, gamma, beta, dy))
        ours = fused(x_, g_, b_, groups, eps, dy_)
        for reference in (unfused(groupnorm_fast_forward, groupnorm_fast_backward),
                          unfused(groupnorm_forward, groupnorm_backward)):
            assert_equal_results(ours, reference(x_, g_, b_, groups, eps, dy_), dtype, tolerance)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 3), groups=st.integers(1, 4), per_group=st.integers(1, 3),
       spatial=st.lists(st.integers(1, 4), min_size=1, max_size=2), affine=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_gradcheck(n, groups, per_group, spatial, affine, seed):
    x, gamma, beta, eps, _ = draw_case(np.random.default_rng(seed), n, groups, per_group, spatial, affine, 0.0)
    if affine:
        arrays = {"x": x, "gamma": gamma, "beta": beta}
        forward = lambda x, gamma, beta: groupnorm_silu_forward(x, gamma, beta, groups, eps)
    else:
        arrays = {"x": x}
        forward = lambda x: groupnorm_silu_forward(x, None, None, groups, eps)
    errors = check_gradients(forward, groupnorm_silu_backward, arrays, seed=seed + 1)
    assert max(errors.values()) < OP_TOLERANCE, errors


@pytest.mark.parametrize("shape, groups, affine", [((2, 6, 4, 5), 3, True), ((3, 8, 7), 4, False),
                                                   ((1, 4, 2, 3, 2), 1, True), ((2, 4, 3, 3), 4, True)])
def test_matches_torch(torch, shape, groups, affine):
    rng = np.random.default_rng(1)
    c = shape[1]
    x, dy = randn(rng, *shape) * 2 + 0.5, randn(rng, *shape)
    g, b = (randn(rng, c), randn(rng, c)) if affine else (None, None)
    ours = fused(x, g, b, groups, 1e-5, dy)
    tx = to_torch(torch, x)
    tg, tb = (to_torch(torch, g), to_torch(torch, b)) if affine else (None, None)
    ty = torch.nn.functional.silu(torch.nn.functional.group_norm(tx, groups, tg, tb, eps=1e-5))
    ty.backward(to_torch(torch, dy, requires_grad=False))
    pairs = [(ours[0], ty), (ours[1], tx.grad)] + ([(ours[2], tg.grad), (ours[3], tb.grad)] if affine else [])
    for a, theirs in pairs:
        assert oracle_error(a, theirs) < ORACLE_TOLERANCE


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_preserved_and_no_affine_gives_none(dtype):
    rng = np.random.default_rng(0)
    x, dy = randn(rng, 2, 6, 4, 4, dtype=dtype), randn(rng, 2, 6, 4, 4, dtype=dtype)
    y, cache = groupnorm_silu_forward(x, randn(rng, 6, dtype=dtype), randn(rng, 6, dtype=dtype), 3)
    assert y.dtype == dtype and all(g.dtype == dtype for g in groupnorm_silu_backward(dy, cache))
    y, cache = groupnorm_silu_forward(x, None, None, 3)
    dx, dgamma, dbeta = groupnorm_silu_backward(dy, cache)
    assert y.dtype == dx.dtype == dtype and dgamma is None and dbeta is None


def test_cache_keeps_the_input_and_per_group_statistics_only():
    rng = np.random.default_rng(0)
    x, g, b = randn(rng, 2, 6, 4, 4), randn(rng, 6), randn(rng, 6)
    _, cache = groupnorm_silu_forward(x, g, b, 3)
    assert cache.x is x and cache.gamma is g and cache.beta is b
    assert cache.mean.shape == cache.rstd.shape == (2, 3)


def test_large_offset_is_stable_in_float32():
    # mean 1e4, std 1: the forward's variance is taken of the centred values, as in groupnorm.py
    rng = np.random.default_rng(2)
    base = rng.standard_normal((2, 4, 8, 8))
    y, _ = groupnorm_silu_forward((1e4 + base).astype(np.float32), None, None, 2)
    ref, _ = groupnorm_silu_forward(base, None, None, 2)
    assert np.max(np.abs(y - ref)) < 5e-3


def test_float32_gradients_far_from_zero_mean():
    """The backward takes sum dz (x - mu) as sum dz x - mu sum dz (see the docstring): at |mu| = 100 std float32 still
    keeps about five digits (measured: dgamma 1.2e-5 off float64, the unfused ops 2.8e-6; y, dx, dbeta as theirs)."""
    rng = np.random.default_rng(4)
    x, dy = rng.standard_normal((2, 4, 8, 8, 8))
    x += 100.0
    g, b = 1 + 0.1 * rng.standard_normal((2, 8))
    ref = fused(x, g, b, 4, 1e-5, dy)
    ours = fused(*(a.astype(np.float32) for a in (x, g, b)), 4, 1e-5, dy.astype(np.float32))
    for name, a, r in zip(("y", "dx", "dgamma", "dbeta"), ours, ref):
        assert relative_to_scale(a, r) < 1e-4, (name, relative_to_scale(a, r))


def test_bad_input_names_the_op_and_shapes():
    rng = np.random.default_rng(0)
    x = randn(rng, 2, 6, 4, 4)
    with pytest.raises(ValueError, match=r"groupnorm.*groups=4.*6 channels.*\(2, 6, 4, 4\)"):
        groupnorm_silu_forward(x, None, None, 4)
    with pytest.raises(ValueError, match=r"groupnorm.*\(C,\) = \(6,\).*gamma \(5,\)"):
        groupnorm_silu_forward(x, randn(rng, 5), randn(rng, 5), 3)
    with pytest.raises(TypeError, match=r"groupnorm.*float16"):
        groupnorm_silu_forward(x.astype(np.float16), None, None, 3)


def test_nan_propagates_within_its_group_only():
    rng = np.random.default_rng(0)
    x = randn(rng, 2, 4, 3, 3)
    x[0, 0, 1, 1] = np.nan
    y, cache = groupnorm_silu_forward(x, randn(rng, 4), randn(rng, 4), 2)
    dx = groupnorm_silu_backward(randn(rng, 2, 4, 3, 3), cache)[0]
    assert np.isnan(y[0, :2]).all() and not np.isnan(y[0, 2:]).any() and not np.isnan(y[1]).any()
    assert np.isnan(dx[0, :2]).all() and not np.isnan(dx[1]).any()


# ------------------------------------------------------------------------------------------ the CUDA kernel

def nvcc():
    path = shutil.which("nvcc")
    if path is None:
        pytest.skip("nvcc is not on PATH: the CUDA kernel's compile and host checks need the CUDA toolkit")
    return path


def test_kernel_compiles_to_ptx_with_nvcc(tmp_path):
    out = tmp_path / "groupnorm_silu.ptx"
    result = subprocess.run([nvcc(), "--ptx", "-arch=sm_90", "-std=c++17", "-Werror=all-warnings", "-o", str(out),
                             str(KERNEL)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    entries = set(re.findall(r"\.entry\s+(\w+)\(", out.read_text()))
    assert entries == {f"groupnorm_silu_{way}_{t}" for way in ("forward", "backward") for t in ("f32", "f64")}


# The host build: the .cu included as it is, and host loops that do what a thread block does, in the device's
# order: thread t takes entries t, t + threads, ...; its values are merged down each warp by the shuffle tree
# (lane i takes lane i + offset, and past lane 31 keeps its own value, as __shfl_down_sync does), then the warps'
# leaders the same way. Every number comes from the file's __host__ __device__ functions.
HOST_WRAPPER = r"""
#include "@KERNEL@"

template <typename V, typename Merge> static V warp_tree(const V* in, Merge merge) {
    V lane[32];
    for (int i = 0; i < 32; ++i) lane[i] = in[i];
    for (int offset = 16; offset > 0; offset /= 2) {
        V old[32];
        for (int i = 0; i < 32; ++i) old[i] = lane[i];
        for (int i = 0; i < 32; ++i) lane[i] = merge(old[i], old[i + offset < 32 ? i + offset : i]);
    }
    return lane[0];
}

template <typename V, typename Merge> static V block_tree(const V* per_thread, int threads, V empty, Merge merge) {
    V leaders[32];
    const int warps = threads / 32;
    for (int w = 0; w < 32; ++w) leaders[w] = w < warps ? warp_tree(per_thread + 32 * w, merge) : empty;
    return warp_tree(leaders, merge);
}

template <typename T> static void host_forward(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* rstd,
                                               int C, int S, int G, T eps, int blocks, int threads) {
    const int Cg = C / G, M = Cg * S;
    Welford<T>* w = new Welford<T>[threads];
    for (long long group = 0; group < blocks; ++group) {
        const int g = (int)(group % G);
        const T* xg = x + group * M;
        for (int t = 0; t < threads; ++t) {
            w[t] = Welford<T>{T(0), T(0), T(0)};
            for (int i = t; i < M; i += threads) w[t] = welford_push(w[t], xg[i]);
        }
        const Welford<T> all = block_tree(w, threads, Welford<T>{T(0), T(0), T(0)},
                                          [](Welford<T> a, Welford<T> b) { return welford_merge(a, b); });
        mean[group] = all.mean;
        rstd[group] = group_rstd(all, eps);
        for (int i = 0; i < M; ++i) {
            const int c = g * Cg + i / S;
            y[group * M + i] = groupnorm_silu_map(xg[i], mean[group], rstd[group] * gamma[c], beta[c]);
        }
    }
    delete[] w;
}

template <typename T> static void host_backward(const T* dy, const T* x, const T* gamma, const T* beta,
                                                const T* mean, const T* rstd, T* dx, T* dgamma_part, T* dbeta_part,
                                                int C, int S, int G, int blocks, int threads) {
    const int Cg = C / G, M = Cg * S;
    T* p = new T[threads];
    T* q = new T[threads];
    auto add = [](T a, T b) { return a + b; };
    for (long long group = 0; group < blocks; ++group) {
        const long long n = group / G;
        const int g = (int)(group % G);
        const T* xg = x + group * M;
        const T* dyg = dy + group * M;
        const T mu = mean[group], r = rstd[group];
        T sum_ap = T(0), sum_gq = T(0);
        for (int j = 0; j < Cg; ++j) {
            const int c = g * Cg + j;
            const T a = r * gamma[c];
            for (int t = 0; t < threads; ++t) {
                p[t] = q[t] = T(0);
                for (int s = t; s < S; s += threads) {
                    const int i = j * S + s;
                    const T dz = silu_grad_at(dyg[i], xg[i], mu, a, beta[c]);
                    p[t] += dz;
                    q[t] += dz * ((xg[i] - mu) * r);
                }
            }
            const T P = block_tree(p, threads, T(0), add), Q = block_tree(q, threads, T(0), add);
            dbeta_part[n * C + c] = P;
            dgamma_part[n * C + c] = Q;
            sum_ap += a * P;
            sum_gq += gamma[c] * Q;
        }
        T B, D;
        groupnorm_dx_coefficients(sum_ap, sum_gq, r, T(M), &B, &D);
        for (int i = 0; i < M; ++i) {
            const int c = g * Cg + i / S;
            const T a = r * gamma[c];
            dx[group * M + i] = groupnorm_dx_map(silu_grad_at(dyg[i], xg[i], mu, a, beta[c]), xg[i], mu, a, B, D);
        }
    }
    delete[] p;
    delete[] q;
}

#define HOST_ENTRIES(T, SUFFIX)                                                                                   \
    extern "C" void host_forward##SUFFIX(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* rstd,      \
                                         int C, int S, int G, T eps, int blocks, int threads) {                  \
        host_forward<T>(x, gamma, beta, y, mean, rstd, C, S, G, eps, blocks, threads);                           \
    }                                                                                                             \
    extern "C" void host_backward##SUFFIX(const T* dy, const T* x, const T* gamma, const T* beta, const T* mean, \
                                          const T* rstd, T* dx, T* dgamma_part, T* dbeta_part, int C, int S,     \
                                          int G, int blocks, int threads) {                                      \
        host_backward<T>(dy, x, gamma, beta, mean, rstd, dx, dgamma_part, dbeta_part, C, S, G, blocks, threads); \
    }
HOST_ENTRIES(float, _f32)
HOST_ENTRIES(double, _f64)
"""


@pytest.fixture(scope="module")
def host_kernel(tmp_path_factory):
    """The kernel file's arithmetic compiled for the host by nvcc, as a ctypes library."""
    compiler = nvcc()
    folder = tmp_path_factory.mktemp("groupnorm_silu_host")
    source = folder / "host.cu"
    source.write_text(HOST_WRAPPER.replace("@KERNEL@", str(KERNEL)))
    library = folder / "libgroupnorm_silu_host.so"
    result = subprocess.run([compiler, "-shared", "-Xcompiler", "-fPIC", "--std=c++17", "-arch=sm_90", "-o",
                             str(library), str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return ctypes.CDLL(str(library))


def pointer(a):
    assert a.flags.c_contiguous
    return a.ctypes.data_as(ctypes.c_void_p)


class HostRawKernel:
    """A stand-in for cupy.RawKernel: checks each argument against the .cu file's C signature of ``name`` as CuPy
    would pass it (an array as a pointer to its dtype; np.int32 for int; np.float32 for float, np.float64 or a
    Python float for double: a Python int would go as a long long, a Python float as a double), then runs the
    kernel's host build for the grid and block given."""

    C_TYPES = {"float": np.float32, "double": np.float64}                                  # an array's dtype
    PASSED_AS = {"float": (np.float32,), "double": (np.float64, float), "int": (np.int32,)}  # a scalar's type

    def __init__(self, library, name):
        self.name, self.entry = name, getattr(library, "host_" + name.split("groupnorm_silu_", 1)[1])
        match = re.search(r'extern "C" __global__ void ' + name + r"\(([^)]*)\)", read_source("groupnorm_silu"))
        assert match, f"{name} is not an extern \"C\" kernel of groupnorm_silu.cu"
        self.params = [re.sub(r"\s+", " ", p.strip()).rsplit(" ", 1)[0] for p in match.group(1).split(",")]

    def __call__(self, grid, block, args, shared_mem=0):
        assert len(grid) == 1 and len(block) == 1 and block[0] % 32 == 0 and 32 <= block[0] <= 1024, (grid, block)
        assert len(args) == len(self.params), (self.name, len(args), self.params)
        c_args = []
        for ctype, arg in zip(self.params, args):
            base = ctype.replace("const ", "").rstrip("*").strip()
            if ctype.endswith("*"):
                assert isinstance(arg, np.ndarray) and arg.dtype == self.C_TYPES[base], (self.name, ctype, type(arg))
                c_args.append(pointer(arg))
            else:
                assert type(arg) in self.PASSED_AS[base], f"{self.name}: {ctype} parameter given {type(arg).__name__}"
                c_args.append({"int": ctypes.c_int, "float": ctypes.c_float, "double": ctypes.c_double}[base](arg))
        self.entry(*c_args, ctypes.c_int(grid[0]), ctypes.c_int(block[0]))


class HostModule:
    """A stand-in for the cupy.RawModule of groupnorm_silu.cu: get_function gives HostRawKernels."""

    def __init__(self, library):
        self.library = library

    def get_function(self, name):
        return HostRawKernel(self.library, name)


KERNEL_CASES = [((2, 6, 4, 5), 3, True, 0.0), ((3, 8, 7, 7), 4, True, 3.0), ((2, 4, 3, 3), 4, False, 0.0),
                ((2, 32, 6, 6), 4, True, -2.0), ((1, 4, 1, 1), 4, True, 0.0), ((2, 4, 1, 1), 2, True, 1.0)]


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("shape, groups, affine, offset", KERNEL_CASES)
def test_kernel_arithmetic_on_the_host_equals_the_numpy_twin(host_kernel, monkeypatch, dtype, tolerance, shape,
                                                             groups, affine, offset):
    """The launcher (kernels/groupnorm_silu.py) as the op calls it, with RawModule replaced by the host build: the
    arguments it packs must fit the C signatures, and the results equal ops/groupnorm_silu.py's NumPy path."""
    monkeypatch.setattr(launcher, "load_module", lambda name: HostModule(host_kernel))
    rng = np.random.default_rng(7)
    c = shape[1]
    x = (rng.standard_normal(shape) + offset).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma, beta = (rng.standard_normal((2, c)).astype(dtype)) if affine else (None, None)
    eps = 0.5 if c // groups * int(np.prod(shape[2:])) == 2 else 1e-5
    twin = fused(x, gamma, beta, groups, eps, dy)
    y, mean, rstd = launcher.forward(x, gamma, beta, groups, eps)
    grads = launcher.backward(dy, x, mean, rstd, gamma, beta)
    assert_equal_results((y,) + grads, twin, dtype, tolerance)
    _, cache = groupnorm_silu_forward(x, gamma, beta, groups, eps)
    assert relative_to_scale(mean, cache.mean) < tolerance and relative_to_scale(rstd, cache.rstd) < tolerance


@pytest.mark.parametrize("threads", [32, 64, 256])
def test_kernel_reductions_any_block_size(host_kernel, threads):
    """The block's Welford merge and sums give the same statistics for any whole number of warps, including
    threads with no entries (a 7x7 group of 2 channels has 98 entries, fewer than 256 threads)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 7, 7)) * 3 + 1
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    y, mean, rstd = (np.empty_like(x), np.empty((2, 2)), np.empty((2, 2)))
    host_kernel.host_forward_f64(*(pointer(a) for a in (x, gamma, beta, y, mean, rstd)), ctypes.c_int(4),
                                 ctypes.c_int(49), ctypes.c_int(2), ctypes.c_double(1e-5), ctypes.c_int(4),
                                 ctypes.c_int(threads))
    xg = x.reshape(2, 2, -1)
    assert np.allclose(mean, xg.mean(axis=2), rtol=1e-13, atol=1e-14)
    assert np.allclose(rstd, 1 / np.sqrt(xg.var(axis=2) + 1e-5), rtol=1e-13)
    assert relative_to_scale(y, groupnorm_silu_forward(x, gamma, beta, 2)[0]) < 1e-12


def test_the_op_takes_the_kernel_behind_one_switch(host_kernel, monkeypatch):
    """groupnorm_silu_forward/backward route to the launcher when ``wanted`` says so (CuPy arrays on a GPU; here
    forced, with the host build behind it), and TINYDDPM_FUSED_KERNELS=0 turns it off."""
    monkeypatch.setattr(launcher, "load_module", lambda name: HostModule(host_kernel))
    calls = []
    real_forward, real_backward = launcher.forward, launcher.backward
    monkeypatch.setattr(launcher, "forward", lambda *a: calls.append("forward") or real_forward(*a))
    monkeypatch.setattr(launcher, "backward", lambda *a: calls.append("backward") or real_backward(*a))
    monkeypatch.setattr(launcher, "is_cupy_array", lambda a: True)
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((2, 2, 8, 5, 5))
    g, b = rng.standard_normal((2, 8))
    monkeypatch.setenv("TINYDDPM_FUSED_KERNELS", "1")
    on = fused(x, g, b, 4, 1e-5, dy)
    assert calls == ["forward", "backward"]
    monkeypatch.setenv("TINYDDPM_FUSED_KERNELS", "0")
    off = fused(x, g, b, 4, 1e-5, dy)
    assert calls == ["forward", "backward"]  # no more kernel calls
    assert_equal_results(on, off, np.float64, 1e-12)
    monkeypatch.setenv("TINYDDPM_FUSED_KERNELS", "off")  # read through tinyddpm.environment: 0 or 1 only
    with pytest.raises(EnvironmentVariableError, match="TINYDDPM_FUSED_KERNELS='off'"):
        fused(x, g, b, 4, 1e-5, dy)


def test_not_wanted_for_numpy_arrays():
    assert not launcher.wanted(np.zeros((2, 4, 3, 3)))


def test_threads_are_whole_warps():
    assert [launcher._threads(m) for m in (1, 32, 33, 196, 3136)] == [32, 32, 64, 224, 256]
