"""Samplers (DDPM, DDIM, DPM-Solver++(2M)), timesteps, clipping, callbacks and interpolation.

The samplers are proven on data whose optimal denoiser is known in closed form: for x0 ~ N(mu, s^2) per
pixel and x_t = a x0 + b eps (a^2 = alpha_bar_t, b^2 = 1 - alpha_bar_t),
    E[eps | x_t] = b (x_t - a mu) / (a^2 s^2 + b^2)        E[x0 | x_t] = mu + a s^2 (x_t - a mu) / (a^2 s^2 + b^2)
and E[v | x_t] = a E[eps | x_t] - b E[x0 | x_t]. With this predictor every sampler step is affine in x_t, so
a sampler's exact output distribution is Gaussian and can be computed without sampling (``_exact_output``):
that measures its discretisation error, separately from the statistical error of a finite batch.
"""
import inspect
import re

import numpy as np
import pytest

from tinyddpm.backend import device_xp, to_device, to_numpy
from tinyddpm.diffusion import (DDIMSampler, DDPMSampler, DPMSolverSampler, StepOutput, Trajectory, clip_x0,
                                ddim_sample, ddim_step, ddim_timesteps, ddpm_sample, ddpm_step,
                                dpm_solver_first_order_step, dpm_solver_sample, dpm_solver_timesteps, dynamic_threshold,
                                interpolate_noise, lerp, make_schedule, run_sampler, sample, slerp, x0_from_eps)
from tinyddpm import progress

MU, S = 0.2, 0.6  # the data: every pixel N(0.2, 0.6^2), roughly an image pixel in [-1, 1]


def gaussian_model(schedule, mu=MU, s=S, prediction="eps"):
    """The optimal predictor for x0 ~ N(mu, s^2) per pixel, as a model(x_t, t, labels) of any backend."""
    def model(x_t, t, labels):
        ab = schedule.gather("alpha_bar", t, x_t)  # (N, 1, 1, 1) on x_t's backend and dtype
        a, b = ab ** 0.5, (1 - ab) ** 0.5
        r = (x_t - a * mu) / (ab * s * s + 1 - ab)
        eps, x0 = b * r, mu + a * s * s * r
        return {"eps": eps, "x0": x0, "v": a * eps - b * x0}[prediction]
    return model


def _exact_output(method, schedule, **kwargs):
    """(mean, std) of a sampler's output under the Gaussian predictor, computed exactly (no sampling).

    Deterministic samplers (DDIM eta = 0, DPM-Solver) map x_T affinely, out = m + k x_T, so running them on
    x_T = 0 and x_T = 1 gives m and k, and x_T ~ N(0, 1) gives N(m, k^2). DDPM adds noise at each step:
    x_{t-1} = alpha x_t + beta + std z, so the mean and variance are carried through the T steps.
    """
    xp = device_xp()
    model = gaussian_model(schedule)
    if method == "ddpm":
        m, var = 0.0, 1.0
        probe = xp.asarray([0.0, 1.0]).reshape(2, 1, 1, 1)
        for t in range(schedule.num_timesteps - 1, -1, -1):
            x0 = x0_from_eps(schedule, probe, t, model(probe, xp.full(2, t), None))
            mean, std = ddpm_step(schedule, probe, t, x0)
            mean = to_numpy(mean).reshape(-1)
            alpha, beta = mean[1] - mean[0], mean[0]
            m, var = alpha * m + beta, alpha * alpha * var + std * std
        return m, np.sqrt(var)
    sampler = {"ddim": ddim_sample, "dpm": dpm_solver_sample}[method]
    out = to_numpy(sampler(model, schedule, x_T=xp.asarray([0.0, 1.0]).reshape(2, 1, 1, 1), progress=False,
                           **kwargs)).reshape(-1)
    return out[0], abs(out[1] - out[0])


