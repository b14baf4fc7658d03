"""The training step replayed as one CUDA graph: one launch per step instead of thousands of small kernel launches.

Why. A training step of the U-Net is ~2,000 CuPy kernels, most of them small; on a GPU the `cpu` preset's step is
bound by launching them (5.7x PyTorch eager's time on an H200, docs/gpu_report.md), not by doing them. A CUDA graph
records the launches of one step once and replays them all with one call.

What a graph cannot do, and what this file does about it (CuPy's rules for stream capture,
``cupy.cuda.Stream.begin_capture``):

    values frozen at capture      every value that changes between steps lives in a device buffer written before
                                  each replay: the batch, t, y', eps and the dropout masks (fixed buffers, filled by
                                  copying each step's draws in) and the optimizer's scalars (FusedUpdate.prepare
                                  writes them into the array the update kernel reads). What the captured half reads
                                  from Python (shapes, T, the clip threshold, each shard's share) is the same at
                                  every step.
    no host work inside           the step is two halves (training/loop.py): draw_step_inputs (host: the batch, the
                                  random draws, the learning rate, the counters) runs before each replay, and only
                                  step_on_inputs (device: forward, loss, backward, clip + AdamW + EMA) is captured;
                                  tests/test_train.py checks that it reads nothing back from the device.
    memory the graph writes       every array the capture allocates comes from a memory pool of the graph's own,
                                  which nothing else allocates from, so no later array is handed memory that a
                                  replay overwrites; the arrays the graph outputs (the loss) are copied out after
                                  each replay.
    first-call work               kernels compile and cuBLAS sets up on their first call: ``warmup`` eager steps run
                                  first, the last of them on the graph's stream and pool.

Eager and graphed steps do the same arithmetic in the same order on the same random draws, so they are equal; the
GPU suite checks it on the device. On NumPy there is no capture, but ``GraphedSteps`` runs the same machinery (fixed
buffers, pre-drawn masks, prepare then apply) and tests/test_cuda_graph.py checks it against train_step.

    steps = GraphedSteps(state, draw_step_inputs, step_on_inputs)   # loop.py's two halves of train_step
    loss = steps.step(state)             # like train_step(state): the loss as a 0-d device array

train() uses it on a GPU without MPI when TINYDDPM_CUDA_GRAPH=1.

Status: written and checked on NumPy only; it has never run on a GPU (no device was lent while it was written), so
it is off unless TINYDDPM_CUDA_GRAPH=1.
"""
from __future__ import annotations

import contextlib

from ..backend import device_xp, is_cupy_array


class RecordingRandom:
    """The device generator, passed through, noting the (shape, dtype) of every ``random`` draw (the dropout masks)."""

    def __init__(self, rng):
        self.rng, self.draws = rng, []

    def random(self, shape, dtype):
        self.draws.append((tuple(shape), dtype))
        return self.rng.random(shape, dtype=dtype)


class PredrawnRandom:
    """Stands in for the device generator inside the captured half: hands out arrays drawn before the replay.

    ``refill(rng)`` draws every mask of a step from the real generator, in the order the forward asks for them, into
    fixed buffers; ``random(shape, dtype)`` then returns those buffers in that order. The generator's stream is the
    one an eager step would have drawn, so the masks are the same.
    """

    def __init__(self, draws, xp):
        self.buffers = [xp.empty(shape, dtype=dtype) for shape, dtype in draws]
        self.next = 0

    def refill(self, rng) -> None:
        for buffer in self.buffers:
            buffer[...] = rng.random(buffer.shape, dtype=buffer.dtype)
        self.next = 0

    def random(self, shape, dtype):
        if self.next >= len(self.buffers):
            raise RuntimeError(f"GraphedSteps: the forward drew more random arrays than the {len(self.buffers)} of the "
                               "recorded step; the step's shape changed after capture")
        buffer = self.buffers[self.next]
        if tuple(shape) != buffer.shape or buffer.dtype != dtype:
            raise RuntimeError(f"GraphedSteps: random draw {self.next} is {tuple(shape)} {dtype}, the recorded step "
                               f"drew {buffer.shape} {buffer.dtype}")
        self.next += 1
        return buffer


def _like_generator(wrapper, rng):
    """``wrapper`` passes dropout's check that its generator lives on x's backend (dropout reads the class's module)."""
    wrapper.__class__ = type(type(wrapper).__name__, (type(wrapper),), {"__module__": type(rng).__module__})
    return wrapper


