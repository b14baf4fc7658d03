"""How good the samples are: FID, precision and recall, Inception Score and accuracy in a classifier's features
(metrics.py), and a check that the samples are not copies of the training images (nearest.py)."""