# sampler -> (method, kwargs, discretisation budget for |mean - mu|, for |std - s|); see the test docstrings
SAMPLERS = {
    "ddpm-1000": ("ddpm", {}, 1e-4, 6e-3),
    "ddim-50": ("ddim", {"num_steps": 50}, 2e-3, 0.04),
    "dpm++2m-20": ("dpm", {"num_steps": 20}, 2e-3, 0.025),
}


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_gaussian_discretisation_error(name, schedule_name):
    """The exact output distribution of each sampler is within a fixed budget of N(mu, s^2).

    Measured here (T = 1000, mu = 0.2, s = 0.6), error of mean / error of std:
        linear:  DDPM 1000 steps -3e-6 / -4.0e-3    DDIM 50 -7.2e-4 / -3.0e-2    DPM-Solver++ 20 -7.4e-4 / -1.6e-2
        cosine:  DDPM 1000 steps -2e-10 / -2.1e-3   DDIM 50 -6e-6 / -1.7e-2      DPM-Solver++ 20 -6e-6 / -8e-4
    Sources: DDPM's 'fixed_small' variance is the posterior's, smaller than the true reverse variance;
    DDIM is a first-order ODE solver (its error halves when the steps double, test_order_of_convergence);
    the samplers' last step jumps to E[x0 | x_t] from t = 19 (DDIM) or t = 50 (DPM-Solver), which shrinks
    the spread; and the linear schedule's x_T is not quite N(0, 1) (alpha_bar_T = 4e-5), which moves the
    mean by about 1e-3. The budgets (DDPM 1e-4 / 6e-3, DDIM 2e-3 / 0.04, DPM 2e-3 / 0.025) sit just above the
    worse of the two schedules; a wrong coefficient or a missed step moves these far more (0.1 or worse).
    """
    method, kwargs, budget_mean, budget_std = SAMPLERS[name]
    m, s = _exact_output(method, make_schedule(schedule_name, 1000), **kwargs)
    print(f"{schedule_name} {name}: exact output mean {m:.6f} (error {m - MU:+.2e}), std {s:.6f} (error {s - S:+.2e})")
    assert abs(m - MU) < budget_mean and abs(s - S) < budget_std


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_gaussian_samples_match_mu_and_s(name):
    """Sampled batches have the mean and std of the data within statistical error plus discretisation error.

    N = 4096 samples of (1, 4, 4): the optimal predictor acts per pixel and the pixels start independent,
    so these are n = 65536 independent draws. Their mean has standard error s_out / sqrt(n) = 0.0023 and
    their std s_out / sqrt(2 n) = 0.0017 (Gaussian). The batch must lie within 5 standard errors of the
    sampler's exact output distribution (_exact_output: this checks the noise the sampler draws, which the
    exact computation does not run through), and so within the discretisation budget of
    test_gaussian_discretisation_error plus 5 standard errors of (mu, s). Seeded, so the test is repeatable;
    a failure by chance would need a 5-sigma draw (p < 1e-6).
    """
    method, kwargs, budget_mean, budget_std = SAMPLERS[name]
    schedule = make_schedule("linear", 1000)
    sampler = {"ddpm": ddpm_sample, "ddim": ddim_sample, "dpm": dpm_solver_sample}[method]
    x = to_numpy(sampler(gaussian_model(schedule), schedule, (4096, 1, 4, 4), seed=0, dtype=np.float64,
                         progress=False, **kwargs))
    n = x.size
    m_exact, s_exact = _exact_output(method, schedule, **kwargs)
    se_mean, se_std = s_exact / np.sqrt(n), s_exact / np.sqrt(2 * n)
    print(f"{name}: sample mean {x.mean():.5f} (error {x.mean() - MU:+.2e}), std {x.std():.5f} "
          f"(error {x.std() - S:+.2e}); exact {m_exact:.5f} / {s_exact:.5f}; 5 SE {5 * se_mean:.4f} / {5 * se_std:.4f}")
    assert abs(x.mean() - m_exact) < 5 * se_mean and abs(x.std() - s_exact) < 5 * se_std
    assert abs(x.mean() - MU) < budget_mean + 5 * se_mean and abs(x.std() - S) < budget_std + 5 * se_std


def test_order_of_convergence():
    """Doubling the steps divides the error by about 2 for DDIM (first order) and 4 for DPM-Solver++(2M).

    Both end at the noise level of t = 0 (no jump to the clean data), where the exact flow of the
    probability-flow ODE for Gaussian data is known: it maps N(0, 1) at t = T-1 affinely onto
    N(a_0 mu + ..., ...); error = |mean - exact mean| + |std - exact std|. Cosine schedule, 'trailing'.
    """
    schedule = make_schedule("cosine", 1000)
    ab = schedule.alpha_bar

    def flow(ab_start, ab_end):  # x -> me + (se / sT) (x - mT): the exact ODE solution for Gaussian data
        m_t, s_t = np.sqrt(ab_start) * MU, np.sqrt(ab_start * S * S + 1 - ab_start)
        m_e, s_e = np.sqrt(ab_end) * MU, np.sqrt(ab_end * S * S + 1 - ab_end)
        return m_e - s_e / s_t * m_t, s_e / s_t

    m_ex, s_ex = flow(ab[-1], ab[0])
    errs = {"ddim": [], "dpm": []}
    for n in (50, 100, 200):
        m, s = _exact_output("dpm", schedule, num_steps=n, final_sigma="sigma_min", spacing="trailing",
                             lower_order_final=False)
        errs["dpm"].append(abs(m - m_ex) + abs(s - s_ex))
        m, s = _exact_output("ddim", schedule, num_steps=n, set_alpha_to_one=False, spacing="trailing",
                             prev_timestep="next")
        errs["ddim"].append(abs(m - m_ex) + abs(s - s_ex))
    print({k: [f"{e:.2e}" for e in v] for k, v in errs.items()})
    for e_coarse, e_fine in zip(errs["dpm"], errs["dpm"][1:]):
        assert 3.3 < e_coarse / e_fine < 5.0
    for e_coarse, e_fine in zip(errs["ddim"], errs["ddim"][1:]):
        assert 1.8 < e_coarse / e_fine < 2.2


@pytest.mark.parametrize("method", ["ddpm", "ddim", "dpm"])
def test_prediction_types_give_the_same_samples(method):
    """An eps-, x0- or v-predicting model that agree give the same samples (conversions are exact)."""
    schedule = make_schedule("cosine", 100)
    sampler = {"ddpm": ddpm_sample, "ddim": ddim_sample, "dpm": dpm_solver_sample}[method]
    kwargs = {} if method == "ddpm" else {"num_steps": 10}
    outs = [to_numpy(sampler(gaussian_model(schedule, prediction=p), schedule, (8, 1, 2, 2), prediction=p, seed=3,
                             dtype=np.float64, progress=False, **kwargs)) for p in ("eps", "x0", "v")]
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(outs[2], outs[0], rtol=1e-9, atol=1e-9)


