"""tinyddpm: Denoising Diffusion Probabilistic Models from scratch, NumPy on the CPU and CuPy on a GPU.

Train and sample in a few lines:

    import tinyddpm as td

    data = td.load_mnist("train", source="subset")          # 5,000 real digits shipped with tinyddpm
    config = td.preset("tiny", steps=40)                     # or "cpu" (~13 min on 2 cores), "gpu"
    state = td.train(td.new_state(config, data.images, data.labels), "runs/quickstart")
    x = td.sample_classes(state.ema.params, config.unet, state.schedule, classes=range(10), n_per_class=2,
                          prediction=config.prediction)    # what the network outputs: 'eps' here, 'v' in "cpu"

The pieces underneath, a folder per concern:
    ops/            every layer's forward and backward; ``python -m tinyddpm.gradcheck`` proves each backward
    nn/             the U-Net (UNetConfig, init_params, unet_forward, unet_backward) and its blocks
    diffusion/      schedules, q_sample, the loss, the samplers (sample) and guidance
    training/       preset, TrainConfig, new_state, train_step, train, save_state, resume_state, load_for_sampling
    sampling.py     unet_model and sample_classes: weights -> images
    data/           MNIST, Fashion-MNIST, folders of pictures, batches
    parallel/       batch shards on the cores (threads.py), processes with MPI (mpi.py)
    classifiers/    the judge of samples (judge.py) and the noisy classifier of classifier guidance (guide.py)
    evaluation/     FID, precision/recall, accuracy; nearest training images; colour histograms
Pictures are in ``tinyddpm.viz`` (imported on demand: it needs matplotlib).
"""
from . import diffusion, ops
from .allocator import keep_freed_memory
from .backend import device_xp, get_device, get_xp, make_rng, seed_everything, set_device, to_device, to_numpy
from .checkpoint import load_checkpoint
from .data import ImageData, from_model_range, load_dataset, load_image_folder, load_mnist, to_model_range
from .diffusion import GuidedModel, Trajectory, make_schedule, q_sample, sample
from .nn import UNetConfig, count_params, init_params, unet_backward, unet_forward
from .sampling import sample_classes, sample_digits, unet_model
from .training import (PRESETS, TrainConfig, TrainState, default_preset, load_for_sampling, make_run_schedule,
                       new_state, preset, resume_state, save_state, train, train_step)

__version__ = "0.1.0"

# glibc keeps freed blocks for the next training step instead of page-faulting them in again (allocator.py)
keep_freed_memory()

__all__ = [
    "diffusion", "ops",
    # the network
    "UNetConfig", "count_params", "init_params", "unet_backward", "unet_forward", "unet_model",
    # diffusion and sampling
    "GuidedModel", "Trajectory", "make_schedule", "q_sample", "sample", "sample_classes", "sample_digits",
    # training
    "PRESETS", "TrainConfig", "TrainState", "default_preset", "make_run_schedule", "new_state", "preset",
    "train", "train_step",
    # checkpoints and data
    "load_checkpoint", "load_for_sampling", "resume_state", "save_state",
    "ImageData", "from_model_range", "load_dataset", "load_image_folder", "load_mnist", "to_model_range",
    # arrays and devices
    "device_xp", "get_device", "get_xp", "make_rng", "seed_everything", "set_device", "to_device", "to_numpy",
]


def __getattr__(name):
    if name == "viz":  # matplotlib is imported only when pictures are asked for
        import importlib

        return importlib.import_module(".viz", __name__)
    raise AttributeError(f"module 'tinyddpm' has no attribute {name!r}")
