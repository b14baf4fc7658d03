"""checkpoint: round trip, atomic write, clear errors for bad files, bit-identical resume."""
import json
import re

import numpy as np
import pytest

from helpers import randn
from tinyddpm import checkpoint as checkpoint
from tinyddpm.backend import to_numpy
from tinyddpm.checkpoint import (CheckpointError, generator_state, load_checkpoint, restore_generator,
                                 save_checkpoint)
from tinyddpm.data.batches import Batches
from tinyddpm.training.optim import EMA, AdamW, clip_grad_norm, lr_schedule


def parts(seed=0):
    rng = np.random.default_rng(seed)
    params = {"down.0.conv.w": randn(rng, 4, 1, 3, 3, dtype=np.float32), "down.0.conv.b": randn(rng, 4),
              "scale": randn(rng)}  # a 0-d parameter stays an array
    opt = AdamW(params, lr=1e-3, weight_decay=0.01)
    opt.step(params, {k: randn(rng, *p.shape, dtype=p.dtype) for k, p in params.items()})
    ema = EMA(params, decay=0.99, warmup=True)
    ema.update(params)
    noise = np.random.default_rng(7)
    noise.standard_normal(3)
    return dict(config={"lr": 1e-3, "channels": [32, 64], "name": "mnist", "dropout": None},
                params=params, ema=ema.state_dict(), optimizer_state=opt.state_dict(), step=opt.t,
                rng_state={"noise": generator_state(noise), "batches": {"seed": 1, "epoch": 2, "position": 3}},
                extra={"losses": [0.5, 0.25], "note": "ünïcode"})


def assert_same(a, b):
    """Equal flat dicts: arrays equal with the same dtype and shape, scalars equal with the same type."""
    assert set(a) == set(b)
    for k in a:
        if hasattr(a[k], "shape"):
            x, y = to_numpy(a[k]), to_numpy(b[k])
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), k
        else:
            assert type(a[k]) is type(b[k]) and a[k] == b[k], k


def test_round_trip(tmp_path):
    p = parts()
    path = save_checkpoint(tmp_path / "ckpt.npz", **p)
    ck = load_checkpoint(path)
    assert ck.config == p["config"] and ck.step == p["step"] == 1 and ck.extra == p["extra"]
    assert_same(ck.params, p["params"])
    assert_same(ck.ema, p["ema"])
    assert_same(ck.optimizer_state, p["optimizer_state"])
    assert ck.rng_state["batches"] == p["rng_state"]["batches"]
    assert set(ck.ema_params) == set(p["params"]) and ck.format_version == checkpoint.FORMAT_VERSION
    noise = restore_generator(ck.rng_state["noise"])
    original = restore_generator(p["rng_state"]["noise"])
    assert np.array_equal(noise.standard_normal(5), original.standard_normal(5))
    with np.load(path, allow_pickle=False) as raw:  # plain arrays under prefixed keys
        assert {"tinyddpm/magic", "params/down.0.conv.w", "ema/avg/scale", "optim/m/down.0.conv.b"} <= set(raw.files)


