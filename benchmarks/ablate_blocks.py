"""Train the cpu preset's U-Net with one block option for a fixed wall time; save the checkpoint.

python benchmarks/ablate_blocks.py NAME SECONDS '{"activation": "gelu"}'   # writes runs/ablate/NAME/checkpoint.npz
"""
import json, sys, time
from pathlib import Path
import numpy as np
from tinyddpm.config import preset
from tinyddpm.data import load_mnist
from tinyddpm.state import new_state
from tinyddpm.training import train_step
from tinyddpm.checkpoint import save_state
from tinyddpm.unet import UNetConfig

name, seconds, options = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
base = preset("cpu")
cfg = preset("cpu", unet=UNetConfig(**{**base.unet.to_dict(), **options}), steps=100_000, lr_decay="constant",
             warmup_steps=20, ema_decay=0.99, log_every=10, seed=0)
data = load_mnist("train")
state = new_state(cfg, data.images, data.labels, data_source="mnist")
start = time.perf_counter()
while time.perf_counter() - start < seconds:
    train_step(state)
    if state.step % 10 == 0:
        state.flush_losses()
state.flush_losses()
wall = time.perf_counter() - start
out = Path("runs/ablate") / name
out.mkdir(parents=True, exist_ok=True)
save_state(state, out / "checkpoint.npz")
losses = np.array(state.losses)
print(json.dumps({"name": name, "options": options, "steps": state.step, "wall_s": round(wall, 1),
                  "loss_last50": float(losses[-50:].mean()), "loss_first10": float(losses[:10].mean())}), flush=True)
