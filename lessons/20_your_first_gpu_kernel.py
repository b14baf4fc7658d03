"""Lesson 20: your first GPU kernel. GroupNorm + SiLU in one pass, written in CUDA C, explained line by line.

What you will learn
- Why a kernel: written as whole-array NumPy/CuPy operations, y = silu(groupnorm(x)) is a dozen operations and
  23 trips through memory (each operation reads the whole activation and most write one back); one kernel reads x
  once for the statistics, once more for the output, and writes y: 3 trips. At these shapes the arithmetic is nearly free and
  the trips are the time (arithmetic intensity, with the gpu preset's numbers).
- The CUDA C of the forward, small enough to read in full: one thread block per (sample n, group g); each thread
  sums its strided share of the group's M entries; a shared-memory tree adds the T partial sums in log2(T) rounds;
  then every thread writes y = silu((x - mean) rstd gamma + beta) for its share. For the group's M entries:
      mean = (1/M) sum_i x_i      var = (1/M) sum_i x_i^2 - mean^2      rstd = 1 / sqrt(var + eps)
      y_i  = z_i sigmoid(z_i)     z_i = (x_i - mean) rstd gamma_c + beta_c      c = the channel of entry i
- What each thread does, shown on the host: the same per-thread algorithm in NumPy (threads one after another,
  their strided ranges, the tree), checked equal to the vectorised version.
- CuPy's RawKernel argument rules: a Python int goes to the GPU as a long long and a float as a double; the kernel
  reads as many bytes as its C signature says, so wrap scalars as np.int32 / np.float32.
- On a GPU (CuPy imports and a device answers): the kernel compiled by cupy.RawKernel, checked against NumPy and
  against tinyddpm's own kernel, timed against the unfused CuPy ops. Without one: nvcc --ptx compiles it (when
  nvcc is on PATH) and the host emulation stands in for the launch.

Run it:  python lessons/20_your_first_gpu_kernel.py        (a few seconds without a GPU; --fast for the tests)

Figures (in lessons/output/20_your_first_gpu_kernel/):
- traffic.png   trips through memory: the textbook ops, tinyddpm's NumPy twin, the kernel; bytes at the gpu preset
- threads.png   which entries each thread of one block reads, its partial sums, and the tree that adds them

Try this
 1. run:    set THREADS = 64, then 1024 (any power of two up to 1024), and add a shape of your own to EMULATED,
            say ((2, 16, 9, 9), 4): every check still passes, because the strided ranges and the tree follow the
            block size (on a GPU, watch the time change too). Then set WRAP_SCALARS = False, the call that forgets
            np.int32 / np.float32: predict which check fails, and why the others do not notice.
 2. modify: turn the kernel's sum and sum of squares into Welford's update (per thread a count, a mean and M2, the
            sum of squared deviations; the tree merges two of them by Chan's formula), in the host emulation, and
            compare both with float64 in float32 on groups with mean 1000 and 10000 and std 1.
 3. create: write SiLU's backward, dx = dy s (1 + x (1 - s)) with s = sigmoid(x), as a kernel of your own (one
            thread per entry, a grid-stride loop, n as a long long), emulate it on the host, check it against
            tinyddpm's silu_backward and compile it with nvcc --ptx (on a GPU: run and time it too).

Next: lessons/21_scores.py - the score view: Tweedie's formula, denoising score matching, the probability-flow ODE.
"""
# %%
import inspect
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _common import FAST, REPO, banner, check, finish, output_dir, relative_error, saved, section, try_this  # noqa: E402

from tinyddpm.backend import get_xp, import_cupy  # noqa: E402
from tinyddpm.nn.unet import plan  # noqa: E402
from tinyddpm.ops import groupnorm_fast_forward, groupnorm_silu_forward, silu_forward  # noqa: E402
from tinyddpm.training.config import preset  # noqa: E402

# %%
started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 20: your first GPU kernel")
rng = np.random.default_rng(0)

# Legend: N batch, C channels, G groups, Cg = C/G channels per group, S = H*W positions, M = Cg*S entries per
# group, T threads per block. x is (N, C, S) contiguous, so the M entries of group (n, g) are one run of memory
# that starts at (n G + g) M, and entry i of the run lies in channel c = g Cg + i / S.
EPS = 1e-5
THREADS = 256                     # threads per block: a power of two (the tree halves it), at most 1024
WRAP_SCALARS = True               # pass C, S, G, eps as np.int32 / np.float32 (exercise 1 sets it False)
EMULATED = [((2, 4, 6, 6), 2), ((3, 6, 5, 4), 3), ((1, 4, 3, 3), 2), ((2, 8, 7, 7), 4)]   # (shape, G) on the host
if not FAST:
    EMULATED.append(((4, 32, 14, 14), 8))                                  # M = 784: ~3 entries per thread
BATCH = 8 if FAST else 128        # the gpu preset's batch for the GPU checks and timings
GPU_CASES = [((BATCH, 64, 28, 28), 8), ((BATCH, 128, 14, 14), 8), ((BATCH, 128, 7, 7), 8),
             ((BATCH, 192, 28, 28), 8), ((3, 12, 5, 7), 4)]                # the gpu preset's shapes, and an odd one
# NVIDIA's H100 SXM datasheet: 3.35 TB/s of HBM3, 67 TFLOP/s in float32 (not tensor cores). Published, not measured.
H100_BYTES_PER_S, H100_FLOP_PER_S = 3.35e12, 67e12


