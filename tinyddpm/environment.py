"""Every TINYDDPM_* environment variable, declared and read in one place, checked like a command-line option.

    shards = environment.read("TINYDDPM_SHARDS")      # None when unset, else an int >= 1; a bad value raises
    environment.check_all()                           # every variable at once: the example scripts call it first

Why one place. A variable read with ``os.environ.get`` where it is used is an option nobody checks: before this
module TINYDDPM_SHARDS=abc crashed with a traceback after a whole training run, and TINYDDPM_DEVICE=cuda was
silently ignored by three scripts. Here each variable has a name, the values it allows, its default and its
meaning (``VARIABLES``, which docs/environment.md shows as a table: ``markdown_table()`` writes it),
and one reader that parses it or raises ``EnvironmentVariableError``, one line naming the variable, its value and
what is allowed:

    TINYDDPM_SHARDS='abc': must be an integer >= 1 (batch shards on the CPU's cores; unset: one per BLAS thread)

The rules, the same for every variable:
  unset or empty        the default (``read`` returns None for "unset" where the default depends on the caller)
  surrounding spaces    ignored in choices and numbers (' cuda' is cuda); a path of spaces only is refused
  choices               compared in lower case (CUDA is cuda)
  a misspelt name       TINYDDPM_SHARD=2 is refused by ``check_all`` with the name it resembles: a typo in a
                        variable would otherwise change nothing, silently. Names far from every known one are
                        left alone (tests and tools may set their own).

``EnvironmentVariableError`` is a ValueError, so code that catches the library's argument errors catches it too;
the example scripts report it in one line with exit status 2 (examples/_cli.py).
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


class EnvironmentVariableError(ValueError):
    """A TINYDDPM_* variable holds a value it does not allow. The message is one line: name, value, what is allowed."""


@dataclass(frozen=True)
class Variable:
    name: str
    allowed: str                       # in words, for the message and the table
    default: str                       # in words: what happens when it is unset or empty
    meaning: str                       # one sentence
    parse: Callable[[str], object]     # the stripped text -> the value; ValueError(what is allowed) when bad


def choice(*values: str):
    """A parser accepting one of ``values`` (any case)."""
    def parse(text: str) -> str:
        if text.lower() not in values:
            raise ValueError(f"must be one of {', '.join(values)}")
        return text.lower()
    return parse


def flag(text: str) -> bool:
    """'1' on, '0' off: nothing else, so that TINYDDPM_DEBUG=no cannot mean yes."""
    if text not in ("0", "1"):
        raise ValueError("must be 0 or 1")
    return text == "1"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("must be an integer >= 1") from None
    if value < 1:
        raise ValueError("must be an integer >= 1")
    return value


def folder(text: str) -> Path:
    """A path (~ expanded); whether it exists or can be written is checked where it is used."""
    if not text:                       # the text is stripped: only spaces were given
        raise ValueError("must be a folder's path, not blank")
    return Path(text).expanduser()


def _declare(*variables: Variable) -> dict:
    return {v.name: v for v in variables}


# The registry. Who reads each: the comment above it.
VARIABLES = _declare(
    # tinyddpm/backend.py (get_device); examples/_cli.py (choose_device)
    Variable("TINYDDPM_DEVICE", "cpu, cuda",
             "cpu in the library and evaluate.py; train_mnist.py, train_images.py and sample.py use cuda when CuPy "
             "finds a GPU, else cpu",
             "where arrays live: NumPy (cpu) or CuPy (cuda); cuda without CuPy or a GPU is an error, never a silent "
             "fallback; a script's --device wins over it", choice("cpu", "cuda")),
    # tinyddpm/parallel/threads.py (default_shards)
    Variable("TINYDDPM_SHARDS", "an integer >= 1", "one per BLAS thread (all cores, or OMP_NUM_THREADS)",
             "batch shards run on the CPU's cores at once; 1 turns sharding off", positive_int),
    # tinyddpm/allocator.py (keep_freed_memory)
    Variable("TINYDDPM_MALLOC", "keep, system", "keep",
             "keep: glibc keeps freed memory for the next training step; system: malloc's own settings",
             choice("keep", "system")),
    # tinyddpm/kernels/groupnorm_silu.py (its is-the-kernel-on check)
    Variable("TINYDDPM_FUSED_KERNELS", "0, 1", "1",
             "0 turns the fused CUDA kernels off (GroupNorm+SiLU): the plain CuPy ops run instead", flag),
    # tinyddpm/training/loop.py (train)
    Variable("TINYDDPM_CUDA_GRAPH", "0, 1", "0",
             "1: on a GPU without MPI, training replays each step from a CUDA graph after 2 eager steps "
             "(training/cuda_graph.py; off until it has run on a GPU)", flag),
    # examples/_cli.py (run, main)
    Variable("TINYDDPM_DEBUG", "0, 1", "0", "1: the example scripts print the traceback above an error's one line "
             "(as --debug)", flag),
    # tinyddpm/classifiers/judge.py (default_cache_dir), tinyddpm/data/mnist.py (mnist_dir)
    Variable("TINYDDPM_CACHE", "a folder", "~/.cache/tinyddpm",
             "where classifiers, noisy classifiers and Fashion-MNIST are cached", folder),
    # tinyddpm/data/mnist.py (mnist_dir)
    Variable("TINYDDPM_DATA", "a folder", "~/.cache/tinyddpm/mnist", "where MNIST's IDX files are kept", folder),
    # lessons/_common.py
    Variable("TINYDDPM_LESSON_OUT", "a folder", "lessons/output", "where the lessons write their figures", folder),
    Variable("TINYDDPM_LESSON_FAST", "0, 1", "0", "1: the lessons run with tiny sizes (as --fast)", flag),
    Variable("TINYDDPM_LESSON_MODEL", "example, own", "example",
             "own: the lessons train and use their small network instead of runs/mnist/checkpoint.npz or the shipped "
             "lessons/assets/network.npz",
             choice("example", "own")),
)


def read(name: str, environ=None):
    """The value of variable ``name`` parsed, or None when it is unset or empty; EnvironmentVariableError if bad.

    ``environ``: a mapping to read instead of os.environ (tests).
    """
    variable = VARIABLES.get(name)
    if variable is None:   # a bug of ours: every variable the project reads is declared above
        raise KeyError(f"tinyddpm.environment: {name} is not declared in VARIABLES")
    raw = (os.environ if environ is None else environ).get(name, "")
    if raw == "":
        return None
    try:
        return variable.parse(raw.strip())
    except ValueError as e:
        raise EnvironmentVariableError(f"{name}={raw!r}: {e} ({variable.meaning}; unset: {variable.default})") \
            from None


def read_or(name: str, default, environ=None):
    """read(name), or ``default`` when it is unset or empty."""
    value = read(name, environ)
    return default if value is None else value


def check_all(environ=None) -> dict:
    """{name: value} of every variable that is set; one EnvironmentVariableError naming every bad one (joined by
    '; ') and every misspelt name, so that a user fixes them all in one go."""
    environ = os.environ if environ is None else environ
    values, problems = {}, []
    for name in VARIABLES:
        try:
            value = read(name, environ)
        except EnvironmentVariableError as e:
            problems.append(str(e))
            continue
        if value is not None:
            values[name] = value
    for name in sorted(environ):
        if name.startswith("TINYDDPM_") and name not in VARIABLES:
            near = difflib.get_close_matches(name, VARIABLES, n=1, cutoff=0.85)
            if near:
                problems.append(f"{name}: not a tinyddpm variable; did you mean {near[0]}? (docs/environment.md "
                                "lists them)")
    if problems:
        raise EnvironmentVariableError("; ".join(problems))
    return values


def markdown_table() -> str:
    """The table of docs/environment.md: every variable, its values, its default and its meaning."""
    rows = ["| variable | values | unset or empty | meaning |", "|---|---|---|---|"]
    rows += [f"| `{v.name}` | {v.allowed} | {v.default} | {v.meaning} |" for v in VARIABLES.values()]
    return "\n".join(rows)
