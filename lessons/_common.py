"""What every lesson shares: where figures go, the fast mode the tests use, printed checks, a trained model.

A lesson imports this module first (``from _common import ...``; Python puts the lesson's own folder on
the path when it runs ``python lessons/NN_topic.py``).

    out = output_dir(__file__)          # lessons/output/NN_topic/, created; TINYDDPM_LESSON_OUT moves it
    if FAST: ...                        # --fast or TINYDDPM_LESSON_FAST=1: tiny sizes, same code paths
    check("closed form == iterated", err < 1e-12, f"max error {err:.1e}")   # prints, exits 1 if false
    try_this(__doc__)                   # prints the docstring's "Try this" section: the exercises
    params, config, schedule, where = trained_model()   # lessons 12-19 need a network that makes digits
    train_first_note(where)             # if that is the lessons' small network: how to get the better one
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from tinyddpm.environment import EnvironmentVariableError, check_all, read_or

LESSONS = Path(__file__).resolve().parent
REPO = LESSONS.parent


def _check_environment() -> None:
    """Every TINYDDPM_* variable (tinyddpm/environment.py), checked before the lesson does anything: a bad one is
    one line and exit status 2, as in the example scripts, rather than a traceback halfway through."""
    try:
        check_all()
    except EnvironmentVariableError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(2)


_check_environment()
FAST = "--fast" in sys.argv[1:] or read_or("TINYDDPM_LESSON_FAST", False)

# The network examples/train_mnist.py writes (its CPU preset, 4,500 steps, makes good digits in about 13 minutes:
# 12 min 34 s on an idle 2-core machine).
EXAMPLE_CHECKPOINT = REPO / "runs" / "mnist" / "checkpoint.npz"

_failures: list[str] = []


def output_root() -> Path:
    return read_or("TINYDDPM_LESSON_OUT", LESSONS / "output")


def output_dir(lesson_file) -> Path:
    """The folder for a lesson's figures, named after the lesson (lessons/output/01_noise_schedules/)."""
    path = output_root() / Path(lesson_file).stem
    path.mkdir(parents=True, exist_ok=True)
    return path


def banner(title: str) -> None:
    """The lesson's title, and a note when it runs in fast mode."""
    print(f"\n=== {title} ===" + ("   [fast mode: tiny sizes]" if FAST else ""))


def section(title: str) -> None:
    print(f"\n--- {title}")


def check(what: str, ok: bool, detail: str = "") -> bool:
    """Print one verified claim; a false one is remembered and makes ``finish`` exit with status 1."""
    print(f"  [{'ok' if ok else 'FAILED'}] {what}" + (f": {detail}" if detail else ""))
    if not ok:
        _failures.append(what)
    return bool(ok)


def saved(path) -> Path:
    """Announce a figure (or GIF) the lesson wrote."""
    path = Path(path)
    print(f"  figure: {path}")
    return path


def finish(started: float) -> None:
    """The lesson's last line: how long it took, and exit status 1 if any check failed."""
    seconds = time.perf_counter() - started
    if _failures:
        print(f"\n{len(_failures)} check(s) FAILED: {', '.join(_failures)}  ({seconds:.1f} s)")
        sys.exit(1)
    print(f"\nAll checks passed in {seconds:.1f} s.")


def relative_error(a, b) -> float:
    """max |a - b| / max(|a| + |b|), the single number the lessons print when comparing two arrays."""
    from tinyddpm.backend import to_numpy

    a = np.asarray(to_numpy(a), dtype=np.float64)
    b = np.asarray(to_numpy(b), dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a) + np.abs(b)), 1e-300))


def mnist(split: str = "train"):
    """The MNIST split a lesson reads: the real-digit subset shipped with tinyddpm in fast mode (5,000 train and
    1,000 test digits: nothing to install, nothing to download); otherwise the full MNIST where this machine has
    it (the sources of examples/train_mnist.py), else that subset, with a note."""
    from tinyddpm.data import DownloadError, FallbackUnavailable, load_mnist

    if FAST:
        return load_mnist(split, source="subset")
    try:
        return load_mnist(split)
    except (FallbackUnavailable, DownloadError) as e:
        print(f"  (no full MNIST here: {str(e).splitlines()[0][:160]}...; using the shipped subset instead)")
        return load_mnist(split, source="subset")


def mnist_digits(n: int, split: str = "train", seed: int = 0):
    """n MNIST digits as float32 (n, 1, 28, 28) in [-1, 1] and their labels (n,), a seeded random subset."""
    from tinyddpm.data.pixels import to_model_range

    data = mnist(split)
    pick = np.random.default_rng(seed).choice(len(data.labels), size=n, replace=False)
    return to_model_range(data.images[pick]), data.labels[pick]


# ---------------------------------------------------------------------------------------------------
# A network that makes digits, for the sampling lessons

LESSON_STEPS = 360       # ~55 s on 2 cores: rough digits, some still noise (examples/train_mnist.py: clean ones)
FAST_STEPS = 6           # fast mode: the pipeline runs, the digits are noise


