"""Train named variants of a preset at EQUAL WALL TIME on MNIST or a folder of pictures, evaluate each, and say
which differences are real.

    python benchmarks/recipe_ab.py --variant base='{}' --variant minsnr='{"min_snr_gamma": 5}' \
        --variant v='{"prediction": "v"}' --variant noattn='{"unet": {"attention_resolutions": []}}'
    python benchmarks/recipe_ab.py --quick          # a smoke test: 'tiny' preset, 2 variants, a few steps, n = 20
    python benchmarks/recipe_ab.py --data data/fashion --variant base='{}' --variant v='{"prediction": "v"}'

A variant is NAME=JSON: TrainConfig fields to override in the preset (--preset, default cpu), the U-Net's under
"unet" (merged into the preset's UNetConfig). The first variant is the baseline. The protocol
(benchmarks/NOTES_recipe.md):

1. Step cost. Every variant gets a fresh state; each runs --cost-warmup untimed steps, then --cost-rounds rounds of
   --cost-steps timed steps, the variants taking turns within each round (one process, so load from other programs
   hits all of them alike); a variant's cost is the median over rounds of its seconds per step. A variant that
   changes only fields that leave a step's work as it is (COST_NEUTRAL: lr and its schedule, prediction,
   min_snr_gamma, EMA, sampler settings...) takes the baseline's cost without being timed, since timing it would
   only turn the measurement's noise into a different step count (--time-all times it anyway).
   --costs NAME=SECONDS,... skips the measurement (reuse an earlier one; the test injects costs this way).
2. Equal wall time. The baseline trains --steps steps (default: the preset's); every other variant
   steps = round(baseline_steps * cost(baseline) / cost(variant)), its lr schedule (warmup, cosine decay) run over
   its own steps. Each variant is trained once per training seed (--train-seeds: seeds 0..S-1) from a fresh state on
   the MNIST train split (whatever load_mnist finds, or --source / --data-dir), checkpoint in OUT/NAME/seedS/.
3. Evaluation. Each checkpoint's EMA weights draw --n-per-class samples of each digit (n = 10 x that) with the
   variant's sampler, sampler steps and guidance (the preset's unless the variant overrides them;
   --guidance-interval LO,HI passed through to sample_classes), once per sampling seed (--sample-seeds: 0..K-1), and
   are measured as examples/evaluate.py does: FID-MNIST, precision, recall (k-NN, k = 3) and accuracy in the
   evaluation classifier's features (tinyddpm.classifiers.judge, cached; trained once if missing) against the first
   n test digits, beside the real-vs-real floor (two disjoint sets of the first 2n test digits, split per sampling
   seed, so the floor has a spread too).
4. Verdict. Over all (training seed, sampling seed) pairs a variant has a mean FID and a spread (max - min). Against
   the baseline: "better" or "worse" when the means differ by more than the larger of the two spreads, else
   "no difference (the difference is smaller than the spread)". With one seed of each the spread is 0 and every
   difference counts: the --quick mode is a smoke test, not a measurement.

The table is printed and written to OUT/recipe_ab.md; every number (costs, steps, per-seed metrics, floors, losses,
wall times, the BLAS line, the command) to OUT/recipe_ab.json; FID against accuracy, a line per variant through its
guidance scales, to OUT/recipe_ab.png.

A folder of pictures instead of MNIST (--data FOLDER, one subfolder per class, e.g. Fashion-MNIST written by
python examples/export_images.py --dataset fashion-mnist --out data/fashion --per-class 1000): the same study, the
preset images-cpu by default (tiny with --quick). Each variant's config is the one examples/train_images.py --data
FOLDER builds (its U-Net at the pictures' size and channels, a class per subfolder: examples/_cli.py's
picture_config), the variant's overrides on top, trained on the folder's pictures and labels as train_images.py
trains (no flips). Each network draws --n-per-class samples of each class and is measured as examples/evaluate.py
--data FOLDER measures (tinyddpm/evaluation/folder_judge.py): FID-folder, precision, recall and accuracy in the
features of the folder's classifier (its cache: one trained by evaluate.py for the folder is used, and the other way
round), against a seeded random pick of n of the folder's pictures, beside the floor of two disjoint sets of a
seeded random 2n (evaluate.py's at --seed 0), split per sampling seed. A flat folder is refused: no classes to
condition on or to judge by.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1] / "examples"))   # _cli.py: how train_images.py builds a run
from blas_env import blas_description, unset_blas_overrides  # noqa: E402

if __name__ == "__main__":
    unset_blas_overrides()   # before NumPy loads OpenBLAS (blas_env.py says why)

import numpy as np  # noqa: E402

import tinyddpm as td  # noqa: E402
from tinyddpm.checkpoint import load_checkpoint  # noqa: E402
from tinyddpm.classifiers.judge import (default_classifier_dir, features, load_or_train_classifier,  # noqa: E402
                                        predict_proba)
from tinyddpm.data import SOURCES  # noqa: E402
from tinyddpm.data.folder import load_image_folder  # noqa: E402
from tinyddpm.data.pixels import pixels_to_model_range  # noqa: E402
from tinyddpm.diffusion import describe_guidance  # noqa: E402
from tinyddpm.evaluation.folder_judge import (TooFewPictures, load_or_train_folder_classifier,  # noqa: E402
                                              reference_picks)
from tinyddpm.evaluation.metrics import conditional_accuracy, real_baseline, sample_quality  # noqa: E402
from tinyddpm.training import TrainConfig  # noqa: E402

from _cli import picture_config, picture_size, timestep_interval  # noqa: E402  (after tinyddpm, as examples/ do)

# fields that change how a network is sampled, not what it learns
SAMPLING_ONLY = ("sampler", "sample_steps", "guidance", "guidance_interval", "preview_per_class", "final_per_class")
METRICS = ("fid", "precision", "recall", "accuracy")
QUICK_VARIANTS = {"base": {}, "minsnr": {"min_snr_gamma": 5.0}}
# fields that change what is learnt but not the work of a training step: a variant changing only these trains the
# baseline's steps (timing it would only turn the measurement's noise into a different step count); --time-all times
# them anyway
COST_NEUTRAL = {"schedule", "num_timesteps", "prediction", "loss", "min_snr_gamma", "t_distribution", "t_lognormal",
                "p_uncond", "lr", "warmup_steps",
                "lr_decay", "min_lr", "betas", "weight_decay", "grad_clip", "ema_decay", "ema_warmup", "log_every",
                *SAMPLING_ONLY}
NOT_OVERRIDABLE = {"steps": "the baseline's steps are --steps, the others' follow from the step costs",
                   "seed": "training seeds are --train-seeds"}


# ---------------------------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------------------------

def variant(text: str) -> tuple:
    """An argparse type: NAME=JSON (a JSON object of TrainConfig overrides; U-Net fields under "unet")."""
    name, eq, options = text.partition("=")
    name = name.strip()
    if not eq or not name or "/" in name or name.startswith("."):
        raise argparse.ArgumentTypeError(f"must be NAME=JSON, e.g. minsnr='{{\"min_snr_gamma\": 5}}', got {text!r}")
    try:
        overrides = json.loads(options or "{}")
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"{name}: the overrides are not JSON ({e}): {options!r}") from None
    if not isinstance(overrides, dict):
        raise argparse.ArgumentTypeError(f"{name}: the overrides must be a JSON object, got {options!r}")
    return name, overrides


def costs(text: str) -> dict:
    """An argparse type: NAME=SECONDS,... (seconds per training step, > 0)."""
    out = {}
    for item in text.split(","):
        name, _, seconds = item.partition("=")
        try:
            value = float(seconds)
        except ValueError:
            value = float("nan")
        if not name.strip() or not np.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be NAME=SECONDS,... with SECONDS > 0, got {item!r}")
        out[name.strip()] = value
    return out


def scales(text: str):
    """An argparse type: W,... guidance scales (finite numbers >= 0), or 'kept'."""
    if text == "kept":
        return text
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(np.isfinite(v) and v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"must be guidance scales W,... (numbers >= 0), got {text!r}")
    return values


def names_list(text: str) -> list:
    """An argparse type: NAME,... (variant names)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"must be variant names NAME,..., got {text!r}")
    return names


