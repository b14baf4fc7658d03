"""A folder of your own pictures as training data: every image centre-cropped to a square and resized.

    data = load_image_folder("my_pictures", image_size=32)      # channels: 1 if every image is grey, else 3
    data.images        # uint8 (N, C, 32, 32)
    data.labels        # int64 (N,): the index of each image's class subfolder, or None for a flat folder
    data.class_names   # sorted subfolder names, [] for a flat folder
    data.source        # one line for a person: the path, the counts, the size and how they were made

Layout. Either every image sits at the top of the folder (a flat folder: unconditional training), or every
image sits in a subfolder, one per class (``flowers/rose/*.jpg``, ``flowers/tulip/*.png``: class-conditional
training; labels follow the sorted subfolder names). Images both at the top and in subfolders are refused:
which class would the top ones be? Files are PNG, JPEG, BMP or WebP by extension (any case); other files
are ignored and counted, hidden ones (``.DS_Store``, ``.git``) ignored silently; a subfolder holding no image
file is ignored and named; pictures deeper than one subfolder are not read.

One picture, from file to array (Pillow decodes; the rest is one crop-and-resize per image):

    decode          Image.open + load(): the whole file is read now, so a truncated file fails here
                    (ImageFile.LOAD_TRUNCATED_IMAGES is held False while loading, then restored); a photo's
                    EXIF orientation is applied (ImageOps.exif_transpose), so portraits stand upright
    to L or RGB     grey (1, L, I;16, I) stays grey: 16-bit values are scaled by 255 / 65535;
                    palette, CMYK, YCbCr ... become RGB; an alpha channel (RGBA, LA, PA, a palette's
                    transparent colour) is composited on white:  out = a * rgb + (1 - a) * 255
    crop            the centred square of side s = min(w, h): box ((w - s) // 2, (h - s) // 2, +s, +s)
    resize          to image_size x image_size with Lanczos (Pillow's LANCZOS, a windowed sinc:
                    antialiased when shrinking, sharp when enlarging); JPEGs are first decoded at a reduced
                    scale (Image.draft) that stays at least image_size on each side, which is faster for photos
    channels        C = 1 if every image is grey, else 3: grey images are then replicated into R = G = B and
                    the source line says how many. An RGB file counts as grey when its planes differ by at most
                    GREY_TOLERANCE (2 of 255) anywhere after resizing: lossy WebP stores a grey picture in
                    colour, off by 1.
                    channels=1 asked for colour images gives their luma, L = (299 R + 587 G + 114 B) / 1000
                    (ITU-R 601, Pillow's convert('L')), rounded.

Pictures smaller than MIN_SIDE (8) pixels on their shorter side are skipped with that reason: an icon
enlarged to 32 pixels teaches the model blur. Anything from 8 pixels up is resized (enlarged if need be),
and the source line counts the enlarged ones.

Bad input. A path that does not exist raises FileNotFoundError; a file instead of a folder, a folder with no
image file, images at the top and in subfolders, or no readable image raise ValueError; each message is one
line naming the path and the problem. A file that cannot be decoded (corrupt, truncated, not really an image,
a decompression bomb: more than twice Image.MAX_IMAGE_PIXELS) is skipped, listed in ``skipped`` with the
reason and passed to ``log`` if given; nothing is unpickled, and Pillow's own exception never escapes. So is an
entry that cannot be looked at -- a symbolic link loop, a subfolder or file that cannot be read (permission denied)
-- inside the folder: one bad entry costs that entry, not the run. Only the folder itself must be readable.

Each ``skipped`` line is "file: reason" on one line: a file name may hold a newline, so the line is passed through
``printable`` (a backslash, a newline or any other unprintable character written as Python writes it in a string:
\\\\, \\n, \\x1b, \\udcff), which keeps skipped_files.txt one line per file and every message one line.
"""
from __future__ import annotations

import errno
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from ..checks import check_fits

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")   # compared in lower case
MIN_SIDE = 8                                               # pictures below this (shorter side, pixels) are skipped
RESAMPLE = getattr(Image, "Resampling", Image).LANCZOS     # Image.Resampling from Pillow 9.1 on
LUMA = np.array([299, 587, 114], dtype=np.uint32)          # ITU-R 601 weights, in thousandths
GREY_TOLERANCE = 2                                         # an RGB picture whose planes differ by <= this is grey


