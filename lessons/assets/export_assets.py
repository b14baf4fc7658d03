"""Make the two files the lessons ship with, so that a learner sees readable digits from the first run.

    python examples/train_mnist.py --out runs/lessons_assets          # the main job, as a user runs it
    python lessons/assets/export_assets.py runs/lessons_assets/checkpoint.npz

network.npz  the EMA weights (float32) of that run's U-Net, with its training config: what the lessons sample from
judge.npz    tinyddpm's evaluation classifier (tinyddpm.classifiers.judge, 2 epochs of the full MNIST train split,
             seed 0): what the lessons read digits with

Each file records how it was made (command, seed, commit, date, data, accuracy) in its ``extra`` / ``config``, and
this script rewrites lessons/assets/README.md from those records, so the README cannot drift from the files.
The checks that they are good enough (the judge reads >= 97% of MNIST's test digits, and >= 95% of the network's
guided samples as the digit asked for) are tests/test_lessons_assets.py.
"""
from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from pathlib import Path

import numpy as np

from tinyddpm.backend import to_numpy
from tinyddpm.checkpoint import load_checkpoint, save_checkpoint
from tinyddpm.classifiers.judge import load_or_train_classifier
from tinyddpm.training.resume import read_train_config

ASSETS = Path(__file__).resolve().parent
REPO = ASSETS.parent.parent
NETWORK, JUDGE = ASSETS / "network.npz", ASSETS / "judge.npz"


def commit_of(path: Path) -> str:
    """The git commit of the repository at ``path``, with '+changes' when its tracked files differ from it."""
    def git(*args):
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def export_network(run_checkpoint: Path, command: str, commit: str) -> dict:
    ckpt = load_checkpoint(run_checkpoint)
    config = read_train_config(ckpt, run_checkpoint)
    if ckpt.ema_params is None:
        sys.exit(f"export_assets.py: {run_checkpoint} holds no EMA weights")
    if ckpt.step != config.steps:
        sys.exit(f"export_assets.py: {run_checkpoint} stopped at step {ckpt.step} of {config.steps}: finish it first")
    losses = ckpt.extra.get("losses", [])
    made_by = {"command": command, "seed": config.seed, "commit": commit, "steps": ckpt.step,
               "preset": "cpu", "data": str(ckpt.extra.get("data_source", "")),
               "final_loss_mean_last_100": float(np.mean(losses[-100:])) if losses else None,
               "exported": datetime.date.today().isoformat(), "weights": f"EMA (decay {config.ema_decay})"}
    params = {k: to_numpy(v).astype(np.float32) for k, v in ckpt.ema_params.items()}
    save_checkpoint(NETWORK, config=ckpt.config, params=params, step=ckpt.step, extra={"made_by": made_by})
    return made_by


def export_judge(commit: str) -> dict:
    work = REPO / "runs" / "lessons_assets_judge"
    params, info = load_or_train_classifier(work, epochs=2.0, seed=0, retrain=True, verbose=True)
    made_by = {"command": "load_or_train_classifier(epochs=2.0, seed=0) on the full MNIST train split",
               "commit": commit, "exported": datetime.date.today().isoformat()}
    save_checkpoint(JUDGE, config={**info, "made_by": made_by}, params={k: to_numpy(v) for k, v in params.items()})
    return info


def write_readme(net: dict, judge: dict) -> None:
    lines = ["# What the lessons ship with", "",
             "Written by `lessons/assets/export_assets.py` from the records inside the two files; do not edit by hand.",
             "", "## network.npz: the U-Net the lessons sample from", "",
             f"The EMA weights (float32) of the main job's `cpu` preset run, {net['steps']} steps, seed {net['seed']}:",
             "", "```bash", net["command"], "```", "",
             f"- commit: `{net['commit']}`", f"- data: {net['data']}",
             f"- mean loss of the last 100 steps: {net['final_loss_mean_last_100']:.4f}",
             f"- exported: {net['exported']}", "",
             "## judge.npz: the classifier the lessons read digits with", "",
             f"tinyddpm's evaluation classifier, {judge['epochs']:g} epochs of {judge['data_source']}, "
             f"seed {judge['seed']}: test accuracy **{judge['test_accuracy']:.2%}** on {judge['test_size']:,} "
             f"test digits ({judge['test_source']}).", "",
             "The checks that both are good enough run in `tests/test_lessons_assets.py`."]
    (ASSETS / "README.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_checkpoint", type=Path, help="checkpoint.npz of a finished examples/train_mnist.py run")
    p.add_argument("--command", default="python examples/train_mnist.py --out runs/lessons_assets",
                   help="the command that made the run, for the record")
    p.add_argument("--commit", default=None, help="the commit the run was trained at (default: this checkout's)")
    args = p.parse_args(argv)
    commit = commit_of(REPO)
    net = export_network(args.run_checkpoint, args.command, args.commit or commit)
    judge = export_judge(commit)
    write_readme(net, judge)
    print(f"wrote {NETWORK} ({NETWORK.stat().st_size / 2**20:.1f} MB), {JUDGE} "
          f"({JUDGE.stat().st_size / 2**20:.1f} MB), {ASSETS / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
