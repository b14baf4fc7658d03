"""tinyddpm/data/folder.py: folders of pictures the tests make with Pillow (grey and RGB, flat and by class, every
format, odd sizes) and every kind of bad input, each refused or skipped with one line naming the file."""
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image, ImageFile

from tinyddpm.data.folder import MIN_SIDE, RESAMPLE, load_image_folder

FORMATS = ("png", "jpg", "bmp", "webp")


def picture(w, h, colour=None, grey=False, seed=0):
    """A w x h picture: one colour (an int for grey, an (r, g, b) for RGB), else random pixels."""
    if colour is not None:
        return Image.new("L" if grey else "RGB", (w, h), colour)
    shape = (h, w) if grey else (h, w, 3)
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


def make_pictures(root, classes=None, n=3, grey=False, sizes=((40, 30), (24, 24), (50, 70))):
    """A folder of n pictures per class (one subfolder each; flat when classes is None), formats and sizes cycled."""
    root.mkdir(parents=True, exist_ok=True)
    for c, name in enumerate(classes or [None]):
        folder = root if name is None else root / name
        folder.mkdir(exist_ok=True)
        for i in range(n):
            w, h = sizes[i % len(sizes)]
            picture(w, h, grey=grey, seed=10 * c + i).save(folder / f"p{i}.{FORMATS[i % len(FORMATS)]}")
    return root


def lossless(path, image):
    image.save(path)
    return path


# --------------------------------------------------------------------------------------------
# good folders
# --------------------------------------------------------------------------------------------

def test_flat_grey_folder(tmp_path):
    data = load_image_folder(make_pictures(tmp_path / "p", n=4, grey=True), image_size=16)
    assert data.images.shape == (4, 1, 16, 16) and data.images.dtype == np.uint8
    assert data.labels is None and data.class_names == [] and data.channels == 1 and data.skipped == []
    assert data.source.startswith(f"{tmp_path / 'p'}: 4 images (flat folder: unconditional)")
    assert "resized to 16x16 (Lanczos), grey" in data.source


def test_labelled_rgb_folder_in_every_format(tmp_path):
    root = make_pictures(tmp_path / "p", classes=["zebra", "apple", "mango"], n=4)
    (root / "apple" / "notes.txt").write_text("not a picture")
    (root / "mango" / ".DS_Store").write_bytes(b"\0\1")
    (root / "empty").mkdir()
    data = load_image_folder(root, image_size=8)
    assert data.images.shape == (12, 3, 8, 8) and data.channels == 3
    assert data.class_names == ["apple", "mango", "zebra"]                       # sorted, not in creation order
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert "12 images in 3 classes (apple 4, mango 4, zebra 4)" in data.source
    assert "1 other file(s) ignored" in data.source and "subfolder(s) without images ignored: empty" in data.source
    # the pictures are the files': apple/p1.jpg (created as class 1's second picture) is lossy, p0.png is exact
    expected = np.asarray(picture(40, 30, seed=10).resize((8, 8), RESAMPLE, box=(5, 0, 35, 30)))
    np.testing.assert_array_equal(data.images[0].transpose(1, 2, 0), expected)


