"""tinyddpm/evaluation/colour.py and what evaluate.py makes of it: the colour-histogram distance and its real-vs-real
floor, the luma the MNIST classifier reads (--luminance-judge), on coloured MNIST digits (export_images.py --colour)."""
import csv
import shutil
from dataclasses import asdict

import numpy as np
import pytest
from helpers import load_example
from PIL import Image

from tinyddpm import set_device
from tinyddpm.backend import get_device
from tinyddpm.checkpoint import save_checkpoint
from tinyddpm.classifiers.judge import CHECKPOINT_NAME, ClassifierConfig, init_params
from tinyddpm.data import load_dataset
from tinyddpm.data.folder import RESAMPLE
from tinyddpm.data.pixels import pixels_to_model_range
from tinyddpm.evaluation.colour import colour_distance, colour_floor, colour_histogram, luminance

DEVICE = get_device()
export_images = load_example("export_images")
GREY = np.array([0.299, 0.587, 0.114])   # ITU-R 601 luma


@pytest.fixture(autouse=True)
def keep_device():
    yield
    set_device(DEVICE)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("mnist", "test", source="subset")


@pytest.fixture(scope="module")
def coloured(digits):
    """The shipped subset's 1,000 test digits coloured as export_images.py --colour paints them: uint8 (N, H, W, 3)."""
    return np.stack([export_images.colourise(g, *export_images.colours(np.random.default_rng([0, i])))
                     for i, g in enumerate(digits.images)])


def model_range(rgb):
    return pixels_to_model_range(np.ascontiguousarray(rgb.transpose(0, 3, 1, 2)))   # (N, 3, H, W) in [-1, 1]


def flat_pictures(colours, size=4):
    """One picture per RGB colour (uint8 triple), every pixel that colour, in the model range."""
    return model_range(np.broadcast_to(np.array(colours, dtype=np.uint8)[:, None, None], (len(colours), size, size, 3)))


# ------------------------------------------------------------------------------------------- the distance

def test_the_distance_is_zero_for_the_same_colours_one_for_disjoint_ones_and_symmetric(coloured):
    x = model_range(coloured[:40])
    assert colour_distance(x, x) == 0.0
    assert colour_distance(x, x[::-1]) == 0.0                             # a set's histogram: order does not count
    assert colour_distance(x, np.concatenate([x, x])) == 0.0              # nor the number of copies
    reds, blues = flat_pictures([(200, 10, 10), (250, 60, 0)]), flat_pictures([(0, 0, 255), (30, 40, 170)])
    assert colour_distance(reds, blues) == 1.0
    y = model_range(coloured[40:80])
    assert colour_distance(x, y) == colour_distance(y, x) and 0 < colour_distance(x, y) < 1
    assert colour_distance(x, reds) == colour_distance(reds, x)


def test_every_uint8_value_falls_in_the_bin_u_div_64():
    u = np.arange(256, dtype=np.uint8)
    for dtype in (np.float32, np.float64):
        x = pixels_to_model_range(np.broadcast_to(u[:, None, None, None], (256, 3, 1, 1)).copy(), dtype)   # (r, r, r)
        cells = colour_histogram(x).reshape(4, 4, 4)                                   # [k_r, k_g, k_b]
        assert [cells[k, k, k] for k in range(4)] == [64 / 256] * 4
    assert colour_histogram(flat_pictures([(255, 0, 64)])).argmax() == 3 * 16 + 0 * 4 + 1


def test_a_colour_shift_raises_the_distance(coloured):
    x = model_range(coloured)
    a, b = x[:500], x[500:]
    shifted = [colour_distance(a, np.clip(b + np.array([2 * s / 255, 0, 0])[:, None, None], -1, 1))
               for s in (0, 16, 48, 128)]                                  # red raised by s of 255
    assert shifted == sorted(shifted) and shifted[-1] > 3 * shifted[0]


def test_the_floor_is_small_finite_and_shrinks_with_more_pictures(coloured):
    x = model_range(coloured)
    floors = [colour_floor(x, n, seed=0) for n in (25, 100, 500)]
    assert all(np.isfinite(f) and 0 < f < 0.25 for f in floors) and floors[-1] < floors[0]
    assert colour_floor(np.repeat(x[:1], 10, axis=0), 5) == 0.0             # a set of one picture: no spread at all
    assert colour_floor(x, 100, seed=3) == colour_floor(x, 100, seed=3)     # seeded


