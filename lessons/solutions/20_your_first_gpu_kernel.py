"""Solutions to lesson 20 (your first GPU kernel): the three "Try this" exercises, worked and checked.

Try each exercise in lessons/20_your_first_gpu_kernel.py yourself first; then run this file and compare.

Run it:   python lessons/solutions/20_your_first_gpu_kernel.py     (--fast: fewer shapes; a few seconds either way)

Without a GPU (CuPy absent or no device answering) every answer is checked on the host, as in the lesson: the
kernels run thread by thread in NumPy, and nvcc --ptx compiles the CUDA C when nvcc is on PATH. With a GPU the
same kernels also run through cupy.RawKernel, are checked against NumPy, and are timed.

Figure (in lessons/output/20_your_first_gpu_kernel/, with a solution_ prefix):
  solution_welford.png   float32 error of the two statistics against the size of the mean, |mean| / std
"""
import ast
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the lessons folder, for _common

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import FAST, banner, check, finish, output_dir, relative_error, saved, section  # noqa: E402
from tinyddpm.backend import get_xp, import_cupy  # noqa: E402
from tinyddpm.ops import groupnorm_silu_forward, silu_backward, silu_forward  # noqa: E402

started = time.perf_counter()
out = output_dir(__file__)
banner("Solutions to lesson 20: your first GPU kernel")
rng = np.random.default_rng(0)
LESSON = Path(__file__).resolve().parents[1] / "20_your_first_gpu_kernel.py"


def lesson_definitions(*names):
    """The lesson's top-level definitions called ``names`` (functions, classes, constants), in a namespace of their
    own. The lesson is a script, and importing it would run all of it; this takes only these lines of its source,
    so the kernel, its host emulation and the launch here are the lesson's own, not copies that could drift."""
    tree = ast.parse(LESSON.read_text())
    keep = [node for node in tree.body
            if (isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names)
            or (isinstance(node, ast.Assign) and any(getattr(t, "id", None) in names for t in node.targets))]
    namespace = {"np": np, "re": re, "get_xp": get_xp}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(LESSON), "exec"), namespace)
    return namespace


lesson = lesson_definitions("EPS", "THREADS", "WRAP_SCALARS", "KERNEL_SOURCE", "unfused", "block_on_host",
                            "C_SCALARS", "UNKNOWN", "signature", "bytes_cupy_passes", "value_kernel_reads", "scalars",
                            "SIGNATURE", "HostKernel", "launch")
EPS, launch, HostKernel, unfused = lesson["EPS"], lesson["launch"], lesson["HostKernel"], lesson["unfused"]
value_kernel_reads, signature = lesson["value_kernel_reads"], lesson["signature"]


def find_gpu():
    """CuPy when it imports and a device answers, else None (the lesson's test, through tinyddpm.backend)."""
    try:
        return import_cupy()
    except RuntimeError:
        return None


cupy = find_gpu()
print("  GPU: " + ("found: the kernels also run through cupy.RawKernel" if cupy is not None else
                   "none here: every answer is checked on the host; the GPU parts and timings are skipped"))
NVCC = shutil.which("nvcc")


def compile_ptx(source, entry):
    """Compile CUDA C with nvcc --ptx (warnings as errors) and check the entry point; skipped without nvcc."""
    if NVCC is None:
        print(f"  nvcc is not on PATH: {entry} is not compiled here")
        return
    with tempfile.TemporaryDirectory() as tmp:
        cu, ptx = Path(tmp) / f"{entry}.cu", Path(tmp) / f"{entry}.ptx"
        cu.write_text(source)
        result = subprocess.run([NVCC, "--ptx", "-arch=sm_80", "-Werror=all-warnings", "-o", str(ptx), str(cu)],
                                capture_output=True, text=True)
        text = ptx.read_text() if result.returncode == 0 else ""
    check(f"nvcc --ptx compiles {entry}, warnings as errors", result.returncode == 0 and f".entry {entry}(" in text,
          result.stderr.strip()[:300] or f"{len(text.splitlines())} lines of PTX")


