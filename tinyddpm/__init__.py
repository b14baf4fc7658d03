"""tinyddpm: Denoising Diffusion Probabilistic Models from scratch, NumPy on the CPU and CuPy on a GPU.

Every layer has a hand-written forward and backward (``tinyddpm.ops``); ``python -m tinyddpm.gradcheck``
proves each backward right with finite differences.
"""
from .backend import device_xp, get_device, get_xp, make_rng, seed_everything, set_device, to_device, to_numpy
from . import diffusion, ops

__version__ = "0.1.0"

__all__ = [
    "diffusion",
    "ops",
    "device_xp",
    "get_device",
    "get_xp",
    "make_rng",
    "seed_everything",
    "set_device",
    "to_device",
    "to_numpy",
]
