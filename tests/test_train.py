"""Training loop: exact resume, clear errors for bad checkpoints, the randomness of a step, config and presets."""
import json
import re
from dataclasses import replace

import numpy as np
import pytest

import tinyddpm.training.loop as train_module
from tinyddpm.backend import get_device, to_numpy
from tinyddpm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tinyddpm import (PRESETS, TrainConfig, default_preset, load_for_sampling, new_state, preset, resume_state,
                      sample_classes, sample_digits, save_state, train, train_step)
from tinyddpm.training.resume import CHECKPOINT_NAME
from tinyddpm.nn.unet import UNetConfig

from helpers import NoHostReads, treat_as_device

TINY_UNET = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), attention_resolutions=(4,), heads=2,
                       groups=4, dropout=0.1)
TINY = TrainConfig(unet=TINY_UNET, steps=6, batch_size=8, lr=1e-3, warmup_steps=2, lr_decay="cosine",
                   ema_decay=0.9, log_every=2, checkpoint_every=2, sample_every=0)


def synthetic(n=40, size=8, seed=0):
    """n uint8 images (n, size, size) of random blobs and labels 0..9."""
    rng = np.random.default_rng(seed)
    images = (rng.random((n, size, size)) > 0.6).astype(np.uint8) * 255
    return images, rng.integers(0, 10, n)


def as_host(d):
    return {k: to_numpy(v) for k, v in d.items()}


def assert_dicts_equal(a, b):
    assert set(a) == set(b)
    for k in a:
        assert np.array_equal(to_numpy(a[k]), to_numpy(b[k])), k


# --------------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------------

def test_resume_equals_uninterrupted_run(tmp_path):
    images, labels = synthetic()
    whole = train(new_state(TINY, images, labels), tmp_path / "whole", progress=False)
    assert whole.step == 6 and len(whole.losses) == 6

    first = train(new_state(TINY, images, labels), tmp_path / "split", until=3, progress=False)
    assert first.step == 3
    resumed = resume_state(tmp_path / "split" / CHECKPOINT_NAME, images, labels)
    assert resumed.step == 3 and resumed.losses == first.losses  # the loss history survives the resume
    train(resumed, tmp_path / "split", progress=False)

    if get_device() == "cpu":  # NumPy generators resume exactly: the same losses and weights, bit for bit
        assert resumed.losses == whole.losses
        assert_dicts_equal(resumed.params, whole.params)
        assert_dicts_equal(resumed.ema.params, whole.ema.params)
        assert_dicts_equal(resumed.optimizer.m, whole.optimizer.m)
        assert_dicts_equal(resumed.optimizer.v, whole.optimizer.v)
    else:  # a CuPy generator is re-seeded on resume: the first part matches, the rest is a valid run
        assert resumed.losses[:3] == whole.losses[:3] and np.all(np.isfinite(resumed.losses))
    final = load_checkpoint(tmp_path / "split" / CHECKPOINT_NAME)
    assert final.step == 6 and final.extra["losses"] == resumed.losses


def test_resume_can_extend_the_run(tmp_path):
    images, labels = synthetic()
    config = replace(TINY, lr_decay="constant", steps=2)
    train(new_state(config, images, labels), tmp_path, progress=False)
    state = resume_state(tmp_path / CHECKPOINT_NAME, images, labels, steps=4, checkpoint_every=1)
    assert state.config.steps == 4 and state.config.checkpoint_every == 1
    train(state, tmp_path, progress=False)
    assert state.step == 4 and len(state.losses) == 4
    with pytest.raises(ValueError, match="only .* can change on resume"):
        resume_state(tmp_path / CHECKPOINT_NAME, images, labels, lr=1.0)
    with pytest.raises(ValueError, match="beyond the requested total"):
        resume_state(tmp_path / CHECKPOINT_NAME, images, labels, steps=3)


def test_checkpoints_written_every_k_steps(tmp_path, monkeypatch):
    images, labels = synthetic()
    saved = []
    original = train_module.save_state
    def spy(state, path):
        saved.append(state.step)
        return original(state, path)

    monkeypatch.setattr(train_module, "save_state", spy)
    train(new_state(replace(TINY, checkpoint_every=2, steps=5), images, labels), tmp_path, progress=False)
    assert saved == [2, 4, 5]  # every 2 steps and at the end


