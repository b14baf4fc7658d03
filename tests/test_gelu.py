"""gelu (exact, erf form): gradient check (hypothesis shapes), PyTorch oracle, erf/erfc against math.erf,
tails without overflow, dtypes, bad input, NaN."""
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import OP_TOLERANCE, ORACLE_TOLERANCE, oracle_error, randn, to_torch
from tinyddpm.backend import to_device, to_numpy
from tinyddpm.gradcheck import check_gradients
from tinyddpm.ops.gelu import CHUNK, LARGE, SMALL, erf, erfc, gelu_backward, gelu_forward


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), scale=st.sampled_from([1.0, 4.0, 12.0]),
       seed=st.integers(0, 2**31 - 1))
def test_gradcheck(shape, scale, seed):
    rng = np.random.default_rng(seed)
    arrays = {"x": randn(rng, *shape) * scale}  # scale 4 and 12 reach every range of erf and both tails
    errors = check_gradients(gelu_forward, gelu_backward, arrays, seed=seed + 1)
    assert max(errors.values()) < OP_TOLERANCE, errors


def test_matches_torch(torch):
    rng = np.random.default_rng(1)
    x = to_numpy(randn(rng, 2, 3, 5, 5) * 4).copy()
    x.reshape(-1)[:6] = [0.0, SMALL * math.sqrt(2), LARGE * math.sqrt(2), -LARGE * math.sqrt(2), 9.0, -9.0]
    x, dy = to_device(x), randn(rng, 2, 3, 5, 5)
    y, cache = gelu_forward(x)
    dx = gelu_backward(dy, cache)
    tx = to_torch(torch, x)
    ty = torch.nn.functional.gelu(tx, approximate="none")
    ty.backward(to_torch(torch, dy, requires_grad=False))
    assert oracle_error(y, ty) < ORACLE_TOLERANCE
    assert oracle_error(dx, tx.grad) < ORACLE_TOLERANCE


def _ulps(ours, ref):
    return np.abs(ours - ref) / np.spacing(np.abs(ref))


def test_erf_matches_math():
    """erf within 4 ulp of math.erf and erfc within 8 ulp of math.erfc (relative, where erfc is a normal
    float; below that to the same absolute amount) on 400,000 points in [-30, 30], the range ends, tiny
    and huge values: float64 round-off, as the module docstring states."""
    rng = np.random.default_rng(0)
    ends = [SMALL, LARGE, 26.5, 27.3, 40.0, 41.0]
    z = np.concatenate([rng.uniform(-30, 30, 300_000), rng.uniform(-5, 5, 100_000),
                        np.logspace(-300, 0, 1000), -np.logspace(-300, 0, 1000),
                        [np.nextafter(e, d) for e in ends for d in (0.0, 100.0)], ends, np.negative(ends),
                        [0.0, -0.0, 1e300, -1e300]])
    ref_erf = np.frompyfunc(math.erf, 1, 1)(z).astype(np.float64)
    ref_erfc = np.frompyfunc(math.erfc, 1, 1)(z).astype(np.float64)
    assert np.max(_ulps(erf(z), ref_erf)) <= 4
    normal = ref_erfc >= np.finfo(np.float64).tiny
    assert np.max(_ulps(erfc(z)[normal], ref_erfc[normal])) <= 8
    assert np.max(np.abs(erfc(z)[~normal] - ref_erfc[~normal])) <= 8 * np.finfo(np.float64).smallest_subnormal
    assert erf(np.array([1e-300]))[0] == math.erf(1e-300) and erfc(np.array([-40.0]))[0] == 2.0


def test_many_blocks_match_math():
    """normal_cdf runs NumPy arrays in blocks of CHUNK entries: the seams (and the tail gather inside a block)
    change nothing. y within 1e-13 relative of x * math.erfc(-x / sqrt 2) / 2: the two round x / sqrt 2 apart,
    and erfc's slope magnifies that by 2 z^2 <= 200 at x = -20."""
    rng = np.random.default_rng(5)
    x = rng.uniform(-20, 20, 2 * CHUNK + 7)
    x[CHUNK - 2:CHUNK + 2] = [-7.0, 0.1, 7.0, -0.3]  # a tail entry next to the first seam
    y = to_numpy(gelu_forward(to_device(x))[0])
    ref = x * np.frompyfunc(lambda v: 0.5 * math.erfc(-v / math.sqrt(2)), 1, 1)(x).astype(np.float64)
    assert np.max(np.abs(y - ref) / np.maximum(np.abs(ref), 1e-300)) < 1e-13


