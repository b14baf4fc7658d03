"""Lesson 08: the ResBlock and the U-Net.

What you will learn
  - How the DDPM ResBlock is put together from the ops of the earlier lessons:
        GroupNorm -> SiLU -> conv3x3, plus the time embedding (one shift per channel),
        GroupNorm -> SiLU -> dropout -> conv3x3, plus a skip path (a 1x1 conv when the channels change).
  - Why a freshly created block is the identity, and why its backward adds two gradients for x.
  - How the class label gets in: row y of a learned table, added to the time embedding; the extra "null" row
    that classifier-free guidance needs; and the backward, a scatter-add (with the slip that loses repeated labels).
  - How tinyddpm.nn.unet.plan lays out the U-Net: levels going down that keep skips, a middle, levels
    going up that concatenate the skips back, and the shape of every tensor on the way.
  - Where the parameters sit, and that the hand-written backward of the whole network is right.
  - Why a U-Net: the receptive field of every layer (each 3x3 conv adds 2 x the stride product so far, each
    downsampling doubles it), checked by tracing the convs; and what the skips carry, by zeroing them.

Run it:
    python lessons/08_resblock_and_unet.py          # ~15 s on one CPU core (+ once: the lessons' network, if none)
    python lessons/08_resblock_and_unet.py --fast   # tiny sizes, the same code paths (what the tests run)

Figures, written to lessons/output/08_resblock_and_unet/:
    unet_diagram.png   the cpu preset's U-Net: a box per layer at the height of its resolution, skips as brackets
    feature_maps.png   one noisy digit going through a trained network: a few channels at every level
    why_unet.png       the receptive field per layer against the 28-pixel image; x0_hat with and without the skips

Try this
  1. run:    set PRESET = "gpu" at the top and rerun. The table gets two ResBlocks per level and 64 base
             channels; find which part now holds most of the parameters, and compare with the cpu preset.
  2. modify: in section 1's backward, write `dx = dx_main` instead of `dx = dx_main + dx_skip`. Predict which
             checks fail and roughly how large the error becomes (how much of dx flows through the skip?).
             (The finite-difference check tests tinyddpm's block, not yours: only the comparison of your
             op-by-op backward with tinyddpm's can notice.)
  3. create: write a function that counts the multiply-adds of every convolution in plan(cfg) for one 28x28
             image (a 3x3 conv from Ci to Co channels at output size S costs 9 Ci Co S^2; count each conv,
             the stride-2 and upsampling ones too, at its output resolution). Which level costs the most
             compute, and is it the level that holds the most parameters?

Next: lessons/09_elbo.py - what the network is trained to minimise, from the variational bound.
"""
# %%
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from _common import (FAST, banner, check, finish, mnist_digits, output_dir, relative_error, saved,  # noqa: E402
                     section, try_this, trained_model)
from tinyddpm.nn.blocks import (attention_block_forward, conv_forward, downsample_forward, resblock_backward,
    resblock_forward, upsample_forward)
from tinyddpm.diffusion import q_sample, x0_from_eps  # noqa: E402
from tinyddpm.gradcheck import BLOCK_STEP, BLOCK_TOLERANCE, check_gradients, unet_case  # noqa: E402
from tinyddpm.ops import (conv2d_backward, conv2d_forward, dropout_backward, dropout_forward,  # noqa: E402
                          groupnorm_backward, groupnorm_forward, label_embedding_backward, label_embedding_forward,
                          linear_backward, linear_forward, silu_backward, silu_forward, timestep_embedding_forward)
from tinyddpm.training.config import PRESETS  # noqa: E402
from tinyddpm.nn.unet import UNetConfig, count_params, init_params, plan, unet_backward, unet_forward  # noqa: E402

started = time.perf_counter()
out = output_dir(__file__)
banner("Lesson 08: the ResBlock and the U-Net")

PRESET = "cpu"           # the U-Net whose shapes and parameters the lesson tabulates (try "gpu")
FEATURE_T = 100          # the noise level of the digit whose feature maps we draw
BLOCK_ENTRIES = 4 if FAST else 16   # finite-difference entries per tensor in the ResBlock check
UNET_ENTRIES = 1 if FAST else 3     # ... and in the whole-network check

# %%
# ---------------------------------------------------------------------------------------------------
section("1. The ResBlock, op by op")
# Legend: N batch, Ci / Co channels in / out, H = W the spatial size, E the time-embedding width, G groups.
#
# The block of Ho et al. (2020), for an input x (N, Ci, H, W) and the activated time embedding
# temb_act = silu(temb) (N, E) that the network computes once from t:
#
#     h   = conv1( silu( groupnorm1(x) ) )               (N, Co, H, W)   3x3 conv, Ci -> Co
#     h   = h + (W_t temb_act + b_t)[:, :, None, None]   the same shift over every pixel of a channel
#     h   = conv2( dropout( silu( groupnorm2(h) ) ) )    (N, Co, H, W)   3x3 conv, Co -> Co
#     out = skip(x) + h                                  skip = 1x1 conv if Ci != Co, else the identity
#
# The time embedding enters as a per-channel bias: every channel learns how much to shift itself at each
# noise level. The skip path lets the block learn a *correction* to x instead of a whole new function.
#
# Parameters live in one flat dict; the block reads the keys under its name, like "down.0.res.0.conv1.w".
rng = np.random.default_rng(0)
N, Ci, Co, S, E, G, DROPOUT = 2, 4, 8, 6, 16, 2, 0.3
name = "demo"