def gpu_microseconds(fn, repeats):
    """Mean time of fn() on the GPU by CUDA events, after one warm-up call."""
    fn()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) * 1e3 / repeats


def draw(shape, scale=1.5, offset=-0.3):
    """x (float32) and gamma, beta of a GroupNorm input of ``shape``."""
    x = (rng.standard_normal(shape) * scale + offset).astype(np.float32)
    gamma, beta = rng.standard_normal((2, shape[1])).astype(np.float32)
    return x, gamma, beta


def reference(x, gamma, beta, G):
    """The textbook ops in float64 on the same float32 inputs."""
    return unfused(*(a.astype(np.float64) for a in (x, gamma, beta)), G)


# ---------------------------------------------------------------------------------------------------
section("Exercise 1 (run): block sizes, shapes, and the call that forgets np.int32 / np.float32")
# Every power of two from 32 to 1024 gives the same y to float32 round-off: thread t takes entries t, t + T, ...
# whatever T is (with T > M some threads take none and add zeros to the tree), and the tree halves T down to 1.
# Only the order of the additions changes with T, so the results differ in the last bits, not more.
shapes = [((2, 4, 6, 6), 2), ((2, 16, 9, 9), 4), ((1, 4, 3, 3), 2)] + ([] if FAST else [((4, 32, 14, 14), 8)])
for T in (32, 64, 256, 1024):
    worst = 0.0
    for shape, G in shapes:
        x, gamma, beta = draw(shape)
        worst = max(worst, relative_error(launch(HostKernel(), x, gamma, beta, G, threads=T)[0],
                                          reference(x, gamma, beta, G)))
    check(f"THREADS = {T}: every shape, incl. (2, 16, 9, 9) with 4 groups, equals float64 to < 1e-5", worst < 1e-5,
          f"max relative error {worst:.1e}")

# Beyond the exercise: why the lesson's launch refuses a block that is not a power of two. With T = 96 the tree's
# strides are 48, 24, 12, 6, 3, 1: after the stride-3 round slots 0, 1, 2 hold the partials of threads t = 0, 1, 2
# (mod 3), and the last round (stride 3 // 2 = 1) adds slot 1 into slot 0 and never touches slot 2. The sum comes
# out without the partials of every thread t = 2 (mod 3): predicted exactly, in float64.
x = rng.standard_normal((1, 2, 8, 8)) + 0.7                          # one group of M = 128 entries
record, T = {}, 96
y96, mean96, rstd96 = np.empty_like(x), np.empty((1, 1)), np.empty((1, 1))
lesson["block_on_host"](0, T, x, np.ones(2), np.zeros(2), y96, mean96, rstd96, 2, 64, 1, EPS, record)
partials = record["partials"]
predicted = partials[np.arange(T) % 3 != 2].sum() / 128
check("T = 96 (not a power of two): the tree loses the partials of threads 2, 5, 8, ... exactly as predicted",
      abs(mean96[0, 0] - predicted) < 1e-12 and abs(mean96[0, 0] - x.mean()) > 1e-3,
      f"mean {mean96[0, 0]:.4f} = predicted {predicted:.4f}, true mean {x.mean():.4f}")

# WRAP_SCALARS = False: C, S and G go as Python ints (long long, 8 bytes) and arrive right, because the kernel reads
# the first 4 bytes, which on a little-endian machine are the low half of a small number. eps goes as a double and
# the kernel reads the first 4 of its 8 bytes as a float: -1.37e-33 instead of 1e-5. What notices?
lesson["WRAP_SCALARS"] = False
wrong_eps = value_kernel_reads(EPS, "float")
x, gamma, beta = draw((2, 8, 7, 7))
y_wrong = launch(HostKernel(), x, gamma, beta, 4)[0]
err_random = relative_error(y_wrong, reference(x, gamma, beta, 4))
check("prediction: on random data (var ~ 2) the wrong eps goes unnoticed: still < 1e-5 from float64", err_random < 1e-5,
      f"eps arrives as {wrong_eps:.3g}; relative error {err_random:.1e} (it shifts rstd by eps / (2 var) ~ 2e-6)")