def test_ddim_eta_one_over_all_steps_is_ddpm():
    """DDIM with eta = 1 and n = T has DDPM's 'fixed_small' transition: same mean and std at every t,
    and (drawing the same noise) the same samples."""
    T = 200
    schedule = make_schedule("linear", T)
    rng = np.random.default_rng(0)
    for spacing in ("linspace", "leading", "trailing"):
        np.testing.assert_array_equal(ddim_timesteps(T, T, spacing), np.arange(T - 1, -1, -1))
    for t in range(T):
        x_t = to_device(rng.standard_normal((3, 1, 2, 2)))
        eps = to_device(rng.standard_normal((3, 1, 2, 2)))
        x0 = x0_from_eps(schedule, x_t, t, eps)
        ddpm_mean, ddpm_std = ddpm_step(schedule, x_t, t, x0, "fixed_small")
        ddim_mean, ddim_std = ddim_step(schedule, t, t - 1, x0, eps, eta=1.0)
        np.testing.assert_allclose(to_numpy(ddim_mean), to_numpy(ddpm_mean), rtol=1e-10, atol=1e-12)
        assert ddim_std == pytest.approx(ddpm_std, rel=1e-10, abs=1e-15)
    model = gaussian_model(schedule)
    a = ddpm_sample(model, schedule, (16, 1, 2, 2), seed=7, dtype=np.float64, progress=False)
    b = ddim_sample(model, schedule, (16, 1, 2, 2), num_steps=T, eta=1.0, seed=7, dtype=np.float64, progress=False)
    np.testing.assert_allclose(to_numpy(b), to_numpy(a), rtol=1e-9, atol=1e-9)


def test_dpm_solver_first_order_step_is_ddim():
    schedule = make_schedule("cosine", 1000)
    rng = np.random.default_rng(1)
    x_t = to_device(rng.standard_normal((2, 3)))
    eps = to_device(rng.standard_normal((2, 3)))
    for t, t_prev in [(999, 899), (500, 480), (20, -1)]:
        x0 = x0_from_eps(schedule, x_t, t, eps)
        ab_prev = 1.0 if t_prev < 0 else schedule.alpha_bar[t_prev]
        ours = dpm_solver_first_order_step(x_t, x0, schedule.alpha_bar[t], ab_prev)
        np.testing.assert_allclose(to_numpy(ours), to_numpy(ddim_step(schedule, t, t_prev, x0, eps).mean),
                                   rtol=1e-10, atol=1e-12)


# Written out from diffusers 0.42.1 (DDIMScheduler / DPMSolverMultistepScheduler.set_timesteps, T = 1000)
DDIM_LISTS = {
    ("linspace", 10): [999, 888, 777, 666, 555, 444, 333, 222, 111, 0],
    ("leading", 10): [900, 800, 700, 600, 500, 400, 300, 200, 100, 0],
    ("trailing", 10): [999, 899, 799, 699, 599, 499, 399, 299, 199, 99],
    ("linspace", 50): [999, 979, 958, 938, 917, 897, 877, 856, 836, 816, 795, 775, 754, 734, 714, 693, 673, 652,
                       632, 612, 591, 571, 550, 530, 510, 489, 469, 449, 428, 408, 387, 367, 347, 326, 306, 285,
                       265, 245, 224, 204, 183, 163, 143, 122, 102, 82, 61, 41, 20, 0],
    ("leading", 50): list(range(980, -1, -20)),  # 980, 960, ..., 20, 0
    ("trailing", 50): list(range(999, 18, -20)),  # 999, 979, ..., 39, 19
}
DPM_LISTS = {
    ("linspace", 10): [999, 899, 799, 699, 599, 500, 400, 300, 200, 100],
    ("leading", 10): [900, 810, 720, 630, 540, 450, 360, 270, 180, 90],
    ("trailing", 10): [999, 899, 799, 699, 599, 499, 399, 299, 199, 99],
    ("linspace", 50): [999, 979, 959, 939, 919, 899, 879, 859, 839, 819, 799, 779, 759, 739, 719, 699, 679, 659,
                       639, 619, 599, 579, 559, 539, 519, 500, 480, 460, 440, 420, 400, 380, 360, 340, 320, 300,
                       280, 260, 240, 220, 200, 180, 160, 140, 120, 100, 80, 60, 40, 20],
    ("leading", 50): list(range(950, 18, -19)),  # 950, 931, ..., 38, 19
    ("trailing", 50): list(range(999, 18, -20)),
}


@pytest.mark.parametrize("key", list(DDIM_LISTS))
def test_timestep_lists_match_diffusers(key):
    spacing, n = key
    assert ddim_timesteps(1000, n, spacing).tolist() == DDIM_LISTS[key]
    assert dpm_solver_timesteps(1000, n, spacing).tolist() == DPM_LISTS[key]
    assert len(DDIM_LISTS[key]) == n and len(DPM_LISTS[key]) == n