def block_params(c_in, c_out, rng):
    """Random float64 parameters of one ResBlock under the prefix `name`, named as tinyddpm.nn.blocks reads them."""
    p = {f"{name}.norm1.g": 1 + 0.2 * rng.standard_normal(c_in), f"{name}.norm1.b": 0.2 * rng.standard_normal(c_in),
         f"{name}.conv1.w": rng.standard_normal((c_out, c_in, 3, 3)) / np.sqrt(9 * c_in),
         f"{name}.conv1.b": 0.1 * rng.standard_normal(c_out),
         f"{name}.temb.w": rng.standard_normal((c_out, E)) / np.sqrt(E),
         f"{name}.temb.b": 0.1 * rng.standard_normal(c_out),
         f"{name}.norm2.g": 1 + 0.2 * rng.standard_normal(c_out), f"{name}.norm2.b": 0.2 * rng.standard_normal(c_out),
         f"{name}.conv2.w": rng.standard_normal((c_out, c_out, 3, 3)) / np.sqrt(9 * c_out),
         f"{name}.conv2.b": 0.1 * rng.standard_normal(c_out)}
    if c_in != c_out:
        p[f"{name}.skip.w"] = rng.standard_normal((c_out, c_in, 1, 1)) / np.sqrt(c_in)
        p[f"{name}.skip.b"] = 0.1 * rng.standard_normal(c_out)
    return p


p = block_params(Ci, Co, rng)
x = rng.standard_normal((N, Ci, S, S))
temb_act = rng.standard_normal((N, E))

# The forward, one op per line, keeping every op's cache for the backward. Dropout draws its mask from a
# generator; a fresh generator with the same seed gives the same mask, so tinyddpm's block can be compared.
h, c_norm1 = groupnorm_forward(x, p["demo.norm1.g"], p["demo.norm1.b"], G)      # (N, Ci, H, W)
h, c_act1 = silu_forward(h)
h, c_conv1 = conv2d_forward(h, p["demo.conv1.w"], p["demo.conv1.b"])          # (N, Co, H, W)
e, c_temb = linear_forward(temb_act, p["demo.temb.w"], p["demo.temb.b"])      # (N, Co)
h = h + e[:, :, None, None]                                                   # (N, Co, 1, 1) broadcast over H, W
h, c_norm2 = groupnorm_forward(h, p["demo.norm2.g"], p["demo.norm2.b"], G)
h, c_act2 = silu_forward(h)
h, c_drop = dropout_forward(h, DROPOUT, np.random.default_rng(7), train=True)
h, c_conv2 = conv2d_forward(h, p["demo.conv2.w"], p["demo.conv2.b"])
s, c_skip = conv2d_forward(x, p["demo.skip.w"], p["demo.skip.b"])             # 1x1 conv: Ci -> Co
y_mine = s + h                                                                # (N, Co, H, W)

y_lib, cache = resblock_forward(p, name, x, temb_act, groups=G, dropout=DROPOUT, train=True,
                                rng=np.random.default_rng(7))
err = relative_error(y_mine, y_lib)
check("ResBlock forward written op by op == tinyddpm.nn.blocks.resblock_forward", err < 1e-12,
      f"output {tuple(y_mine.shape)}, max relative error {err:.1e} (the same ops in the same order)")

# The backward walks the forward in reverse. Every line undoes one forward line; the two places where one
# value fed two consumers get their gradients *added*:
#   - out = skip(x) + h: the upstream gradient goes unchanged to both terms;
#   - x went into groupnorm1 *and* into the skip, so dx = dx_main + dx_skip;
#   - e was broadcast over the H x W pixels, so its gradient sums dh over them: de = sum_{h,w} dh.
dout = rng.standard_normal(y_mine.shape)
g = {}
dx_skip, g["demo.skip.w"], g["demo.skip.b"] = conv2d_backward(dout, c_skip)          # out = s + h: ds = dout
dh, g["demo.conv2.w"], g["demo.conv2.b"] = conv2d_backward(dout, c_conv2)            # ... and dh = dout
dh = dropout_backward(dh, c_drop)
dh = silu_backward(dh, c_act2)
dh, g["demo.norm2.g"], g["demo.norm2.b"] = groupnorm_backward(dh, c_norm2)
de = dh.sum(axis=(2, 3))                                                             # (N, Co): undo the broadcast
dtemb_mine, g["demo.temb.w"], g["demo.temb.b"] = linear_backward(de, c_temb)
dh, g["demo.conv1.w"], g["demo.conv1.b"] = conv2d_backward(dh, c_conv1)              # h + e: dh passes through
dh = silu_backward(dh, c_act1)
dx_main, g["demo.norm1.g"], g["demo.norm1.b"] = groupnorm_backward(dh, c_norm1)
dx = dx_main + dx_skip                                                               # x fed both paths

grads_lib = {}
dx_lib, dtemb_lib = resblock_backward(dout, cache, grads_lib)
err = max([relative_error(dx, dx_lib), relative_error(dtemb_mine, dtemb_lib)]
          + [relative_error(g[k], grads_lib[k]) for k in p])
check("ResBlock backward written op by op == tinyddpm.nn.blocks.resblock_backward", err < 1e-12,
      f"dx, dtemb_act and {len(p)} parameter gradients, max relative error {err:.1e}")
share = float(np.linalg.norm(dx_skip) / np.linalg.norm(dx))
print(f"  the skip path carries {share:.0%} of the norm of dx: gradients reach x even if the main path is weak")

# The finite-difference check: perturb one entry of x, temb_act or a parameter by +-h, +-2h, and compare the
# change of sum(out * dout) with what the backward says. A block chains many ops, so the limit is 1e-5.
keys = list(p)


def block_fn(x, temb_act, *values):
    return resblock_forward(dict(zip(keys, values)), name, x, temb_act, groups=G, dropout=DROPOUT, train=True,
                            rng=np.random.default_rng(7))          # the same dropout mask on every call


