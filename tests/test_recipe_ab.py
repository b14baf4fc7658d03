"""benchmarks/recipe_ab.py: variants at equal wall time, each trained and evaluated, a table and a JSON of every number.

The --quick run uses the MNIST subset shipped with tinyddpm and a classifier trained for a tenth of an epoch in a
temporary folder (the numbers are meaningless; that they are there and finite is what is checked). The step costs
are injected (--costs), so the equal-wall-time step counts are exact; the measurement itself is run once apart.
"""
import importlib.util
import json
import math
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_ab_quick_trains_both_variants_at_equal_wall_time_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))          # no classifier or data cache from elsewhere
    recipe_ab = _load("recipe_ab")
    out = tmp_path / "out"
    # the second variant costs half as much per step: at equal wall time it trains twice the baseline's 6 steps
    assert recipe_ab.main(["--quick", "--source", "subset", "--out", str(out), "--classifier-dir",
                           str(tmp_path / "classifier"), "--classifier-epochs", "0.1",
                           "--costs", "base=0.1,minsnr=0.05"]) == 0
    printed = capsys.readouterr().out
    assert "train: step 6/6" in printed and "train: step 12/12" in printed        # train's progress lines
    assert "| variant | steps | s/step | FID-MNIST |" in printed
    assert "| base | 6 | 0.1000 |" in printed and "| minsnr | 12 | 0.0500 |" in printed
    assert "- minsnr vs base: " in printed
    assert (out / "recipe_ab.md").read_text().strip() in printed

    dump = json.loads((out / "recipe_ab.json").read_text())
    assert dump["baseline"] == "base" and dump["n"] == 20 and dump["sample_seeds"] == 1
    assert set(dump["variants"]) == {"base", "minsnr"}
    assert dump["variants"]["base"]["steps"] == 6 and dump["variants"]["minsnr"]["steps"] == 12
    assert dump["variants"]["minsnr"]["config"]["min_snr_gamma"] == 5.0
    for name, v in dump["variants"].items():
        assert (out / name / "seed0" / "checkpoint.npz").is_file()
        assert v["verdict"] in ("baseline", "better", "worse",
                                "no difference (the difference is smaller than the spread)")
        for metric in ("fid", "precision", "recall", "accuracy"):
            assert all(math.isfinite(v["summary"][metric][k]) for k in ("mean", "min", "max", "spread"))
    assert math.isfinite(dump["floor"]["fid"]["mean"]) and dump["floor"]["n"] == 20


def test_step_costs_are_measured_and_scale_the_steps():
    import tinyddpm as td

    recipe_ab = _load("recipe_ab")
    data = td.load_mnist("train", source="subset")
    configs = {"a": recipe_ab.variant_config("tiny", {}, 4),
               "b": recipe_ab.variant_config("tiny", {"unet": {"attention_resolutions": []}}, 4)}
    assert configs["b"].unet.attention_resolutions == () and configs["b"].steps == 4
    costs = recipe_ab.measure_step_costs(configs, data, warmup=1, steps=1, rounds=2)
    assert set(costs) == {"a", "b"} and all(math.isfinite(c) and c > 0 for c in costs.values())
    assert recipe_ab.cost_neutral({"min_snr_gamma": 5, "lr": 1e-3, "prediction": "v"})
    assert not recipe_ab.cost_neutral({"unet": {"attention_resolutions": []}}) and not recipe_ab.cost_neutral(
        {"batch_size": 64})
    assert recipe_ab.equal_time_steps(100, {"a": 0.2, "b": 0.25, "c": 0.1}, "a") == {"a": 100, "b": 80, "c": 200}


def test_the_verdict_counts_a_difference_smaller_than_the_spread_as_none():
    recipe_ab = _load("recipe_ab")
    base = recipe_ab.summarise([10.0, 11.0, 12.0])                 # mean 11, spread 2
    assert recipe_ab.verdict(recipe_ab.summarise([9.5, 9.6]), base).startswith("no difference")
    assert recipe_ab.verdict(recipe_ab.summarise([8.0, 8.5]), base) == "better"
    assert recipe_ab.verdict(recipe_ab.summarise([14.0, 14.2]), base) == "worse"
