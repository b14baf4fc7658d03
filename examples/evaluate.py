"""How good are the samples? A table over samplers, step counts and guidance scales.

    python examples/evaluate.py runs/mnist/checkpoint.npz
    python examples/evaluate.py runs/mnist/checkpoint.npz --configs ddim:50,dpm++2m:20 --guidance 1,2.5 --n-per-digit 100
    python examples/evaluate.py runs/mnist/checkpoint.npz --configs dpm++2m:20 --guidance 0,1,2.5 --classifier-guidance 1,4

For every (sampler, steps, guidance) it draws ``n_per_digit`` samples of each digit and measures them
with the MNIST classifier of tinyddpm.classifier (trained once and cached):

    FID-MNIST   Frechet distance between Gaussians fitted to the classifier's penultimate features of
                the samples and of real test digits (lower is better; it grows as n shrinks)
    precision   share of samples inside the k-NN (k=3) manifold of real digits (fidelity)
    recall      share of real digits inside the manifold of the samples (diversity)
    accuracy    share of samples the classifier labels as the digit that was asked for
    IS          classifier-based Inception Score (10 at most for MNIST)

--classifier-guidance adds rows steered by the noise-conditional classifier p(y | x_t, t) instead (classifier
guidance, tinyddpm/noisy_classifier.py, cached in ~/.cache/tinyddpm/noisy_classifier or trained there once):
one row per scale s, with the network at the classifier-free scale --classifier-base (default 0: the
unconditional network, steered by the classifier alone), from the same starting noise as the other rows.
Their seconds per image include the classifier's forward and backward pass at every step.

The real-vs-real baseline (two disjoint sets of real test digits, as many as there are samples) is
printed first: it is what a perfect generator would score with this many samples. The table is
written as Markdown and CSV next to a plot of quality against steps.

The options, the checkpoint, the classifier cache, the test digits, the device and --out are checked before
the first model call; what the user can fix ends in one line and exit status 2 (the rule: examples/_cli.py;
--debug shows the traceback too).
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from _cli import (Parser, UserError, blame, check_out_dir, choose_device, current_device, integer, number,
                  numbers, run)
from sample import load_guide

from tinyddpm import backend, noisy_classifier
from tinyddpm.checkpoint import CheckpointError
from tinyddpm.classifier import BATCH_SIZE as CLASSIFIER_BATCH
from tinyddpm.classifier import (CHECKPOINT_NAME, default_cache_dir, features, load_classifier,
                                 load_or_train_classifier, predict_proba)
from tinyddpm.data import SOURCES, DownloadError, FallbackUnavailable, load_mnist, to_model_range
from tinyddpm.diffusion import SAMPLERS, max_steps
from tinyddpm.metrics import real_baseline, sample_quality
from tinyddpm import load_for_sampling, sample_digits

PROG = "evaluate.py"
DEFAULT_CONFIGS = "ddpm:1000,ddim:50,ddim:20,ddim:10,dpm++2m:20,dpm++2m:10"
COLUMNS = ["sampler", "steps", "guidance", "classifier_scale", "n", "fid", "precision", "recall", "accuracy", "inception_score",
           "seconds_per_image"]
MIN_TEST_DIGITS = 8   # the real-vs-real baseline compares two halves with k-NN (k = 3): more than 3 each


def parse_configs(text: str):
    """'ddim:50,dpm++2m:20' -> [('ddim', 50), ('dpm++2m', 20)], with a clear error for anything else."""
    configs = []
    for item in text.split(","):
        name, _, steps = item.strip().partition(":")
        if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
            raise argparse.ArgumentTypeError(f"--configs: {item!r} is not SAMPLER:STEPS with SAMPLER in {sorted(SAMPLERS)}")
        configs.append((name, int(steps)))
    return configs


def scales(text: str) -> list:
    """An argparse type: classifier-guidance scales >= 0 separated by commas, e.g. 1,4."""
    values = numbers(text)
    negative = [v for v in values if v < 0]
    if negative:
        raise argparse.ArgumentTypeError(f"scales must be >= 0, got {negative[0]:g} in {text!r}")
    return values


def build_parser():
    parser = Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint.npz written by examples/train_mnist.py")
    parser.add_argument("--configs", type=parse_configs, default=DEFAULT_CONFIGS,
                        help=f"SAMPLER:STEPS list (default {DEFAULT_CONFIGS})")
    parser.add_argument("--guidance", type=numbers, default=None,
                        help="guidance scales, e.g. 1,2.5 (default: the training run's)")
    parser.add_argument("--n-per-digit", type=integer(2), default=50, help="samples of each digit per row of the table")
    parser.add_argument("--seed", type=integer(0), default=0, help="seed of the starting noise")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: 'evaluation' next to the checkpoint)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    parser.add_argument("--data-dir", default=None, help="folder of the MNIST IDX files")
    parser.add_argument("--source", choices=SOURCES, default="auto", help="where the real digits come from")
    parser.add_argument("--classifier-dir", default=None,
                        help="where the classifier is cached (default ~/.cache/tinyddpm/classifier)")
    parser.add_argument("--device", choices=backend.DEVICES, default=None, help="default: the current device")
    parser.add_argument("--classifier-guidance", type=scales, default=[], metavar="S,...",
                        help="also rows with classifier guidance at these scales, e.g. 1,4 (default: none)")
    parser.add_argument("--classifier-base", type=number(), default=0.0, metavar="W",
                        help="classifier-free scale of the network under classifier guidance (0: unconditional)")
    parser.add_argument("--noisy-classifier-dir", default=None,
                        help="where the noise-conditional classifier is cached (default "
                             "~/.cache/tinyddpm/noisy_classifier)")
    return parser


def load_split(split: str, args):
    with blame(f"cannot load the MNIST {split} split", ValueError, OSError, FallbackUnavailable, DownloadError):
        return load_mnist(split, data_dir=args.data_dir, source=args.source)


def load_judge(args, test):
    """The classifier: the cache, checked, or (without one) trained now on the checked train split."""
    cache_dir = Path(args.classifier_dir).expanduser() if args.classifier_dir else default_cache_dir()
    cache = cache_dir / CHECKPOINT_NAME
    if cache.is_file():
        with blame("the classifier cache (--classifier-dir)", CheckpointError):
            params, info = load_classifier(cache, where="")
        print(f"tinyddpm.classifier: loaded {cache}", flush=True)
        return params, info
    check_out_dir("--classifier-dir" if args.classifier_dir else "the classifier cache folder", cache_dir)
    train = load_split("train", args)
    if len(train) < CLASSIFIER_BATCH:
        raise UserError(f"no classifier in {cache_dir}, and the MNIST train split holds {len(train)} digits: training "
                        f"one needs at least {CLASSIFIER_BATCH} (one batch)")
    return load_or_train_classifier(cache_dir, train_data=train, test_data=test)

def write_outputs(rows, baseline, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "evaluation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"Real-vs-real baseline ({baseline['n']} vs {baseline['n']} test digits): FID {baseline['fid']:.2f}, "
             f"precision {baseline['precision']:.3f}, recall {baseline['recall']:.3f}", "",
             "| sampler | steps | guidance | classifier | n | FID-MNIST | precision | recall | accuracy | IS | s/image |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cg = f"{r['classifier_scale']:g}" if r["classifier_scale"] else "-"
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['guidance']:g} | {cg} | {r['n']} | {r['fid']:.2f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | {r['accuracy']:.3f} | {r['inception_score']:.2f} | "
                     f"{r['seconds_per_image']:.3f} |")
    (out / "evaluation.md").write_text("\n".join(lines) + "\n")
    plot_quality(rows, baseline, out / "quality_vs_steps.png")
    return "\n".join(lines)


def plot_quality(rows, baseline, path: Path):
    """FID-MNIST and conditional accuracy against the number of model calls, one line per sampler and scale."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_fid, ax_acc = fig.subplots(1, 2)
    kind = lambda r: (r["sampler"], r["guidance"], r["classifier_scale"])   # noqa: E731  one line per kind
    for key in sorted({kind(r) for r in rows}):
        line = sorted((r for r in rows if kind(r) == key), key=lambda r: r["steps"])
        label = f"{key[0]}, guidance {key[1]:g}" + (f", classifier {key[2]:g}" if key[2] else "")
        ax_fid.plot([r["steps"] for r in line], [r["fid"] for r in line], "o-", label=label)
        ax_acc.plot([r["steps"] for r in line], [100 * r["accuracy"] for r in line], "o-", label=label)
    ax_fid.axhline(baseline["fid"], color="gray", ls="--", label=f"real vs real (n={baseline['n']})")
    step_counts = sorted({r["steps"] for r in rows})
    for ax, title in ((ax_fid, "FID-MNIST (lower is better)"), (ax_acc, "conditional accuracy (%)")):
        ax.set_xscale("log")
        ax.set_xticks(step_counts, [str(s) for s in step_counts])   # 10, 20, 50 rather than 10^1 ...
        ax.minorticks_off()
        ax.set_xlabel("sampler steps (model calls per image, x2 with guidance)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax_fid.legend(fontsize=8)
    fig.savefig(path, format="png")


def work(args) -> int:
    out = args.out or args.checkpoint.parent / "evaluation"
    check_out_dir("--out" if args.out else "the output folder (--out)", out)
    if args.device:
        choose_device(args.device)
    else:
        current_device()   # TINYDDPM_DEVICE, checked now rather than at the first array
    params, config, schedule = load_for_sampling(args.checkpoint, use_ema=not args.no_ema)   # one line if unusable
    T = schedule.num_timesteps
    for sampler, steps in args.configs:
        if sampler != "ddpm" and steps > max_steps(sampler, T):
            raise UserError(f"--configs {sampler}:{steps}: {sampler} takes at most {max_steps(sampler, T)} steps on "
                            f"this checkpoint's T={T} timesteps")
    guidances = args.guidance or [config.guidance]
    if args.classifier_guidance and config.unet.num_classes is None and args.classifier_base != 0.0:
        raise UserError(f"--classifier-base {args.classifier_base:g}: this checkpoint's network is unconditional; "
                        "classifier guidance runs it as it is (leave --classifier-base at 0)")
    test = load_split("test", args)
    if len(test) < MIN_TEST_DIGITS:
        raise UserError(f"the MNIST test split holds {len(test)} digits; the real-vs-real baseline needs at least "
                        f"{MIN_TEST_DIGITS}")
    classifier, info = load_judge(args, test)
    guide = load_guide(args, schedule, config.unet)[0] if args.classifier_guidance else None
    out.mkdir(parents=True, exist_ok=True)
    n = 10 * args.n_per_digit
    real = to_model_range(test.images[: 2 * n])                           # (<= 2n, 1, 28, 28)
    real_features = features(classifier, real)                            # (<= 2n, D)
    baseline = real_baseline(real_features, min(n, len(real) // 2), seed=args.seed)
    reference = real_features[:n]
    accuracy = info.get("test_accuracy")
    shown = f"{accuracy:.4f}" if isinstance(accuracy, (int, float)) else "not recorded"
    print(f"classifier test accuracy {shown}; {n} samples per row; "
          f"real-vs-real: FID {baseline['fid']:.2f}, precision {baseline['precision']:.3f}, "
          f"recall {baseline['recall']:.3f} (n={baseline['n']})", flush=True)

    rows = []
    requested = np.repeat(np.arange(10), args.n_per_digit)                # (n,) 0 0 .. 1 1 ..
    settings = [(g, 0.0) for g in guidances] + [(args.classifier_base, s) for s in args.classifier_guidance]
    for sampler, steps in args.configs:
        for guidance, cg in settings:
            start = time.perf_counter()
            # with cg: classifier guidance at scale cg on the network at classifier-free scale `guidance`
            steer = {"classifier_grad": noisy_classifier.gradient_fn(guide), "classifier_scale": cg} if cg else {}
            x = sample_digits(params, config.unet, schedule, range(10), args.n_per_digit, sampler=sampler,
                              steps=steps, guidance=guidance, prediction=config.prediction, seed=args.seed,
                              progress=True, **steer)
            x = backend.to_numpy(x)
            seconds = (time.perf_counter() - start) / len(x)
            q = sample_quality(features(classifier, x), reference, predict_proba(classifier, x), requested)
            row = {"sampler": sampler, "steps": steps if sampler != "ddpm" else schedule.T, "guidance": guidance,
                   "classifier_scale": cg, "n": len(x), "fid": q["fid"], "precision": q["precision"], "recall": q["recall"],
                   "accuracy": q["accuracy"], "inception_score": q["inception_score"],
                   "seconds_per_image": seconds}
            rows.append(row)
            steering = f"guidance {guidance:g}" + (f", classifier guidance {cg:g}" if cg else "")
            print(f"{sampler} {row['steps']} steps, {steering}: FID {q['fid']:.2f}, precision "
                  f"{q['precision']:.3f}, recall {q['recall']:.3f}, accuracy {q['accuracy']:.3f}, "
                  f"{seconds:.3f} s/image", flush=True)
    print(write_outputs(rows, baseline, out))
    for name in ("evaluation.md", "evaluation.csv", "quality_vs_steps.png"):
        print(f"wrote {out / name}")
    return 0


def main(argv=None) -> int:
    return run(PROG, work, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
