"""Every lesson and every worked solution runs top to bottom in fast mode, its checks pass, and the course is whole.

The lessons are scripts (python lessons/NN_topic.py), and so are their solutions (python
lessons/solutions/NN_topic.py), so each runs in a subprocess exactly as a reader runs it, with --fast (tiny
sizes, same code paths) and its output folder in a temporary directory. The fast-mode network the sampling
lessons need is trained once per test session and copied into each script's folder (it would otherwise be
trained again by every script: a few seconds each).

Besides the runs: the lessons are numbered 00, 01, ... without gaps, the index (lessons/README.md) names every
lesson, every lesson has its three exercises (run, modify, create) and a solution file of the same name, and
every solution file belongs to a lesson.
"""
import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LESSONS = Path(__file__).resolve().parent.parent / "lessons"
SOLUTIONS = LESSONS / "solutions"
LESSON_FILES = sorted(LESSONS.glob("[0-9][0-9]_*.py"))
SOLUTION_FILES = sorted(SOLUTIONS.glob("[0-9][0-9]_*.py"))
FIGURE_SUFFIXES = {".png", ".gif"}
EXERCISES = (r"1\. run:", r"2\. modify:", r"3\. create:")


def exercises(path: Path) -> str:
    """The "Try this" section of a script's docstring ('' if it has none)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return doc[doc.index("Try this"):] if "Try this" in doc else ""


def test_the_lessons_are_numbered_from_00_without_gaps():
    numbers = [int(p.name[:2]) for p in LESSON_FILES]
    assert numbers == list(range(0, 22)), [p.name for p in LESSON_FILES]


def test_the_index_lists_every_lesson():
    index = (LESSONS / "README.md").read_text()
    for path in LESSON_FILES:
        assert path.name in index, f"lessons/README.md does not mention {path.name}"


@pytest.mark.parametrize("lesson", LESSON_FILES, ids=lambda p: p.stem)
def test_every_lesson_has_three_exercises_run_modify_create(lesson):
    section = exercises(lesson)
    assert section, f"{lesson.name} has no 'Try this' section in its docstring"
    missing = [e.replace("\\", "") for e in EXERCISES if not re.search(e, section)]
    assert not missing, f"{lesson.name}: its 'Try this' section lacks {missing}"
    assert len(re.findall(r"^\s*\d\.\s", section, re.M)) == 3, f"{lesson.name}: not exactly three exercises"


@pytest.mark.parametrize("lesson", LESSON_FILES, ids=lambda p: p.stem)
def test_every_lesson_with_exercises_has_a_solution(lesson):
    if not exercises(lesson):
        pytest.skip(f"{lesson.name} has no exercises")
    assert (SOLUTIONS / lesson.name).exists(), f"no worked solution lessons/solutions/{lesson.name}"


@pytest.mark.parametrize("lesson", LESSON_FILES, ids=lambda p: p.stem)
def test_the_docstring_names_the_folder_the_lesson_writes(lesson):
    """output_dir(__file__) writes lessons/output/<the lesson's file name>/: the docstring must name that folder
    (lessons were renumbered once, and five docstrings kept their old folders)."""
    doc = ast.get_docstring(ast.parse(lesson.read_text())) or ""
    named = set(re.findall(r"lessons/output/([0-9]{2}_[a-z0-9_]+)/", doc))
    assert named == {lesson.stem}, named


@pytest.mark.parametrize("lesson", LESSON_FILES, ids=lambda p: p.stem)
def test_every_lesson_opens_as_a_notebook(lesson):
    """'# %%' cell markers (the percent format of VS Code, PyCharm and jupytext) before every section(...) and the
    exercises, so that each cell is one section (what precedes the first marker, the docstring and the imports, is a
    cell of its own in that format); the file still parses as the script it is."""
    source = lesson.read_text()
    ast.parse(source)
    lines = source.splitlines()
    markers = [i for i, line in enumerate(lines) if line.startswith("# %%")]
    assert markers, f"{lesson.name} has no '# %%' cell markers"
    for i, line in enumerate(lines):
        if line.startswith(("section(", "try_this(")):
            assert any(i - 3 <= m < i for m in markers), \
                f"{lesson.name}, line {i + 1}: {line.strip()[:60]} starts no cell ('# %%' within the 3 lines above)"


@pytest.mark.parametrize("lesson", LESSON_FILES, ids=lambda p: p.stem)
def test_every_lesson_ends_by_pointing_to_the_next(lesson):
    """A 'Next:' line names the following lesson's file (the last lesson: the map in lessons/README.md)."""
    i = LESSON_FILES.index(lesson)
    target = f"lessons/{LESSON_FILES[i + 1].name}" if i + 1 < len(LESSON_FILES) else "lessons/README.md"
    assert re.search(r"Next: [^\n]*" + re.escape(target), lesson.read_text()), \
        f"{lesson.name} has no 'Next:' line naming {target}"


