"""examples/evaluate.py end to end on synthetic digits: the table, the CSV and the plot are written."""
import csv
from dataclasses import asdict

import numpy as np
import pytest

from helpers import load_example, synthetic_digits
from tinyddpm import set_device
from tinyddpm.backend import get_device
from tinyddpm.checkpoint import load_checkpoint, save_checkpoint
from tinyddpm.classifiers.judge import CHECKPOINT_NAME, ClassifierConfig, init_params, predict_proba
from tinyddpm.data import FILES, write_idx
from tinyddpm.data.pixels import pixels_to_model_range
from tinyddpm.evaluation.metrics import conditional_accuracy

DEVICE = get_device()


@pytest.fixture(autouse=True)
def keep_device():
    yield
    set_device(DEVICE)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = root / "idx"
    data.mkdir()
    for split, seed in (("train", 0), ("test", 1)):
        images, labels = synthetic_digits(48, seed)
        write_idx(data / FILES[split][0], images)
        write_idx(data / FILES[split][1], labels)
    run = root / "run"
    assert load_example("train_mnist").main(["--preset", "tiny", "--out", str(run), "--data-dir", str(data),
                                            "--source", "idx", "--device", DEVICE, "--no-progress"]) == 0
    # An untrained classifier stands in for the real one (training it on MNIST takes a minute).
    classifier = root / "classifier"
    cfg = ClassifierConfig()
    save_checkpoint(classifier / CHECKPOINT_NAME, params=init_params(cfg),
                    config={"kind": "tinyddpm.classifier", **asdict(cfg), "test_accuracy": 0.1})
    return root, data, run, classifier


def test_evaluate_writes_the_table(workspace, capsys):
    root, data, run, classifier = workspace
    out = root / "evaluation"
    argv = [str(run / "checkpoint.npz"), "--configs", "ddim:2,dpm++2m:2", "--guidance", "1,2", "--n-per-class", "2",
            "--data-dir", str(data), "--source", "idx", "--classifier-dir", str(classifier), "--out", str(out),
            "--device", DEVICE]
    assert load_example("evaluate").main(argv) == 0
    printed = capsys.readouterr().out
    assert "real-vs-real" in printed and "| sampler | steps |" in printed
    # the classifier's reading of the real half of the floor (the first 20 test digits): a perfect generator's accuracy
    images, labels = synthetic_digits(48, 1)
    params = load_checkpoint(classifier / CHECKPOINT_NAME).params
    real = conditional_accuracy(predict_proba(params, pixels_to_model_range(images[:20])), labels[:20])
    assert f"(n=20); accuracy {real:.3f}" in printed
    assert f"; accuracy {real:.3f}" in (out / "evaluation.md").read_text().splitlines()[0]   # the baseline line
    with open(out / "evaluation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["sampler"], r["steps"], float(r["guidance"])) for r in rows] == [
        ("ddim", "2", 1.0), ("ddim", "2", 2.0), ("dpm++2m", "2", 1.0), ("dpm++2m", "2", 2.0)]
    for r in rows:
        assert int(r["n"]) == 20 and 0 <= float(r["accuracy"]) <= 1 and np.isfinite(float(r["fid"]))
    assert (out / "evaluation.md").read_text().count("\n| ") == 5  # header + 4 rows
    assert (out / "quality_vs_steps.png").stat().st_size > 1000


def test_bad_configs_are_named(workspace, capsys):
    _, _, run, _ = workspace
    with pytest.raises(SystemExit):
        load_example("evaluate").main([str(run / "checkpoint.npz"), "--configs", "euler:10"])
    assert "--configs: 'euler:10' is not SAMPLER:STEPS" in capsys.readouterr().err


