"""tinyddpm.allocator: after ``import tinyddpm`` a freed large block is reused, not page-faulted in again.

Each check runs in a fresh Python process (malloc's settings are per process and made at import), and counts the
minor page faults of allocating, filling and freeing 32 arrays of 3 MiB a second time (a step's pattern: many large
blocks; each under NumPy's 4 MiB huge-page size, so a page is 4 KiB): 24,576 pages, each faulted in again when
glibc has returned the blocks to the kernel (malloc left alone), almost none when it keeps them.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tinyddpm.allocator import _glibc

PROBE = r"""
import resource, sys
import numpy as np
import tinyddpm
from tinyddpm.allocator import keep_freed_memory

def fill_and_free():
    blocks = [np.empty(3 << 18, dtype=np.float32) for _ in range(32)]   # 32 x 3 MiB
    for a in blocks:
        a.fill(1.0)                                                     # touch every page
    del blocks, a

fill_and_free()                                # the first time, the pages are new either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
fill_and_free()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(keep_freed_memory(), faults)
"""

needs_glibc = pytest.mark.skipif(_glibc() is None or not sys.platform.startswith("linux"),
                                 reason="the settings are glibc's; elsewhere malloc is left alone")


def run_probe(**env):
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    configured, faults = result.stdout.split()
    return configured == "True", int(faults)


@needs_glibc
def test_a_freed_block_is_reused_without_page_faults():
    configured, faults = run_probe(TINYDDPM_MALLOC="")
    assert configured
    assert faults < 1000, f"{faults} page faults re-allocating 96 MiB (24,576 pages)"


@needs_glibc
def test_system_malloc_on_request_faults_the_pages_in_again():
    # the control: the same probe with the settings turned off shows what the check above would catch
    configured, faults = run_probe(TINYDDPM_MALLOC="system")
    assert not configured
    assert faults > 12000, f"only {faults} page faults with malloc left alone; the probe no longer measures reuse"