# --------------------------------------------------------------------------------------------
# bad checkpoints
# --------------------------------------------------------------------------------------------

@pytest.fixture
def trained(tmp_path):
    images, labels = synthetic()
    train(new_state(replace(TINY, steps=2), images, labels), tmp_path / "run", progress=False)
    return tmp_path / "run" / CHECKPOINT_NAME, images, labels


def test_corrupt_checkpoint_names_the_file(trained, tmp_path):
    path, images, labels = trained
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for bad in (garbage, truncated):
        with pytest.raises(CheckpointError, match=re.escape(str(bad))):
            resume_state(bad, images, labels)
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        resume_state(tmp_path / "missing.npz", images, labels)


def test_foreign_checkpoint_names_the_file(trained, tmp_path):
    path, images, labels = trained
    ckpt = load_checkpoint(path)
    foreign = tmp_path / "foreign.npz"
    save_checkpoint(foreign, config={"lr": 1e-3}, params=ckpt.params)  # a tinyddpm checkpoint of another kind
    with pytest.raises(CheckpointError, match=re.escape(str(foreign)) + ".*not one written by tinyddpm.train"):
        resume_state(foreign, images, labels)
    weights_only = tmp_path / "weights_only.npz"
    save_checkpoint(weights_only, config=ckpt.config, params=ckpt.params, step=ckpt.step)
    with pytest.raises(CheckpointError, match=re.escape(str(weights_only)) + ": has no ema.*not resumed"):
        resume_state(weights_only, images, labels)
    other_net = dict(ckpt.config, train=dict(ckpt.config["train"], unet=dict(ckpt.config["train"]["unet"],
                                                                                base_channels=16)))
    mismatched = tmp_path / "mismatched.npz"
    save_checkpoint(mismatched, config=other_net, params=ckpt.params, ema=ckpt.ema,
                    optimizer_state=ckpt.optimizer_state, step=ckpt.step, rng_state=ckpt.rng_state, extra=ckpt.extra)
    with pytest.raises(CheckpointError, match=re.escape(str(mismatched)) + ".*shape"):
        resume_state(mismatched, images, labels)


def test_resume_on_other_data_names_the_file(trained):
    path, images, labels = trained
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*other data"):
        resume_state(path, images[:30], labels[:30])


def with_nan(ckpt, part: str, name: str):
    """The checkpoint's ``part`` ('params', 'ema' or 'optimizer_state') with entry ``name`` set to NaN."""
    arrays = dict(getattr(ckpt, part))
    arrays[name] = arrays[name] * np.nan
    return arrays


@pytest.mark.parametrize("part, name, what", [
    ("params", "conv_in.w", "the weights 'conv_in.w'"),
    ("ema", "avg/conv_out.b", "the EMA weights 'conv_out.b'"),
    ("optimizer_state", "m/conv_in.b", "the optimizer moments 'm/conv_in.b'"),
])
def test_checkpoint_with_nan_is_refused_naming_the_tensor(trained, tmp_path, part, name, what):
    path, images, labels = trained
    ckpt = load_checkpoint(path)
    parts = {"params": ckpt.params, "ema": ckpt.ema, "optimizer_state": ckpt.optimizer_state}
    parts[part] = with_nan(ckpt, part, name)
    bad = tmp_path / "nan.npz"
    save_checkpoint(bad, config=ckpt.config, step=ckpt.step, rng_state=ckpt.rng_state, extra=ckpt.extra, **parts)
    with pytest.raises(CheckpointError, match=re.escape(f"{bad}: {what} hold") + ".*NaN or infinite"):
        resume_state(bad, images, labels)
    use_ema = part == "ema"
    if part != "optimizer_state":   # sampling reads one set of weights: the other set is not checked
        with pytest.raises(CheckpointError, match=re.escape(str(bad)) + ".*NaN or infinite"):
            load_for_sampling(bad, use_ema=use_ema)
        load_for_sampling(bad, use_ema=not use_ema)


def test_nan_weights_are_never_saved_over_the_last_checkpoint(trained):
    path, images, labels = trained
    state = resume_state(path, images, labels, steps=4)
    before = path.read_bytes()
    state.params["conv_out.b"][...] = np.inf
    with pytest.raises(FloatingPointError, match="save_state: the weights 'conv_out.b' hold .* at step 2; not saving"):
        save_state(state, path)
    assert path.read_bytes() == before