def test_grey_samples_score_far_worse_than_the_floor(coloured):
    x = model_range(coloured)
    grey = np.repeat(np.tensordot(GREY, x, axes=(0, 1))[:, None], 3, axis=1)   # each picture in its own luma
    floor = colour_floor(x, 500, seed=0)
    assert colour_distance(grey[500:], x[:500]) > 4 * floor


def test_bad_pictures_are_refused_by_name(coloured):
    x = model_range(coloured[:4])
    with pytest.raises(ValueError, match="colour_histogram: pictures .* contain NaN"):
        colour_distance(x, np.where(np.arange(28) == 5, np.nan, x))         # one column of NaN
    with pytest.raises(ValueError, match="colour_histogram: pictures must be float \\(N, C, H, W\\)"):
        colour_histogram(x[:, :1])
    with pytest.raises(ValueError, match="colour_floor: n must be in \\[1, N/2\\] = \\[1, 2\\], got 3"):
        colour_floor(x, 3)


# ------------------------------------------------------------------------------------------- luminance

def test_the_luminance_of_a_coloured_digit_is_the_digit(coloured, digits):
    enlarged = np.stack([np.asarray(Image.fromarray(p).resize((32, 32), RESAMPLE)) for p in coloured[:100]])
    y = luminance(model_range(enlarged))                                  # as the samples of a 32x32 network
    assert y.shape == (100, 1, 28, 28) and y.dtype == np.float32 and y.min() == -1 and y.max() == 1
    grey = pixels_to_model_range(digits.images[:100])                     # (100, 1, 28, 28)
    assert min(np.corrcoef(a.ravel(), g.ravel())[0, 1] for a, g in zip(y, grey)) > 0.98
    # a stand-in for the MNIST classifier (training it takes a minute): the label of the nearest grey training digit
    train = load_dataset("mnist", "train", source="subset")
    reference = pixels_to_model_range(train.images).reshape(len(train.images), -1)

    def read(z):
        z = z.reshape(len(z), -1)
        return train.labels[((z * z).sum(1)[:, None] - 2 * z @ reference.T + (reference ** 2).sum(1)).argmin(1)]

    on_grey, on_luma = (np.mean(read(z) == digits.labels[:100]) for z in (grey, y))
    assert on_luma >= 0.8 and on_luma >= on_grey - 0.05


def test_luminance_of_grey_and_flat_pictures():
    x = np.linspace(-0.5, 0.5, 28 * 28, dtype=np.float32).reshape(1, 1, 28, 28)
    y = luminance(np.concatenate([x, np.zeros_like(x)]))                 # grey: stretched as it is; flat: all -1
    assert np.allclose(y[0], (x[0] + 0.5) * 2 - 1, atol=1e-6) and np.all(y[1] == -1)


# ------------------------------------------------------------------------------------------- evaluate.py

def test_the_table_gains_columns_only_when_they_are_measured(tmp_path):
    evaluate = load_example("evaluate")
    row = {"sampler": "ddim", "steps": 2, "guidance": 1.0, "classifier_scale": 0.0, "n": 20, "fid": 3.0,
           "precision": 0.5, "recall": 0.5, "accuracy": 0.9, "inception_score": 2.0, "seconds_per_image": 0.1,
           "guidance_interval": ""}
    baseline = {"n": 10, "fid": 1.0, "precision": 0.9, "recall": 0.9}
    plain = evaluate.write_outputs([row], baseline, tmp_path / "grey", "FID-folder")
    with open(tmp_path / "grey" / "evaluation.csv") as f:
        assert next(csv.reader(f)) == evaluate.COLUMNS
    assert "colour" not in plain and "luma" not in plain
    measured = dict(row, colour_distance=0.2, colour_ratio=4.0, luminance_accuracy=0.75)
    text = evaluate.write_outputs([measured], dict(baseline, colour=0.05, colour_n=10, luminance_accuracy=0.97),
                                  tmp_path / "rgb", "FID-folder")
    with open(tmp_path / "rgb" / "evaluation.csv") as f:
        assert next(csv.reader(f)) == evaluate.COLUMNS + evaluate.EXTRA_COLUMNS
    assert "; colour TV 0.050 (10 vs 10); MNIST classifier on the real pictures' luma: accuracy 0.970" in text
    assert text.splitlines()[2].endswith("| s/image | colour TV (x floor) | MNIST on luma |")
    assert text.splitlines()[-1].endswith("| 0.100 | 0.200 (4.0x) | 0.750 |")


