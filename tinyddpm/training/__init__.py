"""A training run: its configuration and presets (config.py), its state (state.py), the optimizer, clipping
and EMA (optim.py: the readable per-tensor reference), the same three as one pass over flat buffers (flat.py,
fused_update.py: what training runs), the step and the loop (loop.py), and saving and exact resume (resume.py)."""
from .config import IMAGE_PRESETS, PRESETS, TrainConfig, default_preset, make_run_schedule, preset
from .loop import train, train_step
from .optim import EMA, AdamW, clip_grad_norm, lr_schedule
from .resume import CHECKPOINT_NAME, load_for_sampling, resume_state, save_state
from .state import TrainState, new_state