def test_timestep_offsets_and_roundoff():
    assert ddim_timesteps(1000, 10, "leading", steps_offset=1).tolist() == [901, 801, 701, 601, 501, 401, 301, 201,
                                                                            101, 1]
    assert dpm_solver_timesteps(1000, 10, "leading", steps_offset=1).tolist() == [901, 811, 721, 631, 541, 451, 361,
                                                                                271, 181, 91]
    # diffusers' 'trailing' list for n = 61 gets a 62nd entry, -1, from round-off; here exactly n, all valid
    ts = ddim_timesteps(1000, 61, "trailing")
    assert len(ts) == 61 and ts[-1] == 15 and ts[0] == 999
    with pytest.raises(ValueError, match=r"steps_offset=1.*outside \[0, 10\)"):
        ddim_timesteps(10, 10, "leading", steps_offset=1)


def test_ddim_prev_timestep_rules():
    """'diffusers' steps t -> t - T // n; 'next' steps to the next listed timestep. They differ for linspace."""
    schedule = make_schedule("linear", 1000)
    seen = {}
    for rule in ("diffusers", "next"):
        traj = Trajectory()
        model = gaussian_model(schedule)
        x_T = to_device(np.zeros((1, 1)))
        ddim_sample(model, schedule, x_T=x_T, num_steps=10, spacing="leading", prev_timestep=rule,
                    callback=traj, progress=False)
        seen[("leading", rule)] = traj.x
        traj = Trajectory()
        ddim_sample(model, schedule, x_T=x_T, num_steps=10, spacing="linspace", prev_timestep=rule,
                    callback=traj, progress=False)
        seen[("linspace", rule)] = traj.x
    np.testing.assert_array_equal(np.stack(seen[("leading", "diffusers")]), np.stack(seen[("leading", "next")]))
    assert not np.allclose(np.stack(seen[("linspace", "diffusers")]), np.stack(seen[("linspace", "next")]))


@pytest.mark.parametrize("method", ["ddpm", "ddim", "dpm"])
def test_same_seed_same_samples(method):
    schedule = make_schedule("cosine", 50)
    sampler = {"ddpm": ddpm_sample, "ddim": ddim_sample, "dpm": dpm_solver_sample}[method]
    kwargs = {} if method == "ddpm" else {"num_steps": 10}
    if method == "ddim":
        kwargs["eta"] = 0.5  # noise at every step, so the seed matters beyond x_T
    model = gaussian_model(schedule)

    def run(seed):
        return to_numpy(sampler(model, schedule, (4, 1, 3, 3), seed=seed, progress=False, **kwargs))

    a, b, c = run(11), run(11), run(12)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert a.dtype == np.float32
    # a Generator works too, and continues its stream
    g1, g2 = device_xp().random.default_rng(5), device_xp().random.default_rng(5)
    np.testing.assert_array_equal(to_numpy(sampler(model, schedule, (4, 1, 3, 3), seed=g1, progress=False, **kwargs)),
                                  to_numpy(sampler(model, schedule, (4, 1, 3, 3), seed=g2, progress=False, **kwargs)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_kept(dtype):
    schedule = make_schedule("linear", 100)
    model = gaussian_model(schedule)
    for x in (ddpm_sample(model, schedule, (2, 1, 2, 2), dtype=dtype, seed=0, progress=False),
              ddim_sample(model, schedule, (2, 1, 2, 2), 10, dtype=dtype, seed=0, progress=False, clip="dynamic"),
              dpm_solver_sample(model, schedule, (2, 1, 2, 2), 10, dtype=dtype, seed=0, progress=False, clip="static")):
        assert x.dtype == dtype and x.shape == (2, 1, 2, 2)


def test_callback_and_trajectory():
    schedule = make_schedule("cosine", 100)
    traj = Trajectory()
    x = ddim_sample(gaussian_model(schedule), schedule, (3, 1, 2, 2), num_steps=25, seed=0, callback=traj,
                    callback_every=10, progress=False)
    assert traj.steps == [0, 10, 20, 24] and len(traj) == 4
    assert traj.timesteps == ddim_timesteps(100, 25)[[0, 10, 20, 24]].tolist()
    np.testing.assert_array_equal(traj.x[-1], to_numpy(x))
    assert all(a.shape == (3, 1, 2, 2) and isinstance(a, np.ndarray) for a in traj.x + traj.x0)
    calls = []
    dpm_solver_sample(gaussian_model(schedule), schedule, (1, 1), 5, callback=lambda *a: calls.append(a[:2]),
                      progress=False)
    assert [c[0] for c in calls] == [0, 1, 2, 3, 4]


def test_progress_bar_can_be_silenced(capsys):
    schedule = make_schedule("linear", 30)
    ddim_sample(gaussian_model(schedule), schedule, (1, 1), 10, progress=False)
    assert capsys.readouterr().err == ""
    ddim_sample(gaussian_model(schedule), schedule, (1, 1), 10, progress=True)
    assert "DDIM" in capsys.readouterr().err


def test_sample_front_door():
    schedule = make_schedule("cosine", 100)
    model = gaussian_model(schedule)
    np.testing.assert_array_equal(
        to_numpy(sample(model, schedule, (2, 1), method="dpm++2m", num_steps=7, seed=1, progress=False)),
        to_numpy(dpm_solver_sample(model, schedule, (2, 1), 7, seed=1, progress=False)))
    assert sample(model, schedule, (2, 1), method="ddpm", num_steps=7, seed=1, progress=False).shape == (2, 1)


def test_static_and_dynamic_clipping(torch):
    rng = np.random.default_rng(0)
    x0 = to_device(3 * rng.standard_normal((4, 2, 5, 5)))
    x0_np = to_numpy(x0)
    np.testing.assert_array_equal(to_numpy(clip_x0(x0, "static")), np.clip(x0_np, -1, 1))
    assert clip_x0(x0, "none") is x0
    # dynamic thresholding against a torch implementation of Imagen's rule
    for p in (0.9, 0.995):
        t = torch.tensor(x0_np).reshape(4, -1)
        s = torch.quantile(t.abs(), p, dim=1).clamp(min=1).unsqueeze(1)
        want = (torch.clamp(t, -s, s) / s).reshape(x0_np.shape).numpy()
        np.testing.assert_allclose(to_numpy(dynamic_threshold(x0, p)), want, rtol=1e-12)
    # a sample already inside [-1, 1] is left alone; the output is always inside
    small = to_device(0.5 * np.tanh(rng.standard_normal((2, 3))))
    np.testing.assert_array_equal(to_numpy(clip_x0(small, "dynamic")), to_numpy(small))
    assert np.abs(to_numpy(clip_x0(x0, "dynamic"))).max() <= 1.0
    assert clip_x0(x0.astype(np.float32), "dynamic").dtype == np.float32
    # NaN in one sample: that sample comes out NaN, the others are untouched
    bad = x0_np.copy()
    bad[1, 0, 0, 0] = np.nan
    out = to_numpy(clip_x0(to_device(bad), "dynamic"))
    assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2, 3]]).all()


