"""One validation of a checkpoint against its own config (issue 26, item 1): every tensor's name, shape, dtype and
finiteness, and sizes read from the zip directory and the .npy headers before any member is decompressed; the
IDX reader's header checked before its data is read. Every refusal is one line naming the file and the tensor."""
import gzip
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tinyddpm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tinyddpm.classifiers.judge import ClassifierConfig, init_params as classifier_params, load_classifier
from tinyddpm.data.mnist import FILES, load_mnist, read_idx, write_idx
from tinyddpm.training.config import preset
from tinyddpm.training.resume import load_for_sampling, resume_state, save_state
from tinyddpm.training.state import new_state

from helpers import npy_bytes, npy_header

REPO = Path(__file__).resolve().parents[1]


def tiny_data():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (16, 28, 28), dtype=np.uint8), np.arange(16) % 10


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A valid training checkpoint of the tiny preset (step 0: no training needed)."""
    images, labels = tiny_data()
    path = tmp_path_factory.mktemp("good") / "checkpoint.npz"
    save_state(new_state(preset("tiny"), images, labels), path)
    return path





def rewrite(src, dst, replace):
    """Copy the zip ``src`` to ``dst`` member by member, with the members of ``replace`` {member: bytes} replaced."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, replace.get(info.filename) or zin.read(info.filename))
    return dst


def write_bomb(src, dst, member, header: bytes, zeros: int):
    """``src`` with ``member`` replaced by ``header`` and ``zeros`` zero bytes, deflated (1 MB chunks)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename != member:
                zout.writestr(info.filename, zin.read(info.filename))
                continue
            target = zipfile.ZipInfo(member)
            target.compress_type = zipfile.ZIP_DEFLATED
            with zout.open(target, "w", force_zip64=True) as f:
                f.write(header)
                chunk = bytes(2**20)
                for start in range(0, zeros, len(chunk)):
                    f.write(chunk[:min(len(chunk), zeros - start)])
    return dst


def one_line(e) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    return text


# --------------------------------------------------------------------------------------------
# dtype, shape, names: against the checkpoint's own config
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float16, np.int32, np.float64])
@pytest.mark.parametrize("member, use_ema", [("ema/avg/conv_in.w", True), ("params/conv_in.w", False)])
def test_a_tensor_of_another_dtype_is_refused_by_every_loader(good, tmp_path, dtype, member, use_ema):
    with zipfile.ZipFile(good) as z:
        array = np.lib.format.read_array(z.open(member + ".npy"))
    bad = rewrite(good, tmp_path / "bad.npz", replace={member + ".npy": npy_bytes(array.astype(dtype))})
    with pytest.raises(CheckpointError) as e:
        load_for_sampling(bad, use_ema=use_ema)
    assert re.fullmatch(re.escape(f"{bad}: tensor {member!r} is {np.dtype(dtype)}, the stored config says float32"),
                        one_line(e))
    with pytest.raises(CheckpointError, match=re.escape(f"{bad}: tensor {member!r} is {np.dtype(dtype)}")):
        resume_state(bad, *tiny_data())


def test_a_tensor_of_another_shape_or_an_extra_one_is_refused_before_it_is_read(good, tmp_path, monkeypatch):
    reads = []
    original = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array", lambda f, **kw: reads.append(1) or original(f, **kw))
    bad = rewrite(good, tmp_path / "bad.npz", replace={"ema/avg/conv_in.b.npy": npy_bytes(np.zeros(9, np.float32))})
    reads.clear()
    with pytest.raises(CheckpointError, match=re.escape(f"{bad}: tensor 'ema/avg/conv_in.b' has shape (9,), the "
                                                        "stored config gives (8,)")):
        load_for_sampling(bad)
    assert len(reads) <= 6   # only the meta entries (magic, version, manifest, config, step) were read


def test_nan_in_the_weights_used_names_the_tensor(good, tmp_path):
    with zipfile.ZipFile(good) as z:
        array = np.lib.format.read_array(z.open("ema/avg/conv_out.b.npy"))
    array[0] = np.inf
    bad = rewrite(good, tmp_path / "bad.npz", replace={"ema/avg/conv_out.b.npy": npy_bytes(array)})
    with pytest.raises(CheckpointError) as e:
        load_for_sampling(bad)
    assert one_line(e).startswith(f"{bad}: the EMA weights 'conv_out.b' hold 1 NaN or infinite values of")
    load_for_sampling(bad, use_ema=False)   # the raw weights are fine


def test_a_classifier_cache_of_another_dtype_or_shape_than_its_config_is_refused(tmp_path):
    from dataclasses import asdict
    cfg = ClassifierConfig(channels=(4, 4, 4), features=8)
    config = {"kind": "tinyddpm.classifier", **asdict(cfg), "channels": list(cfg.channels)}
    params = classifier_params(cfg)
    good = save_checkpoint(tmp_path / "good.npz", config=config, params=params)
    assert set(load_classifier(good)[0]) == set(params)
    half = save_checkpoint(tmp_path / "half.npz", config=config, params=dict(params, **{
        "fc1.w": params["fc1.w"].astype(np.float16)}))
    with pytest.raises(CheckpointError, match=re.escape(f"{half}: tensor 'params/fc1.w' is float16")):
        load_classifier(half)
    wide = dict(config, features=16)   # the weights chain, but they are not the network the config describes
    other = save_checkpoint(tmp_path / "other.npz", config=wide, params=params)
    with pytest.raises(CheckpointError, match=re.escape(f"{other}: tensor 'params/fc1.b' has shape (8,), the stored config gives (16,)")):
        load_classifier(other)


# --------------------------------------------------------------------------------------------
# sizes before memory
# --------------------------------------------------------------------------------------------

PEAK_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from tinyddpm.checkpoint import CheckpointError
from tinyddpm.training.resume import load_for_sampling
try:
    load_for_sampling({path!r})
    print("LOADED")
except CheckpointError as e:
    print("REFUSED", e)
print("PEAK_KB", [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")][0])
"""


