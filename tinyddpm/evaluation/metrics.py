"""Sample-quality metrics on classifier outputs: FID, precision/recall, accuracy, Inception Score.

NumPy only and float64 throughout. The inputs are feature arrays (N, D) (the penultimate layer of
tinyddpm.classifiers.judge: ``judge.features(params, images)``) or softmax outputs (N, K)
(``classifier.predict_proba``). NaN or inf in an input raises a ValueError naming the function:
a metric of a diverged model should be seen, not reported as a number.

Frechet distance (FID, Heusel et al. 2017) between Gaussians N(mu1, S1) and N(mu2, S2) fitted to
two feature sets:

    d^2 = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2})

S1 S2 is not symmetric, but it is similar to A = S1^{1/2} S2 S1^{1/2}, which is symmetric positive
semi-definite: S1 S2 = S1^{1/2} A S1^{-1/2}. Similar matrices share eigenvalues, so

    Tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(A))

and two symmetric eigen-decompositions (numpy.linalg.eigh/eigvalsh) are enough; no scipy.sqrtm,
no complex parts to discard. Round-off leaves eigenvalues like +-1e-16 * max where the true value is
0 (a singular covariance); those below D * eps * max are set to 0 before the square root.
The covariances use ddof=1 (numpy.cov's default), as the reference FID code does.

Precision and recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric"), k = 3:
the manifold of a set is the union of balls around its samples, each with radius the distance to
its k-th nearest neighbour in the same set (itself not counted). Then

    precision = share of generated samples that lie in the real manifold   (are the samples real-looking?)
    recall    = share of real samples that lie in the generated manifold   (is all of the data covered?)

Distances come from ||a - b||^2 = ||a||^2 - 2 a.b + ||b||^2, one GEMM per chunk of ``chunk`` rows
so that memory stays at chunk * N floats.

Inception Score on MNIST (Salimans et al. 2016, with the classifier of this package in place of
Inception):

    IS = exp( E_x KL(p(y|x) || p(y)) ),   p(y) = E_x p(y|x)

It lies in [1, K]: 1 when every sample gets the same prediction, K when predictions are confident
(one-hot) and the K classes are equally frequent. Splits: Salimans et al. cut the samples into 10
groups and report the mean (and std) over groups; TF-GAN's classifier score and mnist_score compute
one score on all the logits at once. We default to that, ``splits=1``; with splits > 1 the mean of
the per-split scores is returned, so quote the number of splits with the score.

Baselines: every metric here is biased by the sample size, so compare a model against two
disjoint sets of real digits of the same size (``real_baseline``): the FID a perfect model would get,
and the precision and recall it would get, at that N.
"""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy
from ..checks import check_int


def _finite_2d(where: str, name: str, a) -> np.ndarray:
    """a as a float64 (N, D) NumPy array, or a ValueError/TypeError naming ``where`` and the shape."""
    a = to_numpy(a)  # metrics run on the host (a CuPy array is copied there)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{where}: {name} must be a numeric array, got dtype {a.dtype} shape {a.shape}")
    if a.ndim != 2:
        raise ValueError(f"{where}: {name} must be 2-D (N, D), got shape {a.shape}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{where}: {name} {a.shape} contains NaN or inf")
    return a


# --------------------------------------------------------------------------------------------
# Frechet distance
# --------------------------------------------------------------------------------------------

