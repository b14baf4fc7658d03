"""The benchmark scripts run (quick mode) and check their results against PyTorch before timing."""
import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_ops_quick(torch, capsys):
    assert _load("bench_ops").main(["--quick", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for op in ("conv2d", "groupnorm", "silu", "attention", "upsample nearest", "upsample_conv"):
        assert f"| {op}" in out


def test_bench_train_step_quick(torch, capsys):
    assert _load("bench_train_step").main(["--quick", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| tiny | 8 | 1 |" in out
    assert "n/a" not in out