def block_grad(dy, cache):
    grads = {}
    dx, dtemb = resblock_backward(dy, cache, grads)
    return (dx, dtemb, *(grads[k] for k in keys))


errors = check_gradients(block_fn, block_grad, {"x": x, "temb_act": temb_act, **p}, h=BLOCK_STEP,
                         max_entries=BLOCK_ENTRIES)
worst = max(errors, key=errors.get)
check(f"gradient check of the ResBlock ({len(errors)} tensors, {BLOCK_ENTRIES} entries each)",
      errors[worst] < BLOCK_TOLERANCE, f"worst {worst}: {errors[worst]:.1e} (limit {BLOCK_TOLERANCE:.0e})")

# A new block is the identity. tinyddpm.nn.unet.init_params starts conv2 at zero (weights and bias), so
# h = conv2(...) = 0 and out = skip(x) + 0 = x when Ci == Co. A deep stack of such blocks starts as a
# clean pass-through that training bends little by little, instead of a tangle of random layers.
p_same = block_params(Co, Co, rng)
p_same["demo.conv2.w"][...] = 0.0
p_same["demo.conv2.b"][...] = 0.0
x_same = rng.standard_normal((N, Co, S, S))
y_same, _ = resblock_forward(p_same, name, x_same, temb_act, groups=G)
err = float(np.max(np.abs(y_same - x_same)))
check("with conv2 at zero (its initial value) a ResBlock with Ci == Co returns its input", err == 0.0,
      f"max |out - x| = {err:.1e}")

# %%
# ---------------------------------------------------------------------------------------------------
section(f"2. The U-Net of the {PRESET!r} preset, layer by layer")
# The network (tinyddpm/nn/unet.py), for x_t (N, 1, 28, 28), timesteps t (N,) and labels y (N,):
#
#     temb     = lin2( silu( lin1( sinusoidal(t) ) ) ) + label_table[y]       (N, E), E = 4 * base
#     temb_act = silu(temb)                                                   read by every ResBlock
#     h = conv_in(x_t)                                   -> skip 0
#     down:   per level: ResBlock(s) [+ attention], then a stride-2 conv      each block's output -> a skip
#     middle: ResBlock, attention, ResBlock              at the lowest resolution
#     up:     per level: (concat the latest skip, ResBlock) x (blocks + 1) [+ attention], then upsample x2
#     out = conv_out( silu( groupnorm(h) ) )             (N, 1, 28, 28), the predicted noise
#
# The skips are a stack: the down path pushes, the up path pops, so the finest skip (pushed first) is
# concatenated last, at full resolution. tinyddpm.nn.unet.plan(cfg) turns a UNetConfig into three lists of
# Layers (kind, name, c_in, c_out, size, push_skip, pop_skip); parameters, forward and backward all follow it.
# Here is the forward written straight from the plan, recording every layer's shapes on the way.


def unet_forward_in_the_open(params, cfg, x, t, labels, zero_skips_at=()):
    """The U-Net forward from plan(cfg), recording (layer name, kind, input shape, skip shape, output) per layer.
    zero_skips_at: resolutions whose skips arrive as zeros (section 7 asks what they carry)."""
    e, _ = timestep_embedding_forward(t, cfg.base_channels, dtype=x.dtype)        # (N, base)
    e, _ = linear_forward(e, params["time.lin1.w"], params["time.lin1.b"])        # (N, E)
    e, _ = silu_forward(e)
    temb, _ = linear_forward(e, params["time.lin2.w"], params["time.lin2.b"])     # (N, E)
    if cfg.num_classes is not None:
        temb = temb + params["label.table"][labels]                               # (N, E): a row per label
    temb_act, _ = silu_forward(temb)
    h, _ = conv_forward(params, "conv_in", x)                                     # (N, base, 28, 28)
    skips = [h]
    records = [("conv_in", "conv", x.shape, None, h)]
    down, middle, up = plan(cfg)
    for layer in down + middle + up:
        h_in, skip_shape = h.shape, None
        if layer.pop_skip:
            skip = skips.pop()
            skip_shape = skip.shape
            if skip.shape[-1] in zero_skips_at:
                skip = np.zeros_like(skip)                                        # the same shapes, no content
            h = np.concatenate([h, skip], axis=1)                                 # (N, C + C_skip, S, S)
        if layer.kind == "res":
            h, _ = resblock_forward(params, layer.name, h, temb_act, groups=cfg.groups)
        elif layer.kind == "attn":
            h, _ = attention_block_forward(params, layer.name, h, groups=cfg.groups, heads=cfg.heads)
        elif layer.kind == "down":
            h, _ = downsample_forward(params, layer.name, h)                      # stride 2: S -> S / 2
        else:
            h, _ = upsample_forward(params, layer.name, h)                        # nearest x2, conv: S -> 2 S
        if layer.push_skip:
            skips.append(h)
        records.append((layer.name, layer.kind, h_in, skip_shape, h))
    assert not skips, "every skip is used exactly once"
    h, _ = groupnorm_forward(h, params["out.norm.g"], params["out.norm.b"], cfg.groups)
    h, _ = silu_forward(h)
    y, _ = conv_forward(params, "conv_out", h)                                    # (N, 1, 28, 28)
    records.append(("conv_out", "conv", records[-1][4].shape, None, y))
    return y, records


cfg = PRESETS[PRESET].unet
pushers = {"conv_in"} | {layer.name for layer in plan(cfg)[0] if layer.push_skip}   # layers whose output is a skip
print(f"  {PRESET} preset: {cfg}")
# The zero-initialised tensors (conv2 of every block, the attention output, conv_out) would make the output
# exactly 0 and the comparison below meaningless, so they get small random values first.
params = init_params(cfg, seed=0)
for k, v in params.items():
    if not np.any(v):
        v += (0.05 * rng.standard_normal(v.shape)).astype(v.dtype)
