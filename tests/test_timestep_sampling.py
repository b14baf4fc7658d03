"""diffusion/timestep_sampling.py: the distribution of training timesteps (uniform, or EDM's log-normal in sigma).

The log-normal probabilities are checked against their definition drawn directly: ln sigma ~ N(mean, std^2), then
the timestep whose ln sigma_t is nearest (found by brute force over all T, not through the module's edges).
"""
import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyddpm as td
from tinyddpm.diffusion import draw_timesteps, make_schedule, timestep_probabilities
from tinyddpm.training import loop


@settings(max_examples=40, deadline=None)
@given(schedule=st.sampled_from(["linear", "cosine", "sigmoid"]), T=st.integers(21, 1000),
       mean=st.floats(-4, 3), std=st.floats(0.05, 3))
def test_probabilities_are_a_distribution_whose_median_is_the_lognormal_median(schedule, T, mean, std):
    s = make_schedule(schedule, T)
    p = timestep_probabilities(s, "lognormal", (mean, std))
    assert p.shape == (T,) and p.dtype == np.float64 and np.all(p >= 0) and abs(p.sum() - 1) < 1e-12
    # the mass of the timesteps with sigma_t below e^mean is one half, up to the one timestep straddling it
    log_sigma = -0.5 * s.log_snr
    below = p[log_sigma < mean].sum()
    straddling = p[np.argmin(np.abs(log_sigma - mean))]
    assert abs(below - 0.5) <= straddling + 1e-12


def test_lognormal_probabilities_match_drawing_ln_sigma_and_taking_the_nearest_timestep():
    s = make_schedule("linear", 1000)
    mean, std = -1.2, 1.2
    p = timestep_probabilities(s, "lognormal", (mean, std))
    rng = np.random.default_rng(0)
    n = 400_000
    ln_sigma = rng.normal(mean, std, size=n)                            # (n,)
    log_sigma_t = -0.5 * s.log_snr                                      # (T,)
    nearest = np.empty(n, dtype=np.int64)
    for i in range(0, n, 20_000):                                       # (chunk, T) distances, brute force
        nearest[i:i + 20_000] = np.argmin(np.abs(ln_sigma[i:i + 20_000, None] - log_sigma_t[None, :]), axis=1)
    counts = np.bincount(nearest, minlength=1000) / n
    # binomial standard error per timestep; 6 of them is far beyond chance over 1000 bins
    assert np.all(np.abs(counts - p) <= 6 * np.sqrt(p * (1 - p) / n) + 1e-6)
    assert p[:500].sum() > 0.97          # the module docstring's claim: ~98% of the mass below sigma = 3.4 (t < 500)


def test_uniform_is_uniform_and_draws_the_same_stream_as_before():
    s = make_schedule("linear", 1000)
    p = timestep_probabilities(s)
    assert np.array_equal(p, np.full(1000, 1e-3))
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    assert np.array_equal(draw_timesteps(a, 64, s), b.integers(0, 1000, size=64))   # a uniform run is unchanged


def test_lognormal_draws_follow_the_probabilities():
    s = make_schedule("cosine", 100)
    p = timestep_probabilities(s, "lognormal", (0.0, 0.8))
    t = draw_timesteps(np.random.default_rng(1), 200_000, s, "lognormal", (0.0, 0.8))
    assert t.dtype.kind == "i" and t.min() >= 0 and t.max() < 100
    counts = np.bincount(t, minlength=100) / len(t)
    assert np.all(np.abs(counts - p) <= 6 * np.sqrt(p * (1 - p) / len(t)) + 1e-6)


def test_bad_choices_are_refused_with_their_name():
    s = make_schedule("linear", 50)
    with pytest.raises(ValueError, match="distribution"):
        timestep_probabilities(s, "beta")
    with pytest.raises(ValueError, match="std > 0"):
        timestep_probabilities(s, "lognormal", (0.0, 0.0))
    base = td.preset("tiny")
    with pytest.raises(ValueError, match="t_distribution"):
        dataclasses.replace(base, t_distribution="normal").validate()
    with pytest.raises(ValueError, match="t_lognormal"):
        dataclasses.replace(base, t_distribution="lognormal", t_lognormal=(-1.2, -1.0)).validate()


def test_the_config_keeps_its_choice_through_json_and_old_configs_train_uniformly():
    cfg = dataclasses.replace(td.preset("tiny"), t_distribution="lognormal", t_lognormal=(-1.0, 0.5))
    assert td.TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    old = td.preset("tiny").to_dict()
    del old["t_distribution"], old["t_lognormal"]                       # a checkpoint written before the option
    assert td.TrainConfig.from_dict(old).t_distribution == "uniform"


def test_training_draws_its_timesteps_from_the_configured_distribution():
    data = td.load_mnist("train", source="subset")
    # ln sigma ~ N(ln sigma_0, 0.01^2): nearly every draw is the least noisy timestep, never the noisiest half
    s = make_schedule("linear", 1000)
    low = float(-0.5 * s.log_snr[0])
    cfg = dataclasses.replace(td.preset("tiny"), t_distribution="lognormal", t_lognormal=(low, 0.01),
                              batch_size=64)
    state = td.new_state(cfg, data.images, data.labels)
    t = td.to_numpy(loop.draw_step_inputs(state).t)
    assert t.shape == (64,) and t.max() <= 2
    uniform = td.new_state(td.preset("tiny"), data.images, data.labels)
    assert td.to_numpy(loop.draw_step_inputs(uniform).t).max() > 2   # 8 uniform draws below 3 of 1000: ~1e-20