def test_clipping_is_used_by_the_samplers():
    """With static clipping, a model whose x0 estimate is far outside [-1, 1] still ends in [-1, 1]."""
    schedule = make_schedule("cosine", 100)
    model = gaussian_model(schedule, mu=5.0, s=0.1)
    for sampler, kw in ((ddpm_sample, {}), (ddim_sample, {"num_steps": 10}), (dpm_solver_sample, {"num_steps": 10})):
        free = to_numpy(sampler(model, schedule, (8, 1), seed=0, progress=False, **kw))
        clipped = to_numpy(sampler(model, schedule, (8, 1), seed=0, progress=False, clip="static", **kw))
        assert free.min() > 4 and np.abs(clipped).max() <= 1 + 1e-6


def test_ddpm_last_step_adds_no_noise_and_returns_x0():
    schedule = make_schedule("linear", 100)
    rng = np.random.default_rng(0)
    x_t, x0 = to_device(rng.standard_normal((2, 3))), to_device(rng.standard_normal((2, 3)))
    for variance in ("fixed_small", "fixed_large"):
        mean, std = ddpm_step(schedule, x_t, 0, x0, variance)
        assert std == 0.0
        np.testing.assert_allclose(to_numpy(mean), to_numpy(x0), rtol=1e-12)
        assert ddpm_step(schedule, x_t, 1, x0, variance).std > 0
    assert ddpm_step(schedule, x_t, 50, x0, "fixed_large").std == pytest.approx(np.sqrt(schedule.betas[50]))
    assert ddpm_step(schedule, x_t, 50, x0, "fixed_small").std == pytest.approx(
        np.sqrt(schedule.posterior_variance[50]))


@pytest.mark.parametrize("use_clipped", [False, True])
def test_ddim_use_clipped_model_output(use_clipped):
    """The direction term uses the model's eps (diffusers' default) or the eps re-derived from the clipped x0."""
    schedule = make_schedule("cosine", 1000)
    model = gaussian_model(schedule, mu=5.0, s=0.1)  # x0 estimates far outside [-1, 1]
    x_T = to_device(np.random.default_rng(0).standard_normal((3, 1)))
    traj = Trajectory()
    ddim_sample(model, schedule, x_T=x_T, num_steps=2, clip="static", use_clipped_model_output=use_clipped,
                callback=traj, progress=False)
    eps = model(x_T, to_device(np.full(3, 999)), None)
    x0 = clip_x0(x0_from_eps(schedule, x_T, 999, eps), "static")
    if use_clipped:
        eps = (x_T - schedule.sqrt_alpha_bar[999] * x0) / schedule.sqrt_one_minus_alpha_bar[999]
    want = schedule.sqrt_alpha_bar[499] * x0 + schedule.sqrt_one_minus_alpha_bar[499] * eps  # 999 -> 999 - 1000 // 2
    np.testing.assert_allclose(traj.x[0], to_numpy(want), rtol=1e-12)


