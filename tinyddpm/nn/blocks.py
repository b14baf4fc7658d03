"""The U-Net's building blocks, each a forward that chains ops and a backward that unwinds them.

Legend: N batch, Ci/Co channels in/out, H W height and width, E time-embedding width.

Parameters live in one flat dict shared by the whole network; a block reads the entries under its
``name`` (``"down.0.res.0.conv1.w"``) and its backward writes gradients under the same keys into
``grads``. Each backward walks its forward's lines in reverse, and every value that fed two places
(the block input that also takes the skip path, the time embedding read by every ResBlock) gets its
gradients summed in one visible line.

ResBlock (Ho et al. 2020, appendix B)::

    h = conv1(silu(groupnorm1(x)))                 # (N, Co, H, W)
    h = h + linear(temb_act)[:, :, None, None]     # time embedding, one value per channel
    h = conv2(dropout(silu(groupnorm2(h))))        # conv2 starts at zero: the block starts as skip(x)
    out = skip(x) + h                              # skip: 1x1 conv when Ci != Co, else identity

AttentionBlock::

    out = x + attention(groupnorm(x))              # the output projection starts at zero

Downsample is a 3x3 convolution with stride 2; Upsample is nearest-neighbour x2 followed by a 3x3 conv,
computed as four 2x2 convolutions of the small input (ops/upsample_conv.py; tested against the two ops).
GroupNorm runs as ops/groupnorm_fast.py: the function of ops/groupnorm.py in fewer passes over memory, tested
against it. A GroupNorm followed by SiLU (norm1 + act1, norm2 + act2, and the U-Net's last norm + act) runs as one
op, ops/groupnorm_silu.py (norm_act_forward below): its cache is the input, which the block keeps anyway, instead
of three activation-sized arrays, and on a GPU it is one CUDA kernel each way. With GELU the two ops stay apart.

Options (UNetConfig in unet.py; the defaults are the blocks above):

    activation="gelu"             every silu above becomes the exact GELU (ops/gelu.py)
    weight_standardisation=True   conv1 of every ResBlock standardises its filters (ops/ws_conv2d.py);
                                  conv1 is the conv a GroupNorm (norm2) follows, the pairing the method
                                  is made for. conv2 stays plain: it starts at zero so that the block
                                  starts as its skip, and a standardised zero filter has no scale
    downsample="space_to_depth"   pixel unshuffle (C -> 4C at half size) then a 1x1 conv 4C -> C
    upsample="transposed"         a 4x4 transposed convolution with stride 2 and padding 1

Every forward returns (out, cache); every backward takes (dout, cache, grads), fills ``grads`` and
returns the gradient of its input (ResBlock: also that of temb_act). The blocks check nothing
themselves: each op they call checks its own arguments.

Proof: tests/test_unet.py (test_whole_network_gradcheck: finite differences at sampled entries of
every parameter of hypothesis-drawn tiny U-Nets, so through every block; test_matches_torch_twin: the
PyTorch twin in tests/torch_twin.py; the same two with the options on:
test_whole_network_gradcheck_all_block_options, test_block_options_match_torch_twin);
``python -m tinyddpm.gradcheck --op unet``, rows 'unet (tiny, whole network)' and
'unet (tiny, all block options)'.
"""
from __future__ import annotations

from typing import NamedTuple

from ..ops.attention import attention_backward, attention_forward
from ..ops.conv2d import conv2d_backward, conv2d_forward
from ..ops.conv_transpose2d import conv_transpose2d_backward, conv_transpose2d_forward
from ..ops.dropout import dropout_backward, dropout_forward
from ..ops.gelu import gelu_backward, gelu_forward
from ..ops.groupnorm_fast import groupnorm_fast_backward, groupnorm_fast_forward
from ..ops.groupnorm_silu import groupnorm_silu_backward, groupnorm_silu_forward
from ..ops.linear import linear_backward, linear_forward
from ..ops.silu import silu_backward, silu_forward
from ..ops.skip import add_backward, add_forward
from ..ops.space_to_depth import space_to_depth_backward, space_to_depth_forward
from ..ops.upsample_conv import upsample_conv3x3_backward, upsample_conv3x3_forward
from ..ops.ws_conv2d import ws_conv2d_backward, ws_conv2d_forward

ACTIVATIONS = {"silu": (silu_forward, silu_backward), "gelu": (gelu_forward, gelu_backward)}
CONV_BACKWARDS = {"transposed": conv_transpose2d_backward, "nearest": upsample_conv3x3_backward}  # else conv2d's
DOWNSAMPLES = ("conv", "space_to_depth")
UPSAMPLES = ("nearest", "transposed")


class ActivationCache(NamedTuple):
    kind: str     # a key of ACTIVATIONS
    cache: object


def activation_forward(x, kind="silu"):
    """The network's nonlinearity, ``kind`` 'silu' or 'gelu'. Returns (y, cache)."""
    forward, _ = ACTIVATIONS[kind]
    y, cache = forward(x)
    return y, ActivationCache(kind, cache)