@dataclass
class ImageFolderData:
    images: np.ndarray              # uint8 (N, C, H, W), H = W = image_size
    labels: np.ndarray | None       # int64 (N,) class indices into class_names; None for a flat folder
    class_names: list = field(default_factory=list)   # sorted subfolder names; [] for a flat folder
    channels: int = 1               # C: 1 (grey) or 3 (RGB)
    source: str = ""                # for a person: the path, the counts, the size, what was converted
    skipped: list = field(default_factory=list)       # "file: reason" of each file that could not be used

    def __len__(self) -> int:
        return len(self.images)


def load_image_folder(path, image_size: int, channels: int | None = None, *, log=None) -> ImageFolderData:
    """The pictures under ``path`` as uint8 (N, C, image_size, image_size), labelled by subfolder if any.

    ``channels``: 1 or 3, or None to choose 1 when every picture is grey, else 3. ``log(line)`` is called
    once per skipped file ("file: reason"). Raises FileNotFoundError or ValueError, one line each (module doc).
    """
    image_size, channels = _check_arguments(image_size, channels)
    root = Path(path).expanduser()
    classes, empty, ignored, unusable = _find_files(root)  # {class name or "": [files]}, empty subfolders, count,
    skipped, pictures, labels, lost = [], [], [], []       # [(entry, reason, label or -1)]
    count = sum(len(files) for files in classes.values())
    # before decoding anything: every picture at image_size, RGB at most (3 uint8 values per pixel), plus the float32
    # copy in [-1, 1] that training keeps (4 more bytes per value)
    check_fits(f"{count:,} pictures of up to 3x{image_size}x{image_size} as training data", 15 * count * image_size ** 2,
               what=f"{root}: image_size {image_size}")
    for entry, reason, label in unusable:
        skipped.append(printable(f"{entry}: {reason}"))
        lost.append(label)
        if log is not None:
            log(f"skipped {skipped[-1]}")
    with _truncated_files_fail():
        for label, (name, files) in enumerate(classes.items()):
            for file in files:
                picture, reason = _read_picture(file, image_size)
                if picture is None:
                    skipped.append(printable(f"{file}: {reason}"))
                    lost.append(label)
                    if log is not None:
                        log(f"skipped {skipped[-1]}")
                    continue
                pictures.append(picture)
                labels.append(label)
    _check_something_read(root, classes, labels, skipped, lost)
    enlarged = sum(p.enlarged for p in pictures)
    images, grey_count = _stack(pictures, channels)       # (N, C, S, S), pictures that were grey
    flat = list(classes) == [""]
    data = ImageFolderData(images=images, labels=None if flat else np.asarray(labels, dtype=np.int64),
                           class_names=[] if flat else list(classes), channels=images.shape[1],
                           skipped=skipped)
    data.source = _describe(root, data, ignored, empty, enlarged, grey_count)
    return data


# ---------------------------------------------------------------------------------------------------
# one picture

@dataclass
class _Picture:
    pixels: np.ndarray    # uint8 (S, S) grey or (S, S, 3) RGB
    enlarged: bool        # the crop was smaller than S and was enlarged


def _read_picture(file: Path, size: int):
    """(_Picture, None), or (None, reason) when the file cannot be used."""
    try:
        with warnings.catch_warnings():
            # more than MAX_IMAGE_PIXELS warns, more than twice that raises DecompressionBombError (skipped below):
            # a large photo between the two is a real picture, read without a warning line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as im:
                im.draft("RGB" if im.mode not in ("L", "1") else "L", (size, size))   # JPEG: decode at a reduced scale
                im.load()                                                             # the whole file, now
                upright = ImageOps.exif_transpose(im)                                 # a phone's portrait stands up
                w, h = upright.size
                if min(w, h) < MIN_SIDE:
                    return None, f"{w}x{h} px, smaller than {MIN_SIDE} px on a side"
                plain = _to_grey_or_rgb(upright)
                s = min(w, h)
                box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)   # the centred square
                small = plain.resize((size, size), RESAMPLE, box=box)
                return _Picture(np.asarray(small, dtype=np.uint8), s < size), None
    except Image.DecompressionBombError:
        return None, f"more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels (Pillow's decompression-bomb limit)"
    except Exception as e:   # noqa: BLE001 -- Pillow reports a bad file with many types (OSError, SyntaxError,
        # ValueError, struct.error, EOFError, ...); any of them, for this one user file, means "cannot read it"
        return None, _reason(e)


