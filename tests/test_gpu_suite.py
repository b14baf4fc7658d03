"""benchmarks/gpu_suite.py (the command; the suite is the folder benchmarks/gpu_suite/): the dry run (NumPy in
CuPy's place, tiny sizes) runs every part and writes the report; a part that raises, or passes its cap, is
recorded and the report is still written."""
import importlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "gpu_suite.py"
DRY_RUN_TIMEOUT = 300   # seconds; the dry run takes ~25 s on an idle 2-core machine


def _load(name="main"):
    """A module of the folder benchmarks/gpu_suite/ (the package, not the command beside it)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(f"gpu_suite.{name}")


def _run(out, *args, env=None):
    full_env = {k: v for k, v in os.environ.items() if k not in ("TINYDDPM_DEVICE", "GPU_SUITE_FAIL_PART")}
    full_env.update(env or {}, MPLBACKEND="Agg")
    return subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *args], env=full_env,
                          capture_output=True, text=True, timeout=DRY_RUN_TIMEOUT)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_suite")
    proc = _run(out)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else None
    return proc, out, report


def test_dry_run_runs_every_part_and_writes_the_report(dry_run):
    proc, out, report = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "report.md").is_file() and report is not None
    for key in "abcd":
        part = report["parts"][key]
        assert part["status"] == "ok", (key, part.get("error"))
        assert part["result"]["passed_checks"] is True, key
    assert "DRY RUN" in report["header"]["mode"]
    assert "## Summary" in (out / "report.md").read_text()
    assert proc.stdout.rstrip().splitlines()[-1].startswith("gpu_suite: wrote")
    assert "## Summary (again, last)" in proc.stdout[-3000:]   # the table survives a 12,000-character tail


def test_dry_run_parity_is_exact(dry_run):
    """Both sides are NumPy in the dry run: every op, the U-Net and the training step agree bit for bit."""
    result = dry_run[2]["parts"]["b"]["result"]
    judged = [r for r in result["rows"] if r["err"] is not None]
    assert {r["section"] for r in judged} == {"op", "unet", "train step"}
    assert {r["dtype"] for r in judged} == {"float64", "float32"}
    assert all(r["err"] == 0.0 for r in judged)
    assert all(r["err"] < result["tolerance"][r["dtype"]] for r in judged)
    # the float32 yardstick (NumPy float32 vs float64) is real round-off, far below the float32 limit
    yards = [r["yardstick"] for r in judged if r["dtype"] == "float32"]
    assert yards and 0 < max(yards) < result["tolerance"]["float32"]


def test_dry_run_figures(dry_run):
    parts = dry_run[2]["parts"]
    a = parts["a"]["result"]
    assert a["passed"] > 0 and a["failed"] == a["errors"] == 0 and a["source"] == "junit xml"
    c = parts["c"]["result"]
    assert {row["op"].split()[0] for row in c["ops"]} == {"conv2d", "groupnorm", "silu", "groupnorm_silu", "attention", "upsample",
                                                                "upsample_conv"}
    assert [row["preset"] for row in c["train"]] == ["cpu", "gpu"]
    assert [row["sampler"] for row in c["sampling"]] == ["ddpm", "ddim", "dpm++2m"]
    assert all(row["img_s"] > 0 for row in c["sampling"])
    d = parts["d"]["result"]
    assert d["steps"] > 0 and d["samples"] == 20
    assert math.isfinite(d["quality"]["fid"]) and 0 <= d["quality"]["accuracy"] <= 1
    assert math.isfinite(d["floor"]["fid"])


def test_a_failing_part_is_recorded_and_the_rest_still_runs(tmp_path):
    proc = _run(tmp_path, "--parts", "a,b", env={"GPU_SUITE_FAIL_PART": "a"})
    assert proc.returncode == 1
    report = json.loads((tmp_path / "report.json").read_text())
    a, b = report["parts"]["a"], report["parts"]["b"]
    assert a["status"] == "failed" and "deliberate failure of part a" in a["error"]
    assert "Traceback" in a["error"]
    assert b["status"] == "ok"
    assert "c" not in report["parts"]   # not selected
    md = (tmp_path / "report.md").read_text()
    assert "deliberate failure of part a" in md and "| a. tests on the device | failed |" in md


def test_run_part_records_errors_and_caps_in_process(tmp_path):
    suite_module = _load()
    suite = suite_module.Suite(suite_module.parse_args(["--dry-run", "--out", str(tmp_path)]))
    assert suite_module.__file__ == str(BENCHMARKS / "gpu_suite" / "main.py")

    def raises(suite, res, cap):
        res["partial"] = 1
        raise ValueError("no such thing")

    def sleeps(suite, res, cap):
        res["partial"] = 2
        time.sleep(60)

    suite_module.run_part(suite, "b", raises, cap=10)
    suite_module.run_part(suite, "c", sleeps, cap=0.3)
    parts = json.loads((tmp_path / "report.json").read_text())["parts"]
    assert parts["b"]["status"] == "failed" and "ValueError: no such thing" in parts["b"]["error"]
    assert parts["c"]["status"] == "timeout" and parts["c"]["seconds"] < 60   # cut short, however loaded the machine
    assert parts["b"]["result"] == {"partial": 1} and parts["c"]["result"] == {"partial": 2}   # partial results kept


def test_tests_stopped_at_the_cap_still_give_counts(tmp_path, monkeypatch):
    """pytest gets SIGINT at part a's cap and still writes its JUnit XML (or the summary line is read)."""
    suite_module, part_a = _load(), _load("a_tests")
    # a test file that takes far longer than the cap with or without PyTorch (the dry run's own few files can
    # finish within it when the oracle tests skip)
    monkeypatch.setattr(part_a, "DRY_TESTS", ("test_unet.py", "test_samplers.py"))
    suite = suite_module.Suite(suite_module.parse_args(["--dry-run", "--out", str(tmp_path)]))
    suite_module.run_part(suite, "a", part_a.part_a_tests, cap=2.5)
    a = json.loads((tmp_path / "report.json").read_text())["parts"]["a"]
    assert a["status"] == "ok", a.get("error")
    result = a["result"]
    assert result["stopped_at_cap"] is True and result["passed_checks"] is False
    assert all(isinstance(result[k], int) for k in ("passed", "failed", "skipped", "errors"))
