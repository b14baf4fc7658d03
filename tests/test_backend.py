"""Backend: device choice, clear errors, mixed-backend detection, seeding."""
import os
import subprocess
import sys

import numpy as np
import pytest

import tinyddpm
from tinyddpm import backend
from tinyddpm.ops import linear_forward


class FakeCupyArray:
    """Looks like a CuPy array to the type check, so mixed backends can be tested without a GPU."""

    __module__ = "cupy._core.core"
    shape = (2, 3)
    dtype = np.dtype(np.float32)
    ndim = 2


def test_unknown_device_names_the_choices():
    with pytest.raises(ValueError, match=r"set_device.*'tpu'.*cpu.*cuda"):
        tinyddpm.set_device("tpu")


def test_cpu_is_default_and_numpy():
    code = "import tinyddpm, numpy; assert tinyddpm.get_device() == 'cpu'; assert tinyddpm.device_xp() is numpy"
    env = {k: v for k, v in os.environ.items() if k != "TINYDDPM_DEVICE"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_env_variable_selects_device():
    code = "import tinyddpm; tinyddpm.get_device()"
    env = dict(os.environ, TINYDDPM_DEVICE="bogus")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "'bogus'" in r.stderr


def test_cuda_without_cupy_is_a_clear_error():
    try:
        backend.import_cupy()
    except RuntimeError as e:
        assert "cupy-cuda12x" in str(e) or "no CUDA device" in str(e)
        with pytest.raises(RuntimeError):
            tinyddpm.set_device("cuda")
        assert tinyddpm.get_device() in backend.DEVICES
    else:
        pytest.skip("CuPy and a GPU are available here")


def test_mixed_backends_name_the_op_and_shapes():
    x = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(TypeError, match=r"linear: arrays from two backends.*numpy\(2, 3\).*cupy\(2, 3\)"):
        linear_forward(x, FakeCupyArray())


def test_non_array_input_is_a_type_error():
    with pytest.raises(TypeError, match="linear: x must be a NumPy or CuPy array, got list"):
        linear_forward([[1.0, 2.0]], np.zeros((3, 2)))


def test_seeding_is_repeatable():
    a = backend.seed_everything(123).standard_normal(5)
    b = backend.seed_everything(123).standard_normal(5)
    c = backend.seed_everything(124).standard_normal(5)
    assert np.array_equal(backend.to_numpy(a), backend.to_numpy(b))
    assert not np.array_equal(backend.to_numpy(a), backend.to_numpy(c))


def test_to_numpy_and_to_device_round_trip():
    x = np.arange(6.0).reshape(2, 3)
    y = backend.to_device(x, dtype=np.float32)
    assert y.dtype == np.float32 and np.array_equal(backend.to_numpy(y), x)