def _to_grey_or_rgb(im: Image.Image) -> Image.Image:
    """Mode 'L' or 'RGB': 16/32-bit grey scaled to 8 bits, alpha composited on white, anything else to RGB."""
    if im.mode in ("1", "L"):
        return im.convert("L")
    if im.mode.startswith("I") or im.mode == "F":      # 16-bit (or int / float) grey: 0..65535 -> 0..255
        wide = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(wide * (255.0 / 65535.0)), 0, 255).astype(np.uint8), "L")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
    if has_alpha:
        grey = im.mode in ("LA", "La")
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(white, rgba)            # a * rgb + (1 - a) * 255
        return flat.convert("L") if grey else flat.convert("RGB")
    return im.convert("RGB")


def printable(text: str) -> str:
    """``text`` on one line: a backslash doubled, and every character str.isprintable refuses (newline, carriage
    return, tab, escape, the undecodable bytes of a file name as surrogates) written as a Python escape (\\n, \\x1b,
    \\udcff). Plain spaces and printable non-ASCII letters stay as they are."""
    out = []
    for ch in str(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch)
            out.append(named or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                                 else f"\\U{code:08x}"))
    return "".join(out)


def _entry_reason(e: OSError) -> str:
    """Why a folder entry cannot be looked at, in words."""
    if e.errno == errno.ELOOP:
        return "a symbolic link loop (it points, in the end, at itself)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "cannot be read (permission denied)"
    return f"cannot be read ({e.strerror or type(e).__name__})"


