"""How good the samples are: FID, precision and recall, Inception Score and accuracy in a classifier's features
(metrics.py), a check that the samples are not copies of the training images (nearest.py), and for colour pictures
the distance between colour histograms and the luma an MNIST classifier reads (colour.py)."""
