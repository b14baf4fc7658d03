"""Every lesson runs top to bottom in fast mode, its checks pass and its figures are written.

The lessons are scripts (python lessons/NN_topic.py), so each runs in a subprocess exactly as a reader
runs it, with --fast (tiny sizes, same code paths) and its output folder in a temporary directory.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

LESSONS = Path(__file__).resolve().parent.parent / "lessons"
LESSON_FILES = sorted(LESSONS.glob("[0-9][0-9]_*.py"))
FIGURE_SUFFIXES = {".png", ".gif"}


def test_the_lessons_are_numbered_from_00_without_gaps():
    numbers = [int(p.name[:2]) for p in LESSON_FILES]
    assert numbers == list(range(0, 20)), [p.name for p in LESSON_FILES]


def test_the_index_lists_every_lesson():
    index = (LESSONS / "README.md").read_text()
    for path in LESSON_FILES:
        assert path.name in index, f"lessons/README.md does not mention {path.name}"


@pytest.mark.parametrize("lesson", LESSON_FILES, ids=lambda p: p.stem)
def test_lesson_runs_in_fast_mode(lesson, tmp_path):
    env = {**os.environ, "TINYDDPM_LESSON_OUT": str(tmp_path), "MPLBACKEND": "Agg", "TINYDDPM_DEVICE": "cpu"}
    run = subprocess.run([sys.executable, str(lesson), "--fast"], cwd=LESSONS.parent, env=env,
                         capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"{lesson.name} exited {run.returncode}:\n{output[-4000:]}"
    assert "All checks passed" in run.stdout, output[-4000:]
    assert "[FAILED]" not in run.stdout
    assert len(re.findall(r"\[ok\]", run.stdout)) >= 2, f"{lesson.name} checks fewer than two things"
    assert "Try this" in run.stdout, f"{lesson.name} prints no exercises"
    folder = tmp_path / lesson.stem
    figures = [p for p in folder.rglob("*") if p.suffix in FIGURE_SUFFIXES and p.stat().st_size > 0]
    assert figures, f"{lesson.name} wrote no figure into {folder}"
    for line in re.findall(r"figure: (.+)", run.stdout):
        assert Path(line.strip()).exists(), f"{lesson.name} announced {line} but did not write it"
