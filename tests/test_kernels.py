"""Every CUDA C source in tinyddpm/kernels/ compiles with the machine's nvcc (no GPU needed).

The kernels run only on a GPU (through CuPy's NVRTC); this is the check that every machine with nvcc can make: the
source is valid CUDA C for the architectures we target. Each kernel's arithmetic is checked against its NumPy twin
by its own test (tests/test_fused_update.py, tests/test_groupnorm_silu.py), compiled for the host.
"""
import shutil
import subprocess

import pytest

from tinyddpm.kernels import KERNEL_DIR, read_source, source_names

NVCC = shutil.which("nvcc")
ARCHS = ("sm_80", "sm_90")   # A100; H100 / H200


def test_kernels_are_shipped():
    assert "adamw_ema" in source_names()
    with pytest.raises(FileNotFoundError, match="no kernel source nope.cu"):
        read_source("nope")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH (the CUDA toolkit is not installed here)")
@pytest.mark.parametrize("name", source_names())
@pytest.mark.parametrize("arch", ARCHS)
def test_source_compiles(name, arch, tmp_path):
    done = subprocess.run([NVCC, "--ptx", f"-arch={arch}", "-std=c++17", "-Werror=all-warnings",
                           "-o", str(tmp_path / f"{name}.ptx"), str(KERNEL_DIR / f"{name}.cu")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ptx = (tmp_path / f"{name}.ptx").read_text()
    assert ".entry" in ptx    # at least one kernel made it into the PTX