def test_every_solution_belongs_to_a_lesson():
    names = {p.name for p in LESSON_FILES}
    strays = [p.name for p in SOLUTION_FILES if p.name not in names]
    assert not strays, f"solutions without a lesson of the same name: {strays}"


@pytest.fixture(scope="session")
def fast_network(tmp_path_factory):
    """The lessons' fast-mode network (_common.trained_model), trained once for the session; returns its folder."""
    root = tmp_path_factory.mktemp("lessons_network")
    env = {**os.environ, "TINYDDPM_LESSON_OUT": str(root), "MPLBACKEND": "Agg", "TINYDDPM_DEVICE": "cpu"}
    run = subprocess.run([sys.executable, "-c", "from _common import trained_model; trained_model()", "--fast"],
                         cwd=LESSONS, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"training the fast-mode lesson network failed:\n{(run.stdout + run.stderr)[-4000:]}"
    return root / "_model_fast"


def run_fast(script: Path, out: Path, fast_network: Path) -> subprocess.CompletedProcess:
    """Run a lesson or solution script with --fast, its figures in `out`, the session's network copied there."""
    shutil.copytree(fast_network, out / fast_network.name)
    env = {**os.environ, "TINYDDPM_LESSON_OUT": str(out), "MPLBACKEND": "Agg", "TINYDDPM_DEVICE": "cpu"}
    return subprocess.run([sys.executable, str(script), "--fast"], cwd=LESSONS.parent, env=env,
                          capture_output=True, text=True, timeout=300)


def check_run(script: Path, run: subprocess.CompletedProcess, min_ok: int) -> None:
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"{script.name} exited {run.returncode}:\n{output[-4000:]}"
    assert "All checks passed" in run.stdout, output[-4000:]
    assert "[FAILED]" not in run.stdout
    assert len(re.findall(r"\[ok\]", run.stdout)) >= min_ok, f"{script.name} checks fewer than {min_ok} things"
    for line in re.findall(r"figure: (.+)", run.stdout):
        assert Path(line.strip()).exists(), f"{script.name} announced {line} but did not write it"


@pytest.mark.parametrize("lesson", LESSON_FILES, ids=lambda p: p.stem)
def test_lesson_runs_in_fast_mode(lesson, tmp_path, fast_network):
    run = run_fast(lesson, tmp_path, fast_network)
    check_run(lesson, run, min_ok=2)
    assert "Try this" in run.stdout, f"{lesson.name} prints no exercises"
    folder = tmp_path / lesson.stem
    figures = [p for p in folder.rglob("*") if p.suffix in FIGURE_SUFFIXES and p.stat().st_size > 0]
    assert figures, f"{lesson.name} wrote no figure into {folder}"


@pytest.mark.parametrize("solution", SOLUTION_FILES, ids=lambda p: f"solution_{p.stem}")
def test_solution_runs_in_fast_mode(solution, tmp_path, fast_network):
    run = run_fast(solution, tmp_path, fast_network)
    check_run(solution, run, min_ok=3)                  # at least one verified answer per exercise