def test_resume_beyond_the_requested_total_is_refused(trained):
    path, images, labels = trained
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": is at step 2, beyond the requested total of 1"):
        resume_state(path, images, labels, steps=1)


# --------------------------------------------------------------------------------------------
# what a step does
# --------------------------------------------------------------------------------------------

def test_without_a_terminal_training_prints_log_lines(capsys):
    images, labels = synthetic()
    config = replace(TINY, steps=40, log_every=2, checkpoint_every=0)
    train(new_state(config, images, labels), progress=True, log_lines=4)  # pytest's stdout is not a TTY
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("train: step")]
    assert [int(re.match(r"train: step (\d+)/40  ", l).group(1)) for l in lines] == [10, 20, 30, 40], lines
    assert all(re.search(r"  loss \d+\.\d{4}  \d+ img/s  elapsed ", l) for l in lines), lines
    assert all("ETA" in l for l in lines[:-1]) and "ETA" not in lines[-1], lines   # the last line: the run's end
    train(new_state(config, images, labels), progress=False, log_lines=0)
    assert "train: step" not in capsys.readouterr().out


def test_step_draws_uniform_t_and_drops_labels(monkeypatch):
    images, labels = synthetic(n=64)
    config = replace(TINY, batch_size=64, p_uncond=0.5, num_timesteps=50, steps=20)
    seen = []
    import tinyddpm.training.loop as loop_module  # where train_step calls the forward

    original = loop_module.unet_forward

    def spy(params, cfg, x, t, y, **kw):
        seen.append((to_numpy(t).copy(), to_numpy(y).copy()))
        return original(params, cfg, x, t, y, **kw)

    monkeypatch.setattr(loop_module, "unet_forward", spy)
    state = new_state(config, images, labels)
    for _ in range(8):
        train_step(state)
    t = np.concatenate([s[0] for s in seen])
    y = np.concatenate([s[1] for s in seen])
    assert t.min() >= 0 and t.max() < 50 and len(np.unique(t)) > 40  # t ~ U{0 .. T-1}
    null = y == TINY_UNET.null_label
    assert 0.4 < null.mean() < 0.6                                     # p_uncond = 0.5
    first_batch = labels[state.batches.permutation(0)[:64]]           # the labels kept are the true ones
    kept = ~null[:64]
    assert np.array_equal(y[:64][kept], first_batch[kept])


def test_a_step_split_over_cores_matches_one_shard_and_repeats_exactly(monkeypatch):
    images, labels = synthetic()
    config = replace(TINY, unet=replace(TINY_UNET, dropout=0.0), dtype="float64", steps=3)
    runs = {}
    for shards in ("1", "2", "3", "2"):
        monkeypatch.setenv("TINYDDPM_SHARDS", shards)
        state = new_state(config, images, labels)
        losses = [float(train_step(state)) for _ in range(3)]
        runs.setdefault(shards, []).append((losses, as_host(state.params)))
    (one_losses, one_params), = runs["1"]
    for shards in ("2", "3"):
        losses, params = runs[shards][0]
        assert np.allclose(losses, one_losses, rtol=1e-12, atol=0)
        assert all(np.allclose(params[k], one_params[k], rtol=1e-10, atol=1e-12) for k in params)
    (first, p1), (second, p2) = runs["2"]   # the same shard count: bit for bit (exact resume relies on it)
    assert first == second
    assert_dicts_equal(p1, p2)


def test_losses_stay_on_device_until_flushed():
    images, labels = synthetic()
    state = new_state(replace(TINY, log_every=4), images, labels)
    train_step(state)
    train_step(state)
    assert len(state.pending) == 2 and state.losses == []
    window = state.flush_losses()
    assert len(window) == 2 and state.losses == window and state.pending == []


def test_nan_loss_stops_training():
    images, labels = synthetic()
    state = new_state(TINY, images, labels)
    state.params["conv_out.b"][...] = np.nan
    with pytest.raises(FloatingPointError, match="loss is nan at step 1"):
        train(state, None, progress=False)


def test_float64_training_keeps_dtype(tmp_path):
    images, labels = synthetic()
    state = train(new_state(replace(TINY, dtype="float64", steps=2), images, labels), tmp_path, progress=False)
    assert all(p.dtype == np.float64 for p in state.params.values())
    params, config, _ = load_for_sampling(tmp_path / CHECKPOINT_NAME)
    assert config.dtype == "float64" and params["conv_in.w"].dtype == np.float64