def test_interpolation():
    rng = np.random.default_rng(0)
    a = to_device(rng.standard_normal((1, 8, 8)))
    b = to_device(rng.standard_normal((1, 8, 8)))
    path = interpolate_noise(a, b, 5)
    assert path.shape == (5, 1, 8, 8)
    np.testing.assert_allclose(to_numpy(path[0]), to_numpy(a), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_numpy(path[-1]), to_numpy(b), rtol=1e-12, atol=1e-12)
    # orthogonal vectors of equal norm: slerp stays on the sphere, lerp's midpoint shrinks by sqrt(2)
    u = to_device(np.asarray([3.0, 0.0]))
    v = to_device(np.asarray([0.0, 3.0]))
    mid = to_numpy(slerp(u, v, 0.5))
    assert mid.shape == (2,) and np.linalg.norm(mid) == pytest.approx(3.0, rel=1e-12)
    np.testing.assert_allclose(mid, [3 / np.sqrt(2), 3 / np.sqrt(2)], rtol=1e-12)
    assert np.linalg.norm(to_numpy(lerp(u, v, 0.5))) == pytest.approx(3 / np.sqrt(2), rel=1e-12)
    norms = np.linalg.norm(to_numpy(slerp(u, v, to_device(np.linspace(0, 1, 7)))), axis=1)
    np.testing.assert_allclose(norms, 3.0, rtol=1e-12)
    # parallel vectors fall back to lerp
    np.testing.assert_allclose(to_numpy(slerp(u, 2 * u, 0.5)), [4.5, 0.0], rtol=1e-12)
    assert interpolate_noise(a.astype(np.float32), b.astype(np.float32), 3, "lerp").dtype == np.float32
    assert interpolate_noise(a.astype(np.float32), b.astype(np.float32), 3, "slerp").dtype == np.float32
    assert slerp(a.astype(np.float32), b.astype(np.float32), 0.5).dtype == np.float32
    with pytest.raises(ValueError, match=r"interpolate_noise: unknown method 'cubic'.*'lerp', 'slerp'"):
        interpolate_noise(a, b, 3, "cubic")
    with pytest.raises(ValueError, match=r"slerp: a and b must have the same shape.*\(1, 8, 8\).*\(2,\)"):
        slerp(a, u, 0.5)


def test_bad_input():
    schedule = make_schedule("linear", 100)
    model = gaussian_model(schedule)
    shape = (2, 1, 2, 2)
    quiet = {"progress": False}
    with pytest.raises(ValueError, match=r"ddim_sample: num_steps=101 .*T=100"):
        ddim_sample(model, schedule, shape, 101, **quiet)
    with pytest.raises(ValueError, match=r"dpm_solver_sample: num_steps=0 .*T=100"):
        dpm_solver_sample(model, schedule, shape, 0, **quiet)
    with pytest.raises(ValueError, match=r"unknown spacing 'uniform'; "
                                         r"allowed values: 'linspace', 'leading', 'trailing'"):
        ddim_sample(model, schedule, shape, 10, spacing="uniform", **quiet)
    with pytest.raises(ValueError, match=r"unknown spacing 'uniform'"):
        dpm_solver_sample(model, schedule, shape, 10, spacing="uniform", **quiet)
    with pytest.raises(ValueError, match=r"ddpm_sample: unknown prediction 'epsilon'; "
                                         r"allowed values: 'eps', 'x0', 'v'"):
        ddpm_sample(model, schedule, shape, prediction="epsilon", **quiet)
    with pytest.raises(ValueError, match=r"ddpm_sample: unknown variance 'learned'.*'fixed_small', 'fixed_large'"):
        ddpm_sample(model, schedule, shape, variance="learned", **quiet)
    with pytest.raises(ValueError, match=r"ddim_sample: unknown clip 'soft'.*'none', 'static', 'dynamic'"):
        ddim_sample(model, schedule, shape, 10, clip="soft", **quiet)
    with pytest.raises(ValueError, match=r"unknown final_sigma 'min'.*'zero', 'sigma_min'"):
        dpm_solver_sample(model, schedule, shape, 10, final_sigma="min", **quiet)
    with pytest.raises(ValueError, match=r"unknown prev_timestep 'previous'.*'diffusers', 'next'"):
        ddim_sample(model, schedule, shape, 10, prev_timestep="previous", **quiet)
    with pytest.raises(ValueError, match=r"sample: unknown method 'euler'.*'ddpm', 'ddim', 'dpm\+\+2m'"):
        sample(model, schedule, shape, method="euler")
    with pytest.raises(ValueError, match=r"ddim_sample: labels must have shape \(2,\).*got \(3,\)"):
        ddim_sample(model, schedule, shape, 10, labels=np.zeros(3, dtype=np.int64), **quiet)
    with pytest.raises(ValueError, match=r"ddpm_sample: labels must have shape \(2,\).*got \(2, 1\)"):
        ddpm_sample(model, schedule, shape, labels=np.zeros((2, 1), dtype=np.int64), **quiet)
    with pytest.raises(TypeError, match=r"labels must be integers"):
        ddpm_sample(model, schedule, shape, labels=np.zeros(2), **quiet)
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
        ddim_sample(model, schedule, shape, 10, eta=1.5, **quiet)
    with pytest.raises(ValueError, match=r"the model returned \(2, 4\) for x_t of shape \(2, 1, 2, 2\)"):
        ddim_sample(lambda x, t, y: x.reshape(2, 4), schedule, shape, 10, **quiet)
    with pytest.raises(TypeError, match=r"the model returned dtype float64 for x_t of dtype float32"):
        ddim_sample(lambda x, t, y: x.astype(np.float64), schedule, shape, 10, **quiet)
    with pytest.raises(ValueError, match=r"shape \(3, 1\) does not match x_T's shape \(2, 1\)"):
        ddim_sample(model, schedule, (3, 1), 10, x_T=to_device(np.zeros((2, 1))), **quiet)
    with pytest.raises(ValueError, match="callback_every must be a positive integer"):
        ddim_sample(model, schedule, shape, 10, callback_every=0, **quiet)
    with pytest.raises(TypeError, match="seed must be an int, a Generator or None"):
        ddim_sample(model, schedule, shape, 10, seed=1.5, **quiet)


