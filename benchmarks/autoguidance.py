"""Autoguidance against classifier-free guidance at a fixed network, on MNIST (issue 24's sampler study).

    python benchmarks/autoguidance.py runs/mnist/checkpoint.npz runs/guide/checkpoint.npz \
        --settings 1:1,2:1,3:1,1:1.5,2:1.75 --sample-seeds 1

Classifier-free guidance pushes the prediction away from the same network's unconditional one; autoguidance
(Karras et al. 2024, "Guiding a diffusion model with a bad version of itself") pushes it away from a worse
network's prediction for the same class, a smaller or shorter-trained one with the same conditioning. With D the
good network at the class asked for, d the bad one at that class and u the good one at the null label:

    out = D + (a - 1) (D - d) + (w - 1) (D - u) [lo <= t <= hi]

a = 1 leaves autoguidance off and w = 1 classifier-free guidance off; a alone is the paper's d + a (D - d), w alone
the GuidedModel of tinyddpm/diffusion/guidance.py (only at timesteps in --guidance-interval). Each term is a
difference of two predictions of one kind at the same x_t and t, so the rule holds for eps, x0 and v alike, as long
as both networks predict the same kind. The paper's claim to test: the bad network's errors resemble the good
one's, so extrapolating away from them removes errors without the loss of variety that classifier-free guidance
brings.

Every setting "a:w" draws --n-per-class samples of each digit (EMA weights of both networks), once per sampling
seed, and is measured as recipe_ab.py and examples/evaluate.py measure: FID-MNIST, precision, recall and accuracy in
the evaluation classifier's features, beside the real-vs-real floor. Written to OUT/autoguidance.md, .json and .png
(FID against accuracy, a line per autoguidance scale through its classifier-free scales); each evaluation is kept
in OUT/evaluations/ and --reuse takes kept ones instead of sampling again.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blas_env import blas_description, unset_blas_overrides  # noqa: E402

if __name__ == "__main__":
    unset_blas_overrides()   # before NumPy loads OpenBLAS (blas_env.py says why)

import numpy as np  # noqa: E402
import recipe_ab  # noqa: E402  (its Judge, summaries and picture: one way of measuring for the three scripts)

import tinyddpm as td  # noqa: E402
from tinyddpm.backend import device_xp, get_xp  # noqa: E402
from tinyddpm.diffusion import cfg_combine, check_interval, sample  # noqa: E402
from tinyddpm.sampling import unet_model  # noqa: E402

SAMPLERS = ("dpm++2m", "ddim")


class AutoGuidedModel:
    """model(x_t, t, labels) = D + (a - 1)(D - d) + (w - 1)(D - u) inside the interval (see the module docstring).

    ``good`` and ``bad`` are sampler-ready models of the same prediction kind; ``null_label`` is the good network's
    "no class" label (used only when w != 1).
    """

    def __init__(self, good, bad, autoguidance: float, guidance: float, null_label: int, interval=None):
        self.good, self.bad, self.a, self.w = good, bad, float(autoguidance), float(guidance)
        self.null_label, self.interval = null_label, check_interval("AutoGuidedModel", interval)

    def __call__(self, x_t, t, labels):
        xp, n = get_xp(x_t), x_t.shape[0]
        if self.w == 1.0:
            cond = self.good(x_t, t, labels)                                   # D
            out = cond
        else:
            null = xp.full((n,), self.null_label, dtype=labels.dtype)          # (N,)
            both = self.good(xp.concatenate([x_t, x_t]), xp.concatenate([t, t]),
                             xp.concatenate([labels, null]))                   # (2N, C, H, W): D, then u
            cond, uncond = both[:n], both[n:]
            w = self.w                                 # guidance.py's mix: w inside the interval, 1 outside
            if self.interval is not None:
                lo, hi = self.interval
                w = xp.where(xp.asarray((t >= lo) & (t <= hi)), w, 1.0).astype(x_t.dtype)[:, None, None, None]
            out = cfg_combine(cond, uncond, w)
        if self.a != 1.0:
            out = out + (self.a - 1.0) * (cond - self.bad(x_t, t, labels))
        return out


def settings(text: str) -> list:
    """An argparse type: a:w,... pairs of (autoguidance scale, classifier-free scale), each a number >= 0."""
    out = []
    for item in text.split(","):
        a, colon, w = item.strip().partition(":")
        try:
            pair = (float(a), float(w))
        except ValueError:
            pair = None
        if not colon or pair is None or min(pair) < 0 or not all(np.isfinite(pair)):
            raise argparse.ArgumentTypeError(f"must be A:W pairs of scales >= 0 (autoguidance:guidance), got {item!r}")
        out.append(pair)
    return out


def build_parser():
    p = argparse.ArgumentParser(prog="autoguidance.py", description=__doc__.split("\n\n")[0])
    p.add_argument("good", type=Path, help="the network to sample (a checkpoint.npz of an MNIST run)")
    p.add_argument("bad", type=Path, help="the guide: a worse network of the same kind (checkpoint.npz)")
    p.add_argument("--settings", type=settings, default=[(1.0, 1.0), (2.0, 1.0), (3.0, 1.0)], metavar="A:W,...",
                   help="autoguidance scale : classifier-free guidance scale, per setting (default 1:1,2:1,3:1)")
    p.add_argument("--guidance-interval", type=recipe_ab.timestep_interval, default=None, metavar="LO,HI",
                   help="classifier-free guidance only at timesteps LO <= t <= HI (default: every t)")
    p.add_argument("--sampler", choices=SAMPLERS, default="dpm++2m")
    p.add_argument("--steps", type=int, default=20, help="sampler steps (default 20)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM's noise (0 deterministic, 1 DDPM-like)")
    recipe_ab.add_sweep_options(p, sample_seeds=1, out="runs/autoguidance", kept_where="in OUT/evaluations")
    return p


def load_pair(parser, args):
    """Both networks as sampler-ready models, refused in one line when they cannot guide each other."""
    nets = {}
    for role in ("good", "bad"):
        path = getattr(args, role)
        if not path.is_file():
            parser.error(f"{role} checkpoint {path}: no such file")
        try:
            nets[role] = td.load_for_sampling(path)
        except (OSError, ValueError, KeyError) as e:
            parser.error(f"{role} checkpoint {path}: unreadable ({e})")
    (pg, cg, schedule), (pb, cb, _) = nets["good"], nets["bad"]
    if cg.unet.num_classes != 10:
        parser.error(f"good checkpoint {args.good}: not a class-conditional MNIST network (10 classes)")
    same = {"prediction": (cg.prediction, cb.prediction), "schedule": (cg.schedule, cb.schedule),
            "timesteps": (cg.num_timesteps, cb.num_timesteps), "classes": (cg.unet.num_classes, cb.unet.num_classes),
            "picture": ((cg.unet.image_channels, cg.unet.image_size), (cb.unet.image_channels, cb.unet.image_size))}
    for name, (g, b) in same.items():
        if g != b:
            parser.error(f"bad checkpoint {args.bad}: its {name} ({b}) differs from the good network's ({g})")
    return (unet_model(pg, cg.unet), unet_model(pb, cb.unet), cg, schedule, pg["conv_in.w"].dtype)


def evaluation_path(args, a: float, w: float, seed: int) -> Path:
    interval = "all" if args.guidance_interval is None else "{}-{}".format(*args.guidance_interval)
    eta = f"_eta{args.eta:g}" if args.sampler == "ddim" else ""
    return (args.out / "evaluations" /
            f"n{10 * args.n_per_class}_a{a:g}_w{w:g}_t{interval}_{args.sampler}{args.steps}{eta}_seed{seed}.json")


def evaluate(args, judge, pair, a: float, w: float, seed: int) -> dict:
    """One setting at one sampling seed: draw, measure, keep (or take the kept one with --reuse)."""
    path = evaluation_path(args, a, w, seed)
    kept = recipe_ab.kept_evaluation(path, judge) if args.reuse else None
    if kept is not None:
        return kept
    good, bad, config, schedule, dtype = pair
    model = AutoGuidedModel(good, bad, a, w, config.unet.null_label, args.guidance_interval)
    requested = np.repeat(np.arange(10), args.n_per_class)                     # (n,) 0 0 .. 1 1 ..
    extra = {"eta": args.eta, "use_clipped_model_output": True} if args.sampler == "ddim" else {}
    start = time.perf_counter()
    x = sample(model, schedule, (len(requested), 1, 28, 28), method=args.sampler, num_steps=args.steps,
               labels=device_xp().asarray(requested), prediction=config.prediction, clip="static", seed=seed,
               dtype=dtype, **extra)
    e = {**judge.measure(td.to_numpy(x), requested), "autoguidance": a, "guidance": w, "sample_seed": seed,
         "sample_s": round(time.perf_counter() - start, 2), "good": str(args.good), "bad": str(args.bad)}
    recipe_ab.keep_evaluation(path, e, judge)
    return e


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.guidance_interval == "all":      # timestep_interval's word for every step
        args.guidance_interval = None
    if args.sample_seeds < 1 or args.n_per_class < 2 or args.steps < 1 or not 0 <= args.eta <= 1:
        parser.error("--sample-seeds and --steps must be >= 1, --n-per-class >= 2 and --eta in [0, 1]")
    pair = load_pair(parser, args)
    print(blas_description(), flush=True)
    n = 10 * args.n_per_class
    judge = recipe_ab.Judge(args, n)
    floors, floor = recipe_ab.floor_over_seeds(judge, args.sample_seeds)
    rows = []
    for a, w in args.settings:
        runs = []
        for seed in range(args.sample_seeds):
            e = evaluate(args, judge, pair, a, w, seed)
            runs.append(e)
            took = "kept from an earlier run" if e.get("reused") else f"{e['sample_s']:.0f} s"
            print(f"autoguidance {a:g} guidance {w:g} seed {seed}: FID {e['fid']:.2f}, precision {e['precision']:.3f}, "
                  f"recall {e['recall']:.3f}, accuracy {e['accuracy']:.3f} ({took})", flush=True)
        rows.append({"autoguidance": a, "guidance": w, "runs": runs,
                     "summary": recipe_ab.metric_summaries(runs)})
    where = "every t" if args.guidance_interval is None else "t in {}-{}".format(*args.guidance_interval)
    heading = (f"good {args.good}, bad {args.bad}; {args.sampler} {args.steps} steps"
               + (f" (eta {args.eta:g})" if args.sampler == "ddim" else "") + f"; classifier-free guidance at {where}; "
               f"n = {n} per evaluation; sampling seeds 0-{args.sample_seeds - 1}; mean (min-max).")
    text = recipe_ab.settings_table(heading, floor, ["autoguidance", "guidance"],
                                    [([f"{r['autoguidance']:g}", f"{r['guidance']:g}"], r["summary"]) for r in rows])
    dump = {"command": sys.argv if argv is None else ["autoguidance.py", *argv], "blas": blas_description(),
            "n": n, "classifier_test_accuracy": judge.test_accuracy, "floor": floor, "floors": floors, "rows": rows}
    recipe_ab.write_study(args.out, "autoguidance", text, dump)
    lines = {}   # a line per autoguidance scale through its classifier-free scales
    for r in rows:
        name = "no autoguidance" if r["autoguidance"] == 1 else f"autoguidance {r['autoguidance']:g}"
        lines.setdefault(name, []).append((r["guidance"], r["summary"]))
    recipe_ab.plot_tradeoff(lines, floor["fid"]["mean"], args.out / "autoguidance.png",
                            f"{args.good} guided by {args.bad}", n, real_accuracy=judge.real_accuracy)
    print(f"wrote {args.out / 'autoguidance.md'}, .json and .png", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