def find_gpu():
    """(cupy, None) when CuPy imports and a CUDA device answers, else (None, the reason): never raises."""
    try:
        return import_cupy(), None
    except RuntimeError as e:                 # tinyddpm.backend says what is missing: CuPy, or a device
        return None, str(e).split(". ")[0].replace("tinyddpm: ", "")


cupy, no_gpu_reason = find_gpu()
if cupy is None:
    print(f"  no GPU here ({no_gpu_reason[:110]}): the host emulation stands in for the launch; section 5's GPU "
          "run and timing are skipped")
else:
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    print(f"  GPU: {name.decode() if isinstance(name, bytes) else name}: section 5 runs the kernel on it")

# %% 1. Why a kernel: trips through memory
# ---------------------------------------------------------------------------------------------------
section("1. Why a kernel: trips through memory")
# Written as whole-array operations (lessons 05 and 06), GroupNorm then SiLU is a dozen operations, and each one
# is a trip through memory: it reads its activation-sized inputs and writes its activation-sized output. On a GPU
# each is one kernel launch; the (N, G) statistics are tiny and do not count. The comment on every line below
# says how many activation-sized arrays it reads and writes, and the lesson counts those comments.


def unfused(x, gamma, beta, G, eps=EPS):
    """silu(groupnorm(x)) the textbook way, for NumPy or CuPy arrays x (N, C, *spatial); gamma, beta (C,)."""
    xp = get_xp(x)
    N, C = x.shape[:2]
    xg = x.reshape(N, G, -1)                                   # (N, G, M) a view: no trip
    mu = xg.mean(axis=2, keepdims=True)                        # trip: reads 1, writes 0
    xc = xg - mu                                               # trip: reads 1, writes 1
    sq = xc * xc                                               # trip: reads 1, writes 1
    var = sq.mean(axis=2, keepdims=True)                       # trip: reads 1, writes 0
    xhat = (xc * (1.0 / xp.sqrt(var + eps))).reshape(x.shape)  # trip: reads 1, writes 1
    shape = (1, C) + (1,) * (x.ndim - 2)                       # gamma, beta broadcast over N and the pixels
    z = xhat * gamma.reshape(shape)                            # trip: reads 1, writes 1
    z = z + beta.reshape(shape)                                # trip: reads 1, writes 1
    h = z * 0.5                                                # trip: reads 1, writes 1
    s = xp.tanh(h)                                             # trip: reads 1, writes 1
    s = s + 1.0                                                # trip: reads 1, writes 1
    s = s * 0.5                                                # trip: reads 1, writes 1   s = sigmoid(z)
    return z * s                                               # trip: reads 2, writes 1


textbook = [(int(r), int(w)) for r, w in re.findall(r"# trip: reads (\d), writes (\d)", inspect.getsource(unfused))]
trips_textbook = sum(r + w for r, w in textbook)

# tinyddpm's NumPy twin (ops/groupnorm_silu.py) already squeezes the same function into fewer passes (every sum a
# BLAS product, the affine map and SiLU's 1/2 folded together, updates in place) and numbers them in its comments.
# Reads and writes of its passes, from its lines: 1 and 3 are BLAS reads, 8 reads h and y.
twin_lines = [line.strip() for line in inspect.getsource(groupnorm_silu_forward).splitlines()
              if re.search(r"# pass \d", line)]
twin_passes = [int(re.search(r"# pass (\d+)", line).group(1)) for line in twin_lines]
twin_rw = {1: (1, 0), 2: (1, 1), 3: (1, 0), 4: (1, 1), 5: (1, 1), 6: (1, 1), 7: (1, 1), 8: (2, 1)}
trips_twin = sum(r + w for r, w in twin_rw.values())
# The kernel: x read for the statistics, x read again for the output (from L2 mostly: a group is at most a few
# hundred KB), y written. mean and rstd are (N, G): nothing.
trips_kernel = 2 + 1
print(f"  textbook ops: {len(textbook)} operations, {trips_textbook} trips; tinyddpm's NumPy twin: "
      f"{len(twin_passes)} passes, {trips_twin} trips; one kernel: 1 launch, {trips_kernel} trips")
for line in twin_lines:
    print("      " + re.sub(r"\s{2,}", "  ", line)[:110])

x = rng.standard_normal((3, 6, 5, 4)) * 2.0 + 0.5                # (N, C, H, W)
gamma, beta = rng.standard_normal(6), rng.standard_normal(6)    # (C,)
for G in (1, 3, 6):
    err = relative_error(unfused(x, gamma, beta, G), groupnorm_silu_forward(x, gamma, beta, G, eps=EPS)[0])
    check(f"the textbook ops == tinyddpm's groupnorm_silu_forward, groups={G}", err < 1e-12,
          f"max relative error {err:.1e}")
check("ops/groupnorm_silu.py's forward numbers its passes 1 to 8 in its comments", twin_passes == list(range(1, 9)),
      f"passes {twin_passes}")