def test_nan_propagates():
    """A model that returns NaN for one sample gives a NaN sample there and leaves the others finite."""
    schedule = make_schedule("cosine", 50)
    good = gaussian_model(schedule)

    def model(x, t, labels):
        out = good(x, t, labels)
        return out * to_device(np.asarray([1.0, np.nan, 1.0], dtype=out.dtype).reshape(3, 1))

    for sampler, kw in ((ddpm_sample, {}), (ddim_sample, {"num_steps": 10}), (dpm_solver_sample, {"num_steps": 10})):
        x = to_numpy(sampler(model, schedule, (3, 1), seed=0, progress=False, **kw))
        assert np.isnan(x[1]).all() and np.isfinite(x[[0, 2]]).all()


# ---- the one step shape and the one loop (loop.py) ----

def _step_objects(schedule):
    return {"ddpm": DDPMSampler(schedule, "fixed_large", clip="static"),
            "ddim": DDIMSampler(schedule, 10, eta=0.5, spacing="linspace", clip="dynamic"),
            "dpm": DPMSolverSampler(schedule, 10, final_sigma="sigma_min", lower_order_final=False, prediction="v")}


def test_the_three_samplers_have_one_step_shape():
    """step(model_output, t, x_t, rng) -> StepOutput(prev_sample, pred_x0) for every sampler; timesteps descending."""
    schedule = make_schedule("cosine", 50)
    shapes = set()
    for name, sampler in _step_objects(schedule).items():
        shapes.add(tuple(inspect.signature(sampler.step).parameters))
        ts = list(sampler.timesteps)
        assert all(isinstance(t, int) for t in ts) and ts == sorted(ts, reverse=True) and len(sampler) == len(ts)
        x = to_device(np.random.default_rng(0).standard_normal((2, 1, 2, 2)))
        out = sampler.step(gaussian_model(schedule)(x, device_xp().full(2, ts[0]), None), ts[0], x,
                           device_xp().random.default_rng(0))
        assert isinstance(out, StepOutput) and out.prev_sample.shape == out.pred_x0.shape == x.shape
    assert shapes == {("model_output", "t", "x_t", "rng")}


@pytest.mark.parametrize("method", ["ddpm", "ddim", "dpm"])
def test_a_hand_written_loop_reproduces_the_sample_functions(method):
    """The loop of loop.py's docstring, written out, gives the *_sample functions' samples bit for bit."""
    schedule = make_schedule("cosine", 50)
    sampler = _step_objects(schedule)[method]
    prediction = sampler.prediction
    model = gaussian_model(schedule, prediction=prediction)
    xp = device_xp()
    rng = xp.random.default_rng(4)
    x = rng.standard_normal((3, 1, 2, 2), dtype=np.float64)
    for t in sampler.timesteps:
        x = sampler.step(model(x, xp.full(3, t), None), t, x, rng).prev_sample
    kwargs = {"ddpm": dict(variance="fixed_large", clip="static"),
              "ddim": dict(num_steps=10, eta=0.5, spacing="linspace", clip="dynamic"),
              "dpm": dict(num_steps=10, final_sigma="sigma_min", lower_order_final=False)}[method]
    fn = {"ddpm": ddpm_sample, "ddim": ddim_sample, "dpm": dpm_solver_sample}[method]
    want = fn(model, schedule, (3, 1, 2, 2), prediction=prediction, seed=4, dtype=np.float64, progress=False,
              **kwargs)
    np.testing.assert_array_equal(to_numpy(x), to_numpy(want))
    assert np.array_equal(to_numpy(run_sampler(model, sampler, (3, 1, 2, 2), seed=4, dtype=np.float64,
                                               progress=False)), to_numpy(want))


def test_dpm_solver_memory_is_reset_between_runs():
    """The previous x0 estimate lives in the sampler: a second run with the same object is a fresh run."""
    schedule = make_schedule("cosine", 100)
    model = gaussian_model(schedule)
    sampler = DPMSolverSampler(schedule, 8)
    assert sampler.previous is None
    a = to_numpy(run_sampler(model, sampler, (4, 1), seed=2, progress=False))
    assert sampler.previous is not None and sampler.previous[0] == sampler.timesteps[-1]
    b = to_numpy(run_sampler(model, sampler, (4, 1), seed=2, progress=False))
    c = to_numpy(run_sampler(model, DPMSolverSampler(schedule, 8), (4, 1), seed=2, progress=False))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    sampler.reset()
    assert sampler.previous is None
    # a hand-written loop that never calls reset() still starts first order (step 0 always is)
    x_T = to_device(np.random.default_rng(3).standard_normal((4, 1)).astype(np.float32))
    for _ in range(2):
        x = x_T
        for t in sampler.timesteps:
            x = sampler.step(model(x, device_xp().full(4, t), None), t, x).prev_sample
        np.testing.assert_array_equal(to_numpy(x), to_numpy(dpm_solver_sample(model, schedule, x_T=x_T, num_steps=8,
                                                                               progress=False)))


