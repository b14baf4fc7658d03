"""metrics: FID, k-NN precision/recall, conditional accuracy and Inception Score on cases with known answers."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinyddpm.evaluation.metrics import (conditional_accuracy, fid_from_features, frechet_distance, gaussian_stats,
    inception_score, knn_radii, precision_recall, real_baseline, sample_quality)


def random_spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


# --------------------------------------------------------------------------------------------
# Frechet distance
# --------------------------------------------------------------------------------------------

def test_identical_sets_have_zero_fid():
    f = np.random.default_rng(0).standard_normal((500, 16))
    assert abs(fid_from_features(f, f.copy())) < 1e-8


@settings(max_examples=15, deadline=None)
@given(d=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
def test_shifted_identity_gaussians(d, seed):
    m = np.random.default_rng(seed).standard_normal(d)
    assert frechet_distance(m, np.eye(d), np.zeros(d), np.eye(d)) == pytest.approx(m @ m, rel=1e-10, abs=1e-10)


@settings(max_examples=15, deadline=None)
@given(d=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
def test_diagonal_covariances_closed_form(d, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.01, 4.0, d), rng.uniform(0.01, 4.0, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-10)


@settings(max_examples=15, deadline=None)
@given(d=st.integers(1, 10), seed=st.integers(0, 2**31 - 1))
def test_general_covariances_match_eigenvalues_of_product(d, seed):
    # an independent route: the eigenvalues of S1 S2 (similar to an SPD matrix: real, positive)
    rng = np.random.default_rng(seed)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    tr_sqrt = np.sum(np.sqrt(np.linalg.eigvals(s1 @ s2).real))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8, abs=1e-9)


def test_singular_covariance_is_handled():
    # rank-deficient covariances (fewer samples than dimensions): no NaN, and zero for equal inputs
    f = np.random.default_rng(1).standard_normal((5, 20))
    mu, s = gaussian_stats(f)
    assert np.linalg.matrix_rank(s) < 20
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-8


def test_fid_of_sampled_gaussians_is_near_the_closed_form():
    rng = np.random.default_rng(2)
    m = np.array([1.0, -2.0, 0.5])
    f1, f2 = rng.standard_normal((20000, 3)), rng.standard_normal((20000, 3)) + m
    assert fid_from_features(f1, f2) == pytest.approx(m @ m, abs=0.2)  # the sampling std is about 0.05


def test_fid_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"frechet_distance.*\(3,\).*\(4, 4\)"):
        frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match=r"fid_from_features.*\(10, 3\).*\(10, 4\)"):
        fid_from_features(rng.standard_normal((10, 3)), rng.standard_normal((10, 4)))
    with pytest.raises(ValueError, match=r"fid_from_features.*2-D.*\(10,\)"):
        fid_from_features(np.zeros(10), np.zeros(10))


def test_nan_is_an_error_not_a_number():
    f = np.random.default_rng(0).standard_normal((10, 3))
    g = f.copy()
    g[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"fid_from_features.*\(10, 3\).*NaN"):
        fid_from_features(f, g)
    with pytest.raises(ValueError, match=r"precision_recall.*NaN"):
        precision_recall(f, g)
    with pytest.raises(ValueError, match=r"frechet_distance.*NaN"):
        frechet_distance(np.full(2, np.nan), np.eye(2), np.zeros(2), np.eye(2))


# --------------------------------------------------------------------------------------------
# precision and recall
# --------------------------------------------------------------------------------------------

def brute_precision_recall(real, fake, k):
    def radii(f):
        d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1))
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def coverage(q, s, r):
        d = np.sqrt(((q[:, None] - s[None]) ** 2).sum(-1))
        return float(np.mean((d <= r[None]).any(axis=1)))

    return coverage(fake, real, radii(real)), coverage(real, fake, radii(fake))


def test_identical_sets_have_full_precision_and_recall():
    f = np.random.default_rng(0).standard_normal((300, 8))
    assert precision_recall(f, f.copy()) == (1.0, 1.0)


def test_disjoint_sets_have_zero_precision_and_recall():
    rng = np.random.default_rng(0)
    real, fake = rng.standard_normal((200, 4)), rng.standard_normal((150, 4)) + 100.0
    assert precision_recall(real, fake) == (0.0, 0.0)


def test_mode_dropping_lowers_recall_not_precision():
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0], [20.0, 0.0]])
    real = np.concatenate([c + rng.standard_normal((200, 2)) for c in centres])
    fake = centres[0] + rng.standard_normal((400, 2))  # only one of the two modes
    precision, recall = precision_recall(real, fake)
    assert precision > 0.9 and 0.4 < recall < 0.6


@settings(max_examples=15, deadline=None)
@given(n=st.integers(5, 40), m=st.integers(5, 40), d=st.integers(1, 5), k=st.integers(1, 4),
       chunk=st.integers(1, 50), seed=st.integers(0, 2**31 - 1))
def test_precision_recall_match_brute_force(n, m, d, k, chunk, seed):
    rng = np.random.default_rng(seed)
    real, fake = rng.standard_normal((n, d)), rng.standard_normal((m, d)) + 0.5
    assert precision_recall(real, fake, k=k, chunk=chunk) == pytest.approx(brute_precision_recall(real, fake, k))


def test_knn_radii_match_brute_force():
    f = np.random.default_rng(4).standard_normal((30, 3))
    d2 = ((f[:, None] - f[None]) ** 2).sum(-1)
    np.testing.assert_allclose(knn_radii(f, k=3, chunk=7), np.sort(d2, axis=1)[:, 3], rtol=1e-10, atol=1e-12)


def test_precision_recall_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"precision_recall.*\(10, 3\).*\(10, 2\)"):
        precision_recall(rng.standard_normal((10, 3)), rng.standard_normal((10, 2)))
    with pytest.raises(ValueError, match=r"precision_recall.*k = 3.*\(3, 2\)"):
        precision_recall(rng.standard_normal((3, 2)), rng.standard_normal((10, 2)))


# --------------------------------------------------------------------------------------------
# classifier-based metrics
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 10])
def test_inception_score_of_confident_uniform_classifier_is_k(k):
    probs = np.eye(k)[np.arange(10 * k) % k]  # one-hot, every class equally often
    assert inception_score(probs) == pytest.approx(k, rel=1e-12)
    assert inception_score(probs, splits=10) == pytest.approx(k, rel=1e-12)


def test_inception_score_of_constant_prediction_is_one():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10))
    assert inception_score(np.tile(p, (50, 1))) == pytest.approx(1.0, abs=1e-12)
    assert inception_score(np.tile(np.eye(10)[3], (50, 1))) == pytest.approx(1.0, abs=1e-12)


def test_inception_score_lies_between_one_and_k():
    probs = np.random.default_rng(1).dirichlet(0.3 * np.ones(10), size=200)
    assert 1.0 < inception_score(probs) < 10.0
    with pytest.raises(ValueError, match=r"inception_score.*\(200, 10\).*summing to 1"):
        inception_score(probs * 2)
    with pytest.raises(ValueError, match=r"inception_score.*splits.*201"):
        inception_score(probs, splits=201)


def test_conditional_accuracy():
    requested = np.array([0, 1, 2, 3])
    assert conditional_accuracy(np.array([0, 1, 2, 0]), requested) == 0.75
    assert conditional_accuracy(np.eye(4)[[0, 1, 1, 3]], requested) == 0.75
    with pytest.raises(ValueError, match=r"conditional_accuracy.*\(3,\).*\(4,\)"):
        conditional_accuracy(np.array([0, 1, 2]), requested)


def test_real_baseline_and_sample_quality():
    rng = np.random.default_rng(5)
    real = rng.standard_normal((400, 4))
    base = real_baseline(real, 200)
    assert base["n"] == 200 and 0.0 < base["fid"] < 0.2
    assert 0.8 < base["precision"] <= 1.0 and 0.8 < base["recall"] <= 1.0
    assert real_baseline(real, 200) == base  # seeded
    with pytest.raises(ValueError, match=r"real_baseline.*201.*\(400, 4\)"):
        real_baseline(real, 201)
    probs = np.eye(4)[np.arange(100) % 4]
    q = sample_quality(real[:100] + 10.0, real[100:], fake_probs=probs, requested=np.arange(100) % 4)
    assert q["fid"] == pytest.approx(400.0, rel=0.1) and q["precision"] == 0.0 and q["recall"] == 0.0
    assert q["inception_score"] == pytest.approx(4.0) and q["accuracy"] == 1.0
