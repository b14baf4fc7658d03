"""Every file the project reads, mutated (issue 26, item 2): a training checkpoint, a classifier cache, an IDX pair
and an image folder, changed by hypothesis (truncation at any byte, flipped bytes, a member's dtype or shape, NaN
and inf, missing and extra members with odd names, huge declared sizes, symlinks, odd file names). Each load
either succeeds with a valid result or raises the project's user error (CheckpointError; the data loaders'
ValueError) in one line naming the file, never another exception. Compressed bombs (2 GB of zeros in a few MB)
are loaded in a subprocess under RLIMIT_AS = 1.5 GB: refused, never a MemoryError."""
import io
import os
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tinyddpm.checkpoint import save_checkpoint
from tinyddpm.classifiers.judge import ClassifierConfig, init_params as classifier_params, load_classifier
from tinyddpm.data.folder import load_image_folder
from tinyddpm.data.mnist import FILES, load_mnist, write_idx
from tinyddpm.training.config import preset
from tinyddpm.training.resume import load_for_sampling, resume_state, save_state
from tinyddpm.training.state import new_state

from helpers import npy_bytes, npy_header

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])
DTYPES = [np.float16, np.float32, np.float64, np.int32, np.uint8, np.bool_, np.complex64]


def tiny_data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (16, 28, 28), dtype=np.uint8), np.arange(16) % 10


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{kind: path} of valid files: a tiny-preset training checkpoint, a classifier cache, an IDX pair's folder."""
    root = tmp_path_factory.mktemp("valid")
    images, labels = tiny_data()
    save_state(new_state(preset("tiny"), images, labels), root / "checkpoint.npz")
    cfg = ClassifierConfig(channels=(4, 4, 4), features=8)
    save_checkpoint(root / "classifier.npz", params=classifier_params(cfg),
                    config={"kind": "tinyddpm.classifier", **asdict(cfg), "channels": list(cfg.channels)})
    (root / "idx").mkdir()
    write_idx(root / "idx" / (FILES["test"][0] + ".gz"), images[:7])
    write_idx(root / "idx" / FILES["test"][1], labels[:7].astype(np.uint8))
    return root





def assert_user_error(e: BaseException, path) -> None:
    assert isinstance(e, ValueError), f"{type(e).__name__}: {e}"   # CheckpointError is a ValueError
    text = str(e)
    assert str(path) in text and "\n" not in text, text


def sampling_result_is_valid(result) -> None:
    params, config, schedule = result
    assert params and all(a.dtype == np.dtype(config.dtype) and np.isfinite(a).all() for a in params.values())


# --------------------------------------------------------------------------------------------
# checkpoints: bytes
# --------------------------------------------------------------------------------------------

LOADERS = {
    "sampling": lambda path: sampling_result_is_valid(load_for_sampling(path)),
    "raw weights": lambda path: sampling_result_is_valid(load_for_sampling(path, use_ema=False)),
    "resume": lambda path: resume_state(path, *tiny_data()),
}


def load_either_way(loader, path) -> None:
    try:
        loader(path)
    except Exception as e:  # noqa: BLE001 -- what the test is about: which exception, and its message
        assert_user_error(e, path)


@FUZZ
@given(data=st.data(), loader=st.sampled_from(sorted(LOADERS)))
def test_a_checkpoint_with_damaged_bytes(files, tmp_path, data, loader):
    raw = bytearray((files / "checkpoint.npz").read_bytes())
    how = data.draw(st.sampled_from(["truncate", "flip", "zero a run"]))
    at = data.draw(st.integers(0, len(raw) - 1))
    if how == "truncate":
        raw = raw[:at]
    elif how == "flip":
        raw[at] ^= data.draw(st.integers(1, 255))
    else:
        raw[at:at + data.draw(st.integers(1, 4096))] = bytes(len(raw[at:at + 4096]))[:len(raw[at:at + 4096])]
    path = tmp_path / f"damaged_{how.replace(' ', '_')}.npz"
    path.write_bytes(bytes(raw))
    load_either_way(LOADERS[loader], path)


# --------------------------------------------------------------------------------------------
# checkpoints: members
# --------------------------------------------------------------------------------------------

ODD_NAMES = ["params/extra.npy", "params/../../etc/passwd.npy", "params/new\nline.npy", "ümlaut/ö.npy", "x",
             "meta/config", "params/conv_in.w", "/absolute.npy", "params/" + "n" * 300 + ".npy"]