# Arithmetic intensity = FLOPs / bytes moved. The kernel does per entry: 3 FLOPs for the sums (sum += v, and
# sq += v*v as one fused multiply-add), 4 for z = (x - mean) rstd gamma + beta, 4 for 0.5 z (1 + tanh(0.5 z)), and
# one tanh; call the tanh 10 more (tanhf is a short polynomial): about 21 FLOPs per entry, against 12 bytes (x read
# twice, y written, 4 bytes each in float32). 21 / 12 = 1.75 FLOP/byte. An H100 does 67e12 FLOP/s and moves
# 3.35e12 bytes/s: it runs out of bandwidth below 67 / 3.35 = 20 FLOP/byte (the "ridge" of the roofline), so this
# kernel, ten times below it, is memory-bound: its time is bytes / bandwidth, the arithmetic hides under the loads,
# and the one thing that makes it faster is fewer trips. The textbook ops do the same 21 FLOPs for 23 trips:
# 0.23 FLOP/byte, and their time is 23/3 of the kernel's at best, plus 12 launches.
FLOPS_PER_ENTRY, BYTES_PER_TRIP = 3 + 4 + 4 + 10, 4
intensity = FLOPS_PER_ENTRY / (trips_kernel * BYTES_PER_TRIP)
ridge = H100_FLOP_PER_S / H100_BYTES_PER_S
check("the kernel is memory-bound on an H100: its FLOPs per byte are far below the ridge", intensity < ridge / 5,
      f"{intensity:.2f} FLOP/byte against a ridge of {ridge:.0f}")


def norm_act_shapes(config):
    """The input shape (N, C, H, W) of every GroupNorm + SiLU in one forward pass of the config's U-Net."""
    down, middle, up = plan(config.unet)
    N = config.batch_size
    shapes = []
    for layer in down + middle + up:
        if layer.kind == "res":                                  # norm1 + act1 on the input, norm2 + act2 inside
            shapes += [(N, layer.c_in, layer.size, layer.size), (N, layer.c_out, layer.size, layer.size)]
    size = config.unet.image_size
    return shapes + [(N, config.unet.base_channels, size, size)]  # the last norm + act, before conv_out


shapes = norm_act_shapes(preset("gpu"))
distinct = sorted(set(shapes), key=lambda s: -np.prod(s))
print(f"  the gpu preset (batch {preset('gpu').batch_size}, float32): {len(shapes)} GroupNorm + SiLU per forward pass")
print(f"  {'shape (N, C, H, W)':>22} {'calls':>6} {'MB':>7} {'kernel MB':>10} {'textbook MB':>12} "
      f"{'kernel us':>10} {'textbook us':>12}   (us: bytes / 3.35 TB/s)")
for shape in distinct:
    mb = np.prod(shape) * BYTES_PER_TRIP / 1e6                  # one activation, MB
    us = mb * 1e6 / H100_BYTES_PER_S * 1e6                      # one trip of it at full bandwidth, microseconds
    print(f"  {str(shape):>22} {shapes.count(shape):>6} {mb:>7.1f} {trips_kernel * mb:>10.1f} "
          f"{trips_textbook * mb:>12.1f} {trips_kernel * us:>10.0f} {trips_textbook * us:>12.0f}")
entries = sum(np.prod(s) for s in shapes)
bytes_kernel, bytes_textbook = trips_kernel * BYTES_PER_TRIP * entries, trips_textbook * BYTES_PER_TRIP * entries
print(f"  one forward pass: {bytes_kernel / 1e9:.2f} GB through the kernel against {bytes_textbook / 1e9:.2f} GB "
      f"through the textbook ops: at best {bytes_kernel / H100_BYTES_PER_S * 1e3:.2f} ms against "
      f"{bytes_textbook / H100_BYTES_PER_S * 1e3:.2f} ms on an H100")

fig, axes = plt.subplots(1, 2, figsize=(14, 5), layout="constrained")
names = [re.sub(r"\s+", " ", line.split("#")[0].strip()) for line in inspect.getsource(unfused).splitlines()
         if "# trip:" in line]
twin_names = [f"pass {k}" for k in twin_rw]
kernel_names = ["read x: statistics", "read x: output", "write y"]
for pos, color, labels, trips in ((0, "C0", names, textbook), (1.5, "C1", twin_names, list(twin_rw.values())),
                                  (3, "C2", kernel_names, [(1, 0), (1, 0), (0, 1)])):
    bottom = 0
    for label, (r, w) in zip(labels, trips):
        axes[0].bar(pos, r + w, 1.2, bottom=bottom, color=color, edgecolor="white")
        axes[0].text(pos, bottom + (r + w) / 2, label[:30], ha="center", va="center", fontsize=6.5, color="white")
        bottom += r + w
axes[0].set_xticks([0, 1.5, 3], [f"textbook ops\n({len(textbook)} launches)",
                                 f"tinyddpm's NumPy twin\n({len(twin_rw)} passes)", "one kernel\n(1 launch)"])
axes[0].set_ylabel("activation-sized trips through memory (reads + writes)")
axes[0].set_title("GroupNorm + SiLU: every operation is a trip through memory", fontsize=10)
labels = [f"{s[1]} ch\n{s[2]}x{s[3]}\n(x{shapes.count(s)})" for s in distinct]
mb = np.array([np.prod(s) * BYTES_PER_TRIP / 1e6 * shapes.count(s) for s in distinct])
pos = np.arange(len(distinct))
axes[1].bar(pos - 0.2, trips_textbook * mb, 0.4, label=f"textbook ops ({trips_textbook} trips)", color="C0")
axes[1].bar(pos + 0.2, trips_kernel * mb, 0.4, label=f"one kernel ({trips_kernel} trips)", color="C2")
axes[1].set_xticks(pos, labels, fontsize=8)
axes[1].set_ylabel("MB per forward pass (all calls of the shape)")
axes[1].set_title(f"gpu preset, batch {preset('gpu').batch_size}: MB per shape ({bytes_textbook / 1e9:.1f} GB "
                  f"against {bytes_kernel / 1e9:.1f} GB in all)", fontsize=10)
axes[1].legend()
fig.savefig(out / "traffic.png", dpi=90)
plt.close(fig)
saved(out / "traffic.png")

