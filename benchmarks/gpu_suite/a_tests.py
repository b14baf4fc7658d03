"""Part a: the test suite on the device under test (TINYDDPM_DEVICE=cuda), in a pytest subprocess stopped with
SIGINT at the part's cap; counts and every failure's node id and message, read from pytest's JUnit XML."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from . import REPO
from .common import FAIL_HOOK


EXCLUDED_TESTS = ("test_lessons.py", "test_gpu_suite.py")   # minutes of CPU lessons; the suite's own test
# Most telling first, so that a run stopped at its cap has covered the CuPy-specific parts.
FIRST_TESTS = ("test_cupy_parity.py", "test_kernels.py", "test_groupnorm_silu.py", "test_fused_update.py",
               "test_cuda_graph.py", "test_float32.py", "test_backend.py", "test_linear.py", "test_conv2d.py",
               "test_groupnorm.py", "test_silu.py", "test_attention.py", "test_upsample.py", "test_upsample_conv.py",
               "test_embedding.py", "test_skip.py", "test_dropout.py", "test_losses.py", "test_unet.py",
               "test_gradcheck.py", "test_optim.py", "test_forward_process.py", "test_schedules.py", "test_samplers.py",
               "test_guidance.py", "test_train.py", "test_checkpoint.py", "test_classifier.py", "test_metrics.py")
PYTEST_WORKERS = 12  # pytest-xdist processes for part a (each holds its own CuPy context, ~0.5 GB)
DRY_TESTS = ("test_backend.py", "test_cupy_parity.py", "test_skip.py")   # a few seconds on the CPU
# At the cap pytest gets SIGINT, prints its summary and writes the XML. A test may swallow one (examples/
# train_mnist.py turns Ctrl-C into a clean stop and tests call its main() in-process), so SIGINT is repeated
# every PYTEST_SIGINT_EVERY_S until PYTEST_GRACE_S have passed; then SIGKILL. With xdist the signal reaches
# only the controller (no test runs there to swallow it), which needs ~7 s to stop its workers and write the
# XML, and a second SIGINT meanwhile kills it before it writes: one SIGINT, then the grace.
PYTEST_GRACE_S, PYTEST_SIGINT_EVERY_S = 30, 4


def test_files(suite) -> list:
    """Test files in run order: the dry run's few, or every file but EXCLUDED_TESTS, FIRST_TESTS first."""
    tests = REPO / "tests"
    if suite.dry:
        return [f"tests/{name}" for name in DRY_TESTS if (tests / name).is_file()]
    present = sorted(p.name for p in tests.glob("test_*.py") if p.name not in EXCLUDED_TESTS)
    ordered = [n for n in FIRST_TESTS if n in present] + [n for n in present if n not in FIRST_TESTS]
    return [f"tests/{name}" for name in ordered]


