"""Solutions to lesson 01 (noise schedules): the three "Try this" exercises, worked and checked.

Try each exercise in lessons/01_noise_schedules.py yourself first; then run this file and compare.

Run it:   python lessons/solutions/01_noise_schedules.py          (--fast: accepted; this one is quick either way)

Figures (in lessons/output/01_noise_schedules/, next to the lesson's, with a solution_ prefix):
  solution_crossings.png   where alpha_bar crosses 0.9 / 0.5 / 0.1 / 0.01, as a fraction t / T, for T = 1000 and 100
  solution_schedules.png   alpha_bar and SNR in dB for the lesson's three schedules and the scaled-linear one
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
from tinyddpm.diffusion import Schedule, cosine_betas, make_schedule, x0_from_eps  # noqa: E402

started = time.perf_counter()
out = output_dir(__file__)
banner("Solutions to lesson 01: noise schedules")

LEVELS = (0.9, 0.5, 0.1, 0.01)          # the alpha_bar levels of the lesson's crossing table


def first_below(values, level):
    """The first t where values[t] < level (values decreasing), or len(values) if it never gets there."""
    below = np.flatnonzero(values < level)
    return int(below[0]) if below.size else len(values)


def schedule_properties(name, sched):
    """The lesson's checks on one schedule: alpha_bar strictly decreasing inside (0, 1), and the two crossings agree."""
    ab = sched.alpha_bar
    ok_range = bool(np.all(np.diff(ab) < 0) and np.all(ab > 0) and np.all(ab < 1))
    half, snr_one = first_below(ab, 0.5), first_below(sched.snr, 1.0)
    return ok_range, half, snr_one


# ---------------------------------------------------------------------------------------------------
section("Exercise 1 (run): T = 100 instead of T = 1000")
# What the lesson checks does not depend on T: tinyddpm's schedules are built from the same formulas for any T,
# so every comparison with the library and every property still holds. The crossing table changes in t, but
# as a fraction t / T it hardly moves, because each schedule is really a curve in u = t / T:
#   - cosine and sigmoid define alpha_bar(u) directly, so alpha_bar at t / T is the same curve sampled more coarsely;
#   - linear is a curve in u too, but only because linear_betas scales both ends by 1000 / T (lesson 01,
#     section 1): sum(beta) ~ T * mean(beta) stays ~10 whatever T. So, beyond what the exercise says, the linear
#     crossings barely move either. Without that scaling (betas 1e-4 .. 0.02 for any T) the signal would
#     survive: sum(beta) ~ 1 for T = 100, alpha_bar_99 ~ exp(-1) ~ 0.37, far from noise.
fractions = {}
for T in (1000, 100):
    for name in ("linear", "cosine", "sigmoid"):
        sched = make_schedule(name, T)
        ok_range, half, snr_one = schedule_properties(name, sched)
        check(f"T = {T}, {name}: alpha_bar strictly decreasing in (0, 1), crosses 0.5 where SNR crosses 1",
              ok_range and half == snr_one, f"crossing at t = {half} (SNR: {snr_one})")
        fractions[(T, name)] = np.array([first_below(sched.alpha_bar, level) / T for level in LEVELS])

print(f"\n  crossing points as t / T     {'abar<0.9':>9} {'abar<0.5':>9} {'abar<0.1':>9} {'abar<0.01':>10}")
for (T, name), frac in fractions.items():
    print(f"  T = {T:<4} {name:<19}" + "".join(f"{f:>10.3f}" for f in frac))
for name in ("linear", "cosine", "sigmoid"):
    shift = float(np.max(np.abs(fractions[(100, name)] - fractions[(1000, name)])))
    # One step of T = 100 is 0.01 of the run; a crossing can move by that much from rounding to the grid alone.
    check(f"{name}: the crossings move by at most 0.015 of the run from T = 1000 to T = 100", shift <= 0.015,
          f"largest shift {shift:.3f}")
unscaled = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 100))
check("without linear_betas' 1000 / T scaling, T = 100 would leave a third of the signal variance at the end",
      0.3 < unscaled[-1] < 0.45, f"alpha_bar_99 = {unscaled[-1]:.3f} (scaled: {make_schedule('linear', 100).alpha_bar[-1]:.1e})")

fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
for k, name in enumerate(("linear", "cosine", "sigmoid")):
    ax.plot(LEVELS, fractions[(1000, name)], "o-", color=f"C{k}", label=f"{name}, T = 1000")
    ax.plot(LEVELS, fractions[(100, name)], "x--", color=f"C{k}", markersize=9, label=f"{name}, T = 100")
ax.set(xscale="log", xlabel=r"level of $\bar\alpha$ (log)", ylabel="first t / T below the level",
       title="Crossing points as a fraction of the run: T barely matters")
ax.invert_xaxis()
ax.grid(True, alpha=0.3)
ax.legend(fontsize=8)
path = out / "solution_crossings.png"
fig.savefig(path, dpi=100)
plt.close(fig)
saved(path)

# ---------------------------------------------------------------------------------------------------
section("Exercise 2 (modify): the cosine betas without the clip at 0.999")
# Prediction, before running: the designed curve f(u) reaches cos(pi / 2)^2 ~ 0 at u = 1, so the last ratio
# alpha_bar(1) / alpha_bar(1 - 1/T) is ~0 and the last beta is 1 (in float64, exactly 1). Then
#   - the two checks that compare the lesson's cosine arrays with tinyddpm fail: the last beta is 1 instead of
#     0.999, and the last alpha_bar is 0 instead of about 2.4e-9 (tinyddpm keeps the clip);
#   - the telescoping check still passes (it leaves out the last step, and without the clip the product
#     telescopes at every step);
#   - the property and SNR checks of sections 4 and 5 still pass: they use make_schedule('cosine'), the clipped one.
# With beta = 1 the last step multiplies x by sqrt(1 - beta) = 0: alpha_bar_{T-1} = 0, SNR = 0, log SNR = -inf.
# A sampler starts there and computes x0_hat = (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar): a division by zero,
# so the very first step produces inf or NaN, and every later step inherits it. (Lin et al. 2023 want exactly this
# zero SNR at the end, and make it work by predicting v, which never divides by sqrt(abar): lesson 02, exercise 3.)
T = 1000
s = 0.008
u = np.arange(T + 1) / T
f = np.cos((u + s) / (1 + s) * np.pi / 2) ** 2
abar_curve = f / f[0]
betas_unclipped = 1.0 - abar_curve[1:] / abar_curve[:-1]            # the lesson's line without np.minimum(., 0.999)
abar_unclipped = np.cumprod(1.0 - betas_unclipped)
lib = make_schedule("cosine", T)
err_betas = relative_error(betas_unclipped, cosine_betas(T))
err_abar = relative_error(abar_unclipped, lib.alpha_bar)
print(f"  last beta {float(betas_unclipped[-1])!r}, last alpha_bar {float(abar_unclipped[-1])!r} "
      f"(clipped: beta 0.999, alpha_bar {lib.alpha_bar[-1]:.2e})")
# "Fails" means what it means in the lesson: above its limit of 1e-12. relative_error divides by the largest
# |a| + |b| of the whole array, so for alpha_bar (largest ~1) a difference of 2.4e-9 in the last, tiny entry reads
# as ~1e-9: far above the limit, but a reminder that this one number hides where and how large a difference is.
LESSON_LIMIT = 1e-12
check("prediction: 'cosine betas == tinyddpm cosine_betas' now fails", err_betas > LESSON_LIMIT,
      f"max relative error {err_betas:.1e} (lesson's limit {LESSON_LIMIT:.0e}): 1 - 0.999 over |1| + |0.999|")
check("prediction: 'cosine alpha_bar == make_schedule' now fails", err_abar > LESSON_LIMIT,
      f"max relative error {err_abar:.1e}: the last alpha_bar, 0 against {lib.alpha_bar[-1]:.1e}, over a scale of ~2")
err_tel = relative_error(abar_unclipped[:-1], abar_curve[1:-1])
check("prediction: the telescoping check still passes", err_tel < 1e-12, f"max relative error {err_tel:.1e}")
check("the last beta is exactly 1 and the last alpha_bar exactly 0", betas_unclipped[-1] == 1.0 and abar_unclipped[-1] == 0.0,
      f"beta {float(betas_unclipped[-1])!r}, alpha_bar {float(abar_unclipped[-1])!r}")
with np.errstate(divide="ignore", invalid="ignore"):                # log(0) and x / 0 below, on purpose
    broken = Schedule(betas_unclipped, name="cosine, unclipped")    # Schedule accepts beta = 1 ...
    log_snr_last = broken.log_snr[-1]
    x_T = np.random.default_rng(0).standard_normal((1, 1, 4, 4))
    x0_hat = x0_from_eps(broken, x_T, T - 1, 0.9 * x_T)              # any eps estimate
