"""Data parallelism, exact in both forms: a batch cut into shards on the cores of one process (threads.py), and
a batch shared among processes that sum their gradients with MPI (mpi.py).

Why it is exact. A step's loss is a mean over the B images of the batch, so its gradient is a sum over them:

    L = (1/B) sum_i l_i(theta)                    dL/dtheta = (1/B) sum_i dl_i/dtheta

Cut the batch into parts (a rank's rows, a shard's rows within them); part p takes the rows S_p and computes

    L_p = (1/B) sum_{i in S_p} l_i            =  (its own mean over |S_p| images) * |S_p| / B      share(rows, B)
    g_p = dL_p/dtheta                         by the U-Net's backward on its |S_p| images only

and adding the parts' results gives the whole batch's:  sum_p L_p = L,  sum_p g_p = dL/dtheta. The threads of one
process add their shards' in shard order; the processes add theirs with one Allreduce. The parts compute nothing
else together. That holds because the U-Net treats the images of a batch independently: GroupNorm normalises within
one image, attention mixes the pixels of one image. BatchNorm would not: its mean and variance run over the batch,
so the parts would have to share them inside every forward and backward pass (lessons/11_data_parallel.py).

Only the order in which the images' gradients are added changes with the number of parts: results differ by float
round-off (about 1e-7 relative per step in float32), and a run repeats bit for bit for given counts of processes and
shards.
"""
from __future__ import annotations


def share(rows: slice, batch: int) -> float:
    """|S_p| / B: the weight of a part's own mean loss (and its gradient) in the whole batch's mean."""
    return (rows.stop - rows.start) / batch
