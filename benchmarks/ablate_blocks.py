"""Train the cpu preset's U-Net with one set of block options for a given number of steps; save the checkpoint.

    python benchmarks/ablate_blocks.py NAME STEPS '{"activation": "gelu"}'   # writes runs/ablate/NAME/checkpoint.npz

Equal wall time without a quiet machine: a step's cost is measured once for every option, the options' steps
alternating in one process (benchmarks/NOTES_blocks.md), and each option then trains for
STEPS = budget_steps x cost(defaults) / cost(option). A fixed step count gives the same network on a busy
machine as on an idle one, so the comparison does not depend on what else ran meanwhile.
Everything else is the cpu preset's: batch 32, lr 2e-3 with 100 warmup steps and a cosine decay over STEPS,
EMA 0.995, seed 0, the full MNIST train split (whatever load_mnist finds).
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

from tinyddpm.training.resume import save_state
from tinyddpm.training.config import preset
from tinyddpm.data import load_mnist
from tinyddpm.training.state import new_state
from tinyddpm.training.loop import train_step
from tinyddpm.nn.unet import UNetConfig

name, steps, options = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
base = preset("cpu")
cfg = preset("cpu", unet=UNetConfig(**{**base.unet.to_dict(), **options}), steps=steps)
data = load_mnist("train")
state = new_state(cfg, data.images, data.labels, data_source=data.source)
start = time.perf_counter()
while state.step < steps:
    train_step(state)
    if state.step % 50 == 0:
        state.flush_losses()
        print(f"{name}: step {state.step}/{steps}, loss {np.mean(state.losses[-50:]):.4f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
state.flush_losses()
out = Path("runs/ablate") / name
out.mkdir(parents=True, exist_ok=True)
save_state(state, out / "checkpoint.npz")
losses = np.array(state.losses)
print(json.dumps({"name": name, "options": options, "steps": state.step, "wall_s": round(time.perf_counter() - start, 1),
                  "loss_last100": float(losses[-100:].mean())}), flush=True)
