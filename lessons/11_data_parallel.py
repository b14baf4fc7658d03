"""Lesson 11: data-parallel SGD, the Allreduce, and why GroupNorm needs no synchronisation.

What you will learn
  - Data-parallel SGD. The loss of a step is a mean over the B images of the batch, L = (1/B) sum_i l_i, so its
    gradient is a sum over them. Cut the batch into N shares S_r of B/N images, one per worker:
        g = dL/dtheta = sum_r g_r,      g_r = (1/B) sum_{i in S_r} dl_i/dtheta = (1/N) * (gradient of S_r's own mean)
    Each worker runs the network forward and backward on its share only; one sum over the workers gives every one
    of them the whole batch's gradient, and they all take the same optimizer step.
  - The Allreduce: the collective that sums a vector over the workers and hands every worker the sum. A ring does
    it in 2 (N - 1) steps, each worker sending 2 (N - 1) / N of the vector, however many workers there are; one
    flat buffer for all the gradients costs one message per step instead of one per tensor.
  - Why this is exact for the DDPM U-Net: GroupNorm's mean and variance belong to one image, so a share's forward is
    the rows of the whole batch's forward. BatchNorm's statistics run over the batch: each worker would see only its
    share, unless the workers Allreduce the per-channel sums inside the forward (sum x, sum x^2, the count) and
    twice more in the backward (sum dy, sum dy * xhat): "synchronised BatchNorm", an Allreduce per layer.
  - Only the order of the additions changes: in float64 the sharded gradient equals the whole batch's to ~1e-15.

Run it:
    python lessons/11_data_parallel.py           # about 20 s on 2 CPU cores
    python lessons/11_data_parallel.py --fast    # a smaller network, the same code paths (what the tests run)
With mpi4py and its mpiexec installed (pip install -e ".[mpi]"), section 4 also runs the shares in 2 processes
and sums them with a real MPI Allreduce; the whole training script does the same: mpiexec -n 2 python
examples/train_mnist.py (tinyddpm/parallel/mpi.py).

Figures, written to lessons/output/11_data_parallel/:
    data_parallel.png   traffic of a ring and of a root Allreduce; BatchNorm, synchronised or not, against
                        GroupNorm on a share; how far the sharded gradient is from the whole batch's

Try this
  1. run:    set DTYPE = np.float32 at the top and rerun. How far apart are the whole batch's gradient and the
             sharded one now, for 2, 4 and 8 shares? Does the difference grow with the number of shares, and why
             is it not 0?
  2. modify: in section 1, cut the batch into unequal shares (sizes 3 and 5 of a batch of 8) and weight each
             share's gradient by 1/N as data_parallel_gradient does. Which check fails? Find the weight that makes
             it pass again, and say why tinyddpm's DataParallel refuses a batch that N does not divide.
  3. create: write the backward of synchronised BatchNorm: each worker holds dy for its share; find the two
             per-channel sums the workers must Allreduce, and check your dx against the whole batch's BatchNorm
             backward and against finite differences (tinyddpm.gradcheck.check_gradients).

Next: lessons/12_ddpm_sampling.py - sampling: the posterior q(x_{t-1} | x_t, x_0) and ancestral DDPM steps.
"""
# %%
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import FAST, banner, check, finish, mnist_digits, output_dir, relative_error, saved, section, try_this  # noqa: E402
from tinyddpm.diffusion import make_schedule, q_sample  # noqa: E402
from tinyddpm.ops import groupnorm_forward  # noqa: E402
from tinyddpm.nn.unet import UNetConfig, init_params, unet_backward, unet_forward  # noqa: E402

DTYPE = np.float64                      # exercise 1: np.float32
BATCH = 8                               # B images in the batch, cut into N shares
SHARES = (2, 4) if FAST else (2, 4, 8)    # the N of section 1
EPS = 1e-5                              # the normalisations' eps
# A small U-Net: GroupNorm, attention and the time and label embeddings, all per image
UNET = UNetConfig(base_channels=8, channel_mults=(1, 2), blocks_per_level=1, attention_resolutions=(14,) if not FAST
                  else (), heads=2, groups=4, dropout=0.0)