def test_centre_crop_then_resize(tmp_path):
    """A 90x30 strip red | green | blue: the centred square is the green third, whatever the size asked."""
    strip = np.zeros((30, 90, 3), np.uint8)
    strip[:, :30, 0], strip[:, 30:60, 1], strip[:, 60:, 2] = 255, 255, 255
    lossless(tmp_path / "strip.png", Image.fromarray(strip))
    lossless(tmp_path / "tall.png", Image.fromarray(strip.transpose(1, 0, 2).copy()))   # 30x90: the same, upright
    for size in (8, 16, 64):
        images = load_image_folder(tmp_path, size).images                              # (2, 3, S, S)
        centre = images[:, :, size // 4:-(size // 4), size // 4:-(size // 4)]            # away from the edges' ringing
        assert (centre[:, 1] >= 250).all() and (centre[:, 0] <= 5).all() and (centre[:, 2] <= 5).all(), size


def test_mixed_grey_and_colour_become_rgb_and_channels_can_be_forced(tmp_path):
    grey = lossless(tmp_path / "grey.png", picture(20, 20, colour=100, grey=True))
    lossless(tmp_path / "colour.bmp", picture(20, 20, colour=(200, 10, 30)))
    data = load_image_folder(tmp_path, 8)
    assert data.channels == 3 and "1 grey image(s) replicated to RGB (mixed grey and colour)" in data.source
    assert (data.images[1] == 100).all()                                                 # grey.png: R = G = B = 100
    assert (data.images[0].reshape(3, -1).T == (200, 10, 30)).all()
    grey_only = load_image_folder(tmp_path, 8, channels=1).images                        # luma of the colour one
    assert grey_only.shape == (2, 1, 8, 8)
    assert abs(int(grey_only[0, 0, 0, 0]) - Image.new("RGB", (1, 1), (200, 10, 30)).convert("L").getpixel((0, 0))) <= 1
    grey.unlink()
    assert load_image_folder(tmp_path, 8, channels=3).channels == 3
    lossless(tmp_path / "colour.bmp", picture(20, 20, colour=(7, 7, 7)))                 # grey stored as RGB
    assert load_image_folder(tmp_path, 8).channels == 1
    lossless(tmp_path / "colour.bmp", picture(20, 20, colour=(7, 8, 6)))                 # off by 1: lossy WebP's grey
    assert load_image_folder(tmp_path, 8).channels == 1
    lossless(tmp_path / "colour.bmp", picture(20, 20, colour=(7, 10, 7)))                # off by 3: colour
    assert load_image_folder(tmp_path, 8).channels == 3


def test_modes_are_converted(tmp_path):
    """16-bit grey scaled to 8 bits; alpha (RGBA, LA, a palette's transparent colour) composited on white."""
    wide = np.array([[0, 32896, 65535, 65535]] * 4 * 4, np.uint16).reshape(8, 8)
    lossless(tmp_path / "a16.png", Image.fromarray(wide))
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[:, :4, 3], rgba[:, 4:, 3] = 255, 0, 255                          # left clear, right opaque red
    lossless(tmp_path / "b_rgba.png", Image.fromarray(rgba))
    la = Image.new("LA", (8, 8), (0, 0))                                                 # black, fully clear
    lossless(tmp_path / "c_la.png", la)
    pal = Image.new("P", (8, 8), 3)
    pal.putpalette([0, 0, 0] * 3 + [0, 0, 255] + [0, 0, 0] * 252)
    pal.save(tmp_path / "d_pal.png", transparency=3)                                     # the blue index is clear
    data = load_image_folder(tmp_path, 8)                                                # (4, 3, 8, 8)
    assert data.channels == 3 and data.skipped == []
    assert data.images[0, :, 0].tolist() == [[0, 128, 255, 255] * 2] * 3                 # 0, 32896, 65535 / 257
    assert (data.images[1][:, :, :4] == 255).all()                                       # clear: white
    assert (data.images[1][:, :, 4:].reshape(3, -1).T == (255, 0, 0)).all()             # opaque red stays red
    assert (data.images[2] == 255).all() and (data.images[3] == 255).all()              # LA and palette, clear


def test_large_and_tiny_pictures(tmp_path):
    picture(1200, 900, seed=1).save(tmp_path / "big.jpg", quality=90)     # decoded at a reduced scale (draft)
    picture(MIN_SIDE, 40, seed=2).save(tmp_path / "narrow.png")           # the smallest allowed: enlarged
    picture(MIN_SIDE - 1, 40, seed=3).save(tmp_path / "too_narrow.png")   # refused
    lines = []
    data = load_image_folder(tmp_path, 32, log=lines.append)
    assert data.images.shape == (2, 3, 32, 32)
    assert "1 smaller than 32 px enlarged" in data.source and "1 file(s) skipped (unreadable or too small)" in data.source
    assert data.skipped == [f"{tmp_path / 'too_narrow.png'}: 7x40 px, smaller than 8 px on a side"]
    assert lines == [f"skipped {data.skipped[0]}"]
    assert 100 < data.images[0].mean() < 155                               # the random photo survived as noise


def test_exif_orientation_is_applied(tmp_path):
    """A camera's 60x30 landscape tagged 'rotate 90' (orientation 6) is a portrait: its top becomes the right side."""
    strip = np.zeros((30, 60, 3), np.uint8)
    strip[:10] = 255                                                      # a white band along the top
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(strip).save(tmp_path / "photo.png", exif=exif)
    image = load_image_folder(tmp_path, 8).images[0]                      # (3, 8, 8), the portrait's centre square
    assert (image[:, :, -2:] >= 250).all() and (image[:, :, :2] <= 5).all()


def test_a_single_picture_is_a_data_set(tmp_path):
    picture(9, 9).save(tmp_path / "one.webp")
    assert load_image_folder(tmp_path, 8).images.shape == (1, 3, 8, 8)


@settings(max_examples=15, deadline=None)
@given(w=st.integers(MIN_SIDE, 70), h=st.integers(MIN_SIDE, 70), size=st.sampled_from([8, 16, 32]),
       grey=st.booleans(), value=st.integers(0, 255), fmt=st.sampled_from(["png", "bmp", "webp"]))
def test_a_plain_picture_stays_plain_at_any_size(tmp_path_factory, w, h, size, grey, value, fmt):
    """Cropping and Lanczos resizing keep a one-colour picture one colour (the filter's weights sum to 1)."""
    root = tmp_path_factory.mktemp("plain")
    colour = value if grey else (value, 255 - value, value // 2)
    kw = {"lossless": True} if fmt == "webp" else {}
    picture(w, h, colour=colour, grey=grey).save(root / f"x.{fmt}", **kw)
    data = load_image_folder(root, size)
    assert data.images.shape == (1, 1 if grey else 3, size, size)
    expected = np.asarray([value] if grey else colour, np.int64)
    assert np.abs(data.images[0].reshape(data.channels, -1).T.astype(np.int64) - expected).max() <= 1


# --------------------------------------------------------------------------------------------
# bad input: one line naming the path and the problem
# --------------------------------------------------------------------------------------------

def one_line(error) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_a_missing_path_a_file_and_an_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_image_folder(tmp_path / "nowhere", 32)
    assert one_line(e) == f"{tmp_path / 'nowhere'}: no such folder"
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(ValueError) as e:
        load_image_folder(tmp_path / "f.png", 32)
    assert one_line(e) == f"{tmp_path / 'f.png'}: not a folder (give the folder that holds the pictures)"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as e:
        load_image_folder(tmp_path / "empty", 32)
    assert one_line(e) == f"{tmp_path / 'empty'}: the folder is empty"


def test_no_pictures_at_all(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.csv").write_text("1,2")
    with pytest.raises(ValueError) as e:
        load_image_folder(tmp_path, 32)
    assert one_line(e) == (f"{tmp_path}: no image files (PNG, JPEG, BMP or WebP) at its top level or in its subfolders; "
                           "2 other file(s) ignored")


def test_corrupt_and_truncated_files_are_skipped_and_named(tmp_path):
    make_pictures(tmp_path, n=2)
    (tmp_path / "fake.jpg").write_bytes(b"this is text with a .jpg name")
    whole = (tmp_path / "p0.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    buffer = tmp_path / "ref.jpg"
    picture(64, 64).save(buffer, quality=95)
    jpeg = buffer.read_bytes()
    buffer.unlink()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True                 # someone else's setting: used False here, then put back
    try:
        data = load_image_folder(tmp_path, 16)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before
    assert len(data) == 2
    reasons = dict(line.split(": ", 1) for line in data.skipped)
    assert sorted(reasons) == sorted(str(tmp_path / name) for name in ("cut.jpg", "cut.png", "fake.jpg"))
    assert reasons[str(tmp_path / "fake.jpg")] == "not an image Pillow can read"
    assert re.match(r"unreadable \(OSError: image file is truncated", reasons[str(tmp_path / "cut.png")])
    assert re.match(r"unreadable \(OSError: .*truncated", reasons[str(tmp_path / "cut.jpg")])


def test_every_file_corrupt_or_too_small(tmp_path):
    (tmp_path / "a.png").write_bytes(b"garbage")
    picture(4, 4).save(tmp_path / "b.png")
    with pytest.raises(ValueError) as e:
        load_image_folder(tmp_path, 32)
    assert one_line(e) == f"{tmp_path}: none of the 2 image file(s) could be read (first: {tmp_path / 'a.png'}: " \
                          "not an image Pillow can read)"


def test_a_class_with_no_readable_picture(tmp_path):
    make_pictures(tmp_path, classes=["cat", "dog"], n=2)
    for f in (tmp_path / "dog").iterdir():
        f.write_bytes(b"broken")
    with pytest.raises(ValueError) as e:
        load_image_folder(tmp_path, 16)
    assert one_line(e).startswith(f"{tmp_path}: no readable picture in the class subfolder 'dog' (first: "
                                  f"{tmp_path / 'dog' / 'p0.png'}: not an image")


def test_pictures_at_the_top_and_in_subfolders(tmp_path):
    make_pictures(tmp_path, classes=["cat", "dog"], n=1)
    picture(10, 10).save(tmp_path / "stray.png")
    with pytest.raises(ValueError) as e:
        load_image_folder(tmp_path, 16)
    assert one_line(e) == (f"{tmp_path}: holds 1 image(s) at its top level and class subfolders (cat, dog); put every "
                           "image in a class subfolder, or all of them at the top level for unconditional training")


def test_a_decompression_bomb_is_skipped(tmp_path, monkeypatch):
    picture(40, 40).save(tmp_path / "bomb.png")
    picture(10, 10).save(tmp_path / "ok.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)     # 40 x 40 = 1,600 > 2 x 500: Pillow refuses it
    data = load_image_folder(tmp_path, 8)
    assert len(data) == 1 and data.skipped == [f"{tmp_path / 'bomb.png'}: more than 1,000 pixels (Pillow's "
                                               "decompression-bomb limit)"]


@pytest.mark.parametrize("size, channels, message", [
    (4, None, "image_size must be an integer >= 8, got 4"),
    (True, None, "image_size must be an integer >= 8, got True"),
    (32, 2, "channels must be None, 1 or 3, got 2"),
])
def test_bad_arguments(tmp_path, size, channels, message):
    with pytest.raises(ValueError, match=re.escape(f"load_image_folder: {message}")):
        load_image_folder(tmp_path, size, channels)


# --------------------------------------------------------------------------------------------
# entries that cannot be looked at, and names that would break a line (issue 26, item 5)
# --------------------------------------------------------------------------------------------

def test_a_symlink_loop_is_skipped_and_listed_not_a_refusal_of_the_folder(tmp_path):
    make_pictures(tmp_path, classes=["cat", "dog"], n=2)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")                  # at the top: could have been a class
    (tmp_path / "cat" / "self.png").symlink_to(tmp_path / "cat" / "self.png")
    (tmp_path / "dog" / "a").symlink_to(tmp_path / "dog" / "b")        # a loop of two
    (tmp_path / "dog" / "b").symlink_to(tmp_path / "dog" / "a")
    logged = []
    data = load_image_folder(tmp_path, 16, log=logged.append)          # before: OSError ELOOP for the whole folder
    assert len(data) == 4 and data.class_names == ["cat", "dog"]
    loop = "a symbolic link loop (it points, in the end, at itself)"
    assert sorted(data.skipped) == sorted(f"{tmp_path / name}: {loop}"
                                          for name in ("loop", "cat/self.png", "dog/a", "dog/b"))
    assert logged == [f"skipped {line}" for line in data.skipped]
    assert "4 file(s) skipped" in data.source


def test_a_symlink_loop_in_a_flat_folder(tmp_path):
    make_pictures(tmp_path, n=2)
    (tmp_path / "x.jpg").symlink_to(tmp_path / "x.jpg")
    data = load_image_folder(tmp_path, 16)
    assert len(data) == 2 and data.labels is None
    assert data.skipped == [f"{tmp_path / 'x.jpg'}: a symbolic link loop (it points, in the end, at itself)"]


def test_an_unreadable_subfolder_is_skipped_and_listed(tmp_path, monkeypatch):
    import errno
    import os

    from tinyddpm.data import folder

    make_pictures(tmp_path, classes=["cat", "dog", "eel"], n=2)
    real = os.scandir

    def scandir(path):   # the tests may run as root, whom permissions do not stop: refuse the listing here
        if str(path) == str(tmp_path / "dog"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(folder.os, "scandir", scandir)
    data = load_image_folder(tmp_path, 16)
    assert data.class_names == ["cat", "eel"] and len(data) == 4
    assert data.skipped == [f"{tmp_path / 'dog'}: cannot be read (permission denied)"]


def test_a_file_name_with_a_newline_stays_on_one_line(tmp_path):
    from tinyddpm.data.folder import printable

    make_pictures(tmp_path, n=2)
    (tmp_path / "two\nlines.png").write_bytes(b"not a picture")
    (tmp_path / "back\\slash\x1b.png").write_bytes(b"not a picture")
    data = load_image_folder(tmp_path, 16)
    assert all("\n" not in line and "\x1b" not in line for line in data.skipped)
    assert f"{tmp_path}/two\\nlines.png: not an image Pillow can read" in data.skipped
    assert f"{tmp_path}/back\\\\slash\\x1b.png: not an image Pillow can read" in data.skipped
    assert printable("é \t\r\udcff\u2028") == "é \\t\\r\\udcff\\u2028"   # letters stay; line breaks of any kind do not


def test_skipped_files_txt_says_its_escaping_and_keeps_one_line_per_file(tmp_path):
    from helpers import load_example

    make_pictures(tmp_path / "data", n=2)
    (tmp_path / "data" / "two\nlines.png").write_bytes(b"not a picture")
    data = load_image_folder(tmp_path / "data", 16)
    out = tmp_path / "out"
    out.mkdir()
    train_images = load_example("train_images")
    assert train_images.write_skipped(out, data) == [out / "skipped_files.txt"]
    lines = (out / "skipped_files.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# ") and "a newline \\n" in lines[0]
    assert lines[1:] == [f"{tmp_path / 'data'}/two\\nlines.png: not an image Pillow can read"]