def _reason(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if text.startswith("cannot identify image file"):
        return "not an image Pillow can read"
    return f"unreadable ({type(e).__name__}: {text[:160]})"


# ---------------------------------------------------------------------------------------------------
# many pictures: one array

def _stack(pictures: list, channels: int | None):
    """(images uint8 (N, C, S, S), the number of grey pictures) from the pictures' pixels."""
    grey = np.array([p.pixels.ndim == 2 or _looks_grey(p.pixels) for p in pictures])   # (N,) bool
    if channels is None:
        channels = 1 if grey.all() else 3
    if channels == 1 and all(p.pixels.ndim == 2 for p in pictures):     # grey files only: no RGB detour
        return np.stack([p.pixels for p in pictures])[:, None], int(grey.sum())        # (N, 1, S, S)
    as_rgb = [p.pixels if p.pixels.ndim == 3 else np.repeat(p.pixels[:, :, None], 3, axis=2) for p in pictures]
    rgb = np.stack(as_rgb).transpose(0, 3, 1, 2)                                         # (N, 3, S, S)
    if channels == 3:
        return np.ascontiguousarray(rgb), int(grey.sum())
    luma = np.tensordot(LUMA, rgb.astype(np.uint32), axes=(0, 1))                       # (N, S, S), x1000
    return ((luma + 500) // 1000).astype(np.uint8)[:, None], int(grey.sum())              # (N, 1, S, S)


def _looks_grey(rgb: np.ndarray) -> bool:
    """True when an (S, S, 3) picture is grey stored as RGB: its planes differ by at most GREY_TOLERANCE anywhere."""
    planes = rgb.astype(np.int16)
    return bool(np.abs(planes[:, :, :2] - planes[:, :, 1:]).max() <= GREY_TOLERANCE)   # |R - G|, |G - B|


# ---------------------------------------------------------------------------------------------------
# the folder: which files, which classes

def _find_files(root: Path):
    """({class name: sorted image files}, [subfolders without images], ignored count, [(entry, reason, label)] of
    entries that cannot be looked at); {"": files} when flat. ``label``: the entry's class index, else -1."""
    _check_folder(root)
    top_images, subfolders, ignored, bad_top = _scan(root)
    classes, empty, bad = {}, [], []
    for folder in sorted(subfolders, key=lambda p: p.name):
        try:
            images, _, extra, bad_here = _scan(folder)
        except OSError as e:   # a class subfolder that cannot be listed: skipped and named, like a corrupt picture
            bad.append((folder, _entry_reason(e), -1))
            continue
        ignored += extra
        if images:
            bad += [(entry, reason, len(classes)) for entry, reason in bad_here]
            classes[folder.name] = images
        else:
            bad += [(entry, reason, -1) for entry, reason in bad_here]
            empty.append(folder.name)
    flat_label = 0 if top_images and not classes else -1
    bad = [(entry, reason, flat_label) for entry, reason in bad_top] + bad
    if top_images and classes:
        raise ValueError(f"{root}: holds {len(top_images)} image(s) at its top level and class subfolders "
                         f"({_names(classes)}); put every image in a class subfolder, or all of them at the top "
                         "level for unconditional training")
    if not top_images and not classes:
        raise ValueError(f"{root}: no image files (PNG, JPEG, BMP or WebP) at its top level or in its subfolders"
                         f"{_ignored_note(ignored)}")
    return ({"": top_images} if top_images else classes), empty, ignored, bad


def _scan(folder: Path):
    """(sorted image files, subfolders, count of other files, [(entry, reason)] of entries that cannot be looked at)
    directly in ``folder``; hidden names left out. Listing ``folder`` itself may raise OSError."""
    images, subfolders, other, bad = [], [], 0, []
    with os.scandir(folder) as listing:
        entries = sorted(listing, key=lambda e: e.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            is_dir = entry.is_dir()         # follows a symbolic link: a loop raises ELOOP here
        except OSError as e:
            bad.append((Path(entry.path), _entry_reason(e)))
            continue
        if is_dir:
            subfolders.append(Path(entry.path))
        elif Path(entry.name).suffix.lower() in EXTENSIONS:
            images.append(Path(entry.path))
        else:
            other += 1
    return images, subfolders, other, bad


def _check_arguments(image_size, channels):
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < MIN_SIDE:
        raise ValueError(f"load_image_folder: image_size must be an integer >= {MIN_SIDE}, got {image_size!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"load_image_folder: channels must be None, 1 or 3, got {channels!r}")
    return int(image_size), channels


def _check_folder(root: Path) -> None:
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder")
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (give the folder that holds the pictures)")
    if not any(True for _ in os.scandir(root)):
        raise ValueError(f"{root}: the folder is empty")


def _check_something_read(root: Path, classes: dict, labels: list, skipped: list, lost: list) -> None:
    """ValueError when no picture could be read, or a class subfolder has none. ``lost``: labels of ``skipped``."""
    if not labels:
        raise ValueError(f"{root}: none of the {len(skipped)} image file(s) could be read (first: {skipped[0]})")
    counts = np.bincount(np.asarray(labels), minlength=len(classes))                # (K,) pictures per class
    if (counts == 0).any():
        k = int(np.argmin(counts))                                                  # a class with none
        raise ValueError(f"{root}: no readable picture in the class subfolder {list(classes)[k]!r} "
                         f"(first: {skipped[lost.index(k)]})")


def _describe(root: Path, data: ImageFolderData, ignored: int, empty: list, enlarged: int, grey_count: int) -> str:
    n, S, C = len(data.images), data.images.shape[2], data.channels
    if data.labels is None:
        what = f"{n} images (flat folder: unconditional)"
    else:
        counts = np.bincount(data.labels, minlength=len(data.class_names))
        what = f"{n} images in {len(data.class_names)} classes ({_names(dict(zip(data.class_names, counts)), True)})"
    notes = [f"centre-cropped and resized to {S}x{S} (Lanczos)", "grey" if C == 1 else "RGB"]
    if C == 3 and grey_count:
        notes.append(f"{grey_count} grey image(s) replicated to RGB (mixed grey and colour)")
    if enlarged:
        notes.append(f"{enlarged} smaller than {S} px enlarged")
    if data.skipped:
        notes.append(f"{len(data.skipped)} file(s) skipped (unreadable or too small)")
    if ignored:
        notes.append(f"{ignored} other file(s) ignored")
    if empty:
        notes.append(f"subfolder(s) without images ignored: {', '.join(empty[:4])}" + (", ..." if len(empty) > 4 else ""))
    return f"{root}: {what}; " + ", ".join(notes)


def _names(classes: dict, counts: bool = False, most: int = 8) -> str:
    # a class name may hold a newline: printed escaped, so the message stays one line
    items = [f"{printable(k)} {v}" if counts else printable(k) for k, v in classes.items()]
    return ", ".join(items[:most]) + (f", ... ({len(items)} in all)" if len(items) > most else "")


def _ignored_note(ignored: int) -> str:
    return f"; {ignored} other file(s) ignored" if ignored else ""


@contextmanager
def _truncated_files_fail():
    """ImageFile.LOAD_TRUNCATED_IMAGES held False (a truncated file raises in load()), then put back."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before
