"""Solutions to lesson 08 (the ResBlock and the U-Net): the three "Try this" exercises, worked and checked.

Try each exercise in lessons/08_resblock_and_unet.py yourself first; then run this file and compare.

Run it:   python lessons/solutions/08_resblock_and_unet.py          (--fast: fewer finite-difference entries)

Figure (in lessons/output/08_resblock_and_unet/, with a solution_ prefix):
  solution_cost_by_level.png   parameters and multiply-adds per part of the U-Net, cpu and gpu presets
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the lessons folder, for _common

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tinyddpm.nn import blocks  # noqa: E402
from _common import FAST, banner, check, finish, output_dir, relative_error, saved, section  # noqa: E402
from tinyddpm.training.config import PRESETS  # noqa: E402
from tinyddpm.gradcheck import BLOCK_STEP, BLOCK_TOLERANCE, check_gradients  # noqa: E402
from tinyddpm.ops import (conv2d_backward, conv2d_forward, dropout_backward, dropout_forward,  # noqa: E402
                          groupnorm_backward, groupnorm_forward, linear_backward, linear_forward, silu_backward,
                          silu_forward)
from tinyddpm.nn.unet import count_params, init_params, plan, unet_forward  # noqa: E402

started = time.perf_counter()
out = output_dir(__file__)
banner("Solutions to lesson 08: the ResBlock and the U-Net")


def part_of(param_name):
    """'down.1.res.0.conv1.w' -> 'down.1'; 'mid.attn.qkv.w' -> 'mid'; 'conv_out.w' -> 'out' (the lesson's grouping)."""
    first = param_name.split(".")[0]
    if first in ("down", "up"):
        return ".".join(param_name.split(".")[:2])
    return {"conv_out": "out"}.get(first, first)


def params_by_part(params):
    parts = {}
    for k, v in params.items():
        parts[part_of(k)] = parts.get(part_of(k), 0) + int(v.size)
    return parts


# ---------------------------------------------------------------------------------------------------
section('Exercise 1 (run): PRESET = "gpu"')
# The gpu preset has 64 base channels (4x the cpu preset's 16) and two ResBlocks per level (the up path then has
# three per level: blocks + 1). A 3x3 conv has 9 c_in c_out weights, so 4x the channels is ~16x the parameters
# per conv, and twice the blocks roughly doubles that again: ~23x in total.
# Where they sit: in both presets the largest part is up.2, the up path's lowest level. It runs at the widest
# channels (base * 2 = 32 or 128), has one ResBlock more than its down twin, and each of its ResBlocks reads the
# concatenation of its input and a skip (c_in = 2c for its 3x3 conv1, plus a 1x1 skip conv). The 28 x 28 level
# (down.0, up.0) holds little: few channels. The share of up.2 hardly changes between presets (~29%): the
# architecture's proportions are set by channel_mults, not by the width.
table = {}
for name in ("cpu", "gpu"):
    cfg = PRESETS[name].unet
    params = init_params(cfg, seed=0)
    parts, total = params_by_part(params), count_params(params)
    table[name] = (parts, total)
    top = sorted(parts.items(), key=lambda kv: -kv[1])[:3]
    print(f"  {name}: {total:,} parameters; largest parts " + ", ".join(f"{p} {n:,} ({n / total:.1%})" for p, n in top))
cpu_parts, cpu_total = table["cpu"]
gpu_parts, gpu_total = table["gpu"]
largest = {name: max(parts, key=parts.get) for name, (parts, _) in table.items()}
check("prediction: in both presets the up path's lowest level, up.2, holds the most parameters",
      largest["cpu"] == largest["gpu"] == "up.2",
      f"cpu: {largest['cpu']} ({cpu_parts['up.2'] / cpu_total:.1%}), gpu: {largest['gpu']} ({gpu_parts['up.2'] / gpu_total:.1%})")
check("prediction: the gpu preset has about 16 x 2 = 20-25 times the cpu preset's parameters",
      20 < gpu_total / cpu_total < 25, f"{gpu_total:,} / {cpu_total:,} = {gpu_total / cpu_total:.1f}")

# ---------------------------------------------------------------------------------------------------
section("Exercise 2 (modify): dx = dx_main instead of dx = dx_main + dx_skip")
# Prediction. x feeds two paths, groupnorm1 -> ... -> conv2 and the 1x1 skip conv, so its true gradient is the sum.
# Dropping dx_skip leaves every parameter gradient and dtemb_act right (none of them flows through x) and makes dx
# wrong by exactly dx_skip. Which checks fail: the lesson's comparison "ResBlock backward written op by op ==
# tinyddpm" (it prints max |dx_skip| / max(|dx_main| + |dx|), about the skip's share of dx: 0.1-1, not 1e-12). The lesson's
# finite-difference check does not notice: it checks tinyddpm's resblock_backward, not the one written by hand.
# Run the finite differences on the hand-written backward instead and they catch it, and point at x alone, with
# an entry-wise error of |dx_skip| / (|dx_main| + |dx|), the largest over the entries checked.
rng = np.random.default_rng(0)
N, Ci, Co, S, E, G, DROPOUT = 2, 4, 8, 6, 16, 2, 0.3                # the lesson's sizes
name = "demo"
p = {f"{name}.norm1.g": 1 + 0.2 * rng.standard_normal(Ci), f"{name}.norm1.b": 0.2 * rng.standard_normal(Ci),
     f"{name}.conv1.w": rng.standard_normal((Co, Ci, 3, 3)) / np.sqrt(9 * Ci), f"{name}.conv1.b": 0.1 * rng.standard_normal(Co),
     f"{name}.temb.w": rng.standard_normal((Co, E)) / np.sqrt(E), f"{name}.temb.b": 0.1 * rng.standard_normal(Co),
     f"{name}.norm2.g": 1 + 0.2 * rng.standard_normal(Co), f"{name}.norm2.b": 0.2 * rng.standard_normal(Co),
     f"{name}.conv2.w": rng.standard_normal((Co, Co, 3, 3)) / np.sqrt(9 * Co), f"{name}.conv2.b": 0.1 * rng.standard_normal(Co),
     f"{name}.skip.w": rng.standard_normal((Co, Ci, 1, 1)) / np.sqrt(Ci), f"{name}.skip.b": 0.1 * rng.standard_normal(Co)}
keys = list(p)
x = rng.standard_normal((N, Ci, S, S))
temb_act = rng.standard_normal((N, E))


def block_forward(x, temb_act, *values):
    """The lesson's ResBlock, op by op, in the (y, cache) convention; the same dropout mask on every call."""
    q = dict(zip(keys, values))
    h, c_norm1 = groupnorm_forward(x, q["demo.norm1.g"], q["demo.norm1.b"], G)
    h, c_act1 = silu_forward(h)
    h, c_conv1 = conv2d_forward(h, q["demo.conv1.w"], q["demo.conv1.b"])
    e, c_temb = linear_forward(temb_act, q["demo.temb.w"], q["demo.temb.b"])
    h = h + e[:, :, None, None]
    h, c_norm2 = groupnorm_forward(h, q["demo.norm2.g"], q["demo.norm2.b"], G)
    h, c_act2 = silu_forward(h)
    h, c_drop = dropout_forward(h, DROPOUT, np.random.default_rng(7), train=True)
    h, c_conv2 = conv2d_forward(h, q["demo.conv2.w"], q["demo.conv2.b"])
    s, c_skip = conv2d_forward(x, q["demo.skip.w"], q["demo.skip.b"])
    return s + h, (c_norm1, c_act1, c_conv1, c_temb, c_norm2, c_act2, c_drop, c_conv2, c_skip)


def block_backward(dout, caches, with_skip=True):
    c_norm1, c_act1, c_conv1, c_temb, c_norm2, c_act2, c_drop, c_conv2, c_skip = caches
    g = {}
    dx_skip, g["demo.skip.w"], g["demo.skip.b"] = conv2d_backward(dout, c_skip)
    dh, g["demo.conv2.w"], g["demo.conv2.b"] = conv2d_backward(dout, c_conv2)
    dh = silu_backward(dropout_backward(dh, c_drop), c_act2)
    dh, g["demo.norm2.g"], g["demo.norm2.b"] = groupnorm_backward(dh, c_norm2)
    dtemb, g["demo.temb.w"], g["demo.temb.b"] = linear_backward(dh.sum(axis=(2, 3)), c_temb)
    dh, g["demo.conv1.w"], g["demo.conv1.b"] = conv2d_backward(dh, c_conv1)
    dx_main, g["demo.norm1.g"], g["demo.norm1.b"] = groupnorm_backward(silu_backward(dh, c_act1), c_norm1)
    dx = dx_main + dx_skip if with_skip else dx_main                 # the exercise's change: dx = dx_main
    return (dx, dtemb, *(g[k] for k in keys)), dx_main, dx_skip


y, caches = block_forward(x, temb_act, *p.values())
dout = rng.standard_normal(y.shape)
(dx, *_), dx_main, dx_skip = block_backward(dout, caches)
(dx_wrong, *_), _, _ = block_backward(dout, caches, with_skip=False)
grads_lib = {}
dx_lib, _ = blocks.resblock_backward(dout, blocks.resblock_forward(p, name, x, temb_act, groups=G, dropout=DROPOUT,
                                                                   train=True, rng=np.random.default_rng(7))[1],
                                     grads_lib)
err_right, err_wrong = relative_error(dx, dx_lib), relative_error(dx_wrong, dx_lib)
share = float(np.linalg.norm(dx_skip) / np.linalg.norm(dx))
print(f"  the skip path carries {share:.0%} of the norm of dx (the lesson prints this number)")
# relative_error is max |a - b| / max(|a| + |b|): here max |dx_skip| / max(|dx_main| + |dx|), about the skip's share.
predicted_cmp = float(np.abs(dx_skip).max() / (np.abs(dx_main) + np.abs(dx)).max())
check("prediction: the lesson's comparison with tinyddpm fails, printing max |dx_skip| / max(|dx_main| + |dx|)",
      err_right < 1e-12 and abs(err_wrong / predicted_cmp - 1) < 1e-9 and err_wrong > 0.05,
      f"{err_right:.1e} with the sum, {err_wrong:.3f} without dx_skip (predicted {predicted_cmp:.3f})")
arrays = {"x": x, "temb_act": temb_act, **p}
entries = 4 if FAST else 16                                          # the lesson's BLOCK_ENTRIES
errors = check_gradients(block_forward, lambda d, c: block_backward(d, c)[0], arrays, h=BLOCK_STEP, max_entries=entries)
check(f"finite differences prove the hand-written backward ({len(errors)} tensors, {entries} entries each, < 1e-5)",
      max(errors.values()) < BLOCK_TOLERANCE, f"worst {max(errors, key=errors.get)}: {max(errors.values()):.1e}")
(_, *params_right), _, _ = block_backward(dout, caches)
(_, *params_wrong), _, _ = block_backward(dout, caches, with_skip=False)
check("without dx_skip, dtemb_act and every parameter gradient are unchanged, bit for bit",
      all(np.array_equal(a, b) for a, b in zip(params_right, params_wrong)), f"{len(params_right)} tensors")
# Now the finite differences of x alone, at every one of its entries, against the broken backward. The checker's
# error per entry is |a - n| / max(1e-8, |a| + |n|, 1e-4 max|a|) with a = dx_main and n = the true dx (the finite
# differences agree with it to ~1e-9), so the prediction is that formula's maximum with a - n = -dx_skip.
errors_x = check_gradients(lambda x_: block_forward(x_, temb_act, *p.values()),
                           lambda d, c: block_backward(d, c, with_skip=False)[0][0], {"x": x.copy()}, h=BLOCK_STEP,
                           max_entries=x.size, dy=dout)
floor = np.maximum(np.maximum(1e-8, 1e-4 * np.abs(dx_main).max()), np.abs(dx_main) + np.abs(dx))
predicted = float(np.max(np.abs(dx_skip) / floor))
# By the triangle inequality |dx_skip| <= |dx_main| + |dx|, so each entry's error is at most 1, and it is 1 where
# dx_main ~ 0: the checker reports its worst entry, so expect ~1 - the "O(1), a missing term" signature.
check("finite differences catch the missing dx_skip, with the predicted error max |dx_skip| / (|dx_main| + |dx|)",
      errors_x["x"] > 1e-2 and abs(errors_x["x"] / predicted - 1) < 1e-4,
      f"measured {errors_x['x']:.4f}, predicted {predicted:.4f} over all {x.size} entries of x (1 where dx_main ~ 0)")

# ---------------------------------------------------------------------------------------------------
section("Exercise 3 (create): multiply-adds of every convolution, level by level")
# For one 28 x 28 image. A k x k conv from Ci to Co channels with an Ho x Wo output costs k^2 Ci Co Ho Wo
# multiply-adds (one per weight per output pixel). Per layer of plan(cfg) (Layer.size is the size of its input):
#   res    conv1 9 Ci Co S^2 + conv2 9 Co Co S^2 (+ skip, 1x1: Ci Co S^2, when Ci != Co)
#   attn   the q, k, v and output projections are 1x1 convs, 4 C^2 S^2; besides them the scores Q^T K and the mix
#          V P^T are 2 C L^2 with L = S^2 (matrix products, counted apart)
#   down   9 C^2 (S/2)^2 (stride 2: a quarter of the outputs)        up   9 C^2 (2S)^2 (the conv runs after the x2)
#   conv_in 9 * 1 * base * 28^2, conv_out 9 * base * 1 * 28^2.
# A level here is a resolution, and each conv belongs to the resolution of its output, where its work is done
# (so the stride-2 conv from 28 to 14 counts at 14 x 14, the upsampling conv from 14 to 28 at 28 x 28); the
# parameters go with their conv. The time MLP and the label table (no convolutions) are left out.
# Prediction: compute grows with C^2 S^2 and parameters with C^2 alone. Going down a level quarters S^2 and (up to
# the mults' cap) doubles C: per conv about the same compute at every level, but the 28 x 28 level has the
# input and output convs and the upsampling conv on top, so it costs the most; the parameters, C^2, pile up at
# the lowest level, 7 x 7. So no: the level that costs the most compute is not the one that holds the parameters.


def conv_costs(cfg, params):
    """({output size: conv multiply-adds}, {size: attention-product multiply-adds}, {size: parameters}), from plan."""
    macs, attn, prm = {}, {}, {}
    size0, base = cfg.image_size, cfg.base_channels

    def add(table, size, n):
        table[size] = table.get(size, 0) + n

    add(macs, size0, 9 * cfg.image_channels * base * size0 ** 2 + 9 * base * cfg.image_channels * size0 ** 2)
    add(prm, size0, sum(v.size for k, v in params.items() if k.split(".")[0] in ("conv_in", "conv_out", "out")))
    for layer in sum(plan(cfg), []):
        ci, co, s = layer.c_in, layer.c_out, layer.size
        if layer.kind == "res":
            s_out, n = s, 9 * ci * co * s * s + 9 * co * co * s * s + (ci * co * s * s if ci != co else 0)
        elif layer.kind == "attn":
            s_out, n = s, 4 * ci * ci * s * s
            add(attn, s, 2 * ci * (s * s) ** 2)
        elif layer.kind == "down":
            s_out = (s + 1) // 2
            n = 9 * ci * co * s_out ** 2
        else:
            s_out = 2 * s
            n = 9 * ci * co * s_out ** 2
        add(macs, s_out, n)
        add(prm, s_out, sum(v.size for k, v in params.items() if k.startswith(layer.name + ".")))
    return macs, attn, prm


def measured_macs(cfg, params):
    """Run the network on one image; add up, by output size, what its convolutions and attentions computed.

    The up step (nearest x2, then a 3x3 conv) runs as one op, ops/upsample_conv.py, which gets the same output
    from 16 instead of 36 multiply-adds per weight row (four 2x2 convs of the small input): it is counted here
    as the convolution it computes, k^2 Ci Co per output pixel, the count plan(cfg) predicts.
    """
    conv, attn = {}, {}
    real_conv, real_attn, real_up = blocks.conv2d_forward, blocks.attention_forward, blocks.upsample_conv3x3_forward

    def counting_conv(x, w, *args, **kwargs):
        y, cache = real_conv(x, w, *args, **kwargs)
        conv[y.shape[2]] = conv.get(y.shape[2], 0) + int(np.prod(w.shape)) * y.shape[0] * y.shape[2] * y.shape[3]
        return y, cache

    def counting_up(x, w, *args, **kwargs):
        y, cache = real_up(x, w, *args, **kwargs)
        conv[y.shape[2]] = conv.get(y.shape[2], 0) + int(np.prod(w.shape)) * y.shape[0] * y.shape[2] * y.shape[3]
        return y, cache

    def counting_attention(x, w_qkv, b_qkv, w_out, b_out, heads):
        n, c, h, w = x.shape
        conv[h] = conv.get(h, 0) + n * (w_qkv.shape[0] * c + w_out.shape[0] * c) * h * w    # the 1x1 projections
        attn[h] = attn.get(h, 0) + n * 2 * c * (h * w) ** 2                                  # Q^T K and V P^T
        return real_attn(x, w_qkv, b_qkv, w_out, b_out, heads)

    blocks.conv2d_forward, blocks.attention_forward, blocks.upsample_conv3x3_forward = (counting_conv,
                                                                                        counting_attention, counting_up)
    try:
        x_in = np.zeros((1, cfg.image_channels, cfg.image_size, cfg.image_size), dtype=np.float32)
        unet_forward(params, cfg, x_in, np.array([500]), np.array([3]) if cfg.num_classes else None)
    finally:
        blocks.conv2d_forward, blocks.attention_forward, blocks.upsample_conv3x3_forward = real_conv, real_attn, real_up
    return conv, attn


fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), layout="constrained")
for ax, pname in zip(axes, ("cpu", "gpu")):
    cfg = PRESETS[pname].unet
    params = init_params(cfg, seed=0)
    macs, attn, prm = conv_costs(cfg, params)
    real_conv, real_attn = measured_macs(cfg, params)
    check(f"{pname}: the counts from plan(cfg) == what unet_forward's convolutions computed, level by level, exactly",
          macs == real_conv and attn == real_attn,
          f"convolutions {sum(macs.values()):,} (measured {sum(real_conv.values()):,}); attention products "
          f"{sum(attn.values()):,} (measured {sum(real_attn.values()):,})")
    sizes = sorted(macs, reverse=True)
    total_m, total_p = sum(macs.values()), sum(prm.values())
    print(f"  {pname}: {'level':>7} {'conv multiply-adds':>19} {'share':>6} {'parameters':>11} {'share':>6}")
    for s_ in sizes:
        print(f"  {'':{len(pname) + 1}} {s_:>4}^2 {macs[s_]:>19,} {macs[s_] / total_m:>6.1%} {prm[s_]:>11,} "
              f"{prm[s_] / total_p:>6.1%}")
    most_compute, most_params = max(macs, key=macs.get), max(prm, key=prm.get)
    check(f"{pname}: prediction: 28 x 28 costs the most compute, the lowest level (7 x 7) holds the most parameters",
          most_compute == cfg.image_size and most_params == min(sizes),
          f"compute: {most_compute}x{most_compute} ({macs[most_compute] / total_m:.0%}), parameters: "
          f"{most_params}x{most_params} ({prm[most_params] / total_p:.0%})")
    x_pos = np.arange(len(sizes))
    ax.bar(x_pos - 0.2, [macs[s_] / total_m for s_ in sizes], 0.4, label="share of conv multiply-adds")
    ax.bar(x_pos + 0.2, [prm[s_] / total_p for s_ in sizes], 0.4, label="share of conv parameters")
    ax.set_xticks(x_pos, [f"{s_} x {s_}" for s_ in sizes])
    ax.set(title=f"{pname} preset: {total_m / 1e6:.0f}M conv multiply-adds per image", ylabel="share")
    ax.legend(fontsize=8)
path = out / "solution_cost_by_level.png"
fig.savefig(path, dpi=90)
plt.close(fig)
saved(path)

finish(started)
