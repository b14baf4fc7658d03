"""The network and the classifier the lessons ship with (lessons/assets/): they load, they are what their README says,
and they are good enough that a learner's first run shows readable digits (issue 25).

    judge.npz    reads >= 97% of the real MNIST test digits that ship with tinyddpm right
    network.npz  >= 95% of its guided samples (10 of each digit, the preset's sampler, steps and guidance) are read
                 by that judge as the digit asked for
"""
import json
from pathlib import Path

import numpy as np
import pytest

from tinyddpm import load_for_sampling, load_mnist
from tinyddpm.backend import to_numpy
from tinyddpm.checkpoint import load_checkpoint
from tinyddpm.classifiers.judge import accuracy, classify, load_classifier
from tinyddpm.data.pixels import pixels_to_model_range
from tinyddpm.sampling import sample_classes

ASSETS = Path(__file__).resolve().parents[1] / "lessons" / "assets"
NETWORK, JUDGE = ASSETS / "network.npz", ASSETS / "judge.npz"
pytestmark = pytest.mark.skipif(not NETWORK.is_file() or not JUDGE.is_file(),
                                reason="lessons/assets/network.npz and judge.npz are not in this checkout")


def test_the_files_are_what_the_readme_says():
    made_by = load_checkpoint(NETWORK).extra["made_by"]
    readme = (ASSETS / "README.md").read_text()
    assert made_by["command"] in readme and made_by["commit"] in readme and f"seed {made_by['seed']}" in readme
    params, config, _ = load_for_sampling(NETWORK, use_ema=False)
    assert made_by["steps"] == config.steps and made_by["weights"].startswith("EMA")
    assert all(a.dtype == np.float32 for a in params.values())
    _, info = load_classifier(JUDGE, dataset="mnist")
    assert f"{info['test_accuracy']:.2%}" in readme
    json.dumps(made_by)   # plain data, nothing a loader would have to unpickle


def test_the_judge_reads_real_digits():
    params, _ = load_classifier(JUDGE, dataset="mnist")
    test = load_mnist("test", source="subset")
    assert accuracy(params, pixels_to_model_range(test.images), test.labels) >= 0.97


def test_the_network_draws_digits_the_judge_reads_as_asked():
    params, config, schedule = load_for_sampling(NETWORK, use_ema=False)
    judge, _ = load_classifier(JUDGE, dataset="mnist")
    x = sample_classes(params, config.unet, schedule, classes=range(10), n_per_class=10, sampler=config.sampler,
                       steps=config.sample_steps, guidance=config.guidance, prediction=config.prediction, seed=0)
    asked = np.repeat(np.arange(10), 10)
    read = to_numpy(classify(judge, np.clip(to_numpy(x), -1.0, 1.0)))
    share = float(np.mean(read == asked))
    assert share >= 0.95, f"{share:.0%} of 100 guided samples read as the digit asked for"
