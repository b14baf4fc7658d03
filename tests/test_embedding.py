"""timestep and label embeddings: gradient checks, PyTorch oracle, dtype rule, repeated labels, bad input, NaN."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import OP_TOLERANCE, ORACLE_TOLERANCE, NoHostReads, oracle_error, randn, to_torch, treat_as_device
from tinyddpm.backend import to_device, to_numpy
from tinyddpm.gradcheck import check_gradients
from tinyddpm.ops import embedding
from tinyddpm.array_checks import values_on_host
from tinyddpm.ops.embedding import (label_embedding_backward, label_embedding_forward,
                                    timestep_embedding_backward, timestep_embedding_forward)


# ----------------------------------------------------------------------------- timestep embedding

@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 6), dim=st.integers(2, 17), max_period=st.sampled_from([10000.0, 100.0]),
       seed=st.integers(0, 2**31 - 1))
def test_timestep_gradcheck(n, dim, max_period, seed):
    rng = np.random.default_rng(seed)
    t = to_device(rng.uniform(0.0, 1000.0, size=n))  # float64 timesteps, as a continuous-time model would use
    forward = lambda t: timestep_embedding_forward(t, dim, max_period)
    # h = 1e-3, not the default 1e-4: at t ~ 1000 each sin(t f) carries ~1e-13 of rounding from its argument,
    # which a difference quotient divides by h; with h = 1e-4 an unlucky draw (a gradient that nearly cancels
    # over the embedding) measured 2.4e-7 (n=3, dim=17, max_period=100, seed=39916800). The stencil's truncation
    # error at h = 1e-3 is ~h^4 f^5 < 1e-12 for these frequencies (f <= 1).
    errors = check_gradients(forward, timestep_embedding_backward, {"t": t}, seed=seed + 1, h=1e-3)
    assert max(errors.values()) < OP_TOLERANCE, errors


def test_timestep_layout_sin_then_cos_then_padding():
    t = to_device(np.array([0, 3, 999]))
    emb = to_numpy(timestep_embedding_forward(t, 7, dtype=np.float64)[0])
    half = 3
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
    args = np.array([0, 3, 999])[:, None] * freqs[None, :]
    assert emb.shape == (3, 7)
    np.testing.assert_allclose(emb[:, :half], np.sin(args), rtol=0, atol=1e-12)
    np.testing.assert_allclose(emb[:, half:6], np.cos(args), rtol=0, atol=1e-12)
    assert (emb[:, 6] == 0).all()
    assert (emb[0, :half] == 0).all() and (emb[0, half:6] == 1).all()  # t = 0: sin 0, cos 1


@pytest.mark.parametrize("t_dtype, dtype, expected", [
    (np.int64, None, np.float32), (np.int32, np.float64, np.float64), (np.float32, None, np.float32),
    (np.float64, None, np.float64), (np.float32, np.float64, np.float64), (np.float64, np.float32, np.float32)])
def test_timestep_dtype_rule(t_dtype, dtype, expected):
    t = to_device(np.array([1, 10, 500], dtype=t_dtype))
    emb, cache = timestep_embedding_forward(t, 8, dtype=dtype)
    dt = timestep_embedding_backward(to_device(np.ones((3, 8), dtype=expected)), cache)
    assert emb.dtype == expected
    assert dt.dtype == (t_dtype if np.dtype(t_dtype).kind == "f" else expected)
    ref = to_numpy(timestep_embedding_forward(to_device(np.array([1.0, 10.0, 500.0])), 8)[0])
    # float32 arithmetic (float32 t and output) rounds t * f to ~6e-8 relative, ~3e-6 absolute at t = 500;
    # float64 arithmetic cast to float32 is within half an ulp of the output
    atol = {(np.float32, np.float32): 1e-5}.get((t_dtype, expected), 1e-7 if expected == np.float32 else 1e-14)
    np.testing.assert_allclose(to_numpy(emb), ref, rtol=0, atol=atol)


@pytest.mark.parametrize("dim", [8, 9])
def test_timestep_matches_torch(torch, dim):
    rng = np.random.default_rng(1)
    t, demb = to_device(rng.uniform(0, 1000, size=5)), randn(rng, 5, dim)
    emb, cache = timestep_embedding_forward(t, dim)
    dt = timestep_embedding_backward(demb, cache)
    tt = to_torch(torch, t)
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    args = tt[:, None] * freqs[None, :]
    temb = torch.cat([torch.sin(args), torch.cos(args)] + ([torch.zeros(5, 1, dtype=torch.float64)] if dim % 2 else []),
                     dim=1)
    temb.backward(to_torch(torch, demb, requires_grad=False))
    assert oracle_error(emb, temb) < ORACLE_TOLERANCE
    assert oracle_error(dt, tt.grad) < ORACLE_TOLERANCE


def test_timestep_bad_input_names_op_and_shapes():
    with pytest.raises(ValueError, match=r"timestep_embedding.*1-D.*\(2, 3\)"):
        timestep_embedding_forward(np.zeros((2, 3), dtype=np.int64), 8)
    with pytest.raises(ValueError, match=r"timestep_embedding.*dim.*>= 2.*1.*\(4,\)"):
        timestep_embedding_forward(np.arange(4), 1)
    with pytest.raises(ValueError, match=r"timestep_embedding.*max_period.*-1"):
        timestep_embedding_forward(np.arange(4), 8, max_period=-1.0)
    with pytest.raises(TypeError, match=r"timestep_embedding.*float16.*\(4,\)"):
        timestep_embedding_forward(np.arange(4).astype(np.float16), 8)
    with pytest.raises(TypeError, match=r"timestep_embedding.*dtype int32.*\(4,\)"):
        timestep_embedding_forward(np.arange(4), 8, dtype=np.int32)
    with pytest.raises(TypeError, match=r"timestep_embedding.*must be a NumPy or CuPy array"):
        timestep_embedding_forward([1, 2, 3], 8)


def test_timestep_nan_propagates():
    t = to_device(np.array([1.0, np.nan, 3.0]))
    emb, cache = timestep_embedding_forward(t, 6)
    dt = to_numpy(timestep_embedding_backward(to_device(np.ones((3, 6))), cache))
    emb = to_numpy(emb)
    assert np.isnan(emb[1]).all() and not np.isnan(emb[[0, 2]]).any()
    assert np.isnan(dt[1]) and not np.isnan(dt[[0, 2]]).any()


# ----------------------------------------------------------------------------- label embedding

@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 8), k=st.integers(1, 5), d=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_label_gradcheck(n, k, d, seed):
    rng = np.random.default_rng(seed)
    labels = to_device(rng.integers(0, k, size=n))  # repeats are likely: n up to 8 over k up to 5 classes
    forward = lambda table: label_embedding_forward(labels, table)
    errors = check_gradients(forward, label_embedding_backward, {"table": randn(rng, k, d)}, seed=seed + 1)
    assert max(errors.values()) < OP_TOLERANCE, errors


def test_label_repeated_labels_sum():
    rng = np.random.default_rng(0)
    table, demb = randn(rng, 4, 3), randn(rng, 5, 3)
    labels = to_device(np.array([1, 1, 3, 1, 0]))
    emb, cache = label_embedding_forward(labels, table)
    dtable = to_numpy(label_embedding_backward(demb, cache))
    demb = to_numpy(demb)
    np.testing.assert_allclose(dtable[1], demb[0] + demb[1] + demb[3], rtol=1e-14)
    np.testing.assert_allclose(dtable[3], demb[2], rtol=0)
    np.testing.assert_allclose(dtable[0], demb[4], rtol=0)
    assert (dtable[2] == 0).all()
    assert np.array_equal(to_numpy(emb), to_numpy(table)[[1, 1, 3, 1, 0]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32, np.uint8])
def test_label_dtypes_preserved(dtype, label_dtype):
    rng = np.random.default_rng(0)
    labels = to_device(np.array([0, 2, 2], dtype=label_dtype))
    emb, cache = label_embedding_forward(labels, randn(rng, 3, 4, dtype=dtype))
    dtable = label_embedding_backward(randn(rng, 3, 4, dtype=dtype), cache)
    assert emb.dtype == dtype and dtable.dtype == dtype


def test_label_matches_torch(torch):
    rng = np.random.default_rng(1)
    labels, table, demb = to_device(np.array([2, 0, 2, 10, 2, 5])), randn(rng, 11, 6), randn(rng, 6, 6)
    emb, cache = label_embedding_forward(labels, table)
    dtable = label_embedding_backward(demb, cache)
    ttable = to_torch(torch, table)
    temb = torch.nn.functional.embedding(torch.tensor(to_numpy(labels)), ttable)
    temb.backward(to_torch(torch, demb, requires_grad=False))
    assert oracle_error(emb, temb) < ORACLE_TOLERANCE
    assert oracle_error(dtable, ttable.grad) < ORACLE_TOLERANCE


def test_label_bad_input_names_op_and_shapes():
    rng = np.random.default_rng(0)
    table = randn(rng, 10, 4)
    for bad, label in (([3, 10, 2], "10"), ([-1, 12], "-1")):
        labels = to_device(np.array(bad))
        if values_on_host(labels):
            with pytest.raises(ValueError, match=rf"label_embedding.*label {label}.*\[0, 10\).*\(10, 4\)"):
                label_embedding_forward(labels, table)
        else:  # CuPy labels are not read back to be checked: their out-of-range rows come out NaN
            emb = to_numpy(label_embedding_forward(labels, table)[0])
            assert np.array_equal(np.isnan(emb).all(axis=1), (np.array(bad) < 0) | (np.array(bad) >= 10))
    with pytest.raises(TypeError, match=r"label_embedding.*integer.*labels \(3,\) float64.*\(10, 4\)"):
        label_embedding_forward(to_device(np.array([1.0, 2.0, 3.0])), table)
    with pytest.raises(TypeError, match=r"label_embedding.*integer.*bool"):
        label_embedding_forward(to_device(np.array([True, False])), table)
    with pytest.raises(ValueError, match=r"label_embedding.*labels.*1-D.*\(2, 2\)"):
        label_embedding_forward(to_device(np.zeros((2, 2), dtype=np.int64)), table)
    with pytest.raises(ValueError, match=r"label_embedding.*table.*2-D.*\(10,\)"):
        label_embedding_forward(to_device(np.array([1])), randn(rng, 10))
    with pytest.raises(TypeError, match=r"label_embedding.*table.*int64"):
        label_embedding_forward(to_device(np.array([1])), np.zeros((3, 2), dtype=np.int64))


def test_label_out_of_range_on_the_device_gives_nan_rows(monkeypatch):
    """Device labels are not read back for a range check (a GPU wait per call): bad rows come out NaN instead."""
    treat_as_device(monkeypatch)
    table = np.arange(12.0).reshape(4, 3)
    # negative labels: NumPy wraps them around as CuPy wraps every out-of-range index (NumPy raises for 4)
    emb, _ = label_embedding_forward(np.array([2, -4, -1, 0]).view(NoHostReads), table)  # no AssertionError
    emb = np.asarray(emb)
    assert np.isnan(emb[[1, 2]]).all() and np.array_equal(emb[[0, 3]], table[[2, 0]])
    emb32, _ = label_embedding_forward(np.array([-1]).view(NoHostReads), table.astype(np.float32))
    assert emb32.dtype == np.float32 and np.isnan(np.asarray(emb32)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_label_backward_add_at_equals_bincount(dtype):
    """The GPU path's scatter-add (add.at: CuPy's bincount would wait for the GPU) sums exactly as bincount."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=64)  # many repeats
    demb = rng.standard_normal((64, 7)).astype(dtype)
    by_bincount = embedding._rows_sum_bincount(np, labels, demb, 6)
    by_add_at = embedding._rows_sum_add_at(np, labels, demb, 6)
    assert by_add_at.dtype == by_bincount.dtype == np.float64 and np.array_equal(by_add_at, by_bincount)
    assert (by_add_at[5] == 0).all()  # a class that no label picked


