"""The gradient checker itself: it passes right backwards, catches wrong ones, and the CLI covers every op."""
import numpy as np

from helpers import OP_TOLERANCE, randn
from tinyddpm import gradcheck
from tinyddpm.ops import linear_backward, linear_forward


def test_catches_a_wrong_backward():
    rng = np.random.default_rng(0)
    arrays = {"x": randn(rng, 4, 5), "w": randn(rng, 3, 5), "b": randn(rng, 3)}

    def slightly_wrong_backward(dy, cache):
        dx, dw, db = linear_backward(dy, cache)
        return dx, dw * 1.001, db

    right = gradcheck.check_gradients(linear_forward, linear_backward, arrays)
    wrong = gradcheck.check_gradients(linear_forward, slightly_wrong_backward, arrays)
    assert max(right.values()) < OP_TOLERANCE
    assert wrong["w"] > 1e-4 and wrong["x"] < OP_TOLERANCE


def test_inputs_are_restored():
    rng = np.random.default_rng(1)
    arrays = {"x": randn(rng, 4, 5), "w": randn(rng, 3, 5)}
    before = {k: v.copy() for k, v in arrays.items()}
    gradcheck.check_gradients(linear_forward, linear_backward, arrays)
    assert all(np.array_equal(before[k], arrays[k]) for k in arrays)


def test_relative_error_definition():
    assert gradcheck.relative_error([1.0, 0.0], [1.0, 0.0]) == 0.0
    assert np.isclose(gradcheck.relative_error([1.0], [3.0]), 0.5)


def test_resolution_floor_forgives_round_off_only():
    """An entry 1e-6 of its tensor's scale, off by round-off (1e-11 absolute), passes a block check;
    the same entry with a wrong value, or a normal entry off by 1e-4 relative, still fails."""
    scale = 0.1
    tiny = 1e-6 * scale
    assert gradcheck.relative_error([tiny], [tiny + 1e-11], scale) < 1e-5
    assert gradcheck.relative_error([tiny], [tiny + 1e-11]) > 1e-5          # without the tensor's scale
    assert gradcheck.relative_error([0.0], [1e-3 * scale], scale) == 1.0     # a dropped entry
    assert gradcheck.relative_error([-tiny], [tiny], scale) > 1e-2           # a wrong sign
    assert gradcheck.relative_error([0.05], [0.05 * (1 + 2e-4)], scale) > 1e-5


def test_cli_checks_every_op_and_passes(capsys):
    assert gradcheck.main([]) == 0
    out = capsys.readouterr().out
    expected = ["linear", "conv2d", "upsample", "groupnorm", "silu", "dropout", "attention",
                "timestep_embedding", "label_embedding", "concat", "add", "mse_loss", "l1_loss", "unet"]
    for op in expected:
        assert op in out, f"{op} missing from the gradcheck table"
    assert "FAIL" not in out and " 0 failed" in out


def test_cli_fails_on_a_failing_case(capsys):
    rng = np.random.default_rng(0)
    bad = gradcheck.GradCase("broken", linear_forward, lambda dy, c: tuple(2 * g for g in linear_backward(dy, c)[:2]),
                             {"x": randn(rng, 2, 3), "w": randn(rng, 4, 3)})
    assert not gradcheck.run([bad])
    assert "FAIL" in capsys.readouterr().out