x_blank = np.zeros((1, 4, 5, 5), np.float32)
g4, b4 = np.ones(4, np.float32), np.array([-1.0, 0.5, 2.0, 0.0], np.float32)
with np.errstate(invalid="ignore"):          # NumPy warns at sqrt(negative); the GPU's rsqrtf returns NaN silently
    y_blank = launch(HostKernel(), x_blank, g4, b4, 2)[0]
check("prediction: the lesson's all-zero-group check fails: var = 0, var + eps < 0, rstd and y are NaN",
      np.isnan(y_blank).all(), f"{int(np.isnan(y_blank).sum())} of {y_blank.size} outputs NaN")
# And between the two: a quiet group, whose variance is near eps (std 0.003: var 9e-6), is where eps matters and
# where the wrong one changes every output. (Centred at 0: with a mean far from 0 the sum of squares would lose
# digits of its own, exercise 2's subject.)
x_quiet, gamma, beta = draw((1, 4, 6, 6), scale=0.003, offset=0.0)
y_quiet_wrong = launch(HostKernel(), x_quiet, gamma, beta, 2)[0]
lesson["WRAP_SCALARS"] = True
y_quiet_right = launch(HostKernel(), x_quiet, gamma, beta, 2)[0]
err_quiet = relative_error(y_quiet_wrong, reference(x_quiet, gamma, beta, 2))
err_right = relative_error(y_quiet_right, reference(x_quiet, gamma, beta, 2))
check("a quiet group (std 0.003, var ~ eps): the wrong call is visibly off, the right one is not",
      err_quiet > 1e-2 and err_right < 1e-5, f"wrong call {err_quiet:.1e}, right call {err_right:.1e}")

if cupy is not None:
    kernel = cupy.RawKernel(lesson["KERNEL_SOURCE"], "gn_silu_forward")
    shape, G = ((8 if FAST else 128), 64, 28, 28), 8
    x, gamma, beta = draw(shape)
    xd, gd, bd = (cupy.asarray(a) for a in (x, gamma, beta))
    ref = reference(x, gamma, beta, G)
    times = {}
    for T in (32, 64, 128, 256, 512, 1024):
        check(f"GPU, THREADS = {T}: the kernel equals float64", relative_error(launch(kernel, xd, gd, bd, G,
              threads=T)[0], ref) < 1e-5)
        times[T] = gpu_microseconds(lambda: launch(kernel, xd, gd, bd, G, threads=T), 5 if FAST else 50)
    print(f"  {shape}: " + ", ".join(f"T = {T}: {us:.0f} us" for T, us in times.items()))