def part_a_tests(suite, res, cap):
    """pytest on the device in a subprocess; SIGINT at the cap (pytest then still writes its JUnit XML)."""
    files = test_files(suite)
    xml, log = suite.out / "pytest_a.xml", suite.out / "pytest_a.log"
    xml.unlink(missing_ok=True)
    workers = pytest_workers(suite)
    spread = ["-n", str(workers), "--dist", "load"] if workers > 1 else []
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *spread,
           "--continue-on-collection-errors",   # one module that fails to import must not stop all the others
           "-o", "junit_family=xunit1", f"--junitxml={xml}", "--durations=8", *files]
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, TINYDDPM_DEVICE=suite.gpu, MPLBACKEND="Agg", PYTHONPATH=path)
    env.pop(FAIL_HOOK, None)
    res.update(device=suite.gpu, files=len(files), log=log.name, workers=workers,
               command=f"TINYDDPM_DEVICE={suite.gpu} python -m pytest -q -p no:cacheprovider -m 'not slow' "
                       f"{' '.join(spread)}{' ' if spread else ''}"
                       f"--junitxml={xml.name} <{len(files)} files: tests/ without {', '.join(EXCLUDED_TESTS)}>"
               if not suite.dry else f"TINYDDPM_DEVICE=cpu python -m pytest -q {' '.join(files)}")
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=cap)
            res["stopped_at_cap"] = False
        except subprocess.TimeoutExpired:
            res["stopped_at_cap"] = True
            rc = stop_pytest(proc, every=PYTEST_SIGINT_EVERY_S if workers == 1 else PYTEST_GRACE_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    res["exit_code"] = rc
    text = log.read_text(errors="replace")
    res.update(parse_junit(xml) if xml.is_file() else parse_summary(text))
    res["slowest"] = slowest_tests(text)
    progress = re.findall(r"\[\s*(\d+)%\]", text)   # pytest -q ends each line of dots with its progress
    res["progress_percent"] = int(progress[-1]) if progress else None
    res["passed_checks"] = (res.get("failed", 1) == 0 and res.get("errors", 1) == 0 and not res["stopped_at_cap"]
                            and res.get("passed", 0) > 0)


def pytest_workers(suite) -> int:
    """How many pytest processes share the GPU. The tests are small and launch-bound (28% of the suite
    took the whole 130 s cap serially on the H200), so with pytest-xdist installed, PYTEST_WORKERS processes
    (at most the CPU count) take tests one by one (--dist load: test_unet.py's two whole-network gradient checks,
    164 s and 107 s on the H200, would hold one process for 5 minutes if a file went to one process);
    without xdist, or in the dry run, one."""
    import importlib.util
    if suite.dry or importlib.util.find_spec("xdist") is None:
        return 1
    return max(1, min(PYTEST_WORKERS, os.cpu_count() or 1))


def stop_pytest(proc, every: float = PYTEST_SIGINT_EVERY_S) -> int:
    """SIGINT every `every` seconds until pytest exits, SIGKILL after PYTEST_GRACE_S; its exit code."""
    deadline = time.monotonic() + PYTEST_GRACE_S
    while time.monotonic() < deadline:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=min(every, max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    return proc.wait()


def parse_junit(path: Path) -> dict:
    """Counts and failures from pytest's JUnit XML (xunit1: each testcase has file, classname and name)."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    failures, seconds = [], 0.0
    root = ET.parse(path).getroot()
    for suite_el in root.iter("testsuite"):
        seconds += float(suite_el.get("time", 0) or 0)
    for case in root.iter("testcase"):
        name = case.get("name")
        if not name:  # the test that was running when pytest was interrupted
            continue
        file, classname = case.get("file", ""), case.get("classname", "")
        if not classname:   # a module that failed to collect: name is its dotted path
            nodeid = f"{file or name.replace('.', '/') + '.py'} (collecting the module)"
        elif file:
            cls = classname.split(".")[-1]
            nodeid = f"{file}::{cls + '::' if cls != Path(file).stem else ''}{name}"   # in a test class, or not
        else:
            nodeid = f"{classname.replace('.', '/')}.py::{name}"
        tags = {child.tag: child for child in case}
        kind = "errors" if "error" in tags else "failed" if "failure" in tags else \
            "skipped" if "skipped" in tags else "passed"
        counts[kind] += 1
        if kind in ("errors", "failed"):
            el = tags["error" if kind == "errors" else "failure"]
            message = (el.get("message") or "").strip().splitlines()
            if not message or message[0] == "collection failure":   # the cause is the last 'E   ...' line
                message = [ln[1:].strip() for ln in (el.text or "").splitlines() if ln.startswith("E ")][-1:] or message
            failures.append({"nodeid": nodeid, "kind": "error" if kind == "errors" else "failed",
                             "message": (message or [""])[0][:200]})
    return {**counts, "failures": failures, "pytest_seconds": round(seconds, 1), "source": "junit xml"}


def parse_summary(text: str) -> dict:
    """Fallback without the XML: the counts on pytest's last summary line and the FAILED/ERROR lines of -ra;
    without those either (pytest was killed), the progress characters of -q (. passed, F failed, E error,
    s skipped), which reach the log as the tests run."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    lines = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", lines[-1] if lines else ""):
        counts["errors" if word.startswith("error") else word] += int(number)
    source = "pytest's summary line (no XML was written)"
    if not lines:
        dots = "".join(re.findall(r"^([.FEsxX]+)[ \t]*(?:\[\s*\d+%\])?[ \t]*$", text, re.M))
        counts = {"passed": dots.count("."), "failed": dots.count("F"), "skipped": dots.count("s"),
                  "errors": dots.count("E")}
        source = "pytest's progress characters (pytest was killed: no XML, no summary, no test names)"
    failures = [{"nodeid": m.group(2), "kind": m.group(1).lower(), "message": (m.group(3) or "")[:200]}
                for m in re.finditer(r"^(FAILED|ERROR) (\S+)(?: - (.*))?$", text, re.M)]
    return {**counts, "failures": failures, "source": source}


def slowest_tests(text: str, n: int = 5) -> list:
    """The first lines of pytest's --durations block ('1.23s call  tests/x.py::test')."""
    return re.findall(r"^\s*(\d+\.\d+s (?:call|setup|teardown)\s+\S+)", text, re.M)[:n]
