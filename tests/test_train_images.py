"""examples/train_images.py end to end on folders the tests make (grey and RGB, flat and by class), sample.py on
its checkpoints, exact resume with random flips, the flips themselves (Batches), and every bad input in one line.
Under mpiexec -n 2: tests/test_distributed.py, beside train_mnist.py's runs."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from helpers import load_example
from test_image_folder import make_pictures, picture
from tinyddpm import set_device
from tinyddpm.backend import get_device, to_numpy
from tinyddpm.data.batches import Batches
from tinyddpm.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DEVICE = get_device()
FAST = ["--preset", "tiny", "--device", DEVICE, "--no-progress"]


@pytest.fixture(autouse=True)
def keep_device():
    """A script's main() sets the global device; put back the one the test session uses."""
    yield
    set_device(DEVICE)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{(grey, labelled): folder} of 8 pictures each, labelled ones in two classes of 4."""
    root = tmp_path_factory.mktemp("pictures")
    return {(grey, labelled): make_pictures(root / f"{'grey' if grey else 'rgb'}_{'classes' if labelled else 'flat'}",
                                            classes=["moth", "leaf"] if labelled else None, n=4 if labelled else 8,
                                            grey=grey)
            for grey in (True, False) for labelled in (True, False)}


def train_images(*args):
    return load_example("train_images").main([str(a) for a in args])


@pytest.mark.parametrize("grey, labelled, size", [(True, False, 16), (True, True, 16), (False, False, 16),
                                                  (False, True, 32)],
                         ids=["grey-flat", "grey-classes", "rgb-flat", "rgb-classes"])
def test_a_four_step_run_then_sample(folders, tmp_path, capsys, grey, labelled, size):
    out = tmp_path / "run"
    assert train_images("--data", folders[grey, labelled], "--out", out, "--image-size", size, *FAST) == 0
    printed = capsys.readouterr().out
    for name in ("checkpoint.npz", "samples.png", "denoising.gif", "loss.png"):
        assert f"wrote {out / name}" in printed
    assert (out / "previews" / "step_000002.png").is_file() and not (out / "skipped_files.txt").exists()
    ckpt = load_checkpoint(out / "checkpoint.npz")
    unet = ckpt.config["train"]["unet"]
    assert ckpt.step == 4 and (unet["image_size"], unet["image_channels"]) == (size, 1 if grey else 3)
    assert unet["num_classes"] == (2 if labelled else None)
    assert ckpt.config["train"]["p_uncond"] == (0.1 if labelled else 0.0)
    assert ckpt.extra["class_names"] == (["leaf", "moth"] if labelled else [])
    with Image.open(out / "samples.png") as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
        colourful = np.abs(rgb[..., 0] - rgb[..., 1]).max() > 30          # pixels whose R and G differ: colour
        assert colourful != grey
    sample = load_example("sample")
    classes = ["--classes", "moth,0"] if labelled else []
    assert sample.main([str(out / "checkpoint.npz"), "--steps", "2", "--n-per-class", "2", "--out", str(tmp_path / "s"),
                        "--device", DEVICE, "--no-progress", *classes]) == 0
    assert f"sampled {4 if labelled else 20} images" in capsys.readouterr().out
    assert (tmp_path / "s" / "dpm++2m_2steps_g2_seed0.png").is_file()


def test_resume_continues_exactly_with_flips(folders, tmp_path, capsys):
    common = ["--data", folders[False, True], "--flip", "--sample-every", "0", "--image-size", 16, *FAST]
    assert train_images(*common, "--out", tmp_path / "whole") == 0
    assert train_images(*common, "--out", tmp_path / "parts", "--until", 2) == 0
    assert "stopped at step 2 of 4; continue with: python examples/train_images.py" in capsys.readouterr().out
    resume = ["--data", folders[False, True], "--out", tmp_path / "parts", "--resume", "--device", DEVICE, "--no-progress"]
    assert train_images(*resume) == 0
    a, b = (load_checkpoint(tmp_path / run / "checkpoint.npz") for run in ("whole", "parts"))
    assert a.extra["losses"] == b.extra["losses"] and len(a.extra["losses"]) == 4
    assert all(np.array_equal(to_numpy(a.params[k]), to_numpy(b.params[k])) for k in a.params)
    assert a.rng_state["batches"]["flip"] is True and b.extra["class_names"] == ["leaf", "moth"]
    if DEVICE == "cpu":   # and the flips take part: without them the same run learns otherwise
        assert train_images(*[c for c in common if c != "--flip"], "--out", tmp_path / "plain") == 0
        assert load_checkpoint(tmp_path / "plain" / "checkpoint.npz").extra["losses"] != a.extra["losses"]


@settings(max_examples=10, deadline=None)
@given(n=st.integers(2, 12), batch=st.integers(1, 4), seed=st.integers(0, 2**31 - 1), stop=st.integers(0, 9))
def test_flips_follow_the_seed_and_resume(n, batch, seed, stop):
    """Batch after batch, epoch e mirrors item i exactly when flips(e)[i]; a copy resumed from the state continues
    alike; flip=False gives the plain batches (the MNIST path)."""
    batch = min(batch, n)
    images = np.arange(n * 2 * 3, dtype=np.float64).reshape(n, 1, 2, 3)             # (N, C, H, W): rows differ
    labels = np.arange(n)
    flipped, plain = Batches(images, labels, batch, seed=seed, flip=True), Batches(images, labels, batch, seed=seed)
    for step in range(10):
        epoch = flipped.epoch
        (xf, yf), (xp, yp) = next(flipped), next(plain)
        np.testing.assert_array_equal(yf, yp)                                       # the same items in the same order
        np.testing.assert_array_equal(xp, images[yp])
        mirror = flipped.flips(epoch)[yf]
        np.testing.assert_array_equal(xf[mirror], images[yf[mirror]][..., ::-1])
        np.testing.assert_array_equal(xf[~mirror], images[yf[~mirror]])
        if step == stop:
            state = flipped.state_dict()
            resumed = Batches(images, labels, batch, seed=0)                         # flip and seed come from the state
            resumed.load_state_dict(state)
            tail = [next(resumed) for _ in range(3)]
            copy = Batches(images, labels, batch, seed=seed, flip=True)
            copy.load_state_dict(state)
            for x, y in tail:
                x2, y2 = next(copy)
                np.testing.assert_array_equal(x, x2)
                np.testing.assert_array_equal(y, y2)
    older = {k: v for k, v in plain.state_dict().items() if k != "flip"}              # saved before flips existed
    plain.load_state_dict(older)
    assert plain.flip is False
    assert 0 < sum(flipped.flips(e).sum() for e in range(20)) < 20 * n               # some mirrored, some not


def test_unreadable_files_are_listed_and_the_run_goes_on(folders, tmp_path, capsys):
    data = tmp_path / "data"
    make_pictures(data, n=8)
    (data / "broken.png").write_bytes(b"not a png")
    picture(5, 5).save(data / "speck.png")
    assert train_images("--data", data, "--out", tmp_path / "run", "--until", 1, "--sample-every", "0", *FAST) == 0
    printed = capsys.readouterr().out
    log = tmp_path / "run" / "skipped_files.txt"
    assert f"skipped 2 file(s) that could not be used; the list is in {log}" in printed
    header = load_example("train_images").SKIPPED_HEADER
    assert log.read_text() == (f"{header}\n"
                               f"{data / 'broken.png'}: not an image Pillow can read\n"
                               f"{data / 'speck.png'}: 5x5 px, smaller than 8 px on a side\n")


# --------------------------------------------------------------------------------------------
# bad input: one line, status 2
# --------------------------------------------------------------------------------------------

def bad_folder(root: Path, kind: str) -> Path:
    """A folder (or path) with one problem."""
    if kind == "missing":
        return root / "nowhere"
    root.mkdir(parents=True, exist_ok=True)
    if kind == "a file":
        picture(10, 10).save(root / "one.png")
        return root / "one.png"
    if kind == "empty":
        return root
    if kind == "text only":
        (root / "readme.txt").write_text("no pictures here")
    elif kind == "all corrupt":
        (root / "a.jpg").write_bytes(b"\xff\xd8\xff not really")
        (root / "b.webp").write_bytes(b"RIFF")
    elif kind == "too few":
        make_pictures(root, n=3)
    elif kind == "top and classes":
        make_pictures(root, classes=["a", "b"], n=4)
        picture(10, 10).save(root / "stray.jpg")
    return root


@pytest.mark.parametrize("kind, message", [
    ("missing", "--data: {path}: no such folder"),
    ("a file", "--data: {path}: not a folder (give the folder that holds the pictures)"),
    ("empty", "--data: {path}: the folder is empty"),
    ("text only", "--data: {path}: no image files (PNG, JPEG, BMP or WebP) at its top level or in its subfolders; "
                  "1 other file(s) ignored"),
    ("all corrupt", "--data: {path}: none of the 2 image file(s) could be read (first: {path}/a.jpg: "),
    ("too few", "--data {path}: 3 usable image(s), the tiny preset's batch is 8; add pictures or give a smaller "
                "--batch-size"),
    ("top and classes", "--data: {path}: holds 1 image(s) at its top level and class subfolders (a, b)"),
])
def test_bad_folders_in_one_line(tmp_path, capsys, kind, message):
    path = bad_folder(tmp_path / "data", kind)
    assert train_images("--data", path, "--out", tmp_path / "out", *FAST) == 2
    err = capsys.readouterr().err
    assert err.startswith("train_images.py: error: " + message.format(path=path)), err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_bad_options_in_one_line(folders, tmp_path, capsys):
    data = folders[False, True]
    cases = [
        (["--preset", "images-cpu", "--image-size", "30"], "--image-size 30: the images-cpu preset's U-Net halves the "
                                                           "pictures 2 time(s); use a multiple of 4"),
        (["--resume", str(tmp_path / "none.npz")], f"cannot resume: load_checkpoint: no file at {tmp_path / 'none.npz'}"),
        (["--resume", "--flip"], "--flip cannot change on --resume"),
        (["--resume", "--image-size", "16"], "--image-size cannot change on --resume"),
        (["--resume", "--preset", "tiny"], "--preset cannot change on --resume"),
    ]
    for extra, message in cases:
        common = FAST[2:] if "--resume" in extra else FAST
        assert train_images("--data", data, "--out", tmp_path / "out", *common, *extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith(f"train_images.py: error: {message}"), (extra, err)
        assert err.count("\n") == 1
    with pytest.raises(SystemExit) as done:
        train_images("--data", data, "--image-size", "4")
    assert done.value.code == 2 and "argument --image-size: must be an integer >= 8, got '4'" in capsys.readouterr().err


def test_resume_on_other_classes_and_sampling_a_flat_run_by_class(folders, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_images("--data", folders[True, True], "--out", out, "--until", 1, "--sample-every", "0", *FAST) == 0
    renamed = tmp_path / "renamed"
    make_pictures(renamed, classes=["leaf", "wing"], n=4, grey=True)
    capsys.readouterr()
    assert train_images("--data", renamed, "--out", out, "--resume", "--device", DEVICE, "--no-progress") == 2
    assert f"--data {renamed}: classes ['leaf', 'wing'], the checkpoint {out / 'checkpoint.npz'} was trained on " \
           "['leaf', 'moth']" in capsys.readouterr().err
    sample = load_example("sample")
    assert sample.main([str(out / "checkpoint.npz"), "--classes", "wing", "--device", DEVICE]) == 2
    assert "--classes 'wing': not a class of this checkpoint (leaf, moth; or an index 0..1)" in capsys.readouterr().err
    flat = tmp_path / "flat"
    assert train_images("--data", folders[True, False], "--out", flat, "--until", 1, "--sample-every", "0", *FAST) == 0
    assert sample.main([str(flat / "checkpoint.npz"), "--classes", "leaf", "--device", DEVICE]) == 2
    assert "--classes: this checkpoint draws without classes" in capsys.readouterr().err


def test_no_traceback_from_a_real_process(tmp_path):
    """As a user runs it: a folder of corrupt files ends in one line on stderr, status 2, and no traceback."""
    path = bad_folder(tmp_path / "data", "all corrupt")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "train_images.py"), "--data", str(path),
                           "--out", str(tmp_path / "out"), *FAST], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"train_images.py: error: --data: {path}: none of the 2 image file(s) could be read")