# ---------------------------------------------------------------------------------------------------
section("Exercise 2 (modify): Welford's statistics instead of the sum and the sum of squares")
# The lesson's kernel takes var = E[x^2] - E[x]^2 in float32. With mean m and std s, E[x^2] = m^2 + s^2: for
# m = 1000, s = 1 that is 1,000,001, and float32 keeps 24 bits (~7 digits), so E[x^2] is already rounded by ~0.06
# per value, and var = 1 comes out as a difference of two ~1e6 numbers: a few digits left. At m = 10000, E[x^2] ~
# 1e8 is rounded by ~4 per value: var is noise, and clamped at 0 where it goes negative.
# Welford's update never forms x^2: per thread a count n, a mean and M2 = sum (x - mean)^2, updated per entry by
#     n += 1;  d = x - mean;  mean += d / n;  M2 += d (x - mean)          (x - old mean)(x - new mean)
# and two threads' (n, mean, M2) merge in the tree by Chan, Golub and LeVeque's formula, d = mean_b - mean_a:
#     n = n_a + n_b;  mean = mean_a + d n_b / n;  M2 = M2_a + M2_b + d^2 n_a n_b / n
# Everything stays at the scale of the deviations, so float32 keeps its digits for them.
WELFORD_SOURCE = r"""
// The lesson's gn_silu_forward with Welford statistics: per thread (n, mean, M2), merged pairwise in the tree.
extern "C" __global__ void gn_silu_forward_welford(
    const float* x, const float* gamma, const float* beta,
    float* y, float* mean_out, float* rstd_out,
    int C, int S, int G, float eps)
{
    __shared__ float s_n[1024], s_mean[1024], s_m2[1024];      // 12 KB: count, mean, M2 per slot

    const int Cg = C / G, M = Cg * S;
    const int g = blockIdx.x % G;
    const float* xg = x + (long long)blockIdx.x * M;
    float* yg = y + (long long)blockIdx.x * M;
    const int t = threadIdx.x, T = blockDim.x;

    // 1. each thread: Welford over entries t, t + T, ...
    float n = 0.0f, m = 0.0f, m2 = 0.0f;
    for (int i = t; i < M; i += T) {
        const float v = xg[i];
        n += 1.0f;
        const float d = v - m;
        m += d / n;
        m2 += d * (v - m);                             // (v - old mean)(v - new mean)
    }
    s_n[t] = n;
    s_mean[t] = m;
    s_m2[t] = m2;
    __syncthreads();

    // 2. tree: slot t absorbs slot t + stride (Chan et al.); an empty slot (n = 0) changes nothing
    for (int stride = T / 2; stride > 0; stride /= 2) {
        if (t < stride && s_n[t + stride] > 0.0f) {
            const float na = s_n[t], nb = s_n[t + stride], nab = na + nb;
            const float d = s_mean[t + stride] - s_mean[t];
            s_mean[t] += d * nb / nab;
            s_m2[t] += s_m2[t + stride] + d * d * na * nb / nab;
            s_n[t] = nab;
        }
        __syncthreads();
    }
    const float mean = s_mean[0];
    const float rstd = rsqrtf(s_m2[0] / M + eps);      // M2 >= 0 by construction: no clamp needed
    if (t == 0) {
        mean_out[blockIdx.x] = mean;
        rstd_out[blockIdx.x] = rstd;
    }

    // 3. unchanged
    for (int i = t; i < M; i += T) {
        const int c = g * Cg + i / S;
        const float z = (xg[i] - mean) * rstd * gamma[c] + beta[c];
        yg[i] = 0.5f * z * (1.0f + tanhf(0.5f * z));
    }
}
"""


def welford_block_on_host(b, T, x, gamma, beta, y, mean_out, rstd_out, C, S, G, eps):
    """Block b of gn_silu_forward_welford, its T threads one after another (float32 as on the GPU)."""
    f = x.dtype.type
    Cg = C // G
    M = Cg * S
    g = b % G
    xg, yg = x.reshape(-1)[b * M:(b + 1) * M], y.reshape(-1)[b * M:(b + 1) * M]
    s_n, s_mean, s_m2 = np.zeros(T, x.dtype), np.zeros(T, x.dtype), np.zeros(T, x.dtype)
    for t in range(T):                                   # 1. Welford per thread
        n, m, m2 = f(0), f(0), f(0)
        for i in range(t, M, T):
            v = xg[i]
            n += f(1)
            d = v - m
            m += d / n
            m2 += d * (v - m)
        s_n[t], s_mean[t], s_m2[t] = n, m, m2
    stride = T // 2                                      # 2. the tree, merging by Chan's formula
    while stride > 0:
        for t in range(stride):
            if s_n[t + stride] > 0:
                na, nb = s_n[t], s_n[t + stride]
                nab = na + nb
                d = s_mean[t + stride] - s_mean[t]
                s_mean[t] += d * nb / nab
                s_m2[t] += s_m2[t + stride] + d * d * na * nb / nab
                s_n[t] = nab
        stride //= 2
    mean, rstd = s_mean[0], f(1) / np.sqrt(s_m2[0] / f(M) + eps)
    mean_out.reshape(-1)[b], rstd_out.reshape(-1)[b] = mean, rstd
    for t in range(T):                                   # 3. unchanged
        for i in range(t, M, T):
            c = g * Cg + i // S
            z = (xg[i] - mean) * rstd * gamma[c] + beta[c]
            yg[i] = f(0.5) * z * (f(1) + np.tanh(f(0.5) * z))