def _clip_eigenvalues(lam: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with round-off removed: those below D * eps * max(|lam|) become 0.

    A singular covariance (fewer samples than dimensions) has exact zeros that eigh returns as
    +-1e-16 * max; their square roots (1e-8 * sqrt(max) each) would add up to a visible bias.
    """
    floor = lam.size * np.finfo(np.float64).eps * max(float(np.max(np.abs(lam), initial=0.0)), 1e-300)
    return np.where(lam > floor, lam, 0.0)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric PSD matrix: V diag(sqrt(l)) V^T, round-off clipped."""
    lam, v = np.linalg.eigh(s)
    return (v * np.sqrt(_clip_eigenvalues(lam))) @ v.T  # (D, D)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) for means (D,) and covariances (D, D)."""
    where = "frechet_distance"
    mu1, mu2 = (np.atleast_1d(np.asarray(to_numpy(m), dtype=np.float64)) for m in (mu1, mu2))
    s1, s2 = (np.atleast_2d(np.asarray(to_numpy(s), dtype=np.float64)) for s in (sigma1, sigma2))
    D = mu1.shape[0]
    if mu1.ndim != 1 or mu2.shape != (D,) or s1.shape != (D, D) or s2.shape != (D, D):
        raise ValueError(f"{where}: need mu1, mu2 (D,) and sigma1, sigma2 (D, D); got mu1 {mu1.shape}, "
                         f"sigma1 {s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}")
    for name, a in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{where}: {name} {a.shape} contains NaN or inf")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2  # symmetric to round-off, exactly symmetric now
    r1 = _sqrt_psd(s1)
    a = r1 @ s2 @ r1                          # (D, D) similar to S1 S2, symmetric PSD
    lam = np.linalg.eigvalsh((a + a.T) / 2)
    tr_sqrt = float(np.sum(np.sqrt(_clip_eigenvalues(lam))))  # Tr((S1 S2)^{1/2})
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def gaussian_stats(f) -> tuple:
    """(mean (D,), covariance (D, D) with ddof=1) of features (N, D), N >= 2."""
    f = _finite_2d("gaussian_stats", "features", f)
    if f.shape[0] < 2:
        raise ValueError(f"gaussian_stats: need at least 2 samples for a covariance, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def fid_from_features(f1, f2) -> float:
    """Frechet distance between Gaussians fitted to features f1 (N1, D) and f2 (N2, D)."""
    f1 = _finite_2d("fid_from_features", "f1", f1)
    f2 = _finite_2d("fid_from_features", "f2", f2)
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"fid_from_features: f1 {f1.shape} and f2 {f2.shape} have different feature sizes")
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))


# --------------------------------------------------------------------------------------------
# k-NN precision and recall
# --------------------------------------------------------------------------------------------

def _squared_distances(a, b, b_sq):
    """||a_i - b_j||^2 (len(a), len(b)), clipped at 0 against round-off."""
    d = (a * a).sum(axis=1)[:, None] - 2.0 * (a @ b.T) + b_sq[None, :]
    return np.maximum(d, 0.0)


def knn_radii(f, k: int = 3, chunk: int = 1024) -> np.ndarray:
    """Squared distance (N,) of each row of f (N, D) to its k-th nearest other row."""
    f = _finite_2d("knn_radii", "features", f)
    if not 1 <= k < f.shape[0]:
        raise ValueError(f"knn_radii: k must be in [1, N-1] = [1, {f.shape[0] - 1}], got {k} (features {f.shape})")
    sq = (f * f).sum(axis=1)
    out = np.empty(f.shape[0])
    for start in range(0, f.shape[0], chunk):  # a loop over chunks of rows, to bound memory
        d = _squared_distances(f[start:start + chunk], f, sq)  # (chunk, N)
        rows = np.arange(d.shape[0])
        d[rows, start + rows] = -1.0                # itself: sorted first, never a neighbour
        out[start:start + chunk] = np.partition(d, k, axis=1)[:, k]  # index 0 is itself
    return out


def manifold_coverage(query, support, support_radii, chunk: int = 1024) -> float:
    """Share of query rows within radius of some support row: ||q - s||^2 <= r_s (squared radii)."""
    sq = (support * support).sum(axis=1)
    inside = np.empty(query.shape[0], dtype=bool)
    for start in range(0, query.shape[0], chunk):
        d = _squared_distances(query[start:start + chunk], support, sq)  # (chunk, M)
        inside[start:start + chunk] = (d <= support_radii[None, :]).any(axis=1)
    return float(inside.mean())


def precision_recall(real, fake, k: int = 3, chunk: int = 1024) -> tuple:
    """(precision, recall) of generated features fake (M, D) against real features real (N, D), k-NN manifolds."""
    where = "precision_recall"
    real, fake = _finite_2d(where, "real", real), _finite_2d(where, "fake", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"{where}: real {real.shape} and fake {fake.shape} have different feature sizes")
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"{where}: each set needs more than k = {k} samples: real {real.shape}, fake {fake.shape}")
    precision = manifold_coverage(fake, real, knn_radii(real, k, chunk), chunk)
    recall = manifold_coverage(real, fake, knn_radii(fake, k, chunk), chunk)
    return precision, recall


