"""How good are the samples? A table over samplers, step counts and guidance scales.

    python examples/evaluate.py runs/mnist/checkpoint.npz
    python examples/evaluate.py runs/mnist/checkpoint.npz --configs ddim:50,dpm++2m:20 --guidance 1,2.5 \
        --n-per-class 100
    python examples/evaluate.py runs/mnist/checkpoint.npz --configs dpm++2m:20 --guidance 0,1,2.5 --classifier-guidance 1,4
    python examples/evaluate.py runs/fashion/checkpoint.npz --nearest 32       # Fashion-MNIST (from the checkpoint)
    python examples/evaluate.py runs/images/checkpoint.npz --data my_pictures  # a folder: labelled, or flat

For every (sampler, steps, guidance) it draws --n-per-class samples of each digit (or class; --n-per-digit is the
older spelling) and measures them with the MNIST classifier of tinyddpm/classifiers/judge.py (trained once and cached):

    FID-MNIST   Frechet distance between Gaussians fitted to the classifier's penultimate features of
                the samples and of real test digits (lower is better; it grows as n shrinks)
    precision   share of samples inside the k-NN (k=3) manifold of real digits (fidelity)
    recall      share of real digits inside the manifold of the samples (diversity)
    accuracy    share of samples the classifier labels as the digit that was asked for
    IS          classifier-based Inception Score (10 at most for MNIST)

--classifier-guidance adds rows steered by the noise-conditional classifier p(y | x_t, t) instead (classifier
guidance, tinyddpm/classifiers/guide.py, cached in ~/.cache/tinyddpm/noisy_classifier or trained there once):
one row per scale s, with the network at the classifier-free scale --classifier-base (default 0: the
unconditional network, steered by the classifier alone), from the same starting noise as the other rows.
Their seconds per image include the classifier's forward and backward pass at every step.

The real-vs-real baseline (two disjoint sets of real test digits, as many as there are samples) is
printed first: it is what a perfect generator would score with this many samples. Beside it, the classifier's
accuracy on the first of those sets: a perfect generator's accuracy too, since the classifier misreads some real
digits (samples scoring above it are more legible than the data, which guidance buys at a cost in FID and recall).
The table is written as Markdown and CSV next to a plot of quality against steps.

Other data. --dataset fashion-mnist (or a checkpoint whose class names or data source say Fashion-MNIST)
measures against Fashion-MNIST's test split in the features of a classifier trained on Fashion-MNIST
(cached in ~/.cache/tinyddpm/classifier/fashion-mnist). --data FOLDER measures against a folder of pictures
(tinyddpm/data/folder.py, loaded at the checkpoint's image size): with one subfolder per class, a classifier is
trained on 90% of its pictures (tested on the rest) and cached under a key made of the pictures' SHA-256, and
the real reference is the folder itself; a flat folder has no labels to train a judge on, so only the
nearest-neighbour check runs. The checkpoint's image size, channels and class count must match the data.

Colour. Samples of a folder of RGB pictures are also measured by their colours: the total variation between the
colour histograms of the samples' pixels and of the real pictures' (tinyddpm/evaluation/colour.py: 4 bins per channel,
0 same, 1 no colour in common), beside the same distance between two disjoint random sets of real pictures of the same
size (the floor; the ratio is the samples' distance over it, 1 for a perfect generator).

--luminance-judge (a folder of digits, one subfolder per digit 0-9, such as coloured MNIST written by
examples/export_images.py --colour): the MNIST classifier (its cache, or trained there once) also reads each sample's
luma, stretched to full contrast and resized to 28x28, and gives the share read as the digit asked for, beside its
reading of the real pictures.

--nearest N (any data): N samples (the first sampler and guidance), each beside its nearest training image
(L2 in pixels, tinyddpm/evaluation/nearest.py) in nearest.png, and the median distance beside the median distance of
training images to their nearest other one: well below that baseline means copies.

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
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from _cli import (GUIDANCE_INTERVAL_HELP, Parser, UserError, blame, check_out_dir, check_sampling_fits, choose_device,
                  chosen_guidance_interval, integer, load_guide, number, numbers, out_folder, run, timestep_interval)

from tinyddpm import backend, load_for_sampling, sample_classes
from tinyddpm.checkpoint import CheckpointError, load_checkpoint
from tinyddpm.classifiers import guide as noisy_classifier
from tinyddpm.classifiers.judge import BATCH_SIZE as CLASSIFIER_BATCH
from tinyddpm.classifiers.judge import (CHECKPOINT_NAME, default_classifier_dir, features, folder_key, load_classifier,
                                        load_or_train_classifier, predict_proba)
from tinyddpm.data import CLASS_NAMES, DATASETS, SOURCES, TITLES, DownloadError, FallbackUnavailable, load_dataset
from tinyddpm.data.folder import load_image_folder
from tinyddpm.data.pixels import pixels_to_model_range
from tinyddpm.diffusion import SAMPLERS, max_steps
from tinyddpm.evaluation import folder_judge
from tinyddpm.evaluation.colour import colour_distance, colour_floor, luminance
from tinyddpm.evaluation.metrics import conditional_accuracy, real_baseline, sample_quality
from tinyddpm.evaluation.nearest import memorisation_check, plot_nearest

PROG = "evaluate.py"
DEFAULT_CONFIGS = "ddpm:1000,ddim:50,ddim:20,ddim:10,dpm++2m:20,dpm++2m:10"
COLUMNS = ["sampler", "steps", "guidance", "classifier_scale", "n", "fid", "precision", "recall", "accuracy", "inception_score",
           "seconds_per_image", "guidance_interval"]
EXTRA_COLUMNS = ["colour_distance", "colour_ratio", "luminance_accuracy"]   # RGB pictures; --luminance-judge
MIN_TEST_DIGITS = 8   # the real-vs-real baseline compares two halves with k-NN (k = 3): more than 3 each
NEAREST_FLAT = 64         # samples in the nearest-neighbour check of a flat folder when --nearest is not given
NEAREST_BASELINE = 1000   # training images in the train-to-train baseline (at most the training set)


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
    parser.add_argument("--n-per-class", "--n-per-digit", dest="n_per_class", type=integer(2), default=50,
                        help="samples of each digit (or class) per row of the table")
    parser.add_argument("--seed", type=integer(0), default=0, help="seed of the starting noise")
    parser.add_argument("--out", type=out_folder, default=None,
                        help="output folder (default: 'evaluation' next to the checkpoint)")
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    parser.add_argument("--dataset", choices=DATASETS, default=None,
                        help="the real data (default: what the checkpoint was trained on, else mnist)")
    parser.add_argument("--data", type=Path, default=None, metavar="FOLDER",
                        help="a folder of pictures instead (one subfolder per class, or flat)")
    parser.add_argument("--data-dir", default=None, help="folder of the MNIST (or Fashion-MNIST) IDX files")
    parser.add_argument("--source", choices=SOURCES, default="auto",
                        help="where the real images come from (package, subset: MNIST's; system: Fashion-MNIST's "
                             "Debian package)")
    parser.add_argument("--classifier-dir", default=None,
                        help="where the classifier is cached (default ~/.cache/tinyddpm/classifier, and a "
                             "subfolder per data set other than MNIST)")
    parser.add_argument("--classifier-epochs", type=number(above=0), default=None, metavar="E",
                        help="epochs of a classifier trained now (default 2, or for a split under 20,000 images "
                             f"936 steps with random shifts; a folder: at least {folder_judge.FOLDER_MIN_STEPS} steps)")
    parser.add_argument("--nearest", type=integer(1), default=None, metavar="N",
                        help="write nearest.png: N samples beside their nearest training images, and the median "
                             f"distances (default: none; a flat folder: {NEAREST_FLAT})")
    parser.add_argument("--device", choices=backend.DEVICES, default=None, help="default: TINYDDPM_DEVICE, else cpu")
    parser.add_argument("--guidance-interval", type=timestep_interval, default=None, metavar="LO,HI",
                        help=GUIDANCE_INTERVAL_HELP)
    parser.add_argument("--classifier-guidance", type=scales, default=[], metavar="S,...",
                        help="also rows with classifier guidance at these scales, e.g. 1,4 (default: none)")
    parser.add_argument("--classifier-base", type=number(), default=0.0, metavar="W",
                        help="classifier-free scale of the network under classifier guidance (0: unconditional)")
    parser.add_argument("--noisy-classifier-dir", default=None,
                        help="where the noise-conditional classifier is cached (default "
                             "~/.cache/tinyddpm/noisy_classifier)")
    parser.add_argument("--luminance-judge", action="store_true",
                        help="with --data FOLDER of digits (subfolders 0-9, e.g. coloured MNIST): also the accuracy "
                             "of the MNIST classifier on the samples' luma")
    return parser


class RealData:
    """What the samples are measured against: a named data set's splits, or a folder's pictures.

    Each part has uint8 .images, .labels (None: a flat folder) and .source. ``reference``: the real images of
    FID and precision/recall (a test split, or the whole folder); ``train``/``test``: the classifier's (the
    train split, read when first needed, and the test split; a folder's classifier splits the folder itself,
    tinyddpm/evaluation/folder_judge.py); ``pictures``: the model's training images, for the nearest-neighbour
    check.
    """

    def __init__(self, name: str, title: str, key: str, class_names, reference, train=None, test=None):
        self.name, self.title, self.key, self.class_names = name, title, key, list(class_names)
        self.reference, self.train, self.test = reference, train, test if test is not None else reference
        self.pictures = reference if name == "folder" else None

    @property
    def labelled(self) -> bool:
        return self.reference.labels is not None

    def reference_picks(self, count: int, seed: int) -> np.ndarray:
        """Indices of the (at most) ``count`` real images that FID and precision/recall compare against.

        A test split: its first ``count`` (the split is in no particular order; the README's floors use these).
        A folder: a seeded random ``count``, since a folder is read class after class and its first images
        would all be of the first class.
        """
        total = len(self.reference.images)
        if self.name != "folder":
            return np.arange(min(count, total))
        return folder_judge.reference_picks(total, count, seed)

    def train_split(self, args):
        """The named data set's train split, loaded once (the classifier and the nearest check share it)."""
        if self.train is None:
            self.train = load_split("train", args, self.name)
        return self.train


def load_split(split: str, args, dataset: str = "mnist"):
    with blame(f"cannot load the {TITLES[dataset]} {split} split", ValueError, OSError, FallbackUnavailable,
               DownloadError):
        return load_dataset(dataset, split, data_dir=args.data_dir, source=args.source)


def checkpoint_dataset(path: Path) -> str:
    """'fashion-mnist', 'folder' or 'mnist': what the checkpoint says it was trained on (class names, data source)."""
    extra = load_checkpoint(path).extra or {}
    names, source = [str(n) for n in extra.get("class_names") or []], str(extra.get("data_source") or "")
    if names == list(CLASS_NAMES["fashion-mnist"]) or "Fashion-MNIST" in source:
        return "fashion-mnist"
    if names and names != list(CLASS_NAMES["mnist"]):
        return "folder"
    return "mnist"


def load_real(args, config) -> RealData:
    """The real data, checked against the checkpoint's image size, channels and classes (one line if they differ)."""
    u = config.unet
    if args.data is not None:
        with blame(f"--data {args.data}", ValueError, OSError):
            folder = load_image_folder(args.data, image_size=u.image_size)
        print(f"tinyddpm.data.folder: {folder.source}", flush=True)
        real = RealData("folder", "folder", "", folder.class_names, folder)
        if real.labelled:
            real.key = folder_key(folder.images, folder.labels)
    else:
        trained_on = checkpoint_dataset(args.checkpoint)
        if trained_on == "folder":
            raise UserError(f"{args.checkpoint} was trained on a folder of pictures (its class names are not a "
                            "named data set's): pass that folder as --data FOLDER")
        name = args.dataset or trained_on
        if args.dataset and args.dataset != trained_on:
            raise UserError(f"--dataset {args.dataset}: {args.checkpoint} was trained on {TITLES[trained_on]} (its "
                            f"class names and data source say so); measure it against that (leave --dataset out)")
        real = RealData(name, TITLES[name], name, CLASS_NAMES[name], load_split("test", args, name))
    shape = real.reference.images.shape    # (N, H, W) or (N, C, H, W)
    size, channels = shape[-1], 1 if len(shape) == 3 else shape[1]
    if (size, channels) != (u.image_size, u.image_channels):
        raise UserError(f"{args.checkpoint} makes {u.image_channels}-channel {u.image_size}x{u.image_size} images, "
                        f"the {real.title} data is {channels}-channel {size}x{size}: evaluate it on the data it was "
                        "trained on")
    if u.num_classes is not None and real.labelled and u.num_classes != len(real.class_names):
        raise UserError(f"{args.checkpoint} has {u.num_classes} classes, the {real.title} data "
                        f"{len(real.class_names)} ({', '.join(real.class_names[:6])}...)")
    return real


def load_judge(args, real: RealData, cache_dir: Path | None = None, named: str | None = None):
    """The classifier of the real data: the cache, checked, or (without one) trained now on its train split.

    ``cache_dir``: default --classifier-dir, else the data's default folder; ``named``: what errors call it.
    """
    if cache_dir is None:
        cache_dir = Path(args.classifier_dir).expanduser() if args.classifier_dir else default_classifier_dir(real.key)
    cache = cache_dir / CHECKPOINT_NAME
    if cache.is_file():
        with blame(named or "the classifier cache (--classifier-dir)", CheckpointError):
            params, info = load_classifier(cache, where="", dataset=real.key)
        print(f"tinyddpm.classifiers.judge: loaded {cache}", flush=True)
        return params, info
    check_out_dir(named or ("--classifier-dir" if args.classifier_dir else "the classifier cache folder"), cache_dir)
    if real.name == "folder":   # the folder's recipe, shared with benchmarks/recipe_ab.py --data
        with blame(f"--data {args.data}", folder_judge.TooFewPictures):
            return folder_judge.load_or_train_folder_classifier(real.reference, cache_dir,
                                                                epochs=args.classifier_epochs)
    train = real.train_split(args)
    if len(train) < CLASSIFIER_BATCH:
        raise UserError(f"no classifier in {cache_dir}, and the {real.title} train split holds {len(train)} images: "
                        f"training one needs at least {CLASSIFIER_BATCH} (one batch)")
    # epochs None: judge.training_recipe (2 epochs; a small split more, with random shifts)
    return load_or_train_classifier(cache_dir, train_data=train, test_data=real.test, dataset=real.name,
                                    data_key=real.key, epochs=args.classifier_epochs)


def load_mnist_judge(args):
    """--luminance-judge's reader of digits: the MNIST classifier (params, info), from its cache or trained now."""
    cache_dir = default_classifier_dir("mnist")
    # the shared MNIST cache is trained (once) by the standard recipe, not with the epochs given for the folder's judge
    args = argparse.Namespace(**{**vars(args), "classifier_epochs": None})
    test = None if (cache_dir / CHECKPOINT_NAME).is_file() else load_split("test", args)   # only to train one now
    mnist = RealData("mnist", TITLES["mnist"], "mnist", CLASS_NAMES["mnist"], test)
    return load_judge(args, mnist, cache_dir, "the MNIST classifier cache (--luminance-judge)")


def luminance_accuracy(judge, x, requested) -> float:
    """Share of pictures x (N, C, H, W) in [-1, 1] whose luma the MNIST classifier reads as the digit requested (N,)."""
    params, info = judge
    return conditional_accuracy(predict_proba(params, luminance(x, size=info["image_size"])), requested)


def nearest_check(args, params, config, schedule, real: RealData, n: int, out: Path) -> None:
    """nearest.png and the medians: ``n`` samples (first sampler, first guidance) against the training images."""
    train = real.pictures if real.pictures is not None else real.train_split(args)
    K = max(1, len(real.class_names))
    sampler, steps = args.configs[0]
    guidance = (args.guidance or [config.guidance])[0]
    interval = chosen_guidance_interval(args.guidance_interval, config, schedule.num_timesteps)
    x = sample_classes(params, config.unet, schedule, classes=range(K), n_per_class=-(-n // K), sampler=sampler,
                       steps=steps, guidance=guidance, prediction=config.prediction, seed=args.seed, progress=True,
                       guidance_interval=interval)
    x = backend.to_numpy(x)[np.linspace(0, K * -(-n // K) - 1, n).round().astype(int)]   # (n, C, H, W) all classes
    pixels = pixels_to_model_range(train.images)                                       # (N, C, H, W)
    report = memorisation_check(x, pixels, n_baseline=NEAREST_BASELINE, seed=args.seed)
    what = (f"nearest training image (L2 in pixels, range [-1, 1]): median {report['median']:.2f} over {n} samples "
            f"({report['copies']} exact copies); training images to their nearest other: median "
            f"{report['baseline_median']:.2f} ({min(NEAREST_BASELINE, len(pixels))} of {len(pixels)})")
    print(what, flush=True)
    path = plot_nearest(out / "nearest.png", x, pixels, report["indices"], report["distances"],
                        title=f"{sampler} {steps} steps, guidance {guidance:g}: sample | nearest of {len(pixels)} "
                              f"training images; median {report['median']:.2f} (train-to-train "
                              f"{report['baseline_median']:.2f})")
    print(f"wrote {path}")


def real_extras(baseline) -> str:
    """The classifier's accuracy on the real pictures, the colour floor and the MNIST classifier's reading of the real
    pictures' luma, when measured ('' if not)."""
    text = f"; accuracy {baseline['accuracy']:.3f}" if "accuracy" in baseline else ""
    if "colour" in baseline:
        text += f"; colour TV {baseline['colour']:.3f} ({baseline['colour_n']} vs {baseline['colour_n']})"
    if "luminance_accuracy" in baseline:
        text += f"; MNIST classifier on the real pictures' luma: accuracy {baseline['luminance_accuracy']:.3f}"
    return text


def row_extras(row) -> str:
    """A row's colour distance (and its ratio to the floor) and luma accuracy, when measured ('' if not)."""
    text = ""
    if "colour_distance" in row:
        text += f", colour TV {row['colour_distance']:.3f} ({row['colour_ratio']:.1f}x floor)"
    if "luminance_accuracy" in row:
        text += f", MNIST on luma {row['luminance_accuracy']:.3f}"
    return text


def write_outputs(rows, baseline, out: Path, fid_name: str = "FID-MNIST"):
    out.mkdir(parents=True, exist_ok=True)
    extra = [c for c in EXTRA_COLUMNS if c in rows[0]]   # every row measures the same things
    with open(out / "evaluation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS + extra)
        writer.writeheader()
        writer.writerows(rows)
    heads = {"colour_distance": "colour TV (x floor)", "luminance_accuracy": "MNIST on luma"}
    heads = [heads[c] for c in extra if c in heads]
    lines = [f"Real-vs-real baseline ({baseline['n']} vs {baseline['n']} real images): {fid_name} {baseline['fid']:.2f}, "
             f"precision {baseline['precision']:.3f}, recall {baseline['recall']:.3f}{real_extras(baseline)}", "",
             f"| sampler | steps | guidance | classifier | n | {fid_name} | precision | recall | accuracy | IS | s/image |"
             + "".join(f" {h} |" for h in heads),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(heads)]
    for r in rows:
        cg = f"{r['classifier_scale']:g}" if r["classifier_scale"] else "-"
        interval = f" (t {r['guidance_interval']})" if r.get("guidance_interval") else ""
        cells = [f"{r['colour_distance']:.3f} ({r['colour_ratio']:.1f}x)"] if "colour_distance" in r else []
        cells += [f"{r['luminance_accuracy']:.3f}"] if "luminance_accuracy" in r else []
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['guidance']:g}{interval} | {cg} | {r['n']} | {r['fid']:.2f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | {r['accuracy']:.3f} | {r['inception_score']:.2f} | "
                     f"{r['seconds_per_image']:.3f} |" + "".join(f" {c} |" for c in cells))
    (out / "evaluation.md").write_text("\n".join(lines) + "\n")
    plot_quality(rows, baseline, out / "quality_vs_steps.png", fid_name)
    return "\n".join(lines)


def plot_quality(rows, baseline, path: Path, fid_name: str = "FID-MNIST"):
    """FID and conditional accuracy against the number of model calls, one line per sampler and scale."""
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
    for ax, title in ((ax_fid, f"{fid_name} (lower is better)"), (ax_acc, "conditional accuracy (%)")):
        ax.set_xscale("log")
        ax.set_xticks(step_counts, [str(s) for s in step_counts])   # 10, 20, 50 rather than 10^1 ...
        ax.minorticks_off()
        ax.set_xlabel("sampler steps (model calls per image, x2 with guidance)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax_fid.legend(fontsize=8)
    fig.savefig(path, format="png")


def work(args) -> int:
    out = Path(args.out) if args.out else args.checkpoint.parent / "evaluation"
    check_out_dir("--out" if args.out else "the output folder (--out)", out)
    if args.dataset and args.data:
        raise UserError(f"--dataset {args.dataset} and --data {args.data}: give one (the real data to measure against)")
    if args.luminance_judge and args.data is None:
        raise UserError("--luminance-judge: only with --data FOLDER, a folder of digit pictures (subfolders 0 to 9)")
    device, why = choose_device(args.device, auto=False)   # --device, else TINYDDPM_DEVICE, else cpu; checked now
    print(f"device {device} ({why})")
    params, config, schedule = load_for_sampling(args.checkpoint, use_ema=not args.no_ema)   # one line if unusable
    T = schedule.num_timesteps
    for sampler, steps in args.configs:
        if sampler != "ddpm" and steps > max_steps(sampler, T):
            raise UserError(f"--configs {sampler}:{steps}: {sampler} takes at most {max_steps(sampler, T)} steps on "
                            f"this checkpoint's T={T} timesteps")
    # the K * n samples of one setting are drawn as one batch: checked against the memory before any loading
    check_sampling_fits(f"--n-per-class {args.n_per_class}", config.unet,
                        (config.unet.num_classes or 10) * args.n_per_class)
    interval = chosen_guidance_interval(args.guidance_interval, config, T)
    guidances = args.guidance or [config.guidance]
    if args.classifier_guidance and config.unet.num_classes is None and args.classifier_base != 0.0:
        raise UserError(f"--classifier-base {args.classifier_base:g}: this checkpoint's network is unconditional; "
                        "classifier guidance runs it as it is (leave --classifier-base at 0)")
    real = load_real(args, config)
    if args.luminance_judge and real.class_names != list(CLASS_NAMES["mnist"]):
        found = ", ".join(real.class_names[:6]) + ("..." if len(real.class_names) > 6 else "") or "none: a flat folder"
        raise UserError(f"--luminance-judge: the classes of --data {args.data} must be the digits 0 to 9, the MNIST "
                        f"classifier's (its classes: {found})")
    if args.classifier_guidance and real.name != "mnist":
        raise UserError(f"--classifier-guidance: the noise-conditional classifier is MNIST's; there is none for the "
                        f"{real.title} data")
    if not real.labelled:   # a flat folder: nothing to train a judge on
        print(f"--data {args.data} is a flat folder: no labels to train the evaluation classifier on, so no FID, "
              "precision/recall or accuracy; only the nearest-neighbour check", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        nearest_check(args, params, config, schedule, real, args.nearest or NEAREST_FLAT, out)
        return 0
    if len(real.reference.labels) < MIN_TEST_DIGITS:
        raise UserError(f"the {real.title} data holds {len(real.reference.labels)} real images; the real-vs-real "
                        f"baseline needs at least {MIN_TEST_DIGITS}")
    classifier, info = load_judge(args, real)
    mnist_judge = load_mnist_judge(args) if args.luminance_judge else None
    if args.nearest and real.pictures is None:   # a folder's training images are the folder, read already
        real.train_split(args)   # the training images of the nearest check: read (and checked) before any sampling
    guide = load_guide(args, schedule, config.unet)[0] if args.classifier_guidance else None
    out.mkdir(parents=True, exist_ok=True)
    K = len(real.class_names)
    n = K * args.n_per_class
    picks = real.reference_picks(2 * n, args.seed)
    real_pixels = pixels_to_model_range(real.reference.images[picks])  # (<= 2n, C, H, W)
    real_features = features(classifier, real_pixels)                   # (<= 2n, D)
    baseline = real_baseline(real_features, min(n, len(real_pixels) // 2), seed=args.seed)
    reference = real_features[:n]
    real_labels = real.reference.labels[picks[:n]]                      # (<= n,) the classes of reference
    baseline["accuracy"] = conditional_accuracy(predict_proba(classifier, real_pixels[:n]), real_labels)
    coloured = real_pixels.shape[1] == 3
    if coloured:   # the samples' colours against the first n real pictures, beside two disjoint real sets of n
        baseline["colour_n"] = min(n, len(real_pixels) // 2)
        baseline["colour"] = colour_floor(real_pixels, baseline["colour_n"], seed=args.seed)
    if mnist_judge is not None:   # the class indices of the folder's subfolders 0..9 are the digits
        baseline["luminance_accuracy"] = luminance_accuracy(mnist_judge, real_pixels[:n], real_labels)
    fid_name = "FID-folder" if real.name == "folder" else f"FID-{real.title}"
    accuracy = info.get("test_accuracy")
    shown = f"{accuracy:.4f}" if isinstance(accuracy, (int, float)) else "not recorded"
    print(f"classifier test accuracy {shown}; {n} samples per row; "
          f"real-vs-real: {fid_name} {baseline['fid']:.2f}, precision {baseline['precision']:.3f}, "
          f"recall {baseline['recall']:.3f} (n={baseline['n']}){real_extras(baseline)}", flush=True)

    rows = []
    requested = np.repeat(np.arange(K), args.n_per_class)                 # (n,) 0 0 .. 1 1 ..
    settings = [(g, 0.0) for g in guidances] + [(args.classifier_base, s) for s in args.classifier_guidance]
    for sampler, steps in args.configs:
        for guidance, cg in settings:
            start = time.perf_counter()
            # with cg: classifier guidance at scale cg on the network at classifier-free scale `guidance`
            steer = {"classifier_grad": noisy_classifier.gradient_fn(guide), "classifier_scale": cg} if cg else {}
            x = sample_classes(params, config.unet, schedule, classes=range(K), n_per_class=args.n_per_class,
                               sampler=sampler, steps=steps, guidance=guidance, prediction=config.prediction,
                               seed=args.seed, progress=True, guidance_interval=interval, **steer)
            x = backend.to_numpy(x)
            seconds = (time.perf_counter() - start) / len(x)
            q = sample_quality(features(classifier, x), reference, predict_proba(classifier, x), requested)
            row = {"sampler": sampler, "steps": steps if sampler != "ddpm" else schedule.T, "guidance": guidance,
                   "classifier_scale": cg, "n": len(x), "fid": q["fid"], "precision": q["precision"], "recall": q["recall"],
                   "accuracy": q["accuracy"], "inception_score": q["inception_score"],
                   "seconds_per_image": seconds,
                   "guidance_interval": "" if interval is None else "%d-%d" % interval}
            if coloured:
                row["colour_distance"] = colour_distance(x, real_pixels[:n])
                row["colour_ratio"] = row["colour_distance"] / baseline["colour"] if baseline["colour"] > 0 else np.nan
            if mnist_judge is not None:
                row["luminance_accuracy"] = luminance_accuracy(mnist_judge, x, requested)
            rows.append(row)
            steering = f"guidance {guidance:g}" + (f", classifier guidance {cg:g}" if cg else "")
            print(f"{sampler} {row['steps']} steps, {steering}: {fid_name} {q['fid']:.2f}, precision "
                  f"{q['precision']:.3f}, recall {q['recall']:.3f}, accuracy {q['accuracy']:.3f}{row_extras(row)}, "
                  f"{seconds:.3f} s/image", flush=True)
    print(write_outputs(rows, baseline, out, fid_name))
    for name in ("evaluation.md", "evaluation.csv", "quality_vs_steps.png"):
        print(f"wrote {out / name}")
    if args.nearest:
        nearest_check(args, params, config, schedule, real, args.nearest, out)
    return 0


def main(argv=None) -> int:
    return run(PROG, work, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