class WelfordHostKernel:
    """cupy.RawKernel(WELFORD_SOURCE, "gn_silu_forward_welford") on the host, called like the lesson's HostKernel."""

    def __call__(self, grid, block, args, shared_mem=0):
        params = signature(WELFORD_SOURCE, "gn_silu_forward_welford")
        values = [a if ctype.endswith("*") else value_kernel_reads(a, ctype) for (ctype, _), a in zip(params, args)]
        x, gamma, beta, y, mean, rstd, C, S, G, eps = values
        for b in range(grid[0]):
            welford_block_on_host(b, block[0], x, gamma, beta, y, mean, rstd, int(C), int(S), int(G), eps)


compile_ptx(WELFORD_SOURCE, "gn_silu_forward_welford")
x, gamma, beta = draw((2, 8, 7, 7))
err_w = relative_error(launch(WelfordHostKernel(), x, gamma, beta, 4)[0], reference(x, gamma, beta, 4))
check("Welford kernel, host run: equals float64 on ordinary data (mean -0.3, std 1.5)", err_w < 1e-5,
      f"max relative error {err_w:.1e}")

# The comparison: std 1, mean from 0 to 10000, float32 inputs; the reference is float64 on the very same float32
# numbers, so only the kernel's arithmetic is measured. The error is max |y - y64| / max |y64|, and the variance's
# relative error is read from rstd: var = 1 / rstd^2 - eps.
offsets = [0.0, 10.0, 100.0, 1000.0, 10000.0] if FAST else [0.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 1e4]
shape, G = (2, 8, 8, 8), 2                                            # groups of M = 256 entries
errors = {"sum, sum of squares (the lesson)": [], "Welford": [], "tinyddpm's op (NumPy, two passes)": []}
var_errors = {"sums": [], "welford": []}
for offset in offsets:
    x, gamma, beta = draw(shape, scale=1.0, offset=offset)
    y64 = reference(x, gamma, beta, G)
    var64 = x.astype(np.float64).reshape(2, G, -1).var(axis=2)
    scale = np.abs(y64).max()
    for name, kernel in (("sum, sum of squares (the lesson)", HostKernel()), ("Welford", WelfordHostKernel())):
        y, _, rstd = launch(kernel, x, gamma, beta, G)
        errors[name].append(float(np.abs(y - y64).max() / scale))
        var = 1.0 / rstd.astype(np.float64) ** 2 - EPS
        var_errors["welford" if name == "Welford" else "sums"].append(float(np.abs(var / var64 - 1).max()))
    errors["tinyddpm's op (NumPy, two passes)"].append(
        float(np.abs(groupnorm_silu_forward(x, gamma, beta, G)[0] - y64).max() / scale))
sums, welf, two_pass = errors.values()
print(f"  {'mean / std':>10} {'sums: y':>10} {'sums: var':>10} {'Welford: y':>11} {'Welford: var':>13} "
      f"{'two-pass: y':>12}")
for k, offset in enumerate(offsets):
    print(f"  {offset:>10g} {sums[k]:>10.1e} {var_errors['sums'][k]:>10.1e} {welf[k]:>11.1e} "
          f"{var_errors['welford'][k]:>13.1e} {two_pass[k]:>12.1e}")
