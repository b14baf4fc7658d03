"""classifier: softmax cross-entropy (gradient check, oracle, bad input, NaN), the whole small CNN
(gradient check, PyTorch oracle), batched inference, a short training run, and the weight cache."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import OP_TOLERANCE, ORACLE_TOLERANCE, oracle_error, randn, to_torch
from tinyddpm.backend import device_xp, to_device, to_numpy
from tinyddpm.checkpoint import save_checkpoint
from tinyddpm.classifiers.judge import (ClassifierConfig, accuracy, classifier_backward, classifier_forward,
    classifier_loss, classify, default_cache_dir, features, init_params, load_or_train_classifier, predict_proba,
    train_classifier)
from tinyddpm.ops.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from tinyddpm.gradcheck import BLOCK_STEP, BLOCK_TOLERANCE, check_gradients

TINY = ClassifierConfig(image_size=8, channels=(2, 3, 4), features=5, num_classes=3)


def labels_of(rng, n, k):
    return to_device(rng.integers(0, k, size=n))


# --------------------------------------------------------------------------------------------
# softmax cross-entropy
# --------------------------------------------------------------------------------------------

# Logits are drawn at scale <= 1: a probability p far below 1e-3 has gradient p, which moves a loss of
# size ~1 by p*h, under float64's resolution of that loss, so no finite difference could confirm it.
@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 6), k=st.integers(1, 7), scale=st.sampled_from([0.5, 1.0]), seed=st.integers(0, 2**31 - 1))
def test_cross_entropy_gradcheck(n, k, scale, seed):
    rng = np.random.default_rng(seed)
    labels = labels_of(rng, n, k)
    forward = lambda z: softmax_cross_entropy_forward(z, labels, reduction="none")  # one loss per row
    errors = check_gradients(forward, softmax_cross_entropy_backward, {"logits": randn(rng, n, k) * scale}, seed=seed)
    assert max(errors.values()) < OP_TOLERANCE, errors


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_entropy_mean_gradcheck(seed):
    rng = np.random.default_rng(seed)
    labels = labels_of(rng, 4, 5)
    forward = lambda z: softmax_cross_entropy_forward(z, labels)
    errors = check_gradients(forward, softmax_cross_entropy_backward, {"logits": randn(rng, 4, 5)}, seed=seed)
    assert max(errors.values()) < OP_TOLERANCE, errors


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_dtypes_preserved(dtype):
    rng = np.random.default_rng(0)
    loss, cache = softmax_cross_entropy_forward(randn(rng, 4, 5, dtype=dtype), labels_of(rng, 4, 5))
    dz = softmax_cross_entropy_backward(1.0, cache)
    assert loss.dtype == dtype and dz.dtype == dtype and dz.shape == (4, 5)


def test_cross_entropy_matches_torch(torch):
    rng = np.random.default_rng(1)
    z, labels = randn(rng, 6, 4) * 3, labels_of(rng, 6, 4)
    loss, cache = softmax_cross_entropy_forward(z, labels)
    dz = softmax_cross_entropy_backward(0.7, cache)
    tz = to_torch(torch, z)
    tloss = torch.nn.functional.cross_entropy(tz, torch.tensor(to_numpy(labels)))
    (tloss * 0.7).backward()
    assert oracle_error(loss, tloss) < ORACLE_TOLERANCE and oracle_error(dz, tz.grad) < ORACLE_TOLERANCE
    rows, cache = softmax_cross_entropy_forward(z, labels, reduction="none")
    drows = randn(rng, 6)
    tz.grad = None
    trows = torch.nn.functional.cross_entropy(tz, torch.tensor(to_numpy(labels)), reduction="none")
    trows.backward(to_torch(torch, drows, requires_grad=False))
    dz = softmax_cross_entropy_backward(drows, cache)
    assert oracle_error(rows, trows) < ORACLE_TOLERANCE and oracle_error(dz, tz.grad) < ORACLE_TOLERANCE


def test_cross_entropy_has_no_overflow():
    z = to_device(np.array([[1000.0, -1000.0], [-1000.0, 1000.0]]))
    loss, cache = softmax_cross_entropy_forward(z, to_device(np.array([0, 0])))
    dz = to_numpy(softmax_cross_entropy_backward(1.0, cache))
    assert float(loss) == pytest.approx(1000.0) and np.isfinite(dz).all()


def test_cross_entropy_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"softmax_cross_entropy.*2-D.*\(2, 3, 4\)"):
        softmax_cross_entropy_forward(randn(rng, 2, 3, 4), labels_of(rng, 2, 3))
    with pytest.raises(ValueError, match=r"softmax_cross_entropy.*\(2, 3\).*\(4,\)"):
        softmax_cross_entropy_forward(randn(rng, 2, 3), labels_of(rng, 4, 3))
    if device_xp() is np:
        with pytest.raises(ValueError, match=r"softmax_cross_entropy.*\[0, 3\).*\(2, 3\)"):
            softmax_cross_entropy_forward(randn(rng, 2, 3), to_device(np.array([0, 3])))
    else:  # CuPy labels are not read back to be checked (a GPU wait per call): the bad row's loss is NaN
        per_row, _ = softmax_cross_entropy_forward(randn(rng, 2, 3), to_device(np.array([0, 3])), reduction="none")
        assert np.array_equal(np.isnan(to_numpy(per_row)), [False, True])
    with pytest.raises(TypeError, match=r"softmax_cross_entropy.*integer.*float64"):
        softmax_cross_entropy_forward(randn(rng, 2, 3), randn(rng, 2))
    with pytest.raises(TypeError, match=r"softmax_cross_entropy.*int64"):
        softmax_cross_entropy_forward(to_device(np.ones((2, 3), dtype=np.int64)), labels_of(rng, 2, 3))


def test_cross_entropy_nan_propagates():
    rng = np.random.default_rng(0)
    z = randn(rng, 3, 4)
    z[1, 2] = np.nan
    loss, cache = softmax_cross_entropy_forward(z, labels_of(rng, 3, 4))
    dz = to_numpy(softmax_cross_entropy_backward(1.0, cache))
    assert np.isnan(float(loss)) and np.isnan(dz[1]).all() and not np.isnan(dz[[0, 2]]).any()


# --------------------------------------------------------------------------------------------
# the whole network
# --------------------------------------------------------------------------------------------

def tiny_params(seed, dtype=np.float64):
    rng = np.random.default_rng(seed + 7)
    return {k: to_device(to_numpy(v) + 0.3 * rng.standard_normal(v.shape).astype(dtype))
            for k, v in init_params(TINY, seed=seed, dtype=dtype).items()}


@settings(max_examples=3, deadline=None)
@given(n=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_whole_classifier_gradcheck(n, seed):
    params = tiny_params(seed)
    keys = list(params)

    def forward(x, *values):
        return classifier_forward(dict(zip(keys, values)), x)

    def backward(dy, cache):
        dx, grads = classifier_backward(dy, cache)
        return (dx, *(grads[k] for k in keys))

    x = randn(np.random.default_rng(seed), n, 1, 8, 8)
    errors = check_gradients(forward, backward, {"x": x, **params}, seed=seed, max_entries=4, h=BLOCK_STEP)
    assert max(errors.values()) < BLOCK_TOLERANCE, errors


def test_whole_classifier_matches_torch(torch):
    F = torch.nn.functional
    params = tiny_params(3)
    rng = np.random.default_rng(3)
    x, labels = randn(rng, 2, 1, 8, 8), labels_of(rng, 2, 3)
    loss, grads, logits = classifier_loss(params, x, labels)
    t = {k: to_torch(torch, v) for k, v in params.items()}
    h = to_torch(torch, x, requires_grad=False)
    for name, stride in (("conv1", 1), ("conv2", 2), ("conv3", 2)):
        h = F.silu(F.conv2d(h, t[f"{name}.w"], t[f"{name}.b"], stride=stride, padding=1))
    h = F.silu(F.linear(h.reshape(2, -1), t["fc1.w"], t["fc1.b"]))
    tlogits = F.linear(h, t["fc2.w"], t["fc2.b"])
    tloss = F.cross_entropy(tlogits, torch.tensor(to_numpy(labels)))
    tloss.backward()
    assert oracle_error(logits, tlogits) < ORACLE_TOLERANCE and oracle_error(loss, tloss) < ORACLE_TOLERANCE
    for k in params:
        assert oracle_error(grads[k], t[k].grad) < ORACLE_TOLERANCE, k


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_classifier_dtypes_and_shapes(dtype):
    params = init_params(TINY, dtype=dtype)
    x = randn(np.random.default_rng(0), 2, 1, 8, 8, dtype=dtype)
    logits, cache = classifier_forward(params, x)
    dx, grads = classifier_backward(logits * 0 + 1, cache)
    assert logits.shape == (2, 3) and cache.features.shape == (2, 5) and dx.shape == x.shape
    assert logits.dtype == dtype and dx.dtype == dtype
    assert set(grads) == set(params)
    assert all(grads[k].shape == params[k].shape and grads[k].dtype == dtype for k in grads)


def test_classifier_bad_input():
    params = init_params(TINY)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"classifier.*\(2, 3, 8, 8\)"):
        classifier_forward(params, randn(rng, 2, 3, 8, 8, dtype=np.float32))
    with pytest.raises(ValueError, match=r"classifier.*fc1 expects.*\(2, 1, 12, 12\)"):
        classifier_forward(params, randn(rng, 2, 1, 12, 12, dtype=np.float32))
    with pytest.raises(TypeError, match=r"classifier.*mix dtypes"):
        classifier_forward(params, randn(rng, 2, 1, 8, 8))  # float64 images, float32 weights
    with pytest.raises(TypeError, match=r"classifier.classify.*uint8"):
        classify(params, np.zeros((2, 8, 8), dtype=np.uint8))


def test_batched_inference_agrees_with_one_batch():
    params = init_params(TINY)
    x = np.random.default_rng(1).uniform(-1, 1, size=(7, 1, 8, 8))  # float64 in: cast to the weights' float32
    logits, cache = classifier_forward(params, to_device(x.astype(np.float32)))
    p = predict_proba(params, x, batch_size=3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(classify(params, x[:, 0], batch_size=2), to_numpy(logits).argmax(axis=1))
    np.testing.assert_allclose(features(params, x, batch_size=4), to_numpy(cache.features), rtol=1e-6, atol=1e-7)
    assert features(params, x).dtype == np.float64 and classify(params, x).dtype == np.int64


# --------------------------------------------------------------------------------------------
# training and the cache
# --------------------------------------------------------------------------------------------

def test_short_training_lowers_the_loss():
    from tinyddpm.data import load_mnist
    from tinyddpm.data.pixels import to_model_range
    data = load_mnist("test", source="subset")  # real digits shipped with tinyddpm: never skipped
    x, y = to_model_range(data.images[:320]), data.labels[:320]
    cfg = ClassifierConfig(channels=(8, 16, 16), features=32)
    params, history = train_classifier(x, y, cfg=cfg, epochs=4, batch_size=32, lr=3e-3, log_every=1, verbose=False)
    losses = [loss for _, loss in history["loss"]]
    assert history["steps"] == 40 and np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
    assert accuracy(params, x, y) > 0.5
    with pytest.raises(ValueError, match=r"train_classifier: labels must lie in \[0, 10\), got range \[0, 10\]"):
        train_classifier(x[:64], np.r_[y[:63], 10], cfg=cfg, epochs=1, batch_size=32, verbose=False)


def test_random_shifts_move_each_image_within_the_bound():
    from tinyddpm.classifiers.judge import random_shifts
    rng = np.random.default_rng(0)
    x = np.full((64, 1, 28, 28), -1.0, dtype=np.float32)
    x[:, :, 13, 13] = 1.0                                          # one ink pixel in the middle of each image
    moved = random_shifts(x, 2, rng)
    assert moved.shape == x.shape and moved.dtype == x.dtype and (moved == 1.0).sum() == 64   # nothing lost
    where = np.argwhere(moved[:, 0] == 1.0)[:, 1:] - 13            # each image's (dy, dx)
    assert np.abs(where).max() == 2 and len({tuple(d) for d in where}) > 10   # up to 2 pixels, many different moves
    assert np.array_equal(random_shifts(x, 0, rng), x)


def test_the_recipe_gives_small_data_more_steps_and_shifts():
    from tinyddpm.classifiers.judge import MIN_STEPS, SMALL_DATA_SHIFT, training_recipe
    assert training_recipe(60_000) == (2.0, 0)                     # the full MNIST: 936 steps as always
    epochs, shift = training_recipe(5_000)                         # the shipped subset: 39 batches an epoch
    assert round(epochs * (5_000 // 128)) == MIN_STEPS and shift == SMALL_DATA_SHIFT > 0
    assert training_recipe(5_000, epochs=0.5) == (0.5, 0)          # asked for: as asked


@pytest.mark.slow
def test_the_judge_trained_on_the_shipped_subset_reads_97_percent(tmp_path, capsys):
    """load_or_train_classifier on the 5,000 shipped digits (what a learner without the full MNIST gets) reads at
    least 97% of the subset's 1,000 test digits (2 epochs read 91.5%), and says so when it loads. Slow: its
    MIN_STEPS steps of 128 digits take about a minute on 2 idle cores."""
    params, info = load_or_train_classifier(tmp_path, source="subset", verbose=False)
    assert info["max_shift"] > 0 and info["test_size"] == 1000 and "subset" in info["data_source"]
    assert info["test_accuracy"] >= 0.97, info["test_accuracy"]
    load_or_train_classifier(tmp_path)
    assert f"test accuracy {info['test_accuracy']:.4f}" in capsys.readouterr().out


def test_cache_is_loaded_not_retrained(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYDDPM_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "classifier"
    params = init_params(TINY)
    config = {"kind": "tinyddpm.classifier", "test_accuracy": 0.5, "data_source": "a test"}
    save_checkpoint(tmp_path / "classifier" / "classifier.npz", config=config, params=params)
    loaded, info = load_or_train_classifier(verbose=False)  # would train for minutes if it missed the cache
    assert info["test_accuracy"] == 0.5 and set(loaded) == set(params)
    assert all(np.array_equal(to_numpy(loaded[k]), to_numpy(params[k])) for k in params)
    assert type(loaded["fc1.w"]) is type(device_xp().zeros(1))

    save_checkpoint(tmp_path / "other" / "classifier.npz", config={"kind": "unet"}, params=params)
    with pytest.raises(ValueError, match=r"load_or_train_classifier.*other.*not a classifier"):
        load_or_train_classifier(tmp_path / "other", verbose=False)
