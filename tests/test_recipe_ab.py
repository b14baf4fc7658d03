"""benchmarks/recipe_ab.py: variants at equal wall time, each trained and evaluated, a table and a JSON of every number.

The --quick run uses the MNIST subset shipped with tinyddpm and a classifier trained for a tenth of an epoch in a
temporary folder (the numbers are meaningless; that they are there and finite is what is checked). The step costs
are injected (--costs), so the equal-wall-time step counts are exact; the measurement itself is run once apart.
"""
import json
import math
from pathlib import Path

import pytest
from helpers import load_benchmark, load_example

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_recipe_ab_quick_trains_both_variants_at_equal_wall_time_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))          # no classifier or data cache from elsewhere
    recipe_ab = load_benchmark("recipe_ab")
    out = tmp_path / "out"
    # the second variant costs half as much per step: at equal wall time it trains twice the baseline's 6 steps
    assert recipe_ab.main(["--quick", "--source", "subset", "--out", str(out), "--classifier-dir",
                           str(tmp_path / "classifier"), "--classifier-epochs", "0.1",
                           "--costs", "base=0.1,minsnr=0.05", "--guidance", "1.5,2"]) == 0
    printed = capsys.readouterr().out
    assert "train: step 6/6" in printed and "train: step 12/12" in printed        # train's progress lines
    assert "| variant | steps | s/step | guidance | evaluations | FID-MNIST |" in printed
    for name, steps, cost in (("base", 6, "0.1000"), ("minsnr", 12, "0.0500")):
        for g in ("1.5", "2.0"):
            assert f"| {name} | {steps} | {cost} | {g} | 1 |" in printed           # a row per guidance scale
    assert "- minsnr vs base at guidance 1.5: " in printed and "- minsnr vs base at guidance 2.0: " in printed
    assert (out / "recipe_ab.md").read_text().strip() in printed
    assert (out / "recipe_ab.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    dump = json.loads((out / "recipe_ab.json").read_text())
    assert dump["baseline"] == "base" and dump["n"] == 20 and dump["sample_seeds"] == 1
    assert set(dump["variants"]) == {"base", "minsnr"}
    assert dump["variants"]["base"]["steps"] == 6 and dump["variants"]["minsnr"]["steps"] == 12
    assert dump["variants"]["minsnr"]["config"]["min_snr_gamma"] == 5.0
    assert set(dump["variants"]["minsnr"]["verdicts"]) == {"1.5", "2.0"} and "verdicts" not in dump["variants"]["base"]
    assert all(said.startswith("undecided (one evaluation")                       # one sampling seed: no spread
               for said in dump["variants"]["minsnr"]["verdicts"].values())
    for name, v in dump["variants"].items():
        assert (out / name / "seed0" / "checkpoint.npz").is_file()
        assert sorted(e["guidance"] for e in v["runs"][0]["evaluations"]) == [1.5, 2.0]
        for g in ("1.5", "2.0"):
            for metric in ("fid", "precision", "recall", "accuracy"):
                assert all(math.isfinite(v["summaries"][g][metric][k]) for k in ("mean", "min", "max", "spread"))
    assert math.isfinite(dump["floor"]["fid"]["mean"]) and dump["floor"]["n"] == 20
    assert 0 <= dump["floor"]["real_accuracy"] <= 1                               # the judge on the real digits
    assert f"accuracy of the real pictures {dump['floor']['real_accuracy']:.1%}" in printed


def test_split_runs_train_their_share_then_one_run_evaluates_them_all(tmp_path, monkeypatch, capsys):
    """--only / --train-only in two processes (here: two calls) with the same --costs, then --reuse evaluates."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    recipe_ab = load_benchmark("recipe_ab")
    out = tmp_path / "out"
    common = ["--quick", "--source", "subset", "--out", str(out), "--classifier-dir", str(tmp_path / "classifier"),
              "--classifier-epochs", "0.1", "--costs", "base=0.1,minsnr=0.05"]
    assert recipe_ab.main(common + ["--costs-only"]) == 0
    assert "as --costs: base=0.1,minsnr=0.05" in capsys.readouterr().out and not out.exists()
    assert recipe_ab.main(common + ["--only", "minsnr", "--train-only"]) == 0
    assert (out / "minsnr" / "seed0" / "checkpoint.npz").is_file() and not (out / "base").exists()
    assert recipe_ab.main(common + ["--reuse"]) == 0
    printed = capsys.readouterr().out
    assert "minsnr/seed0/checkpoint.npz: reused (this config, step 12)" in printed and "train: step 6/6" in printed
    first = json.loads((out / "recipe_ab.json").read_text())
    assert set(first["variants"]) == {"base", "minsnr"}
    kept = sorted(p.name for p in (out / "minsnr" / "seed0").glob("evaluation_*.json"))
    assert kept == ["evaluation_n20_g2_tall_seed0.json"]                 # the tiny preset's guidance 2, n = 20
    # a repeat with --reuse measures nothing again: the same numbers, said to be kept
    assert recipe_ab.main(common + ["--reuse"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("(kept from an earlier run)") == 2 and "train: step" not in printed
    again = json.loads((out / "recipe_ab.json").read_text())
    for name in ("base", "minsnr"):
        assert again["variants"][name]["summaries"] == first["variants"][name]["summaries"]
    # --guidance kept: every scale and seed measured so far, nothing new (here: minsnr's 2, base's 2 and, below, 3)
    assert recipe_ab.main(common + ["--reuse", "--guidance", "3", "--only", "base"]) == 0
    capsys.readouterr()
    assert recipe_ab.main(common + ["--reuse", "--guidance", "kept"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("(kept from an earlier run)") == 3 and "| base | 6 | 0.1000 | 3.0 | 1 |" in printed
    kept = json.loads((out / "recipe_ab.json").read_text())["variants"]
    assert set(kept["base"]["summaries"]) == {"2.0", "3.0"} and set(kept["minsnr"]["summaries"]) == {"2.0"}
    assert set(kept["minsnr"]["verdicts"]) == {"2.0"}                             # compared where both were measured
    with pytest.raises(SystemExit, match="add --reuse"):
        recipe_ab.main(common + ["--guidance", "kept"])
    # training a network again drops the measurements of the one it replaces
    assert recipe_ab.main(common + ["--only", "minsnr", "--train-only"]) == 0
    assert not list((out / "minsnr" / "seed0").glob("evaluation_*.json"))


def test_a_variant_samples_with_its_own_guidance_and_shares_a_network_that_learnt_the_same(tmp_path, monkeypatch,
                                                                                           capsys):
    """A variant may set how it is sampled (guidance, guidance_interval): it is evaluated that way, compared with the
    baseline at the baseline's own setting, and a checkpoint trained with other sampling fields is reused for it (they
    change nothing learnt); a field that changes training is not."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    recipe_ab = load_benchmark("recipe_ab")
    out = tmp_path / "out"
    common = ["--quick", "--source", "subset", "--out", str(out), "--classifier-dir", str(tmp_path / "classifier"),
              "--classifier-epochs", "0.1", "--sample-seeds", "2", "--variant", "base={}"]
    assert recipe_ab.main(common + ["--variant", "tuned={}", "--costs", "base=0.1,tuned=0.1"]) == 0
    capsys.readouterr()
    tuned = '--variant=tuned={"guidance": 3, "guidance_interval": [0, 500]}'
    assert recipe_ab.main(common + [tuned, "--costs", "base=0.1,tuned=0.1", "--reuse"]) == 0
    printed = capsys.readouterr().out
    assert "tuned/seed0/checkpoint.npz: reused (this config, step 6)" in printed and "train: step" not in printed
    assert "| tuned | 6 | 0.1000 | 3.0 (t 0-500) | 2 |" in printed
    assert "- tuned at its own guidance 3 at t in [0, 500] vs base at its guidance 2: " in printed
    assert sorted(p.name for p in (out / "tuned" / "seed0").glob("evaluation_*_t0-500_*.json")) == [
        "evaluation_n20_g3_t0-500_seed0.json", "evaluation_n20_g3_t0-500_seed1.json"]
    dump = json.loads((out / "recipe_ab.json").read_text())["variants"]["tuned"]
    assert dump["guidance_interval"] == [0, 500] and dump["verdicts"] == {} and "own_verdict" in dump
    config = recipe_ab.variant_config("tiny", {}, 6)
    kept_run = out / "tuned" / "seed0" / "checkpoint.npz"
    assert recipe_ab.kept_run_differences(kept_run, config) == []
    assert recipe_ab.kept_run_differences(kept_run, recipe_ab.variant_config("tiny", {"lr": 5e-4}, 6)) == [
        "lr: 0.001 -> 0.0005"]
    # under --reuse a variant that would learn something else is refused, not trained over the kept run
    kept = sorted(p.name for p in (out / "tuned" / "seed0").iterdir())
    with pytest.raises(SystemExit, match=r"tuned/seed0/checkpoint.npz is another run \(lr: 0.001 -> 0.0005\)"):
        recipe_ab.main(common + ['--variant=tuned={"lr": 5e-4}', "--costs", "base=0.1,tuned=0.1", "--reuse"])
    assert sorted(p.name for p in (out / "tuned" / "seed0").iterdir()) == kept


