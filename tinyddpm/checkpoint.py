"""Checkpoints: one .npz file holding everything needed to resume training or to sample.

    save_checkpoint("runs/mnist/ckpt.npz", config=cfg, params=params, ema=ema.state_dict(),
                    optimizer_state=opt.state_dict(), step=opt.t,
                    rng_state={"noise": generator_state(rng), "batches": batches.state_dict()})
    ckpt = load_checkpoint("runs/mnist/ckpt.npz")     # arrays on the current device
    opt.load_state_dict(ckpt.optimizer_state); ema.load_state_dict(ckpt.ema)
    rng = restore_generator(ckpt.rng_state["noise"]); batches.load_state_dict(ckpt.rng_state["batches"])

Layout of the .npz (plain arrays only: it loads with allow_pickle=False):

    tinyddpm/magic            uint8 bytes of "tinyddpm checkpoint": what the file is
    tinyddpm/format_version   int64 0-d, FORMAT_VERSION
    meta/manifest             JSON (as uint8 UTF-8 bytes): the keys of every part, and which values
                              were Python scalars, so that a missing array is noticed and scalars
                              come back as scalars
    meta/config               JSON: the run's configuration dict
    meta/step                 int64 0-d
    meta/rng_state, meta/extra  JSON, when given
    params/<name>, ema/<key>, optim/<key>   the arrays (CuPy arrays are copied to the host first)

The file is written atomically: into a temporary file in the same directory, flushed and fsync'ed,
then renamed over the old checkpoint with os.replace. A crash mid-write leaves the previous
checkpoint intact; a reader never sees half a file.

Temporary files left by a killed write. The temporary file is ``.<name>.<pid>.<host>.<hex>.tmp``: the
writer's process id, 8 hex digits of a hash of its machine's name, 8 random hex digits. Each save first
removes the temporary files of the same checkpoint name in its folder that no one can still be writing:
those of this machine whose process is no longer alive, and any not modified for 24 hours (no write takes
that long: this catches a process id reused since, files of other machines sharing the folder, whose
processes cannot be seen from here, and the randomly named temporary files of earlier tinyddpm releases). A file of a live process, including this one, is never touched. On
Windows, where asking whether a process is alive would signal it, only the 24-hour rule applies.

Random state: a NumPy Generator's state is a dict of integers, stored as JSON, so a CPU run resumes
bit-identically. CuPy's generators keep their state in GPU memory with no way to export it, so on the
GPU ``generator_state`` records only the backend and ``restore_generator`` returns a *re-seeded*
generator (pass ``reseed=``, e.g. derived from the run's seed and the step): the resumed run is
repeatable, but its noise differs from that of an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import socket
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .backend import get_device, import_cupy, is_cupy_array, to_numpy

MAGIC = "tinyddpm checkpoint"
FORMAT_VERSION = 1
PARTS = {"params": "params", "ema": "ema", "optimizer_state": "optim"}  # Checkpoint field -> key prefix


class CheckpointError(ValueError):
    """A file that is not a readable tinyddpm checkpoint; the message names the file and the problem."""


@dataclass
class Checkpoint:
    path: str
    config: dict
    params: dict                        # {name: array} on the requested device
    ema: dict | None = None             # an EMA.state_dict(), or None
    optimizer_state: dict | None = None  # an AdamW.state_dict(), or None
    step: int = 0
    rng_state: dict | None = None       # whatever JSON dict was saved (generator and batch states)
    extra: dict | None = None           # whatever JSON dict was saved (metrics, notes)
    format_version: int = FORMAT_VERSION
    manifest: dict = field(default_factory=dict, repr=False)

    @property
    def ema_params(self) -> dict | None:
        """The EMA-averaged weights {name: array} to sample with (None when no EMA was saved)."""
        if self.ema is None:
            return None
        return {key[len("avg/"):]: a for key, a in self.ema.items() if key.startswith("avg/")}


# --------------------------------------------------------------------------------------------
# JSON pieces
# --------------------------------------------------------------------------------------------

def _plain(value):
    """NumPy scalars and small arrays (a bit generator's state holds some) as Python numbers and lists."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _encode_json(what: str, value) -> np.ndarray:
    try:
        text = json.dumps(value, default=_plain, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"save_checkpoint: {what} must be JSON serialisable: {e}") from None
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def _decode_json(path, key: str, array):
    try:
        return json.loads(np.asarray(array, dtype=np.uint8).tobytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: {key} is not valid JSON ({e})") from None


# --------------------------------------------------------------------------------------------
# random generators
# --------------------------------------------------------------------------------------------

def generator_state(rng) -> dict:
    """A JSON-ready dict describing ``rng`` (NumPy: its exact state; CuPy: only the backend, see above)."""
    if is_cupy_array(rng):  # checked by the type's module name: any CuPy object
        return {"backend": "cupy"}
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"generator_state: expected a numpy or cupy Generator, got {type(rng).__name__}")
    state = json.loads(json.dumps(rng.bit_generator.state, default=_plain))  # arrays in some states become lists
    return {"backend": "numpy", "bit_generator": state}


def restore_generator(state: dict, reseed: int | None = None):
    """The generator described by ``generator_state``: NumPy exactly; CuPy re-seeded with ``reseed``."""
    backend = state.get("backend")
    if backend == "numpy":
        bit_state = dict(state["bit_generator"])
        bit_generator = getattr(np.random, bit_state["bit_generator"])()
        bit_generator.state = bit_state
        return np.random.Generator(bit_generator)
    if backend == "cupy":
        if reseed is None:
            raise ValueError("restore_generator: a CuPy generator's state cannot be saved; pass reseed=<int> "
                             "(e.g. derived from the run's seed and step) to get a fresh, repeatable one")
        return import_cupy().random.default_rng(reseed)
    raise ValueError(f"restore_generator: unknown backend {backend!r} in {state!r}")


# --------------------------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------------------------

def _part_arrays(what: str, prefix: str, part: dict, arrays: dict, manifest: dict) -> None:
    """Copy a flat dict into ``arrays`` under ``prefix/``; record its keys and its scalar keys."""
    if not isinstance(part, dict):
        raise TypeError(f"save_checkpoint: {what} must be a dict {{name: array}}, got {type(part).__name__}")
    keys, scalars = [], []
    for key, value in part.items():
        if not isinstance(key, str):
            raise TypeError(f"save_checkpoint: {what} keys must be strings, got {key!r}")
        if isinstance(value, (bool, int, float, np.generic)):
            scalars.append(key)
            value = np.asarray(value)
        elif not hasattr(value, "shape"):
            raise TypeError(f"save_checkpoint: {what}[{key!r}] must be an array or a number, "
                            f"got {type(value).__name__}")
        value = to_numpy(value)  # CuPy -> host copy; NumPy unchanged
        if value.dtype.hasobject:
            raise TypeError(f"save_checkpoint: {what}[{key!r}] has dtype object, which would need pickle")
        arrays[f"{prefix}/{key}"] = value
        keys.append(key)
    manifest[prefix] = {"keys": keys, "scalars": scalars}


def save_checkpoint(path, *, config: dict, params: dict, ema: dict | None = None,
                    optimizer_state: dict | None = None, step: int = 0, rng_state: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Write one .npz checkpoint atomically (temporary file, fsync, os.replace) and return its path.

    ``params`` is {name: array}; ``ema`` and ``optimizer_state`` are flat dicts of arrays and
    scalars (``EMA.state_dict()``, ``AdamW.state_dict()``); ``config``, ``rng_state`` and ``extra``
    are JSON-serialisable dicts. The file is written at ``path`` exactly (no suffix is added).
    """
    if not isinstance(config, dict):
        raise TypeError(f"save_checkpoint: config must be a dict, got {type(config).__name__}")
    path = Path(path)
    arrays = {"tinyddpm/magic": np.frombuffer(MAGIC.encode(), dtype=np.uint8),
              "tinyddpm/format_version": np.asarray(FORMAT_VERSION, dtype=np.int64),
              "meta/config": _encode_json("config", config),
              "meta/step": np.asarray(int(step), dtype=np.int64)}
    manifest = {}
    for what, prefix in PARTS.items():
        part = {"params": params, "ema": ema, "optimizer_state": optimizer_state}[what]
        if part is not None:
            _part_arrays(what, prefix, part, arrays, manifest)
    for what, value in (("rng_state", rng_state), ("extra", extra)):
        if value is not None:
            arrays[f"meta/{what}"] = _encode_json(what, value)
    arrays["meta/manifest"] = _encode_json("manifest", manifest)

    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{_HOST}.{secrets.token_hex(4)}.tmp")  # same folder: atomic rename
    try:
        with open(tmp, "xb") as f:  # a new file with the usual mode (umask applies), never an existing one
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            Path(tmp).unlink(missing_ok=True)
        except OSError:   # on a read-only file system the cleanup fails too (EROFS, even for a file never made):
            pass          # the error to report is the first one, not the cleanup's about a file that may not exist
        if isinstance(e, OSError) and e.errno is not None:  # a full disk, a read-only folder: name the checkpoint
            raise OSError(e.errno, f"cannot write the checkpoint: {e.strerror or e}", str(path)) from e
        raise
    try:  # make the rename itself durable (POSIX); harmless to skip where directories cannot be opened
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]   # this machine, in temporary file names
STALE_SECONDS = 24 * 3600   # a temporary file unmodified this long is stale whoever wrote it


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (signal 0 checks without sending anything)."""
    if pid <= 0:
        return True  # 0 and negative ids name process groups: never treat them as dead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process, or an id this system cannot ask about: keep its file
    return True


def remove_stale_temporaries(path) -> list:
    """Remove the temporary files of checkpoint ``path`` left by killed writes; return the paths removed.

    See the module docstring for the rule: this machine's files whose process is dead, anyone's unmodified
    for 24 hours (also the randomly named ones of tinyddpm releases before the writer's id was recorded);
    never a live process's. Best effort: a file that cannot be removed is left alone.
    """
    path = Path(path)
    prefix = f".{path.name}."
    writer = re.compile(rf"^{re.escape(prefix)}(\d+)\.([0-9a-f]{{8}})\.[0-9a-f]+\.tmp$")   # pid, host
    removed = []
    try:
        candidates = [c for c in path.parent.iterdir() if c.name.startswith(prefix) and c.name.endswith(".tmp")]
    except OSError:
        return removed
    now = time.time()
    for candidate in candidates:
        match = writer.match(candidate.name)
        try:
            stale = now - candidate.lstat().st_mtime > STALE_SECONDS
            if match is not None and match.group(2) == _HOST and os.name != "nt":
                pid = int(match.group(1))
                stale = stale or (pid != os.getpid() and not _pid_alive(pid))
            if stale:
                candidate.unlink()
                removed.append(candidate)
        except OSError:
            continue
    return removed


# --------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------

def _device_module(device):
    device = get_device() if device is None else str(device).lower()
    if device == "cpu":
        return np
    if device == "cuda":
        return import_cupy()
    raise ValueError(f"load_checkpoint: unknown device {device!r}; choose 'cpu' or 'cuda'")


MAX_META_BYTES = 64 * 2**20   # a meta/ JSON entry above this is refused: a million steps' losses are ~20 MB


class Member(NamedTuple):
    """One array of the .npz as its zip directory and its .npy header declare it, before it is read."""
    shape: tuple
    dtype: np.dtype
    nbytes: int       # what the shape and dtype need: prod(shape) * itemsize


class Expected(NamedTuple):
    """What a loader expects of a checkpoint, derived from the checkpoint's own config (see load_checkpoint).

    ``arrays``: {entry: (shape, dtype)} for every entry of the parts it covers (``"params/conv_in.w"``,
    ``"ema/avg/..."``, ``"optim/m/..."``; a scalar has shape () and dtype None: any bool, int or float);
    ``finite``: {entry: how to name it} of the weights the loader will use, which must hold no NaN or inf;
    ``advice``: appended to the NaN message (what to do about it).
    """
    arrays: dict
    finite: dict = {}
    advice: str = ""


class _Counting:
    """A read-only file wrapper that counts the bytes read (the length of a .npy header)."""

    def __init__(self, f):
        self.f, self.count = f, 0

    def read(self, n=-1):
        data = self.f.read(n)
        self.count += len(data)
        return data


def _read_directory(path, zf) -> dict:
    """{entry: Member} of every member, from the zip directory and each .npy header: nothing decompressed beyond
    the headers. A member whose uncompressed size is not its header plus what its shape and dtype need (a
    compressed bomb, padding, truncation), a damaged header, an object dtype or a duplicate name: CheckpointError."""
    members = {}
    for info in zf.infolist():
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        shown = repr(key)
        if key in members:
            raise CheckpointError(f"{path}: entry {shown} appears twice in the zip directory")
        try:
            with zf.open(info) as f:
                counted = _Counting(f)
                version = np.lib.format.read_magic(counted)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(counted)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(counted)
                else:
                    raise ValueError(f".npy format version {version} (this reader knows 1.0 and 2.0)")
        except Exception as e:   # noqa: BLE001 -- zipfile, zlib and numpy report a bad member with many types
            raise CheckpointError(f"{path}: entry {shown} is damaged ({type(e).__name__}: {e})") from None
        if dtype.hasobject:
            raise CheckpointError(f"{path}: entry {shown} has dtype object, which would need pickle: refused")
        if any(d < 0 for d in shape):
            raise CheckpointError(f"{path}: entry {shown} declares the impossible shape {shape}")
        nbytes = math.prod(shape) * dtype.itemsize     # Python ints: no overflow however large the claim
        if info.file_size != counted.count + nbytes:
            raise CheckpointError(f"{path}: entry {shown} is damaged: its zip directory says {info.file_size} bytes "
                                  f"uncompressed ({info.compress_size} stored), its header declares {dtype} "
                                  f"{shape}, which is {counted.count + nbytes} bytes with the header")
        members[key] = Member(tuple(shape), dtype, nbytes)
    return members


def _check_expected(path, members: dict, manifest: dict, expected: Expected) -> None:
    """Every array of the parts ``expected`` covers: its name, declared shape and dtype; before any is read."""
    covered = {key.split("/", 1)[0] for key in expected.arrays}
    listed = {f"{prefix}/{k}" for prefix in covered for k in manifest.get(prefix, {}).get("keys", [])}
    uncovered = sorted((set(PARTS.values()) & set(manifest)) - covered)
    if uncovered:
        raise CheckpointError(f"{path}: holds a part this kind of checkpoint does not have: {uncovered}")
    present = {key.split("/", 1)[0] for key in listed}
    wanted = {key for key in expected.arrays if key.split("/", 1)[0] in present}   # a part may be absent as a whole
    missing, extra = sorted(wanted - listed), sorted(listed - wanted)
    if missing or extra:
        raise CheckpointError(f"{path}: the tensors do not match the stored config: missing {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
                              f"{' ...' if len(extra) > 5 else ''}")
    for key in sorted(wanted):
        shape, dtype = expected.arrays[key]
        got = members[key]
        if got.shape != tuple(shape):
            raise CheckpointError(f"{path}: tensor {key!r} has shape {got.shape}, the stored config gives "
                                  f"{tuple(shape)}")
        if dtype is None:
            if got.dtype.kind not in "biuf":
                raise CheckpointError(f"{path}: scalar {key!r} has dtype {got.dtype}, not a number")
        elif got.dtype != np.dtype(dtype):
            raise CheckpointError(f"{path}: tensor {key!r} is {got.dtype}, the stored config says "
                                  f"{np.dtype(dtype)}")


def _check_finite(path, arrays: dict, expected: Expected) -> None:
    """CheckpointError naming the file and the first of ``expected.finite`` that holds NaN or inf."""
    bad = []
    for key, label in expected.finite.items():
        a = arrays.get(key)
        if a is not None and a.dtype.kind == "f":
            count = int(np.count_nonzero(~np.isfinite(a)))
            if count:
                bad.append((label, count, a.size))
    if bad:
        (label, count, size), more = bad[0], (f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else "")
        raise CheckpointError(f"{path}: {label} hold {count} NaN or infinite values of {size}{more}{expected.advice}")


def load_checkpoint(path, device: str | None = None, expect=None) -> Checkpoint:
    """Read a checkpoint written by save_checkpoint; arrays go to ``device`` ('cpu', 'cuda'; None = current).

    Raises FileNotFoundError for a missing file and CheckpointError (a ValueError) naming the file
    for anything else: not an .npz (empty, random or truncated bytes), not a tinyddpm checkpoint,
    another format version, missing or damaged entries.

    Sizes before memory: the zip directory and every member's .npy header are read first, and a member
    whose uncompressed size is not what its declared shape and dtype need is refused before it is
    decompressed; a meta/ entry may hold at most MAX_META_BYTES. ``expect(config, path, members)``, given by
    every loader of the project, returns an Expected from the checkpoint's own config and the declared
    {entry: Member} (it may raise CheckpointError itself, e.g. for another kind of checkpoint): then every tensor's name, shape and dtype is checked against
    it before any tensor is read, and the weights it names are checked to be finite once read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_checkpoint: no file at {path}")
    xp = _device_module(device)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x93NUMPY"):
        raise CheckpointError(f"{path}: holds a single .npy array, not a checkpoint (an .npz archive)")
    if not head.startswith(b"PK"):   # a zip archive (.npz)
        shown = f"it begins with {head.hex(' ')}" if head else "the file is empty"
        raise CheckpointError(f"{path}: not a readable .npz checkpoint ({size} bytes, not a zip archive: {shown})")
    try:
        zf = zipfile.ZipFile(path)
    except Exception as e:  # noqa: BLE001 -- empty file, random bytes, a truncated zip: all land here
        raise CheckpointError(f"{path}: not a readable .npz checkpoint ({size} bytes; "
                              f"{type(e).__name__}: {e})") from None
    with zf:
        members = _read_directory(path, zf)
        files = set(members)
        names = {key: (key + ".npy" if key + ".npy" in zf.NameToInfo else key) for key in members}

        def read(key, limit=None):
            if key not in files:
                raise CheckpointError(f"{path}: missing entry {key!r} (the file has {len(files)} entries)")
            if limit is not None and members[key].nbytes > limit:
                raise CheckpointError(f"{path}: entry {key!r} declares {members[key].nbytes} bytes "
                                      f"({members[key].dtype} {members[key].shape}), more than the {limit} "
                                      "such an entry may hold")
            try:
                with zf.open(names[key]) as f:
                    return np.lib.format.read_array(f, allow_pickle=False)
            except Exception as e:  # noqa: BLE001 -- a damaged member: CRC mismatch, truncated data
                raise CheckpointError(f"{path}: entry {key!r} is damaged ({type(e).__name__}: {e})") from None

        def read_json(key):
            return _decode_json(path, key, read(key, MAX_META_BYTES))

        if "tinyddpm/magic" not in files:
            shown = sorted(files)[:5]
            raise CheckpointError(f"{path}: not a tinyddpm checkpoint (no 'tinyddpm/magic' entry; "
                                  f"it has {len(files)} entries, e.g. {shown})")
        magic = read("tinyddpm/magic", len(MAGIC))
        if magic.dtype != np.uint8 or magic.tobytes() != MAGIC.encode():
            raise CheckpointError(f"{path}: not a tinyddpm checkpoint (wrong 'tinyddpm/magic' value)")
        version = read("tinyddpm/format_version", 64)
        if version.shape != () or version.dtype.kind not in "iu" or int(version) != FORMAT_VERSION:
            shown = version.item() if version.size == 1 else f"of shape {version.shape}"
            raise CheckpointError(f"{path}: checkpoint format version {shown}; this tinyddpm reads "
                                  f"version {FORMAT_VERSION}")
        version = int(version)
        manifest = read_json("meta/manifest")
        well_formed = isinstance(manifest, dict) and all(
            isinstance(entry, dict) and isinstance(entry.get("keys"), list) and isinstance(entry.get("scalars"), list)
            and all(isinstance(k, str) for k in entry["keys"] + entry["scalars"])
            for entry in manifest.values())
        if not well_formed:
            raise CheckpointError(f"{path}: damaged manifest (meta/manifest)")
        expected_keys = [f"{prefix}/{k}" for prefix in PARTS.values() for k in manifest.get(prefix, {}).get("keys", [])]
        missing = [k for k in ["meta/config", "meta/step"] + expected_keys if k not in files]
        if missing:
            raise CheckpointError(f"{path}: missing entries {missing[:10]}{' ...' if len(missing) > 10 else ''} "
                                  f"({len(missing)} in all)")
        if "params" not in manifest:
            raise CheckpointError(f"{path}: the manifest lists no params")
        for prefix in PARTS.values():   # a scalar is one number, whoever checks the rest
            for key in manifest.get(prefix, {}).get("scalars", []):
                entry = f"{prefix}/{key}"
                if entry in files and (members[entry].shape != () or members[entry].dtype.kind not in "biuf"):
                    raise CheckpointError(f"{path}: entry {entry!r} should be a number, it is declared "
                                          f"{members[entry].dtype} {members[entry].shape}")
        config = read_json("meta/config")
        step = read("meta/step", 64)
        if step.shape != () or step.dtype.kind not in "iu":
            raise CheckpointError(f"{path}: entry 'meta/step' should be an integer, it is {step.dtype} {step.shape}")
        expected = expect(config, path, members) if expect is not None else None
        if expected is not None:
            _check_expected(path, members, manifest, expected)
        host, parts = {}, {}
        for what, prefix in PARTS.items():
            if prefix not in manifest:
                parts[what] = None
                continue
            scalars = set(manifest[prefix]["scalars"])
            part = {}
            for key in manifest[prefix]["keys"]:
                value = host[f"{prefix}/{key}"] = read(f"{prefix}/{key}")
                part[key] = value.item() if key in scalars else value
            parts[what] = part
        if expected is not None:
            _check_finite(path, host, expected)
        for part in parts.values():   # to the device once every check has passed
            for key, value in (part or {}).items():
                if isinstance(value, np.ndarray):
                    part[key] = xp.asarray(value)
        optional = {what: read_json(f"meta/{what}") if f"meta/{what}" in files else None
                    for what in ("rng_state", "extra")}
        return Checkpoint(path=str(path), config=config, step=int(step), format_version=version,
                          manifest=manifest, **parts, **optional)


__all__ = ["Checkpoint", "CheckpointError", "Expected", "FORMAT_VERSION", "MAX_META_BYTES", "Member", "generator_state", "load_checkpoint",
           "remove_stale_temporaries", "restore_generator", "save_checkpoint"]