digit, label = mnist_digits(1, split="test", seed=3)
t1 = np.array([FEATURE_T])
y_open, records = unet_forward_in_the_open(params, cfg, digit, t1, label)
y_ref, _ = unet_forward(params, cfg, digit, t1, label)
err = relative_error(y_open, y_ref)
check("the U-Net forward written from plan(cfg) == tinyddpm.nn.unet.unet_forward", err < 1e-6,
      f"output {tuple(y_open.shape)}, max relative error {err:.1e}")
check("the output has the input's shape (one noise value per pixel)", y_open.shape == digit.shape,
      f"{tuple(y_open.shape)} vs {tuple(digit.shape)}")

print(f"\n  {'layer':<20}{'kind':<6}{'input':<18}{'+ skip':<18}{'output':<18}")
pushed, stack = 0, []                                                       # the skips not yet used
for lname, kind, shape_in, skip_shape, h in records:
    skip_txt = "" if skip_shape is None else f"+ {tuple(skip_shape)}"
    note = ""
    if skip_shape is not None:
        note = f"<- skip {stack.pop()}"
    if lname in pushers:
        stack.append(pushed)
        note = f"-> skip {pushed}"
        pushed += 1
    print(f"  {lname:<20}{kind:<6}{str(tuple(shape_in)):<18}{skip_txt:<18}{str(tuple(h.shape)):<18}{note}")

# %%
# ---------------------------------------------------------------------------------------------------
section("3. The class label: a row of a table, added to the time embedding")
# A conditional network is told which digit to draw. The label y is an integer 0..9; the network turns it into a
# vector of the time embedding's width E by looking up row y of a learned table, and adds it to temb:
#     temb = lin2( silu( lin1( sinusoidal(t) ) ) ) + table[y]          table (num_classes + 1, E), row y: (E,)
# From there it goes wherever the time goes: silu(temb) feeds every ResBlock as its per-channel shift (section 1),
# so each block can shift its channels differently for a "3" than for a "7", at every noise level.
# A lookup is a matrix product with a one-hot vector: table[y] = onehot(y) @ table, with onehot(y) the row of the
# identity matrix. The lookup skips the multiplications by zero; the two are the same function.
#
# The extra row. The table has num_classes + 1 rows: the last one, y = num_classes ("null"), means "no label".
# Training replaces a share p_uncond (10%) of the labels by the null label (tinyddpm.training), so the same network
# also learns to predict without a label; classifier-free guidance (lesson 15) mixes the two predictions.
# unet_forward(..., labels=None) uses the null row for the whole batch.
K, E_lab = 11, 6                                                    # 10 digits + the null label; a small width
table = rng.standard_normal((K, E_lab))                             # (K, E)
ys = np.array([3, 7, 3, 10, 3, 0])                                  # (N,): three 3s and one null label
emb, lab_cache = label_embedding_forward(ys, table)                 # (N, E)
onehot = np.eye(K)[ys]                                              # (N, K): row n is 1 at column y_n
err = max(relative_error(emb, table[ys]), relative_error(emb, onehot @ table))
check("label_embedding_forward(y, table) == table[y] == onehot(y) @ table", err < 1e-15,
      f"max relative error {err:.1e}")

small = UNetConfig(base_channels=8, channel_mults=(1, 2), blocks_per_level=1, attention_resolutions=(), heads=1,
                   groups=4, dropout=0.0, num_classes=10)
p_small = init_params(small, seed=1, dtype=np.float64)
for k, v in p_small.items():                                        # wake the zero-initialised tensors up
    if not np.any(v):
        v += 0.05 * rng.standard_normal(v.shape)
x_lab, t_lab = rng.standard_normal((2, 1, 28, 28)), np.array([400, 400])
out_null, _ = unet_forward(p_small, small, x_lab, t_lab, None)
out_10, _ = unet_forward(p_small, small, x_lab, t_lab, np.array([small.null_label] * 2))
out_37, _ = unet_forward(p_small, small, x_lab, t_lab, np.array([3, 7]))
err = relative_error(out_null, out_10)
check(f"labels=None is the null label, row {small.null_label} of the table: the same output", err == 0.0,
      f"max relative error {err:.1e}; table shape {p_small['label.table'].shape}")
check("... and a real label changes the prediction (same x_t, same t)", relative_error(out_37, out_10) > 1e-3,
      f"relative difference {relative_error(out_37, out_10):.2f}")

# The backward: a scatter-add. emb_n = table[y_n] copies row y_n, so d loss / d table[k] gets every demb_n whose label
# is k, summed: dtable[k] = sum_{n: y_n = k} demb_n; rows no sample used get exactly 0. (The one-hot view says the
# same: d(onehot @ table) / d table = onehot^T @ demb.)
# The pitfall: `dtable[ys] += demb` looks right, but NumPy applies each repeated index once: of the three 3s, only one
# demb row lands in dtable[3]. np.add.at (an unbuffered add) or a bincount sums them; tinyddpm uses one bincount.
demb = rng.standard_normal(emb.shape)                               # (N, E) an upstream gradient
dtable_lib = label_embedding_backward(demb, lab_cache)              # (K, E)
dtable_addat = np.zeros_like(table)
np.add.at(dtable_addat, ys, demb)                                   # dtable[y_n] += demb_n, one n at a time
dtable_wrong = np.zeros_like(table)
dtable_wrong[ys] += demb                                            # buffered: repeated rows written once
err = max(relative_error(dtable_lib, dtable_addat), relative_error(dtable_lib, onehot.T @ demb))
check("label_embedding_backward == np.add.at scatter-add == onehot^T @ demb", err < 1e-15,
      f"max relative error {err:.1e}")
