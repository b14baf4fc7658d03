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