def test_step_objects_bad_input():
    schedule = make_schedule("linear", 100)
    x = to_device(np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"DDIMSampler: t=7 is not one of this sampler's timesteps \(99 \.\. 9"):
        DDIMSampler(schedule, 10).step(x, 7, x)
    with pytest.raises(ValueError, match=r"this step adds noise \(std > 0\); pass rng"):
        DDPMSampler(schedule).step(x, 50, x)
    assert DDPMSampler(schedule).step(x, 0, x).prev_sample.shape == (2, 1)  # the last step draws nothing
    with pytest.raises(ValueError, match=r"DPMSolverSampler: unknown prediction 'epsilon'"):
        DPMSolverSampler(schedule, prediction="epsilon")
    with pytest.raises(ValueError, match=r"DDPMSampler: unknown variance 'learned'"):
        DDPMSampler(schedule, "learned")


def test_progress_in_a_log_is_plain_lines(capsys):
    """Off a terminal (capsys is not one) a run of >= 50 steps prints a line every 10% and one at the end;
    a shorter run only the last line. No tqdm bar characters reach the log."""
    schedule = make_schedule("linear", 100)
    model = gaussian_model(schedule)
    ddpm_sample(model, schedule, (1, 1), seed=0, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("  ")[0] for line in lines] == [f"DDPM: step {10 * k}/100" for k in range(1, 11)], lines
    assert all("  elapsed " in line and "  ETA " in line for line in lines[:-1]), lines
    assert "  elapsed " in lines[-1] and "ETA" not in lines[-1], lines    # the last line: the run's end
    dpm_solver_sample(model, schedule, (1, 1), 49, progress=True)
    only = capsys.readouterr().err.splitlines()
    assert len(only) == 1 and only[0].startswith("DPM-Solver++(2M): step 49/49  elapsed "), only
    ddim_sample(model, schedule, (1, 1), 50, progress=False)
    assert capsys.readouterr() == ("", "")


def test_progress_on_a_terminal_is_a_tqdm_bar(capsys, monkeypatch):
    monkeypatch.setattr(progress, "_is_terminal", lambda stream: True)
    schedule = make_schedule("linear", 100)
    ddim_sample(gaussian_model(schedule), schedule, (1, 1), 60, progress=True)
    err = capsys.readouterr().err
    assert "DDIM" in err and "/60 [" in err and "elapsed" not in err and "step 60/60" not in err


def test_sampling_reads_nothing_back_from_the_device(monkeypatch):
    """A guided U-Net through the three samplers queues work only: no int(), float(), if or item() of an array
    per step (each a GPU wait). Dynamic clipping is left out: NumPy's quantile reads values, CuPy's does not."""
    from tinyddpm.diffusion import GuidedModel
    from tinyddpm.nn.unet import UNetConfig, init_params
    from tinyddpm.sampling import unet_model

    from helpers import NoHostReads, treat_as_device

    if device_xp() is not np:
        pytest.skip("the stand-in for GPU arrays is a NumPy subclass")
    treat_as_device(monkeypatch)
    cfg = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), attention_resolutions=(4,), heads=2,
                     groups=4)
    params = {k: v.view(NoHostReads) for k, v in init_params(cfg, seed=0).items()}
    model = GuidedModel(unet_model(params, cfg), 2.0, cfg.null_label)
    x_T = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32).view(NoHostReads)
    labels = np.arange(4).view(NoHostReads)
    schedule = make_schedule("cosine", 20)
    for method, kw in (("ddpm", {"clip": "static"}), ("ddim", {"num_steps": 5, "eta": 0.5}),
                       ("dpm++2m", {"num_steps": 5, "clip": "static"})):
        x = sample(model, schedule, x_T=x_T, labels=labels, method=method, seed=0, progress=False, **kw)
        assert isinstance(x, NoHostReads) and np.isfinite(np.asarray(x)).all()  # the stand-in went all the way


@pytest.mark.parametrize("shards", [1, 2])
def test_the_network_in_chunks_of_rows_is_the_network_on_the_whole_batch(shards):
    """unet_forward_in_shards cuts a shard's rows into chunks on the CPU (cache-sized passes): in eval mode the
    rows are independent, so the chunks must give the whole batch's output, up to round-off."""
    from tinyddpm.nn.unet import UNetConfig, init_params, unet_forward
    from tinyddpm.parallel.threads import unet_forward_in_shards

    cfg = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), attention_resolutions=(4,), heads=2,
                     groups=4, num_classes=10)
    params = {k: to_device(v.astype(np.float64)) for k, v in init_params(cfg, seed=0).items()}
    rng = np.random.default_rng(1)
    x = to_device(rng.standard_normal((11, 1, 8, 8)))
    t, y = to_device(rng.integers(0, 1000, 11)), to_device(rng.integers(0, 11, 11))
    whole = to_numpy(unet_forward(params, cfg, x, t, y, keep_cache=False)[0])
    for chunk in (1, 3, 11, None):
        out = to_numpy(unet_forward_in_shards(params, cfg, x, t, y, shards=shards, chunk_rows=chunk))
        assert out.shape == whole.shape and np.abs(out - whole).max() < 1e-12
