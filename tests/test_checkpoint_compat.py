"""A checkpoint written before the layout change (issue 22) still loads and computes what it computed then.

tests/fixtures/before_layout/make_fixture.py wrote the checkpoint and the arrays at commit be5a8f0; its config
still spells the per-class sample counts preview_per_digit / final_per_digit.
"""
import json
import zipfile
from pathlib import Path

import numpy as np

import tinyddpm as td

HERE = Path(__file__).resolve().parent / "fixtures" / "before_layout"


def _expected(name):
    return np.load(HERE / name, allow_pickle=False)


def test_old_checkpoint_config_uses_the_old_field_names():
    # the fixture really is from before the rename: otherwise the load below would prove nothing about old configs
    with zipfile.ZipFile(HERE / "checkpoint.npz") as z, z.open("meta/config.npy") as f:
        stored = json.loads(np.lib.format.read_array(f, allow_pickle=False).tobytes().decode())
    assert "preview_per_digit" in stored["train"] and "preview_per_class" not in stored["train"]


def test_old_checkpoint_network_output_is_unchanged():
    params, config, _ = td.load_for_sampling(HERE / "checkpoint.npz")
    rng = np.random.default_rng(0)
    x_t = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    t, labels = np.array([0, 250, 600, 999]), np.array([1, 4, 9, 10])
    out = td.unet_forward(params, config.unet, x_t, t, labels, keep_cache=False)[0]
    np.testing.assert_allclose(out, _expected("unet_out.npy"), rtol=1e-5, atol=1e-6)


def test_old_checkpoint_draws_the_same_samples():
    params, config, schedule = td.load_for_sampling(HERE / "checkpoint.npz")
    ddim = td.sample_classes(params, config.unet, schedule, [0, 3, 7], 2, sampler="ddim", steps=5, guidance=2.0,
                             clip="none", seed=11)
    np.testing.assert_allclose(ddim, _expected("samples_ddim.npy"), rtol=1e-4, atol=1e-4)
    default = td.sample_classes(params, config.unet, schedule, range(10), 1, sampler=config.sampler,
                                steps=config.sample_steps, guidance=config.guidance, seed=3)
    np.testing.assert_allclose(default, _expected("samples_default.npy"), rtol=1e-5, atol=1e-5)