def peak_of_loading(path) -> tuple:
    """(output line, peak resident kB) of load_for_sampling(path) in a fresh process (VmHWM: ru_maxrss would
    count the forked copy of pytest from before the exec)."""
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT.format(repo=str(REPO), path=str(path))],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    return lines[0], int(lines[-1].split()[1])


@pytest.mark.parametrize("case", ["declared huge", "padded past its shape"])
def test_a_compressed_bomb_is_refused_before_it_is_decompressed(good, tmp_path, case):
    """A 400 MB member (deflated to ~0.4 MB): refused from the zip directory and its header, never read."""
    zeros = 400 * 2**20
    member = "ema/avg/conv_in.w.npy"
    if case == "declared huge":      # the header says (100 M,) float32: what the zeros need
        header = npy_header((zeros // 4,), np.float32)
        message = "tensor 'ema/avg/conv_in.w' has shape (104857600,)"
    else:                            # the header says (8, 1, 3, 3) float32, then 400 MB follow
        header = npy_header((8, 1, 3, 3), np.float32)
        message = "entry 'ema/avg/conv_in.w' is damaged: its zip directory says"
    bomb = write_bomb(good, tmp_path / "bomb.npz", member, header, zeros)
    assert bomb.stat().st_size < 3 * 2**20
    line, peak_kb = peak_of_loading(bomb)
    assert line.startswith("REFUSED") and message in line and str(bomb) in line, line
    assert peak_kb * 1024 < zeros / 2, f"peak {peak_kb} kB for a {zeros} byte bomb"


def test_a_meta_entry_may_not_be_huge(good, tmp_path):
    from tinyddpm.checkpoint import MAX_META_BYTES
    size = MAX_META_BYTES + 1
    bomb = write_bomb(good, tmp_path / "bomb.npz", "meta/extra.npy", npy_header((size,), np.uint8), size)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(bomb)
    assert one_line(e) == (f"{bomb}: entry 'meta/extra' declares {size} bytes (uint8 ({size},)), more than the "
                           f"{MAX_META_BYTES} such an entry may hold")


# --------------------------------------------------------------------------------------------
# IDX files: the header before the data
# --------------------------------------------------------------------------------------------

IDX_PEAK_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
from tinyddpm.data.mnist import read_idx
try:
    read_idx({path!r})
    print("LOADED")
except ValueError as e:
    print("REFUSED", e)
print("PEAK_KB", [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")][0])
"""


def test_a_gzip_idx_bomb_is_refused_after_the_promised_bytes(tmp_path):
    """A 400 MB stream behind a header promising 7x28x28 bytes: one byte past the promise is read, no more."""
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    zeros = 400 * 2**20
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(struct.pack(">BBBB3I", 0, 0, 0x08, 3, 7, 28, 28))
        chunk = bytes(2**20)
        for _ in range(zeros // len(chunk)):
            f.write(chunk)
    assert path.stat().st_size < 3 * 2**20
    done = subprocess.run([sys.executable, "-c", IDX_PEAK_SCRIPT.format(repo=str(REPO), path=str(path))],
                          capture_output=True, text=True, timeout=120)
    line, peak_kb = done.stdout.splitlines()[0], int(done.stdout.splitlines()[-1].split()[1])
    assert line == f"REFUSED {path}: has extra bytes: the header (magic 0x00000803, dims (7, 28, 28)) promises " \
                   "5504 bytes, the file has more", line
    assert peak_kb * 1024 < zeros / 2


def test_an_idx_header_promising_more_than_the_memory_is_refused_before_reading(tmp_path, monkeypatch):
    import tinyddpm.data.mnist as mnist
    import tinyddpm.checks as memory
    path = tmp_path / "images.gz"
    write_idx(path, np.zeros((7, 28, 28), np.uint8))
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)
    with pytest.raises(ValueError) as e:
        read_idx(path)
    assert one_line(e).startswith(f"{path}: reading it (the header, magic 0x00000803, promises dims (7, 28, 28)) "
                                  "needs about 11.0 kB of memory, this machine has 1.0 kB available")
    assert mnist   # the reader goes through tinyddpm.checks


def test_a_plain_idx_file_is_checked_against_its_size_before_reading(tmp_path):
    images, labels = np.zeros((7, 28, 28), np.uint8), np.arange(7, dtype=np.uint8)
    write_idx(tmp_path / FILES["test"][0], images)
    write_idx(tmp_path / FILES["test"][1], labels)
    raw = bytearray((tmp_path / FILES["test"][0]).read_bytes())
    raw[4:8] = struct.pack(">I", 10**9)   # a header promising 784 GB
    (tmp_path / FILES["test"][0]).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / FILES['test'][0]}: truncated: the header (magic "
                                                   "0x00000803, dims (1000000000, 28, 28)) promises 784000000016 "
                                                   "bytes, the file has 5504")):
        load_mnist("test", data_dir=tmp_path, source="idx")
