"""tinyddpm/environment.py: every TINYDDPM_* variable declared once, read through one function, a bad value one line
naming the variable, its value and what is allowed; the table in docs/environment.md is the registry's."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tinyddpm import environment
from tinyddpm.environment import VARIABLES, EnvironmentVariableError, check_all, read, read_or

ROOT = Path(__file__).resolve().parents[1]
# every file that may name a TINYDDPM_* variable in code: the library, the example scripts, the lessons' shared file
CODE = sorted([*(ROOT / "tinyddpm").rglob("*.py"), *(ROOT / "examples").glob("*.py"), ROOT / "lessons" / "_common.py"])
PENDING = set()   # files allowed to read a TINYDDPM_* variable around the registry: none


@pytest.mark.parametrize("name, text, value", [
    ("TINYDDPM_DEVICE", "cuda", "cuda"), ("TINYDDPM_DEVICE", " CPU ", "cpu"),
    ("TINYDDPM_SHARDS", "3", 3), ("TINYDDPM_SHARDS", " 1", 1),
    ("TINYDDPM_MALLOC", "system", "system"), ("TINYDDPM_MALLOC", "Keep", "keep"),
    ("TINYDDPM_FUSED_KERNELS", "0", False), ("TINYDDPM_DEBUG", "1", True),
    ("TINYDDPM_CACHE", "/tmp/c", Path("/tmp/c")), ("TINYDDPM_LESSON_MODEL", "own", "own"),
])
def test_a_good_value_is_parsed(name, text, value):
    assert read(name, {name: text}) == value


@pytest.mark.parametrize("name", VARIABLES)
def test_unset_and_empty_mean_the_default(name):
    assert read(name, {}) is None and read(name, {name: ""}) is None
    assert read_or(name, "the default", {name: ""}) == "the default"


@pytest.mark.parametrize("name, text, allowed", [
    ("TINYDDPM_DEVICE", "tpu", "must be one of cpu, cuda"),
    ("TINYDDPM_SHARDS", "abc", "must be an integer >= 1"),
    ("TINYDDPM_SHARDS", "0", "must be an integer >= 1"),
    ("TINYDDPM_SHARDS", "-2", "must be an integer >= 1"),
    ("TINYDDPM_SHARDS", "2.5", "must be an integer >= 1"),
    ("TINYDDPM_MALLOC", "fast", "must be one of keep, system"),
    ("TINYDDPM_FUSED_KERNELS", "off", "must be 0 or 1"),
    ("TINYDDPM_DEBUG", "yes", "must be 0 or 1"),
    ("TINYDDPM_LESSON_FAST", "2", "must be 0 or 1"),
    ("TINYDDPM_LESSON_MODEL", "mine", "must be one of example, own"),
    ("TINYDDPM_CACHE", "   ", "must be a folder's path, not blank"),
    ("TINYDDPM_DATA", "\t", "must be a folder's path, not blank"),
])
def test_a_bad_value_is_one_line_naming_the_variable_its_value_and_what_is_allowed(name, text, allowed):
    with pytest.raises(EnvironmentVariableError) as raised:
        read(name, {name: text})
    message = str(raised.value)
    assert message.startswith(f"{name}={text!r}: {allowed} (") and "\n" not in message
    assert isinstance(raised.value, ValueError)          # caught wherever the library's argument errors are


def test_check_all_names_every_bad_variable_and_a_misspelt_one_at_once():
    env = {"TINYDDPM_SHARDS": "abc", "TINYDDPM_DEVICE": "tpu", "TINYDDPM_SHARD": "2", "TINYDDPM_TEST_FAULT": "x",
           "TINYDDPM_DEBUG": "1", "PATH": "/bin"}
    with pytest.raises(EnvironmentVariableError) as raised:
        check_all(env)
    message = str(raised.value)
    assert "TINYDDPM_SHARDS='abc'" in message and "TINYDDPM_DEVICE='tpu'" in message
    assert "TINYDDPM_SHARD: not a tinyddpm variable; did you mean TINYDDPM_SHARDS?" in message
    assert "TINYDDPM_TEST_FAULT" not in message and "\n" not in message   # far from every name: left alone
    assert check_all({"TINYDDPM_DEBUG": "1", "TINYDDPM_SHARDS": "2", "TINYDDPM_TEST_FAULT": "x"}) == \
        {"TINYDDPM_DEBUG": True, "TINYDDPM_SHARDS": 2}


def test_an_undeclared_name_is_a_bug_of_ours():
    with pytest.raises(KeyError, match="TINYDDPM_NOTHING is not declared"):
        read("TINYDDPM_NOTHING")


def test_the_docs_table_is_the_registry():
    text = (ROOT / "docs" / "environment.md").read_text()
    assert environment.markdown_table() in text
    assert "docs/environment.md" in (ROOT / "README.md").read_text()


def test_every_variable_the_code_names_is_declared():
    named = set()
    for path in CODE:
        named |= set(re.findall(r"\bTINYDDPM_[A-Z_]*[A-Z]\b", path.read_text()))
    assert named - set(VARIABLES) <= {"TINYDDPM_SHARD"}, named - set(VARIABLES)   # the misspelling in a docstring


def test_no_file_reads_a_variable_around_the_registry():
    # os.environ.get("TINYDDPM_X"), os.environ["TINYDDPM_X"], os.getenv("TINYDDPM_X"): only environment.py reads them
    direct = re.compile(r"(environ(\.get)?\s*[\[(]|getenv\s*\()\s*[\"']TINYDDPM_")
    offenders = [str(p.relative_to(ROOT)) for p in CODE
                 if direct.search(p.read_text()) and p.name != "environment.py"]
    assert set(offenders) <= PENDING, offenders


def test_the_readers_go_through_the_registry(monkeypatch):
    from tinyddpm.classifiers.judge import default_cache_dir
    from tinyddpm.data.mnist import mnist_dir
    from tinyddpm.parallel.threads import default_shards

    monkeypatch.setenv("TINYDDPM_SHARDS", "3")
    assert default_shards() == 3
    monkeypatch.setenv("TINYDDPM_SHARDS", "abc")          # before: int('abc'), a traceback after a whole run
    with pytest.raises(EnvironmentVariableError, match="TINYDDPM_SHARDS='abc'"):
        default_shards()
    monkeypatch.setenv("TINYDDPM_CACHE", "/tmp/somewhere")
    assert default_cache_dir() == Path("/tmp/somewhere/classifier")
    assert mnist_dir(dataset="fashion-mnist") == Path("/tmp/somewhere/fashion-mnist")
    monkeypatch.setenv("TINYDDPM_CACHE", "  ")
    with pytest.raises(EnvironmentVariableError, match="TINYDDPM_CACHE='  ': must be a folder"):
        default_cache_dir()


def run_python(code: str, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("TINYDDPM_")}
    return subprocess.run([sys.executable, "-c", code], env={**full, **env}, capture_output=True, text=True,
                          timeout=120)


def test_a_bad_malloc_setting_does_not_break_import_but_is_refused_by_check_all():
    done = run_python("import tinyddpm; print(tinyddpm.keep_freed_memory())", TINYDDPM_MALLOC="fast")
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr   # malloc left as it is
    done = run_python("from tinyddpm.environment import check_all; check_all()", TINYDDPM_MALLOC="fast")
    assert done.returncode == 1 and "TINYDDPM_MALLOC='fast': must be one of keep, system" in done.stderr


def test_the_library_device_reads_the_registry():
    done = run_python("import tinyddpm; print(tinyddpm.get_device())", TINYDDPM_DEVICE=" CPU ")
    assert done.returncode == 0 and done.stdout.strip() == "cpu", done.stderr
    done = run_python("import tinyddpm; tinyddpm.get_device()", TINYDDPM_DEVICE="gpu")
    assert "TINYDDPM_DEVICE='gpu': must be one of cpu, cuda" in done.stderr


def test_a_lesson_refuses_a_bad_variable_in_one_line():
    done = subprocess.run([sys.executable, "-c", "import _common"], cwd=ROOT / "lessons", capture_output=True,
                          text=True, timeout=120, env={**os.environ, "TINYDDPM_LESSON_FAST": "yes"})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "TINYDDPM_LESSON_FAST='yes': must be 0 or 1" in lines[0]