k1000, k10000 = offsets.index(1000.0), offsets.index(10000.0)
check("at mean 1000, std 1 the sums lose the variance (> 1% off), Welford keeps it (< 0.1%)",
      var_errors["sums"][k1000] > 1e-2 and var_errors["welford"][k1000] < 1e-3,
      f"variance off by {var_errors['sums'][k1000]:.1e} against {var_errors['welford'][k1000]:.1e}")
check("at mean 10000 the sums' output is garbage (off by > 0.1 of the largest output), Welford's within 5e-3",
      sums[k10000] > 0.1 and welf[k10000] < 5e-3, f"max error {sums[k10000]:.2f} against {welf[k10000]:.1e}")
check("at mean 0 both are at float32 round-off (< 1e-6)", sums[0] < 1e-6 and welf[0] < 1e-6,
      f"{sums[0]:.1e} and {welf[0]:.1e}")
# What is left in Welford's error at 10000: x itself is float32, spaced 1e-3 apart there, and the running mean is
# rounded to that spacing too, so x - mean is known to ~5e-4 of a std: that, not the algorithm, is the floor.

fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
plot_offsets = [max(o, 1.0) for o in offsets]
for (name, errs), marker in zip(errors.items(), "osd"):
    ax.loglog(plot_offsets, np.maximum(errs, 1e-9), marker=marker, label=name)
ax.set(xlabel="|mean| / std of the group (0 drawn at 1)", ylabel="max |y - y_float64| / max |y_float64|",
       title="GroupNorm + SiLU in float32: sums of squares against Welford")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
path = out / "solution_welford.png"
fig.savefig(path, dpi=90)
plt.close(fig)
saved(path)

if cupy is not None:
    welford = cupy.RawKernel(WELFORD_SOURCE, "gn_silu_forward_welford")
    x, gamma, beta = draw(shape, scale=1.0, offset=1e4)
    y = launch(welford, *(cupy.asarray(a) for a in (x, gamma, beta)), G)[0]
    y64 = reference(x, gamma, beta, G)
    err = float(np.abs(cupy.asnumpy(y) - y64).max() / np.abs(y64).max())
    check("GPU: the Welford kernel at mean 10000 is as accurate as its host run (< 5e-3)", err < 5e-3, f"{err:.1e}")

# ---------------------------------------------------------------------------------------------------
section("Exercise 3 (create): SiLU's backward as a kernel")
# dx = dy s (1 + x (1 - s)), s = sigmoid(x) = (1 + tanh(x/2)) / 2, entry by entry: no entry needs another, so there
# is no reduction and no shared memory, and one thread per entry is the whole design. The grid-stride loop lets any
# grid cover any n: thread (b, t) takes i = b T + t, then i + (threads in the grid), ... It reads x and dy and writes
# dx: 3 trips, where tinyddpm's silu_backward (ops/silu.py) makes 5 whole-array passes over the cached s, x and dy.
# n is a long long (an activation can pass 2^31 entries), so the launch passes np.int64(n): the argument rule
# again, the other way round (np.int32 would leave 4 bytes of the 8 the kernel reads to chance).
SILU_BACKWARD_SOURCE = r"""
extern "C" __global__ void silu_backward_kernel(const float* dy, const float* x, float* dx, long long n)
{
    const long long step = (long long)gridDim.x * blockDim.x;      // threads in the whole grid
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += step) {
        const float s = 0.5f * (1.0f + tanhf(0.5f * x[i]));        // sigmoid(x), recomputed: nothing cached
        dx[i] = dy[i] * s * (1.0f + x[i] * (1.0f - s));
    }
}
"""


