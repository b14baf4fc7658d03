"""progress.Progress: a bar on a terminal; in a log, a line at each 1/lines mark that a report passes and a last one
on close (not after a failure); silent when disabled or with lines=0 off a terminal. No assertion reads a time."""
import io

import pytest

from tinyddpm import progress
from tinyddpm.progress import Progress


def steps_of(text: str) -> list:
    """The 'desc: step k/n' heads of the log lines."""
    return [line.split("  ")[0] for line in text.splitlines()]


def test_lines_at_each_mark_a_report_passes_and_a_last_one():
    log = io.StringIO()
    with Progress(40, "train", lines=4, stream=log) as bar:
        for step in range(1, 41):
            bar.advance()
            if step % 3 == 0:                     # reports every 3 steps: a line at the first report past each mark
                bar.report(f"loss {step}")
    assert steps_of(log.getvalue()) == ["train: step 12/40", "train: step 21/40", "train: step 30/40",
                                        "train: step 40/40"]
    lines = log.getvalue().splitlines()
    assert lines[0].split("  ")[1] == "loss 12" and lines[-1].split("  ")[1] == "loss 39"
    assert all("ETA" in line for line in lines[:-1]) and "ETA" not in lines[-1]


def test_a_resumed_run_counts_from_where_it_was():
    log = io.StringIO()
    with Progress(100, "train", initial=50, lines=10, stream=log) as bar:
        for _ in range(30):
            bar.update()
    assert steps_of(log.getvalue()) == [f"train: step {k}/100" for k in (60, 70, 80)]   # step 80 printed once


@pytest.mark.parametrize("kwargs", [{"enabled": False}, {"lines": 0}])
def test_silent(kwargs):
    log = io.StringIO()
    with Progress(20, "x", stream=log, **kwargs) as bar:
        for _ in range(20):
            bar.update(info="y")
    assert log.getvalue() == ""


def test_no_last_line_after_a_failure():
    log = io.StringIO()
    with pytest.raises(RuntimeError):
        with Progress(20, "x", lines=2, stream=log) as bar:
            for step in range(15):
                bar.update()
            raise RuntimeError("stopped")
    assert steps_of(log.getvalue()) == ["x: step 10/20"]


def test_on_a_terminal_a_bar_and_no_lines(monkeypatch, capsys):
    monkeypatch.setattr(progress, "_is_terminal", lambda stream: True)
    log = io.StringIO()
    with Progress(30, "bar", lines=3, stream=log) as bar:
        for _ in range(30):
            bar.update(info="loss 1")
    assert log.getvalue() == "" and "30/30" in capsys.readouterr().err
    with Progress(30, "plain", bar=False, lines=3, stream=log) as bar:   # bar=False: lines even on a terminal
        for _ in range(30):
            bar.update()
    assert steps_of(log.getvalue())[-1] == "plain: step 30/30"