def test_erf_catches_a_wrong_coefficient(monkeypatch):
    """The accuracy test above can fail: one coefficient off in its 12th digit shows as far more than 8 ulp."""
    import tinyddpm.ops.gelu as gelu

    monkeypatch.setattr(gelu, "_C", (gelu._C[0] * (1 + 1e-12),) + gelu._C[1:])
    z = np.linspace(0.5, 4.0, 1001)
    ref = np.frompyfunc(math.erfc, 1, 1)(z).astype(np.float64)
    assert np.max(_ulps(gelu.erfc(z), ref)) > 100


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_preserved(dtype):
    rng = np.random.default_rng(0)
    y, cache = gelu_forward(randn(rng, 3, 5, dtype=dtype))
    dx = gelu_backward(randn(rng, 3, 5, dtype=dtype), cache)
    assert y.dtype == dtype and dx.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_inputs_no_overflow_warning(dtype):
    x = to_device(np.array([-1e30, -1000.0, -40.0, -9.0, 0.0, 9.0, 40.0, 1000.0, 1e30], dtype=dtype))
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        y, cache = gelu_forward(x)
        dx = gelu_backward(to_device(np.ones(9, dtype=dtype)), cache)
    y, dx = to_numpy(y), to_numpy(dx)
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    assert y[0] == 0 and y[1] == 0 and y[4] == 0 and y[-1] == dtype(1e30) and y[-2] == 1000  # gelu(x) -> x for large x
    assert dx[0] == 0 and dx[4] == 0.5 and dx[-1] == 1                                      # gelu'(0) = Phi(0) = 1/2
    assert -1e-17 < y[3] < 0 if dtype == np.float64 else y[3] <= 0                          # Phi(-9) ~ 1e-19, kept


def test_left_tail_keeps_relative_accuracy():
    """Phi(x) = erfc(-x / sqrt 2) / 2: at x = -20, 1 + erf(x / sqrt 2) would give exactly 0."""
    x = to_device(np.array([-20.0, -30.0]))
    y = to_numpy(gelu_forward(x)[0])
    ref = np.array([v * 0.5 * math.erfc(-v / math.sqrt(2)) for v in (-20.0, -30.0)])
    assert np.all(np.abs(y - ref) <= 1e-13 * np.abs(ref)) and np.all(ref < 0)


def test_bad_input_names_op_and_shapes():
    with pytest.raises(TypeError, match=r"gelu.*int64.*\(2, 3\)"):
        gelu_forward(np.ones((2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match=r"gelu.*float16.*\(4,\)"):
        gelu_forward(np.ones(4, dtype=np.float16))
    with pytest.raises(TypeError, match=r"gelu.*must be a NumPy or CuPy array.*list"):
        gelu_forward([1.0, 2.0])
    _, cache = gelu_forward(randn(np.random.default_rng(0), 2, 3))
    with pytest.raises(TypeError, match=r"gelu_backward: inputs mix dtypes.*dy \(2, 3\) float32"):
        gelu_backward(randn(np.random.default_rng(0), 2, 3, dtype=np.float32), cache)


def test_nan_propagates():
    rng = np.random.default_rng(0)
    x = to_numpy(randn(rng, 2, 3)).copy()
    x[0, 1] = np.nan
    y, cache = gelu_forward(to_device(x))
    dx = gelu_backward(randn(rng, 2, 3), cache)
    y, dx = to_numpy(y), to_numpy(dx)
    assert np.isnan(y[0, 1]) and np.isnan(dx[0, 1])
    assert np.isnan(y).sum() == 1 and np.isnan(dx).sum() == 1