unused = [k for k in range(K) if k not in ys]
check("rows no sample used get exactly zero gradient", not np.any(dtable_lib[unused]), f"rows {unused}")
err_wrong = relative_error(dtable_wrong, dtable_lib)
check("the deliberate slip dtable[ys] += demb loses the repeated label's rows (caught)", err_wrong > 0.1,
      f"relative error {err_wrong:.2f}: row 3 got 1 of its 3 gradients")
errors = check_gradients(lambda tab: label_embedding_forward(ys, tab), label_embedding_backward,
                         {"table": table.copy()})
check("gradient check of the label embedding (finite differences on the table)", errors["table"] < 1e-7,
      f"max relative error {errors['table']:.1e}")
# Inside the network the table's gradient arrives through temb = time part + table[y] (an add: both terms get dtemb),
# and only the rows of the labels in the batch move. Finite differences of the whole network agree (section 5 checks
# every tensor, the table included).
_, cache_small = unet_forward(p_small, small, x_lab, t_lab, np.array([3, 3]))
_, g_small = unet_backward(rng.standard_normal(x_lab.shape), cache_small)
moved = [k for k in range(small.num_classes + 1) if np.any(g_small["label.table"][k])]
check("in the whole network's backward only the table rows of the batch's labels get a gradient", moved == [3],
      f"rows with a gradient: {moved} (the batch asked for 3 twice)")

# %%
# ---------------------------------------------------------------------------------------------------
section("4. Where the parameters are")
# Counting by hand, for a layer from c_in to c_out channels (E = time-embedding width, k x k kernels):
#     conv k x k   k^2 c_in c_out + c_out          linear d_in -> d_out   d_in d_out + d_out
#     groupnorm    2 c (a scale and a shift per channel)
#     ResBlock     norm1 + conv1 (3x3) + temb (E -> c_out) + norm2 + conv2 (3x3) [+ skip (1x1) if c_in != c_out]
#     attention    norm + qkv (c -> 3c) + out (c -> c)          down / up: one 3x3 conv c -> c
base, E_net, C_img = cfg.base_channels, cfg.time_dim, cfg.image_channels


def layer_count(layer):
    ci, co = layer.c_in, layer.c_out
    if layer.kind == "res":
        n = 2 * ci + (9 * ci * co + co) + (E_net * co + co) + 2 * co + (9 * co * co + co)
        return n + (ci * co + co if ci != co else 0)
    if layer.kind == "attn":
        return 2 * ci + (3 * ci * ci + 3 * ci) + (ci * ci + ci)
    return 9 * ci * co + co


def part_of(param_name):
    """'down.1.res.0.conv1.w' -> 'down.1'; 'mid.attn.qkv.w' -> 'mid'; 'time.lin1.w' -> 'time'; ..."""
    first = param_name.split(".")[0]
    if first in ("down", "up"):
        return ".".join(param_name.split(".")[:2])
    return {"conv_out": "out"}.get(first, first)          # out.norm and conv_out make up the output head


formula = {"time": base * E_net + E_net + E_net * E_net + E_net, "conv_in": 9 * C_img * base + base}
if cfg.num_classes is not None:
    formula["label"] = (cfg.num_classes + 1) * E_net
for layer in sum(plan(cfg), []):
    formula[part_of(layer.name)] = formula.get(part_of(layer.name), 0) + layer_count(layer)
formula["out"] = 2 * base + 9 * base * C_img + C_img
counted, tensors = {}, {}
for k, v in params.items():
    counted[part_of(k)] = counted.get(part_of(k), 0) + v.size
    tensors[part_of(k)] = tensors.get(part_of(k), 0) + 1
total = count_params(params)
print(f"  {'part':<10}{'tensors':>8}{'by formula':>12}{'counted':>10}{'share':>8}")
for part in formula:
    print(f"  {part:<10}{tensors.get(part, 0):>8}{formula[part]:>12,}{counted.get(part, 0):>10,}"
          f"{counted.get(part, 0) / total:>8.1%}")
print(f"  {'total':<10}{len(params):>8}{sum(formula.values()):>12,}{total:>10,}")
mismatch = [part for part in set(formula) | set(counted) if formula.get(part) != counted.get(part)]
check("the parameter count by formula matches init_params, part by part",
      not mismatch and sum(formula.values()) == total,
      f"{total:,} parameters" + (f"; mismatched parts {mismatch}" if mismatch else ""))

# %%
# ---------------------------------------------------------------------------------------------------
section("5. The whole network's backward, checked by finite differences")
# tinyddpm.gradcheck.unet_case: a tiny U-Net (8x8 images, two levels, attention, dropout on, class labels) in
# float64, with every zero-initialised tensor made random so that every path carries gradient. The image and
# every one of the parameter tensors are checked at a few random entries each.
case = unet_case(seed=0)
tic = time.perf_counter()
errors = check_gradients(case.forward, case.backward, case.arrays, h=case.h, max_entries=UNET_ENTRIES,
                         known_zero=case.known_zero)
worst = max(errors, key=errors.get)
check(f"gradient check of the whole U-Net ({len(errors)} tensors, {UNET_ENTRIES} entries each)",
      errors[worst] < BLOCK_TOLERANCE,
      f"worst {worst}: {errors[worst]:.1e} (limit {BLOCK_TOLERANCE:.0e}), {time.perf_counter() - tic:.1f} s")

