"""The example scripts' errors, driven as a user drives them: in a subprocess, read from stderr.

The rule (examples/_cli.py): what a user can cause and fix ends in one line on stderr naming the argument or
file, exit status 2, before any work; nothing is half-written. A run whose numbers go non-finite ends in one
line and status 1 and keeps the last good checkpoint. A bug of ours keeps its traceback.

The refusals run side by side in two worker threads (each is a fresh Python, about half a second) the first
time one of them is asked for; the runs that train or inject a fault run in their own test.
"""
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from helpers import synthetic_digits
from tinyddpm import new_state, preset, set_device, train
from tinyddpm.backend import get_device
from tinyddpm.training.resume import CHECKPOINT_NAME
from tinyddpm.checkpoint import load_checkpoint, save_checkpoint
from tinyddpm.checkpoint import _HOST
from tinyddpm.classifiers.judge import ClassifierConfig, init_params
from tinyddpm.data import FILES, write_idx

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DEVICE = get_device()
try:
    import cupy  # noqa: F401
    HAVE_CUPY = True
except ImportError:
    HAVE_CUPY = False

# Runs a script with a fault planted first (TINYDDPM_TEST_FAULT names it, FAULT_PATH is where it applies):
# what a full disk, a read-only folder or a bug of ours looks like from the outside.
FAULTS = r"""
import errno, os, runpy, shutil, sys
from collections import namedtuple
fault, where = os.environ["TINYDDPM_TEST_FAULT"], os.environ.get("FAULT_PATH", "")
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
if fault in ("enospc-at-second-save", "erofs-at-first-save"):
    import numpy
    real_savez, saves = numpy.savez, []
    def savez(f, **arrays):
        saves.append(1)
        code = errno.ENOSPC if fault.startswith("enospc") else errno.EROFS
        if len(saves) == (2 if code == errno.ENOSPC else 1):
            f.write(b"PK\x03\x04 the first bytes")
            raise OSError(code, os.strerror(code))          # as write() reports it: no file name
        return real_savez(f, **arrays)
    numpy.savez = savez
elif fault == "read-only-out":
    real_access = os.access
    os.access = lambda path, mode, **kw: False if str(path).startswith(where) else real_access(path, mode, **kw)
elif fault == "small-disk":
    Usage = namedtuple("Usage", "total used free")
    shutil.disk_usage = lambda path: Usage(10**12, 10**12 - 1000, 1000)
elif fault == "bug-in-a-step":
    import tinyddpm.training.loop
    def step(state, dp=None):
        raise ValueError("a bug of ours")
    tinyddpm.training.loop.train_step = step
elif fault == "nan-samples":
    import tinyddpm.sampling
    tinyddpm.sampling.unet_model = lambda params, config: (lambda x, t, labels: x * float("nan"))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_script(name, *args, cwd, fault=None, env=None):
    """examples/<name>.py with ``args`` in a fresh Python (with ``fault`` planted first); the CompletedProcess."""
    ours = {k: v for k, v in os.environ.items() if k != "TINYDDPM_DEBUG"}   # a case may set it: env below
    env = dict(ours, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
    script = [str(EXAMPLES / f"{name}.py"), *map(str, args)]
    if fault is not None:
        env["TINYDDPM_TEST_FAULT"] = fault
        script = ["-c", FAULTS, *script]
    return subprocess.run([sys.executable, *script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def assert_one_line(done, status, *fragments):
    """Exit ``status``, stderr exactly one line holding every fragment, no traceback."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == status, (done.returncode, done.stderr)
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(autouse=True)
def keep_device():
    yield
    set_device(DEVICE)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace: synthetic IDX data (good and corrupt), a tiny trained checkpoint and bad ones, a classifier."""
    root = tmp_path_factory.mktemp("cli")
    (root / "idx").mkdir()
    for split, seed in (("train", 0), ("test", 1)):
        images, labels = synthetic_digits(48, seed)
        write_idx(root / "idx" / FILES[split][0], images)
        write_idx(root / "idx" / FILES[split][1], labels)
    (root / "bad_idx").mkdir()
    for split in ("train", "test"):
        for name in FILES[split]:
            raw = (root / "idx" / name).read_bytes()
            (root / "bad_idx" / name).write_bytes(raw[: len(raw) // 2])      # truncated
    images, labels = synthetic_digits(48, 0)
    train(new_state(preset("tiny", sample_every=0), images, labels.astype(np.int64)), root / "run", progress=False)
    ckpt = load_checkpoint(root / "run" / CHECKPOINT_NAME)
    ema = dict(ckpt.ema, **{"avg/conv_in.w": ckpt.ema["avg/conv_in.w"] * np.nan})
    save_checkpoint(root / "nan_ema" / CHECKPOINT_NAME, config=ckpt.config, params=ckpt.params, ema=ema,
                    optimizer_state=ckpt.optimizer_state, step=ckpt.step, rng_state=ckpt.rng_state, extra=ckpt.extra)
    (root / "random.npz").write_bytes(np.random.default_rng(0).bytes(4000))
    (root / "a_file").write_text("a regular file, not a folder")
    (root / "ckpt_is_a_folder" / CHECKPOINT_NAME).mkdir(parents=True)     # OUT/checkpoint.npz in the way
    cfg = ClassifierConfig()
    save_checkpoint(root / "classifier" / "classifier.npz", params=init_params(cfg),
                    config={"kind": "tinyddpm.classifier", **asdict(cfg), "test_accuracy": 0.1})
    (root / "bad_classifier").mkdir()
    (root / "bad_classifier" / "classifier.npz").write_bytes(np.random.default_rng(1).bytes(3000))
    (root / "train_as_classifier").mkdir()
    (root / "train_as_classifier" / "classifier.npz").write_bytes((root / "run" / CHECKPOINT_NAME).read_bytes())
    return root


# --------------------------------------------------------------------------------------------
# refusals: (script, arguments, extra environment, what the one line must say); {ws} is the workspace
# --------------------------------------------------------------------------------------------

TRAIN = ("--preset", "tiny", "--data-dir", "{ws}/idx", "--source", "idx", "--out", "{ws}/out/{case}",
         "--no-progress")
SAMPLE = ("{ws}/run/checkpoint.npz", "--out", "{ws}/out/{case}", "--no-progress", "--device", "cpu")
EVALUATE = ("{ws}/run/checkpoint.npz", "--configs", "ddim:2", "--n-per-class", "2", "--data-dir", "{ws}/idx",
            "--source", "idx", "--classifier-dir", "{ws}/classifier", "--out", "{ws}/out/{case}", "--device", "cpu")

REFUSALS = {
    # train_mnist.py: every option, checked before anything is loaded
    "train --steps 0": ("train_mnist", TRAIN + ("--steps", "0"), {}, "argument --steps: must be an integer >= 1"),
    "train --batch-size 0": ("train_mnist", TRAIN + ("--batch-size", "0"), {}, "argument --batch-size: must be"),
    "train --lr nan": ("train_mnist", TRAIN + ("--lr", "nan"), {}, "argument --lr: must be a finite number"),
    "train --lr inf": ("train_mnist", TRAIN + ("--lr", "inf"), {}, "argument --lr: must be a finite number"),
    "train --lr 0": ("train_mnist", TRAIN + ("--lr", "0"), {}, "argument --lr: must be a number > 0"),
    "train --seed -1": ("train_mnist", TRAIN + ("--seed", "-1"), {}, "argument --seed: must be an integer >= 0"),
    "train --until 0": ("train_mnist", TRAIN + ("--until", "0"), {}, "argument --until: must be an integer >= 1"),
    "train --n-per-class -1": ("train_mnist", TRAIN + ("--n-per-class", "-1"), {},
                               "argument --n-per-class/--n-per-digit: must be an integer >= 1, got '-1'"),
    "train --n-per-digit 0": ("train_mnist", TRAIN + ("--n-per-digit", "0"), {},      # the older spelling, an alias
                              "argument --n-per-class/--n-per-digit: must be an integer >= 1, got '0'"),
    "train --sample-steps 0": ("train_mnist", TRAIN + ("--sample-steps", "0"), {}, "argument --sample-steps"),
    "train --sample-steps 1000": ("train_mnist", TRAIN + ("--sample-steps", "1000"), {},
                                  "--sample-steps 1000: dpm++2m takes at most 999 steps"),
    "train --guidance nan": ("train_mnist", TRAIN + ("--guidance", "nan"), {}, "argument --guidance: must be a finite"),
    "train --checkpoint-every -1": ("train_mnist", TRAIN + ("--checkpoint-every", "-1"), {},
                                    "argument --checkpoint-every"),
    "train --steps x": ("train_mnist", TRAIN + ("--steps", "x"), {}, "argument --steps: must be an integer, got 'x'"),
    "train --sampler euler": ("train_mnist", TRAIN + ("--sampler", "euler"), {}, "argument --sampler: invalid choice"),
    "train --batch-size too large": ("train_mnist", TRAIN + ("--batch-size", "49"), {},
                                     "--batch-size 49 is larger than the data set (48 images)"),
    "train --out under a file": ("train_mnist", TRAIN + ("--out", "{ws}/a_file/run"), {},
                                 "--out {ws}/a_file/run: not a folder ({ws}/a_file is a file)"),
    "train corrupt IDX": ("train_mnist", TRAIN + ("--data-dir", "{ws}/bad_idx"), {},
                          "cannot load the MNIST train split: {ws}/bad_idx/train-images-idx3-ubyte: truncated"),
    "train no IDX files": ("train_mnist", TRAIN + ("--data-dir", "{ws}/out"), {}, "lacks train-images-idx3-ubyte"),
    "train --resume --preset cpu": ("train_mnist", TRAIN + ("--resume", "{ws}/run/checkpoint.npz", "--preset", "cpu"),
                                    {}, "--preset cannot change on --resume"),
    "train --resume beyond --steps": ("train_mnist", ("--resume", "{ws}/run/checkpoint.npz", "--steps", "2",
                                                      *TRAIN[2:]), {},
                                      "cannot resume: {ws}/run/checkpoint.npz: is at step 4, beyond the requested "
                                      "total of 2 steps"),
    "train --resume --until before it": ("train_mnist", ("--resume", "{ws}/run/checkpoint.npz", "--steps", "8",
                                                         "--until", "3", *TRAIN[2:]), {},
                                         "--until 3: the checkpoint {ws}/run/checkpoint.npz is already at step 4"),
    "train --resume random bytes": ("train_mnist", ("--resume", "{ws}/random.npz", *TRAIN[2:]), {},
                                    "cannot resume: {ws}/random.npz: not a readable .npz checkpoint (4000 bytes, "
                                    "not a zip archive"),
    "train --resume NaN weights": ("train_mnist", ("--resume", "{ws}/nan_ema/checkpoint.npz", *TRAIN[2:]), {},
                                   "the EMA weights 'conv_in.w' hold 72 NaN or infinite values"),
    "train --resume missing": ("train_mnist", ("--resume", "{ws}/nothing.npz", *TRAIN[2:]), {},
                               "cannot resume: load_checkpoint: no file at {ws}/nothing.npz"),
    # sample.py
    "sample --guidance nan": ("sample", SAMPLE + ("--guidance", "nan"), {}, "argument --guidance: must be a finite"),
    "sample --guidance inf": ("sample", SAMPLE + ("--guidance", "inf"), {}, "argument --guidance: must be a finite"),
    "sample NaN EMA weights": ("sample", ("{ws}/nan_ema/checkpoint.npz", *SAMPLE[1:]), {},
                               "{ws}/nan_ema/checkpoint.npz: the EMA weights 'conv_in.w' hold 72 NaN"),
    "sample --steps 1000 dpm++2m": ("sample", SAMPLE + ("--steps", "1000"), {},
                                    "--steps 1000: dpm++2m takes at most 999 steps on this checkpoint's T=1000"),
    "sample random bytes": ("sample", ("{ws}/random.npz", *SAMPLE[1:]), {},
                            "{ws}/random.npz: not a readable .npz checkpoint"),
    "sample missing checkpoint": ("sample", ("{ws}/nothing.npz", *SAMPLE[1:]), {}, "no file at {ws}/nothing.npz"),
    "sample --out under a file": ("sample", SAMPLE + ("--out", "{ws}/a_file/x"), {}, "--out {ws}/a_file/x: not a"),
    "sample --seed -1": ("sample", SAMPLE + ("--seed", "-1"), {}, "argument --seed: must be an integer >= 0"),
    "sample --n-per-class 0": ("sample", SAMPLE + ("--n-per-class", "0"), {}, "argument --n-per-class/--n-per-digit"),
    "sample --n-per-digit 0": ("sample", SAMPLE + ("--n-per-digit", "0"), {}, "argument --n-per-class/--n-per-digit"),
    "sample --digits 12": ("sample", SAMPLE + ("--digits", "3,12"), {}, "--digits must list digits 0..9"),
    # evaluate.py
    "evaluate corrupt classifier cache": ("evaluate", EVALUATE + ("--classifier-dir", "{ws}/bad_classifier"), {},
                                          "the classifier cache (--classifier-dir): {ws}/bad_classifier/classifier.npz:"
                                          " not a readable .npz checkpoint"),
    "evaluate wrong kind of cache": ("evaluate", EVALUATE + ("--classifier-dir", "{ws}/train_as_classifier"), {},
                                     "is not a classifier checkpoint (config kind 'tinyddpm.train'"),
    "evaluate corrupt test data": ("evaluate", EVALUATE + ("--data-dir", "{ws}/bad_idx"), {},
                                   "cannot load the MNIST test split: {ws}/bad_idx/t10k-images-idx3-ubyte: truncated"),
    "evaluate --guidance nan": ("evaluate", EVALUATE + ("--guidance", "1,nan"), {}, "argument --guidance: must be a"),
    "evaluate --configs dpm++2m:1000": ("evaluate", EVALUATE + ("--configs", "ddim:2,dpm++2m:1000"), {},
                                        "--configs dpm++2m:1000: dpm++2m takes at most 999 steps"),
    "evaluate --n-per-class 1": ("evaluate", EVALUATE + ("--n-per-class", "1"), {},
                                 "argument --n-per-class/--n-per-digit: must be an integer >= 2, got '1'"),
    "evaluate NaN EMA weights": ("evaluate", ("{ws}/nan_ema/checkpoint.npz", *EVALUATE[1:]), {},
                                 "the EMA weights 'conv_in.w' hold 72 NaN"),
    "evaluate TINYDDPM_DEVICE=tpu": ("evaluate", EVALUATE[:-2], {"TINYDDPM_DEVICE": "tpu"},
                                     "TINYDDPM_DEVICE='tpu': must be one of cpu, cuda"),
    # the environment, checked like the options before any work (tinyddpm/environment.py)
    "train TINYDDPM_SHARDS=abc": ("train_mnist", TRAIN, {"TINYDDPM_SHARDS": "abc"},      # was: a traceback after
                                  "TINYDDPM_SHARDS='abc': must be an integer >= 1"),     # the whole training run
    "train TINYDDPM_SHARDS=0": ("train_mnist", TRAIN, {"TINYDDPM_SHARDS": "0"}, "TINYDDPM_SHARDS='0': must be"),
    "train TINYDDPM_DEVICE=tpu": ("train_mnist", TRAIN, {"TINYDDPM_DEVICE": "tpu"},
                                  "TINYDDPM_DEVICE='tpu': must be one of cpu, cuda"),
    "sample TINYDDPM_DEBUG=yes": ("sample", SAMPLE, {"TINYDDPM_DEBUG": "yes"}, "TINYDDPM_DEBUG='yes': must be 0 or 1"),
    "sample TINYDDPM_MALLOC=fast": ("sample", SAMPLE, {"TINYDDPM_MALLOC": "fast"},
                                    "TINYDDPM_MALLOC='fast': must be one of keep, system"),
    "evaluate TINYDDPM_CACHE blank": ("evaluate", EVALUATE, {"TINYDDPM_CACHE": " "},
                                      "TINYDDPM_CACHE=' ': must be a folder's path, not blank"),
    "train_images TINYDDPM_SHARD=2": ("train_images", ("--data", "{ws}/idx", "--out", "{ws}/out/{case}"),
                                      {"TINYDDPM_SHARD": "2"}, "TINYDDPM_SHARD: not a tinyddpm variable; did you "
                                                               "mean TINYDDPM_SHARDS?"),
    "export_images TINYDDPM_FUSED_KERNELS=no": ("export_images", ("--out", "{ws}/out/{case}"),
                                                {"TINYDDPM_FUSED_KERNELS": "no"}, "TINYDDPM_FUSED_KERNELS='no'"),
    # paths
    "train --out empty": ("train_mnist", TRAIN + ("--out", ""), {}, "argument --out: must name a folder, got ''"),
    "train --out blank": ("train_mnist", TRAIN + ("--out", "  "), {}, "argument --out: must name a folder, got '  '"),
    "sample --out empty": ("sample", SAMPLE + ("--out", ""), {}, "argument --out: must name a folder, got ''"),
    "evaluate --out blank": ("evaluate", EVALUATE + ("--out", " "), {}, "argument --out: must name a folder"),
    "train_images --out empty": ("train_images", ("--data", "{ws}/idx", "--out", ""), {},
                                 "argument --out: must name a folder"),
    "export_images --out empty": ("export_images", ("--out", ""), {}, "argument --out: must name a folder"),
    "train OUT/checkpoint.npz a folder": ("train_mnist", TRAIN + ("--out", "{ws}/ckpt_is_a_folder"), {},
                                          "--out {ws}/ckpt_is_a_folder: {ws}/ckpt_is_a_folder/checkpoint.npz is in "
                                          "the way: it exists and is not a regular file"),
}
if not HAVE_CUPY:   # the message, not two chained tracebacks
    REFUSALS["train --device cuda"] = ("train_mnist", TRAIN + ("--device", "cuda"), {},
                                       "--device cuda: tinyddpm: device 'cuda' needs CuPy")
    REFUSALS["sample --device cuda"] = ("sample", SAMPLE[:-2] + ("--device", "cuda"), {}, "--device cuda: tinyddpm")
    # TINYDDPM_DEVICE=cuda is honoured by every script (three of them once ran on the CPU instead, status 0)
    for name, args in (("train_mnist", TRAIN), ("sample", SAMPLE[:-2]), ("evaluate", EVALUATE[:-2]),
                       ("train_images", ("--data", "{ws}/idx", "--out", "{ws}/out/{case}"))):
        REFUSALS[f"{name} TINYDDPM_DEVICE=cuda"] = (name, args, {"TINYDDPM_DEVICE": "cuda"},
                                                    "TINYDDPM_DEVICE=cuda: tinyddpm: device 'cuda' needs CuPy")


@pytest.fixture(scope="module")
def refusals(ws):
    """Every case of REFUSALS run once, two at a time: {case: CompletedProcess}."""
    def one(case):
        name, args, env, _ = REFUSALS[case]
        args = [a.format(ws=ws, case=case.replace(" ", "_")) for a in args]
        return case, run_script(name, *args, cwd=ws, env=env)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, REFUSALS))


@pytest.mark.parametrize("case", REFUSALS)
def test_a_user_error_is_one_line_and_status_2_before_any_work(refusals, ws, case):
    name, _, _, message = REFUSALS[case]
    done = refusals[case]
    assert_one_line(done, 2, f"{name}.py: error: ", message.format(ws=ws))
    assert not (ws / "out" / case.replace(" ", "_")).exists()       # nothing written, not even the folder
    assert not (ws / "run" / "samples").exists() and not (ws / "run" / "evaluation").exists()


def test_debug_shows_the_traceback_too(ws, tmp_path):
    args = TRAIN + ("--data-dir", "{ws}/bad_idx")
    done = run_script("train_mnist", *[a.format(ws=ws, case="debug") for a in args], "--debug", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("train_mnist.py: error: cannot load the MNIST train split")


# --------------------------------------------------------------------------------------------
# disks, folders and bugs, planted in the script's process
# --------------------------------------------------------------------------------------------

def train_args(ws, out, *more):
    return [a.format(ws=ws, case="") for a in TRAIN[:-3]] + ["--out", str(out), "--no-progress", *more]


def test_a_full_disk_at_a_checkpoint_keeps_the_last_one(ws, tmp_path):
    out = tmp_path / "run"
    done = run_script("train_mnist", *train_args(ws, out, "--sample-every", "0"), cwd=tmp_path,
                      fault="enospc-at-second-save")
    assert_one_line(done, 2, f"{out / CHECKPOINT_NAME}: cannot write the checkpoint: No space left on device",
                    f"the last checkpoint is {out / CHECKPOINT_NAME} (step 2)")
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT_NAME]   # no temporary file, no pictures
    assert load_checkpoint(out / CHECKPOINT_NAME).step == 2


def test_a_read_only_folder_at_the_first_checkpoint(ws, tmp_path):
    out = tmp_path / "run"
    done = run_script("train_mnist", *train_args(ws, out, "--sample-every", "0"), cwd=tmp_path,
                      fault="erofs-at-first-save")
    assert_one_line(done, 2, f"{out / CHECKPOINT_NAME}: cannot write the checkpoint: Read-only file system",
                    "no checkpoint was written")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("fault, message", [("read-only-out", "--out {out}: cannot write in {parent}"),
                                            ("small-disk", "--out {out}: 0.0 MB free on its disk, the run needs")])
def test_an_unwritable_out_is_refused_before_training(ws, tmp_path, fault, message):
    parent = tmp_path / "ro"
    parent.mkdir()
    out = parent / "run"
    done = run_script("train_mnist", *train_args(ws, out), cwd=tmp_path, fault=fault, env={"FAULT_PATH": str(parent)})
    assert_one_line(done, 2, message.format(out=out, parent=parent))
    assert not out.exists()


def test_a_bug_of_ours_keeps_its_traceback(ws, tmp_path):
    done = run_script("train_mnist", *train_args(ws, tmp_path / "run"), cwd=tmp_path, fault="bug-in-a-step")
    assert done.returncode == 1 and "Traceback" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "ValueError: a bug of ours"


def test_samples_that_come_out_nan_are_not_drawn(ws, tmp_path):
    done = run_script("sample", ws / "run" / CHECKPOINT_NAME, "--out", tmp_path / "s", "--steps", "2", "--digits",
                      "1", "--n-per-digit", "1", "--no-progress", "--device", "cpu", cwd=tmp_path, fault="nan-samples")
    assert_one_line(done, 1, "sample.py: error: sample_classes: 784 of 784 sample values are NaN or infinite "
                              "(dpm++2m, 2 steps, guidance 2)")
    assert not (tmp_path / "s").exists() or list((tmp_path / "s").iterdir()) == []


def test_a_preview_that_comes_out_nan_stops_training(ws, tmp_path):
    out = tmp_path / "run"
    done = run_script("train_mnist", *train_args(ws, out), cwd=tmp_path, fault="nan-samples")
    assert_one_line(done, 1, "train_mnist.py: error: train: the preview at step 2: sample_classes: 7840 of 7840 "
                             "sample values are NaN or infinite",
                    f"the last checkpoint is {out / CHECKPOINT_NAME} (step 2)")
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT_NAME]   # the preview was not drawn


# --------------------------------------------------------------------------------------------
# runs that train
# --------------------------------------------------------------------------------------------

def test_a_nan_loss_stops_with_its_step_and_keeps_the_last_good_checkpoint(ws, tmp_path):
    out = tmp_path / "run"
    # the first update, at lr 1e20 / 2 (warmup), makes weights whose activations overflow float32 at step 2
    done = run_script("train_mnist", *train_args(ws, out, "--lr", "1e20", "--steps", "4", "--sample-every", "0",
                                                 "--checkpoint-every", "1", "--log-every", "1"), cwd=tmp_path)
    line = assert_one_line(done, 1, "train_mnist.py: error: train: the loss is ",
                           "stopped without saving these weights",
                           f"the last checkpoint is {out / CHECKPOINT_NAME} (step ")
    assert " at step 2 (config lr=1e+20" in line and f"{out / CHECKPOINT_NAME} (step 1)" in line
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    assert ckpt.step == 1 and all(np.isfinite(v).all() for v in ckpt.params.values())
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT_NAME]   # no loss curve, no samples


def test_the_next_run_removes_stale_temporaries_of_killed_writes(ws, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()                                                 # its id now names no process
    killed = out / f".{CHECKPOINT_NAME}.{child.pid}.{_HOST}.0badc0de.tmp"
    writing = out / f".{CHECKPOINT_NAME}.{os.getpid()}.{_HOST}.1234abcd.tmp"   # this test process: alive
    for path in (killed, writing):
        path.write_bytes(b"PK\x03\x04 half a checkpoint")
    done = run_script("train_mnist", *train_args(ws, out, "--until", "2", "--sample-every", "0"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not killed.exists() and writing.exists()
    assert "nan" not in done.stdout and "stopped at step 2 of 4" in done.stdout


@pytest.mark.parametrize("sig, status, what", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                               (signal.SIGINT, 130, "interrupted")])
def test_sigterm_or_ctrl_c_while_training_finishes_the_step_and_saves(ws, tmp_path, sig, status, what):
    """What a job scheduler does before it kills: SIGTERM. The step in progress finishes, the checkpoint is written
    (at that step: nothing lost), one line, 143. Ctrl-C does the same with 130."""
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1")
    env.pop("TINYDDPM_DEBUG", None)
    args = train_args(ws, out, "--steps", "100000", "--checkpoint-every", "1", "--sample-every", "0")
    child = subprocess.Popen([sys.executable, str(EXAMPLES / "train_mnist.py"), *args], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ckpt = out / CHECKPOINT_NAME
        while not ckpt.exists() and child.poll() is None:   # a checkpoint at step 1: training (and the handler) is on
            time.sleep(0.05)
        child.send_signal(sig)
        stdout, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    lines = stderr.strip().splitlines()
    assert child.returncode == status, (child.returncode, stderr)
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    step = load_checkpoint(ckpt).step
    assert lines[0] == f"{what} at step {step}: the step finished and {ckpt} was written (continue with --resume)"
    assert 1 <= step < 100000
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT_NAME]   # no temporary file, no final pictures


def test_the_device_option_wins_over_the_variable_and_the_script_says_which(ws, tmp_path):
    common = (ws / "run" / CHECKPOINT_NAME, "--steps", "2", "--digits", "1", "--n-per-digit", "1", "--no-progress")
    done = run_script("sample", *common, "--out", tmp_path / "a", "--device", "cpu", cwd=tmp_path,
                      env={"TINYDDPM_DEVICE": "cuda"})
    assert done.returncode == 0 and "device cpu (--device)" in done.stdout, done.stderr
    done = run_script("sample", *common, "--out", tmp_path / "b", cwd=tmp_path, env={"TINYDDPM_DEVICE": "cpu"})
    assert done.returncode == 0 and "device cpu (TINYDDPM_DEVICE)" in done.stdout, done.stderr


# --------------------------------------------------------------------------------------------
# the library names itself
# --------------------------------------------------------------------------------------------

def test_library_entry_points_name_themselves():
    from tinyddpm import make_rng, seed_everything
    from tinyddpm.data.batches import Batches
    from tinyddpm.evaluation.metrics import conditional_accuracy, inception_score, real_baseline

    cases = [(lambda: seed_everything(-1), "seed_everything: seed must be an integer >= 0, got -1"),
             (lambda: make_rng(-3), "make_rng: seed must be an integer >= 0, got -3"),
             (lambda: make_rng(1.5), "make_rng: seed must be an integer, got 1.5"),
             (lambda: Batches(np.zeros((0, 1, 4, 4)), None, 2), "Batches: batch_size 2 with drop_last=True leaves no"),
             (lambda: new_state(preset("tiny"), np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64)),
              "train: no images to train on"),
             (lambda: inception_score(np.zeros((0, 10))), "inception_score: probs must hold at least one row"),
             (lambda: conditional_accuracy(np.zeros((0, 10)), np.zeros(0)), "conditional_accuracy: probs must hold"),
             (lambda: real_baseline(np.ones((20, 4)), 5, seed=-1), "real_baseline: seed must be an integer >= 0"),
             (lambda: preset("tiny", guidance=float("nan")), "TrainConfig: guidance must be a finite number")]
    for call, message in cases:
        with pytest.raises(ValueError) as raised:
            call()
        assert str(raised.value).startswith(message), (str(raised.value), message)


def test_the_step_check_and_the_samplers_agree_on_the_most_steps():
    """DPM-Solver's default grid holds n + 1 timesteps (the calls and the clean end): at most T - 1 steps."""
    from tinyddpm.diffusion import SAMPLERS, make_schedule, max_steps, sample

    model = lambda x, t, labels: 0.1 * x   # noqa: E731
    for T in (50, 1000):
        schedule = make_schedule("linear", T)
        for method in SAMPLERS:
            most = max_steps(method, T)
            assert most == (T - 1 if method == "dpm++2m" else T)
            x = sample(model, schedule, (2, 1, 2, 2), method=method, num_steps=most, seed=0, progress=False)
            assert np.isfinite(x).all()
            if method != "ddpm":   # ddpm always takes T steps, whatever is asked
                with pytest.raises(ValueError, match=f"num_steps={most + 1} must be between 1 and "
                                                     f"(the schedule's T=)?{most}\\b"):
                    sample(model, schedule, (2, 1, 2, 2), method=method, num_steps=most + 1, progress=False)
