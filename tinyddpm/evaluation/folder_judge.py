"""The judge of a labelled folder of pictures: its evaluation classifier and the real pictures samples are measured
against. One recipe for examples/evaluate.py --data FOLDER and benchmarks/recipe_ab.py --data FOLDER, so that their
numbers (FID-folder, precision, recall, accuracy) are measured alike and a classifier trained by one is the other's.

    params, info = load_or_train_folder_classifier(folder)       # folder: load_image_folder's, a subfolder per class
    picks = reference_picks(len(folder.images), 2 * n, seed=0)   # the real pictures of FID and the real-vs-real floor

The classifier is tinyddpm/classifiers/judge.py's network, trained on a seeded 90/10 split of the folder's pictures
(split_folder: FOLDER_TEST_SHARE held out to measure its accuracy) for at least FOLDER_MIN_STEPS steps unless the
epochs are given, and cached under folder_key(images, labels) (default_classifier_dir of that key): the same
pictures, wherever they lie, find the same classifier. The real reference is the folder itself, a seeded random pick
of it (reference_picks).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..classifiers.judge import (BATCH_SIZE, CHECKPOINT_NAME, default_classifier_dir, folder_key,
                                 load_or_train_classifier)

FOLDER_TEST_SHARE = 0.1   # of a labelled folder's pictures, held out to measure its classifier's accuracy
FOLDER_MIN_STEPS = 500    # a folder's classifier trains for at least this many steps (2 epochs of MNIST: 936)


class TooFewPictures(ValueError):
    """A folder with too few pictures per class to train its classifier on: the user's to fix."""


def split_folder(folder) -> tuple:
    """(train, test): a seeded 90/10 split of a labelled folder's pictures for its classifier."""
    n = len(folder.images)
    order = np.random.default_rng(0).permutation(n)
    cut = n - max(1, int(round(FOLDER_TEST_SHARE * n)))
    part = lambda idx, what: SimpleNamespace(   # noqa: E731
        images=folder.images[idx], labels=folder.labels[idx], class_names=folder.class_names,
        source=f"{folder.source} ({what}: {len(idx)} of its {n} pictures, seeded split)")
    return part(np.sort(order[:cut]), "classifier training part"), part(np.sort(order[cut:]), "held-out part")


def classifier_epochs(n_train: int, n_classes: int, epochs: float | None = None) -> float:
    """Epochs of a folder's classifier trained on ``n_train`` pictures of ``n_classes`` classes: ``epochs`` if given,
    else as many as FOLDER_MIN_STEPS steps take (at least 2). TooFewPictures under two pictures per class."""
    if n_train < 2 * n_classes:
        raise TooFewPictures(f"{n_train} pictures for {n_classes} classes are too few to train the evaluation "
                             "classifier on")
    steps_per_epoch = max(1, n_train // min(BATCH_SIZE, n_train))
    return epochs or max(2.0, FOLDER_MIN_STEPS / steps_per_epoch)


def load_or_train_folder_classifier(folder, cache_dir=None, *, epochs: float | None = None, verbose: bool = True):
    """(params, info) of the classifier of a labelled folder (load_image_folder's data): loaded from ``cache_dir``
    (default: default_classifier_dir(folder_key(...))), or trained there now on split_folder's training part and
    tested on its held-out part (judge.load_or_train_classifier). TooFewPictures when it must be trained and cannot."""
    if folder.labels is None:
        raise ValueError("load_or_train_folder_classifier: a flat folder has no labels to train a classifier on")
    key = folder_key(folder.images, folder.labels)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_classifier_dir(key)
    train, test = split_folder(folder)
    if not (cache_dir / CHECKPOINT_NAME).is_file():   # the epochs, and enough pictures, matter only to training
        epochs = classifier_epochs(len(train.labels), len(folder.class_names), epochs)
    return load_or_train_classifier(cache_dir, train_data=train, test_data=test, dataset="folder", data_key=key,
                                    epochs=epochs, verbose=verbose)


def reference_picks(total: int, count: int, seed: int) -> np.ndarray:
    """Indices of (at most) ``count`` of a folder's ``total`` pictures, a seeded random pick: a folder is read class
    after class, so its first pictures would all be of its first class."""
    return np.random.default_rng(seed).permutation(total)[:count]
