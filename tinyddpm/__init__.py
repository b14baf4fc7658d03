"""tinyddpm: Denoising Diffusion Probabilistic Models from scratch, NumPy on the CPU and CuPy on a GPU.

Train and sample in a few lines:

    import tinyddpm as td

    data = td.load_mnist("train", source="subset")          # 5,000 real digits shipped with tinyddpm
    config = td.preset("tiny", steps=40)                     # or "cpu" (~6 min on 2 cores), "gpu"
    state = td.train(td.new_state(config, data.images, data.labels), "runs/quickstart")
    x = td.sample_digits(state.ema.params, config.unet, state.schedule, digits=range(10), n_per_digit=2)

The pieces underneath, each in a file of its own:
    UNetConfig, init_params, unet_model      the network (unet.py), and a callable model(x_t, t, labels)
    make_schedule, q_sample, sample          the diffusion math and the samplers' front door (diffusion/)
    preset, TrainConfig, new_state, train    a training run (config.py, state.py, training.py)
    save_state, resume_state, load_for_sampling   checkpoints (checkpoint/)
    ops                                      every layer's forward and backward (ops/); ``python -m
                                             tinyddpm.gradcheck`` proves each backward with finite differences
Pictures are in ``tinyddpm.viz`` (imported on demand: it needs matplotlib).
"""
from . import diffusion, ops
from .allocator import keep_freed_memory
from .backend import device_xp, get_device, get_xp, make_rng, seed_everything, set_device, to_device, to_numpy
from .checkpoint import load_checkpoint, load_for_sampling, resume_state, save_state
from .config import PRESETS, TrainConfig, default_preset, make_run_schedule, preset
from .data import from_model_range, load_dataset, load_mnist, to_model_range
from .diffusion import GuidedModel, Trajectory, make_schedule, q_sample, sample
from .image_folder import load_image_folder
from .sampling import sample_digits
from .state import TrainState, new_state
from .training import train, train_step
from .unet import UNetConfig, count_params, init_params, unet_backward, unet_forward, unet_model

__version__ = "0.1.0"

# glibc keeps freed blocks for the next training step instead of page-faulting them in again (allocator.py)
keep_freed_memory()

__all__ = [
    "diffusion", "ops",
    # the network
    "UNetConfig", "count_params", "init_params", "unet_backward", "unet_forward", "unet_model",
    # diffusion and sampling
    "GuidedModel", "Trajectory", "make_schedule", "q_sample", "sample", "sample_digits",
    # training
    "PRESETS", "TrainConfig", "TrainState", "default_preset", "make_run_schedule", "new_state", "preset",
    "train", "train_step",
    # checkpoints and data
    "load_checkpoint", "load_for_sampling", "resume_state", "save_state",
    "from_model_range", "load_dataset", "load_image_folder", "load_mnist", "to_model_range",
    # arrays and devices
    "device_xp", "get_device", "get_xp", "make_rng", "seed_everything", "set_device", "to_device", "to_numpy",
]


def __getattr__(name):
    if name == "viz":  # matplotlib is imported only when pictures are asked for
        import importlib

        return importlib.import_module(".viz", __name__)
    raise AttributeError(f"module 'tinyddpm' has no attribute {name!r}")
