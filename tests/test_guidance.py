"""Classifier-free guidance: the mixing rule, exact reduction at w = 0 and w = 1, one batched call."""
import numpy as np
import pytest

from tinyddpm.backend import device_xp, to_device, to_numpy
from tinyddpm.diffusion import GuidedModel, cfg_combine, ddim_sample, make_schedule

NULL = 10  # ten classes 0..9, label 10 = "no class"


class ToyModel:
    """An elementwise conditional 'model' that records each call's batch size and labels."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, labels):
        self.calls.append((x.shape[0], to_numpy(labels).tolist()))
        scale = (labels.astype(x.dtype) + 1.0).reshape((-1,) + (1,) * (x.ndim - 1))  # (N, 1, 1, 1)
        return 0.3 * x * scale - 0.01 * t.astype(x.dtype).reshape(scale.shape) + 0.1 * scale * scale


def _inputs(dtype=np.float64, n=4):
    rng = np.random.default_rng(0)
    x = to_device(rng.standard_normal((n, 1, 3, 3)).astype(dtype))
    t = device_xp().full((n,), 7, dtype=np.int64)
    labels = to_device(np.arange(n) % 10)
    return x, t, labels


def test_combine_rule():
    rng = np.random.default_rng(1)
    cond, uncond = to_device(rng.standard_normal(20)), to_device(rng.standard_normal(20))
    np.testing.assert_array_equal(to_numpy(cfg_combine(cond, uncond, 1.0)), to_numpy(cond))
    np.testing.assert_array_equal(to_numpy(cfg_combine(cond, uncond, 0.0)), to_numpy(uncond))
    for w in (0.5, 2.0, 7.5):
        np.testing.assert_allclose(to_numpy(cfg_combine(cond, uncond, w)),
                                   to_numpy(uncond + w * (cond - uncond)), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("scale", [0.0, 1.0])
def test_scale_reduces_exactly_and_calls_once(scale):
    """w = 1 is the plain conditional model, w = 0 the model with the null label, bit for bit, one call."""
    x, t, labels = _inputs()
    model = ToyModel()
    got = GuidedModel(model, scale, NULL)(x, t, labels)
    want_labels = labels if scale == 1.0 else device_xp().full((4,), NULL, dtype=labels.dtype)
    np.testing.assert_array_equal(to_numpy(got), to_numpy(ToyModel()(x, t, want_labels)))
    assert model.calls == [(4, to_numpy(want_labels).tolist())]


def test_guided_call_is_one_batched_call():
    x, t, labels = _inputs()
    model = ToyModel()
    got = GuidedModel(model, 3.0, NULL)(x, t, labels)
    assert model.calls == [(8, to_numpy(labels).tolist() + [NULL] * 4)]
    cond = ToyModel()(x, t, labels)
    uncond = ToyModel()(x, t, device_xp().full((4,), NULL, dtype=labels.dtype))
    np.testing.assert_allclose(to_numpy(got), to_numpy(uncond + 3.0 * (cond - uncond)), rtol=1e-12, atol=1e-14)


def test_sampler_with_unit_scale_is_the_conditional_sampler():
    schedule = make_schedule("cosine", 100)
    x, _, labels = _inputs()
    a = ddim_sample(ToyModel(), schedule, x_T=x, labels=labels, num_steps=10, progress=False)
    b = ddim_sample(GuidedModel(ToyModel(), 1.0, NULL), schedule, x_T=x, labels=labels, num_steps=10, progress=False)
    c = ddim_sample(GuidedModel(ToyModel(), 4.0, NULL), schedule, x_T=x, labels=labels, num_steps=10, progress=False)
    np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert not np.allclose(to_numpy(a), to_numpy(c))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_kept(dtype):
    x, t, labels = _inputs(dtype)
    assert GuidedModel(ToyModel(), 2.5, NULL)(x, t, labels).dtype == dtype


def test_nan_propagates():
    x, t, labels = _inputs()
    xn = to_numpy(x).copy()
    xn[2, 0, 1, 1] = np.nan
    out = to_numpy(GuidedModel(ToyModel(), 2.0, NULL)(to_device(xn), t, labels))
    assert np.isnan(out[2, 0, 1, 1]) and np.isfinite(np.delete(out.reshape(-1), 2 * 9 + 4)).all()


def test_bad_input():
    x, t, labels = _inputs()
    guided = GuidedModel(ToyModel(), 2.0, NULL)
    with pytest.raises(ValueError, match=r"GuidedModel: labels are required \(shape \(N,\)\)"):
        guided(x, t, None)
    with pytest.raises(ValueError, match=r"GuidedModel: labels must have shape \(4,\), got \(3,\)"):
        guided(x, t, labels[:3])
    with pytest.raises(ValueError, match="null_label must be an int"):
        GuidedModel(ToyModel(), 2.0, None)
    with pytest.raises(TypeError, match="model must be callable"):
        GuidedModel("model", 2.0, NULL)
    assert "scale=2.0" in repr(guided)


# ----------------------------------------------------------------------------- guidance in an interval

def test_interval_guides_inside_and_is_conditional_outside():
    """Inside [lo, hi] the guided mix, outside the plain conditional prediction bit for bit, from one call each."""
    x, _, labels = _inputs()
    xp = device_xp()
    for t_value, inside in ((3, False), (5, True), (7, True), (9, False)):
        t = xp.full((4,), t_value, dtype=np.int64)
        model = ToyModel()
        got = GuidedModel(model, 3.0, NULL, interval=(5, 7))(x, t, labels)
        want = GuidedModel(ToyModel(), 3.0 if inside else 1.0, NULL)(x, t, labels)
        np.testing.assert_array_equal(to_numpy(got), to_numpy(want))
        assert len(model.calls) == 1 and model.calls[0][0] == (8 if inside else 4)


def test_interval_per_sample_when_the_batch_straddles_it():
    """A batch whose t lie on both sides gets w per sample (what the CuPy path always does)."""
    x, _, labels = _inputs()
    t = to_device(np.array([2, 5, 6, 9]))
    got = to_numpy(GuidedModel(ToyModel(), 2.5, NULL, interval=(5, 6))(x, t, labels))
    for n, inside in enumerate((False, True, True, False)):
        want = to_numpy(GuidedModel(ToyModel(), 2.5 if inside else 1.0, NULL)(x[n:n + 1], t[n:n + 1], labels[n:n + 1]))
        np.testing.assert_allclose(got[n:n + 1], want, rtol=1e-12, atol=1e-14)


def test_interval_in_a_sampler_run():
    """Over a whole DDIM run: the interval covering every step is plain guidance; one covering none is no guidance."""
    schedule = make_schedule("cosine", 100)
    x, _, labels = _inputs()

    def run(**kw):
        return to_numpy(ddim_sample(GuidedModel(ToyModel(), kw.pop("scale", 4.0), NULL, **kw), schedule, x_T=x,
                                    labels=labels, num_steps=10, progress=False))

    np.testing.assert_array_equal(run(interval=(0, 99)), run())
    np.testing.assert_array_equal(run(interval=(200, 300)), run(scale=1.0))
    middle = run(interval=(30, 70))
    assert not np.allclose(middle, run()) and not np.allclose(middle, run(scale=1.0))


@pytest.mark.parametrize("bad", [(5,), (7, 5), (-1, 3), (1.5, 3), "5,7", 5])
def test_interval_refused(bad):
    with pytest.raises(ValueError, match="GuidedModel: the guidance interval"):
        GuidedModel(ToyModel(), 2.0, NULL, interval=bad)
