"""Solutions to lesson 06 (SiLU and the timestep embedding): the three "Try this" exercises, worked and checked.

Try each exercise in lessons/06_silu_and_time_embedding.py yourself first; then run this file and compare.

Run it:   python lessons/solutions/06_silu_and_time_embedding.py     (--fast: accepted; this one is quick either way)

Figures (in lessons/output/06_silu_and_time_embedding/, with a solution_ prefix):
  solution_similarity_dims.png   similarity against |t - t'| for 16 and 64 frequencies
  solution_max_period_100.png    the embedding image and the similarity curve for max_period 100 against 10000
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the lessons folder, for _common

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import banner, check, finish, output_dir, relative_error, saved, section  # noqa: E402
from tinyddpm.gradcheck import OP_TOLERANCE, check_gradients  # noqa: E402
from tinyddpm.ops import label_embedding_backward, label_embedding_forward, timestep_embedding_forward  # noqa: E402

started = time.perf_counter()
out = output_dir(__file__)
banner("Solutions to lesson 06: SiLU and the timestep embedding")
rng = np.random.default_rng(0)


def frequencies(dim, max_period):
    half = dim // 2
    return max_period ** (-np.arange(half) / half)                      # (half,) w_0 = 1 down to ~1/max_period


def similarity_by_lag(lags, dim, max_period):
    """Cosine similarity of emb(t) and emb(t + lag): the lesson showed it is mean_i cos(lag w_i), whatever t."""
    return np.cos(np.asarray(lags, dtype=np.float64)[:, None] * frequencies(dim, max_period)).mean(axis=1)


def embed(t, dim, max_period=10000.0):
    return timestep_embedding_forward(np.asarray(t, dtype=np.float64), dim, max_period=max_period, dtype=np.float64)[0]


# Check the shortcut once against the embeddings themselves (the lesson's way: mean of a diagonal of E E^T / half).
E = embed(np.arange(300), 32)
by_diag = np.array([np.mean(np.diagonal(E @ E.T, k)) for k in range(300)]) / 16
err = relative_error(by_diag, similarity_by_lag(np.arange(300), 32, 10000.0))
check("similarity by lag == mean_i cos(lag w_i), from the embeddings (dim 32, T = 300)", err < 1e-12,
      f"max relative error {err:.1e}")

# ---------------------------------------------------------------------------------------------------
section("Exercise 1 (run): --fast's T = 200, dim 32 against the full T = 1000, dim 128")
# The similarity at lag L is an average of cos(L w_i) over the frequencies, which are spread evenly in log w from
# 1 down to ~1/10000. With 64 of them the average is smooth; with 16 each one weighs 4 times more and its
# oscillation shows: the curve is bumpier. That part of the exercise is right.
# "Far-apart timesteps stay more alike" needs care. The lesson's far-lag number is the mean over |t - t'| > 100
# *up to T - 1*: the fast run stops at 199, the full run goes to 999, where similarity is lower. Compared at the
# same lags, 16 frequencies are about as alike as 64 on average; what the bumps add is a few far lags that come
# back to a higher similarity. So the fast run's higher far-lag number is mostly the shorter range of lags.
lags = np.arange(1000)
sim = {dim: similarity_by_lag(lags, dim, 10000.0) for dim in (32, 128)}
bumpiness = {dim: float(np.abs(np.diff(sim[dim][1:200], 2)).sum()) for dim in (32, 128)}
check("16 frequencies give a bumpier curve (sum of |second differences| over lags 1-199, over 2x)",
      bumpiness[32] > 2 * bumpiness[128], f"{bumpiness[32]:.2f} vs {bumpiness[128]:.2f}")
fast_far, full_far = sim[32][101:200].mean(), sim[128][101:1000].mean()
same_range = sim[128][101:200].mean()
print(f"  the lesson's far-lag means: fast (dim 32, lags 101-199) {fast_far:.3f}, full (dim 128, lags 101-999) "
      f"{full_far:.3f}; dim 128 over lags 101-199 only: {same_range:.3f}")
check("at equal lags (101-199) the mean similarity hardly depends on the number of frequencies (within 0.05)",
      abs(fast_far - same_range) < 0.05, f"dim 32: {fast_far:.3f}, dim 128: {same_range:.3f}")
check("the fast run's higher far-lag number comes from its shorter range: dim 128 over 101-999 is lower by > 0.1",
      same_range - full_far > 0.1, f"{same_range:.3f} over 101-199, {full_far:.3f} over 101-999")


def largest_comeback(curve):
    """The most the similarity rises again after falling: max over lags j of s(j) - min_{i <= j} s(i)."""
    rise = curve - np.minimum.accumulate(curve)
    j = int(np.argmax(rise))
    return float(rise[j]), j, int(np.argmin(curve[:j + 1]))


back = {dim: largest_comeback(sim[dim][1:200]) for dim in (32, 128)}
(rise32, far32, near32), (rise128, _, _) = back[32], back[128]
check("the bumps: with 16 frequencies a farther timestep can be far more alike than a nearer one (2x the comeback)",
      rise32 > 2 * rise128, f"dim 32: lag {far32 + 1} is {rise32:.2f} more similar than lag {near32 + 1}; "
      f"dim 128's largest comeback {rise128:.2f}")
fig, ax = plt.subplots(figsize=(8, 4), layout="constrained")
ax.plot(lags, sim[32], label="dim 32 (16 frequencies, --fast)")
ax.plot(lags, sim[128], label="dim 128 (64 frequencies)")
ax.axvline(199, color="gray", linestyle=":", label="--fast's T = 200 ends here")
ax.set(xscale="symlog", xlabel="|t - t'| (log past 1)", ylabel="cosine similarity",
       title="Fewer frequencies: a bumpier curve, the same trend")
ax.grid(True, alpha=0.3)
ax.legend()
path = out / "solution_similarity_dims.png"
fig.savefig(path, dpi=90)
plt.close(fig)
saved(path)

# ---------------------------------------------------------------------------------------------------
section("Exercise 2 (modify): MAX_PERIOD = 100")
# Prediction. The slowest frequency is w_63 = 100^(-63/64) ~ 0.0107, a period of 2 pi / w ~ 585 steps: every
# column, the slowest included, now turns at least once in 1000 steps (with 10000 only 36 of the 64 sine columns
# have a period under 1000). No column varies slowly over the whole range any more, so nothing in the embedding
# says "t is large" or "t is small" as such: beyond ~100 steps the similarity hovers around 0 and no longer falls
# with the distance, and a timestep 400 steps away can look more like t than one 50 steps away.
DIM = 128
print(f"  {'':24}{'periods < 1000':>15}{'slowest period':>16}{'mean sim 101-999':>18}"
      f"{'101-300':>9}{'700-999':>9}{'sim at 50':>11}{'max sim > 100':>15}")
res = {}
for mp in (10000.0, 100.0):
    w = frequencies(DIM, mp)
    s = similarity_by_lag(lags, DIM, mp)
    res[mp] = dict(n_fast=int(np.sum(2 * np.pi / w < 1000)), slowest=float(2 * np.pi / w[-1]), far=s[101:].mean(),
                   early=s[101:301].mean(), late=s[700:].mean(), at50=s[50], peak=s[101:].max(),
                   peak_lag=101 + int(np.argmax(s[101:])), sim=s)
    r = res[mp]
    print(f"  max_period {mp:<13g}{r['n_fast']:>15d}{r['slowest']:>16.0f}{r['far']:>18.3f}{r['early']:>9.3f}"
          f"{r['late']:>9.3f}{r['at50']:>11.3f}{r['peak']:>10.3f} at {r['peak_lag']}")
r100, r10k = res[100.0], res[10000.0]
check("prediction: with max_period 100 every one of the 64 frequencies turns within 1000 steps",
      r100["n_fast"] == DIM // 2 and r100["slowest"] < 1000, f"slowest period {r100['slowest']:.0f} steps "
      f"(max_period 10000: {r10k['n_fast']} of 64, slowest {r10k['slowest']:.0f})")
check("prediction: the far-lag similarity drops to about 0 (|mean over lags 101-999| < 0.05)",
      abs(r100["far"]) < 0.05, f"{r100['far']:.3f}, against {r10k['far']:.3f} with 10000")
check("beyond 100 steps the similarity no longer falls with distance (lags 101-300 vs 700-999 within 0.1)",
      abs(r100["early"] - r100["late"]) < 0.1 and r10k["early"] - r10k["late"] > 0.1,
      f"max_period 100: {r100['early']:.3f} vs {r100['late']:.3f}; 10000: {r10k['early']:.3f} vs {r10k['late']:.3f}")
check("by accident: a timestep over 100 steps away looks more like t than the one 50 steps away",
      r100["peak"] > r100["at50"], f"similarity {r100['peak']:.3f} at lag {r100['peak_lag']} > {r100['at50']:.3f} at 50")
fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), layout="constrained")
for ax, mp in zip(axes[:2], (10000.0, 100.0)):
    ax.imshow(embed(np.arange(1000), DIM, mp), aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set(title=f"max_period {mp:g}", xlabel="dimension (sines | cosines)", ylabel="timestep t")
for mp in (10000.0, 100.0):
    axes[2].plot(lags, res[mp]["sim"], label=f"max_period {mp:g}")
axes[2].set(xscale="symlog", xlabel="|t - t'|", ylabel="cosine similarity", title="Similarity against distance")
axes[2].grid(True, alpha=0.3)
axes[2].legend()
path = out / "solution_max_period_100.png"
fig.savefig(path, dpi=90)
plt.close(fig)
saved(path)

# ---------------------------------------------------------------------------------------------------
section("Exercise 3 (create): a learned table with one row per timestep")
# The table is label_embedding_forward with T rows: emb(t) = table[t], one free vector per timestep. It can learn
# anything, but each row only learns from the training examples drawn at its own t: nothing ties row 500 to
# row 501, and there is no row at all for t = 1000.5 (nor for 1000, nor for any t that is not an integer).
# The sinusoidal embedding is a formula of t, defined for every real t, and the lesson's rotation check shows
# why its value off the training range means something: emb(t + d) = R(d) emb(t) with one fixed rotation R(d)
# per shift d, for any real t and d. So emb(1000.5) = R(1.5) emb(999): it relates to the trained timesteps
# exactly as emb(1.5) relates to emb(0), and its similarity to emb(999), emb(990), emb(900) is the same function
# of the distance as everywhere else. (Whether the network's layers after it extrapolate well is another
# question; the embedding at least hands them a consistent input.)
T, D = 1000, 32
table = rng.standard_normal((T, D))                                  # the "learned" table, at its random init
t_batch = np.array([0, 7, 7, 999])
emb_table, cache = label_embedding_forward(t_batch, table)
check("the table embedding returns table[t]", np.array_equal(emb_table, table[t_batch]), "4 lookups")
refused = []
for bad in (np.array([1000]), np.array([1000.5])):
    try:
        label_embedding_forward(bad, table)
    except (ValueError, TypeError) as e:
        refused.append(type(e).__name__)
check("it has no row for t = 1000 (out of range) nor for t = 1000.5 (not an integer)", len(refused) == 2,
      f"refused with {', '.join(refused)}")
errors = check_gradients(lambda tab: label_embedding_forward(t_batch, tab), label_embedding_backward,
                         {"table": table.copy()}, max_entries=T * D)
check("gradient check of the table's backward (every entry; repeated t = 7 sums two rows)",
      errors["table"] < OP_TOLERANCE, f"table {errors['table']:.1e}")
seen = rng.integers(0, 500, size=256)                                # a training batch drawn from t < 500
dtable = label_embedding_backward(rng.standard_normal((256, D)), label_embedding_forward(seen, table)[1])
untouched = int(np.sum(~np.any(dtable != 0, axis=1)))
check("rows of timesteps not in the batch get exactly zero gradient: they learn nothing from it",
      np.all(dtable[500:] == 0) and untouched >= 500, f"{untouched} of {T} rows with zero gradient")

half = D // 2
w = frequencies(D, 10000.0)
e_999, e_off = embed([999.0], D)[0], embed([1000.5], D)[0]
cb, sb = np.cos(1.5 * w), np.sin(1.5 * w)
rotated = np.concatenate([e_999[:half] * cb + e_999[half:] * sb, e_999[half:] * cb - e_999[:half] * sb])
err = relative_error(rotated, e_off)
check("emb(1000.5) == R(1.5) emb(999): the same rotation that maps emb(0) to emb(1.5)", err < 1e-12,
      f"max relative error {err:.1e}")
sims = [float(e_off @ embed([t], D)[0]) / half for t in (999.0, 990.0, 900.0)]
expected = similarity_by_lag([1.5, 10.5, 100.5], D, 10000.0)
err = relative_error(np.array(sims), expected)
check("its similarity to emb(999), emb(990), emb(900) is the lesson's function of the distance, and falls",
      err < 1e-12 and sims[0] > sims[1] > sims[2], f"{sims[0]:.3f} > {sims[1]:.3f} > {sims[2]:.3f} "
      f"(mean cos at lags 1.5, 10.5, 100.5; max relative error {err:.1e})")

finish(started)
