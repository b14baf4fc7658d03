"""Checkpoints: the .npz file format (npz.py: atomic writes, no pickle) and a training run's state in it
(run.py: save, exact resume, and the weights to sample with)."""
from .npz import (FORMAT_VERSION, Checkpoint, CheckpointError, generator_state, load_checkpoint, restore_generator,
                  save_checkpoint)
from .run import CHECKPOINT_KIND, CHECKPOINT_NAME, load_for_sampling, read_train_config, resume_state, save_state

__all__ = ["CHECKPOINT_KIND", "CHECKPOINT_NAME", "FORMAT_VERSION", "Checkpoint", "CheckpointError", "generator_state",
           "load_checkpoint", "load_for_sampling", "read_train_config", "restore_generator", "resume_state",
           "save_checkpoint", "save_state"]