def lesson_train_config():
    """A small class-conditional U-Net that learns rough digits in about a minute on 2 CPU cores.

    Most of a U-Net's time goes to its 28 x 28 level, so this one keeps that level narrow (8 channels) and
    puts its width lower down (16 and 32 channels at 14 x 14 and 7 x 7): 161k parameters, ~150 ms per step
    of 32 images. Min-SNR-5 loss weights (Hang et al. 2023) speed up early training. Measured at 400 steps
    (DPM-Solver++ 20 steps, 100 samples): 34% of digits read as the requested one at guidance 2.5, 21% at 1;
    the CPU preset of examples/train_mnist.py (about 13 minutes) reaches 99%. 360 steps keep lesson 15's first run,
    which may have to train this network and a classifier, under two minutes.
    """
    from tinyddpm.training.config import preset
    from tinyddpm.nn.unet import UNetConfig

    unet = UNetConfig(base_channels=8, channel_mults=(1, 2, 4), blocks_per_level=1, attention_resolutions=(),
                      heads=1, groups=4, dropout=0.0)
    steps = FAST_STEPS if FAST else LESSON_STEPS
    # guidance 2.25: the scale this network's lessons were written and measured at (the CPU preset's until it
    # trained longer and moved to 1.75)
    return preset("cpu", unet=unet, steps=steps, batch_size=32, lr=2e-3, warmup_steps=min(50, steps),
                  min_snr_gamma=5.0, ema_decay=0.99, log_every=min(10, steps), checkpoint_every=0, sample_every=0,
                  guidance=2.25)


def trained_model(prefer_example: bool = True):
    """(params, TrainConfig, Schedule, where) of a class-conditional network that makes digits.

    Uses the checkpoint examples/train_mnist.py writes when it exists (the best digits); otherwise trains
    the small network of ``lesson_train_config`` once (about a minute) and caches it in
    lessons/output/_model/, where the other lessons find it. Fast mode always trains its own tiny model;
    TINYDDPM_LESSON_MODEL=own skips the example's checkpoint (what a fresh install sees).
    """
    from tinyddpm import load_for_sampling, new_state, train
    from tinyddpm.training.resume import CHECKPOINT_NAME

    prefer_example = prefer_example and read_or("TINYDDPM_LESSON_MODEL", "example") != "own"
    if prefer_example and not FAST and EXAMPLE_CHECKPOINT.exists():
        params, config, schedule = load_for_sampling(EXAMPLE_CHECKPOINT)
        return params, config, schedule, f"{EXAMPLE_CHECKPOINT} (examples/train_mnist.py)"
    cache = output_root() / ("_model_fast" if FAST else "_model")
    path = cache / CHECKPOINT_NAME
    if not path.exists():
        config = lesson_train_config()
        print(f"  training a small lesson network ({config.steps} steps; cached in {cache}) ...")
        data = mnist("train")
        train(new_state(config, data.images, data.labels), cache, progress=not FAST)
    params, config, schedule = load_for_sampling(path)
    return params, config, schedule, f"{path} (the lessons' own {config.steps}-step network)"


def uses_small_network(where: str) -> bool:
    """True when ``trained_model`` fell back to the lessons' small network (its ``where`` names it so)."""
    return "lessons' own" in where


def train_first_note(where: str) -> None:
    """When a lesson had to use the lessons' small network, say plainly how to get the better one."""
    if not uses_small_network(where):
        return
    print("  NOTE: these digits come from the lessons' small network (about a minute of training): expect rough\n"
          "  digits and smudges. For clean ones, train the real network once, about 13 minutes on 2 CPU cores:\n"
          "      python examples/train_mnist.py\n"
          f"  It writes {EXAMPLE_CHECKPOINT.relative_to(REPO)}, which this lesson and lessons 08-19 then use.")


# ---------------------------------------------------------------------------------------------------
# A classifier that reads digits, for the lessons that measure samples

JUDGE_EPOCHS = 0.25      # ~8 s on 2 cores, 93.9% test accuracy; the evaluation classifier trains 2 epochs


def judge():
    """(classifier params, a sentence naming it) for reading generated digits (lessons 15 and 19).

    tinyddpm's evaluation classifier (tinyddpm.classifiers.judge, 2 epochs, cached in ~/.cache/tinyddpm/classifier by
    examples/evaluate.py) when it exists. Otherwise a lighter one trained here for a quarter of an epoch and cached in
    lessons/output/_judge/ (it stays out of the evaluation cache, whose numbers must not change). Fast mode
    trains a stand-in on 1,000 digits for a few steps: the pipeline runs, its readings mean little.
    """
    from tinyddpm.backend import to_numpy
    from tinyddpm.classifiers.judge import (CHECKPOINT_NAME, accuracy, default_cache_dir, load_or_train_classifier,
        train_classifier)
    from tinyddpm.checkpoint import load_checkpoint, save_checkpoint

    if (default_cache_dir() / CHECKPOINT_NAME).exists():
        params, info = load_or_train_classifier(verbose=False)
        return params, f"tinyddpm's evaluation classifier ({info['test_accuracy']:.2%} test accuracy)"
    if FAST:
        images, labels = mnist_digits(1000, seed=1)
        params, _ = train_classifier(images, labels, epochs=1, verbose=False)
        return params, "a stand-in classifier trained on 1,000 digits for 7 steps (fast mode)"
    path = output_root() / "_judge" / "judge.npz"
    if path.exists():
        ckpt = load_checkpoint(path)
        return ckpt.params, str(ckpt.config["note"])
    print(f"  training the lessons' classifier ({JUDGE_EPOCHS} epoch of MNIST; cached in {path.parent}) ...")
    from tinyddpm.data.pixels import to_model_range

    train_set, test_set = mnist("train"), mnist("test")
    params, _ = train_classifier(to_model_range(train_set.images), train_set.labels, epochs=JUDGE_EPOCHS,
                                 verbose=False)
    acc = accuracy(params, to_model_range(test_set.images), test_set.labels)
    note = f"the lessons' classifier ({JUDGE_EPOCHS} epoch, {acc:.2%} test accuracy)"
    save_checkpoint(path, config={"kind": "lessons.judge", "note": note},
                    params={k: to_numpy(v) for k, v in params.items()})
    return params, note


def try_this(doc: str) -> None:
    """Print the exercises: the "Try this" section at the end of the lesson's docstring (written once, there)."""
    print("\n" + doc[doc.index("Try this"):].rstrip())
