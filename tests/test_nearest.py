"""tinyddpm/evaluation/nearest.py: nearest training images against a brute-force reference, planted copies, the picture."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyddpm.evaluation.nearest import memorisation_check, nearest_neighbours, plot_nearest, train_baseline


def brute_force(q, r, exclude=None):
    """Every distance in float64, one pair at a time in spirit: (M, N) by broadcasting."""
    q = q.reshape(len(q), -1).astype(np.float64)
    r = r.reshape(len(r), -1).astype(np.float64)
    d = np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(axis=2))   # (M, N)
    if exclude is not None:
        d[np.arange(len(q)), exclude] = np.inf
    return d


@settings(max_examples=25, deadline=None)
@given(M=st.integers(1, 9), N=st.integers(2, 40), C=st.sampled_from([1, 3]), H=st.integers(1, 6),
       chunk=st.integers(1, 16), seed=st.integers(0, 2**31 - 1))
def test_matches_brute_force(M, N, C, H, chunk, seed):
    rng = np.random.default_rng(seed)
    q = rng.uniform(-1, 1, (M, C, H, H)).astype(np.float32)
    r = rng.uniform(-1, 1, (N, C, H, H)).astype(np.float32)
    indices, distances = nearest_neighbours(q, r, chunk=chunk)
    d = brute_force(q, r)
    np.testing.assert_allclose(distances, d.min(axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(d[np.arange(M), indices], d.min(axis=1), rtol=1e-4, atol=1e-4)  # a nearest one
    exclude = rng.integers(0, N, M)
    indices, distances = nearest_neighbours(q, r, chunk=chunk, exclude=exclude)
    assert not np.any(indices == exclude)
    np.testing.assert_allclose(distances, brute_force(q, r, exclude).min(axis=1), rtol=1e-5, atol=1e-5)


def test_a_planted_copy_is_found_at_distance_zero():
    rng = np.random.default_rng(0)
    train = rng.uniform(-1, 1, (3000, 1, 28, 28)).astype(np.float32)
    samples = rng.uniform(-1, 1, (5, 1, 28, 28)).astype(np.float32)
    samples[2] = train[1234]                                         # an exact copy
    samples[4] = train[2999] + 0.01                                  # a near copy
    indices, distances = nearest_neighbours(samples, train, chunk=512)
    assert indices[2] == 1234 and distances[2] == 0.0
    assert indices[4] == 2999 and distances[4] == pytest.approx(0.28, rel=1e-3)   # 0.01 * sqrt(784)
    report = memorisation_check(samples, train, n_baseline=50)
    assert report["copies"] == 1 and report["median"] > 0 and report["baseline_median"] > 10


def test_train_baseline_never_matches_an_image_with_itself():
    train = np.random.default_rng(1).uniform(-1, 1, (30, 3, 4, 4)).astype(np.float32)
    d = train_baseline(train, 30)
    assert len(d) == 30 and np.all(d > 0)
    train[7] = train[3]                                              # a duplicate pair: 0 for both
    assert np.sum(train_baseline(train, 30) == 0) == 2


def test_bad_input_is_named():
    r = np.zeros((4, 1, 5, 5), np.float32)
    with pytest.raises(ValueError, match="differ in image shape"):
        nearest_neighbours(np.zeros((2, 1, 4, 4), np.float32), r)
    with pytest.raises(ValueError, match="queries must be a non-empty float array"):
        nearest_neighbours(np.zeros((2, 1, 5, 5), np.uint8), r)
    with pytest.raises(ValueError, match="reference .* hold NaN"):
        nearest_neighbours(np.zeros((2, 1, 5, 5), np.float32), r * np.nan)


@pytest.mark.parametrize("C", [1, 3])
def test_the_picture_grey_and_colour(tmp_path, C):
    rng = np.random.default_rng(2)
    train = rng.uniform(-1, 1, (20, C, 8, 8)).astype(np.float32)
    samples = rng.uniform(-1, 1, (6, C, 8, 8)).astype(np.float32)
    indices, distances = nearest_neighbours(samples, train)
    path = plot_nearest(tmp_path / "nearest.png", samples, train, indices, distances, title="t")
    assert path.stat().st_size > 1000