# %% 2. The kernel, line by line
# ---------------------------------------------------------------------------------------------------
section("2. The kernel, line by line")
# A CUDA kernel is a C function that every thread of the launch runs, each with its own threadIdx (its number in
# its block, 0 .. blockDim.x - 1) and blockIdx (its block's number in the grid). We launch N*G blocks of T threads:
# block b = n G + g owns group (n, g). Read it top to bottom; the notes after it go line by line.
KERNEL_SOURCE = r"""
// y = silu(groupnorm(x)) in float32 for x (N, C, S) contiguous: one thread block per (n, g), blockDim.x a power of 2
extern "C" __global__ void gn_silu_forward(
    const float* x, const float* gamma, const float* beta,      // (N, C, S), (C,), (C,)
    float* y, float* mean_out, float* rstd_out,                 // (N, C, S), (N, G), (N, G)
    int C, int S, int G, float eps)
{
    __shared__ float s_sum[1024];                  // one slot per thread, shared by the block
    __shared__ float s_sq[1024];

    const int Cg = C / G, M = Cg * S;              // channels and entries per group
    const int g = blockIdx.x % G;                  // blockIdx.x = n * G + g
    const float* xg = x + (long long)blockIdx.x * M;   // the group's M entries, one run of memory
    float* yg = y + (long long)blockIdx.x * M;
    const int t = threadIdx.x, T = blockDim.x;

    // 1. each thread: sum and sum of squares of entries t, t + T, t + 2T, ...
    float sum = 0.0f, sq = 0.0f;
    for (int i = t; i < M; i += T) {
        const float v = xg[i];
        sum += v;
        sq += v * v;
    }
    s_sum[t] = sum;
    s_sq[t] = sq;
    __syncthreads();                               // every partial written before any is read

    // 2. tree reduction: T partials -> 1 in log2(T) rounds
    for (int stride = T / 2; stride > 0; stride /= 2) {
        if (t < stride) {
            s_sum[t] += s_sum[t + stride];
            s_sq[t] += s_sq[t + stride];
        }
        __syncthreads();                           // a round ends everywhere before the next reads it
    }
    const float mean = s_sum[0] / M;
    const float var = fmaxf(s_sq[0] / M - mean * mean, 0.0f);   // E[x^2] - E[x]^2 (exercise 2: Welford)
    const float rstd = rsqrtf(var + eps);
    if (t == 0) {
        mean_out[blockIdx.x] = mean;               // what a backward needs: mean and rstd, (N, G)
        rstd_out[blockIdx.x] = rstd;
    }

    // 3. each thread: its own entries again, normalised, scaled, shifted, through SiLU
    for (int i = t; i < M; i += T) {
        const int c = g * Cg + i / S;              // entry i of the group lies in channel g Cg + i / S
        const float z = (xg[i] - mean) * rstd * gamma[c] + beta[c];
        yg[i] = 0.5f * z * (1.0f + tanhf(0.5f * z));   // z sigmoid(z), sigmoid(z) = (1 + tanh(z/2)) / 2
    }
}
"""
# Line by line:
# - extern "C": keep the name gn_silu_forward unmangled, so that cupy.RawKernel(source, "gn_silu_forward") finds it.
#   __global__: a kernel, launched from the host, run by every thread. Pointers are device memory (CuPy arrays).
# - __shared__: memory on the chip, one copy per block, seen by all its threads (48 KB a block by default; these
#   two arrays take 8 KB). It is how the threads of a block talk; registers (sum, sq, v) are each thread's own.
# - blockIdx.x -> (n, g): block b works on the run x[b M : (b + 1) M]; g = b % G picks gamma and beta's channels.
#   (long long) before the multiplication: b M is an entry index into the whole tensor and may pass 2^31.
# - the strided loop i = t, t + T, ...: neighbouring threads read neighbouring floats at the same moment, so a
#   warp's 32 loads are one 128-byte transaction ("coalesced"); it also works for any M, and a thread with t >= M
#   simply adds nothing.
# - __syncthreads(): a barrier for the block. Without the first, thread 0 could read s_sum[128] before thread 128
#   wrote it; without the one in the loop, a round could read a slot the previous round has not yet updated.
# - why a tree: one thread adding T partials takes T steps while T - 1 threads wait; halving takes log2(T)
#   steps (8 for 256 threads), every step done by many threads at once. It needs T to be a power of two.
# - mean, var, rstd: every thread computes them from slot 0 (after the last barrier it holds the block's total);
#   rsqrtf is the hardware's 1/sqrt. fmaxf(.., 0): rounding can make E[x^2] - E[x]^2 slightly negative.
# - the output loop reads x a second time (the group was just read: mostly from L2) and writes y once.
print(f"  the lesson's kernel: {len(KERNEL_SOURCE.strip().splitlines())} lines of CUDA C:")
for number, line in enumerate(KERNEL_SOURCE.strip("\n").splitlines(), 1):
    print(f"    {number:3d} | {line}")

# The production version, tinyddpm/kernels/groupnorm_silu.cu, does the same job with four upgrades:
# - Welford statistics (count, mean, M2 per thread, merged by Chan's formula): no E[x^2] - E[x]^2, so float32
#   stays accurate when |mean| >> std (exercise 2 shows why);
# - the reduction by warp shuffles (__shfl_down_sync: the 32 lanes of a warp swap registers directly), then
#   shared memory only across warps: fewer barriers, no power-of-two requirement beyond whole warps;
# - float and double versions from one template;
# - the backward, with per-(n, c) partial sums for dgamma and dbeta that the launcher adds in a fixed order.
production = (REPO / "tinyddpm" / "kernels" / "groupnorm_silu.cu").read_text()
upgrades = ["welford_merge", "__shfl_down_sync", "groupnorm_silu_forward_f64", "groupnorm_silu_backward_f32"]
check("tinyddpm/kernels/groupnorm_silu.cu has the upgrades named here (Welford, shuffles, double, backward)",
      all(u in production for u in upgrades), ", ".join(u for u in upgrades if u in production))