def test_step_costs_are_measured_and_scale_the_steps():
    import tinyddpm as td

    recipe_ab = load_benchmark("recipe_ab")
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
    recipe_ab = load_benchmark("recipe_ab")
    base = recipe_ab.summarise([10.0, 11.0, 12.0])                 # mean 11, spread 2
    assert recipe_ab.verdict(recipe_ab.summarise([9.5, 9.6]), base).startswith("no difference")
    assert recipe_ab.verdict(recipe_ab.summarise([8.0, 8.5]), base) == "better"
    assert recipe_ab.verdict(recipe_ab.summarise([14.0, 14.2]), base) == "worse"
    assert recipe_ab.verdict(recipe_ab.summarise([30.0]), base).startswith("undecided")    # 19 worse, but one seed


def test_sampler_sweep_measures_every_scale_and_interval_of_one_network(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    recipe_ab, sweep = load_benchmark("recipe_ab"), load_benchmark("sampler_sweep")
    judge = ["--source", "subset", "--classifier-dir", str(tmp_path / "classifier"), "--classifier-epochs", "0.1"]
    assert recipe_ab.main(["--quick", "--out", str(tmp_path / "ab"), "--costs", "base=0.1,minsnr=0.1", "--only",
                           "base", "--train-only", *judge]) == 0
    checkpoint = tmp_path / "ab" / "base" / "seed0" / "checkpoint.npz"
    out = tmp_path / "sweep"
    assert sweep.main([str(checkpoint), "--guidance", "1,2", "--intervals", "all,0-2", "--sample-seeds", "2",
                       "--n-per-class", "2", "--out", str(out), *judge]) == 0
    printed = capsys.readouterr().out
    for interval in ("all", "0-2"):
        for g in ("1.0", "2.0"):
            assert f"| {interval} | {g} | " in printed
    dump = json.loads((out / "sampler_sweep.json").read_text())
    assert len(dump["rows"]) == 4 and all(len(r["runs"]) == 2 for r in dump["rows"])
    assert [r["runs"][0]["sample_seed"] for r in dump["rows"]] == [0] * 4
    assert all(math.isfinite(r["summary"]["fid"]["mean"]) for r in dump["rows"])
    assert (out / "sampler_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(checkpoint.parent.glob("evaluation_n20_*.json"))) == 8     # 2 scales x 2 intervals x 2 seeds
    assert sweep.main([str(checkpoint), "--guidance", "2", "--intervals", "0-2", "--sample-seeds", "2",
                       "--n-per-class", "2", "--out", str(out), "--reuse", *judge]) == 0
    assert capsys.readouterr().out.count("(kept from an earlier run)") == 2


def test_sampler_sweep_refuses_a_bad_interval_and_a_missing_checkpoint(tmp_path, capsys):
    sweep = load_benchmark("sampler_sweep")
    with pytest.raises(SystemExit) as e:
        sweep.build_parser().parse_args(["x.npz", "--intervals", "all,500-100"])
    assert e.value.code == 2 and "LO <= HI" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no such checkpoint"):
        sweep.main([str(tmp_path / "missing.npz")])


def test_both_scripts_run_from_the_command_line(tmp_path):
    """As a user runs them (a script whose main is never called would pass every in-process test): a bad option
    exits 2 with its name, --help prints the usage."""
    import subprocess
    import sys

    for script in ("recipe_ab.py", "sampler_sweep.py"):
        done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                              cwd=tmp_path)
        assert done.returncode == 0 and f"usage: {script}" in done.stdout
    done = subprocess.run([sys.executable, str(BENCHMARKS / "sampler_sweep.py"), "x.npz", "--intervals", "5-1"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "--intervals" in done.stderr


# ---------------------------------------------------------------------------------------- a folder of pictures

@pytest.fixture(scope="module")
def picture_folders(tmp_path_factory):
    """(labelled, flat): 12 random RGB pictures in each of three class subfolders, and 8 grey ones at the top."""
    from test_image_folder import make_pictures

    root = tmp_path_factory.mktemp("pictures")
    return (make_pictures(root / "classes", classes=["leaf", "moth", "sky"], n=12),
            make_pictures(root / "flat", n=8, grey=True))


def test_recipe_ab_quick_on_a_folder_trains_as_train_images_and_measures_as_evaluate(tmp_path, monkeypatch, capsys,
                                                                                    picture_folders):
    """--quick --data: the variants are the folder's networks (3 RGB classes at 32x32, not MNIST's 1x28x28 and ten),
    the table says FID-folder and which folder, the evaluations are kept beside the checkpoints, and the classifier is
    the one evaluate.py --data FOLDER finds in its cache, with the same real-vs-real floor."""
    from tinyddpm.checkpoint import load_checkpoint
    from tinyddpm.classifiers.judge import CHECKPOINT_NAME, default_classifier_dir, folder_key
    from tinyddpm.data.folder import load_image_folder

    monkeypatch.setenv("HOME", str(tmp_path / "home"))          # the classifier cache: evaluate.py's default one
    monkeypatch.delenv("TINYDDPM_CACHE", raising=False)
    recipe_ab = load_benchmark("recipe_ab")
    folder, out = picture_folders[0], tmp_path / "out"
    assert recipe_ab.main(["--quick", "--data", str(folder), "--out", str(out), "--costs", "base=0.1,minsnr=0.05",
                           "--classifier-epochs", "20"]) == 0
    printed = capsys.readouterr().out
    assert "| variant | steps | s/step | guidance | evaluations | FID-folder |" in printed
    assert "FID-MNIST" not in printed
    assert f"Data: the folder {folder} (FID-folder" in printed
    assert "| base | 6 | 0.1000 | 2.0 | 1 |" in printed and "| minsnr | 12 | 0.0500 | 2.0 | 1 |" in printed
    assert (out / "recipe_ab.md").read_text().strip() in printed
    assert (out / "recipe_ab.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    dump = json.loads((out / "recipe_ab.json").read_text())
    assert dump["data"] == str(folder) and dump["fid_name"] == "FID-folder" and dump["preset"] == "tiny"
    assert dump["class_names"] == ["leaf", "moth", "sky"] and dump["n"] == 6       # 3 classes x 2 samples
    for name, v in dump["variants"].items():
        unet = v["config"]["unet"]
        assert (unet["image_channels"], unet["image_size"], unet["num_classes"]) == (3, 32, 3)
        assert unet["attention_resolutions"] == [16]        # tiny's 14 of 28, the same fraction of 32
        seed0 = out / name / "seed0"
        assert sorted(p.name for p in seed0.glob("evaluation_*.json")) == ["evaluation_n6_g2_tall_seed0.json"]
        assert load_checkpoint(seed0 / "checkpoint.npz").extra["class_names"] == ["leaf", "moth", "sky"]
        for metric in ("fid", "precision", "recall", "accuracy"):
            assert math.isfinite(v["summaries"]["2.0"][metric]["mean"])
    assert dump["variants"]["minsnr"]["config"]["min_snr_gamma"] == 5.0

    data = load_image_folder(folder, image_size=32)
    cache = default_classifier_dir(folder_key(data.images, data.labels)) / CHECKPOINT_NAME
    assert cache.is_file()
    evaluate = load_example("evaluate")
    assert evaluate.main([str(out / "base" / "seed0" / "checkpoint.npz"), "--data", str(folder), "--configs", "ddim:2",
                          "--n-per-class", "2", "--out", str(tmp_path / "evaluation"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"loaded {cache}" in printed and "classifier: step" not in printed      # found, not trained again
    assert f"real-vs-real: FID-folder {dump['floors'][0]['fid']:.2f}, precision" in printed


def test_a_folder_study_builds_the_config_train_images_builds_and_refuses_flat_or_missing_folders(tmp_path, capsys,
                                                                                                   picture_folders):
    from dataclasses import replace

    recipe_ab = load_benchmark("recipe_ab")
    labelled, flat = picture_folders
    args = recipe_ab.build_parser().parse_args(["--data", str(labelled)])
    recipe_ab.settle(args)
    assert args.preset == "images-cpu" and args.steps == 2800
    base = recipe_ab.folder_config(args, recipe_ab.folder_data(args))
    train_images = load_example("train_images")
    options = train_images.parse_args(["--data", str(labelled), "--preset", "images-cpu"])   # its defaults
    pictures = train_images.load_pictures(options, *train_images.picture_format(options))
    state = train_images.build_state(options, pictures)
    assert recipe_ab.variant_config(base, {}, 2800) == replace(state.config, checkpoint_every=0, sample_every=0)
    assert recipe_ab.variant_config(base, {"unet": {"base_channels": 8}}, 9).unet == replace(state.config.unet,
                                                                                             base_channels=8)
    capsys.readouterr()
    for folder, said in ((flat, "is a flat folder: the study needs one subfolder per class"),
                         (tmp_path / "missing", ": no such folder")):
        with pytest.raises(SystemExit) as e:
            recipe_ab.main(["--quick", "--data", str(folder), "--out", str(tmp_path / "out")])
        message = str(e.value.code)
        assert message.startswith(f"recipe_ab.py: --data {folder}") and said in message and "\n" not in message
    assert not (tmp_path / "out").exists() and capsys.readouterr().out == ""       # refused before any work