def build_parser():
    p = argparse.ArgumentParser(prog="recipe_ab.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", type=variant, action="append", default=[], metavar="NAME=JSON",
                   help="a variant: TrainConfig overrides as JSON, U-Net fields under \"unet\"; the first is the "
                        "baseline (repeat the option; default with --quick: base={} minsnr={\"min_snr_gamma\": 5})")
    p.add_argument("--preset", default=None,
                   help="the preset the variants change (default cpu, images-cpu with --data; tiny with --quick)")
    p.add_argument("--steps", type=int, default=None, help="the baseline's training steps (default: the preset's)")
    p.add_argument("--train-seeds", type=int, default=1, help="training seeds 0..S-1 per variant (2 for finalists)")
    p.add_argument("--sample-seeds", type=int, default=None, help="sampling seeds 0..K-1 per network (default 3)")
    p.add_argument("--n-per-class", type=int, default=None,
                   help="samples per digit, or class of --data (default 100: n = 1,000 for ten classes)")
    p.add_argument("--guidance", type=scales, default=None, metavar="W,...",
                   help="evaluate every network at each of these guidance scales (default: each variant's own); "
                        "guidance trades FID and recall for accuracy, so compare variants at several. 'kept' "
                        "(with --reuse): every scale and sampling seed already measured beside each network at "
                        "this n and interval, nothing new")
    p.add_argument("--guidance-interval", type=timestep_interval, default=None, metavar="LO,HI",
                   help="guidance only at timesteps LO <= t <= HI for every variant; 'all': at every step (default: "
                        "each variant's own guidance_interval, the preset's unless it overrides it)")
    p.add_argument("--costs", type=costs, default=None, metavar="NAME=S,...",
                   help="seconds per step of every variant: skip the measurement")
    p.add_argument("--time-all", action="store_true",
                   help="also time variants that change only cost-neutral fields (lr, prediction, min_snr_gamma, "
                        "sampler...; by default they take the baseline's cost)")
    p.add_argument("--cost-warmup", type=int, default=3, help="untimed steps per variant before timing")
    p.add_argument("--cost-steps", type=int, default=10, help="timed steps per variant and round")
    p.add_argument("--cost-rounds", type=int, default=5, help="rounds of timed steps (the variants take turns)")
    p.add_argument("--out", type=Path, default=Path("runs/recipe_ab"), help="checkpoints, table and JSON")
    p.add_argument("--only", type=names_list, default=None, metavar="NAME,...",
                   help="train (and evaluate) only these variants; the step counts still follow from every "
                        "variant's cost, so runs split over processes with the same --costs agree")
    p.add_argument("--costs-only", action="store_true",
                   help="measure the step costs, print them as a --costs argument, and stop")
    p.add_argument("--train-only", action="store_true", help="train, then stop (evaluate later with --reuse)")
    p.add_argument("--reuse", action="store_true",
                   help="skip training where OUT/NAME/seedS/checkpoint.npz already holds this config at its last step, "
                        "and evaluations already kept beside it (evaluation_*.json); a checkpoint of another config is "
                        "refused, not trained over (a changed preset would otherwise retrain a baseline)")
    p.add_argument("--data", type=Path, default=None, metavar="FOLDER",
                   help="a folder of pictures, one subfolder per class, instead of MNIST: each variant trained as "
                        "examples/train_images.py --data FOLDER trains, measured as examples/evaluate.py --data "
                        "FOLDER measures (FID-folder; its classifier cache)")
    add_judge_options(p)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: tiny preset, 2 variants, 6 steps, 1 sampling seed, 2 per digit, 1 timed step")
    return p


