"""Shared test fixtures.

Tests run on the device chosen by TINYDDPM_DEVICE (NumPy by default), so the same suite checks the
CuPy backend on a GPU machine: ``TINYDDPM_DEVICE=cuda pytest``.
"""
import pytest


@pytest.fixture
def torch():
    """PyTorch as an oracle; tests that use this fixture skip with a reason when it is absent."""
    return pytest.importorskip("torch", reason="PyTorch is not installed: oracle test skipped (pip install -e .[oracle])")

