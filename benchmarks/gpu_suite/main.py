"""The run: the header, then each selected part in order, timed, capped and guarded (run_part), the report
rewritten after each; the Markdown printed at the end, its summary table last. Exit status 0 only when
every selected part ran and passed its checks."""
from __future__ import annotations

import os
import time
import traceback

from tinyddpm import backend

from .a_tests import part_a_tests
from .b_parity import part_b_parity
from .c_timings import part_c_timings
from .common import FAIL_HOOK, PARTS, TITLES, PartTimeout, Suite, make_header, parse_args, tail, time_limit
from .d_train_eval import part_d_train_eval
from .m_mpi import part_m_mpi
from .report import render_summary, write_report


PART_FUNCTIONS = {"a": part_a_tests, "b": part_b_parity, "c": part_c_timings, "d": part_d_train_eval,
                  "m": part_m_mpi}


def run_part(suite, key: str, fn, cap):
    """Run one part under its cap; record status, seconds, partial results and any error; check the device."""
    entry = {"title": TITLES[key], "status": "running", "seconds": 0.0, "cap_s": cap, "result": {}}
    suite.report["parts"][key] = entry
    if suite.broken:
        entry.update(status="skipped", error=f"skipped: {suite.broken}")
        print(f"\n== part {key}: {TITLES[key]}: skipped ({suite.broken})", flush=True)
        return
    print(f"\n== part {key}: {TITLES[key]} (cap {cap:.0f} s, {suite.elapsed():.0f} s into the run)", flush=True)
    start = time.perf_counter()
    try:
        if os.environ.get(FAIL_HOOK, "") == key:
            raise RuntimeError(f"deliberate failure of part {key} ({FAIL_HOOK}={key})")
        with time_limit(None if key == "a" else cap):  # part a stops its subprocess itself
            fn(suite, entry["result"], cap)
        entry["status"] = "ok"
    except PartTimeout as e:
        entry.update(status="timeout", error=f"{e}; results up to then are kept\n{tail(traceback.format_exc())}")
    except Exception as e:
        entry.update(status="failed", error=tail(traceback.format_exc()))
        print(f"part {key} failed: {type(e).__name__}: {e}", flush=True)
    entry["seconds"] = round(time.perf_counter() - start, 1)
    try:
        suite.free_gpu_memory()
    except Exception:
        pass
    why = suite.device_check()
    if why:
        suite.broken = f"the device stopped answering after part {key}: {why}"
        entry["device_after"] = suite.broken
    print(f"== part {key}: {entry['status']} in {entry['seconds']:.1f} s", flush=True)
    write_report(suite)


def part_cap(suite, key: str) -> float:
    if key == "d":
        return suite.budget + suite.sizes.eval_cap_s + 30   # its budget shrinks to fit; this is the backstop
    return suite.sizes.caps_s[key]


def main(argv=None) -> int:
    args = parse_args(argv)
    suite = Suite(args)
    suite.out.mkdir(parents=True, exist_ok=True)
    backend.set_device("cpu")   # NumPy is the reference side; each part picks the device per side
    suite.report["header"] = make_header(suite)
    print(f"gpu_suite: {suite.report['header']['mode']}; parts {','.join(args.parts)}; out {suite.out}", flush=True)
    try:
        train, test = suite.data()
        suite.report["header"]["data"] = f"{train.source}; test: {test.source}"
    except Exception as e:
        suite.report["header"]["data"] = f"could not load MNIST: {type(e).__name__}: {e}"
    write_report(suite)
    for key in PARTS:
        if key in args.parts:
            run_part(suite, key, PART_FUNCTIONS[key], part_cap(suite, key))
    text = write_report(suite)
    print("\n" + text)
    print("## Summary (again, last)\n\n" + render_summary(suite))
    print(f"\ngpu_suite: wrote {suite.out / 'report.md'} and {suite.out / 'report.json'} "
          f"after {suite.elapsed():.0f} s", flush=True)
    selected = [suite.report["parts"][k] for k in args.parts]
    good = all(e["status"] == "ok" and (e["result"] or {}).get("passed_checks", True) for e in selected)
    return 0 if good else 1