# %%
# ---------------------------------------------------------------------------------------------------
section("6. Pictures: the diagram, and a digit's feature maps at every level")
# The diagram: columns in the order the layers run, rows by the resolution of each layer's output.
# A skip is a bracket from the layer that pushed it to the ResBlock that concatenates it: both sit on
# the same row, because concatenation needs equal sizes.
colors = {"conv": "0.75", "res": "tab:blue", "attn": "tab:orange", "down": "tab:red", "up": "tab:green"}
sizes = sorted({h.shape[-1] for *_, h in records}, reverse=True)           # 28, 14, 7
fig, ax = plt.subplots(figsize=(0.8 * len(records) + 1.5, 1.6 * len(sizes) + 1.6))
push_x, box_x, skip_no = [], {}, {}
for i, (lname, kind, shape_in, skip_shape, h) in enumerate(records):
    row = -1.6 * sizes.index(h.shape[-1])
    ax.add_patch(Rectangle((i - 0.38, row - 0.3), 0.76, 0.6, facecolor=colors[kind], alpha=0.8, edgecolor="k"))
    c_in = shape_in[1] if skip_shape is None else f"{shape_in[1]}+{skip_shape[1]}"
    ax.text(i, row, f"{kind}\n{c_in}→{h.shape[1]}", ha="center", va="center", fontsize=7)
    ax.text(i, row - 0.36, lname, ha="center", va="top", fontsize=5.5, color="0.3")          # the parameter prefix
    box_x[lname] = (i, row)
    if lname in pushers:
        push_x.append(lname)
    if skip_shape is not None:
        src = push_x.pop()                                                   # the latest skip: a stack
        (x0_, y0_), (x1_, _) = box_x[src], (i, row)
        k = skip_no[y0_] = skip_no.get(y0_, 0) + 1
        top = y0_ + 0.3 + 0.22 * k
        ax.plot([x0_ + 0.1, x0_ + 0.1, x1_ - 0.1, x1_ - 0.1], [y0_ + 0.3, top, top, y0_ + 0.3], color="0.4", lw=1)
ax.set_yticks([-1.6 * j for j in range(len(sizes))], [f"{s_}x{s_}" for s_ in sizes])
ax.set_xticks([])
ax.set_xlim(-0.8, len(records) - 0.2)
ax.set_ylim(-1.6 * (len(sizes) - 1) - 0.65, 1.6)
ax.set_ylabel("resolution of the layer's output")
ax.set_title(f"U-Net of the {PRESET!r} preset ({total:,} parameters): each box is a layer with its channels in→out, "
             "grey brackets are skip connections (concatenated)")
ax.legend(handles=[Patch(color=c, label=k) for k, c in colors.items()], loc="upper center", ncol=5, fontsize=8,
          bbox_to_anchor=(0.5, -0.02))
for spine in ("top", "right", "bottom"):
    ax.spines[spine].set_visible(False)
fig.tight_layout()
fig.savefig(out / "unet_diagram.png", dpi=100)
plt.close(fig)
saved(out / "unet_diagram.png")

# Feature maps: a test digit noised to t = FEATURE_T goes through a trained network; for the layers where the
# resolution changes (and the ends) we draw the channels that vary most over the image.
net_params, net_config, schedule, where = trained_model()
print(f"  trained network: {where}")
ncfg = net_config.unet
noise = np.random.default_rng(1).standard_normal(digit.shape).astype(digit.dtype)
x_t = q_sample(schedule, digit, t1, noise)
eps_hat, net_records = unet_forward_in_the_open(net_params, ncfg, x_t, t1, label if ncfg.num_classes else None)
x0_hat = np.clip(x0_from_eps(schedule, x_t, t1, eps_hat), -1, 1)
ends = {"conv_in", "conv_out"} | {layer.name for layer in sum(plan(ncfg), []) if layer.kind in ("down", "up")}
ends |= {plan(ncfg)[1][-1].name, plan(ncfg)[2][-1].name}                    # end of the middle, last up block
picked = [r for r in net_records if r[0] in ends]
n_col = 6
fig, axes = plt.subplots(len(picked) + 1, n_col, figsize=(1.3 * n_col + 1.2, 1.3 * (len(picked) + 1)))
for a in axes.flat:
    a.set_xticks([])
    a.set_yticks([])
for a, image, title in zip(axes[0], (digit, x_t, x0_hat), ("clean digit x0", f"input x_t, t = {FEATURE_T}",
                                                             "predicted x0")):
    a.imshow(image[0, 0], cmap="gray", vmin=-1, vmax=1)
    a.set_title(title, fontsize=8)
for r, (lname, kind, shape_in, skip_shape, h) in enumerate(picked, start=1):
    fmap = h[0]                                                                # (C, S, S)
    order = np.argsort(fmap.reshape(len(fmap), -1).std(axis=1))[::-1]         # most varied channels first
    for c, ch in enumerate(order[:n_col]):
        v = float(np.abs(fmap[ch]).max()) or 1.0
        axes[r, c].imshow(fmap[ch], cmap="RdBu_r", vmin=-v, vmax=v)           # white is 0
        axes[r, c].set_title(f"channel {ch}", fontsize=7)
    what = "\n(predicted noise)" if lname == "conv_out" else ""
    axes[r, 0].set_ylabel(f"{lname}\n{h.shape[1]} ch, {h.shape[2]}x{h.shape[3]}{what}", fontsize=8)
for a in axes.flat:
    if not a.images:
        a.axis("off")
fig.suptitle(f"A digit through the trained U-Net: the {n_col} most varied channels at every level\n"
             "(red positive, blue negative; the last row is the predicted noise)", fontsize=9)
fig.tight_layout()
fig.savefig(out / "feature_maps.png", dpi=100)
plt.close(fig)
saved(out / "feature_maps.png")

