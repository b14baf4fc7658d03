"""How the MNIST subset in mnist_subset/ was made (run once; kept so that anyone can remake and check it).

    python tinyddpm/assets/make_mnist_subset.py [--data-dir DIR]

From the full MNIST (any source load_mnist accepts, SHA-256 verified), it keeps 500 digits of each class
from the train split and 100 of each class from the test split, chosen at random with a fixed seed and kept
in their original order, and writes them as gzip-compressed IDX files (the format of the published MNIST),
plus the chosen indices into each full split (int32 IDX), so that the subset can be traced back digit by
digit (tests/test_data.py does it when the full MNIST is at hand).
"""
import argparse
import sys
from pathlib import Path

import numpy as np

from ..data.mnist import SUBSET_FILES, load_mnist, write_idx

PER_CLASS = {"train": 500, "test": 100}
SEED = 2026


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="folder of the full MNIST's IDX files (default: the usual cache)")
    args = parser.parse_args(argv)
    out = Path(__file__).resolve().parent / "mnist_subset"
    out.mkdir(exist_ok=True)
    for split, per_class in PER_CLASS.items():
        full = load_mnist(split, data_dir=args.data_dir, source="auto")
        if "verified" not in full.source:
            sys.exit(f"make_mnist_subset: the {split} split is not the published MNIST ({full.source})")
        rng = np.random.default_rng([SEED, len(full)])
        picked = [rng.choice(np.flatnonzero(full.labels == digit), per_class, replace=False) for digit in range(10)]
        index = np.sort(np.concatenate(picked)).astype(np.int32)       # (10 * per_class,) in the original order
        images_name, labels_name, index_name = SUBSET_FILES[split]
        write_idx(out / images_name, full.images[index])                # (n, 28, 28) uint8
        write_idx(out / labels_name, full.labels[index].astype(np.uint8))
        write_idx(out / index_name, index)
        print(f"{split}: {len(index)} digits -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
