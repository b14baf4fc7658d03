"""Launch kernels/adamw_ema.cu: clip + AdamW + EMA over flat CuPy buffers, two kernels, no host reads.

The math is in adamw_ema.cu's top comment and in training/fused_update.py, whose ``update_arrays`` (NumPy or CuPy
whole-array operations) this must equal; training/optim.py holds the per-tensor reference both come from.

    kernel = AdamWEMAKernel(np.float32)            # compiles on first use; owns three small device buffers
    norm = kernel(p, m, v, e, g, n_decay, hyper)   # p, m, v, e updated in place; norm: ||g|| before clipping

``hyper`` holds the per-step scalars in the order HYPER (host floats, computed in float64 and rounded once to the
buffers' dtype). They are copied host -> device into ``kernel.hyper`` before the launch, so the kernels read them
from device memory and never from their arguments: a CUDA graph captured around the launches would replay with
the values of each step, not with those frozen at capture. The clip coefficient is computed on the device from
the partial sums of g^2, so nothing waits for the GPU.

This is the only file that knows block and grid sizes.
"""
from __future__ import annotations

import numpy as np

from . import load_module

# the per-step scalars, in the order of adamw_ema.cu's enum Hyper (tests/test_fused_update.py checks they agree)
HYPER = ("max_norm", "weight_decay_factor", "b1", "one_minus_b1", "b2", "one_minus_b2", "step_size", "sqrt_bias2", "eps",
         "ema_rate")

BLOCK = 256          # threads per block: a multiple of 32 (the reductions work warp by warp)
NORM_BLOCKS = 264    # partial sums of g^2: enough blocks to stream g at full speed (2 per SM of an H100); the
                     # update kernel adds them in a fixed order, so the step repeats bit for bit (no atomics)
MAX_BLOCKS = 4096    # the update is a grid-stride loop: more blocks than this only re-read the partials
SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


class AdamWEMAKernel:
    """The two kernels of one float type and the device buffers they share across steps.

    The buffers (``hyper``, ``partials``, ``norm``) live as long as this object: a captured CUDA graph may keep
    pointing at them. ``norm`` is overwritten by every call: copy it to keep a value.
    """

    def __init__(self, dtype):
        import cupy  # only on the GPU path: this module is imported without CuPy everywhere else

        self.dtype = np.dtype(dtype)
        suffix = SUFFIX[self.dtype]
        module = load_module("adamw_ema")
        self.sum_of_squares = module.get_function(f"sum_of_squares_{suffix}")
        self.update = module.get_function(f"adamw_ema_{suffix}")
        self.hyper = cupy.zeros(len(HYPER), dtype=self.dtype)       # (10,) the per-step scalars, on the device
        self.partials = cupy.zeros(NORM_BLOCKS, dtype=self.dtype)   # (NORM_BLOCKS,) partial sums of g^2
        self.norm = cupy.zeros(1, dtype=self.dtype)                 # (1,) ||g|| before clipping

    def __call__(self, p, m, v, e, g, n_decay: int, hyper):
        """One step over the 1-D buffers p, m, v, e (updated in place) with gradient g; returns ||g|| (0-d)."""
        self.load(hyper)
        return self.launch(p, m, v, e, g, n_decay)

    def load(self, hyper):
        """Copy this step's scalars (in HYPER's order) host -> device into ``self.hyper``, where the kernel reads them.

        Outside a CUDA graph's capture: a graph replays ``launch`` with whatever ``self.hyper`` holds then."""
        self.hyper.set(np.asarray(hyper, dtype=self.dtype))

    def launch(self, p, m, v, e, g, n_decay: int):
        """The two kernels, reading the scalars ``load`` put on the device; returns ||g|| (0-d, overwritten next)."""
        n = p.size
        self.sum_of_squares((NORM_BLOCKS,), (BLOCK,), (g, np.int64(n), self.partials))
        blocks = max(1, min(MAX_BLOCKS, -(-n // BLOCK)))             # ceil(n / BLOCK), at least 1, at most MAX
        self.update((blocks,), (BLOCK,), (p, m, v, e, g, self.partials, np.int32(NORM_BLOCKS), self.hyper,
                                          self.norm, np.int64(n), np.int64(n_decay)))
        return self.norm.reshape(())