def folder_checkpoint(root, folder, size=16):
    """A 4-step tiny run on the folder's pictures (as tests/test_evaluate.py makes one)."""
    from dataclasses import replace

    from tinyddpm import new_state, preset, train
    from tinyddpm.data.folder import load_image_folder
    from tinyddpm.training.config import PRESETS

    data = load_image_folder(folder, image_size=size)
    unet = replace(PRESETS["tiny"].unet, image_size=size, image_channels=data.channels, attention_resolutions=(),
                   num_classes=len(data.class_names))
    state = new_state(preset("tiny", unet=unet), data.images, data.labels, data_source=data.source,
                      class_names=data.class_names)
    train(state, root, progress=False, log_lines=0)
    return root / "checkpoint.npz"


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """A folder of 30 coloured digits (3 per digit, export_images.py --colour), a tiny network trained on it, and an
    untrained MNIST classifier standing in for the cached one (training it takes a minute)."""
    root = tmp_path_factory.mktemp("colour")
    folder = root / "colour-mnist"
    assert export_images.main(["--dataset", "mnist", "--source", "subset", "--split", "test", "--colour",
                               "--per-class", "3", "--out", str(folder)]) == 0
    cache = root / "cache"
    cfg = ClassifierConfig()
    save_checkpoint(cache / "classifier" / CHECKPOINT_NAME, params=init_params(cfg),
                    config={"kind": "tinyddpm.classifier", **asdict(cfg), "test_accuracy": 0.1})
    return root, folder, folder_checkpoint(root / "run", folder), cache


def test_evaluate_reports_colour_and_the_luminance_judge(colour_run, monkeypatch, capsys):
    root, folder, checkpoint, cache = colour_run
    monkeypatch.setenv("TINYDDPM_CACHE", str(cache))   # where the MNIST classifier is looked for
    out = root / "evaluation"
    argv = [str(checkpoint), "--data", str(folder), "--luminance-judge", "--configs", "ddim:2", "--n-per-class", "2",
            "--classifier-dir", str(root / "folder_classifier"), "--classifier-epochs", "0.5", "--out", str(out),
            "--device", DEVICE]
    assert load_example("evaluate").main(argv) == 0
    printed = capsys.readouterr().out
    assert f"loaded {cache / 'classifier' / CHECKPOINT_NAME}" in printed
    assert "; colour TV " in printed and "(15 vs 15); MNIST classifier on the real pictures' luma: accuracy" in printed
    assert "x floor), MNIST on luma " in printed and "| colour TV (x floor) | MNIST on luma |" in printed
    with open(out / "evaluation.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert int(row["n"]) == 20 and 0 < float(row["colour_distance"]) <= 1 and float(row["colour_ratio"]) > 0
    assert 0 <= float(row["luminance_accuracy"]) <= 1


def test_the_luminance_judge_needs_a_folder_of_the_digits(colour_run, monkeypatch, capsys):
    root, folder, checkpoint, cache = colour_run
    monkeypatch.setenv("TINYDDPM_CACHE", str(cache))
    letters = root / "letters"
    if not letters.exists():   # the same pictures, classes d0 .. d9
        for d in range(10):
            shutil.copytree(folder / str(d), letters / f"d{d}")
    evaluate = load_example("evaluate")
    cases = [([], "--luminance-judge: only with --data FOLDER, a folder of digit pictures (subfolders 0 to 9)"),
             (["--data", str(letters)], f"--luminance-judge: the classes of --data {letters} must be the digits 0 "
                                        "to 9, the MNIST classifier's (its classes: d0, d1, d2, d3, d4, d5...)")]
    for args, line in cases:
        argv = [str(checkpoint), *args, "--luminance-judge", "--out", str(root / "refused"), "--device", DEVICE]
        assert evaluate.main(argv) == 2
        assert capsys.readouterr().err.splitlines() == [f"evaluate.py: error: {line}"]
    assert not (root / "refused").exists()
