"""examples/evaluate.py end to end on synthetic digits: the table, the CSV and the plot are written."""
import csv
from dataclasses import asdict

import numpy as np
import pytest

from helpers import load_example, synthetic_digits
from tinyddpm import set_device
from tinyddpm.backend import get_device
from tinyddpm.checkpoint import save_checkpoint
from tinyddpm.classifier import CHECKPOINT_NAME, ClassifierConfig, init_params
from tinyddpm.data import FILES, write_idx

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
    argv = [str(run / "checkpoint.npz"), "--configs", "ddim:2,dpm++2m:2", "--guidance", "1,2", "--n-per-digit", "2",
            "--data-dir", str(data), "--source", "idx", "--classifier-dir", str(classifier), "--out", str(out),
            "--device", DEVICE]
    assert load_example("evaluate").main(argv) == 0
    printed = capsys.readouterr().out
    assert "real-vs-real" in printed and "| sampler | steps |" in printed
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
    from tinyddpm.classifier import load_classifier

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
