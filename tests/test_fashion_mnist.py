"""Fashion-MNIST by name: its sources (IDX files, Debian's package, a download from a local server only), checksums,
the message when none is there, and train_mnist.py --dataset fashion-mnist end to end on stand-in files."""
import gzip
import hashlib

import numpy as np
import pytest

from helpers import load_example
from test_data import REFUSED, Server, digits, gz_idx, write_split
from tinyddpm.data import mnist as data
from tinyddpm.checkpoint import load_checkpoint
from tinyddpm.data import CLASS_NAMES, DownloadError, FallbackUnavailable, download_mnist, load_dataset

DEBIAN = data.FASHION_SYSTEM_DIRS[0]
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No Debian package, no reachable mirror, no cache: only what a test puts in place."""
    monkeypatch.setattr(data, "FASHION_SYSTEM_DIRS", [tmp_path / "no_package"])
    monkeypatch.setattr(data, "FASHION_MIRRORS", [REFUSED])
    monkeypatch.setenv("TINYDDPM_CACHE", str(tmp_path / "cache"))


def register(monkeypatch, split, images, labels):
    """Make (images, labels) count as the published Fashion-MNIST split: their uncompressed SHA-256."""
    for stem, array in zip(data.FILES[split], (images, labels)):
        raw = gzip.decompress(gz_idx(array))
        monkeypatch.setitem(data.FASHION_RAW_SHA256, stem, hashlib.sha256(raw).hexdigest())


def test_class_names_and_the_default_folder(monkeypatch, tmp_path):
    assert CLASS_NAMES["fashion-mnist"] == CLASSES and CLASS_NAMES["mnist"] == tuple("0123456789")
    monkeypatch.setenv("TINYDDPM_CACHE", str(tmp_path))
    assert data.mnist_dir(None, "fashion-mnist") == tmp_path / "fashion-mnist"
    monkeypatch.delenv("TINYDDPM_CACHE")
    assert data.mnist_dir(None, "fashion-mnist") == data.Path.home() / ".cache" / "tinyddpm" / "fashion-mnist"


def test_idx_files_in_the_data_dir(tmp_path, nowhere, capsys):
    images, labels = digits(6)
    write_split(tmp_path, images, labels, "test", gz=True)
    got = load_dataset("fashion-mnist", "test", data_dir=tmp_path)
    assert np.array_equal(got.images, images) and np.array_equal(got.labels, labels)
    assert got.dataset == "fashion-mnist" and got.class_names == CLASSES
    assert "not the published Fashion-MNIST: your own data" in got.source
    assert capsys.readouterr().out.startswith("tinyddpm.data: Fashion-MNIST test: IDX files in")


def test_the_system_package_is_used_only_when_verified(tmp_path, nowhere, monkeypatch, capsys):
    package = tmp_path / "usr_share"
    package.mkdir()
    images, labels = digits(5, seed=3)
    write_split(package, images, labels, "train", gz=True)
    monkeypatch.setattr(data, "FASHION_SYSTEM_DIRS", [package])
    with pytest.raises(ValueError, match="not the published Fashion-MNIST train split"):
        load_dataset("fashion-mnist", "train")        # stand-in files, unregistered: refused
    register(monkeypatch, "train", images, labels)
    got = load_dataset("fashion-mnist", "train")
    assert np.array_equal(got.labels, labels)
    assert "Debian's package dataset-fashion-mnist" in got.source and "SHA-256 verified" in got.source
    with pytest.raises(ValueError, match="source must be one of"):
        load_dataset("fashion-mnist", "train", source="subset")
    with pytest.raises(ValueError, match="load_mnist: source must be one of"):
        load_dataset("mnist", "train", source="system")


@pytest.mark.skipif(not all(data.find_idx_files("test", DEBIAN)),
                    reason=f"Debian's dataset-fashion-mnist is not installed ({DEBIAN}): the real files not tested")
def test_the_real_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYDDPM_CACHE", str(tmp_path))   # no cached copy in the way
    got = load_dataset("fashion-mnist", "test", download=False)
    assert got.images.shape == (10000, 28, 28) and "SHA-256 verified" in got.source
    assert np.array_equal(np.bincount(got.labels), [1000] * 10)   # the published test split: 1,000 per class


def test_a_corrupt_file_is_named_in_one_line(tmp_path, nowhere):
    images, labels = digits(4)
    images_path, _ = write_split(tmp_path, images, labels, "test")
    images_path.write_bytes(images_path.read_bytes()[:-5])
    with pytest.raises(ValueError) as e:
        load_dataset("fashion-mnist", "test", data_dir=tmp_path)
    assert str(images_path) in str(e.value) and "truncated" in str(e.value) and "\n" not in str(e.value)


def test_nothing_there_says_how_to_get_it(tmp_path, nowhere):
    for kwargs in ({}, {"download": False}):
        with pytest.raises(FallbackUnavailable) as e:
            load_dataset("fashion-mnist", "test", data_dir=tmp_path / "empty", **kwargs)
        message = str(e.value)
        assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message
        assert "\n" not in message
    with pytest.raises(FallbackUnavailable, match="no Fashion-MNIST test files in .*no_package"):
        load_dataset("fashion-mnist", "test", source="system")


@pytest.fixture
def fashion_server(monkeypatch):
    images, labels = digits(5, seed=7)
    files = {"t10k-images-idx3-ubyte.gz": gz_idx(images), "t10k-labels-idx1-ubyte.gz": gz_idx(labels)}
    server = Server(files)
    yield server, files, images, labels
    server.close()


def test_download_accepts_the_published_md5(tmp_path, nowhere, monkeypatch, fashion_server):
    server, files, images, labels = fashion_server
    for name, body in files.items():
        monkeypatch.setitem(data.FASHION_GZ_MD5, name, hashlib.md5(body).hexdigest())
    monkeypatch.setattr(data, "FASHION_MIRRORS", [REFUSED, server.url])
    got = load_dataset("fashion-mnist", "test")      # auto: no files, no package: the download
    assert np.array_equal(got.images, images) and got.source.startswith("downloaded IDX files")
    cache = tmp_path / "cache" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)   # no .part file left


def test_download_accepts_a_recompressed_copy_by_its_uncompressed_sha256(tmp_path, fashion_server, monkeypatch):
    server, files, images, labels = fashion_server
    register(monkeypatch, "test", images, labels)   # MD5s stay the real published ones: they cannot match
    root = download_mnist("test", tmp_path, mirrors=[server.url], dataset="fashion-mnist")
    assert (root / "t10k-labels-idx1-ubyte.gz").read_bytes() == files["t10k-labels-idx1-ubyte.gz"]


def test_download_rejects_a_checksum_mismatch(tmp_path, fashion_server):
    server, _, _, _ = fashion_server
    with pytest.raises(DownloadError, match="(?s)Fashion-MNIST's t10k-images-idx3-ubyte.gz.*checksum mismatch: MD5"):
        download_mnist("test", tmp_path, mirrors=[server.url], dataset="fashion-mnist")
    assert list(tmp_path.iterdir()) == []


def test_train_mnist_on_fashion_mnist_records_the_class_names(tmp_path, nowhere, capsys):
    images, labels = digits(48, seed=1)
    (tmp_path / "idx").mkdir()
    write_split(tmp_path / "idx", images, labels, "train")
    out = tmp_path / "run"
    argv = ["--dataset", "fashion-mnist", "--preset", "tiny", "--data-dir", str(tmp_path / "idx"), "--out", str(out),
            "--device", "cpu", "--no-progress"]
    assert load_example("train_mnist").main(argv) == 0
    assert "Fashion-MNIST train: IDX files" in capsys.readouterr().out
    assert load_checkpoint(out / "checkpoint.npz").extra["class_names"] == list(CLASSES)
    assert (out / "samples.png").stat().st_size > 1000
    resume = ["--resume", "--data-dir", str(tmp_path / "idx"), "--out", str(out), "--device", "cpu", "--steps", "5"]
    assert load_example("train_mnist").main(resume) == 2     # the same files as MNIST: refused in one line
    assert "trained on Fashion-MNIST" in capsys.readouterr().err
