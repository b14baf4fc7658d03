"""Part e, the report: OUT/report.md (a summary table, then a section per part) and OUT/report.json (every
figure), rewritten after every part so that a run cut short keeps what it measured."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .b_parity import PARITY_DTYPES, PARITY_TOL
from .common import PARTS, TITLES, fmt


def _json_ready(value):
    """NaN and infinities as None, NumPy scalars and arrays as Python values, paths as strings."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _mem(m) -> str:
    return fmt(m.get("peak_mb") if m else None, ".0f")


def summary_line(key: str, entry: dict) -> str:
    """One cell: what the part found."""
    r = entry.get("result") or {}
    if entry["status"] in ("skipped", "not selected") and not r:
        return entry.get("error", "")
    try:
        if key == "a" and "passed" in r:
            line = f"{r['passed']} passed, {r['failed']} failed, {r['errors']} errors, {r['skipped']} skipped"
            if r.get("stopped_at_cap"):
                line += f" (stopped at its cap after ~{fmt(r.get('progress_percent'), 'd', '?')}% of the tests)"
            return line
        if key == "b" and r.get("worst"):
            w, raised = r["worst"], sum(1 for x in r["rows"] if x["pass"] is False and x["err"] is None)
            failed = sum(1 for x in r["rows"] if x["pass"] is False and x["err"] is not None)
            line = (f"worst float64 {fmt(w['float64'], '.1e')} (limit {PARITY_TOL['float64']:.0e}), "
                    f"float32 {fmt(w['float32'], '.1e')} (limit {PARITY_TOL['float32']:.0e}) over "
                    f"{sum(1 for x in r['rows'] if x['err'] is not None)} tensors")
            line += f"; {failed} over the limit" if failed else ""
            line += f"; {raised} case(s) raised on the device" if raised else ""
            return line + (f"; sections that raised: {', '.join(r['errors'])}" if r.get("errors") else "")
        if key == "c" and r.get("ops"):
            parts = [f"ops: ours/torch geomean {fmt(r.get('ops_ratio_geomean'))} over {len(r['ops'])} shapes"]
            for t in r.get("train", []):
                parts.append(f"{t['preset']} step {fmt(t.get('ours_ms'), '.1f')} vs {fmt(t.get('torch_ms'), '.1f')} ms")
            for s in r.get("sampling", []):
                parts.append(f"{s['sampler']} {fmt(s.get('img_s'), '.1f')} img/s")
            errors = len(r.get("errors", {})) + sum("error" in x for k in ("ops", "train", "sampling")
                                                    for x in r.get(k, []))
            return "; ".join(parts) + (f"; {errors} error(s)" if errors else "")
        if key == "d" and "steps" in r:
            line = f"{r['steps']} steps in {fmt(r['train_seconds'], '.0f')} s ({fmt(r.get('img_s'), '.0f')} img/s)"
            if "quality" in r:
                q, fl = r["quality"], r["floor"]
                line += (f"; {r['samples']} samples: accuracy {100 * q['accuracy']:.1f}%, FID {fmt(q['fid'])} "
                         f"(real-vs-real floor {fmt(fl['fid'])})")
            return line
        if key == "m" and "loss_rel" in r:
            return (f"2 processes vs 1: losses {fmt(r['loss_rel'], '.1e')} apart (limit {r['loss_limit']:.0e}), "
                    f"weights {fmt(r['weights_worst'], '.1e')} (limit {r['weights_limit']:.1e}); "
                    f"{r.get('transport') or 'transport not printed'}")
        if key == "m" and "not_run" in r:
            return r["not_run"]
    except (KeyError, TypeError) as e:
        return f"(summary unavailable: {e})"
    return ""


def check_cell(entry) -> str:
    passed = (entry.get("result") or {}).get("passed_checks")
    return "-" if passed is None or entry["status"] != "ok" else ("pass" if passed else "**FAIL**")


def render_summary(suite) -> str:
    lines = ["| part | status | checks | seconds | cap s | result |", "|---|---|---|---:|---:|---|"]
    for key in PARTS:
        e = suite.report["parts"].get(key, {"status": "not selected", "seconds": None, "cap_s": None})
        lines.append(f"| {key}. {TITLES[key]} | {e['status']} | {check_cell(e)} | {fmt(e.get('seconds'), '.1f', '')} "
                     f"| {fmt(e.get('cap_s'), '.0f', '')} | {summary_line(key, e)} |")
    return "\n".join(lines)


def render_a(r) -> list:
    out = [f"`{r.get('command', '')}`; exit code {r.get('exit_code')}; "
           f"pytest's own time {fmt(r.get('pytest_seconds'), '.1f')} s; counts from the {r.get('source', '?')}; "
           f"full output in {r.get('log', '?')}.", ""]
    fails = r.get("failures", [])
    if fails:
        out += [f"{len(fails)} failing test(s):", "", "| test | kind | message |", "|---|---|---|"]
        out += [f"| `{f['nodeid']}` | {f['kind']} | {f['message'].replace('|', '/')} |" for f in fails[:40]]
        if len(fails) > 40:
            out.append(f"| ... {len(fails) - 40} more in report.json | | |")
    if r.get("slowest"):
        out += ["", "Slowest: " + "; ".join(s.replace("  ", " ") for s in r["slowest"])]
    return out