# %% 3. What each thread does: the kernel on the host
# ---------------------------------------------------------------------------------------------------
section("3. What each thread does: the kernel on the host")
# The same lines in NumPy, the block's threads run one after another where the GPU runs them at once. Nothing
# here is vectorised on purpose: thread t's loop is the kernel's loop, the tree is the kernel's tree.


def block_on_host(b, T, x, gamma, beta, y, mean_out, rstd_out, C, S, G, eps, record=None):
    """Thread block b (= n G + g) of gn_silu_forward, its T threads one after another; writes y, mean_out, rstd_out.

    Works in x's float type (float32 as on the GPU; float64 to check the algorithm exactly). ``record``, a dict,
    gets the partial sums and the slots of every round of the tree, for the figure.
    """
    f = x.dtype.type
    Cg = C // G
    M = Cg * S
    g = b % G
    xg = x.reshape(-1)[b * M:(b + 1) * M]                # views: writing yg writes y
    yg = y.reshape(-1)[b * M:(b + 1) * M]
    s_sum, s_sq = np.zeros(T, x.dtype), np.zeros(T, x.dtype)   # __shared__ float s_sum[T], s_sq[T]
    # 1. each thread: sum and sum of squares of entries t, t + T, ...
    for t in range(T):
        total, sq = f(0), f(0)
        for i in range(t, M, T):
            v = xg[i]
            total += v
            sq += v * v
        s_sum[t], s_sq[t] = total, sq
    # __syncthreads(): here every thread has written its slot
    if record is not None:
        record["partials"], record["rounds"] = s_sum.copy(), [s_sum.copy()]
    # 2. the tree: in each round thread t < stride adds slot t + stride into slot t
    stride = T // 2
    while stride > 0:
        for t in range(stride):
            s_sum[t] += s_sum[t + stride]
            s_sq[t] += s_sq[t + stride]
        # __syncthreads(): the round is over for every thread
        if record is not None:
            record["rounds"].append(s_sum[:stride].copy())
        stride //= 2
    mean = s_sum[0] / f(M)
    var = max(s_sq[0] / f(M) - mean * mean, f(0))
    rstd = f(1) / np.sqrt(var + eps)
    mean_out.reshape(-1)[b], rstd_out.reshape(-1)[b] = mean, rstd     # thread 0 writes them
    # 3. each thread: its entries again, through the affine map and SiLU
    for t in range(T):
        for i in range(t, M, T):
            c = g * Cg + i // S
            z = (xg[i] - mean) * rstd * gamma[c] + beta[c]
            yg[i] = f(0.5) * z * (f(1) + np.tanh(f(0.5) * z))


def run_on_host(x, gamma, beta, G, eps=EPS, T=THREADS, record=None, block=0):
    """Every block of the grid, one after another: (y, mean, rstd); ``record`` is filled for block ``block``."""
    N, C = x.shape[:2]
    S = x.size // (N * C)
    y, mean, rstd = np.empty_like(x), np.empty((N, G), x.dtype), np.empty((N, G), x.dtype)
    for b in range(N * G):
        block_on_host(b, T, x, gamma, beta, y, mean, rstd, C, S, G, x.dtype.type(eps), record if b == block else None)
    return y, mean, rstd


# The strided ranges split a group among the threads: every entry is read by exactly one thread, for any M and T
# (M < T leaves threads idle; they still take part in the tree, with zeros).
def reads_per_entry(M, T):
    """How many threads read each of a group's M entries: thread t reads t, t + T, t + 2T, ..."""
    reads = np.zeros(M, dtype=int)
    for t in range(T):
        reads[t::T] += 1
    return reads


