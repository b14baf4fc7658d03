"""The training step as a CUDA graph (tinyddpm/training/cuda_graph.py).

Without a GPU nothing is captured, but GraphedSteps runs the same machinery as on one: the step's inputs copied
into fixed buffers, the dropout masks drawn ahead into buffers handed out in order, the optimizer's host part
(FusedUpdate.prepare) before the device part (apply). These tests check that machinery against train_step, bit for
bit. On a GPU (TINYDDPM_DEVICE=cuda, the GPU suite's part a) the last test compares the replayed graph with eager
steps.
"""
from dataclasses import replace

import numpy as np
import pytest

from tinyddpm import new_state, train_step
from tinyddpm.backend import get_device, to_numpy
from tinyddpm.training import loop
from tinyddpm.training.cuda_graph import GraphedSteps, PredrawnRandom
from tinyddpm.nn.unet import UNetConfig
from tinyddpm.training.config import TrainConfig

UNET = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), attention_resolutions=(4,), heads=2, groups=4,
                  dropout=0.1)
CONFIG = TrainConfig(unet=UNET, steps=8, batch_size=8, lr=1e-3, warmup_steps=2, lr_decay="cosine", p_uncond=0.25,
                     ema_decay=0.9, ema_warmup=True, weight_decay=0.01, log_every=100, checkpoint_every=0,
                     sample_every=0)


def synthetic(n=32, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size), dtype=np.uint8), rng.integers(0, 10, n)


def run(steps, config, graphed: bool):
    images, labels = synthetic()
    state = new_state(config, images, labels)
    stepper = GraphedSteps(state, loop.draw_step_inputs, loop.step_on_inputs) if graphed else None
    for _ in range(steps):
        stepper.step(state) if graphed else train_step(state)
    return state


@pytest.mark.parametrize("config", [CONFIG, replace(CONFIG, unet=replace(UNET, dropout=0.0), p_uncond=0.0,
                                                    dtype="float64")], ids=["dropout, label dropout", "float64, plain"])
def test_replayed_steps_equal_train_step(config):
    """Warm-up steps, then replays from the fixed buffers: the same losses, weights, EMA and moments, bit for bit."""
    eager, graphed = run(7, config, False), run(7, config, True)
    assert graphed.step == eager.step == 7
    assert graphed.flush_losses() == eager.flush_losses()
    for name in eager.params:
        np.testing.assert_array_equal(to_numpy(graphed.params[name]), to_numpy(eager.params[name]), err_msg=name)
        np.testing.assert_array_equal(to_numpy(graphed.ema.params[name]), to_numpy(eager.ema.params[name]))
        np.testing.assert_array_equal(to_numpy(graphed.optimizer.v[name]), to_numpy(eager.optimizer.v[name]))
    assert graphed.optimizer.t == eager.optimizer.t and graphed.ema.num_updates == eager.ema.num_updates


def test_the_replay_uses_the_fixed_buffers_and_predrawn_masks():
    """After the warm-up the forward reads the fixed buffers: the same arrays every step, refilled in place."""
    images, labels = synthetic()
    state = new_state(CONFIG, images, labels)
    steps = GraphedSteps(state, loop.draw_step_inputs, loop.step_on_inputs, warmup=1)
    steps.step(state)
    assert steps.fixed is None and len(steps.draws) > 0      # the warm-up step recorded its dropout draws
    steps.step(state)
    fixed, buffers = steps.fixed, [id(b) for b in steps.masks.buffers]
    x0_before = to_numpy(fixed.x0).copy()
    steps.step(state)
    assert steps.fixed is fixed and [id(b) for b in steps.masks.buffers] == buffers
    assert not np.array_equal(to_numpy(fixed.x0), x0_before)  # refilled with the next batch
    assert steps.masks.next == len(steps.draws)               # every pre-drawn mask used, once


def test_predrawn_random_refuses_a_changed_step():
    masks = PredrawnRandom([((2, 3), np.float32)], np)
    masks.refill(np.random.default_rng(0))
    with pytest.raises(RuntimeError, match=r"random draw 0 is \(4, 3\)"):
        masks.random((4, 3), np.float32)
    masks.random((2, 3), np.float32)
    with pytest.raises(RuntimeError, match="drew more random arrays"):
        masks.random((2, 3), np.float32)


def test_train_uses_graphs_only_when_asked_on_a_gpu(monkeypatch):
    images, labels = synthetic()
    state = new_state(CONFIG, images, labels)
    monkeypatch.setenv("TINYDDPM_CUDA_GRAPH", "1")
    expected = get_device() == "cuda"
    assert (loop.graphed_steps(state, None) is not None) == expected
    assert loop.graphed_steps(state, dp=object()) is None     # never under MPI (the Allreduce is host work)
    monkeypatch.setenv("TINYDDPM_CUDA_GRAPH", "0")
    assert loop.graphed_steps(state, None) is None


@pytest.mark.skipif(get_device() != "cuda", reason="a CUDA graph needs a GPU (TINYDDPM_DEVICE=cuda)")
def test_graph_equals_eager_on_the_gpu():
    config = replace(CONFIG, dtype="float32")
    eager, graphed = run(7, config, False), run(7, config, True)
    np.testing.assert_allclose(graphed.flush_losses(), eager.flush_losses(), rtol=1e-6)
    for name in eager.params:
        np.testing.assert_allclose(to_numpy(graphed.params[name]), to_numpy(eager.params[name]), rtol=1e-5,
                                   atol=1e-7, err_msg=name)
