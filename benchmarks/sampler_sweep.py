"""Sampler settings at a fixed network: guidance scale x guidance interval, each over sampling seeds, on MNIST.

    python benchmarks/sampler_sweep.py runs/mnist/checkpoint.npz --guidance 1.5,1.75,2,2.5 \
        --intervals all,0-575,80-575 --sample-seeds 3

Every (scale, interval) pair draws --n-per-class samples of each digit (n = 10 x that) with the checkpoint's own
sampler and steps (EMA weights), once per sampling seed, and is measured as recipe_ab.py and examples/evaluate.py
measure: FID-MNIST, precision, recall and accuracy in the evaluation classifier's features, beside the real-vs-real
floor. An interval LO-HI applies guidance only at timesteps LO <= t <= HI (Kynkaanniemi et al. 2024), plain
conditional predictions elsewhere; "all" is every step. Guidance trades FID and recall for accuracy, so the table
is read as a trade-off: the best setting is the lowest FID among those with the accuracy a preset asks for.
Written to OUT/sampler_sweep.md, OUT/sampler_sweep.json (every number, the command, the BLAS line) and
OUT/sampler_sweep.png (FID against accuracy, a line per interval: the trade-off at a glance). Each evaluation is
also kept beside the checkpoint (recipe_ab.py's evaluation_*.json); --reuse takes kept ones instead of sampling again.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blas_env import blas_description, unset_blas_overrides  # noqa: E402

if __name__ == "__main__":
    unset_blas_overrides()   # before NumPy loads OpenBLAS (blas_env.py says why)

import recipe_ab  # noqa: E402  (its Judge, evaluation and summaries: one way of measuring for the three scripts)


def intervals(text: str) -> list:
    """An argparse type: all,LO-HI,... (None for all)."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if item == "all":
            out.append(None)
            continue
        lo, dash, hi = item.partition("-")
        if not dash or not lo.isdigit() or not hi.isdigit() or int(lo) > int(hi):
            raise argparse.ArgumentTypeError(f"must be all or LO-HI timesteps with LO <= HI, got {item!r}")
        out.append((int(lo), int(hi)))
    return out


def label(interval) -> str:
    return "all" if interval is None else f"{interval[0]}-{interval[1]}"


def build_parser():
    p = argparse.ArgumentParser(prog="sampler_sweep.py", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="a checkpoint.npz of an MNIST run")
    p.add_argument("--guidance", type=recipe_ab.scales, default=[1.5, 1.75, 2.0], metavar="W,...")
    p.add_argument("--intervals", type=intervals, default=[None], metavar="all,LO-HI,...")
    recipe_ab.add_sweep_options(p, sample_seeds=3, out="runs/sampler_sweep", kept_where="beside the checkpoint")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.checkpoint.is_file():
        raise SystemExit(f"sampler_sweep.py: {args.checkpoint}: no such checkpoint")
    if args.sample_seeds < 1 or args.n_per_class < 2:
        raise SystemExit("sampler_sweep.py: --sample-seeds must be >= 1 and --n-per-class >= 2")
    print(blas_description(), flush=True)
    n = 10 * args.n_per_class
    judge = recipe_ab.Judge(args, n)
    floors, floor = recipe_ab.floor_over_seeds(judge, args.sample_seeds)
    rows = []
    for interval in args.intervals:
        for g in args.guidance:
            runs = []
            for seed in range(args.sample_seeds):
                e = recipe_ab.evaluate_or_reuse(str(args.checkpoint), judge, args.n_per_class, seed, interval, g,
                                                args.reuse)
                runs.append(e)
                took = "kept from an earlier run" if e.get("reused") else f"{e['sample_s']:.0f} s"
                print(f"interval {label(interval)} guidance {g} seed {seed}: FID {e['fid']:.2f}, precision "
                      f"{e['precision']:.3f}, recall {e['recall']:.3f}, accuracy {e['accuracy']:.3f} ({took})",
                      flush=True)
            rows.append({"interval": label(interval), "guidance": g, "runs": runs,
                         "summary": recipe_ab.metric_summaries(runs)})
    heading = f"{args.checkpoint}; n = {n} per evaluation; sampling seeds 0-{args.sample_seeds - 1}; mean (min-max)."
    text = recipe_ab.settings_table(heading, floor, ["guidance interval (t)", "guidance"],
                                    [([r["interval"], str(r["guidance"])], r["summary"]) for r in rows])
    dump = {"command": sys.argv if argv is None else ["sampler_sweep.py", *argv], "blas": blas_description(),
            "checkpoint": str(args.checkpoint), "n": n, "classifier_test_accuracy": judge.test_accuracy,
            "floor": floor, "floors": floors, "rows": rows}
    recipe_ab.write_study(args.out, "sampler_sweep", text, dump)
    lines = {}   # a line per interval through its scales
    for r in rows:
        name = "guidance at every t" if r["interval"] == "all" else f"guidance at t in {r['interval']}"
        lines.setdefault(name, []).append((r["guidance"], r["summary"]))
    recipe_ab.plot_tradeoff(lines, floor["fid"]["mean"], args.out / "sampler_sweep.png", str(args.checkpoint), n,
                            real_accuracy=judge.real_accuracy)
    print(f"wrote {args.out / 'sampler_sweep.md'}, {args.out / 'sampler_sweep.json'} and "
          f"{args.out / 'sampler_sweep.png'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