def make_problem(dtype=DTYPE):
    """The same batch every time (and in every process of section 4): x_t, t, labels, the noise, the weights."""
    x0, labels = mnist_digits(BATCH, seed=11)                             # (B, 1, 28, 28) in [-1, 1], (B,)
    rng = np.random.default_rng(3)
    schedule = make_schedule("linear", 1000)
    t = rng.integers(0, 1000, BATCH)                                      # (B,)
    noise = rng.standard_normal(x0.shape)                                 # (B, 1, 28, 28)
    x_t = q_sample(schedule, x0.astype(np.float64), t, noise)             # sqrt(ab) x0 + sqrt(1 - ab) eps
    params = init_params(UNET, seed=0, dtype=np.float64)
    for name, p in params.items():                                        # wake up the zero-initialised layers,
        if not np.any(p):                                                 # so every weight carries gradient
            p[...] = rng.standard_normal(p.shape) * 0.02
    cast = {k: p.astype(dtype) for k, p in params.items()}
    return x_t.astype(dtype), t, labels, noise.astype(dtype), cast


def share_gradient(params, x_t, t, labels, noise, batch):
    """g_r: the gradient of L = (1/B) sum_i mean_j (out_ij - eps_ij)^2 from the images given (a share of B)."""
    out, cache = unet_forward(params, UNET, x_t, t, labels)                  # (b, 1, 28, 28)
    dout = 2 * (out - noise) / (batch * out[0].size)                         # dL/dout: 1/B, not 1/b
    return unet_backward(dout, cache)[1]                                     # {name: dL/dtheta from these images}


def flat(grads) -> np.ndarray:
    """Every tensor's gradient in one vector, in a fixed order: the buffer an Allreduce sends."""
    return np.concatenate([g.reshape(-1) for _, g in sorted(grads.items())])


# ---------------------------------------------------------------------------------------------------
# Section 4's worker: this same file, started by mpiexec -n 2 with --mpi-worker OUT.npz. Each process computes its
# share's gradient; one Allreduce sums them; rank 0 saves the sum for the lesson to compare.
if "--mpi-worker" in sys.argv:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    x_t, t, labels, noise, params = make_problem(np.float64)
    rows = slice(rank * BATCH // size, (rank + 1) * BATCH // size)           # this process's share
    buffer = flat(share_gradient(params, x_t[rows], t[rows], labels[rows], noise[rows], BATCH))
    comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)                         # buffer <- sum over the processes
    if rank == 0:
        np.savez(sys.argv[sys.argv.index("--mpi-worker") + 1], summed=buffer, size=size)
    sys.exit(0)

# %%
started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 11: data-parallel SGD")

# %% 1. The gradient of a batch is the sum of its shares' gradients
# ---------------------------------------------------------------------------------------------------
section("1. The gradient of a batch is the sum of its shares' gradients")
# Write the loss of one step as a sum over the images: L = (1/B) sum_i l_i(theta), l_i = mean_j (out_ij - eps_ij)^2.
# The derivative is linear, so dL/dtheta = (1/B) sum_i dl_i/dtheta, and any partition of the batch into shares
# S_1 .. S_N gives
#     dL/dtheta = sum_r g_r,     g_r = (1/B) sum_{i in S_r} dl_i/dtheta
# Worker r needs only its own images for g_r -- IF each l_i depends on image i alone. In the U-Net it does: every
# layer is per image (convolutions, SiLU, GroupNorm, attention over one image's pixels, the embeddings of its own t
# and label). The only place the batch meets is the 1/B of the mean, which each worker applies itself.
x_t, t, labels, noise, params = make_problem()
whole = share_gradient(params, x_t, t, labels, noise, BATCH)                # the whole batch on one worker
print(f"  U-Net {sum(p.size for p in params.values()):,} weights in {len(params)} tensors; batch of {BATCH}, "
      f"{np.dtype(DTYPE).name}")