check("... and its log SNR at t = T-1 is -inf, so the first sampling step's x0_hat is not finite",
      np.isneginf(log_snr_last) and not np.all(np.isfinite(x0_hat)),
      f"log SNR {log_snr_last}, x0_hat {x0_hat.ravel()[:2]} ...")
x0_hat_clipped = x0_from_eps(lib, x_T, T - 1, 0.9 * x_T)
check("with the clip, the same x0_hat is finite (large: the first steps of a sampler are clipped to [-1, 1])",
      bool(np.all(np.isfinite(x0_hat_clipped))), f"max |x0_hat| {np.abs(x0_hat_clipped).max():.0f}")

# ---------------------------------------------------------------------------------------------------
section("Exercise 3 (create): Stable Diffusion's 'scaled linear' schedule")
# Linear in sqrt(beta) from sqrt(0.00085) to sqrt(0.012). Its betas stay small (largest 0.012 against DDPM's
# 0.02), so sum(beta) ~ 5.3 instead of ~10 and the signal is never destroyed: alpha_bar_999 ~ exp(-5.3) ~ 5e-3,
# an SNR of about -23 dB at the last step. Stable Diffusion trains on 64 x 64 latents, where that is close
# enough to noise; Lin et al. (2023) showed it is still a flaw (the model never sees pure noise in training,
# but sampling starts from it).
betas_sl = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T) ** 2
scaled = Schedule(betas_sl, name="scaled linear")
err = relative_error(scaled.alpha_bar, np.cumprod(1.0 - betas_sl))
check("Schedule(betas).alpha_bar == cumprod(1 - betas) for the new schedule", err < 1e-12, f"max relative error {err:.1e}")
ok_range, half, snr_one = schedule_properties("scaled linear", scaled)
check("scaled linear: alpha_bar strictly decreasing in (0, 1), crosses 0.5 where SNR crosses 1",
      ok_range and half == snr_one, f"t = {half} (SNR: {snr_one})")
predicted_end = np.exp(-betas_sl.sum())                             # prod(1 - b) ~ exp(-sum b) for small b
check("prediction: alpha_bar_999 ~ exp(-sum beta), over 100 times the linear schedule's",
      abs(scaled.alpha_bar[-1] / predicted_end - 1) < 0.05 and scaled.alpha_bar[-1] > 100 * make_schedule("linear").alpha_bar[-1],
      f"{scaled.alpha_bar[-1]:.2e} (exp(-{betas_sl.sum():.2f}) = {predicted_end:.2e}; "
      f"linear {make_schedule('linear').alpha_bar[-1]:.1e})")

schedules = {name: make_schedule(name, T) for name in ("linear", "cosine", "sigmoid")}
schedules["scaled linear"] = scaled
print(f"\n  first t where ...        {'abar<0.9':>9} {'abar<0.5':>9} {'SNR<1':>7} {'abar<0.1':>9} {'abar<0.01':>10}"
      f" {'steps at SNR<-20dB':>19}  {'SNR at t=T-1':>13}")
for name, sched in schedules.items():
    ab, db = sched.alpha_bar, 10 * np.log10(sched.snr)
    print(f"  {name:<24}{first_below(ab, 0.9):>9} {first_below(ab, 0.5):>9} {first_below(sched.snr, 1.0):>7} "
          f"{first_below(ab, 0.1):>9} {first_below(ab, 0.01):>10} {int(np.sum(db < -20)):>19}  {db[-1]:>10.1f} dB")

fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), layout="constrained")
for name, sched in schedules.items():
    style = "--" if name == "scaled linear" else "-"
    axes[0].plot(sched.alpha_bar, style, linewidth=2, label=name)
    axes[1].plot(10 * np.log10(sched.snr), style, linewidth=2, label=name)
axes[0].set(title=r"$\bar\alpha_t$", xlabel="timestep t")
axes[1].axhline(-20, color="gray", linestyle=":", linewidth=1)
axes[1].set(title="SNR in dB: scaled linear never gets below -24 dB", xlabel="timestep t", ylabel="dB")
for ax in axes:
    ax.grid(True, alpha=0.3)
    ax.legend()
path = out / "solution_schedules.png"
fig.savefig(path, dpi=100)
plt.close(fig)
saved(path)

finish(started)