def activation_backward(dy, cache: ActivationCache):
    """Gradient dx of activation_forward, by the backward of the activation that ran."""
    _, backward = ACTIVATIONS[cache.kind]
    return backward(dy, cache.cache)


class NormActCache(NamedTuple):
    kind: str     # the activation
    norm: object  # GroupNormSiLUCache for "silu" (the fused op), else GroupNormFastCache
    act: object   # the activation's cache, or None for "silu"


def norm_act_forward(x, gamma, beta, groups, kind="silu"):
    """act(groupnorm(x)), ``kind`` 'silu' or 'gelu'. SiLU runs fused with the norm (ops/groupnorm_silu.py).

    Returns (y, cache)."""
    if kind == "silu":
        y, norm = groupnorm_silu_forward(x, gamma, beta, groups)
        return y, NormActCache(kind, norm, None)
    h, norm = groupnorm_fast_forward(x, gamma, beta, groups)
    y, act = activation_forward(h, kind)
    return y, NormActCache(kind, norm, act)


def norm_act_backward(dy, cache: NormActCache):
    """Gradients (dx, dgamma, dbeta) of norm_act_forward."""
    if cache.kind == "silu":
        return groupnorm_silu_backward(dy, cache.norm)
    dh = activation_backward(dy, cache.act)
    return groupnorm_fast_backward(dh, cache.norm)


class ResBlockCache(NamedTuple):
    name: str
    norm_act1: object  # NormActCache of norm1 then act1
    conv1: object
    temb: object
    add_temb: object
    norm_act2: object  # NormActCache of norm2 then act2
    drop: object
    conv2: object
    skip: object  # conv cache of the 1x1 skip, or None for the identity
    residual: object
    standardised: bool = False  # conv1 was weight-standardised (its cache a WSConv2dCache)


def resblock_forward(p, name, x, temb_act, *, groups, dropout=0.0, train=False, rng=None, activation="silu",
                     weight_standardisation=False):
    """ResBlock on x (N, Ci, H, W) with the activated time embedding temb_act (N, E).

    Returns (out (N, Co, H, W), cache). Dropout is applied only when ``train`` is true and ``dropout``
    > 0; then ``rng`` must be a Generator on x's backend. ``activation`` is 'silu' or 'gelu';
    ``weight_standardisation`` standardises conv1's filters (see the module docstring).
    """
    conv1_forward = ws_conv2d_forward if weight_standardisation else conv2d_forward
    h, norm_act1 = norm_act_forward(x, p[f"{name}.norm1.g"], p[f"{name}.norm1.b"], groups, activation)
    h, conv1 = conv1_forward(h, p[f"{name}.conv1.w"], p[f"{name}.conv1.b"])  # (N, Co, H, W)
    e, temb = linear_forward(temb_act, p[f"{name}.temb.w"], p[f"{name}.temb.b"])  # (N, Co)
    h, add_temb = add_forward(h, e[:, :, None, None])  # (N, Co, 1, 1) broadcast over H, W
    h, norm_act2 = norm_act_forward(h, p[f"{name}.norm2.g"], p[f"{name}.norm2.b"], groups, activation)
    h, drop = dropout_forward(h, dropout, rng, train=train)
    h, conv2 = conv2d_forward(h, p[f"{name}.conv2.w"], p[f"{name}.conv2.b"])
    if f"{name}.skip.w" in p:
        s, skip = conv2d_forward(x, p[f"{name}.skip.w"], p[f"{name}.skip.b"])  # 1x1: (N, Co, H, W)
    else:
        s, skip = x, None
    out, residual = add_forward(s, h)
    return out, ResBlockCache(name, norm_act1, conv1, temb, add_temb, norm_act2, drop, conv2, skip, residual,
                              weight_standardisation)


def resblock_backward(dout, cache: ResBlockCache, grads):
    """Gradients (dx, dtemb_act) of a ResBlock; parameter gradients go into ``grads``."""
    name = cache.name
    # out = s + h
    ds, dh = add_backward(dout, cache.residual)
    if cache.skip is not None:
        dx_skip, grads[f"{name}.skip.w"], grads[f"{name}.skip.b"] = conv2d_backward(ds, cache.skip)
    else:
        dx_skip = ds
    dh, grads[f"{name}.conv2.w"], grads[f"{name}.conv2.b"] = conv2d_backward(dh, cache.conv2)
    dh = dropout_backward(dh, cache.drop)
    dh, grads[f"{name}.norm2.g"], grads[f"{name}.norm2.b"] = norm_act_backward(dh, cache.norm_act2)
    # h = h + e[:, :, None, None]
    dh, de = add_backward(dh, cache.add_temb)
    dtemb_act, grads[f"{name}.temb.w"], grads[f"{name}.temb.b"] = linear_backward(de[:, :, 0, 0], cache.temb)
    conv1_backward = ws_conv2d_backward if cache.standardised else conv2d_backward
    dh, grads[f"{name}.conv1.w"], grads[f"{name}.conv1.b"] = conv1_backward(dh, cache.conv1)
    dx_main, grads[f"{name}.norm1.g"], grads[f"{name}.norm1.b"] = norm_act_backward(dh, cache.norm_act1)
    dx = dx_main + dx_skip  # x fed both the main path and the skip path
    return dx, dtemb_act