def test_unconditional_training():
    images, _ = synthetic()
    config = replace(TINY, unet=replace(TINY_UNET, num_classes=None), p_uncond=0.0, steps=2)
    state = train(new_state(config, images), None, progress=False)
    assert len(state.losses) == 2 and np.all(np.isfinite(state.losses))


# --------------------------------------------------------------------------------------------
# sampling from a checkpoint
# --------------------------------------------------------------------------------------------

def test_load_for_sampling_uses_ema_by_default(trained):
    path, _, _ = trained
    ckpt = load_checkpoint(path)
    ema, config, schedule = load_for_sampling(path)
    raw, _, _ = load_for_sampling(path, use_ema=False)
    assert_dicts_equal(ema, ckpt.ema_params)
    assert_dicts_equal(raw, ckpt.params)
    assert schedule.num_timesteps == config.num_timesteps
    x = sample_classes(ema, config.unet, schedule, [0, 3, 7], 2, sampler="ddim", steps=3, guidance=2.0, seed=1)
    assert x.shape == (6, 1, 8, 8) and x.dtype == np.float32 and np.all(np.isfinite(to_numpy(x)))
    again = sample_digits(ema, config.unet, schedule, [0, 3, 7], 2, sampler="ddim", steps=3, guidance=2.0, seed=1)
    assert np.array_equal(to_numpy(x), to_numpy(again))          # the MNIST spelling draws the same samples
    with pytest.raises(ValueError, match="classes \\[12\\]"):
        sample_classes(ema, config.unet, schedule, [12], 1, steps=2)
    for kwargs, message in [({"n_per_class": 0}, "sample_classes: n_per_class must be an integer >= 1, got 0"),
                            ({"classes": []}, "sample_classes: classes is empty"),
                            ({"guidance": float("nan")}, "sample_classes: guidance must be a finite number, got nan"),
                            ({"sampler": "euler"}, "sample_classes: unknown sampler 'euler'"),
                            ({"seed": -1}, "sampler: seed must be >= 0"),
                            ({"steps": 1000}, "num_steps=1000 must be between 1 and 999 for the schedule's T=1000")]:
        args = dict({"classes": [1], "n_per_class": 1, "steps": 2}, **kwargs)
        with pytest.raises(ValueError, match=re.escape(message)):
            sample_classes(ema, config.unet, schedule, **args)


def test_samples_with_nan_are_refused_not_drawn(trained):
    path, _, _ = trained
    ema, config, schedule = load_for_sampling(path)
    ema["conv_out.b"] = ema["conv_out.b"] * np.nan   # the network outputs NaN everywhere
    with pytest.raises(FloatingPointError, match=r"sample_classes: 128 of 128 sample values are NaN or infinite "
                                                 r"\(ddim, 3 steps, guidance 2\)"):
        sample_digits(ema, config.unet, schedule, [0, 1], 1, sampler="ddim", steps=3, guidance=2.0)


# --------------------------------------------------------------------------------------------
# config and presets
# --------------------------------------------------------------------------------------------

def test_config_round_trips_through_json():
    config = replace(PRESETS["cpu"], min_snr_gamma=5.0, betas=(0.9, 0.99), guidance_interval=(0, 575))
    back = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config and back.guidance_interval == (0, 575)       # JSON's list is the tuple again
    older = {k: v for k, v in config.to_dict().items() if k != "guidance_interval"}
    assert TrainConfig.from_dict(older).guidance_interval is None      # a run from before the field: every step
    with pytest.raises(ValueError, match="unknown keys \\['bogus'\\]"):
        TrainConfig.from_dict(dict(config.to_dict(), bogus=1))


def test_previews_sample_with_the_runs_guidance_interval(tmp_path, monkeypatch):
    """A run's guidance_interval reaches its preview grids (the final pictures: tests/test_examples.py)."""
    import tinyddpm.sampling as sampling
    seen = []
    real = sampling.sample_classes
    monkeypatch.setattr(sampling, "sample_classes", lambda *a, **k: seen.append(k["guidance_interval"]) or real(*a, **k))
    images, labels = synthetic()
    train(new_state(replace(TINY, steps=2, sample_every=1, guidance_interval=(3, 700)), images, labels), tmp_path,
          progress=False)
    assert seen == [(3, 700)] and (tmp_path / "previews" / "step_000001.png").is_file()