def test_a_classifier_cache_that_is_not_one_is_named(tmp_path):
    import re

    from tinyddpm.checkpoint import CheckpointError
    from tinyddpm.classifiers.judge import load_classifier

    cfg = ClassifierConfig()
    params = init_params(cfg)
    kind = {"kind": "tinyddpm.classifier", **asdict(cfg)}
    good = save_checkpoint(tmp_path / "good" / CHECKPOINT_NAME, params=params, config=kind)
    assert set(load_classifier(good)[0]) == set(params)
    cases = {
        "random bytes": (None, "not a readable .npz checkpoint"),
        "a training checkpoint": (dict(params=params, config={"kind": "tinyddpm.train"}),
                                  "is not a classifier checkpoint \\(config kind 'tinyddpm.train'"),
        "missing weights": (dict(params={k: v for k, v in params.items() if k != "fc2.b"}, config=kind),
                            "does not hold classifier weights \\(missing \\['fc2.b'\\]"),
        "wrong shapes": (dict(params=dict(params, **{"conv2.w": params["conv2.w"][:, :3]}), config=kind),
                         "does not hold classifier weights \\(conv2.w"),
        "NaN weights": (dict(params=dict(params, **{"fc1.b": params["fc1.b"] * np.nan}), config=kind),
                        "the classifier weights 'fc1.b' hold 128 NaN"),
    }
    for case, (parts, message) in cases.items():
        path = tmp_path / case.replace(" ", "_") / CHECKPOINT_NAME
        if parts is None:
            path.parent.mkdir()
            path.write_bytes(np.random.default_rng(0).bytes(1000))
        else:
            save_checkpoint(path, **parts)
        with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*" + message):
            load_classifier(path)


# ---------------------------------------------------------------------------------------- other data sets