class AttentionBlockCache(NamedTuple):
    name: str
    norm: object
    attn: object
    residual: object


def attention_block_forward(p, name, x, *, groups, heads):
    """x + attention(groupnorm(x)) on x (N, C, H, W). Returns (out (N, C, H, W), cache)."""
    h, norm = groupnorm_fast_forward(x, p[f"{name}.norm.g"], p[f"{name}.norm.b"], groups)
    h, attn = attention_forward(h, p[f"{name}.qkv.w"], p[f"{name}.qkv.b"], p[f"{name}.out.w"], p[f"{name}.out.b"], heads)
    out, residual = add_forward(x, h)
    return out, AttentionBlockCache(name, norm, attn, residual)


def attention_block_backward(dout, cache: AttentionBlockCache, grads):
    """Gradient dx of an AttentionBlock; parameter gradients go into ``grads``."""
    name = cache.name
    dx_skip, dh = add_backward(dout, cache.residual)
    dh, dqkv_w, dqkv_b, dout_w, dout_b = attention_backward(dh, cache.attn)
    grads[f"{name}.qkv.w"], grads[f"{name}.qkv.b"] = dqkv_w, dqkv_b
    grads[f"{name}.out.w"], grads[f"{name}.out.b"] = dout_w, dout_b
    dx_main, grads[f"{name}.norm.g"], grads[f"{name}.norm.b"] = groupnorm_fast_backward(dh, cache.norm)
    return dx_main + dx_skip  # x fed both the attention path and the residual


class ConvCache(NamedTuple):
    name: str
    kind: str         # "conv" (plain or strided), "nearest", "space_to_depth" or "transposed"
    conv: object      # Conv2dCache; UpsampleConvCache for "nearest"; ConvTranspose2dCache for "transposed"
    resample: object  # the cache of the resampling before the conv ("space_to_depth"), else None


def downsample_forward(p, name, x, kind="conv"):
    """Halve H and W: (N, C, H, W) -> (N, C, ceil(H/2), ceil(W/2)). Returns (y, cache).

    kind "conv": a 3x3 convolution with stride 2. kind "space_to_depth": pixel unshuffle (even H and W)
    to (N, 4C, H/2, W/2), then a 1x1 convolution back to C channels (weight (C, 4C, 1, 1)).
    """
    if kind == "space_to_depth":
        h, resample = space_to_depth_forward(x)                        # (N, 4C, H/2, W/2)
        y, conv = conv2d_forward(h, p[f"{name}.w"], p[f"{name}.b"])    # 1x1: (N, C, H/2, W/2)
        return y, ConvCache(name, kind, conv, resample)
    y, conv = conv2d_forward(x, p[f"{name}.w"], p[f"{name}.b"], stride=2)
    return y, ConvCache(name, "conv", conv, None)


def upsample_forward(p, name, x, kind="nearest"):
    """Double H and W: (N, C, H, W) -> (N, C, 2H, 2W). Returns (y, cache).

    kind "nearest": nearest-neighbour x2, then a 3x3 convolution. kind "transposed": a 4x4 transposed
    convolution with stride 2 and padding 1 (weight (C_in, C_out, 4, 4), torch's layout).
    """
    if kind == "transposed":
        y, conv = conv_transpose2d_forward(x, p[f"{name}.w"], p[f"{name}.b"], stride=2, padding=1)
        return y, ConvCache(name, kind, conv, None)
    # upsample_nearest2x then a 3x3 conv, as four 2x2 convs of x (ops/upsample_conv.py): the same function
    y, conv = upsample_conv3x3_forward(x, p[f"{name}.w"], p[f"{name}.b"])
    return y, ConvCache(name, "nearest", conv, None)


def conv_forward(p, name, x):
    """A plain 'same' convolution with the weights under ``name`` (the U-Net's first and last conv).

    Returns (y, cache); the kernel size is read from the weight (3x3 in the U-Net).
    """
    y, conv = conv2d_forward(x, p[f"{name}.w"], p[f"{name}.b"])
    return y, ConvCache(name, "conv", conv, None)


def conv_block_backward(dy, cache: ConvCache, grads):
    """Gradient dx of downsample_forward, upsample_forward or conv_forward; dw and db go into ``grads``."""
    conv_backward = CONV_BACKWARDS.get(cache.kind, conv2d_backward)
    dx, grads[f"{cache.name}.w"], grads[f"{cache.name}.b"] = conv_backward(dy, cache.conv)
    if cache.kind == "space_to_depth":
        dx = space_to_depth_backward(dx, cache.resample)
    return dx