# --------------------------------------------------------------------------------------------
# classifier-based metrics
# --------------------------------------------------------------------------------------------

def _probabilities(where: str, probs) -> np.ndarray:
    p = _finite_2d(where, "probs", probs)
    if p.size == 0:
        raise ValueError(f"{where}: probs must hold at least one row of one class, got shape {p.shape}")
    if p.min() < 0 or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError(f"{where}: probs {p.shape} must be non-negative rows summing to 1 (softmax outputs)")
    return p


def conditional_accuracy(predicted, requested) -> float:
    """Share of class-conditional samples classified as the digit they were asked for.

    ``predicted`` is (N,) predicted labels or (N, K) probabilities (argmax taken); ``requested`` (N,) labels.
    """
    where = "conditional_accuracy"
    predicted, requested = to_numpy(predicted), to_numpy(requested)  # np.asarray refuses CuPy arrays
    if predicted.ndim == 2:
        predicted = _probabilities(where, predicted).argmax(axis=1)
    if predicted.ndim != 1 or requested.shape != predicted.shape or predicted.size == 0:
        raise ValueError(f"{where}: predicted (N,) or (N, K) and requested (N,) must agree in N >= 1, "
                         f"got predicted {predicted.shape}, requested {requested.shape}")
    return float(np.mean(predicted == requested))


def inception_score(probs, splits: int = 1) -> float:
    """exp(E_x KL(p(y|x) || p(y))) of softmax outputs (N, K); mean over ``splits`` equal groups (default 1)."""
    where = "inception_score"
    p = _probabilities(where, probs)
    if not 1 <= splits <= p.shape[0]:
        raise ValueError(f"{where}: splits must be in [1, N] = [1, {p.shape[0]}], got {splits} (probs {p.shape})")
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(axis=0, keepdims=True)  # (1, K) the marginal p(y) of this split
        # KL(p(y|x) || p(y)) = sum_y p log(p / py), with 0 log 0 = 0 (where p = 0, py may be 0 too)
        log_p = np.log(np.where(part > 0, part, 1.0))  # (n, K), log 1 = 0 stands in where p = 0
        log_py = np.log(np.where(py > 0, py, 1.0))    # (1, K), py > 0 wherever some p > 0
        terms = np.where(part > 0, part * (log_p - log_py), 0.0)  # (n, K)
        scores.append(float(np.exp(terms.sum(axis=1).mean())))
    return float(np.mean(scores))


# --------------------------------------------------------------------------------------------
# everything at once, and the real-vs-real baseline
# --------------------------------------------------------------------------------------------

def sample_quality(fake_features, real_features, fake_probs=None, requested=None, k: int = 3) -> dict:
    """All metrics of one set of samples: {"fid", "precision", "recall", ["inception_score"], ["accuracy"], "n"}."""
    precision, recall = precision_recall(real_features, fake_features, k=k)
    out = {"fid": fid_from_features(real_features, fake_features), "precision": precision, "recall": recall,
           "n_fake": int(np.shape(fake_features)[0]), "n_real": int(np.shape(real_features)[0])}
    if fake_probs is not None:
        out["inception_score"] = inception_score(fake_probs)
        if requested is not None:
            out["accuracy"] = conditional_accuracy(fake_probs, requested)
    return out


def real_baseline(real_features, n: int, seed: int = 0, k: int = 3) -> dict:
    """FID, precision and recall between two disjoint random subsets of n real samples each.

    The numbers a perfect generator would get with n samples: quote model metrics next to them.
    """
    f = _finite_2d("real_baseline", "real_features", real_features)
    seed = check_int("real_baseline", "seed", seed, minimum=0)
    if not 2 <= n <= f.shape[0] // 2:
        raise ValueError(f"real_baseline: n must be in [2, N/2] = [2, {f.shape[0] // 2}], got {n} (features {f.shape})")
    order = np.random.default_rng(seed).permutation(f.shape[0])
    a, b = f[order[:n]], f[order[n:2 * n]]
    precision, recall = precision_recall(a, b, k=k)
    return {"fid": fid_from_features(a, b), "precision": precision, "recall": recall, "n": n}