def mutate_members(src, dst, data) -> str:
    """Rewrite the zip ``src`` into ``dst`` with one member changed as hypothesis draws; return what was done."""
    with zipfile.ZipFile(src) as z:
        members = {info.filename: z.read(info.filename) for info in z.infolist()}
    name = data.draw(st.sampled_from(sorted(members)))
    how = data.draw(st.sampled_from(["dtype", "shape", "nan", "inf", "drop", "extra", "huge header", "duplicate"]))
    try:
        array = np.lib.format.read_array(io.BytesIO(members[name]), allow_pickle=False)
    except ValueError:
        array = None
    extra = []
    if how == "dtype" and array is not None:
        dtype = data.draw(st.sampled_from(DTYPES))
        members[name] = npy_bytes(array.astype(dtype) if array.dtype.kind != "c" else array.real.astype(dtype))
    elif how == "shape" and array is not None:
        change = data.draw(st.sampled_from(["add a dim", "drop a dim", "one more"]))
        flat = array.reshape(-1)
        shaped = {"add a dim": array[None], "drop a dim": flat, "one more": np.concatenate([flat, flat[:1]])}[change]
        members[name] = npy_bytes(shaped)
    elif how in ("nan", "inf") and array is not None and array.dtype.kind == "f" and array.size:
        array = array.copy()
        array.reshape(-1)[data.draw(st.integers(0, array.size - 1))] = np.nan if how == "nan" else -np.inf
        members[name] = npy_bytes(array)
    elif how == "drop":
        del members[name]
    elif how == "extra":
        extra.append((data.draw(st.sampled_from(ODD_NAMES)), npy_bytes(np.zeros(3, np.float32))))
    elif how == "huge header":    # a header promising 10^12 elements, followed by a few bytes
        members[name] = npy_header((10**12,), np.float32) + b"\0" * 64
    elif how == "duplicate":
        extra.append((name, members[name]))
    with zipfile.ZipFile(dst, "w") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # "Duplicate name": what the case is about
        for member, raw in list(members.items()) + extra:
            with z.open(zipfile.ZipInfo(member), "w") as f:   # ZipFile.writestr warns on a duplicate name
                f.write(raw)
    return f"{how} {name}"


@FUZZ
@given(data=st.data(), loader=st.sampled_from(sorted(LOADERS)))
def test_a_checkpoint_with_a_changed_member(files, tmp_path, data, loader):
    path = tmp_path / "changed.npz"
    mutate_members(files / "checkpoint.npz", path, data)
    load_either_way(LOADERS[loader], path)


@FUZZ
@given(data=st.data())
def test_a_classifier_cache_with_a_changed_member(files, tmp_path, data):
    path = tmp_path / "classifier.npz"
    mutate_members(files / "classifier.npz", path, data)
    try:
        params, _ = load_classifier(path)
    except Exception as e:  # noqa: BLE001
        assert_user_error(e, path)
    else:
        assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in params.values())


# --------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------

@FUZZ
@given(data=st.data())
def test_an_idx_pair_with_damaged_bytes(files, tmp_path, data):
    which = data.draw(st.sampled_from([FILES["test"][0] + ".gz", FILES["test"][1]]))
    folder = tmp_path / "idx"
    folder.mkdir(exist_ok=True)
    for f in (files / "idx").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    target = folder / which
    raw = bytearray(target.read_bytes())
    if data.draw(st.booleans()):   # the gzip layer's bytes, or the IDX bytes under it
        raw = bytearray(zlib.decompress(bytes(raw), 31)) if which.endswith(".gz") else raw
        target = folder / which.removesuffix(".gz")
        (folder / which).unlink()
    how = data.draw(st.sampled_from(["truncate", "flip", "append", "dims"]))
    at = data.draw(st.integers(0, max(0, len(raw) - 1)))
    if how == "truncate":
        raw = raw[:at]
    elif how == "flip":
        raw[at] ^= data.draw(st.integers(1, 255))
    elif how == "append":
        raw += data.draw(st.binary(min_size=1, max_size=64))
    elif not target.name.endswith(".gz") and len(raw) >= 8:   # a dimension: any 32-bit count
        raw[4:8] = struct.pack(">I", data.draw(st.integers(0, 2**32 - 1)))
    target.write_bytes(bytes(raw))
    try:
        split = load_mnist("test", data_dir=folder, source="idx")
    except FileNotFoundError:
        pass
    except Exception as e:  # noqa: BLE001
        assert_user_error(e, folder)
    else:
        assert split.images.dtype == np.uint8 and split.images.ndim == 3 and len(split.images) == len(split.labels)


# --------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------

NAMES = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)), min_size=1, max_size=20)


@FUZZ
@given(data=st.data())
def test_an_image_folder_with_odd_entries(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("folder")
    good = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 12), dtype=np.uint8))
    good.save(root / "good.png")
    png = (root / "good.png").read_bytes()
    for i in range(data.draw(st.integers(1, 4))):
        name = data.draw(NAMES).lstrip(".") or "x"
        name = name[:40] + data.draw(st.sampled_from([".png", ".jpg", ".PNG", ""]))
        entry = root / f"{i}{name}"
        kind = data.draw(st.sampled_from(["truncated", "random", "empty", "loop", "dangling", "to folder", "good"]))
        try:
            if kind == "truncated":
                entry.write_bytes(png[:data.draw(st.integers(0, len(png) - 1))])
            elif kind == "random":
                entry.write_bytes(data.draw(st.binary(max_size=200)))
            elif kind == "empty":
                entry.write_bytes(b"")
            elif kind == "loop":
                os.symlink(entry.name, entry)
            elif kind == "dangling":
                os.symlink(root / "nowhere", entry)
            elif kind == "to folder":
                os.symlink(root, entry)
            else:
                entry.write_bytes(png)
        except OSError:   # a name this file system refuses
            continue
    try:
        loaded = load_image_folder(root, image_size=8)
    except Exception as e:  # noqa: BLE001
        assert_user_error(e, root)
    else:
        assert loaded.images.dtype == np.uint8 and loaded.images.shape[1:] == (1, 8, 8)
        assert all("\n" not in line for line in loaded.skipped)