def add_judge_options(p) -> None:
    """Where the real digits and the evaluation classifier come from (Judge reads these; sampler_sweep.py and
    autoguidance.py take them too)."""
    p.add_argument("--source", choices=SOURCES, default="auto", help="where MNIST comes from (load_mnist)")
    p.add_argument("--data-dir", default=None, help="folder of MNIST's IDX files")
    p.add_argument("--classifier-dir", default=None,
                   help="the evaluation classifier's cache (default ~/.cache/tinyddpm/classifier; with --data, "
                        "evaluate.py's folder for that folder's pictures)")
    p.add_argument("--classifier-epochs", type=float, default=None,
                   help="epochs of a classifier trained now, when none is cached (default: judge.training_recipe's)")


def add_sweep_options(p, sample_seeds: int, out: str, kept_where: str) -> None:
    """The options sampler_sweep.py and autoguidance.py share: seeds, n, where results go, reuse, and the judge's."""
    p.add_argument("--sample-seeds", type=int, default=sample_seeds, help="sampling seeds 0..K-1 per setting")
    p.add_argument("--n-per-class", type=int, default=100, help="samples per digit (n = 10 x this)")
    p.add_argument("--out", type=Path, default=Path(out))
    p.add_argument("--reuse", action="store_true", help=f"take evaluations kept {kept_where}")
    add_judge_options(p)


def settle(args) -> None:
    """Fill the defaults that --quick changes, and check what argparse cannot."""
    quick = args.quick
    if args.data is not None:
        if not args.data.is_dir():
            raise SystemExit(f"recipe_ab.py: --data {args.data}: "
                             f"{'not a folder' if args.data.exists() else 'no such folder'}")
        if args.source != "auto" or args.data_dir is not None:
            raise SystemExit("recipe_ab.py: --source and --data-dir say where MNIST comes from; with --data the "
                             "pictures are the folder's")
    args.preset = args.preset or ("tiny" if quick else "images-cpu" if args.data is not None else "cpu")
    args.variants = dict(args.variant) if args.variant else dict(QUICK_VARIANTS) if quick else {"base": {}}
    if len(args.variants) != len(args.variant or args.variants):
        raise SystemExit("recipe_ab.py: two --variant options share a name")
    if args.steps is None:
        args.steps = 6 if quick else td.preset(args.preset).steps
    args.sample_seeds = args.sample_seeds or (1 if quick else 3)
    args.n_per_class = args.n_per_class or (2 if quick else 100)
    if quick:
        args.cost_warmup, args.cost_steps, args.cost_rounds = 1, 1, 1
    for name, low in (("steps", 1), ("train_seeds", 1), ("sample_seeds", 1), ("n_per_class", 2), ("cost_warmup", 0),
                      ("cost_steps", 1), ("cost_rounds", 1)):
        if getattr(args, name) < low:
            raise SystemExit(f"recipe_ab.py: --{name.replace('_', '-')} must be >= {low}, got {getattr(args, name)}")
    if args.costs is not None and set(args.costs) != set(args.variants):
        raise SystemExit(f"recipe_ab.py: --costs names {sorted(args.costs)}, the variants are {sorted(args.variants)}")
    unknown = sorted(set(args.only or ()) - set(args.variants))
    if unknown:
        raise SystemExit(f"recipe_ab.py: --only names {unknown}, which are not variants ({sorted(args.variants)})")
    if args.guidance == "kept" and not args.reuse:
        raise SystemExit("recipe_ab.py: --guidance kept reads the evaluations kept by earlier runs: add --reuse")


# ---------------------------------------------------------------------------------------------------------------
# configs, step costs, equal wall time
# ---------------------------------------------------------------------------------------------------------------

def variant_config(preset: str | TrainConfig, overrides: dict, steps: int, seed: int = 0) -> TrainConfig:
    """The preset (a name, or a config such as folder_config's) with ``overrides`` (U-Net fields under "unet"),
    ``steps`` and ``seed``; no checkpoints or previews during training (they would cost wall time that the step
    costs do not count)."""
    bad = {k: why for k, why in NOT_OVERRIDABLE.items() if k in overrides}
    if bad:
        raise ValueError("recipe_ab: a variant may not set " + "; ".join(f"{k} ({why})" for k, why in bad.items()))
    base = (preset if isinstance(preset, TrainConfig) else td.preset(preset)).to_dict()
    unet = {**base["unet"], **overrides.get("unet", {})}
    config = TrainConfig.from_dict({**base, **overrides, "unet": unet, "steps": steps, "seed": seed,
                                    "checkpoint_every": 0, "sample_every": 0})
    config.validate()
    return config


def folder_data(args):
    """The --data folder's pictures as examples/train_images.py reads them with its default options (at the preset's
    picture size, grey or colour as found); one that cannot be read, or a flat one, is refused in one line."""
    try:
        data = load_image_folder(args.data, picture_size(args.preset))
    except (OSError, ValueError) as e:   # load_image_folder's one-line reasons (module doc)
        raise SystemExit(f"recipe_ab.py: --data {args.data}: {e}") from None
    if not data.class_names:
        raise SystemExit(f"recipe_ab.py: --data {args.data} is a flat folder: the study needs one subfolder per class "
                         "(class-conditional networks, judged by a classifier of those classes)")
    return data


