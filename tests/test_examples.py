"""The example scripts end to end on a small synthetic IDX data set, and the pictures they draw."""
import argparse
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import load_example, synthetic_digits
from tinyddpm import Trajectory, set_device, viz
from tinyddpm.backend import get_device
from tinyddpm.checkpoint import load_checkpoint
from tinyddpm.data import FILES, write_idx

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DEVICE = get_device()  # the scripts run on the device the tests run on


@pytest.fixture(autouse=True)
def keep_device():
    """A script's main() sets the global device; put back the one the test session uses."""
    yield
    set_device(DEVICE)


def run_script(name, *args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A folder with MNIST-named IDX files holding 48 synthetic 28x28 'digits' (a bar whose angle is the label)."""
    root = tmp_path_factory.mktemp("idx")
    images, labels = synthetic_digits(48, seed=0)  # (48, 28, 28), (48,)
    images_name, labels_name = FILES["train"]
    write_idx(root / images_name, images)
    write_idx(root / (labels_name + ".gz"), labels)
    return root


@pytest.fixture(scope="module")
def tiny_run(data_dir, tmp_path_factory):
    """examples/train_mnist.py --preset tiny as a user runs it; returns (completed process, output folder)."""
    out = tmp_path_factory.mktemp("run") / "mnist"
    done = run_script("train_mnist", "--preset", "tiny", "--out", out, "--data-dir", data_dir, "--source", "idx",
                      "--device", DEVICE, "--no-progress", cwd=tmp_path_factory.mktemp("cwd"))
    return done, out


def test_train_script_writes_everything(tiny_run):
    done, out = tiny_run
    assert done.returncode == 0, done.stderr
    assert "MNIST train: IDX files in" in done.stdout                  # it says which data it uses
    for name in ("checkpoint.npz", "samples.png", "denoising.gif", "loss.png", "previews/step_000002.png"):
        assert (out / name).is_file(), name
        assert f"wrote {out / name}" in done.stdout or name.startswith("previews")
    ckpt = load_checkpoint(out / "checkpoint.npz")
    assert ckpt.step == 4 and len(ckpt.extra["losses"]) == 4 and ckpt.ema is not None
    with Image.open(out / "samples.png") as im:
        assert im.format == "PNG" and np.asarray(im.convert("L")).std() > 10
    with Image.open(out / "denoising.gif") as im:
        assert im.format == "GIF" and im.n_frames == 3    # the tiny preset samples in 3 steps


def test_sample_script(tiny_run, tmp_path):
    _, out = tiny_run
    done = run_script("sample", out / "checkpoint.npz", "--sampler", "ddim", "--steps", "3", "--digits", "0,3,7",
                      "--n-per-class", "2", "--guidance", "3", "--seed", "5", "--out", tmp_path, "--device", DEVICE,
                      "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    png, gif = tmp_path / "ddim_3steps_g3_seed5.png", tmp_path / "ddim_3steps_g3_seed5.gif"
    assert f"wrote {png}" in done.stdout and f"wrote {gif}" in done.stdout
    with Image.open(gif) as im:
        assert im.n_frames == 3


def test_sample_script_raw_weights_in_process(tiny_run, tmp_path, capsys):
    _, out = tiny_run
    sample = load_example("sample")
    assert sample.main([str(out / "checkpoint.npz"), "--steps", "2", "--digits", "1", "--n-per-digit", "1",   # alias
                        "--no-ema", "--out", str(tmp_path), "--device", DEVICE, "--no-progress"]) == 0
    assert (tmp_path / "dpm++2m_2steps_g2_seed0_raw.png").is_file()
    with pytest.raises(SystemExit):
        sample.parse_args(["x.npz", "--digits", "3,12"])
    assert "--digits must list digits 0..9" in capsys.readouterr().err


def test_corrupt_checkpoint_through_the_scripts(data_dir, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"\x00" * 100)
    train_mnist, sample = load_example("train_mnist"), load_example("sample")
    assert train_mnist.main(["--resume", str(bad), "--data-dir", str(data_dir), "--source", "idx",
                             "--out", str(tmp_path / "out"), "--device", DEVICE, "--no-progress"]) == 2
    assert re.search(f"cannot resume: {re.escape(str(bad))}: not a readable .npz", capsys.readouterr().err)
    assert sample.main([str(bad), "--device", DEVICE]) == 2
    assert f"{bad}: not a readable .npz" in capsys.readouterr().err


def test_stop_and_resume_through_the_script(data_dir, tmp_path, capsys):
    train_mnist = load_example("train_mnist")
    common = ["--data-dir", str(data_dir), "--source", "idx", "--out", str(tmp_path), "--device", DEVICE,
              "--no-progress", "--sample-every", "0"]
    assert train_mnist.main(["--preset", "tiny", "--until", "2", *common]) == 0
    assert "stopped at step 2 of 4" in capsys.readouterr().out
    assert not (tmp_path / "samples.png").exists() and load_checkpoint(tmp_path / "checkpoint.npz").step == 2
    assert train_mnist.main(["--resume", "--batch-size", "4", *common]) == 2
    assert "--batch-size cannot change on --resume" in capsys.readouterr().err
    assert train_mnist.main(["--resume", *common]) == 0
    assert "resuming" in capsys.readouterr().out
    ckpt = load_checkpoint(tmp_path / "checkpoint.npz")
    assert ckpt.step == 4 and len(ckpt.extra["losses"]) == 4 and (tmp_path / "samples.png").is_file()


def test_block_options_through_the_script(data_dir, tmp_path, capsys):
    train_mnist = load_example("train_mnist")
    common = ["--data-dir", str(data_dir), "--source", "idx", "--out", str(tmp_path), "--device", DEVICE,
              "--no-progress", "--sample-every", "0", "--preset", "tiny", "--until", "2"]
    blocks = ["--activation", "gelu", "--weight-standardisation", "--downsample", "space_to_depth",
              "--upsample", "transposed"]
    assert train_mnist.main([*common, *blocks]) == 0
    unet = load_checkpoint(tmp_path / "checkpoint.npz").config["train"]["unet"]
    assert (unet["activation"], unet["weight_standardisation"], unet["downsample"], unet["upsample"]) == \
        ("gelu", True, "space_to_depth", "transposed")
    capsys.readouterr()
    assert train_mnist.main(["--resume", "--activation", "silu", *common[:-4]]) == 2   # without --preset, --until
    assert "--activation cannot change on --resume" in capsys.readouterr().err


def test_examples_import_only_tinyddpm_and_cli():
    """Examples are examples: each imports tinyddpm and examples/_cli.py, never another example."""
    scripts = sorted(EXAMPLES.glob("*.py"))
    names = {path.stem for path in scripts}
    for path in scripts:
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
        assert imported & names <= {"_cli"}, (path.name, sorted(imported & names))


@pytest.mark.parametrize("script", ["train_mnist", "train_images", "sample", "evaluate"])
def test_n_per_class_is_the_spelling_and_n_per_digit_its_alias(script):
    parse = load_example(script)
    parse = getattr(parse, "parse_args", None) or parse.build_parser().parse_args
    first = {"train_images": ["--data", "x"], "sample": ["x.npz"], "evaluate": ["x.npz"]}.get(script, [])
    for flag in ("--n-per-class", "--n-per-digit"):
        args = parse([*first, flag, "3"])
        assert args.n_per_class == 3 and not hasattr(args, "n_per_digit"), flag

# --------------------------------------------------------------------------------------------
# the pictures (tinyddpm.viz additions)
# --------------------------------------------------------------------------------------------

def test_tile_images_layout():
    images = -np.ones((5, 1, 4, 4))
    images[3] = 1.0
    mosaic = viz.tile_images(images, ncol=3, gap=1)
    assert mosaic.shape == (2 * 5 - 1, 3 * 5 - 1)
    assert mosaic[0, 0] == 0.0 and mosaic[0, 4] == 1.0       # black image, then the white gap
    assert np.all(mosaic[5:, :4] == 1.0)                       # image 3 (white) opens row 2
    assert np.all(mosaic[5:, 10:] == 1.0)                      # the missing sixth cell is blank
    assert viz.tile_images(np.zeros((2, 3, 3, 4, 4))).shape == (2 * 6 - 2, 3 * 6 - 2, 3)  # RGB


def test_sample_grid_with_row_labels(tmp_path):
    grid = np.random.default_rng(0).uniform(-1, 1, (10, 4, 1, 28, 28))   # a row per digit
    path = viz.plot_sample_grid(tmp_path / "grid.png", grid, row_labels=[str(d) for d in range(10)], title="t")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[1] > im.size[0]
    fig = viz.plot_sample_grid(None, grid, row_labels=[str(d) for d in range(10)])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [str(d) for d in range(10)]
    with pytest.raises(ValueError, match="3 row_labels for a grid of 10 x 4"):
        viz.plot_sample_grid(None, grid, row_labels=["a", "b", "c"])


def test_denoising_gif(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.uniform(-1, 1, (6, 1, 8, 8)) * (1 - k / 4) for k in range(5)]
    path = viz.save_denoising_gif(tmp_path / "a" / "d.gif", frames, ncol=3, captions=[f"t = {k}" for k in range(5)],
                                  scale=2)
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 5
        assert im.size == (2 * (3 * 10 - 2), 2 * (2 * 10 - 2) + 16)   # gap 2, caption strip 16
    with pytest.raises(ValueError, match="2 captions for 5 frames"):
        viz.save_denoising_gif(tmp_path / "e.gif", frames, captions=["a", "b"])


def test_loss_curve(tmp_path):
    losses = 1.0 / np.arange(1, 201) + 0.05
    path = viz.plot_loss_curve(tmp_path / "loss.png", losses)
    with Image.open(path) as im:
        assert im.format == "PNG" and np.asarray(im.convert("L")).std() > 5
    fig = viz.plot_loss_curve(None, losses, window=10)
    assert fig.axes[0].get_yscale() == "log" and len(fig.axes[0].get_lines()) == 2
    np.testing.assert_allclose(viz.smooth_curve([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        viz.plot_loss_curve(None, [])


def test_sample_pictures_grid_and_gif(tmp_path):
    """viz.save_sample_pictures: a grid of rows x n and a GIF of a few per row, a frame per recorded step."""
    rng = np.random.default_rng(0)
    trajectory = Trajectory()
    for i, t in enumerate((999, 500, 0)):
        trajectory(i, t, rng.uniform(-1, 1, (6, 1, 8, 8)), rng.uniform(-1, 1, (6, 1, 8, 8)))
    x = rng.uniform(-1, 1, (6, 1, 8, 8))                                  # 2 rows of 3
    png, gif = viz.save_sample_pictures(tmp_path / "s.png", tmp_path / "s.gif", x, trajectory, 2, 3,
                                        row_labels=["a", "b"], title="t", gif_per_row=2)
    with Image.open(png) as im:
        assert im.format == "PNG"
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 3
        assert im.size == (2 * ((2 * 2 + 1) * 10 - 2), 2 * (2 * 10 - 2) + 16)   # 2k + 1 columns, 2 rows, the caption


def test_sample_script_takes_the_runs_guidance_interval(tmp_path, capsys):
    """A run whose config guides only at some timesteps is sampled that way by default (the same samples as asking
    for that interval), 'all' guides at every step (different samples); the training preview uses it too."""
    import tinyddpm as td
    images, labels = synthetic_digits(40)
    config = td.preset("tiny", steps=2, sample_every=1, guidance=4.0, guidance_interval=(0, 500))
    state = td.train(td.new_state(config, images, labels), tmp_path / "run", progress=False)
    ckpt = str(tmp_path / "run" / "checkpoint.npz")
    cli = load_example("_cli")                         # the final pictures of train_mnist.py / train_images.py
    unset = argparse.Namespace(sampler=None, sample_steps=None, guidance=None, n_per_class=1)
    cli.final_pictures(state, tmp_path / "run", cli.final_settings(state, unset), progress=False)
    assert "(3 steps, guidance 4 at t in [0, 500])" in capsys.readouterr().out
    sample = load_example("sample")
    common = [ckpt, "--steps", "3", "--digits", "1,2", "--n-per-class", "2", "--device", DEVICE, "--no-progress"]
    pictures = {}
    for option in ([], ["--guidance-interval", "0,500"], ["--guidance-interval", "all"]):
        out = tmp_path / ("-".join(option) or "default")
        assert sample.main(common + option + ["--out", str(out)]) == 0
        (png,) = out.glob("*.png")
        pictures[tuple(option)] = (png.name, np.asarray(Image.open(png)))
    printed = capsys.readouterr().out
    assert printed.count("guidance 4 at t in [0, 500]") == 2 and "(3 steps, guidance 4, EMA" in printed
    default, asked, every = pictures.values()
    assert default[0] == asked[0] == "dpm++2m_3steps_g4_seed0_t0-500.png" and every[0] == "dpm++2m_3steps_g4_seed0.png"
    assert np.array_equal(default[1], asked[1]) and not np.array_equal(default[1], every[1])
    assert (tmp_path / "run" / "previews" / "step_000001.png").is_file()


def test_sample_script_guidance_interval(tiny_run, tmp_path, capsys):
    """--guidance-interval LO,HI reaches the sampler (its file name and line say so); a bad one is one line, exit 2."""
    _, out = tiny_run
    sample = load_example("sample")
    assert sample.main([str(out / "checkpoint.npz"), "--steps", "2", "--digits", "1", "--n-per-class", "1",
                        "--guidance-interval", "0,500", "--out", str(tmp_path), "--device", DEVICE, "--no-progress"]) == 0
    assert (tmp_path / "dpm++2m_2steps_g2_seed0_t0-500.png").is_file()
    assert "at t in [0, 500]" in capsys.readouterr().out
    for bad, message in (("500,100", "LO must not exceed HI"), ("1", "must be two timesteps"),
                         ("5000,6000", "timesteps are 0..")):
        code = sample.main([str(out / "checkpoint.npz"), "--guidance-interval", bad, "--out", str(tmp_path),
                            "--device", DEVICE, "--no-progress"]) if bad == "5000,6000" else None
        if code is None:
            with pytest.raises(SystemExit) as e:
                sample.parse_args(["x.npz", "--guidance-interval", bad])
            code = e.value.code
        assert code == 2 and message in capsys.readouterr().err, bad