def test_presets_are_valid():
    for name in PRESETS:
        preset(name)
    assert preset("cpu", steps=10).steps == 10
    assert default_preset() == ("gpu" if get_device() == "cuda" else "cpu")
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset("huge")


@pytest.mark.parametrize("field, value, message", [
    ("prediction", "noise", "prediction must be one of"),
    ("p_uncond", 1.0, "p_uncond must lie in"),
    ("lr", 0.0, "lr must be > 0"),
    ("sampler", "euler", "sampler must be one of"),
    ("dtype", "float16", "dtype must be"),
])
def test_bad_config_is_refused(field, value, message):
    with pytest.raises(ValueError, match=f"TrainConfig: .*{message}"):
        replace(TINY, **{field: value}).validate()


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "steps must be an integer >= 1, got 0"),
    ("steps", 2.5, "steps must be an integer >= 1, got 2.5"),
    ("batch_size", True, "batch_size must be an integer >= 1, got True"),
    ("seed", -1, "seed must be an integer >= 0, got -1"),
    ("final_per_class", 0, "final_per_class must be an integer >= 1"),
    ("preview_per_class", -1, "preview_per_class must be an integer >= 1"),
    ("lr", float("nan"), "lr must be a finite number, got nan"),
    ("guidance", float("inf"), "guidance must be a finite number, got inf"),
    ("ema_decay", float("nan"), "ema_decay must be a finite number"),
    ("sample_steps", 1000, "sample_steps must be at most 999 for sampler 'dpm\\+\\+2m'"),
    ("betas", (0.9, float("nan")), "betas must be two numbers in \\[0, 1\\)"),
    ("guidance_interval", (500, 100), "guidance_interval must be two integer timesteps 0 <= lo <= hi"),
    ("guidance_interval", (0.5, 100), "guidance_interval must be two integer timesteps"),
    ("guidance_interval", 7, "guidance_interval must be two timesteps"),
    ("guidance_interval", (1000, 1200), "guidance_interval \\(1000, 1200\\) starts beyond the last timestep 999"),
])
def test_config_counts_are_integers_and_numbers_finite(field, value, message):
    with pytest.raises(ValueError, match=f"TrainConfig: .*{message}"):
        replace(TINY, **{field: value}).validate()
    replace(TINY, sampler="ddim", sample_steps=1000).validate()   # DDIM takes up to T steps, DPM-Solver T - 1


def test_bad_data_is_refused():
    images, labels = synthetic()
    with pytest.raises(ValueError, match=r"images \(40, 8, 8\) do not fit the U-Net's image_size 28"):
        new_state(replace(TINY, unet=replace(TINY_UNET, image_size=28)), images, labels)
    with pytest.raises(TypeError, match="images must be uint8"):
        new_state(TINY, images.astype(np.float32), labels)
    with pytest.raises(ValueError, match="labels must lie in 0..9"):
        new_state(TINY, images, labels + 5)
    with pytest.raises(ValueError, match="needs labels"):
        new_state(TINY, images, None)
    with pytest.raises(ValueError, match=r"train: no images to train on \(images \(0, 8, 8\)\)"):
        new_state(TINY, images[:0], labels[:0])


def test_step_reads_nothing_back_from_the_device(monkeypatch):
    """train_step queues work and returns: no int(), float(), if or item() of an array (a GPU wait each)."""
    if get_device() != "cpu":
        pytest.skip("the stand-in for GPU arrays is a NumPy subclass")
    treat_as_device(monkeypatch)
    images, labels = synthetic()
    state = new_state(replace(TINY, p_uncond=0.5, min_snr_gamma=5.0), images, labels)
    state.batches.images = state.batches.images.view(NoHostReads)
    state.batches.labels = state.batches.labels.view(NoHostReads)
    for name in state.params:  # updated in place from here on, like the GPU arrays they stand for
        state.params[name] = state.params[name].view(NoHostReads)
    for flat in (state.flat.params, state.flat.grads, state.flat.m, state.flat.v, state.flat.avg):
        flat.data = flat.data.view(NoHostReads)  # the one-pass update reads and writes these, not the named views
    for _ in range(3):
        train_step(state)  # raises AssertionError on a value read back to the host
    assert len(state.flush_losses()) == 3  # the one read, every log_every steps