def render_errors(r) -> list:
    """Sections of a part that raised, with the end of their tracebacks."""
    out = []
    for name, text in (r.get("errors") or {}).items():
        out += ["", f"Section '{name}' raised:", "", "```", text.rstrip(), "```"]
    return out


def render_b(r) -> list:
    out = [f"GPU side: {r.get('gpu_side')}. Error = max |gpu - cpu| / max |cpu| per tensor; a cell shows the worst "
           f"tensor of the case. Limits: float64 {PARITY_TOL['float64']:.0e}, float32 {PARITY_TOL['float32']:.0e}. "
           "Yardstick: NumPy's own float32-vs-float64 error for the same case (float32 round-off).", "",
           "| section | case | float64 | float32 | float32 yardstick | result |", "|---|---|---|---|---|---|"]
    cases = {}
    for row in r.get("rows", []):
        cases.setdefault((row["section"], row["case"]), []).append(row)
    for (section, case), rows in cases.items():
        cells = []
        for dtype in PARITY_DTYPES:
            mine = [x for x in rows if x["dtype"] == dtype]
            judged = [x for x in mine if x["err"] is not None]
            raised = [x for x in mine if x["err"] is None and x["pass"] is False]
            if raised:
                cells.append(f"**raised** ({raised[0]['note'][:100]})")
            elif judged:
                worst = max(judged, key=lambda x: x["err"])
                cells.append(f"{worst['err']:.1e} ({worst['tensor']})")
            else:
                cells.append("not run" if mine else "-")
        yards = [x["yardstick"] for x in rows if x["dtype"] == "float32" and x["yardstick"] is not None]
        cells.append(f"{max(yards):.1e}" if yards else "-")
        ok = all(x["pass"] is not False for x in rows)
        out.append(f"| {section} | {case} | {' | '.join(cells).replace(chr(10), ' ')} | "
                   f"{'pass' if ok else '**FAIL**'} |")
    out += [f"\nnot run: {note}" for note in r.get("not_run", [])]
    return out + render_errors(r)


