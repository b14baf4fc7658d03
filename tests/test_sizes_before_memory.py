"""Sizes before memory (issue 26, item 3): an option that sets how many images are drawn is checked against the
machine's available memory up front: one line with the numbers, exit 2; for train_mnist.py before training."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyddpm.data.mnist import FILES, write_idx
from tinyddpm.training.config import preset
from tinyddpm.training.resume import save_state
from tinyddpm.training.state import new_state

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
from _cli import sampling_bytes  # noqa: E402


def run(script, *args):
    return subprocess.run([sys.executable, str(REPO / "examples" / script), *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=REPO)


def test_sample_refuses_more_images_than_memory_in_one_line(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (16, 28, 28), dtype=np.uint8)
    path = tmp_path / "checkpoint.npz"
    save_state(new_state(preset("tiny"), images, np.arange(16) % 10), path)
    done = run("sample.py", path, "--n-per-digit", 10_000_000, "--device", "cpu", "--no-progress")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("sample.py: error: --n-per-class 10000000: sampling 100,000,000 images of 1x28x28 "
                               "needs about "), lines[0]
    assert " TB of memory, this machine has " in lines[0] and lines[0].endswith("available; ask for fewer")
    assert not (tmp_path / "samples").exists() or not any((tmp_path / "samples").iterdir())


def test_train_mnist_refuses_the_final_samples_before_training(tmp_path):
    for split in ("train", "test"):
        write_idx(tmp_path / FILES[split][0], np.zeros((16, 28, 28), np.uint8))
        write_idx(tmp_path / FILES[split][1], (np.arange(16) % 10).astype(np.uint8))
    out = tmp_path / "run"
    done = run("train_mnist.py", "--preset", "tiny", "--out", out, "--data-dir", tmp_path, "--source", "idx",
               "--device", "cpu", "--no-progress", "--n-per-class", 10_000_000)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr + done.stdout[-2000:]
    assert "--n-per-class 10000000: sampling 100,000,000 images" in lines[0], lines[0]
    assert not (out / "checkpoint.npz").exists()   # refused before the first step


@pytest.mark.parametrize("name", ["tiny", "cpu", "gpu", "images-cpu"])
def test_the_defaults_stay_well_inside_a_small_machine(name):
    config = preset(name)
    rows = config.unet.num_classes or 10
    assert sampling_bytes(config.unet, rows * 8, frames=30) < 2e9          # sample.py's default --n-per-class 8
    assert sampling_bytes(config.unet, rows * config.final_per_class) < 2e9


# ----------------------------------------------------------------------------- batch sizes, image sizes, evaluate

def tiny_idx(folder: Path) -> Path:
    for split in ("train", "test"):
        write_idx(folder / FILES[split][0], np.zeros((16, 28, 28), np.uint8))
        write_idx(folder / FILES[split][1], (np.arange(16) % 10).astype(np.uint8))
    return folder


def test_a_training_step_that_does_not_fit_is_refused_before_training(tmp_path, monkeypatch, capsys):
    """train_mnist.py: --batch-size against the memory, one line, exit 2, before the first step."""
    import tinyddpm.checks as checks
    from helpers import load_example

    monkeypatch.setattr(checks, "available_bytes", lambda: 1_000_000)     # a machine with 1 MB to spare
    out = tmp_path / "run"
    code = load_example("train_mnist").main(["--preset", "tiny", "--batch-size", "16", "--out", str(out),
                                             "--data-dir", str(tiny_idx(tmp_path)), "--source", "idx",
                                             "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "--batch-size 16: a training step of 16 images of 1x28x28 needs about " in err[0], err[0]
    assert err[0].endswith("1.0 MB available; use a smaller batch")
    assert not (out / "checkpoint.npz").exists()


def test_training_step_estimate_covers_what_a_step_measures():
    """The estimate is generous: at least the ~130 MB peak a cpu-preset step of 32 measures (docs/speed.md)."""
    from _cli import training_step_bytes

    assert training_step_bytes(preset("cpu").unet, 32) >= 138e6
    assert training_step_bytes(preset("gpu").unet, 128) < 8e9       # and the gpu preset's step stays plausible


def test_an_image_size_that_does_not_fit_is_refused_before_decoding(tmp_path, monkeypatch):
    import tinyddpm.checks as checks
    from PIL import Image

    from tinyddpm.data.folder import load_image_folder

    for i in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{i}.png")
    monkeypatch.setattr(checks, "available_bytes", lambda: 10_000_000)
    with pytest.raises(ValueError) as e:
        load_image_folder(tmp_path, 4096)
    assert str(e.value).startswith(f"{tmp_path}: image_size 4096: 3 pictures of up to 3x4096x4096 as training data "
                                   "needs about 755.0 MB of memory, this machine has 10.0 MB available"), str(e.value)
    assert load_image_folder(tmp_path, 8).images.shape == (3, 1, 8, 8)   # black pictures read as grey


def test_evaluate_refuses_more_samples_than_memory(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (16, 28, 28), dtype=np.uint8)
    path = tmp_path / "checkpoint.npz"
    save_state(new_state(preset("tiny"), images, np.arange(16) % 10), path)
    done = run("evaluate.py", path, "--n-per-class", 10_000_000, "--device", "cpu", "--out", tmp_path / "eval")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("evaluate.py: error: --n-per-class 10000000: sampling 100,000,000 images"), lines[0]
    assert not (tmp_path / "eval").exists()
