"""The U-Net: whole-network gradient check, PyTorch twin, shapes, initialisation, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import ORACLE_TOLERANCE, oracle_error, randn
from tinyddpm.backend import make_rng, to_device, to_numpy
from tinyddpm.gradcheck import BLOCK_STEP, BLOCK_TOLERANCE, check_gradients
from tinyddpm.nn.unet import (UNetConfig, count_params, init_params, known_zero_gradients, plan, unet_backward,
    unet_forward)

TINY = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), blocks_per_level=1,
                  attention_resolutions=(4,), heads=2, dropout=0.1, groups=4, num_classes=3)


def randomised_params(cfg, seed):
    """Parameters with every zero-initialised tensor made random, so every path carries gradient."""
    rng = np.random.default_rng(seed + 1)
    params = init_params(cfg, seed=seed, dtype=np.float64)
    return {k: to_device(to_numpy(v) + 0.3 * rng.standard_normal(v.shape)) for k, v in params.items()}


def unet_check_fns(cfg, t, labels, dropout_seed):
    """forward/backward over (x, *params) for check_gradients; dropout uses the same mask every call."""
    keys = None

    def forward(x, *values):
        params = dict(zip(keys, values))
        return unet_forward(params, cfg, x, t, labels, train=True, rng=make_rng(dropout_seed))

    def backward(dy, cache):
        dx, grads = unet_backward(dy, cache)
        return (dx, *(grads[k] for k in keys))

    def bind(params):
        nonlocal keys
        keys = list(params)
        return forward, backward

    return bind


@settings(max_examples=3, deadline=None)
@given(blocks=st.integers(1, 2), attention=st.booleans(), conditional=st.booleans(), heads=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**31 - 1))
def test_whole_network_gradcheck(blocks, attention, conditional, heads, seed):
    cfg = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), blocks_per_level=blocks,
                     attention_resolutions=(4,) if attention else (), heads=heads, dropout=0.2, groups=4,
                     num_classes=3 if conditional else None)
    errors = whole_network_errors(cfg, seed, batch=2)
    worst = max(errors, key=errors.get)
    assert errors[worst] < BLOCK_TOLERANCE, (worst, errors[worst])


def match_torch_twin(torch, cfg, seed, x_scale=1.0):
    """Our forward and backward against the PyTorch twin's on one random batch (3 is the null label); returns
    (our output, the twin's parameters, its input, t, labels) for further checks."""
    from torch_twin import params_to_torch, torch_unet_forward

    rng = np.random.default_rng(seed)
    params = randomised_params(cfg, seed)
    shape = (3, cfg.image_channels, cfg.image_size, cfg.image_size)
    x, dy = randn(rng, *shape) * x_scale, randn(rng, *shape)
    t, labels = to_device(np.array([0, 17, 999])), to_device(np.array([0, 2, 3]))
    out, cache = unet_forward(params, cfg, x, t, labels)
    dx, grads = unet_backward(dy, cache)

    tp = params_to_torch(params)
    tx = torch.tensor(to_numpy(x), requires_grad=True)
    tout = torch_unet_forward(tp, cfg, tx, torch.tensor(to_numpy(t)), torch.tensor(to_numpy(labels)))
    tout.backward(torch.tensor(to_numpy(dy)))
    assert oracle_error(out, tout) < ORACLE_TOLERANCE
    assert oracle_error(dx, tx.grad) < ORACLE_TOLERANCE
    assert set(grads) == set(params)
    errors = {k: oracle_error(grads[k], tp[k].grad) for k in params}
    worst = max(errors, key=errors.get)
    assert errors[worst] < ORACLE_TOLERANCE, (worst, errors[worst])
    return out, tp, tx, t, labels


def test_matches_torch_twin(torch):
    match_torch_twin(torch, UNetConfig(**{**TINY.to_dict(), "dropout": 0.0}), seed=3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mnist_shapes_and_zero_init(dtype):
    cfg = UNetConfig()  # the MNIST default: 28 -> 14 -> 7
    params = init_params(cfg, seed=0, dtype=dtype)
    rng = np.random.default_rng(0)
    x = randn(rng, 2, 1, 28, 28, dtype=dtype)
    out, cache = unet_forward(params, cfg, x, to_device(np.array([5, 500])), to_device(np.array([1, 10])))
    assert out.shape == x.shape and out.dtype == dtype
    assert not np.any(to_numpy(out))  # conv_out starts at zero: the untrained network predicts 0
    dx, grads = unet_backward(randn(rng, 2, 1, 28, 28, dtype=dtype), cache)
    assert set(grads) == set(params) and all(grads[k].shape == params[k].shape for k in params)
    assert all(g.dtype == dtype for g in grads.values())
    assert np.abs(to_numpy(grads["conv_out.w"])).sum() > 0  # the zero conv still learns


def test_plan_of_the_mnist_default():
    down, middle, up = plan(UNetConfig())
    assert [layer.size for layer in down if layer.kind == "down"] == [28, 14]
    assert [layer.kind for layer in middle] == ["res", "attn", "res"]
    assert sum(layer.pop_skip for layer in up) == sum(layer.push_skip for layer in down) + 1  # + conv_in's output
    assert count_params(init_params(UNetConfig(), dtype=np.float32)) > 100_000


def test_dropout_in_training_needs_an_rng_and_is_seeded():
    cfg = UNetConfig(**{**TINY.to_dict(), "dropout": 0.5})
    params = randomised_params(cfg, 0)
    x = randn(np.random.default_rng(0), 2, 1, 8, 8)
    t = to_device(np.array([1, 2]))
    a, _ = unet_forward(params, cfg, x, t, train=True, rng=make_rng(7))
    b, _ = unet_forward(params, cfg, x, t, train=True, rng=make_rng(7))
    c, _ = unet_forward(params, cfg, x, t, train=False)
    assert np.array_equal(to_numpy(a), to_numpy(b)) and not np.allclose(to_numpy(a), to_numpy(c))


def test_bad_input_is_named():
    params = init_params(TINY, dtype=np.float64)
    x = randn(np.random.default_rng(0), 2, 1, 8, 8)
    t = to_device(np.array([1, 2]))
    with pytest.raises(ValueError, match=r"unet: x must be \(N, 1, 8, 8\), got \(2, 1, 9, 8\)"):
        unet_forward(params, TINY, randn(np.random.default_rng(0), 2, 1, 9, 8), t)
    with pytest.raises(ValueError, match=r"unet: t must be \(N,\) = \(2,\), got \(3,\)"):
        unet_forward(params, TINY, x, to_device(np.array([1, 2, 3])))
    with pytest.raises(ValueError, match=r"unet: labels must be"):
        unet_forward(params, TINY, x, t, to_device(np.array([[1], [2]])))
    with pytest.raises(TypeError, match="unet: x is float32 but the parameters are float64"):
        unet_forward(params, TINY, x.astype(np.float32), t)
    with pytest.raises(ValueError, match="groups 3 must divide"):
        UNetConfig(groups=3).validate()
    with pytest.raises(ValueError, match="image_size 30 must be divisible by 2"):
        UNetConfig(image_size=30).validate()


# ---------------------------------------------------------------------------------------------------
# The block options: GELU, weight-standardised conv1, space-to-depth downsampling, transposed-conv upsampling

ALL_OPTIONS = dict(activation="gelu", weight_standardisation=True, downsample="space_to_depth", upsample="transposed")
NEW_FIELDS = tuple(ALL_OPTIONS)


@settings(max_examples=2, deadline=None)
@given(attention=st.booleans(), conditional=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_whole_network_gradcheck_all_block_options(attention, conditional, seed):
    cfg = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), blocks_per_level=1,
                     attention_resolutions=(4,) if attention else (), heads=2, dropout=0.2, groups=4,
                     num_classes=3 if conditional else None, **ALL_OPTIONS)
    errors = whole_network_errors(cfg, seed, batch=2)
    worst = max(errors, key=errors.get)
    assert errors[worst] < BLOCK_TOLERANCE, (worst, errors[worst])


@pytest.mark.parametrize("options", [ALL_OPTIONS] + [{k: v} for k, v in ALL_OPTIONS.items()],
                         ids=["all"] + list(ALL_OPTIONS))
def test_block_options_match_torch_twin(torch, options):
    from torch_twin import torch_unet_forward

    cfg = UNetConfig(**{**TINY.to_dict(), "dropout": 0.0, **options})
    out, tp, tx, t, labels = match_torch_twin(torch, cfg, seed=4, x_scale=2.0)
    if set(options) <= {"activation", "weight_standardisation"}:  # (the resampling options change weight shapes)
        # the twin really follows the option: with the same weights, the plain network gives another output
        plain = UNetConfig(**{**cfg.to_dict(), **{k: getattr(UNetConfig(), k) for k in options}})
        other = torch_unet_forward(tp, plain, tx, torch.tensor(to_numpy(t)), torch.tensor(to_numpy(labels)))
        assert oracle_error(out, other) > 1e-3


def test_block_options_parameters_and_shapes():
    """Each option changes only the parameters it owns; the MNIST network keeps its sizes (28 -> 14 -> 7 -> 28)."""
    plain = init_params(UNetConfig(), seed=0, dtype=np.float32)
    cfg = UNetConfig(**ALL_OPTIONS)
    params = init_params(cfg, seed=0, dtype=np.float32)
    assert set(params) == set(plain)
    changed = {k for k in params if params[k].shape != plain[k].shape}
    assert changed == {"down.0.downsample.w", "down.1.downsample.w", "up.1.upsample.w", "up.2.upsample.w"}
    assert params["down.0.downsample.w"].shape == (32, 128, 1, 1) and params["up.1.upsample.w"].shape == (64, 64, 4, 4)
    assert not np.any(to_numpy(params["down.0.res.0.conv2.w"]))  # conv2 still starts at zero
    x = randn(np.random.default_rng(0), 2, 1, 28, 28, dtype=np.float32)
    out, cache = unet_forward(params, cfg, x, to_device(np.array([5, 500])), to_device(np.array([1, 10])))
    assert out.shape == x.shape and out.dtype == np.float32 and not np.any(to_numpy(out))
    _, grads = unet_backward(randn(np.random.default_rng(1), 2, 1, 28, 28, dtype=np.float32), cache)
    assert all(grads[k].shape == params[k].shape and grads[k].dtype == np.float32 for k in params)


def test_default_options_are_the_plain_network():
    """A config without the new fields (as an older checkpoint stores it) is today's network, weight for weight."""
    old = {k: v for k, v in UNetConfig().to_dict().items() if k not in NEW_FIELDS}
    cfg = UNetConfig.from_dict(old)
    assert cfg == UNetConfig()
    assert (cfg.activation, cfg.weight_standardisation, cfg.downsample, cfg.upsample) == ("silu", False, "conv", "nearest")
    a, b = init_params(cfg, seed=3, dtype=np.float64), init_params(UNetConfig(), seed=3, dtype=np.float64)
    assert set(a) == set(b) and all(np.array_equal(to_numpy(a[k]), to_numpy(b[k])) for k in a)


def test_old_checkpoint_without_the_new_fields_loads(tmp_path):
    """A training checkpoint whose stored config predates the options loads for sampling with the defaults."""
    from tinyddpm.training.resume import CHECKPOINT_KIND, load_for_sampling
    from tinyddpm.checkpoint import save_checkpoint
    from tinyddpm.training.config import TrainConfig

    train = TrainConfig(unet=TINY, p_uncond=0.1).to_dict()
    train["unet"] = {k: v for k, v in train["unet"].items() if k not in NEW_FIELDS}  # as written before them
    params = init_params(TINY, seed=0, dtype=np.float32)
    path = save_checkpoint(tmp_path / "old.npz", config={"kind": CHECKPOINT_KIND, "train": train}, params=params)
    loaded, config, _ = load_for_sampling(path, use_ema=False)
    assert config.unet == TINY and config.unet.activation == "silu" and config.unet.upsample == "nearest"
    assert set(loaded) == set(params)
    # and a new checkpoint stores the options, which come back
    train = TrainConfig(unet=UNetConfig(**{**TINY.to_dict(), **ALL_OPTIONS}), p_uncond=0.1)
    params = init_params(train.unet, seed=0, dtype=np.float32)
    path = save_checkpoint(tmp_path / "new.npz", config={"kind": CHECKPOINT_KIND, "train": train.to_dict()}, params=params)
    _, config, _ = load_for_sampling(path, use_ema=False)
    assert config.unet == train.unet


def test_bad_block_options_are_named():
    with pytest.raises(ValueError, match=r"UNetConfig: activation must be one of \('silu', 'gelu'\), got 'relu'"):
        UNetConfig(activation="relu").validate()
    with pytest.raises(ValueError, match=r"UNetConfig: downsample must be one of \('conv', 'space_to_depth'\), got 'pool'"):
        UNetConfig(downsample="pool").validate()
    with pytest.raises(ValueError, match=r"UNetConfig: upsample must be one of \('nearest', 'transposed'\), got 'bilinear'"):
        UNetConfig(upsample="bilinear").validate()
    with pytest.raises(ValueError, match=r"UNetConfig: weight_standardisation must be True or False, got 'yes'"):
        UNetConfig(weight_standardisation="yes").validate()


# --------------------------------------------------------------------------------------------
# pictures of your own: 3 channels at 32 and 64 pixels (examples/train_images.py)
# --------------------------------------------------------------------------------------------

RGB32 = UNetConfig(image_channels=3, image_size=32, base_channels=4, channel_mults=(1, 2), blocks_per_level=1,
                   attention_resolutions=(16,), heads=2, dropout=0.2, groups=2, num_classes=3)   # 4 and 8 channels:
# a forward of one picture takes ~20 ms here (base 8: ~0.2 s), and the check makes ~2 per parameter tensor


def whole_network_errors(cfg, seed, batch=1):
    """{name: relative error} of the whole network's gradients (x and every parameter) by finite differences."""
    rng = np.random.default_rng(seed)
    params = randomised_params(cfg, seed)
    x = randn(rng, batch, cfg.image_channels, cfg.image_size, cfg.image_size)
    t = to_device(rng.integers(0, 1000, size=batch))
    labels = None if cfg.num_classes is None else to_device(rng.integers(0, cfg.num_classes + 1, size=batch))
    forward, backward = unet_check_fns(cfg, t, labels, seed)(params)
    return check_gradients(forward, backward, {"x": x, **params}, seed=seed, max_entries=2, h=BLOCK_STEP,
                           known_zero=known_zero_gradients(params))


@settings(max_examples=1, deadline=None)   # ~12 s: 2 entries of each of 129 tensors at 32x32 (the unconditional
@given(seed=st.integers(0, 2**31 - 1))     # path and other widths are checked at 8x8 above)
def test_whole_network_gradcheck_rgb_32px(seed):
    errors = whole_network_errors(RGB32, seed)
    assert errors["x"] < BLOCK_TOLERANCE and errors["conv_in.w"] < BLOCK_TOLERANCE   # the 3 channels in and out
    worst = max(errors, key=errors.get)
    assert errors[worst] < BLOCK_TOLERANCE, (worst, errors[worst])


def test_rgb_32px_matches_torch_twin(torch):
    out, *_ = match_torch_twin(torch, UNetConfig(**{**RGB32.to_dict(), "dropout": 0.0}), seed=5)
    assert out.shape == (3, 3, 32, 32)


RGB64 = UNetConfig(image_channels=3, image_size=64, base_channels=4, channel_mults=(1, 2, 2), blocks_per_level=1,
                   attention_resolutions=(16,), heads=1, dropout=0.0, groups=2, num_classes=3)   # images-gpu's
# levels 64, 32, 16 and its attention at 16 (256 positions: at 32 the 1024 x 1024 float64 scores cost ~4x more)


@settings(max_examples=1, deadline=None)   # 2 entries of each tensor at 64x64, tiny widths: a few seconds
@given(seed=st.integers(0, 2**31 - 1))
def test_whole_network_gradcheck_rgb_64px(seed):
    errors = whole_network_errors(RGB64, seed)
    worst = max(errors, key=errors.get)
    assert errors["x"] < BLOCK_TOLERANCE and errors[worst] < BLOCK_TOLERANCE, (worst, errors[worst])


def test_rgb_64px_matches_torch_twin(torch):
    out, *_ = match_torch_twin(torch, RGB64, seed=6)
    assert out.shape == (3, 3, 64, 64)


def test_rgb_64px_shapes():
    """The images-gpu layout (levels 64, 32, 16, 8, attention at 16) at small widths: shapes in and out."""
    cfg = UNetConfig(image_channels=3, image_size=64, base_channels=8, channel_mults=(1, 2, 2, 2), blocks_per_level=1,
                     attention_resolutions=(16,), heads=2, dropout=0.0, groups=4, num_classes=None)
    down, middle, up = plan(cfg)
    assert [layer.size for layer in down if layer.kind == "down"] == [64, 32, 16]          # 64 -> 32 -> 16 -> 8
    assert {layer.size for layer in down + up if layer.kind == "attn"} == {16}              # attention at 16 only
    params = init_params(cfg, seed=0, dtype=np.float32)
    assert params["conv_in.w"].shape == (8, 3, 3, 3) and params["conv_out.w"].shape == (3, 8, 3, 3)
    rng = np.random.default_rng(0)
    x = randn(rng, 2, 3, 64, 64, dtype=np.float32)
    out, cache = unet_forward(params, cfg, x, to_device(np.array([3, 900])))
    assert out.shape == x.shape and out.dtype == np.float32
    dx, grads = unet_backward(randn(rng, 2, 3, 64, 64, dtype=np.float32), cache)
    assert dx.shape == x.shape and all(grads[k].shape == params[k].shape for k in params)