def test_timestep_frequencies_are_built_once():
    t = np.array([0, 7, 999])
    emb1, cache1 = timestep_embedding_forward(t, 16)
    emb2, cache2 = timestep_embedding_forward(t, 16)
    assert cache2.freqs is cache1.freqs and np.array_equal(emb1, emb2)
    np.testing.assert_array_equal(cache1.freqs, np.exp(-math.log(10000.0) / 8 * np.arange(8)))
    assert timestep_embedding_forward(t, 16, max_period=100.0)[1].freqs is not cache1.freqs


def test_label_nan_propagates():
    rng = np.random.default_rng(0)
    table = randn(rng, 3, 2)
    table[1, 0] = np.nan
    emb, cache = label_embedding_forward(to_device(np.array([1, 0, 1])), table)
    emb = to_numpy(emb)
    assert np.isnan(emb[[0, 2], 0]).all() and not np.isnan(emb[1]).any() and not np.isnan(emb[:, 1]).any()
    demb = randn(rng, 3, 2)
    demb[0, 1] = np.nan
    demb[1, 0] = np.inf
    dtable = to_numpy(label_embedding_backward(demb, cache))
    # each non-finite gradient stays in the row of its label: row 1 gets the NaN, row 0 the Inf
    assert np.isnan(dtable[1, 1]) and dtable[0, 0] == np.inf
    assert np.isfinite(dtable[1, 0]) and np.isfinite(dtable[0, 1]) and np.isfinite(dtable[2]).all()