# %%
# ---------------------------------------------------------------------------------------------------
section("7. Why a U-Net: how far each layer sees, and what the skips carry")
# To predict the noise at one pixel the network must know what that pixel belongs to: whether a grey smudge is part
# of a 3 or an 8 is decided by the whole digit, 28 pixels across. A 3x3 convolution sees one pixel further each way,
# so 3x3 convs at full resolution would need 14 layers (1 + 2 * 14 = 29) to see the whole image. Halving the
# resolution doubles how far every later 3x3 conv reaches. The receptive field r (in input pixels) and the jump j
# (input pixels between neighbouring positions of a layer) follow two rules:
#     a 3x3 conv:            r += 2 j            (stride 2: then j *= 2)
#     nearest upsampling x2: j /= 2              (its 3x3 conv then adds 2 j at the finer spacing)
# A ResBlock holds two 3x3 convs on its main path (its skip is 1x1): r += 4 j. Attention mixes every position of its
# level at once: from there on every output sees the whole image.
# The price of the coarse levels is resolution: a 7x7 map cannot say where a stroke's edge is to the pixel. The skips
# hand the up path the down path's maps at the same resolution, so fine detail does not have to survive the trip
# through 7x7. Both claims are measured below.


def receptive_fields(cfg):
    """(layer name, kind, resolution, jump j, receptive field r, whole image through attention) per layer."""
    r, j, size, seen_all = 3, 1, cfg.image_size, False                 # conv_in: one 3x3 conv
    rows = [("conv_in", "conv", size, j, r, False)]
    for layer in sum(plan(cfg), []):
        if layer.kind == "res":
            r += 4 * j
        elif layer.kind == "down":
            r, j, size = r + 2 * j, 2 * j, size // 2
        elif layer.kind == "up":
            j, size = j // 2, size * 2
            r += 2 * j
        else:
            seen_all = True
        rows.append((layer.name, layer.kind, size, j, r, seen_all))
    rows.append(("conv_out", "conv", size, j, r + 2 * j, seen_all))
    return rows


