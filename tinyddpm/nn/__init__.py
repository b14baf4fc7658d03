"""The network: the U-Net's blocks (blocks.py: ResBlock, attention, down and up steps, each a forward and a
backward) and the U-Net that plan() assembles from them (unet.py)."""
from .unet import UNetConfig, count_params, init_params, plan, unet_backward, unet_forward
