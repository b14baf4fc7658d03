"""The U-Net of Ho et al. (2020), scaled for MNIST, with a hand-written backward.

Legend: N batch, C channels, H W spatial size, E = 4 * base_channels the time-embedding width.

    t  -> sinusoidal(t, base) -> linear -> silu -> linear -> temb (N, E)      [+ label_embedding(y)]
    temb_act = silu(temb)                                  read by every ResBlock
    h = conv_in(x)                                         (N, base, 28, 28)
    down: per level, ResBlocks (+ attention at chosen sizes), then a stride-2 conv;
          every output is kept as a skip                   28 -> 14 -> 7
    middle: ResBlock, attention, ResBlock                  (N, base * mult[-1], 7, 7)
    up: per level, ResBlocks on concat(h, skip), one more than on the way down,
        (+ attention), then nearest x2 + conv              7 -> 14 -> 28
    out = conv_out(silu(groupnorm(h)))                     (N, image_channels, 28, 28)

Options (off by default; see blocks.py): ``activation="gelu"`` (every silu above), ``weight_standardisation``
(conv1 of every ResBlock), ``downsample="space_to_depth"`` (pixel unshuffle + 1x1 conv instead of the
stride-2 conv), ``upsample="transposed"`` (a 4x4 stride-2 transposed conv instead of nearest x2 + conv).
A config without these fields (an older checkpoint's) gets the defaults, which are the network above.

Class conditioning adds a learned label embedding to temb; the table has one extra row, the null
label ``num_classes``, which training substitutes for a share of labels so that the same network also
predicts unconditionally (classifier-free guidance). The last conv of every ResBlock, the output
projection of every attention block and the output conv start at zero, so at initialisation every
ResBlock and attention block reduces to its skip path (the identity where the channels do not change)
and the network predicts zero.

``unet_forward(params, config, x, t, labels)`` returns (out, cache); ``unet_backward(dout, cache)``
returns (dx, grads): the gradient of x and a dict of parameter gradients with the keys of ``params``.

Proof: tests/test_unet.py (test_whole_network_gradcheck: finite differences at sampled entries of x
and every parameter of hypothesis-drawn tiny U-Nets; test_matches_torch_twin: the PyTorch twin in
tests/torch_twin.py, forward and every gradient; both again with every block option on:
test_whole_network_gradcheck_all_block_options, test_block_options_match_torch_twin;
test_old_checkpoint_without_the_new_fields_loads); ``python -m tinyddpm.gradcheck --op unet``, rows
'unet (tiny, whole network)' and 'unet (tiny, all block options)'.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from ..backend import get_xp, to_device
from ..ops.embedding import label_embedding_backward, label_embedding_forward, timestep_embedding_forward
from ..ops.linear import linear_backward, linear_forward
from ..ops.skip import add_backward, add_forward, concat_backward, concat_forward
from .blocks import (ACTIVATIONS, DOWNSAMPLES, UPSAMPLES, activation_backward, activation_forward,
                     attention_block_backward, attention_block_forward, conv_block_backward, conv_forward,
                     downsample_forward, norm_act_backward, norm_act_forward, resblock_backward, resblock_forward,
                     upsample_forward)


@dataclass(frozen=True)
class UNetConfig:
    image_channels: int = 1                     # 1 for MNIST
    image_size: int = 28                        # H = W of the input
    base_channels: int = 32                     # channels after conv_in
    channel_mults: tuple = (1, 2, 2)            # per level; each level after the first halves H and W
    blocks_per_level: int = 1                   # ResBlocks per level going down (one more going up)
    attention_resolutions: tuple = (7,)         # feature-map sizes H that get self-attention
    heads: int = 4                              # attention heads
    dropout: float = 0.1                        # inside every ResBlock, training only
    groups: int = 8                             # GroupNorm groups
    num_classes: int | None = 10                # None: unconditional; else labels 0..num_classes-1
    # Building blocks (blocks.py); the defaults are Ho et al.'s, and what a checkpoint without these fields used
    activation: str = "silu"                    # "silu" or "gelu" (exact, erf form): every nonlinearity
    weight_standardisation: bool = False        # standardise conv1's filters in every ResBlock (Qiao et al.)
    downsample: str = "conv"                    # "conv" (3x3, stride 2) or "space_to_depth" (+ 1x1 conv)
    upsample: str = "nearest"                   # "nearest" (x2 + 3x3 conv) or "transposed" (4x4, stride 2)

    @property
    def time_dim(self) -> int:
        return 4 * self.base_channels

    @property
    def null_label(self) -> int | None:
        """The label meaning 'no class', used for classifier-free guidance."""
        return self.num_classes

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        d = dict(d)
        for key in ("channel_mults", "attention_resolutions"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def validate(self) -> None:
        levels = len(self.channel_mults)
        if levels < 1 or self.blocks_per_level < 1:
            raise ValueError(f"UNetConfig: need at least one level and one block per level, got {self}")
        if self.image_size % 2 ** (levels - 1):
            raise ValueError(f"UNetConfig: image_size {self.image_size} must be divisible by 2**(levels-1) = "
                             f"{2 ** (levels - 1)} for channel_mults {self.channel_mults}")
        for c in {self.base_channels * m for m in self.channel_mults}:
            if c % self.groups:
                raise ValueError(f"UNetConfig: groups {self.groups} must divide every level's channels, not {c}")
            if c % self.heads:
                raise ValueError(f"UNetConfig: heads {self.heads} must divide every level's channels, not {c}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig: dropout must be in [0, 1), got {self.dropout}")
        for name, allowed in (("activation", tuple(ACTIVATIONS)), ("downsample", DOWNSAMPLES), ("upsample", UPSAMPLES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"UNetConfig: {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not isinstance(self.weight_standardisation, bool):
            raise ValueError(f"UNetConfig: weight_standardisation must be True or False, got {self.weight_standardisation!r}")


# ---------------------------------------------------------------------------------------------------
# The plan: the network's layers in order, computed once from the config. Parameters, forward and
# backward all follow it, so the three can never disagree about the architecture.

class Layer(NamedTuple):
    kind: str        # "res", "attn", "down", "up"
    name: str        # parameter prefix
    c_in: int        # input channels (for "res" on the up path: including the concatenated skip)
    c_out: int
    size: int        # H of its input
    push_skip: bool  # down path: the output is kept for a skip connection
    pop_skip: bool   # up path: the input is concatenated with the latest skip first


def plan(cfg: UNetConfig):
    """(down, middle, up) lists of Layers for the config."""
    cfg.validate()
    base, levels = cfg.base_channels, len(cfg.channel_mults)
    down, skip_channels = [], [base]  # conv_in's output is the first skip
    ch, size = base, cfg.image_size
    for i, mult in enumerate(cfg.channel_mults):
        for j in range(cfg.blocks_per_level):
            down.append(Layer("res", f"down.{i}.res.{j}", ch, base * mult, size, size not in cfg.attention_resolutions, False))
            ch = base * mult
            if size in cfg.attention_resolutions:
                down.append(Layer("attn", f"down.{i}.attn.{j}", ch, ch, size, True, False))
            skip_channels.append(ch)
        if i < levels - 1:
            down.append(Layer("down", f"down.{i}.downsample", ch, ch, size, True, False))
            skip_channels.append(ch)
            size //= 2
    middle = [Layer("res", "mid.res.0", ch, ch, size, False, False),
              Layer("attn", "mid.attn", ch, ch, size, False, False),
              Layer("res", "mid.res.1", ch, ch, size, False, False)]
    up = []
    for i, mult in reversed(list(enumerate(cfg.channel_mults))):
        for j in range(cfg.blocks_per_level + 1):
            c_skip = skip_channels.pop()
            up.append(Layer("res", f"up.{i}.res.{j}", ch + c_skip, base * mult, size, False, True))
            ch = base * mult
            if size in cfg.attention_resolutions:
                up.append(Layer("attn", f"up.{i}.attn.{j}", ch, ch, size, False, False))
        if i > 0:
            up.append(Layer("up", f"up.{i}.upsample", ch, ch, size, False, False))
            size *= 2
    assert not skip_channels, "every skip is consumed once"
    return down, middle, up


# ---------------------------------------------------------------------------------------------------
# Parameters

def init_params(cfg: UNetConfig, seed: int = 0, dtype=np.float32) -> dict:
    """A flat dict of parameters on the current device, in ``dtype``, drawn from NumPy's seeded generator.

    Weights are drawn from U(-a, a) with a = sqrt(3 / fan_avg) (variance 1 / fan_avg, as in Ho et al.),
    biases and GroupNorm shifts start at 0, GroupNorm scales at 1; the weights of the last conv of each
    ResBlock, of the attention output projection and of conv_out start at zero; the label table (a
    conditional network only) is drawn from N(0, 1). The options' weights: the space-to-depth 1x1 conv
    (C, 4C, 1, 1) as any conv; the transposed conv (C, C, 4, 4) with fan_in = C * 4 (the taps that meet at
    one output pixel: (4 / stride)^2 per channel) and fan_out = C * 16 (the outputs one input pixel reaches).
    With the default options the draws, and so the weights for a seed, are those of the plain network.
    """
    rng = np.random.default_rng(seed)
    p = {}

    def uniform(name, shape, fan_in, fan_out):
        a = math.sqrt(3.0 / ((fan_in + fan_out) / 2))
        p[name] = rng.uniform(-a, a, size=shape)

    def conv(name, c_in, c_out, k=3, zero=False):
        uniform(f"{name}.w", (c_out, c_in, k, k), c_in * k * k, c_out * k * k)
        if zero:
            p[f"{name}.w"][...] = 0.0
        p[f"{name}.b"] = np.zeros(c_out)

    def linear(name, d_in, d_out):
        uniform(f"{name}.w", (d_out, d_in), d_in, d_out)
        p[f"{name}.b"] = np.zeros(d_out)

    def norm(name, c):
        p[f"{name}.g"], p[f"{name}.b"] = np.ones(c), np.zeros(c)

    base, E = cfg.base_channels, cfg.time_dim
    linear("time.lin1", base, E)
    linear("time.lin2", E, E)
    if cfg.num_classes is not None:
        p["label.table"] = rng.standard_normal((cfg.num_classes + 1, E))
    conv("conv_in", cfg.image_channels, base)
    down, middle, up = plan(cfg)
    for layer in down + middle + up:
        n = layer.name
        if layer.kind == "res":
            norm(f"{n}.norm1", layer.c_in)
            conv(f"{n}.conv1", layer.c_in, layer.c_out)
            linear(f"{n}.temb", E, layer.c_out)
            norm(f"{n}.norm2", layer.c_out)
            conv(f"{n}.conv2", layer.c_out, layer.c_out, zero=True)
            if layer.c_in != layer.c_out:
                conv(f"{n}.skip", layer.c_in, layer.c_out, k=1)
        elif layer.kind == "attn":
            norm(f"{n}.norm", layer.c_in)
            linear(f"{n}.qkv", layer.c_in, 3 * layer.c_in)
            linear(f"{n}.out", layer.c_in, layer.c_in)
            p[f"{n}.out.w"][...] = 0.0
        elif layer.kind == "down" and cfg.downsample == "space_to_depth":
            conv(n, 4 * layer.c_in, layer.c_out, k=1)  # after pixel unshuffle: 4C channels
        elif layer.kind == "up" and cfg.upsample == "transposed":
            uniform(f"{n}.w", (layer.c_in, layer.c_out, 4, 4), layer.c_in * 4, layer.c_out * 16)  # (Ci, Co, k, k)
            p[f"{n}.b"] = np.zeros(layer.c_out)
        else:  # "down" and "up" own one 3x3 conv
            conv(n, layer.c_in, layer.c_out)
    norm("out.norm", base)
    conv("conv_out", base, cfg.image_channels, zero=True)
    return {k: to_device(v, dtype=dtype) for k, v in p.items()}


def count_params(params: dict) -> int:
    """The number of scalars in ``params``."""
    return int(sum(v.size for v in params.values()))


# ---------------------------------------------------------------------------------------------------
# Forward and backward

class UNetCache(NamedTuple):
    time_lin1: object
    time_act: object
    time_lin2: object
    label: object        # label-embedding cache, or None
    label_add: object
    temb_act: object
    conv_in: object
    layers: list         # (Layer, block cache, concat cache or None) in forward order
    out_norm_act: object  # the last groupnorm + activation (blocks.NormActCache)
    conv_out: object


def _check_inputs(cfg, params, x, t, labels):
    expected = (cfg.image_channels, cfg.image_size, cfg.image_size)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(f"unet: x must be (N, {expected[0]}, {expected[1]}, {expected[2]}), got {tuple(x.shape)}")
    if tuple(t.shape) != (x.shape[0],):
        raise ValueError(f"unet: t must be (N,) = ({x.shape[0]},), got {tuple(t.shape)}")
    if cfg.num_classes is None and labels is not None:
        raise ValueError("unet: labels given to an unconditional network (num_classes=None)")
    if labels is not None and tuple(labels.shape) != (x.shape[0],):
        raise ValueError(f"unet: labels must be (N,) = ({x.shape[0]},), got {tuple(labels.shape)}")
    if params["conv_in.w"].dtype != x.dtype:
        raise TypeError(f"unet: x is {x.dtype} but the parameters are {params['conv_in.w'].dtype}")


def unet_forward(params, cfg: UNetConfig, x, t, labels=None, *, train=False, rng=None, keep_cache=True):
    """Predict from x (N, C, H, W) at timesteps t (N,) with optional labels (N,). Returns (out, cache).

    For a conditional network, ``labels=None`` means the null label for the whole batch.
    ``train=True`` turns dropout on and needs ``rng``, a Generator of the device.
    ``keep_cache=False`` (sampling: no backward follows) lets each block's cache go as soon as the block is
    done and returns (out, None): the memory of one block's intermediates instead of the whole network's.
    """
    _check_inputs(cfg, params, x, t, labels)
    p = params
    # Time embedding: sinusoidal features, then a two-layer MLP.
    e, _ = timestep_embedding_forward(t, cfg.base_channels, dtype=x.dtype)   # (N, base)
    e, time_lin1 = linear_forward(e, p["time.lin1.w"], p["time.lin1.b"])          # (N, E)
    e, time_act = activation_forward(e, cfg.activation)
    temb, time_lin2 = linear_forward(e, p["time.lin2.w"], p["time.lin2.b"])       # (N, E)
    label = label_add = None
    if cfg.num_classes is not None:
        if labels is None:
            xp = get_xp(x)
            labels = xp.full((x.shape[0],), cfg.null_label, dtype=xp.int64)
        y_emb, label = label_embedding_forward(labels, p["label.table"])          # (N, E)
        temb, label_add = add_forward(temb, y_emb)
    temb_act, temb_act_cache = activation_forward(temb, cfg.activation)  # every ResBlock reads act(temb)

    h, conv_in = conv_forward(p, "conv_in", x)
    skips, layers = [h], []
    block_kw = dict(groups=cfg.groups, dropout=cfg.dropout, train=train, rng=rng, activation=cfg.activation,
                    weight_standardisation=cfg.weight_standardisation)
    down, middle, up = plan(cfg)
    for layer in down + middle + up:
        concat = None
        if layer.pop_skip:
            h, concat = concat_forward(h, skips.pop(), axis=1)  # (N, C + C_skip, H, W)
        if layer.kind == "res":
            h, cache = resblock_forward(p, layer.name, h, temb_act, **block_kw)
        elif layer.kind == "attn":
            h, cache = attention_block_forward(p, layer.name, h, groups=cfg.groups, heads=cfg.heads)
        elif layer.kind == "down":
            h, cache = downsample_forward(p, layer.name, h, cfg.downsample)
        else:
            h, cache = upsample_forward(p, layer.name, h, cfg.upsample)
        if layer.push_skip:
            skips.append(h)
        layers.append((layer, cache, concat) if keep_cache else None)
    h, out_norm_act = norm_act_forward(h, p["out.norm.g"], p["out.norm.b"], cfg.groups, cfg.activation)
    out, conv_out = conv_forward(p, "conv_out", h)
    if not keep_cache:
        return out, None
    return out, UNetCache(time_lin1, time_act, time_lin2, label, label_add, temb_act_cache,
                          conv_in, layers, out_norm_act, conv_out)


def unet_backward(dout, cache: UNetCache):
    """(dx, grads): the gradient of the input image and a dict of parameter gradients keyed like ``params``."""
    grads = {}
    dh = conv_block_backward(dout, cache.conv_out, grads)
    dh, grads["out.norm.g"], grads["out.norm.b"] = norm_act_backward(dh, cache.out_norm_act)

    dtemb_act = 0
    dskips = []  # gradients for the skips, in the order the up path consumed them
    for layer, block, concat in reversed(cache.layers):
        if layer.push_skip:
            dh = dh + dskips.pop()  # this layer's output also fed a skip connection
        if layer.kind == "res":
            dh, dtemb_block = resblock_backward(dh, block, grads)
            dtemb_act = dtemb_act + dtemb_block  # temb_act fed every ResBlock: sum their gradients
        elif layer.kind == "attn":
            dh = attention_block_backward(dh, block, grads)
        else:
            dh = conv_block_backward(dh, block, grads)
        if layer.pop_skip:
            dh, dskip = concat_backward(dh, concat)
            dskips.append(dskip)
    dh = dh + dskips.pop()  # conv_in's output was the first skip
    assert not dskips
    dx = conv_block_backward(dh, cache.conv_in, grads)

    dtemb = activation_backward(dtemb_act, cache.temb_act)
    if cache.label is not None:
        dtemb, dy_emb = add_backward(dtemb, cache.label_add)
        grads["label.table"] = label_embedding_backward(dy_emb, cache.label)
    de, grads["time.lin2.w"], grads["time.lin2.b"] = linear_backward(dtemb, cache.time_lin2)
    de = activation_backward(de, cache.time_act)
    _, grads["time.lin1.w"], grads["time.lin1.b"] = linear_backward(de, cache.time_lin1)
    # The sinusoidal features depend on t only; training needs no gradient with respect to t.
    return dx, grads


def known_zero_gradients(params) -> dict:
    """{name: flat indices} of parameters whose gradient is exactly zero by the math: the key bias of
    every attention block (it adds q . b_k to a whole row of scores, which softmax ignores).
    Gradient checks skip those entries and assert the analytic gradient is zero instead."""
    zeros = {}
    for name, value in params.items():
        if name.endswith(".qkv.b"):
            C = value.shape[0] // 3
            zeros[name] = np.arange(C, 2 * C)  # q, k, v are stacked in that order
    return zeros