def traced_fields(cfg, big):
    """The same numbers measured: the layers' 3x3 convs as a linear chain (all-ones kernels; no GroupNorm, whose
    statistics would make every pixel depend a little on every other; no attention; skips left out, since a skip
    comes from an earlier, narrower layer). For each layer, the input pixels that its centre output depends on:
    the support of the gradient of that output, by conv2d_backward."""
    ones = np.ones((1, 1, 3, 3))
    ops = [("conv", 1)]
    ends = {"conv_in": 1}
    for layer in sum(plan(cfg), []):
        ops += {"res": [("conv", 1), ("conv", 1)], "down": [("conv", 2)], "up": [("repeat", 0), ("conv", 1)],
                "attn": []}[layer.kind]
        ends[layer.name] = len(ops)
    ops.append(("conv", 1))
    ends["conv_out"] = len(ops)
    widths = {}
    for name, n_ops in ends.items():
        h, caches = np.zeros((1, 1, big, big)), []
        for kind, stride in ops[:n_ops]:
            if kind == "conv":
                h, c = conv2d_forward(h, ones, None, stride=stride)
            else:
                h, c = h.repeat(2, axis=2).repeat(2, axis=3), None           # nearest x2
            caches.append((kind, c))
        spread = []
        for shift in range(4):                          # four neighbouring outputs: every place in a 4x4 block
            dh = np.zeros_like(h)
            dh[0, 0, h.shape[2] // 2 + shift, h.shape[3] // 2] = 1.0                  # one output near the centre
            for kind, c in reversed(caches):
                if kind == "conv":
                    dh = conv2d_backward(dh, c)[0]
                else:                                                           # each input fed a 2x2 block
                    n_, c_, hh, ww = dh.shape
                    dh = dh.reshape(n_, c_, hh // 2, 2, ww // 2, 2).sum(axis=(3, 5))
            rows_hit = np.nonzero(np.abs(dh[0, 0]).sum(axis=1))[0]
            spread.append(int(rows_hit[-1] - rows_hit[0] + 1))
        widths[name] = (min(spread), max(spread))
    return widths


fields = receptive_fields(cfg)
big = 4 * (max(r for *_, r, _ in fields) // 4 + 8)                            # no field touches the border
traced = traced_fields(cfg, big)
print(f"\n  {'layer':<20}{'size':>6}{'jump':>6}{'field':>7}  (input pixels; the image is {cfg.image_size} wide)")
for lname, kind, size, j, r, seen_all in fields:
    print(f"  {lname:<20}{size:>4}x{size:<2}{j:>5}{r:>7}" + ("   + attention: the whole image" if seen_all else ""))
# Down the network every output sees exactly r pixels. Nearest upsampling copies one value into a 2x2 block, so on the
# up path two neighbouring outputs may share a parent or not: there r is the field's typical width, and an output's
# own field is a few pixels wider or narrower depending on where it sits in its block.
first_up = next(i for i, row in enumerate(fields) if row[1] == "up")
exact = [n for n, _, _, _, r, _ in fields[:first_up + 1] if n in traced and traced[n] != (r, r)]
within = [n for n, _, _, j, r, _ in fields[first_up + 1:] if n in traced and not traced[n][0] <= r <= traced[n][1]]
check("receptive fields by the two rules == traced through the convs with conv2d_backward, layer by layer",
      not exact and not within, f"{len(traced)} layers on a {big}x{big} canvas: exact down to {fields[first_up][0]}, "
      f"then within the spread over positions (conv_out: {traced['conv_out'][0]}-{traced['conv_out'][1]} pixels, "
      f"rules {fields[-1][4]})" + (f"; mismatched: {exact + within}" if exact or within else ""))
first_whole = next(n for n, _, _, _, r, _ in fields if r >= cfg.image_size)
n_convs = 1 + sum({"res": 2, "down": 1, "up": 1}.get(layer.kind, 0) for layer in sum(plan(cfg), [])
                  [:[layer.name for layer in sum(plan(cfg), [])].index(first_whole) + 1])
flat = -(-(cfg.image_size - 1) // 2)                                             # 1 + 2 L >= image size
check(f"the field passes the {cfg.image_size}-pixel image at {first_whole}, {n_convs} convs deep "
      f"(3x3 convs at full resolution need {flat})", n_convs < flat,
      f"field {dict((n, r) for n, *_, r, _ in fields)[first_whole]} pixels")

# What the skips carry: give the trained network test digits at a low noise level (t = 100: little noise, so the
# answer is in the details) and let the skips of some resolutions arrive as zeros. Its estimate of the clean digit,
# x0_hat = (x_t - b eps_hat) / a, shows what went missing. The noise itself is pixel-level detail: a prediction built
# from 7x7 and 14x14 maps alone cannot say which speck is noise, so x0_hat keeps the specks (its edge contrast rises
# above the clean digits'), and the error more than doubles.
n_show = 4 if FAST else 8
digits_s, labels_s = mnist_digits(n_show, split="test", seed=11)
digits_s = digits_s.astype(net_params["conv_in.w"].dtype)
t_s = np.full(n_show, FEATURE_T)
x_t_s = q_sample(schedule, digits_s, t_s, np.random.default_rng(2).standard_normal(digits_s.shape).astype(digits_s.dtype))
lab_s = labels_s if ncfg.num_classes else None
sizes_net = sorted({layer.size for layer in sum(plan(ncfg), [])}, reverse=True)            # 28, 14, 7
variants = {"all skips": (), f"no {sizes_net[0]}x{sizes_net[0]} skips": (sizes_net[0],), "no skips": tuple(sizes_net)}
x0_by, err_by, detail_by = {}, {}, {}
for vname, drop in variants.items():
    eps_v, _ = unet_forward_in_the_open(net_params, ncfg, x_t_s, t_s, lab_s, zero_skips_at=drop)
    x0_by[vname] = np.clip(x0_from_eps(schedule, x_t_s, t_s, eps_v), -1, 1).astype(np.float64)
    err_by[vname] = float(np.sqrt(np.mean((x0_by[vname] - digits_s) ** 2)))
    # fine detail: the mean |difference| between neighbouring pixels (edges); a blur has little of it
    detail_by[vname] = float(np.mean(np.abs(np.diff(x0_by[vname], axis=-1))))
print(f"  x0_hat at t = {FEATURE_T}, RMS distance to the clean digits (edge contrast; clean digits: "
      f"{float(np.mean(np.abs(np.diff(digits_s.astype(np.float64), axis=-1)))):.3f}):")
for vname in variants:
    print(f"    {vname:<16} {err_by[vname]:.3f}   ({detail_by[vname]:.3f})")
full_name, fine_name = list(variants)[:2]
if FAST:
    print("  (fast mode: the network is barely trained, so what the skips carry is printed, not checked)")
else:
    check(f"without the {sizes_net[0]}x{sizes_net[0]} skips x0_hat is far worse (at least 2x the error)",
          err_by[fine_name] > 2 * err_by[full_name], f"RMS {err_by[full_name]:.3f} -> {err_by[fine_name]:.3f}")

fig = plt.figure(figsize=(14, 4.6))
ax = fig.add_axes([0.05, 0.14, 0.36, 0.74])
rf = [r for *_, r, _ in fields]
colors_rf = [{s_: f"C{i}" for i, s_ in enumerate(sorted({row[2] for row in fields}, reverse=True))}[row[2]]
             for row in fields]
ax.bar(range(len(fields)), rf, color=colors_rf)
ax.axhline(cfg.image_size, color="k", ls="--", lw=1)
ax.text(0, cfg.image_size + 2, f"the image: {cfg.image_size} pixels", fontsize=8)
convs_so_far = np.cumsum([{"res": 2, "attn": 0}.get(row[1], 1) for row in fields])   # 3x3 convs up to each layer
ax.plot(range(len(fields)), 1 + 2 * convs_so_far, ":", color="0.4",
        label="as many 3x3 convs, all at full resolution")
ax.set_xticks(range(len(fields)), [row[0] for row in fields], rotation=90, fontsize=6)
ax.set(ylabel="receptive field (input pixels, convs only)", yscale="log",
       title=f"How far each layer sees (colour: resolution {', '.join(str(s_) for s_ in sorted({row[2] for row in fields}, reverse=True))})")
ax.legend(fontsize=7, loc="upper left")
shown = min(n_show, 4)
rows_img = [("clean", digits_s), (f"x_t, t = {FEATURE_T}", x_t_s)] + [(k, v) for k, v in x0_by.items()]
for r_i, (rname, imgs) in enumerate(rows_img):
    for c_i in range(shown):
        a_ = fig.add_axes([0.47 + 0.1 * c_i, 0.80 - 0.17 * r_i, 0.095, 0.15])
        a_.imshow(np.asarray(imgs[c_i, 0], dtype=np.float64), cmap="gray", vmin=-1, vmax=1)
        a_.set_xticks([])
        a_.set_yticks([])
        if c_i == 0:
            a_.set_ylabel(rname if r_i < 2 else f"x0_hat,\n{rname}", fontsize=7)
fig.suptitle("Why a U-Net: downsampling lets a few convs see the whole digit; the full-resolution skips carry the "
             "pixel-level detail (here: which speck is noise)",
             fontsize=10)
fig.savefig(out / "why_unet.png", dpi=100)
plt.close(fig)
saved(out / "why_unet.png")

# %%
try_this(__doc__)
print("\nNext: lessons/09_elbo.py - what the network is trained to minimise, from the variational bound.")
finish(started)
