"""Write a data set tinyddpm knows as a folder of PNG pictures, one subfolder per class: a real picture set to try
examples/train_images.py on, shaped like a folder of your own.

    python examples/export_images.py --dataset fashion-mnist --out data/fashion --per-class 600
    python examples/train_images.py --data data/fashion --out runs/fashion

The first --per-class pictures of each class in the split, in the split's order, as DIR/<class>/<index>.png,
index being the picture's position in the split (a '/' in a class name becomes '_': "T-shirt/top" is
"T-shirt_top"). An existing picture of the same name is left as it is, so a second run adds nothing new;
OUT must not hold other files, and a run refuses a folder whose pictures it would have written differently
(grey against --colour, another --seed). Pictures are written to a temporary name and renamed into place, so an
interrupted run leaves only whole files.

Coloured MNIST (--colour, MNIST only): each digit as an RGB picture, its ink in one colour and its background in
another, both drawn per picture (``colours``) and blended by the digit's grey level (``colourise``):

    ink          HSV: hue uniform in [0, 1), saturation in [0.6, 1), value in [0.7, 1)
    background   HSV: hue uniform in [0, 1), saturation in [0, 0.6), value uniform in [0, min(0.35, luma(ink) / 2))
    pixel        alpha * ink + (1 - alpha) * background,   alpha = grey / 255

The draws come from np.random.default_rng([--seed, index]): a picture depends on the seed and its index alone, so
re-running, or asking for more --per-class, never changes a picture already written. train_images.py reads the
folder as RGB (3 channels) by itself (docs/coloured_mnist.md):

    python examples/export_images.py --dataset mnist --colour --out data/colour-mnist --per-class 1000
    python examples/train_images.py --data data/colour-mnist --out runs/colour-mnist
"""
from __future__ import annotations

import colorsys
import os
import sys
from pathlib import Path

import numpy as np
from _cli import Parser, UserError, blame, check_out_dir, integer, out_folder, run

from tinyddpm.data import DATASETS, DownloadError, FallbackUnavailable, load_dataset
from tinyddpm.data.folder import LUMA

# Coloured MNIST's colours, (hue, saturation, value) uniform between the two corners. The ink is bright and
# saturated, so that every hue reads as a colour; the background runs from black through dark greys to dark muted
# colours, its value scaled to stay below the ink's luma / CONTRAST too: a blue ink's luma is only 0.114 of its value,
# and a grey background could outshine it, turning the digit negative in a grey copy of the picture (luma is linear
# in RGB, so while the ink is the brighter the grey copy is the digit, scaled and shifted).
INK_HSV = ((0.0, 0.6, 0.7), (1.0, 1.0, 1.0))
BACKGROUND_HSV = ((0.0, 0.0, 0.0), (1.0, 0.6, 0.35))
CONTRAST = 2.0      # the ink's luma is at least this many times the background's