def folder_config(args, data) -> TrainConfig:
    """The preset's config for the folder's pictures, as examples/train_images.py builds a run's (its default
    options); the variants override it as they do a preset."""
    try:
        return picture_config(args.preset, data)
    except ValueError as e:   # the preset against the pictures (TrainConfig.validate), as train_images.py refuses it
        raise SystemExit(f"recipe_ab.py: --data {args.data} with the {args.preset} preset: {e}") from None


def measure_step_costs(configs: dict, data, warmup: int, steps: int, rounds: int) -> dict:
    """Seconds per training step of each config: the median over ``rounds`` of ``steps`` timed steps, the configs
    taking turns within each round after ``warmup`` untimed steps each. A loss read-back ends each timing (on a GPU
    it waits for the device)."""
    states = {name: td.new_state(cfg, data.images, data.labels, data_source=data.source)
              for name, cfg in configs.items()}
    for state in states.values():
        for _ in range(warmup):
            td.train_step(state)
        state.flush_losses()
    per_round = {name: [] for name in configs}
    for _ in range(rounds):
        for name, state in states.items():
            tic = time.perf_counter()
            for _ in range(steps):
                td.train_step(state)
            state.flush_losses()
            per_round[name].append((time.perf_counter() - tic) / steps)
    return {name: statistics.median(times) for name, times in per_round.items()}


def cost_neutral(overrides: dict) -> bool:
    """True when a variant changes only fields that leave a training step's work as it is (COST_NEUTRAL)."""
    return set(overrides) <= COST_NEUTRAL


def equal_time_steps(base_steps: int, costs_: dict, baseline: str) -> dict:
    """Steps of each variant at the baseline's wall time: base_steps * cost(baseline) / cost(variant), at least 1."""
    return {name: base_steps if name == baseline else max(1, int(round(base_steps * costs_[baseline] / cost)))
            for name, cost in costs_.items()}


# ---------------------------------------------------------------------------------------------------------------
# training and evaluation
# ---------------------------------------------------------------------------------------------------------------

def flat_fields(config: TrainConfig) -> dict:
    """The config's fields with the U-Net's as 'unet.NAME', so that a difference names the field."""
    d = config.to_dict()
    return {**{k: v for k, v in d.items() if k != "unet"}, **{f"unet.{k}": v for k, v in d["unet"].items()}}


def kept_run_differences(path: Path, config: TrainConfig) -> list | None:
    """How the checkpoint at ``path`` differs from a finished run of ``config``: [] when it is one (the same config up
    to the sampling fields, which change how a network is sampled, not what it learns: its previews draw from their
    own seed, and a variant's training writes none), else 'field: kept -> asked' lines; None when there is no
    checkpoint or it cannot be read."""
    if not path.is_file():
        return None
    try:
        ckpt = load_checkpoint(path)
        kept = TrainConfig.from_dict(ckpt.config["train"])
    except Exception as e:   # noqa: BLE001  anything unreadable is simply trained again
        print(f"{path}: not reused ({type(e).__name__}: {e})", flush=True)
        return None
    kept = flat_fields(replace(kept, **{name: getattr(config, name) for name in SAMPLING_ONLY}))
    asked = flat_fields(config)
    found = [f"{name}: {kept.get(name)!r} -> {asked[name]!r}" for name in asked if kept.get(name) != asked[name]]
    unfinished = ckpt.step != config.steps and kept["steps"] == asked["steps"]
    return found + ([f"trained to step {ckpt.step} of {config.steps}"] if unfinished else [])


def train_one(config: TrainConfig, data, out_dir: Path, reuse: bool, class_names=()) -> dict:
    """Train ``config`` from a fresh state into out_dir/checkpoint.npz; its wall time and last losses. ``class_names``
    (a folder's) are kept in the checkpoint, as train_images.py keeps them: evaluate.py and sample.py read them.
    With ``reuse`` a finished run of this config is kept, and a readable run of another config is refused rather
    than replaced: a changed preset or variant would otherwise retrain it and drop its kept evaluations."""
    path = out_dir / "checkpoint.npz"
    differences = kept_run_differences(path, config) if reuse else None
    if differences == []:
        print(f"{path}: reused (this config, step {config.steps})", flush=True)
        return {"checkpoint": str(path), "wall_s": None, "loss_last100": None, "reused": True}
    if differences:
        raise SystemExit(f"recipe_ab.py: --reuse: {path} is another run ({'; '.join(differences)}); training "
                         "here would replace it and its kept evaluations: pin those fields in the variant, or move it")
    for stale in out_dir.glob("evaluation_*.json"):        # measurements of the network this run replaces
        stale.unlink()
    state = td.new_state(config, data.images, data.labels, data_source=data.source, class_names=class_names)
    start = time.perf_counter()
    td.train(state, out_dir, progress=False, log_lines=20)
    wall = time.perf_counter() - start
    return {"checkpoint": str(path), "wall_s": round(wall, 2), "loss_last100": float(np.mean(state.losses[-100:])),
            "reused": False}


