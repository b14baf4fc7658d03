"""The benchmark scripts run (quick mode) and check their results against PyTorch before timing."""
from pathlib import Path

from helpers import load_benchmark

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_bench_ops_quick(torch, capsys):
    assert load_benchmark("bench_ops").main(["--quick", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for op in ("conv2d", "groupnorm", "silu", "groupnorm_silu", "attention", "upsample nearest", "upsample_conv"):
        assert f"| {op}" in out


def test_bench_train_step_quick(torch, capsys):
    assert load_benchmark("bench_train_step").main(["--quick", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| tiny | 8 | 1 |" in out
    assert "n/a" not in out


def test_benchmarks_unset_the_blas_overrides_in_their_own_process_only(tmp_path):
    """A benchmark run as a script unsets OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE before NumPy loads and says which
    kernel ran; imported (as the tests above do) it leaves the environment alone."""
    import os
    import subprocess
    import sys

    script = ("import sys; sys.path.insert(0, sys.argv[1]); import blas_env; blas_env.unset_blas_overrides(); "
              "import os, numpy; print(blas_env.blas_description()); print('left:', os.environ.get('OPENBLAS_CORETYPE'))")
    env = {**os.environ, "OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576"}
    out = subprocess.run([sys.executable, "-c", script, str(BENCHMARKS)], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert "unset in this process: OPENBLAS_CORETYPE=Haswell, OPENBLAS_L2_SIZE=1048576" in out
    assert "left: None" in out
    assert "BLAS: " in out and ("kernel " in out or "threadpoolctl" in out or "none found" in out)


def test_imported_benchmark_leaves_the_blas_variables(monkeypatch, torch, capsys):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")   # read by a fresh OpenBLAS only; this one is loaded
    assert load_benchmark("bench_ops").main(["--quick", "--threads", "1", "--ops", "silu"]) == 0
    import os

    assert os.environ["OPENBLAS_CORETYPE"] == "Haswell"
    assert "left as set: OPENBLAS_CORETYPE=Haswell" in capsys.readouterr().out
