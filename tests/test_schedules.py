"""Noise schedules: the identities between the derived tables, finiteness at both ends, gathering, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinyddpm.backend import device_xp, to_numpy
from tinyddpm.diffusion import (ARRAY_NAMES, SCHEDULES, Schedule, cosine_betas, linear_betas, make_schedule,
                                sigmoid_betas)

IDENTITY_TOL = 1e-12


@settings(max_examples=20, deadline=None)
@given(name=st.sampled_from(SCHEDULES), T=st.integers(25, 1200))
def test_schedule_identities(name, T):
    """Every derived table obeys its defining formula, recomputed here independently of the class."""
    s = make_schedule(name, T)
    b = s.betas
    assert s.num_timesteps == T == len(s) and all(getattr(s, a).shape == (T,) for a in ARRAY_NAMES)
    assert np.all(b > 0) and np.all(b < 1)
    ab = np.cumprod(1 - b)
    np.testing.assert_allclose(s.alpha_bar, ab, rtol=IDENTITY_TOL)
    np.testing.assert_allclose(s.alpha_bar[1:] / s.alpha_bar[:-1], 1 - b[1:], rtol=IDENTITY_TOL)
    assert np.all(np.diff(s.alpha_bar) < 0) and s.alpha_bar[0] < 1
    np.testing.assert_allclose(s.sqrt_alpha_bar ** 2 + s.sqrt_one_minus_alpha_bar ** 2, 1.0, rtol=IDENTITY_TOL)
    np.testing.assert_allclose(s.alpha_bar_prev[1:], s.alpha_bar[:-1], rtol=0)
    assert s.alpha_bar_prev[0] == 1.0
    # posterior q(x_{t-1} | x_t, x0): for x0 = 1, x_t = sqrt(ab_t) the mean is sqrt(ab_{t-1}) (the noise-free path)
    np.testing.assert_allclose(s.posterior_mean_coef1 + s.posterior_mean_coef2 * s.sqrt_alpha_bar,
                               np.sqrt(s.alpha_bar_prev), rtol=1e-10)
    np.testing.assert_allclose(s.posterior_variance, b * (1 - s.alpha_bar_prev) / (1 - s.alpha_bar), rtol=IDENTITY_TOL)
    # Gaussian product rule: 1 / beta_tilde = alpha_t / beta_t + 1 / (1 - ab_{t-1})
    np.testing.assert_allclose(1 / s.posterior_variance[1:],
                               (1 - b[1:]) / b[1:] + 1 / (1 - s.alpha_bar_prev[1:]), rtol=1e-9)
    assert s.posterior_mean_coef1[0] == pytest.approx(1.0, rel=1e-12) and s.posterior_mean_coef2[0] == 0.0
    assert s.posterior_variance[0] == 0.0
    np.testing.assert_allclose(s.posterior_log_variance_clipped[1:], np.log(s.posterior_variance[1:]),
                               rtol=IDENTITY_TOL)
    assert s.posterior_log_variance_clipped[0] == s.posterior_log_variance_clipped[1]
    np.testing.assert_allclose(s.snr, s.alpha_bar / (1 - s.alpha_bar), rtol=IDENTITY_TOL)
    np.testing.assert_allclose(np.exp(s.log_snr), s.snr, rtol=1e-10)
    assert np.all(np.diff(s.snr) < 0)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", [25, 100, 1000, 4000])
def test_every_table_finite_at_both_ends(name, T):
    s = make_schedule(name, T)
    for a in ARRAY_NAMES:
        values = getattr(s, a)
        if a == "posterior_variance":  # exactly 0 at t = 0 by definition; positive after
            assert values[0] == 0 and np.all(values[1:] > 0)
        assert np.all(np.isfinite(values)), (a, values[[0, -1]])
    assert s.alpha_bar[-1] > 0 and s.snr[-1] > 0 and s.sqrt_alpha_bar[-1] > 0


def test_linear_matches_ddpm_at_1000_and_scales_with_T():
    b = linear_betas(1000)
    assert b[0] == pytest.approx(1e-4, rel=1e-12) and b[-1] == pytest.approx(0.02, rel=1e-12)
    b250 = linear_betas(250)
    assert b250[0] == pytest.approx(4e-4, rel=1e-12) and b250[-1] == pytest.approx(0.08, rel=1e-12)
    # the scaling keeps the total noise about the same: alpha_bar at the end within a factor of 3
    ab1000, ab250 = np.prod(1 - b), np.prod(1 - b250)
    assert 1 / 3 < ab250 / ab1000 < 3


def test_cosine_follows_its_alpha_bar_and_caps_beta():
    T, s = 1000, 0.008
    b = cosine_betas(T)
    f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
    ab = f[1:] / f[0]
    np.testing.assert_allclose(np.cumprod(1 - b)[:-1], ab[:-1], rtol=1e-9)  # the last beta is capped
    assert b.max() == pytest.approx(0.999) and b[-1] == pytest.approx(0.999)
    assert b[0] == pytest.approx(1 - f[1] / f[0])


def test_sigmoid_goes_from_one_to_zero_and_is_symmetric():
    b = sigmoid_betas(1000, start=-3, end=3, tau=1)
    ab = np.cumprod(1 - b)
    assert ab[0] > 0.999 and ab[-1] < 1e-5
    assert abs(ab[499] - 0.5) < 0.01  # start = -end: alpha_bar crosses 1/2 at mid-schedule


def test_custom_betas_and_repr():
    s = Schedule(np.full(10, 0.1), name="flat")
    np.testing.assert_allclose(s.alpha_bar, 0.9 ** np.arange(1, 11))
    assert "flat" in repr(s) and "T=10" in repr(s)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_array_and_gather_follow_xp_and_dtype(dtype):
    xp = device_xp()
    s = make_schedule("cosine", 100)
    a = s.array("alpha_bar", xp, dtype)
    assert a.dtype == dtype and a.shape == (100,) and type(a).__module__.split(".")[0] == xp.__name__
    assert s.array("alpha_bar", xp, dtype) is a  # cached
    x = xp.zeros((3, 2, 4, 4), dtype=dtype)
    t = xp.asarray([0, 50, 99])
    g = s.gather("snr", t, x)
    assert g.shape == (3, 1, 1, 1) and g.dtype == dtype
    np.testing.assert_allclose(to_numpy(g).reshape(-1), s.snr[[0, 50, 99]], rtol=1e-6 if dtype == np.float32 else 0)
    assert (x * g).dtype == dtype
    scalar = s.gather("snr", 7, x)
    assert isinstance(scalar, float) and scalar == s.snr[7] and (x * scalar).dtype == dtype
    assert s.gather("betas", np.asarray([1, 2], dtype=np.int32), xp.zeros((2, 5), dtype=dtype)).shape == (2, 1)
    if xp is not np:  # GPU timesteps are gathered on the GPU, not read back: out-of-range ones give NaN, no error
        bad = to_numpy(s.gather("snr", xp.asarray([0, 100, -1]), x)).reshape(-1)
        assert np.isfinite(bad[0]) and np.isnan(bad[1:]).all()


def test_bad_input():
    with pytest.raises(ValueError, match=r"make_schedule: unknown schedule 'quadratic'.*'linear', 'cosine', 'sigmoid'"):
        make_schedule("quadratic")
    with pytest.raises(ValueError, match=r"linear_betas.*T > 20"):
        make_schedule("linear", 10)
    with pytest.raises(ValueError, match="num_timesteps"):
        make_schedule("cosine", 1)
    with pytest.raises(ValueError, match=r"Schedule: every beta must lie in \(0, 1\]"):
        Schedule([0.1, 1.5])
    s = make_schedule("linear", 100)
    x = np.zeros((3, 1, 2, 2))
    with pytest.raises(ValueError, match=r"unknown array name 'alpha_hat'.*'alpha_bar'"):
        s.array("alpha_hat")
    with pytest.raises(ValueError, match=r"outside \[0, 100\)"):
        s.gather("snr", np.asarray([0, 5, 100]), x)
    with pytest.raises(ValueError, match=r"outside \[0, 100\)"):
        s.gather("snr", -1, x)
    with pytest.raises(ValueError, match=r"t must have shape \(3,\).*\(2,\)"):
        s.gather("snr", np.asarray([0, 5]), x)
    with pytest.raises(TypeError, match="integer timesteps"):
        s.gather("snr", np.asarray([0.0, 5.0, 1.0]), x)