def data_parallel_gradient(n, batch=BATCH):
    """Cut the batch into n equal shares, compute each share's g_r alone, and add them up (what an Allreduce does).

    ``batch``: the B in g_r's 1/B. Returns (sum_r g_r, [g_r for each worker]).
    """
    shares = [slice(r * BATCH // n, (r + 1) * BATCH // n) for r in range(n)]
    per_worker = [share_gradient(params, x_t[s], t[s], labels[s], noise[s], batch) for s in shares]
    return {k: sum(g[k] for g in per_worker) for k in whole}, per_worker   # sum_r g_r


gaps = {}
for n in SHARES:
    summed, _ = data_parallel_gradient(n)
    gaps[n] = relative_error(flat(summed), flat(whole))
    limit = 1e-12 if DTYPE == np.float64 else 1e-5
    check(f"{n} shares of {BATCH // n}: sum_r g_r == the whole batch's gradient", gaps[n] < limit,
          f"max relative error {gaps[n]:.1e} over {flat(whole).size:,} weights")
# The 1/B inside each g_r is the whole batch's B: each worker's own mean gradient weighs 1/N. Forget it (each
# worker averages over its own b = B/N images and the sum is taken as is) and the gradient comes out N times too
# large -- AdamW would hide a constant factor, plain SGD and gradient clipping would not.
own_means, _ = data_parallel_gradient(2, batch=BATCH // 2)                 # each worker's 1/b with b = B/2
ratio = np.linalg.norm(flat(own_means)) / np.linalg.norm(flat(whole))
check("summing the shares' own means instead gives N = 2 times the gradient",
      abs(ratio - 2) < (1e-9 if DTYPE == np.float64 else 1e-5),                # DTYPE's round-off (exercise 1)
      f"|sum| / |g| = {ratio:.12f}")

# %% 2. The Allreduce: every worker gets the sum
# ---------------------------------------------------------------------------------------------------
section("2. The Allreduce: every worker gets the sum")
# One worker could collect every vector, add them and send the sum back ("reduce to a root, broadcast"): the root
# receives and sends (N - 1) vectors, and its link is the bottleneck. A ring spreads the work: cut each vector into
# N chunks; in N - 1 steps of reduce-scatter each worker passes one chunk to its right neighbour, which adds its own;
# after them worker w holds the complete sum of chunk (w + 1) mod N. In N - 1 steps of allgather the complete chunks
# travel once more round the ring. Each worker sends 2 (N - 1) chunks of n / N numbers: 2 (N - 1) / N * n, under 2n
# for any N. (MPI libraries choose among such algorithms by message size; NCCL uses rings and trees.)


def ring_allreduce(vectors):
    """Every worker's vector -> every worker's copy of the sum; and the numbers each worker sent."""
    n = len(vectors)
    chunks = [np.array_split(v.copy(), n) for v in vectors]               # chunks[w][c]: worker w's chunk c
    sent = np.zeros(n, dtype=np.int64)
    for s in range(n - 1):                                                # reduce-scatter
        outgoing = [chunks[w][(w - s) % n].copy() for w in range(n)]      # w sends chunk (w - s) to w + 1 ...
        for w in range(n):
            chunks[(w + 1) % n][(w - s) % n] += outgoing[w]               # ... which adds its own to it
            sent[w] += outgoing[w].size
    for s in range(n - 1):                                                # allgather
        outgoing = [chunks[w][(w + 1 - s) % n].copy() for w in range(n)]  # w sends its complete chunk (w + 1 - s)
        for w in range(n):
            chunks[(w + 1) % n][(w + 1 - s) % n] = outgoing[w]            # ... and w + 1 keeps it
            sent[w] += outgoing[w].size
    return [np.concatenate(c) for c in chunks], sent


rng = np.random.default_rng(7)
for n in (2, 3, 5):
    vectors = [rng.standard_normal(1200) for _ in range(n)]               # 1200 numbers: N chunks of 1200 / N
    results, sent = ring_allreduce(vectors)
    err = max(relative_error(r, np.sum(vectors, axis=0)) for r in results)
    same = all(np.array_equal(r, results[0]) for r in results)
    check(f"ring Allreduce over {n} workers: each holds the sum, the same bits on every worker", err < 1e-14 and same,
          f"max relative error {err:.1e}")
    check(f"  each of the {n} workers sent 2 (N - 1) / N x 1200 = {2 * (n - 1) * 1200 // n} numbers",
          np.all(sent == 2 * (n - 1) * 1200 // n), f"sent {sent.tolist()}")
# One buffer, not one message per tensor: each message pays a latency, whatever its size.
print(f"  this U-Net's gradient: {len(params)} tensors, {flat(whole).size:,} numbers; one flat buffer = 1 Allreduce "
      f"per step instead of {len(params)} (tinyddpm.parallel.mpi.DataParallel.sum_gradients)")

# %% 3. GroupNorm needs no synchronisation; BatchNorm would
# ---------------------------------------------------------------------------------------------------
section("3. GroupNorm needs no synchronisation; BatchNorm would")
# GroupNorm's statistics are over (C/G, H, W) of one image: a share's output is the rows of the whole batch's.
# BatchNorm's are over (N, H, W) per channel: a worker that normalises its share with its own mean and variance
# computes another function. Synchronised BatchNorm has each worker send three per-channel sums -- sum x, sum x^2,
# and its count -- through an Allreduce inside the forward pass, then normalise with the global mean and variance.
# Its backward needs two more sums per channel (exercise 3): an Allreduce in every BatchNorm layer, twice a step.
feats = rng.standard_normal((BATCH, 8, 7, 7)) * rng.uniform(0.5, 3.0, (BATCH, 1, 1, 1)) + rng.uniform(-2, 2, (1, 8, 1, 1))
halves = (slice(0, BATCH // 2), slice(BATCH // 2, BATCH))


def batchnorm(x, mean, var):
    return (x - mean) / np.sqrt(var + EPS)


gn_whole = groupnorm_forward(feats, None, None, 4)[0]
gn_gap = max(float(np.max(np.abs(groupnorm_forward(feats[s], None, None, 4)[0] - gn_whole[s]))) for s in halves)
check("GroupNorm on a share == the rows of GroupNorm on the whole batch", gn_gap == 0.0, f"max difference {gn_gap:.1e}")

axes = (0, 2, 3)                                                            # per channel over N, H, W
bn_whole = batchnorm(feats, feats.mean(axis=axes, keepdims=True), feats.var(axis=axes, keepdims=True))
bn_local = [batchnorm(feats[s], feats[s].mean(axis=axes, keepdims=True), feats[s].var(axis=axes, keepdims=True))
            for s in halves]
bn_gap = max(float(np.max(np.abs(b - bn_whole[s]))) for b, s in zip(bn_local, halves))
check("BatchNorm with each share's own statistics != the whole batch's BatchNorm", bn_gap > 0.01,
      f"max difference {bn_gap:.2f}")
sums = [(feats[s].sum(axis=axes), (feats[s] ** 2).sum(axis=axes), feats[s].size // feats.shape[1]) for s in halves]
total_x, total_xx, count = (sum(part[i] for part in sums) for i in range(3))   # what the Allreduce returns
mean = (total_x / count)[None, :, None, None]                               # (1, C, 1, 1)
var = (total_xx / count)[None, :, None, None] - mean ** 2                   # E[x^2] - E[x]^2 (see lesson 05's trap)
sync_gap = max(float(np.max(np.abs(batchnorm(feats[s], mean, var) - bn_whole[s]))) for s in halves)
check("synchronised BatchNorm (sum x, sum x^2, count Allreduced) == the whole batch's", sync_gap < 1e-12,
      f"max difference {sync_gap:.1e}")

# %% 4. The same sum through MPI, in two processes
# ---------------------------------------------------------------------------------------------------
section("4. The same sum through MPI, in two processes")
# Sections 1-3 ran the workers one after another in this process. With mpi4py, each share is computed in a process
# of its own and the sum is a real Allreduce of one flat buffer (the lines above, under `if "--mpi-worker"`):
#     comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
mpiexec = Path(sys.executable).parent / "mpiexec"
mpiexec = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
mpi_gap = None
if importlib.util.find_spec("mpi4py") is None or mpiexec is None:
    print("  mpi4py or mpiexec is not installed here (pip install -e \".[mpi]\"): this section is skipped; sections "
          "1-3 showed the same sum computed in one process")
else:
    result = out / "mpi_gradient.npz"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MV2_"))}
    done = subprocess.run([mpiexec, "-n", "2", sys.executable, __file__, "--mpi-worker", str(result)]
                          + (["--fast"] if FAST else []), env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    check("mpiexec -n 2 ran the two shares and the Allreduce", done.returncode == 0 and result.exists(),
          done.stderr.strip()[-300:] or f"{mpiexec}")
    if result.exists():
        with np.load(result) as f:
            summed, size = f["summed"], int(f["size"])
        if DTYPE == np.float64:
            whole64 = flat(whole)
        else:                                                               # the processes computed in float64
            x64, t64, l64, n64, p64 = make_problem(np.float64)
            whole64 = flat(share_gradient(p64, x64, t64, l64, n64, BATCH))
        mpi_gap = relative_error(summed, whole64)
        check(f"the Allreduce of {size} processes' g_r == the whole batch's gradient (float64)", mpi_gap < 1e-12,
              f"max relative error {mpi_gap:.1e}")
        result.unlink()

# %% 5. Picture
# ---------------------------------------------------------------------------------------------------
section("5. Picture")
fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.4))
workers = np.arange(2, 17)
ax1.plot(workers, 2 * (workers - 1) / workers, "o-", label="ring: every worker sends 2 (N - 1) / N")
ax1.plot(workers, workers - 1, "s--", label="root: the root receives N - 1 (and sends as much)")
ax1.set(xlabel="workers N", ylabel="vectors sent by the busiest worker", yscale="log",
        title="Traffic of one Allreduce of a vector")
ax1.legend(fontsize=8)
ax1.grid(True, which="both", alpha=0.3)
names = ["GroupNorm\non a share", "BatchNorm,\nown statistics", "BatchNorm,\nsynchronised"]
values = [max(gn_gap, 1e-17), bn_gap, max(sync_gap, 1e-17)]
ax2.bar(names, values, color=["tab:green", "tab:red", "tab:blue"])
ax2.set(yscale="log", ylabel="max |share's output - rows of the whole batch's|",
        title="Normalising a share of the batch (0 drawn at 1e-17)")
ax2.grid(True, axis="y", alpha=0.3)
ax3.plot(list(gaps), list(gaps.values()), "o-", label=f"{np.dtype(DTYPE).name}, in this process")
if mpi_gap is not None:
    ax3.plot([2], [mpi_gap], "r*", ms=12, label="float64, 2 processes through MPI")
for dtype, style in ((np.float64, ":"), (np.float32, "--")):
    ax3.axhline(np.finfo(dtype).eps / 2, color="0.5", ls=style, label=f"{np.dtype(dtype).name} round-off (eps / 2)")
ax3.set(yscale="log", ylim=(1e-17, 1e-5), xlabel="shares N", ylabel="max relative error of sum_r g_r",
        title="The sharded gradient against the whole batch's")
ax3.set_xticks(list(gaps), [str(n) for n in gaps])
ax3.legend(fontsize=8)
ax3.grid(True, which="both", alpha=0.3)
fig.tight_layout()
fig.savefig(out / "data_parallel.png", dpi=90)
plt.close(fig)
saved(out / "data_parallel.png")

# %% Exercises
try_this(__doc__)
finish(started)