def render_c(r) -> list:
    out = [f"torch: {json.dumps(r.get('torch', {}))}", ""]
    out += [f"- {n}" for n in r.get("notes", [])]
    out += ["", "| op | shape | ours ms | torch ms | ratio | check vs torch | ours peak MB | torch peak MB |",
            "|---|---|---:|---:|---:|---|---:|---:|"]
    for o in r.get("ops", []):
        check = "-" if "check_err" not in o else f"{o['check_err']:.1e} {'ok' if o['check_ok'] else '**FAIL**'}"
        out.append(f"| {o['op']} | {o['shape']} | {fmt(o.get('ours_ms'), '.3f')} | {fmt(o.get('torch_ms'), '.3f')} "
                   f"| {fmt(o.get('ratio'))} | {check} | {_mem(o.get('ours_mem'))} | {_mem(o.get('torch_mem'))} |")
    out += ["", f"Ops: geometric mean of ours / torch = {fmt(r.get('ops_ratio_geomean'))}.", "",
            "| training step | batch | params | ours ms | torch ms | ratio | ours img/s | ours peak MB "
            "| torch peak MB | CUDA graph ms | graph loss vs eager |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for t in r.get("train", []):
        graph = fmt(t.get("graph_ms"), ".1f") if "graph_error" not in t else f"failed: {t['graph_error']}"
        out.append(f"| {t['preset']} preset (dropout 0) | {t['batch']} | {fmt(t.get('params'), ',')} "
                   f"| {fmt(t.get('ours_ms'), '.1f')} | {fmt(t.get('torch_ms'), '.1f')} | {fmt(t.get('ratio'))} "
                   f"| {fmt(t.get('ours_img_s'), '.0f')} | {_mem(t.get('ours_mem'))} | {_mem(t.get('torch_mem'))} "
                   f"| {graph} | {fmt(t.get('graph_vs_eager_loss_err'), '.1e')} |")
    out += ["", f"Sampling (ours; {r.get('sampling_network', '')}; guidance doubles the network's batch):", "",
            "| sampler | steps | images | guidance | seconds | img/s | peak MB |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for s in r.get("sampling", []):
        steps = str(s["steps"])
        if s["steps_timed"] < s["steps"]:
            steps += f" ({s['steps_timed']} timed, extrapolated)"
        out.append(f"| {s['sampler']} | {steps} | {s['images']} | {s['guidance']:g} | {fmt(s.get('seconds'))} "
                   f"| {fmt(s.get('img_s'), '.1f')} | {_mem(s.get('ours_mem'))} |")
    failed = [(k, x) for k in ("ops", "train", "sampling") for x in r.get(k, []) if "error" in x]
    if failed:
        out += ["", "Raised:"] + [f"- {k} {x.get('op') or x.get('preset') or x.get('sampler')} "
                                  f"{x.get('shape', '')}: {x['error']}" for k, x in failed]
    return out + render_errors(r)


def render_d(r) -> list:
    rows = [("preset", f"{r.get('preset')} (batch {r.get('batch')}, {r.get('params', 0):,} parameters)"),
            ("data", r.get("data")),
            ("training", f"{r.get('steps')} steps in {fmt(r.get('train_seconds'), '.1f')} s of a "
                         f"{fmt(r.get('budget_s'), '.0f')} s budget; {fmt(r.get('img_s'), '.0f')} img/s overall, "
                         f"{fmt(r.get('img_s_steady'), '.0f')} after the first 10 steps"),
            ("loss", f"{fmt(r.get('loss_first'), '.4f')} (first steps) -> "
                     f"{fmt(r.get('loss_last'), '.4f')} (last steps)")]
    if r.get("budget_note"):
        rows.append(("budget", r["budget_note"]))
    c = r.get("classifier")
    if c:
        rows.append(("classifier", f"test accuracy {fmt(c.get('test_accuracy'), '.4f')}, {c.get('note')}, "
                                   f"{c.get('seconds')} s"))
    if "samples" in r:
        interval = "" if r.get("guidance_interval") is None else " at t in [{}, {}]".format(*r["guidance_interval"])
        rows.append(("samples", f"{r['samples']} ({r['samples'] // 10} per digit), {r.get('sampler')} "
                                f"{r.get('sample_steps')} steps, guidance {r.get('guidance')}{interval}, "
                                f"{r.get('prediction', 'eps')}-prediction network, EMA weights: "
                                f"{fmt(r.get('sample_seconds'), '.1f')} s, {fmt(r.get('sample_img_s'), '.1f')} img/s"))
    q, fl = r.get("quality"), r.get("floor")
    if q and fl:
        rows += [("accuracy", f"{100 * q['accuracy']:.1f}% read as the digit asked for"),
                 ("FID-MNIST", f"{fmt(q['fid'])} (real-vs-real floor at n = {fl['n']}: {fmt(fl['fid'])}, "
                               f"{fl['from']})"),
                 ("precision / recall", f"{fmt(q['precision'], '.3f')} / {fmt(q['recall'], '.3f')} (floor "
                                        f"{fmt(fl['precision'], '.3f')} / {fmt(fl['recall'], '.3f')})"),
                 ("Inception Score", fmt(q["inception_score"])), ("reference", r.get("reference")),
                 ("picture", r.get("picture"))]
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def render_m(r) -> list:
    if "not_run" in r:
        return [f"Not run: {r['not_run']}."]
    rows = [("command", "examples/train_mnist.py --preset tiny --source subset, alone and under mpiexec -n 2"),
            ("seconds", f"1 process {r.get('seconds_1')}, 2 processes {r.get('seconds_2')}"),
            ("losses", f"{fmt(r.get('loss_rel'), '.1e')} relative apart (limit {r.get('loss_limit', 0):.0e})"),
            ("weights", f"{fmt(r.get('weights_worst'), '.1e')} largest difference "
                        f"(limit {r.get('weights_limit', 0):.1e}, 1% of lr per step)"),
            ("data parallel", r.get("transport") or "(no 'data parallel' line printed)")]
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def render_report(suite) -> str:
    h = suite.report["header"]
    lines = ["# tinyddpm GPU suite", ""]
    lines += [f"- **{k}**: {','.join(v) if isinstance(v, list) else v}" for k, v in h.items() if k != "argv"]
    lines += [f"- **wall time**: {suite.elapsed():.0f} s (target {suite.total:.0f} s)", ""]
    lines += ["## Summary", "", render_summary(suite), ""]
    renderers = {"a": render_a, "b": render_b, "c": render_c, "d": render_d, "m": render_m}
    for key in PARTS:
        entry = suite.report["parts"].get(key)
        if entry is None:
            continue
        lines += [f"## {key}. {TITLES[key]}: {entry['status']} ({entry.get('seconds')} s)", ""]
        if entry.get("result"):
            try:
                lines += renderers[key](entry["result"])
            except Exception as e:   # a report must come out even from odd partial results
                lines.append(f"(could not render: {type(e).__name__}: {e})")
        if entry.get("error"):
            lines += ["", "```", entry["error"].rstrip(), "```"]
        if entry.get("device_after"):
            lines += ["", f"**{entry['device_after']}**"]
        lines.append("")
    return "\n".join(lines)


def write_report(suite) -> str:
    """Write report.md and report.json (called after every part); return the Markdown."""
    suite.out.mkdir(parents=True, exist_ok=True)
    suite.report["wall_seconds"] = round(suite.elapsed(), 1)
    text = render_report(suite)
    (suite.out / "report.md").write_text(text)
    (suite.out / "report.json").write_text(json.dumps(_json_ready(suite.report), indent=1))
    return text
