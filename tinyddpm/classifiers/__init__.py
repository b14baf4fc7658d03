"""Two classifiers built from tinyddpm's ops: the judge of finished samples, on clean images (judge.py, for the
evaluation's FID and accuracy), and the guide p(y | x_t, t), on noisy images (guide.py, for classifier guidance)."""