class Judge:
    """The evaluation classifier and the real pictures' features, shared by every evaluation: MNIST's classifier and
    test digits, or with ``folder`` (load_image_folder's, labelled) examples/evaluate.py --data FOLDER's classifier
    and the folder's pictures."""

    def __init__(self, args, n: int, train=None, folder=None):
        if folder is None:
            test = td.load_mnist("test", data_dir=args.data_dir, source=args.source)
            cache = Path(args.classifier_dir).expanduser() if args.classifier_dir else default_classifier_dir("mnist")
            # a classifier missing from the cache is trained on the train split of the same source (once, then cached)
            self.params, info = load_or_train_classifier(cache, epochs=args.classifier_epochs, data_dir=args.data_dir,
                                                         source=args.source, train_data=train, test_data=test)
            real, labels = test.images[:2 * n], test.labels[:2 * n]    # (<= 2n, 28, 28): the first test digits
            self.test_source, self.fid_name, self.class_count = test.source, "FID-MNIST", 10
        else:
            try:   # evaluate.py's cache of this folder's classifier (trained there once if missing)
                self.params, info = load_or_train_folder_classifier(folder, args.classifier_dir,
                                                                    epochs=args.classifier_epochs)
            except TooFewPictures as e:
                raise SystemExit(f"recipe_ab.py: --data {args.data}: {e}") from None
            # evaluate.py's real pictures at its --seed 0: a seeded random 2n, since a folder is read class by class
            picks = reference_picks(len(folder.images), 2 * n, seed=0)
            real, labels = folder.images[picks], folder.labels[picks]    # (<= 2n, C, H, W), (<= 2n,)
            self.test_source, self.fid_name = folder.source, "FID-folder"
            self.class_count = len(folder.class_names)
        self.test_accuracy = info.get("test_accuracy")
        reference = pixels_to_model_range(real)                         # (<= 2n, C, H, W) in [-1, 1]
        self.real_features = features(self.params, reference)          # (<= 2n, D)
        self.n_floor = min(n, len(reference) // 2)
        self.reference = self.real_features[:n]
        # the judge's reading of the real pictures the samples are compared with: a perfect generator's accuracy
        self.real_accuracy = conditional_accuracy(predict_proba(self.params, reference[:n]), labels[:n])

    def floor(self, seed: int) -> dict:
        """Real vs real: two disjoint random halves of the 2n real pictures (fewer when the data is small)."""
        return real_baseline(self.real_features, self.n_floor, seed=seed)

    def measure(self, x, requested) -> dict:
        q = sample_quality(features(self.params, x), self.reference, predict_proba(self.params, x), requested)
        return {k: float(q[k]) for k in METRICS}


def evaluate_one(checkpoint: str, judge: Judge, n_per_class: int, seed: int, guidance_interval,
                 guidance: float | None = None, sampling: TrainConfig | None = None) -> dict:
    """FID, precision, recall and accuracy of one checkpoint's samples (EMA weights) with the sampler of ``sampling``
    (a variant's config; None: the checkpoint's), at ``guidance`` (None: that config's scale) and
    ``guidance_interval`` (None: every step)."""
    params, config, schedule = td.load_for_sampling(checkpoint)
    config = config if sampling is None else sampling
    guidance = config.guidance if guidance is None else guidance
    start = time.perf_counter()
    x = td.sample_classes(params, config.unet, schedule, classes=range(judge.class_count), n_per_class=n_per_class,
                          sampler=config.sampler, steps=config.sample_steps, guidance=guidance,
                          prediction=config.prediction, seed=seed, guidance_interval=guidance_interval)
    x = td.to_numpy(x)
    seconds = time.perf_counter() - start
    requested = np.repeat(np.arange(judge.class_count), n_per_class)   # (n,) 0 0 .. 1 1 ..
    return {**judge.measure(x, requested), "guidance": guidance, "sample_seed": seed, "sample_s": round(seconds, 2)}


def evaluation_path(checkpoint: str, n_per_class: int, seed: int, guidance_interval, guidance: float,
                    class_count: int = 10) -> Path:
    """Where one evaluation of a checkpoint is kept, beside it: with --reuse a study split over processes (or
    repeated) measures each (network, n, guidance, interval, sampling seed) once."""
    interval = "all" if guidance_interval is None else f"{guidance_interval[0]}-{guidance_interval[1]}"
    n = class_count * n_per_class
    return Path(checkpoint).parent / f"evaluation_n{n}_g{guidance:g}_t{interval}_seed{seed}.json"


def kept_evaluations(checkpoint: str, n_per_class: int, guidance_interval, class_count: int = 10) -> dict:
    """{guidance: [sampling seeds]} of the evaluations kept beside a checkpoint at this n and interval."""
    found = {}
    pattern = evaluation_path(checkpoint, n_per_class, 0, guidance_interval, 0, class_count).name
    for path in Path(checkpoint).parent.glob(pattern.replace("_g0_", "_g*_").replace("_seed0", "_seed*")):
        e = json.loads(path.read_text())
        found.setdefault(float(e["guidance"]), []).append(int(e["sample_seed"]))
    return {g: sorted(seeds) for g, seeds in sorted(found.items())}


def evaluate_or_reuse(checkpoint: str, judge: Judge, n_per_class: int, seed: int, guidance_interval,
                      guidance: float, reuse: bool, sampling: TrainConfig | None = None) -> dict:
    """evaluate_one, or its kept result when ``reuse`` and it was measured by the same classifier."""
    path = evaluation_path(checkpoint, n_per_class, seed, guidance_interval, guidance, judge.class_count)
    kept = kept_evaluation(path, judge) if reuse else None
    if kept is not None:
        return kept
    e = evaluate_one(checkpoint, judge, n_per_class, seed, guidance_interval, guidance, sampling)
    keep_evaluation(path, e, judge)
    return e


def kept_evaluation(path: Path, judge: Judge) -> dict | None:
    """The evaluation kept at ``path`` (marked reused) when it was measured by this judge's classifier, else None."""
    if not path.is_file():
        return None
    kept = json.loads(path.read_text())
    return kept | {"reused": True} if kept.get("classifier_test_accuracy") == judge.test_accuracy else None


def keep_evaluation(path: Path, e: dict, judge: Judge) -> None:
    """Write ``e`` to ``path`` with the classifier that measured it, whole or not at all (a killed run leaves no half
    file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(e | {"classifier_test_accuracy": judge.test_accuracy}) + "\n")
    partial.replace(path)


# ---------------------------------------------------------------------------------------------------------------
# summary, verdicts, the table
# ---------------------------------------------------------------------------------------------------------------

def summarise(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
            "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "spread": float(v.max() - v.min()), "n": len(v)}


def verdict(variant_fid: dict, base_fid: dict) -> str:
    """'better', 'worse' or 'no difference (...)': the mean FIDs' difference against the larger spread (max - min);
    'undecided' when either side is a single evaluation."""
    if variant_fid["n"] < 2 or base_fid["n"] < 2:
        return "undecided (one evaluation: no spread to compare the difference with)"
    diff = variant_fid["mean"] - base_fid["mean"]
    if abs(diff) <= max(variant_fid["spread"], base_fid["spread"]):
        return "no difference (the difference is smaller than the spread)"
    return "better" if diff < 0 else "worse"


def span(summary: dict, fmt: str) -> str:
    """'mean (min-max)' of a summarise() dict."""
    return f"{summary['mean']:{fmt}} ({summary['min']:{fmt}}-{summary['max']:{fmt}})"


def metric_summaries(evaluations) -> dict:
    """summarise() of each metric (FID, precision, recall, accuracy) over a list of evaluations."""
    return {k: summarise([e[k] for e in evaluations]) for k in METRICS}


def metric_cells(s: dict, floor_fid: float) -> str:
    """A table row's measured cells: FID, precision, recall and accuracy as mean (min-max), then FID over the floor."""
    return (f"{span(s['fid'], '.2f')} | {span(s['precision'], '.3f')} | {span(s['recall'], '.3f')} | "
            f"{span(s['accuracy'], '.1%')} | {s['fid']['mean'] / floor_fid:.2f}x |")


def floor_over_seeds(judge: Judge, seeds: int) -> tuple:
    """(the real-vs-real floor at each sampling seed 0..seeds-1, their summary with n and the judge's accuracy on the
    real pictures), the summary also printed."""
    floors = [judge.floor(seed) for seed in range(seeds)]
    floor = {k: summarise([f[k] for f in floors]) for k in ("fid", "precision", "recall")}
    floor |= {"n": judge.n_floor, "real_accuracy": judge.real_accuracy}
    print(f"evaluation classifier test accuracy {judge.test_accuracy}; real-vs-real floor FID "
          f"{floor['fid']['mean']:.2f} (n = {judge.n_floor}){real_accuracy_words(floor)}", flush=True)
    return floors, floor


def floor_sentence(floor: dict) -> str:
    """'Real-vs-real floor: FID mean (min-max), accuracy of the real pictures ...' for a table's header."""
    f = floor["fid"]
    return f"Real-vs-real floor: FID {f['mean']:.2f} ({f['min']:.2f}-{f['max']:.2f}){real_accuracy_words(floor)}."


def settings_table(heading: str, floor: dict, setting_heads: list, rows: list) -> str:
    """A sweep's Markdown: ``heading`` and the floor, then a row per setting, its own cells (``rows``: (cells,
    metric summaries) pairs, one cell per name in ``setting_heads``) before the measured ones."""
    lines = [f"{heading} {floor_sentence(floor)}", "",
             "| " + " | ".join(setting_heads) + " | FID-MNIST | precision | recall | accuracy | FID / floor |",
             "|" + "---:|" * (len(setting_heads) + 5)]
    lines += ["| " + " | ".join(cells) + " | " + metric_cells(summary, floor["fid"]["mean"]) for cells, summary in rows]
    return "\n".join(lines)


def write_study(out: Path, stem: str, text: str, dump: dict) -> None:
    """Print a study's table and keep it as OUT/STEM.md, every number (``dump``) as OUT/STEM.json."""
    print(text, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(text + "\n")
    (out / f"{stem}.json").write_text(json.dumps(dump, indent=1, default=str) + "\n")


def table(results: dict, floor: dict, baseline: str, n: int, seeds: str, fid_name: str = "FID-MNIST",
          data: str | None = None) -> str:
    """One row per (variant, guidance scale); the verdicts compare each variant with the baseline at the same scale.
    ``fid_name``: the FID's name (the classifier's data); ``data``: the folder of pictures, said first when given."""
    f = floor["fid"]
    where = [] if data is None else [f"Data: the folder {data} ({fid_name}, precision, recall and accuracy in the "
                                     "features of its classifier, as examples/evaluate.py --data measures).", ""]
    lines = [*where,
             f"Equal wall time; n = {n} samples per evaluation; {seeds}; mean (min-max) over all (training seed, "
             f"sampling seed) pairs. Real-vs-real floor (n = {floor['n']} vs {floor['n']}): FID {f['mean']:.2f} "
             f"({f['min']:.2f}-{f['max']:.2f}), precision {floor['precision']['mean']:.3f}, recall "
             f"{floor['recall']['mean']:.3f}{real_accuracy_words(floor)}.", "",
             f"| variant | steps | s/step | guidance | evaluations | {fid_name} | precision | recall | accuracy | "
             "FID / floor |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        where = "" if r.get("guidance_interval") is None else " (t {}-{})".format(*r["guidance_interval"])
        for g, s in r["summaries"].items():
            lines.append(f"| {name} | {r['steps']} | {r['cost_s']:.4f} | {g}{where} | {s['fid']['n']} | "
                         + metric_cells(s, f["mean"]))
    lines.append("")
    for name, r in results.items():
        for g, said in r.get("verdicts", {}).items():
            v, b = r["summaries"][g]["fid"], results[baseline]["summaries"][g]["fid"]
            lines.append(f"- {name} vs {baseline} at guidance {g}: {said} (FID {v['mean']:.2f} against "
                         f"{b['mean']:.2f}; spreads {v['spread']:.2f} and {b['spread']:.2f})")
        if "own_verdict" in r:
            base = results[baseline]
            v, b = r["summaries"][str(r["guidance"])], base["summaries"][str(base["guidance"])]
            lines.append(f"- {name} at its own {describe_guidance(r['guidance'], r['guidance_interval'])} vs "
                         f"{baseline} at its {describe_guidance(base['guidance'], base['guidance_interval'])}: "
                         f"{r['own_verdict']} (FID {v['fid']['mean']:.2f} against {b['fid']['mean']:.2f}; spreads "
                         f"{v['fid']['spread']:.2f} and {b['fid']['spread']:.2f}; accuracy {v['accuracy']['mean']:.1%} "
                         f"and {b['accuracy']['mean']:.1%})")
    return "\n".join(lines)


def real_accuracy_words(floor: dict) -> str:
    """', accuracy of the real pictures 98.8%' when the floor holds the judge's reading of them ('' if not)."""
    return f", accuracy of the real pictures {floor['real_accuracy']:.1%}" if "real_accuracy" in floor else ""


def plot_tradeoff(lines: dict, floor_fid: float, path: Path, title: str, n: int, fid_name: str = "FID-MNIST",
                  item: str = "digit", real_accuracy: float | None = None) -> None:
    """FID against accuracy: for each {label: [(guidance, summaries of one setting)]} a line through its guidance
    scales, each point labelled with its scale, with the min-max over seeds as error bars. Guidance moves a network
    along its line (more accuracy, more FID), so one setting beats another when its line lies below the other's
    at the same accuracy, not when one point is lower. ``fid_name``: the FID's name; ``item``: what a class is;
    ``real_accuracy``: the judge's reading of the real pictures, drawn as the point a perfect generator would reach
    (the floor's FID at that accuracy)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for label, points in lines.items():
        points = sorted(points, key=lambda p: p[0])
        acc = np.array([100 * s["accuracy"]["mean"] for _, s in points])
        fid = np.array([s["fid"]["mean"] for _, s in points])
        acc_err = np.array([[100 * (s["accuracy"]["mean"] - s["accuracy"]["min"]),
                             100 * (s["accuracy"]["max"] - s["accuracy"]["mean"])] for _, s in points]).T
        fid_err = np.array([[s["fid"]["mean"] - s["fid"]["min"], s["fid"]["max"] - s["fid"]["mean"]]
                            for _, s in points]).T
        ax.errorbar(acc, fid, xerr=acc_err, yerr=fid_err, fmt="o-", capsize=2, label=label)
        for (g, _), a, f in zip(points, acc, fid):
            ax.annotate(f"{g:g}", (a, f), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(floor_fid, color="gray", ls="--", label=f"real vs real (n = {n})")
    if real_accuracy is not None:
        ax.plot([100 * real_accuracy], [floor_fid], "k*", ms=12, label="real pictures (a perfect generator)")
    ax.set_xlabel(f"accuracy: share read as the {item} asked for (%)")
    ax.set_ylabel(f"{fid_name} (lower is better)")
    ax.set_title(f"{title}\nmean and min-max over seeds; labels: guidance scale", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, format="png")


# ---------------------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    settle(args)
    names = list(args.variants)
    baseline = names[0]
    folder = None if args.data is None else folder_data(args)   # refused in one line before any work
    print(blas_description(), flush=True)
    if folder is None:
        data, base = td.load_mnist("train", data_dir=args.data_dir, source=args.source), args.preset
        print(f"train data: {data.source} ({len(data.images)} digits); preset {args.preset}; variants {names} "
              f"(baseline {baseline})", flush=True)
    else:
        data, base = folder, folder_config(args, folder)
        u = base.unet
        print(f"train data: {data.source}; preset {args.preset} at {u.image_channels}x{u.image_size}x{u.image_size}, "
              f"{u.num_classes} classes; variants {names} (baseline {baseline})", flush=True)
    configs = {name: variant_config(base, o, args.steps) for name, o in args.variants.items()}
    too_large = {name: c.batch_size for name, c in configs.items() if c.batch_size > len(data.images)}
    if folder is not None and too_large:   # as train_images.py refuses it: before any step, not in new_state later
        raise SystemExit(f"recipe_ab.py: --data {args.data}: {len(data.images)} usable pictures, fewer than the batch "
                         f"size of {too_large}")
    intervals = {name: None if args.guidance_interval == "all" else args.guidance_interval or c.guidance_interval
                 for name, c in configs.items()}   # where each variant is guided when sampled

    if args.costs is not None:
        step_costs, how = dict(args.costs), "given (--costs)"
    else:
        timed = [n for n in names if n == baseline or args.time_all or not cost_neutral(args.variants[n])]
        step_costs = measure_step_costs({n: configs[n] for n in timed}, data, args.cost_warmup, args.cost_steps,
                                        args.cost_rounds)
        how = (f"measured: {args.cost_warmup} warm-up steps, then median of {args.cost_rounds} rounds of "
               f"{args.cost_steps} steps, variants alternating")
        untimed = [n for n in names if n not in timed]
        if untimed:
            how += f"; {', '.join(untimed)}: same work per step as {baseline} (cost-neutral fields only), not timed"
        step_costs = {n: step_costs[n if n in timed else baseline] for n in names}
    steps = equal_time_steps(args.steps, step_costs, baseline)
    print(f"step costs ({how}):", flush=True)
    for name in names:
        print(f"  {name}: {step_costs[name]:.4f} s/step ({step_costs[name] / step_costs[baseline]:.3f}x) -> "
              f"{steps[name]} steps", flush=True)

    print("as --costs: " + ",".join(f"{name}={step_costs[name]:.6g}" for name in names), flush=True)
    if args.costs_only:
        return 0

    chosen = [name for name in names if name in (args.only or names)]
    results = {}
    for name in chosen:
        runs = []
        for seed in range(args.train_seeds):
            config = variant_config(base, args.variants[name], steps[name], seed=seed)
            print(f"training {name}, seed {seed}: {steps[name]} steps", flush=True)
            out_dir = args.out / name / f"seed{seed}"
            classes = () if folder is None else folder.class_names
            runs.append({"train_seed": seed, **train_one(config, data, out_dir, args.reuse, class_names=classes)})
        results[name] = {"overrides": args.variants[name], "cost_s": step_costs[name], "steps": steps[name],
                         "config": configs[name].to_dict() | {"steps": steps[name]}, "runs": runs,
                         "guidance": float(configs[name].guidance), "guidance_interval": intervals[name]}
    if args.train_only:
        return 0

    n = (10 if folder is None else len(folder.class_names)) * args.n_per_class
    judge = Judge(args, n, train=data) if folder is None else Judge(args, n, folder=folder)
    floors, floor = floor_over_seeds(judge, args.sample_seeds)
    for name in chosen:
        for run in results[name]["runs"]:
            run["evaluations"] = []
            if args.guidance == "kept":
                plan = kept_evaluations(run["checkpoint"], args.n_per_class, intervals[name], judge.class_count)
            else:
                plan = {float(g): range(args.sample_seeds) for g in args.guidance or [configs[name].guidance]}
            for g, seeds_ in plan.items():
                for seed in seeds_:
                    e = evaluate_or_reuse(run["checkpoint"], judge, args.n_per_class, seed, intervals[name], g,
                                          args.reuse, sampling=configs[name])
                    run["evaluations"].append(e)
                    took = "kept from an earlier run" if e.get("reused") else f"{e['sample_s']:.0f} s"
                    print(f"{name} train seed {run['train_seed']} guidance {g} sample seed {seed}: FID "
                          f"{e['fid']:.2f}, precision {e['precision']:.3f}, recall {e['recall']:.3f}, accuracy "
                          f"{e['accuracy']:.3f} ({took})", flush=True)
        every = [e for run in results[name]["runs"] for e in run["evaluations"]]
        measured = sorted({e["guidance"] for e in every})
        results[name]["summaries"] = {str(g): metric_summaries([e for e in every if e["guidance"] == g])
                                      for g in measured}
    if baseline in results:
        base = results[baseline]["summaries"]
        for name in chosen:
            if name == baseline:
                continue
            mine = results[name]["summaries"]
            results[name]["verdicts"] = {g: verdict(s["fid"], base[g]["fid"]) for g, s in mine.items()
                                         if g in base and intervals[name] == intervals[baseline]}
            own, base_own = str(float(configs[name].guidance)), str(float(configs[baseline].guidance))
            if (own, intervals[name]) != (base_own, intervals[baseline]) and own in mine and base_own in base:
                # each at its own sampling settings, as a user of either recipe would sample
                results[name]["own_verdict"] = verdict(mine[own]["fid"], base[base_own]["fid"])

    seeds = f"training seeds 0-{args.train_seeds - 1}, sampling seeds 0-{args.sample_seeds - 1}"
    text = table(results, floor, baseline, n, seeds, judge.fid_name, None if folder is None else str(args.data))
    dump = {"command": sys.argv if argv is None else ["recipe_ab.py", *argv], "blas": blas_description(),
            "preset": args.preset, "baseline": baseline, "baseline_steps": args.steps, "cost_measurement": how,
            "costs": step_costs, "steps": steps, "n": n, "n_per_class": args.n_per_class,
            "train_seeds": args.train_seeds, "sample_seeds": args.sample_seeds, "guidance": args.guidance,
            "guidance_interval": args.guidance_interval, "train_data": data.source, "test_data": judge.test_source,
            "classifier_test_accuracy": judge.test_accuracy, "floor": floor, "floors": floors, "variants": results}
    if folder is not None:   # what was measured, and on what (MNIST's JSON stays as it was)
        dump |= {"data": str(args.data), "fid_name": judge.fid_name, "class_names": folder.class_names}
    write_study(args.out, "recipe_ab", text, dump)
    lines = {name: [(float(g), s) for g, s in r["summaries"].items()] for name, r in results.items()}
    on = "" if folder is None else f" on {args.data}"
    plot_tradeoff(lines, floor["fid"]["mean"], args.out / "recipe_ab.png", f"{args.preset} variants at equal wall "
                  f"time{on}, {seeds}", n, judge.fid_name, "digit" if folder is None else "class", judge.real_accuracy)
    print(f"wrote {args.out / 'recipe_ab.md'}, {args.out / 'recipe_ab.json'} and {args.out / 'recipe_ab.png'}",
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