def parse_args(argv=None):
    p = Parser(prog="export_images.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=DATASETS, default="fashion-mnist", help="which data set")
    p.add_argument("--split", choices=("train", "test"), default="train", help="which split")
    p.add_argument("--out", required=True, type=out_folder, help="the folder to write (one subfolder per class)")
    p.add_argument("--per-class", type=integer(1), default=600, help="pictures of each class (at most)")
    p.add_argument("--colour", action="store_true",
                   help="MNIST only: each digit in RGB, ink and background in colours drawn per picture")
    p.add_argument("--seed", type=integer(0), default=None, help="the colours' seed, with --colour (default: 0)")
    p.add_argument("--data-dir", default=None, help="where the data set's IDX files are (default: its cache)")
    p.add_argument("--source", default="auto", help="where to load the data set from (see tinyddpm.data)")
    return p.parse_args(argv)


def folder_name(class_name: str) -> str:
    return class_name.replace("/", "_").replace(os.sep, "_")


def chosen(labels: np.ndarray, per_class: int) -> dict:
    """{class k: the indices of its first ``per_class`` pictures in the split}."""
    return {int(k): np.flatnonzero(labels == k)[:per_class] for k in np.unique(labels)}


def luma(rgb: np.ndarray) -> float:
    """ITU-R 601 luma of an RGB colour in [0, 1]: what Pillow's convert('L') and the folder loader's grey keep."""
    return float(LUMA @ rgb) / 1000


def colours(rng: np.random.Generator) -> tuple:
    """(ink, background), RGB in [0, 1] each, drawn as the module docstring says: six uniforms, in the order ink
    hue, saturation, value, then background hue, saturation, value."""
    ink = np.array(colorsys.hsv_to_rgb(*rng.uniform(*INK_HSV)))
    hue, saturation, value = rng.uniform(*BACKGROUND_HSV)
    top = BACKGROUND_HSV[1][2]
    value *= min(top, luma(ink) / CONTRAST) / top     # uniform below min(0.35, luma(ink) / 2); luma(bg) <= its value
    return ink, np.array(colorsys.hsv_to_rgb(hue, saturation, value))


def colourise(grey: np.ndarray, ink: np.ndarray, background: np.ndarray) -> np.ndarray:
    """A grey digit, uint8 (H, W), painted: uint8 (H, W, 3).

        alpha = grey / 255                                    how much of each pixel the ink covers
        out   = round(255 (alpha ink + (1 - alpha) background))   per channel; ink, background RGB in [0, 1]

    Full ink (255) is the ink's colour, no ink (0) the background's, and the anti-aliased edges blend the two.
    """
    alpha = (grey.astype(np.float64) / 255)[..., None]                          # (H, W, 1)
    return np.rint(255 * (alpha * ink + (1 - alpha) * background)).astype(np.uint8)   # (H, W, 3)


def picture(data, i: int, args) -> np.ndarray:
    """The picture to write for index ``i`` of the split: the grey digit, or with --colour painted in its colours."""
    if not args.colour:
        return data.images[i]
    return colourise(data.images[i], *colours(np.random.default_rng([args.seed or 0, int(i)])))


def write_png(image: np.ndarray, path: Path) -> None:
    """A uint8 (H, W) picture as a grey PNG, or (H, W, 3) as an RGB one, written whole or not at all."""
    from PIL import Image

    partial = path.with_name(path.name + ".partial")
    try:
        Image.fromarray(image, mode="L" if image.ndim == 2 else "RGB").save(partial, format="PNG")
        os.replace(partial, path)
    except OSError as e:   # a full disk: name the picture (the write's own error names no file), keep that error
        try:
            partial.unlink(missing_ok=True)
        except OSError:
            pass
        raise OSError(e.errno, f"cannot write the picture: {e.strerror or e}", str(path)) from e


def same_picture(path: Path, image: np.ndarray) -> bool:
    """Whether the PNG at ``path`` holds exactly ``image`` (an unreadable file does not)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.array_equal(np.asarray(im), image)
    except (OSError, ValueError):   # not a picture Pillow reads (UnidentifiedImageError is an OSError)
        return False


def check_options(args) -> None:
    if args.colour and args.dataset != "mnist":
        raise UserError(f"--colour: only with --dataset mnist (it paints a digit's ink and its blank ground), not "
                        f"--dataset {args.dataset}")
    if args.seed is not None and not args.colour:
        raise UserError(f"--seed {args.seed}: only with --colour (it seeds the colours)")


def work(args) -> int:
    check_options(args)
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
    paths = [(i, out / folder_name(names[k]) / f"{i:05d}.png") for k, indices in picks.items() for i in indices]
    kept = [(i, path) for i, path in paths if path.exists()]
    if kept and not same_picture(kept[0][1], picture(data, kept[0][0], args)):   # shows what an earlier run wrote
        raise UserError(f"--out {out}: {kept[0][1]} is not the picture these options write (an earlier run with or "
                        "without --colour, or with another --seed?): choose a new folder")
    for i, path in paths:
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            write_png(picture(data, i, args), path)
    print(f"wrote {len(paths) - len(kept):,} pictures ({len(paths):,} in all: {len(picks)} classes, up to "
          f"{args.per_class} each) to {out}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    return run("export_images.py", work, args)


if __name__ == "__main__":
    sys.exit(main())