class SiluBackwardHostKernel:
    """silu_backward_kernel on the host: every block, every thread, its grid-stride loop; counts each entry's
    writes in ``self.writes`` to show that the grid covers every entry once."""

    def __call__(self, grid, block, args, shared_mem=0):
        params = signature(SILU_BACKWARD_SOURCE, "silu_backward_kernel")
        dy, x, dx, n = [a if ctype.endswith("*") else value_kernel_reads(a, ctype)
                        for (ctype, _), a in zip(params, args)]
        self.writes = np.zeros(int(n), dtype=int)
        f = np.float32
        step = grid[0] * block[0]
        for b in range(grid[0]):
            for t in range(block[0]):
                i = b * block[0] + t
                while i < n:
                    s = f(0.5) * (f(1) + np.tanh(f(0.5) * x.flat[i]))
                    dx.flat[i] = dy.flat[i] * s * (f(1) + x.flat[i] * (f(1) - s))
                    self.writes[i] += 1
                    i += step


def silu_backward_launch(kernel, dy, x, threads=32, blocks=None):
    """dx from the kernel: ``blocks`` (default: enough for one entry per thread) of ``threads`` threads."""
    xp = get_xp(x)
    dx = xp.empty_like(x)
    blocks = blocks or -(-x.size // threads)
    kernel((blocks,), (threads,), (dy, x, dx, np.int64(x.size)))
    return dx


compile_ptx(SILU_BACKWARD_SOURCE, "silu_backward_kernel")
x = (rng.standard_normal((3, 5, 7, 6)) * 4.0).astype(np.float32)        # n = 630: reaches the flat tails of sigmoid
dy = rng.standard_normal(x.shape).astype(np.float32)
dx_reference = silu_backward(dy, silu_forward(x)[1])
for blocks in (None, 3):                                                 # one entry per thread; 3 blocks, 6-7 each
    host = SiluBackwardHostKernel()
    dx = silu_backward_launch(host, dy, x, threads=32, blocks=blocks)
    per_thread = "one entry per thread" if blocks is None else f"{blocks} blocks of 32: up to {-(-x.size // 96)} each"
    err = relative_error(dx, dx_reference)
    check(f"SiLU backward kernel, host run ({per_thread}): every entry written once, == tinyddpm's silu_backward",
          np.all(host.writes == 1) and err < 1e-6, f"max relative error {err:.1e}")
err64 = relative_error(dx, silu_backward(dy.astype(np.float64), silu_forward(x.astype(np.float64))[1]))
check("... and equal to the float64 gradient to float32 precision", err64 < 1e-6, f"max relative error {err64:.1e}")
n_big = 128 * 64 * 28 * 28
seen = {name: int(value_kernel_reads(arg, "long long")) for name, arg in
        (("np.int64", np.int64(n_big)), ("Python int", n_big), ("np.int32", np.int32(n_big)))}
check("n as np.int64 (or a Python int, which CuPy sends as a long long) arrives; np.int32 does not",
      seen["np.int64"] == seen["Python int"] == n_big and seen["np.int32"] != n_big,
      ", ".join(f"{k} -> {v}" for k, v in seen.items()))

if cupy is not None:
    kernel = cupy.RawKernel(SILU_BACKWARD_SOURCE, "silu_backward_kernel")
    shape = ((8 if FAST else 128), 64, 28, 28)
    x, dy = (rng.standard_normal(shape) * 3).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    xd, dyd = cupy.asarray(x), cupy.asarray(dy)
    dx = silu_backward_launch(kernel, dyd, xd, threads=256)
    check("GPU: the SiLU backward kernel == tinyddpm's silu_backward (NumPy)",
          relative_error(dx, silu_backward(dy, silu_forward(x)[1])) < 1e-6)
    cache = silu_forward(xd)[1]
    repeats = 5 if FAST else 50
    us_kernel = gpu_microseconds(lambda: silu_backward_launch(kernel, dyd, xd, threads=256), repeats)
    us_ops = gpu_microseconds(lambda: silu_backward(dyd, cache), repeats)
    print(f"  {shape}: kernel {us_kernel:.0f} us, silu_backward's CuPy ops {us_ops:.0f} us ({us_ops / us_kernel:.1f}x)")

finish(started)