# --------------------------------------------------------------------------------------------
# compressed bombs, in a subprocess with at most 1.5 GB of address space
# --------------------------------------------------------------------------------------------

BOMB = 2 * 2**30   # bytes of zeros behind each bomb: more than the address space the loading process may use


def deflated_zeros(header: bytes, zeros: int, wbits: int = -15):
    """(deflate stream, CRC-32) of ``header`` then ``zeros`` zero bytes, without ever holding them: every 1 MiB of
    zeros is compressed alone (a full flush resets the history), so its compressed bytes are the same each time."""
    chunk = bytes(2**20)
    start = zlib.compressobj(9, zlib.DEFLATED, wbits)
    head = start.compress(header) + start.flush(zlib.Z_FULL_FLUSH)
    piece = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = piece.compress(chunk) + piece.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(header)
    for _ in range(zeros // len(chunk)):
        crc = zlib.crc32(chunk, crc)
    end = zlib.compressobj(9, zlib.DEFLATED, -15)
    return head + block * (zeros // len(chunk)) + end.flush(zlib.Z_FINISH), crc


def write_zip(path, members) -> None:
    """A zip of ``members`` [(name, method, crc, compressed bytes, uncompressed size)], written by hand so that a
    member's deflate stream can be one built without inflating it."""
    with open(path, "wb") as f:
        central = b""
        for name, method, crc, data, size in members:
            encoded, offset = name.encode(), f.tell()
            f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(data), size,
                                len(encoded), 0) + encoded + data)
            central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, len(data),
                                   size, len(encoded), 0, 0, 0, 0, 0, offset) + encoded
        start = f.tell()
        f.write(central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central),
                                      start, 0))


def checkpoint_bomb(good, path, member, header, zeros=BOMB) -> Path:
    with zipfile.ZipFile(good) as z:
        members = [(i.filename, 0, zlib.crc32(z.read(i.filename)), z.read(i.filename), i.file_size)
                   for i in z.infolist()]
    stream, crc = deflated_zeros(header, zeros)
    members = [m for m in members if m[0] != member] + [(member, 8, crc, stream, len(header) + zeros)]
    write_zip(path, members)
    return path


LOAD_UNDER_LIMIT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1536 * 2**20, 1536 * 2**20))
sys.path.insert(0, {repo!r})
from tinyddpm.classifiers.judge import load_classifier
from tinyddpm.data.mnist import load_mnist
from tinyddpm.training.resume import load_for_sampling
for kind, path in {cases!r}:
    try:
        {{"sampling": load_for_sampling, "classifier": load_classifier,
          "idx": lambda p: load_mnist("test", data_dir=p, source="idx")}}[kind](path)
        print("LOADED", path)
    except ValueError as e:
        print("REFUSED", str(e).replace("\\n", " "))
"""


def test_compressed_bombs_are_refused_within_bounded_memory(files, tmp_path):
    good = files / "checkpoint.npz"
    cases = [
        ("sampling", checkpoint_bomb(good, tmp_path / "declared.npz", "ema/avg/conv_in.w.npy",
                                     npy_header((BOMB // 4,), np.float32))),
        ("sampling", checkpoint_bomb(good, tmp_path / "padded.npz", "ema/avg/conv_in.w.npy",
                                     npy_header((8, 1, 3, 3), np.float32))),
        ("sampling", checkpoint_bomb(good, tmp_path / "meta.npz", "meta/extra.npy", npy_header((BOMB,), np.uint8))),
        ("classifier", checkpoint_bomb(files / "classifier.npz", tmp_path / "classifier.npz", "params/fc1.w.npy",
                                       npy_header((BOMB // 4,), np.float32))),
    ]
    for name, dims in (("small", (7, 28, 28)), ("honest", (BOMB // 784, 28, 28))):
        folder = tmp_path / f"idx_{name}"
        folder.mkdir()
        stream, crc = deflated_zeros(struct.pack(">BBBB3I", 0, 0, 8, 3, *dims), BOMB)
        (folder / (FILES["test"][0] + ".gz")).write_bytes(
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + stream + struct.pack("<II", crc, (16 + BOMB) % 2**32))
        (folder / FILES["test"][1]).write_bytes((files / "idx" / FILES["test"][1]).read_bytes())
        cases.append(("idx", folder))
    assert all(Path(p).is_dir() or Path(p).stat().st_size < 2**24 for _, p in cases)
    done = subprocess.run([sys.executable, "-c", LOAD_UNDER_LIMIT.format(repo=str(REPO), cases=[(k, str(p))
                                                                                               for k, p in cases])],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len(lines) == len(cases), done.stdout
    for line, (_, path) in zip(lines, cases):
        assert line.startswith("REFUSED") and str(path) in line, line
    assert "has extra bytes" in lines[4] and "needs about" in lines[5], lines[4:]