group_sizes = [shape[1] // G * int(np.prod(shape[2:])) for shape, G in EMULATED]
check(f"the threads' strided ranges cover every entry of a group exactly once (T = {THREADS}, 32, 16)",
      all(np.all(reads_per_entry(M, T) == 1) for M in group_sizes for T in (THREADS, 32, 16)),
      f"groups of M = {min(group_sizes)} to {max(group_sizes)} entries")

# The algorithm is exact: in float64 the host run equals the vectorised textbook ops to round-off.
worst = 0.0
for shape, G in EMULATED:
    x = rng.standard_normal(shape) * 1.5 - 0.3
    gamma, beta = rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    worst = max(worst, relative_error(run_on_host(x, gamma, beta, G)[0], unfused(x, gamma, beta, G)))
check(f"float64: the kernel's algorithm, thread by thread (T = {THREADS}), == the vectorised textbook ops",
      worst < 1e-12, f"max relative error {worst:.1e} over {len(EMULATED)} shapes")

# One small block up close: 2 channels of 6 x 6 (M = 72) and 16 threads, so that the colours stay apart.
FIG_T = 16
x_small = (rng.standard_normal((1, 4, 6, 6)) + 0.5).astype(np.float32)
g_small, b_small = np.ones(4, np.float32), np.zeros(4, np.float32)
record = {}
y_small, mean_small, _ = run_on_host(x_small, g_small, b_small, 2, T=FIG_T, record=record, block=0)
partials = record["partials"].astype(np.float64)
check("the tree adds the 16 partial sums to the group's sum", abs(record["rounds"][-1][0] - partials.sum())
      < 1e-5 * np.abs(partials).sum(), f"tree {record['rounds'][-1][0]:.6f}, sum of partials {partials.sum():.6f}")
print(f"  the tree: {FIG_T} partials -> " + " -> ".join(str(len(r)) for r in record["rounds"][1:])
      + f" in {len(record['rounds']) - 1} rounds (log2 {FIG_T})")

fig = plt.figure(figsize=(15, 4.8), layout="constrained")
grid = fig.add_gridspec(1, 4, width_ratios=[1, 1, 1.5, 1.6])
cmap = plt.get_cmap("tab20", FIG_T)
owner = (np.arange(72) % FIG_T).reshape(2, 6, 6)        # entry i is read by thread i % T
for channel in range(2):
    ax = fig.add_subplot(grid[0, channel])
    ax.imshow(owner[channel], cmap=cmap, vmin=-0.5, vmax=FIG_T - 0.5)
    for (r, c), t in np.ndenumerate(owner[channel]):
        ax.text(c, r, str(t), ha="center", va="center", fontsize=8)
    ax.set_title(f"channel {channel} of group 0 (6 x 6):\nthe thread that reads each entry", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
ax = fig.add_subplot(grid[0, 2])
ax.bar(range(FIG_T), partials, color=[cmap(t) for t in range(FIG_T)], edgecolor="k", lw=0.5)
ax.set_xlabel("thread t")
ax.set_ylabel("its partial sum of x")
ax.set_title(f"step 1: each thread's sum over its {72 // FIG_T}-{-(-72 // FIG_T)} entries\n"
             "(before the tree reduction)", fontsize=9)
ax = fig.add_subplot(grid[0, 3])
rounds = np.full((len(record["rounds"]), FIG_T), np.nan)
for r, slots in enumerate(record["rounds"]):
    rounds[r, :len(slots)] = slots
ax.imshow(rounds, cmap="viridis", aspect="auto")
for (r, c), v in np.ndenumerate(rounds):
    if np.isfinite(v):
        ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=6,
                color="k" if v > np.nanmean(rounds) * 1.5 else "w")
ax.set_yticks(range(len(record["rounds"])), ["partials"] + [f"stride {FIG_T >> k}" for k in range(1, len(rounds))])
ax.set_xlabel("shared-memory slot")
ax.set_title("step 2: the tree, one round per row:\nslot t += slot t + stride, then __syncthreads()", fontsize=9)
fig.suptitle(f"One thread block of gn_silu_forward: group (0, 0), M = 72 entries, T = {FIG_T} threads; "
             f"mean {mean_small[0, 0]:.3f}")
fig.savefig(out / "threads.png", dpi=90)
plt.close(fig)
saved(out / "threads.png")

# %% 4. The launch's arguments: what RawKernel passes, what the kernel reads
# ---------------------------------------------------------------------------------------------------
section("4. The launch's arguments: what RawKernel passes, what the kernel reads")
# kernel(grid, block, args) hands the driver one pointer per argument: for a CuPy array, a pointer to its device
# address; for a scalar, a pointer to a copy of it made by CuPy: a NumPy scalar keeps its own type, a Python int
# becomes a long long (8 bytes) and a Python float a double (8 bytes). The driver then copies, from each pointer,
# as many bytes as the kernel's C signature says that parameter has (cuLaunchKernel: the sizes come from the
# compiled kernel, not from the arguments). Nothing compares the two. So for `int C` and `float eps` we pass
# np.int32(C) and np.float32(eps). Here is what the kernel would read either way, modelled byte for byte on the host.
C_SCALARS = {"int": np.int32, "float": np.float32, "long long": np.int64, "double": np.float64}
UNKNOWN = bytes([0xA5] * 8)        # stands for whatever lies in memory after a value that is too short


def signature(source, name):
    """[(C type, parameter name), ...] of kernel ``name`` in ``source``."""
    params = re.search(r"void\s+" + name + r"\s*\(([^)]*)\)", re.sub(r"//[^\n]*", "", source)).group(1)
    return [tuple(re.sub(r"\s+", " ", p.strip()).rsplit(" ", 1)) for p in params.split(",")]


def bytes_cupy_passes(arg):
    """The bytes CuPy points the driver to for a scalar argument."""
    if isinstance(arg, np.generic):
        return arg.tobytes()                                   # np.int32, np.float32, ...: their own width
    return (np.int64(arg) if isinstance(arg, int) else np.float64(arg)).tobytes()   # Python int, float


def value_kernel_reads(arg, ctype):
    """The value a parameter of C type ``ctype`` receives when CuPy is given ``arg``."""
    dtype = np.dtype(C_SCALARS[ctype])
    raw = bytes_cupy_passes(arg) + UNKNOWN                      # reading past a 4-byte value: unknown bytes
    return np.frombuffer(raw[:dtype.itemsize], dtype)[0]


def scalars(C, S, G, eps, wrap=None):
    """The kernel's four scalar arguments: wrapped to the C signature's int and float (WRAP_SCALARS), or not."""
    wrap = WRAP_SCALARS if wrap is None else wrap
    return (np.int32(C), np.int32(S), np.int32(G), np.float32(eps)) if wrap else (C, S, G, eps)


SIGNATURE = signature(KERNEL_SOURCE, "gn_silu_forward")
scalar_params = [(ctype, name) for ctype, name in SIGNATURE if not ctype.endswith("*")]
C_, S_, G_ = 64, 28 * 28, 8
for wrap in (True, False):
    given = scalars(C_, S_, G_, EPS, wrap)
    seen = [value_kernel_reads(arg, ctype) for (ctype, _), arg in zip(scalar_params, given)]
    print(f"  {'wrapped' if wrap else 'Python scalars'}: passed "
          + ", ".join(f"{name}={type(a).__name__}({str(a)})" for (_, name), a in zip(scalar_params, given))
          + "; the kernel reads " + ", ".join(f"{name}={str(v)}" for (_, name), v in zip(scalar_params, seen)))
    if wrap:
        check("wrapped as np.int32 / np.float32, every scalar arrives as given",
              seen[:3] == [C_, S_, G_] and seen[3] == np.float32(EPS), f"eps arrives as {seen[3]:.3g}")
    else:
        # A little-endian machine (every CUDA host) stores the low half of a long long first, so the kernel's
        # 4 bytes of a small Python int are its value: ints work by luck. The first 4 bytes of the double 1e-5 are
        # the low half of its mantissa: as a float, a tiny negative number.
        check("with Python scalars the ints arrive by luck (little-endian, < 2^31) and eps does not",
              seen[:3] == [C_, S_, G_] and seen[3] != np.float32(EPS), f"eps arrives as {seen[3]:.4g}")
# The other way round is worse: a `long long` or `double` parameter given np.int32 / np.float32 reads 4 bytes that
# lie after the value. A pointer parameter given a NumPy array (host memory) is refused by CuPy with a TypeError.
print(f"  a 'long long n' given np.int32(1000) would read {value_kernel_reads(np.int32(1000), 'long long')} "
      "(4 bytes of whatever follows)")


class HostKernel:
    """A stand-in for cupy.RawKernel(KERNEL_SOURCE, "gn_silu_forward") on the CPU: the same call, kernel(grid,
    block, args); arrays must be float32 NumPy arrays as the C signature says, and each scalar is read as the
    driver would read it (value_kernel_reads); then the blocks run on the host, one after another."""

    def __call__(self, grid, block, args, shared_mem=0):
        values = []
        for (ctype, name), arg in zip(SIGNATURE, args):
            if ctype.endswith("*"):
                if not (isinstance(arg, np.ndarray) and arg.dtype == np.float32 and arg.flags.c_contiguous):
                    raise TypeError(f"gn_silu_forward: {ctype} {name} needs a contiguous float32 array")
                values.append(arg)
            else:
                values.append(value_kernel_reads(arg, ctype))
        x, gamma, beta, y, mean, rstd, C, S, G, eps = values
        for b in range(grid[0]):
            block_on_host(b, block[0], x, gamma, beta, y, mean, rstd, int(C), int(S), int(G), eps)


def launch(kernel, x, gamma, beta, G, eps=EPS, threads=THREADS):
    """(y, mean, rstd) of the kernel on x (N, C, *spatial) float32; ``kernel`` a cupy.RawKernel or a HostKernel."""
    if threads & (threads - 1) or not 1 <= threads <= 1024:
        raise ValueError(f"launch: threads per block must be a power of two up to 1024 (the tree), got {threads}")
    xp = get_xp(x)
    x = xp.ascontiguousarray(x)
    N, C = x.shape[:2]
    S = x.size // (N * C)
    y = xp.empty_like(x)
    mean, rstd = xp.empty((N, G), dtype=xp.float32), xp.empty((N, G), dtype=xp.float32)
    kernel((N * G,), (threads,), (x, gamma, beta, y, mean, rstd) + scalars(C, S, G, eps))   # grid, block, args
    return y, mean, rstd


# The kernel as the GPU gets it: float32 arrays, the grid and block of a launch, the scalars as the driver reads
# them. Equal to the float64 result to float32 precision, and to tinyddpm's op (and the mean and rstd it saves).
worst, worst_op, worst_stats = 0.0, 0.0, 0.0
for shape, G in EMULATED:
    x = (rng.standard_normal(shape) * 1.5 - 0.3).astype(np.float32)
    gamma, beta = rng.standard_normal((2, shape[1])).astype(np.float32)
    y, mean, rstd = launch(HostKernel(), x, gamma, beta, G)
    reference = unfused(*(a.astype(np.float64) for a in (x, gamma, beta)), G)
    y_op, cache = groupnorm_silu_forward(x, gamma, beta, G, eps=EPS)
    worst = max(worst, relative_error(y, reference))
    worst_op = max(worst_op, relative_error(y, y_op))
    worst_stats = max(worst_stats, relative_error(mean, cache.mean), relative_error(rstd, cache.rstd))
check(f"float32 launches on the host (T = {THREADS}) == the float64 textbook ops (relative error < 1e-5)",
      worst < 1e-5, f"max relative error {worst:.1e} over {len(EMULATED)} shapes")
check("... and == tinyddpm's groupnorm_silu_forward, y and the saved mean, rstd", max(worst_op, worst_stats) < 1e-5,
      f"y {worst_op:.1e}, mean/rstd {worst_stats:.1e}")

# What eps is for: a group whose entries are all equal (a blank feature map) has var = 0, and rstd = 1/sqrt(eps)
# keeps it finite: z = beta, y = silu(beta). The launch below goes through the argument model above.
x_blank = np.zeros((1, 4, 5, 5), np.float32)
gamma4, beta4 = np.ones(4, np.float32), np.array([-1.0, 0.5, 2.0, 0.0], np.float32)
y_blank, _, rstd_blank = launch(HostKernel(), x_blank, gamma4, beta4, 2)
expected = beta4 / (1.0 + np.exp(-beta4))
err = float(np.max(np.abs(y_blank[0, :, 0, 0] - expected))) if np.all(np.isfinite(y_blank)) else np.inf
check("an all-zero group comes out as silu(beta), not NaN: eps keeps rstd finite", err < 1e-6,
      f"rstd {rstd_blank[0, 0]:.4g}, max error {err:.1e}")

# %% 5. Compile it, and run it on a GPU
# ---------------------------------------------------------------------------------------------------
section("5. Compile it, and run it on a GPU")
# nvcc --ptx compiles CUDA C to PTX, the GPU's portable assembly (the driver turns it into machine code). CuPy
# compiles the same source at run time with NVRTC; nvcc here only proves that it compiles and lets us look inside.
nvcc = shutil.which("nvcc")
if nvcc is None:
    print("  nvcc is not on PATH (no CUDA toolkit here): the compile check is skipped")
else:
    with tempfile.TemporaryDirectory() as tmp:
        source, ptx = Path(tmp) / "gn_silu.cu", Path(tmp) / "gn_silu.ptx"
        source.write_text(KERNEL_SOURCE)
        result = subprocess.run([nvcc, "--ptx", "-arch=sm_80", "-Werror=all-warnings", "-o", str(ptx), str(source)],
                                capture_output=True, text=True)
        text = ptx.read_text() if result.returncode == 0 else ""
    check("nvcc --ptx compiles the lesson's kernel, warnings as errors", result.returncode == 0,
          result.stderr.strip()[:300] or f"{len(text.splitlines())} lines of PTX")
    if text:
        # In the PTX: the kernel's entry point, its two shared arrays (.shared), and bar.sync, which is what
        # __syncthreads() becomes.
        check("the PTX has the entry gn_silu_forward, shared memory and barriers (bar.sync)",
              ".entry gn_silu_forward(" in text and ".shared" in text and "bar.sync" in text,
              f"{text.count('bar.sync')} bar.sync, {text.count('ld.shared')} ld.shared")


def gpu_microseconds(fn, repeats):
    """Mean time of fn() on the GPU by CUDA events (after one warm-up call: compiles, fills the memory pool)."""
    fn()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) * 1e3 / repeats      # ms -> us per call


