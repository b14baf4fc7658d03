"""Write a data set tinyddpm knows as a folder of PNG pictures, one subfolder per class: a real picture set to try
examples/train_images.py on, shaped like a folder of your own.

    python examples/export_images.py --dataset fashion-mnist --out data/fashion --per-class 600
    python examples/train_images.py --data data/fashion --out runs/fashion

The first --per-class pictures of each class in the split, in the split's order, as DIR/<class>/<index>.png,
index being the picture's position in the split (a '/' in a class name becomes '_': "T-shirt/top" is
"T-shirt_top"). An existing picture of the same name is left as it is, so a second run adds nothing new;
OUT must not hold other files. Pictures are written to a temporary name and renamed into place, so an interrupted
run leaves only whole files.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from _cli import Parser, UserError, blame, check_out_dir, integer, out_folder, run

from tinyddpm.data import DATASETS, DownloadError, FallbackUnavailable, load_dataset


def parse_args(argv=None):
    p = Parser(prog="export_images.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=DATASETS, default="fashion-mnist", help="which data set")
    p.add_argument("--split", choices=("train", "test"), default="train", help="which split")
    p.add_argument("--out", required=True, type=out_folder, help="the folder to write (one subfolder per class)")
    p.add_argument("--per-class", type=integer(1), default=600, help="pictures of each class (at most)")
    p.add_argument("--data-dir", default=None, help="where the data set's IDX files are (default: its cache)")
    p.add_argument("--source", default="auto", help="where to load the data set from (see tinyddpm.data)")
    return p.parse_args(argv)


def folder_name(class_name: str) -> str:
    return class_name.replace("/", "_").replace(os.sep, "_")


def chosen(labels: np.ndarray, per_class: int) -> dict:
    """{class k: the indices of its first ``per_class`` pictures in the split}."""
    return {int(k): np.flatnonzero(labels == k)[:per_class] for k in np.unique(labels)}


def write_png(image: np.ndarray, path: Path) -> None:
    """A uint8 (H, W) picture as a grey PNG, written whole or not at all."""
    from PIL import Image

    partial = path.with_name(path.name + ".partial")
    try:
        Image.fromarray(image, mode="L").save(partial, format="PNG")
        os.replace(partial, path)
    except OSError as e:   # a full disk: name the picture (the write's own error names no file), keep that error
        try:
            partial.unlink(missing_ok=True)
        except OSError:
            pass
        raise OSError(e.errno, f"cannot write the picture: {e.strerror or e}", str(path)) from e


def work(args) -> int:
    out = check_out_dir("--out", args.out)
    with blame(f"cannot load the {args.dataset} {args.split} split", ValueError, OSError, FallbackUnavailable,
               DownloadError):
        data = load_dataset(args.dataset, args.split, data_dir=args.data_dir, source=args.source)
    names = data.class_names
    out.mkdir(parents=True, exist_ok=True)
    picks = chosen(data.labels, args.per_class)
    strangers = [p.name for p in out.iterdir() if p.name not in {folder_name(names[k]) for k in picks}]
    if strangers:
        raise UserError(f"--out {out} holds other things ({', '.join(sorted(strangers)[:3])}...): choose a new folder")
    written = 0
    for k, indices in picks.items():
        folder = out / folder_name(names[k])
        folder.mkdir(exist_ok=True)
        for i in indices:
            path = folder / f"{i:05d}.png"
            if not path.exists():
                write_png(data.images[i], path)
                written += 1
    total = sum(len(v) for v in picks.values())
    print(f"wrote {written:,} pictures ({total:,} in all: {len(picks)} classes, up to {args.per_class} each) to {out}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return run("export_images.py", work, args)


if __name__ == "__main__":
    sys.exit(main())
