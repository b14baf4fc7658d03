"""Train the cpu preset's U-Net with one set of block options for a given number of steps; save the checkpoint.

    python benchmarks/ablate_blocks.py NAME STEPS '{"activation": "gelu"}'   # writes runs/ablate/NAME/checkpoint.npz

Equal wall time without a quiet machine: a step's cost is measured once for every option, the options' steps
alternating in one process (benchmarks/NOTES_blocks.md), and each option then trains for
STEPS = budget_steps x cost(defaults) / cost(option). A fixed step count gives the same network on a busy
machine as on an idle one, so the comparison does not depend on what else ran meanwhile.
Everything else is the cpu preset's: batch 32, lr 2e-3 with 100 warmup steps and a cosine decay over STEPS,
EMA 0.995, seed 0, the full MNIST train split (whatever load_mnist finds).
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blas_env import blas_description, unset_blas_overrides  # noqa: E402

if __name__ == "__main__":
    unset_blas_overrides()   # before NumPy loads OpenBLAS (blas_env.py says why)

import numpy as np  # noqa: E402

import tinyddpm as td  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Train the cpu preset's U-Net with some block options; save the checkpoint.")
    p.add_argument("name", help="the run's name: it writes runs/ablate/NAME/checkpoint.npz")
    p.add_argument("steps", type=int, help="optimizer steps (the cosine decay runs over them)")
    p.add_argument("options", type=json.loads, help='UNetConfig fields as JSON, e.g. \'{"activation": "gelu"}\'')
    args = p.parse_args(argv)
    base = td.preset("cpu")
    config = td.preset("cpu", unet=td.UNetConfig(**{**base.unet.to_dict(), **args.options}), steps=args.steps,
                       checkpoint_every=0, sample_every=0)
    print(blas_description(), flush=True)
    data = td.load_mnist("train")
    state = td.new_state(config, data.images, data.labels, data_source=data.source)
    start = time.perf_counter()
    td.train(state, Path("runs/ablate") / args.name, progress=False, log_lines=max(1, args.steps // 50))
    print(json.dumps({"name": args.name, "options": args.options, "steps": state.step,
                      "wall_s": round(time.perf_counter() - start, 1),
                      "loss_last100": float(np.mean(state.losses[-100:]))}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
