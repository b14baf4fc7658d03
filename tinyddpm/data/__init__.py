"""The pictures a run trains on, as uint8 arrays: MNIST and Fashion-MNIST (mnist.py), a folder of your own
pictures (folder.py), and the endless shuffled batches a training run draws from them (batches.py), scaled to
the model's range [-1, 1] (pixels.py)."""
from .batches import Batches
from .folder import ImageFolderData, load_image_folder
from .mnist import (CLASS_NAMES, DATASETS, FILES, SOURCES, SPLITS, SUBSET_FILES, TITLES, DownloadError,
                    FallbackUnavailable, ImageData, MNISTData, download_mnist, find_idx_files, load_dataset, load_mnist,
                    load_package, load_subset, mnist_dir, read_idx, write_idx)
from .pixels import from_model_range, pixels_to_model_range, to_model_range