if cupy is None:
    print("  no GPU here: the RawKernel launch, its checks and timings are skipped (the host runs of sections 3 and 4 "
          "checked the same lines)")
else:
    kernel = cupy.RawKernel(KERNEL_SOURCE, "gn_silu_forward")
    for shape, G in GPU_CASES:
        x = (rng.standard_normal(shape) * 1.5 - 0.3).astype(np.float32)
        gamma, beta = rng.standard_normal((2, shape[1])).astype(np.float32)
        xd, gd, bd = (cupy.asarray(a) for a in (x, gamma, beta))
        y, mean, rstd = launch(kernel, xd, gd, bd, G)
        err32 = relative_error(y, unfused(x, gamma, beta, G))                                   # NumPy, float32
        err64 = relative_error(y, unfused(*(a.astype(np.float64) for a in (x, gamma, beta)), G))  # and float64
        y_lib, cache = groupnorm_silu_forward(xd, gd, bd, G, eps=EPS)     # CuPy arrays: tinyddpm's own kernel
        err_lib = relative_error(y, y_lib)
        err_stats = max(relative_error(mean, cache.mean), relative_error(rstd, cache.rstd))
        check(f"GPU {shape}, groups={G}: the lesson's kernel == NumPy (float32, float64) and tinyddpm's kernel",
              max(err32, err64, err_lib, err_stats) < 1e-5,
              f"{err32:.1e}, {err64:.1e}, {err_lib:.1e}, mean/rstd {err_stats:.1e}")
    repeats = 5 if FAST else 50
    print(f"  time per call (CUDA events, mean of {repeats}); GB/s counts the kernel's 3 trips; "
          "NumPy: the textbook ops on this machine's CPU")
    for shape, G in GPU_CASES[:4]:
        x = (rng.standard_normal(shape)).astype(np.float32)
        gamma, beta = rng.standard_normal((2, shape[1])).astype(np.float32)
        xd, gd, bd = (cupy.asarray(a) for a in (x, gamma, beta))
        ways = {"lesson kernel": lambda: launch(kernel, xd, gd, bd, G),
                "tinyddpm kernel": lambda: groupnorm_silu_forward(xd, gd, bd, G),
                "groupnorm_fast + silu": lambda: silu_forward(groupnorm_fast_forward(xd, gd, bd, G)[0]),
                "textbook ops": lambda: unfused(xd, gd, bd, G)}
        us = {name: gpu_microseconds(fn, repeats) for name, fn in ways.items()}
        t0 = time.perf_counter()
        unfused(x, gamma, beta, G)
        cpu_us = (time.perf_counter() - t0) * 1e6
        gbs = trips_kernel * x.nbytes / (us["lesson kernel"] * 1e-6) / 1e9
        print(f"  {str(shape):>18}: " + ", ".join(f"{k} {v:.0f} us" for k, v in us.items())
              + f"; NumPy {cpu_us / 1e3:.1f} ms; lesson kernel {gbs:.0f} GB/s, "
              f"{us['textbook ops'] / us['lesson kernel']:.1f}x faster than the textbook ops, "
              f"{us['groupnorm_fast + silu'] / us['lesson kernel']:.1f}x than groupnorm_fast + silu")

# %% Exercises
# ---------------------------------------------------------------------------------------------------
try_this(__doc__)
finish(started)
