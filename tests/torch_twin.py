"""A PyTorch twin of tinyddpm's U-Net: the same plan, the same parameter dict, torch.nn.functional ops.

Used as an oracle (tests/test_unet.py: outputs and every gradient must match) and as the peer in
benchmarks/bench_train_step.py. Dropout is left out (the twin runs with dropout off), so compare with
tinyddpm in eval mode or with dropout=0. The config's block options are followed as tinyddpm follows them
(activation, weight_standardisation of conv1, downsample, upsample); their defaults give the plain network.
"""
import math

import torch
import torch.nn.functional as F

from tinyddpm.nn.unet import UNetConfig, plan


def params_to_torch(params, dtype=torch.float64, requires_grad=True, device="cpu"):
    from tinyddpm.backend import to_numpy

    return {k: torch.tensor(to_numpy(v), dtype=dtype, device=device, requires_grad=requires_grad)
            for k, v in params.items()}


def timestep_embedding(t, dim, dtype):
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64, device=t.device) / half)
    args = t.to(torch.float64)[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb.to(dtype)


def _conv(p, name, x, stride=1):
    w = p[f"{name}.w"]
    return F.conv2d(x, w, p[f"{name}.b"], stride=stride, padding=w.shape[-1] // 2)


def _ws_conv(p, name, x, eps=1e-5):
    """Weight standardisation (Qiao et al.): each filter to mean 0, variance 1 over (C, k, k), then conv2d."""
    w = p[f"{name}.w"]
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    var = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    return F.conv2d(x, (w - mean) / torch.sqrt(var + eps), p[f"{name}.b"], padding=w.shape[-1] // 2)


def _norm(p, name, x, groups):
    return F.group_norm(x, groups, p[f"{name}.g"], p[f"{name}.b"], eps=1e-5)


def _act(cfg, x):
    return F.gelu(x, approximate="none") if cfg.activation == "gelu" else F.silu(x)


def _resblock(p, name, x, temb_act, groups, cfg=UNetConfig()):
    conv1 = _ws_conv if cfg.weight_standardisation else _conv
    h = conv1(p, f"{name}.conv1", _act(cfg, _norm(p, f"{name}.norm1", x, groups)))
    h = h + F.linear(temb_act, p[f"{name}.temb.w"], p[f"{name}.temb.b"])[:, :, None, None]
    h = _conv(p, f"{name}.conv2", _act(cfg, _norm(p, f"{name}.norm2", h, groups)))
    skip = _conv(p, f"{name}.skip", x) if f"{name}.skip.w" in p else x
    return skip + h


def _attention(p, name, x, groups, heads):
    N, C, H, W = x.shape
    h = _norm(p, f"{name}.norm", x, groups)
    qkv = F.conv2d(h, p[f"{name}.qkv.w"][:, :, None, None], p[f"{name}.qkv.b"])      # (N, 3C, H, W)
    q, k, v = qkv.reshape(N, 3, heads, C // heads, H * W).permute(1, 0, 2, 4, 3)       # (N, heads, L, d) each
    o = F.scaled_dot_product_attention(q, k, v)                                        # (N, heads, L, d)
    o = o.permute(0, 1, 3, 2).reshape(N, C, H, W)
    return x + F.conv2d(o, p[f"{name}.out.w"][:, :, None, None], p[f"{name}.out.b"])


def torch_unet_forward(p, cfg: UNetConfig, x, t, labels=None):
    """The U-Net forward in torch, parameter for parameter the same as tinyddpm.nn.unet.unet_forward."""
    e = timestep_embedding(t, cfg.base_channels, x.dtype)
    e = F.linear(_act(cfg, F.linear(e, p["time.lin1.w"], p["time.lin1.b"])), p["time.lin2.w"], p["time.lin2.b"])
    if cfg.num_classes is not None:
        if labels is None:
            labels = torch.full((x.shape[0],), cfg.null_label, dtype=torch.long, device=x.device)
        e = e + F.embedding(labels, p["label.table"])
    temb_act = _act(cfg, e)
    h = _conv(p, "conv_in", x)
    skips = [h]
    down, middle, up = plan(cfg)
    for layer in down + middle + up:
        if layer.pop_skip:
            h = torch.cat([h, skips.pop()], dim=1)
        if layer.kind == "res":
            h = _resblock(p, layer.name, h, temb_act, cfg.groups, cfg)
        elif layer.kind == "attn":
            h = _attention(p, layer.name, h, cfg.groups, cfg.heads)
        elif layer.kind == "down" and cfg.downsample == "space_to_depth":
            h = _conv(p, layer.name, F.pixel_unshuffle(h, 2))  # then a 1x1 conv
        elif layer.kind == "down":
            h = _conv(p, layer.name, h, stride=2)
        elif cfg.upsample == "transposed":
            h = F.conv_transpose2d(h, p[f"{layer.name}.w"], p[f"{layer.name}.b"], stride=2, padding=1)
        else:
            h = _conv(p, layer.name, F.interpolate(h, scale_factor=2, mode="nearest"))
        if layer.push_skip:
            skips.append(h)
    h = _act(cfg, _norm(p, "out.norm", h, cfg.groups))
    return _conv(p, "conv_out", h)
