"""examples/export_images.py: a data set written as a folder of PNGs, one subfolder per class, pixel for pixel."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tinyddpm.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]


def export(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, str(ROOT / "examples" / "export_images.py"), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_folder_holds_the_first_pictures_of_each_class_pixel_for_pixel(tmp_path):
    out = tmp_path / "digits"
    done = export("--dataset", "mnist", "--source", "subset", "--split", "test", "--out", out, "--per-class", 3)
    assert done.returncode == 0, done.stderr
    assert "wrote 30 pictures" in done.stdout
    data = load_dataset("mnist", "test", source="subset")
    assert sorted(p.name for p in out.iterdir()) == [str(d) for d in range(10)]
    for d in range(10):
        files = sorted((out / str(d)).iterdir())
        expected = np.flatnonzero(data.labels == d)[:3]
        assert [int(f.stem) for f in files] == list(expected)
        for f, i in zip(files, expected):
            with Image.open(f) as im:
                assert im.mode == "L" and np.array_equal(np.asarray(im), data.images[i])
    again = export("--dataset", "mnist", "--source", "subset", "--split", "test", "--out", out, "--per-class", 3)
    assert again.returncode == 0 and "wrote 0 pictures (30 in all" in again.stdout


def test_a_folder_holding_other_things_is_refused_in_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    done = export("--dataset", "mnist", "--source", "subset", "--out", tmp_path, "--per-class", 1)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"export_images.py: error: --out {tmp_path} holds other things "
                                                f"(notes.txt...): choose a new folder"]


def test_a_missing_data_set_is_one_line(tmp_path):
    done = export("--dataset", "fashion-mnist", "--source", "idx", "--data-dir", tmp_path / "none",
                  "--out", tmp_path / "out")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("export_images.py: error: cannot load the fashion-mnist train split")
