"""Endless, seeded, shuffled mini-batches whose whole state is three integers: exact resume.

    it = Batches(x0, labels, batch_size=128, seed=0)   # NumPy or CuPy arrays; labels may be None
    xb, yb = next(it)                                 # (B, ...) and (B,), epoch after epoch

Epoch e visits the items in the order of a permutation drawn from the seed sequence (seed, e) on the host,
so the iterator's state is (seed, epoch, position), CPU and GPU runs see the same batches, and a resumed run,
given that state, sees exactly the batches an uninterrupted run would.

With ``flip=True`` (data augmentation for pictures) epoch e also mirrors item i left-right, x[..., ::-1], when
``default_rng([seed, e, 1]).random(N)[i] < 1/2``: a function of the same three integers, so resume stays exact.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_xp
from ..checks import check_int


class Batches:
    """Endless, seeded, shuffled mini-batches, epoch after epoch; the state is (seed, epoch, position).

        it = Batches(images, labels, batch_size=128, seed=0)
        xb, yb = next(it)                  # or: for xb, yb in it: ... (never ends by itself)
        for xb, yb in it.rest_of_epoch():  # or: only the batches left in the current epoch
        state = it.state_dict()            # a small JSON-ready dict; put it in the checkpoint
        it.load_state_dict(state)          # continues with exactly the batch that would have come next

    Epoch e visits the items in the order ``np.random.default_rng([seed, e]).permutation(N)``,
    computed on the host, so CPU and GPU runs see the same batches. With ``drop_last`` (the
    default) the N % batch_size items left over at the end of an epoch are skipped for that epoch
    (each epoch's shuffle leaves out different ones); otherwise the last batch is smaller.
    ``images`` and ``labels`` may be NumPy or CuPy (labels may be None); batches come from the same module.
    ``flip``: mirror each image (the last axis) with probability 1/2, drawn per epoch and item (module doc).
    """

    def __init__(self, images, labels, batch_size: int, seed: int = 0, drop_last: bool = True, flip: bool = False):
        n = len(images)
        if labels is not None and len(labels) != n:
            raise ValueError(f"Batches: images {tuple(images.shape)} and labels {tuple(labels.shape)} differ in length")
        batch_size = check_int("Batches", "batch_size", batch_size, minimum=1)
        seed = check_int("Batches", "seed", seed, minimum=0)
        if n == 0 or (drop_last and batch_size > n):
            raise ValueError(f"Batches: batch_size {batch_size} with drop_last={drop_last} leaves no batch "
                             f"from {n} images {tuple(images.shape)}")
        self.images, self.labels = images, labels
        self.n, self.batch_size, self.seed, self.drop_last = n, int(batch_size), int(seed), bool(drop_last)
        self.flip = bool(flip)
        self.xp = get_xp(images, labels, op="Batches")
        self.epoch, self.position = 0, 0  # the next batch is batch `position` of epoch `epoch`
        self._order = None, None                # (epoch, permutation) cache
        self._flips = None, None                # (epoch, mirrored items) cache

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def permutation(self, epoch: int) -> np.ndarray:
        """The order (N,) int64 in which epoch ``epoch`` visits the items."""
        if self._order[0] != epoch:
            self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._order[1]

    def flips(self, epoch: int) -> np.ndarray:
        """Which items (N,) bool epoch ``epoch`` mirrors left-right (when ``flip`` is on); drawn once per epoch."""
        if self._flips[0] != epoch:
            self._flips = epoch, np.random.default_rng([self.seed, epoch, 1]).random(self.n) < 0.5
        return self._flips[1]

    def next_indices(self) -> np.ndarray:
        """The indices (B,) of the next batch, advancing the state."""
        start = self.position * self.batch_size
        indices = self.permutation(self.epoch)[start:start + self.batch_size]
        self.position += 1
        if self.position == self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        return indices

    def _take(self, indices):
        index = self.xp.asarray(indices)
        return self.images[index], None if self.labels is None else self.labels[index]

    def __iter__(self):
        return self

    def __next__(self):
        if not self.flip:
            return self._take(self.next_indices())
        epoch = self.epoch                        # before next_indices moves it on
        indices = self.next_indices()
        xb, yb = self._take(indices)
        mirror = self.xp.asarray(self.flips(epoch)[indices]).reshape((-1,) + (1,) * (xb.ndim - 1))  # (B, 1, ..)
        return self.xp.where(mirror, xb[..., ::-1], xb), yb

    def rest_of_epoch(self):
        """Yield the batches left in the current epoch, then stop (the state moves to the next epoch)."""
        current = self.epoch
        while self.epoch == current:
            yield next(self)

    def state_dict(self) -> dict:
        """Everything needed to continue exactly here (plain ints and bools, JSON-ready)."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "n": self.n, "batch_size": self.batch_size, "drop_last": self.drop_last, "flip": self.flip}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``; the data set, batch size and drop_last must be the ones it was saved with.

        ``flip`` is taken from ``state`` (a state saved before flips existed has none: False).
        """
        for key, mine in (("n", self.n), ("batch_size", self.batch_size), ("drop_last", self.drop_last)):
            if state.get(key) != mine:
                raise ValueError(f"Batches.load_state_dict: the saved state has {key}={state.get(key)!r}, "
                                 f"this iterator has {key}={mine!r} (images {tuple(self.images.shape)})")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.batches_per_epoch:
            raise ValueError(f"Batches.load_state_dict: position {position} of epoch {epoch} is out of range "
                             f"(0..{self.batches_per_epoch - 1})")
        self.seed, self.epoch, self.position = int(state["seed"]), epoch, position
        self.flip = bool(state.get("flip", False))