def picture_folder(root, labelled: bool, size: int = 20, per_class: int = 12, colour: bool = True):
    """A folder of small PNGs made with Pillow: a bright disc whose colour and place depend on the class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for k, name in enumerate(("red", "green", "blue")):
        folder = root / name if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cy, cx = rng.integers(5, size - 5, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 16
            pixels = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
            pixels[disc, k if colour else slice(None)] = 230
            Image.fromarray(pixels if colour else pixels[:, :, 0]).save(folder / f"{name}_{i}.png")
    return root


def folder_checkpoint(root, folder, size=16):
    """A 4-step tiny run on the folder's pictures (the library's calls that examples/train_images.py makes)."""
    from dataclasses import replace

    from tinyddpm import new_state, preset, train
    from tinyddpm.training.config import PRESETS
    from tinyddpm.data.folder import load_image_folder

    data = load_image_folder(folder, image_size=size)
    conditional = data.labels is not None
    unet = replace(PRESETS["tiny"].unet, image_size=size, image_channels=data.channels, attention_resolutions=(),
                   num_classes=len(data.class_names) if conditional else None)
    config = preset("tiny", unet=unet, **({} if conditional else {"p_uncond": 0.0}))
    state = new_state(config, data.images, data.labels, data_source=data.source, class_names=data.class_names)
    train(state, root, progress=False, log_lines=0)
    return root / "checkpoint.npz"


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    root = tmp_path_factory.mktemp("pictures")
    labelled, flat = picture_folder(root / "labelled", True), picture_folder(root / "flat", False, colour=False)
    return root, labelled, flat, folder_checkpoint(root / "run_labelled", labelled), folder_checkpoint(
        root / "run_flat", flat)


def test_evaluate_a_labelled_folder_with_its_own_classifier(pictures, capsys):
    root, labelled, _, checkpoint, _ = pictures
    out, cache = root / "eval_labelled", root / "classifier_cache"
    argv = [str(checkpoint), "--data", str(labelled), "--configs", "ddim:2", "--n-per-class", "4", "--nearest", "6",
            "--classifier-dir", str(cache), "--classifier-epochs", "0.5", "--out", str(out), "--device", DEVICE]
    assert load_example("evaluate").main(argv) == 0
    printed = capsys.readouterr().out
    assert "| FID-folder |" in printed and "nearest training image" in printed
    with open(out / "evaluation.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert int(row["n"]) == 12 and np.isfinite(float(row["fid"])) and 0 <= float(row["accuracy"]) <= 1
    assert (out / "nearest.png").stat().st_size > 1000
    info = load_checkpoint_config(cache / CHECKPOINT_NAME)
    assert info["dataset"].startswith("folder-") and info["image_channels"] == 3 and info["num_classes"] == 3
    assert info["image_size"] == 16 and info["test_size"] == 4   # 10% of 36 pictures, rounded
    # the same folder again: the cached classifier
    assert load_example("evaluate").main(argv[:-2] + ["--device", DEVICE]) == 0
    assert f"loaded {cache / CHECKPOINT_NAME}" in capsys.readouterr().out


def load_checkpoint_config(path):
    return load_checkpoint(path).config


def test_a_flat_folder_gets_the_nearest_check_only(pictures, capsys):
    root, _, flat, _, checkpoint = pictures
    out = root / "eval_flat"
    argv = [str(checkpoint), "--data", str(flat), "--configs", "ddim:2", "--nearest", "5", "--out", str(out),
            "--device", DEVICE]
    assert load_example("evaluate").main(argv) == 0
    printed = capsys.readouterr().out
    assert "is a flat folder: no labels to train the evaluation classifier on" in printed
    assert "median" in printed and (out / "nearest.png").is_file() and not (out / "evaluation.csv").exists()


def test_data_that_does_not_fit_the_checkpoint_is_refused(pictures, workspace, capsys):
    root, labelled, flat, checkpoint, _ = pictures
    _, data, run, _ = workspace
    cases = [([str(run / "checkpoint.npz"), "--data", str(labelled)], "makes 1-channel 28x28 images, the folder data "
              "is 3-channel 28x28"),
             ([str(checkpoint), "--data", str(flat)], "makes 3-channel 16x16 images, the folder data is 1-channel"),
             ([str(checkpoint)], "was trained on a folder of pictures"),
             ([str(run / "checkpoint.npz"), "--data", str(flat), "--dataset", "mnist"], "give one")]
    for argv, message in cases:
        assert load_example("evaluate").main(argv + ["--out", str(root / "refused"), "--device", DEVICE]) == 2
        assert message in capsys.readouterr().err


def test_evaluate_fashion_mnist_shaped_data_trains_and_caches_its_classifier(tmp_path, workspace, monkeypatch,
                                                                             capsys):
    from tinyddpm.data import mnist as data_module
    from tinyddpm.checkpoint import load_checkpoint
    from tinyddpm.classifiers.judge import default_classifier_dir

    monkeypatch.setenv("TINYDDPM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data_module, "FASHION_SYSTEM_DIRS", [tmp_path / "no_package"])
    _, idx, run, _ = workspace          # the MNIST stand-in run, measured as if it were Fashion-MNIST
    fashion = tmp_path / "fashion"
    fashion.mkdir()
    for split, n in (("train", 130), ("test", 24)):
        images, labels = synthetic_digits(n, seed=n)
        write_idx(fashion / FILES[split][0], images)
        write_idx(fashion / FILES[split][1], labels)
    argv = [str(run / "checkpoint.npz"), "--dataset", "fashion-mnist", "--data-dir", str(fashion), "--configs",
            "ddim:2", "--n-per-digit", "2", "--classifier-epochs", "0.1", "--nearest", "4",
            "--out", str(tmp_path / "out"), "--device", DEVICE]
    assert load_example("evaluate").main(argv) == 2           # the checkpoint says MNIST: refused
    assert "was trained on MNIST" in capsys.readouterr().err
    ckpt = load_checkpoint(run / "checkpoint.npz")            # the same run, labelled as Fashion-MNIST
    fake = tmp_path / "fashion_run" / "checkpoint.npz"
    save_checkpoint(fake, config=ckpt.config, params=ckpt.params, ema=ckpt.ema, step=ckpt.step,
                    extra=dict(ckpt.extra, class_names=list(data_module.CLASS_NAMES["fashion-mnist"])))
    argv[0] = str(fake)
    assert load_example("evaluate").main(argv[:1] + argv[3:]) == 0   # --dataset from the checkpoint
    printed = capsys.readouterr().out
    cache = default_classifier_dir("fashion-mnist") / CHECKPOINT_NAME
    assert "FID-Fashion-MNIST" in printed and f"saved {cache}" in printed and "nearest training image" in printed
    assert cache.parent == tmp_path / "cache" / "classifier" / "fashion-mnist"
    assert load_checkpoint_config(cache)["dataset"] == "fashion-mnist"


def test_classifier_caches_per_data_set(tmp_path, capsys):
    import re

    from tinyddpm.checkpoint import CheckpointError
    from tinyddpm.classifiers.judge import default_classifier_dir, folder_key, load_or_train_classifier
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 3, 32, 32), dtype=np.uint8)      # RGB 32x32, four classes
    labels = np.arange(40) % 4
    part = SimpleNamespace(images=images, labels=labels, class_names=list("abcd"), source="stand-in")
    key = folder_key(images, labels)
    assert key == folder_key(images.copy(), labels.copy()) and key != folder_key(images, labels[::-1].copy())
    assert len({default_classifier_dir(k) for k in ("mnist", "fashion-mnist", key)}) == 3
    params, info = load_or_train_classifier(tmp_path, train_data=part, test_data=part, data_key=key, epochs=0.5,
                                            verbose=False)
    assert params["conv1.w"].shape[1] == 3 and params["fc2.w"].shape[0] == 4 and info["dataset"] == key
    again, _ = load_or_train_classifier(tmp_path, data_key=key, verbose=False)          # the round trip
    assert all(np.array_equal(params[k], again[k]) for k in params)
    path = tmp_path / CHECKPOINT_NAME
    for wanted in ("mnist", "fashion-mnist"):                                             # another data set's cache
        with pytest.raises(CheckpointError, match=re.escape(f"holds a classifier of {key!r}, this evaluation "
                                                            f"needs one of {wanted!r}")):
            load_or_train_classifier(tmp_path, dataset=wanted, verbose=False)
    path.write_bytes(path.read_bytes()[:300])                                            # corrupt
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*not a readable .npz checkpoint") as e:
        load_or_train_classifier(tmp_path, data_key=key, verbose=False)
    assert "\n" not in str(e.value)


def test_a_folders_reference_is_drawn_from_every_class_a_splits_is_its_first_images():
    """A folder is read class after class: FID's real images are a seeded random pick, not its first ones
    (which once made them all 'Ankle boot' and a Fashion-MNIST checkpoint's FID-folder 1831 against a floor of 9)."""
    evaluate = load_example("evaluate")
    labels = np.repeat(np.arange(10), 100)                                  # (1000,) 0 0 ... 9 9, as a folder reads
    part = type("Part", (), {"images": np.zeros((1000, 1, 8, 8), np.uint8), "labels": labels, "source": "test"})()
    folder = evaluate.RealData("folder", "folder", "folder-x", [str(k) for k in range(10)], part)
    picks = folder.reference_picks(200, seed=0)
    assert len(set(picks.tolist())) == 200 and set(labels[picks].tolist()) == set(range(10))
    assert np.array_equal(picks, folder.reference_picks(200, seed=0))     # seeded
    split = evaluate.RealData("mnist", "MNIST", "mnist", [str(k) for k in range(10)], part)
    assert np.array_equal(split.reference_picks(200, seed=0), np.arange(200))
    assert np.array_equal(split.reference_picks(5000, seed=0), np.arange(1000))


def test_evaluate_guidance_interval(workspace, capsys):
    """--guidance-interval LO,HI reaches every row: in the CSV's guidance_interval column and the table's guidance."""
    root, data, run, classifier = workspace
    out = root / "evaluation_interval"
    argv = [str(run / "checkpoint.npz"), "--configs", "ddim:2", "--guidance", "2", "--n-per-class", "2",
            "--guidance-interval", "100,600", "--data-dir", str(data), "--source", "idx",
            "--classifier-dir", str(classifier), "--out", str(out), "--device", DEVICE]
    assert load_example("evaluate").main(argv) == 0
    with open(out / "evaluation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["guidance_interval"] for r in rows] == ["100-600"]
    assert "| 2 (t 100-600) |" in (out / "evaluation.md").read_text()