class GraphedSteps:
    """train_step, after ``warmup`` eager steps, replayed from a CUDA graph on CuPy (emulated, uncaptured, on NumPy)."""

    def __init__(self, state, draw, compute, warmup: int = 2):
        """``draw(state)`` -> StepInputs and ``compute(state, inputs, update=...)`` -> loss: loop.py's
        draw_step_inputs and step_on_inputs (passed in, so that this file and loop.py do not import each other)."""
        if warmup < 1:
            raise ValueError(f"GraphedSteps: warmup must be >= 1 (the last one records the dropout draws), got {warmup}")
        self.draw, self.compute = draw, compute
        self.warmup, self.eager_steps = int(warmup), 0
        self.draws = None          # [(shape, dtype)] of one step's dropout masks, recorded in the last warm-up step
        self.fixed = None          # StepInputs of the fixed buffers every replay reads
        self.masks = None          # the PredrawnRandom inside self.fixed
        self.loss = None           # the loss buffer the graph writes
        self.graph = None          # cupy.cuda.Graph (stays None on NumPy: a replay calls the device half directly)
        self.stream = self.pool = None
        self.on_gpu = is_cupy_array(next(iter(state.params.values())))

    def step(self, state):
        """One training step (as train_step); returns the loss as a 0-d device array, also appended to pending."""
        if self.eager_steps < self.warmup:
            loss = self._eager(state)
        else:
            loss = self._replay(state)
        state.step += 1
        state.pending.append(loss)
        return loss

    def _eager(self, state):
        """A warm-up step, as train_step; the last one notes the dropout draws and runs on the graph's pool."""
        last = self.eager_steps == self.warmup - 1
        with self._on_graph_stream(private_pool=last):
            inputs = self.draw(state)
            if last:
                recorder = _like_generator(RecordingRandom(inputs.rng), inputs.rng)
                inputs = inputs._replace(rng=recorder)
            loss = self.compute(state, inputs)
        if last:
            self.draws = recorder.draws
        self.eager_steps += 1
        return loss

    def _replay(self, state):
        """Draw this step's inputs, copy them into the fixed buffers, prepare the update, replay the device half."""
        with self._on_graph_stream(private_pool=False):
            inputs = self.draw(state)
            if self.fixed is None:
                self._make_buffers(inputs, state)
            self._copy_in(inputs, state)
            scalars = state.flat.prepare(inputs.lr, state.config.grad_clip)   # counters; the scalars onto the device
            if self.on_gpu:
                if self.graph is None:
                    self._capture(state)
                self.graph.launch(stream=self.stream)
                return self.loss.copy()                     # the graph's loss buffer is overwritten by the next replay
            loss = self.compute(state, self.fixed, update=False)   # NumPy: the same buffers, run directly
            state.flat.apply(scalars)
            return loss

    def _make_buffers(self, inputs, state) -> None:
        xp = device_xp()
        self.masks = _like_generator(PredrawnRandom(self.draws, xp), state.device_rng)
        self.fixed = inputs._replace(x0=xp.empty_like(inputs.x0), t=xp.empty_like(inputs.t),
                                     labels=None if inputs.labels is None else xp.empty_like(inputs.labels),
                                     noise=xp.empty_like(inputs.noise), rng=self.masks)

    def _capture(self, state) -> None:
        """Record the device half once, reading the fixed buffers, on the graph's stream and pool."""
        with self._on_graph_stream(private_pool=True):
            self.stream.begin_capture()
            try:
                self.loss = self.compute(state, self.fixed, update=False)
                state.flat.apply(None)   # the update kernels, reading the scalars prepare() puts on the device
            finally:
                self.graph = self.stream.end_capture()

    def _copy_in(self, inputs, state) -> None:
        """This step's draws into the fixed buffers the captured half reads, and its dropout masks, drawn now."""
        fixed = self.fixed
        fixed.x0[...] = inputs.x0
        fixed.t[...] = inputs.t
        fixed.noise[...] = inputs.noise
        if fixed.labels is not None:
            fixed.labels[...] = inputs.labels
        self.masks.refill(state.device_rng)                 # after eps: the order an eager step draws in

    @contextlib.contextmanager
    def _on_graph_stream(self, private_pool: bool):
        """On CuPy: run on the graph's own non-default stream, ordered after and before the caller's stream by events
        (no host wait), and, with ``private_pool``, allocate from the graph's own memory pool. On NumPy: nothing."""
        if not self.on_gpu:
            yield
            return
        import cupy

        if self.stream is None:
            self.stream = cupy.cuda.Stream(non_blocking=True)
            self.pool = cupy.cuda.MemoryPool()              # the graph's own: only its capture allocates from it
        outer = cupy.cuda.get_current_stream()
        self.stream.wait_event(outer.record())              # after whatever the caller queued (the data, the weights)
        with contextlib.ExitStack() as stack:
            if private_pool:
                stack.enter_context(cupy.cuda.using_allocator(self.pool.malloc))
            stack.enter_context(self.stream)
            yield
        outer.wait_event(self.stream.record())              # the caller's later work (reading the loss) after this
