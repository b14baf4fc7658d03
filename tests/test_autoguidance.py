"""benchmarks/autoguidance.py: the guided prediction's rule, the study's table and files, and its refusals.

The rule is checked against its two special cases, each written independently: the paper's d + a (D - d) and
tinyddpm's GuidedModel (classifier-free guidance in an interval). The end-to-end run uses two networks of the tiny
preset trained a few steps by recipe_ab.py --quick (the numbers are meaningless; that they are there is checked).
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import load_benchmark

import tinyddpm as td
from tinyddpm.diffusion import GuidedModel

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def toy_models():
    """Two fake networks whose outputs depend on x, t and the label (10 is the null label), and a call counter."""
    calls = {"good": 0, "bad": 0}

    def good(x, t, labels):
        calls["good"] += 1
        return np.sin(x) * (1.0 + labels)[:, None, None, None] + 1e-3 * t[:, None, None, None]

    def bad(x, t, labels):
        calls["bad"] += 1
        return np.cos(x) * (0.5 + labels)[:, None, None, None] - 2e-3 * t[:, None, None, None]

    return good, bad, calls


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 1, 4, 4))                       # (N, C, H, W) float64
    t = np.array([0, 100, 300, 575, 576, 900])                  # inside 0-575 for the first four
    labels = np.array([0, 3, 9, 1, 4, 7])
    return x, t, labels


def test_autoguidance_alone_is_the_papers_extrapolation_from_the_bad_network(batch):
    ag = load_benchmark("autoguidance")
    good, bad, calls = toy_models()
    x, t, labels = batch
    for a in (0.0, 1.5, 2.0, 3.0):
        out = ag.AutoGuidedModel(good, bad, a, 1.0, null_label=10)(x, t, labels)
        d = bad(x, t, labels)
        np.testing.assert_allclose(out, d + a * (good(x, t, labels) - d), rtol=0, atol=1e-12)
    calls.update(good=0, bad=0)
    plain = ag.AutoGuidedModel(good, bad, 1.0, 1.0, null_label=10)(x, t, labels)
    assert np.array_equal(plain, good(x, t, labels))             # a = w = 1: the conditional prediction itself
    assert calls == {"good": 2, "bad": 0}                         # and the bad network is never run


def test_classifier_free_guidance_alone_equals_guided_model_in_and_out_of_the_interval(batch):
    ag = load_benchmark("autoguidance")
    good, bad, calls = toy_models()
    x, t, labels = batch
    for interval in (None, (0, 575)):
        for w in (0.0, 1.5, 2.0):
            out = ag.AutoGuidedModel(good, bad, 1.0, w, null_label=10, interval=interval)(x, t, labels)
            want = GuidedModel(good, w, null_label=10, interval=interval)(x, t, labels)
            assert np.array_equal(out, want)                     # the same mix (cfg_combine), to the last bit
    assert calls["bad"] == 0
    out = ag.AutoGuidedModel(good, bad, 1.0, 3.0, null_label=10, interval=(0, 575))(x, t, labels)
    np.testing.assert_allclose(out[4:], good(x, t, labels)[4:], rtol=0, atol=1e-15)   # t > 575: conditional only


def test_both_together_add_their_two_pushes(batch):
    ag = load_benchmark("autoguidance")
    good, bad, _ = toy_models()
    x, t, labels = batch
    a, w = 2.0, 1.75
    out = ag.AutoGuidedModel(good, bad, a, w, null_label=10, interval=(0, 575))(x, t, labels)
    cond, uncond, worse = good(x, t, labels), good(x, t, np.full(6, 10)), bad(x, t, labels)
    inside = ((t >= 0) & (t <= 575))[:, None, None, None]
    want = cond + (a - 1) * (cond - worse) + np.where(inside, w - 1, 0.0) * (cond - uncond)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def two_networks(tmp_path_factory):
    """Two tiny MNIST networks (6 and 12 steps of the tiny preset), a classifier and a HOME, made once."""
    root = tmp_path_factory.mktemp("autoguidance")
    judge = ["--source", "subset", "--classifier-dir", str(root / "classifier"), "--classifier-epochs", "0.1"]
    recipe_ab = load_benchmark("recipe_ab")
    assert recipe_ab.main(["--quick", "--out", str(root / "ab"), "--costs", "base=0.1,minsnr=0.05", "--train-only",
                           *judge]) == 0
    return root / "ab" / "base" / "seed0" / "checkpoint.npz", root / "ab" / "minsnr" / "seed0" / "checkpoint.npz", judge


def test_the_study_measures_every_setting_keeps_each_evaluation_and_reuses_it(tmp_path, monkeypatch, capsys,
                                                                               two_networks):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ag = load_benchmark("autoguidance")
    good, bad, judge = two_networks
    out = tmp_path / "study"
    argv = [str(good), str(bad), "--settings", "1:1,2:1,2:1.5", "--guidance-interval", "0,500", "--n-per-class", "2",
            "--out", str(out), *judge]
    assert ag.main(argv) == 0
    printed = capsys.readouterr().out
    for a, w in (("1", "1"), ("2", "1"), ("2", "1.5")):
        assert f"| {a} | {w} | " in printed                                     # a row per setting
    dump = json.loads((out / "autoguidance.json").read_text())
    assert [(r["autoguidance"], r["guidance"]) for r in dump["rows"]] == [(1, 1), (2, 1), (2, 1.5)]
    assert all(math.isfinite(r["summary"][k]["mean"]) for r in dump["rows"] for k in ("fid", "accuracy"))
    assert (out / "autoguidance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    real = dump["floor"]["real_accuracy"]                                        # the judge on the real digits
    assert f"accuracy of the real pictures {real:.1%}" in (out / "autoguidance.md").read_text()
    assert len(list((out / "evaluations").glob("n20_*_t0-500_dpm++2m20_seed0.json"))) == 3
    assert ag.main(argv) == 0 and "kept from an earlier run" not in capsys.readouterr().out   # no --reuse: drawn again
    assert ag.main([*argv, "--reuse"]) == 0
    assert capsys.readouterr().out.count("(kept from an earlier run)") == 3


def test_networks_that_cannot_guide_each_other_are_refused_in_one_line(tmp_path, monkeypatch, capsys, two_networks):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ag = load_benchmark("autoguidance")
    good, bad, judge = two_networks
    with pytest.raises(SystemExit) as e:
        ag.main([str(good), str(tmp_path / "missing.npz"), *judge])
    assert e.value.code == 2 and "bad checkpoint" in capsys.readouterr().err
    kind = td.load_for_sampling(good)[1].prediction
    other_kind = "v" if kind != "v" else "eps"
    recipe_ab = load_benchmark("recipe_ab")         # the good network's recipe, predicting another kind
    variant = f'base={{"prediction": "{other_kind}"}}'
    assert recipe_ab.main(["--quick", "--out", str(tmp_path / "v"), "--variant", variant, "--costs", "base=0.1",
                           "--train-only", *judge]) == 0
    other = tmp_path / "v" / "base" / "seed0" / "checkpoint.npz"
    with pytest.raises(SystemExit) as e:
        ag.main([str(good), str(other), *judge])
    assert e.value.code == 2 and "prediction" in capsys.readouterr().err


def test_the_script_runs_from_the_command_line(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "autoguidance.py"), "--help"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 0 and "usage: autoguidance.py" in done.stdout
    done = subprocess.run([sys.executable, str(BENCHMARKS / "autoguidance.py"), "a.npz", "b.npz", "--settings", "2"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "--settings" in done.stderr and "Traceback" not in done.stderr