def test_optional_parts_may_be_left_out(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt.npz", config={}, params={"w": np.ones(2)})
    ck = load_checkpoint(path, device="cpu")
    assert ck.ema is None and ck.optimizer_state is None and ck.rng_state is None and ck.extra is None
    assert ck.ema_params is None and ck.step == 0 and isinstance(ck.params["w"], np.ndarray)


def files_in(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("fail_at", ["savez", "fsync", "replace"])
def test_atomic_write_keeps_the_old_checkpoint(tmp_path, monkeypatch, fail_at):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, config={"version": "old"}, params={"w": np.zeros(3)})
    old_bytes = path.read_bytes()

    def crash(*args, **kwargs):
        if fail_at == "savez":  # half a file written, then the disk fills up
            args[0].write(b"PK\x03\x04 partial")
        raise OSError(f"simulated crash in {fail_at}")

    target = {"savez": (checkpoint.np, "savez"), "fsync": (checkpoint.os, "fsync"),
              "replace": (checkpoint.os, "replace")}[fail_at]
    monkeypatch.setattr(*target, crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, config={"version": "new"}, params={"w": np.ones(3)})
    monkeypatch.undo()
    assert files_in(tmp_path) == ["ckpt.npz"]  # no temporary file left behind
    assert path.read_bytes() == old_bytes and load_checkpoint(path).config == {"version": "old"}


def good_file(tmp_path):
    return save_checkpoint(tmp_path / "good.npz", **parts())


def rewrite(path, src, drop=(), change=None):
    """Copy the entries of checkpoint ``src`` into ``path``, leaving out ``drop`` and replacing ``change``."""
    with np.load(src, allow_pickle=False) as raw:
        arrays = {k: raw[k] for k in raw.files if k not in drop}
    arrays.update(change or {})
    np.savez(path, **arrays)


def bad_files():
    """(case, make the bad file at path from a good checkpoint, what the message must say)."""
    def flip_middle(path, good):
        raw = bytearray(good.read_bytes())
        start = raw.find(b"params/down.0.conv.w")  # a byte inside that member's data
        raw[start + 200] ^= 0xFF
        path.write_bytes(bytes(raw))

    return [
        ("zero bytes", lambda path, good: path.write_bytes(b""), "not a readable .npz checkpoint \\(0 bytes"),
        ("random bytes", lambda path, good: path.write_bytes(np.random.default_rng(0).bytes(500)),
         "not a readable .npz checkpoint \\(500 bytes"),
        ("truncated", lambda path, good: path.write_bytes(good.read_bytes()[: good.stat().st_size // 2]),
         "not a readable .npz checkpoint"),
        ("flipped byte", flip_middle, "entry 'params/down.0.conv.w' is damaged"),
        ("foreign npz", lambda path, good: np.savez(path, weights=np.ones(3)),
         "not a tinyddpm checkpoint \\(no 'tinyddpm/magic' entry.*'weights'"),
        ("single npy", lambda path, good: np.save(open(path, "wb"), np.ones(3)), "single .npy array"),
        ("wrong magic",
         lambda path, good: rewrite(path, good, change={"tinyddpm/magic": np.frombuffer(b"x", np.uint8)}),
         "wrong 'tinyddpm/magic' value"),
        ("wrong version", lambda path, good: rewrite(path, good, change={"tinyddpm/format_version": np.asarray(99)}),
         "format version 99; this tinyddpm reads version 1"),
        ("missing param", lambda path, good: rewrite(path, good, drop={"params/down.0.conv.b"}),
         "missing entries \\['params/down.0.conv.b'\\]"),
        ("missing step", lambda path, good: rewrite(path, good, drop={"meta/step"}),
         "missing entries \\['meta/step'\\]"),
        ("missing manifest", lambda path, good: rewrite(path, good, drop={"meta/manifest"}),
         "missing entry 'meta/manifest'"),
        ("bad json", lambda path, good: rewrite(path, good, change={"meta/config": np.frombuffer(b"{oops", np.uint8)}),
         "meta/config is not valid JSON"),
    ]


@pytest.mark.parametrize("case, make, message", bad_files(), ids=[c[0] for c in bad_files()])
def test_bad_files_raise_checkpoint_error_naming_the_file(tmp_path, case, make, message):
    good = good_file(tmp_path)
    path = tmp_path / "bad.npz"
    make(path, good)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ": .*" + message):
        load_checkpoint(path)
    assert issubclass(CheckpointError, ValueError)


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="load_checkpoint: no file at .*nothing.npz"):
        load_checkpoint(tmp_path / "nothing.npz")
    with pytest.raises(TypeError, match="save_checkpoint: config must be JSON serialisable"):
        save_checkpoint(tmp_path / "c.npz", config={"f": print}, params={})
    with pytest.raises(TypeError, match=r"save_checkpoint: params\['w'\] has dtype object"):
        save_checkpoint(tmp_path / "c.npz", config={}, params={"w": np.array([None])})
    with pytest.raises(TypeError, match=r"save_checkpoint: ema\['w'\] must be an array or a number, got list"):
        save_checkpoint(tmp_path / "c.npz", config={}, params={}, ema={"w": [1, 2]})
    good = good_file(tmp_path)
    with pytest.raises(ValueError, match="load_checkpoint: unknown device 'tpu'"):
        load_checkpoint(good, device="tpu")
    assert files_in(tmp_path) == ["good.npz"]


def test_cupy_generator_is_reseeded_not_restored():
    with pytest.raises(ValueError, match="restore_generator: a CuPy generator's state cannot be saved; pass reseed"):
        restore_generator({"backend": "cupy"})
    with pytest.raises(TypeError, match="generator_state: expected a numpy or cupy Generator, got RandomState"):
        generator_state(np.random.RandomState(0))
    state = json.loads(json.dumps(generator_state(np.random.Generator(np.random.Philox(3)))))
    assert restore_generator(state).bit_generator.state["bit_generator"] == "Philox"


# ---------------------------------------------------------------------------------------- resume

def toy_run(params, opt, ema, it, rng, steps, losses):
    """Steps of linear regression y ~ x @ w + b on noisy targets: batches, noise, clipping, schedule, EMA."""
    for _ in range(steps):
        xb, yb = next(it)
        target = yb + 0.1 * rng.standard_normal(yb.shape)
        r = xb @ params["w"] + params["b"] - target            # (B, 2) residual
        losses.append(float(np.mean(r ** 2)))
        grads = {"w": xb.T @ r * (2 / r.size), "b": r.sum(axis=0) * (2 / r.size)}
        clip_grad_norm(grads, 0.5)
        opt.step(params, grads, lr=lr_schedule(opt.t, 0.05, warmup_steps=4, total_steps=40))
        ema.update(params)


def fresh(seed, params=None):
    """The objects of a run: the data set is fixed, everything else follows ``seed``."""
    data = np.random.default_rng(0)
    x, y = data.standard_normal((40, 4)), data.standard_normal((40, 2))
    params = params or {"w": np.random.default_rng(seed).standard_normal((4, 2)), "b": np.zeros(2)}
    opt = AdamW(params, lr=0.05, weight_decay=0.01, no_decay={"b"})
    ema, it = EMA(params, decay=0.9, warmup=True), Batches(x, y, 8, seed=seed)
    return params, opt, ema, it, np.random.default_rng(seed + 1)


@pytest.mark.parametrize("k", [7, 10])  # stop mid-epoch, stop on an epoch boundary (5 batches per epoch)
def test_resume_is_bit_identical(tmp_path, k):
    n = 23
    params, opt, ema, it, rng = fresh(3)
    straight = []
    toy_run(params, opt, ema, it, rng, n, straight)

    params2, opt2, ema2, it2, rng2 = fresh(3)
    first = []
    toy_run(params2, opt2, ema2, it2, rng2, k, first)
    save_checkpoint(tmp_path / "ckpt.npz", config={"seed": 3}, params=params2, ema=ema2.state_dict(),
                    optimizer_state=opt2.state_dict(), step=opt2.t,
                    rng_state={"noise": generator_state(rng2), "batches": it2.state_dict()}, extra={"losses": first})
    del params2, opt2, ema2, it2, rng2

    ck = load_checkpoint(tmp_path / "ckpt.npz", device="cpu")   # the toy run is NumPy, also on a GPU machine
    params3, opt3, ema3, it3, _ = fresh(99, params=ck.params)  # other seeds: everything must come from the file
    opt3.load_state_dict(ck.optimizer_state)
    ema3.load_state_dict(ck.ema)
    it3.load_state_dict(ck.rng_state["batches"])
    rng3 = restore_generator(ck.rng_state["noise"])
    resumed = list(ck.extra["losses"])
    toy_run(params3, opt3, ema3, it3, rng3, n - k, resumed)

    assert resumed == straight and opt3.t == opt.t == n
    for name in params:
        assert np.array_equal(params3[name], params[name])
        assert np.array_equal(ema3.params[name], ema.params[name])
        assert np.array_equal(opt3.m[name], opt.m[name]) and np.array_equal(opt3.v[name], opt.v[name])


# --------------------------------------------------------------------------------------------
# what a killed or failed write leaves behind, and what the next save does with it
# --------------------------------------------------------------------------------------------

def dead_pid() -> int:
    """The id of a process that has just exited (and been reaped): no process has it now."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_next_save_removes_stale_temporaries_of_dead_writers_only(tmp_path):
    import os
    import time

    path = tmp_path / "checkpoint.npz"
    host, dead = checkpoint._HOST, dead_pid()
    names = {
        "dead writer": f".checkpoint.npz.{dead}.{host}.0badc0de.tmp",
        "earlier release, fresh": ".checkpoint.npz.k3j_9ab2.tmp",       # mkstemp's random name: writer unknown
        "earlier release, a day old": ".checkpoint.npz.q8z_01cd.tmp",
        "live writer (this process)": f".checkpoint.npz.{os.getpid()}.{host}.1234abcd.tmp",
        "another machine, fresh": f".checkpoint.npz.{dead}.ffffffff.1234abcd.tmp",
        "another machine, a day old": f".checkpoint.npz.{dead}.eeeeeeee.1234abcd.tmp",
        "another checkpoint's": f".other.npz.{dead}.{host}.0badc0de.tmp",
        "not a temporary": "notes.txt",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"PK\x03\x04 half a checkpoint")
    day_old = time.time() - checkpoint.STALE_SECONDS - 60
    for case in ("another machine, a day old", "earlier release, a day old"):
        os.utime(tmp_path / names[case], (day_old, day_old))
    save_checkpoint(path, config={}, params={"w": np.ones(2)})
    left = set(files_in(tmp_path))
    removed = {case for case, name in names.items() if name not in left}
    assert removed == {"dead writer", "another machine, a day old", "earlier release, a day old"}
    assert "checkpoint.npz" in left and load_checkpoint(path).params["w"].tolist() == [1.0, 1.0]
    assert checkpoint.remove_stale_temporaries(path) == []   # nothing stale is left


def test_a_full_disk_names_the_checkpoint_and_leaves_no_temporary(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, config={"version": "old"}, params={"w": np.zeros(3)})

    def full(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError(errno.ENOSPC, "No space left on device")   # as a write() on a full disk: no file name

    monkeypatch.setattr(checkpoint.np, "savez", full)
    with pytest.raises(OSError) as raised:
        save_checkpoint(path, config={"version": "new"}, params={"w": np.ones(3)})
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert "cannot write the checkpoint: No space left on device" in str(raised.value)
    monkeypatch.undo()
    assert files_in(tmp_path) == ["checkpoint.npz"] and load_checkpoint(path).config == {"version": "old"}


def test_a_read_only_file_system_names_the_checkpoint_even_when_the_cleanup_fails_too(tmp_path, monkeypatch):
    """On a read-only file system removing the temporary file fails as well (EROFS, though it was never made): the
    error reported is the first one, naming the checkpoint, not the cleanup's naming a file that does not exist."""
    import errno
    from pathlib import Path

    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, config={"version": "old"}, params={"w": np.zeros(3)})

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    def refuse_to_open(file, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(file))

    monkeypatch.setattr(checkpoint, "open", refuse_to_open, raising=False)   # the temporary file cannot be made
    monkeypatch.setattr(Path, "unlink", read_only)                           # and its cleanup fails too
    with pytest.raises(OSError) as raised:
        save_checkpoint(path, config={"version": "new"}, params={"w": np.ones(3)})
    monkeypatch.undo()
    assert raised.value.errno == errno.EROFS and raised.value.filename == str(path), raised.value
    assert str(raised.value) == f"[Errno {errno.EROFS}] cannot write the checkpoint: Read-only file system: '{path}'"
    assert files_in(tmp_path) == ["checkpoint.npz"] and load_checkpoint(path).config == {"version": "old"}


def test_random_bytes_are_not_called_pickled_data(tmp_path):
    planted = b"\x80\x04\x95 a pickle stream"
    for name, data in (("random.npz", np.random.default_rng(1).bytes(300)), ("planted.npz", planted)):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as raised:
            load_checkpoint(path)
        message = str(raised.value)
        assert message.startswith(f"{path}: not a readable .npz checkpoint") and "not a zip archive" in message
        assert "pickle" not in message
