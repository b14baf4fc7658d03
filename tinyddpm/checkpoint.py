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
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

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


def load_checkpoint(path, device: str | None = None) -> Checkpoint:
    """Read a checkpoint written by save_checkpoint; arrays go to ``device`` ('cpu', 'cuda'; None = current).

    Raises FileNotFoundError for a missing file and CheckpointError (a ValueError) naming the file
    for anything else: not an .npz (empty, random or truncated bytes), not a tinyddpm checkpoint,
    another format version, missing or damaged entries.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_checkpoint: no file at {path}")
    xp = _device_module(device)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith((b"PK", b"\x93NUMPY")):   # a zip archive (.npz) or a single .npy array
        shown = f"it begins with {head.hex(' ')}" if head else "the file is empty"
        raise CheckpointError(f"{path}: not a readable .npz checkpoint ({size} bytes, not a zip archive: {shown})")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as e:  # empty file, random bytes, a truncated zip, a pickle: all land here
        raise CheckpointError(f"{path}: not a readable .npz checkpoint ({size} bytes; "
                              f"{type(e).__name__}: {e})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path}: holds a single .npy array {getattr(npz, 'shape', '')}, not a checkpoint")
    with npz:
        files = set(npz.files)

        def read(key):
            if key not in files:
                raise CheckpointError(f"{path}: missing entry {key!r} (the file has {len(files)} entries)")
            try:
                return npz[key]
            except Exception as e:  # a damaged member: CRC mismatch, truncated data
                raise CheckpointError(f"{path}: entry {key!r} is damaged ({type(e).__name__}: {e})") from None

        if "tinyddpm/magic" not in files:
            shown = sorted(files)[:5]
            raise CheckpointError(f"{path}: not a tinyddpm checkpoint (no 'tinyddpm/magic' entry; "
                                  f"it has {len(files)} entries, e.g. {shown})")
        magic = read("tinyddpm/magic")
        if magic.dtype != np.uint8 or magic.tobytes() != MAGIC.encode():
            raise CheckpointError(f"{path}: not a tinyddpm checkpoint (wrong 'tinyddpm/magic' value)")
        version = read("tinyddpm/format_version")
        if version.shape != () or version.dtype.kind not in "iu" or int(version) != FORMAT_VERSION:
            shown = version.item() if version.size == 1 else f"of shape {version.shape}"
            raise CheckpointError(f"{path}: checkpoint format version {shown}; this tinyddpm reads "
                                  f"version {FORMAT_VERSION}")
        version = int(version)
        manifest = _decode_json(path, "meta/manifest", read("meta/manifest"))
        well_formed = isinstance(manifest, dict) and all(
            isinstance(entry, dict) and isinstance(entry.get("keys"), list) and isinstance(entry.get("scalars"), list)
            for entry in manifest.values())
        if not well_formed:
            raise CheckpointError(f"{path}: damaged manifest (meta/manifest)")
        expected = [f"{prefix}/{k}" for prefix in PARTS.values() for k in manifest.get(prefix, {}).get("keys", [])]
        missing = [k for k in ["meta/config", "meta/step"] + expected if k not in files]
        if missing:
            raise CheckpointError(f"{path}: missing entries {missing[:10]}{' ...' if len(missing) > 10 else ''} "
                                  f"({len(missing)} in all)")
        if "params" not in manifest:
            raise CheckpointError(f"{path}: the manifest lists no params")
        parts = {}
        for what, prefix in PARTS.items():
            if prefix not in manifest:
                parts[what] = None
                continue
            scalars = set(manifest[prefix]["scalars"])
            part = {}
            for key in manifest[prefix]["keys"]:
                value = read(f"{prefix}/{key}")
                part[key] = value.item() if key in scalars else xp.asarray(value)
            parts[what] = part
        optional = {what: _decode_json(path, f"meta/{what}", read(f"meta/{what}"))
                    if f"meta/{what}" in files else None for what in ("rng_state", "extra")}
        return Checkpoint(path=str(path), config=_decode_json(path, "meta/config", read("meta/config")),
                          step=int(read("meta/step")), format_version=version, manifest=manifest,
                          **parts, **optional)


__all__ = ["Checkpoint", "CheckpointError", "FORMAT_VERSION", "generator_state", "load_checkpoint",
           "remove_stale_temporaries", "restore_generator", "save_checkpoint"]
