"""examples/export_images.py --colour: MNIST's digits as RGB pictures, ink and background in colours drawn per picture
from (--seed, index), and the folder train_images.py reads as 3-channel pictures."""
import colorsys

import numpy as np
import pytest
from helpers import load_example
from PIL import Image

from tinyddpm.data import load_dataset
from tinyddpm.data.folder import load_image_folder

export_images = load_example("export_images")
SUBSET = ("--dataset", "mnist", "--source", "subset", "--split", "test")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("mnist", "test", source="subset")


def export(out, *args):
    return export_images.main([*SUBSET, "--out", str(out), *map(str, args)])


def pictures(folder) -> dict:
    """{index in the split: uint8 (H, W, C) picture} of every PNG under ``folder``."""
    found = {}
    for path in sorted(folder.glob("*/*.png")):
        with Image.open(path) as im:
            assert im.mode == "RGB" and im.size == (28, 28), (path, im.mode, im.size)
            found[int(path.stem)] = np.asarray(im)
    return found


def test_ink_and_background_are_the_colours_drawn_from_seed_and_index(tmp_path, digits, capsys):
    assert export(tmp_path / "c", "--colour", "--per-class", 3) == 0
    assert "wrote 30 pictures" in capsys.readouterr().out
    found = pictures(tmp_path / "c")
    assert len(found) == 30 and sum((digits.images[i] == 255).any() for i in found) >= 20   # a few reach 254 at most
    for i, picture in found.items():
        grey = digits.images[i]
        ink, background = export_images.colours(np.random.default_rng([0, i]))   # --seed 0 is the default
        assert np.array_equal(picture[grey == 255], np.broadcast_to(np.rint(255 * ink), (np.sum(grey == 255), 3)))
        assert np.array_equal(picture[grey == 0], np.broadcast_to(np.rint(255 * background), (np.sum(grey == 0), 3)))
        h, s, v = colorsys.rgb_to_hsv(*ink)                  # the stated distributions, read back from the picture
        assert 0.6 - 1e-9 <= s <= 1 and 0.7 - 1e-9 <= v <= 1
        h, s, v = colorsys.rgb_to_hsv(*background)
        assert s <= 0.6 + 1e-9 and v <= 0.35 and export_images.luma(ink) >= 2 * export_images.luma(background)
    inks = {tuple(p.reshape(-1, 3)[digits.images[i].argmax()]) for i, p in found.items()}   # its fullest ink
    assert len(inks) == 30                                   # each index its own colours


def test_colourise_blends_ink_and_background_by_the_grey_level():
    grey = np.array([[0, 51, 255]], dtype=np.uint8)
    ink, background = np.array([1.0, 0.5, 0.0]), np.array([0.0, 0.0, 0.2])
    out = export_images.colourise(grey, ink, background)
    assert out.dtype == np.uint8 and out.shape == (1, 3, 3)
    assert out.tolist() == [[[0, 0, 51], [51, 26, 41], [255, 128, 0]]]   # alpha 0.2: 255 * (0.2 ink + 0.8 bg)


def test_the_colours_stay_in_their_ranges_and_the_ink_is_the_brighter():
    for index in range(2000):
        ink, background = export_images.colours(np.random.default_rng([7, index]))
        assert 0 <= ink.min() and ink.max() <= 1 and 0 <= background.min() and background.max() <= 0.35
        assert export_images.luma(ink) >= 2 * export_images.luma(background)


def test_a_picture_depends_on_seed_and_index_alone(tmp_path, capsys):
    assert export(tmp_path / "a", "--colour", "--per-class", 2) == 0
    assert export(tmp_path / "b", "--colour", "--per-class", 4) == 0
    assert export(tmp_path / "a", "--colour", "--per-class", 4) == 0        # adds the 3rd and 4th of each class
    assert "wrote 20 pictures (40 in all" in capsys.readouterr().out
    a, b = pictures(tmp_path / "a"), pictures(tmp_path / "b")
    assert a.keys() == b.keys() and all(np.array_equal(a[i], b[i]) for i in a)
    assert export(tmp_path / "s", "--colour", "--per-class", 2, "--seed", 1) == 0
    other = pictures(tmp_path / "s")
    assert all(not np.array_equal(other[i], a[i]) for i in other)


def test_a_coloured_digit_in_grey_is_still_the_digit(tmp_path, digits):
    assert export(tmp_path / "c", "--colour", "--per-class", 10) == 0
    for path in (tmp_path / "c").glob("*/*.png"):
        with Image.open(path) as im:
            luma = np.asarray(im.convert("L"), dtype=np.float64)             # ITU-R 601, as the folder loader's
        grey = digits.images[int(path.stem)].astype(np.float64)
        assert np.corrcoef(luma.ravel(), grey.ravel())[0, 1] > 0.99, path


def test_the_folder_loads_as_three_channel_pictures(tmp_path, digits):
    assert export(tmp_path / "c", "--colour", "--per-class", 2) == 0
    data = load_image_folder(tmp_path / "c", image_size=28)
    assert data.channels == 3 and data.images.shape == (20, 3, 28, 28)
    assert data.class_names == [str(d) for d in range(10)] and data.labels.tolist() == [d // 2 for d in range(20)]


@pytest.mark.parametrize("args, line", [
    (("--dataset", "fashion-mnist", "--colour"),
     "--colour: only with --dataset mnist (it paints a digit's ink and its blank ground), not --dataset fashion-mnist"),
    (("--dataset", "mnist", "--seed", "3"), "--seed 3: only with --colour (it seeds the colours)"),
])
def test_colour_options_that_cannot_work_are_one_line(tmp_path, capsys, args, line):
    assert export_images.main([*args, "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines() == [f"export_images.py: error: {line}"]
    assert not (tmp_path / "out").exists()


def test_a_folder_written_in_grey_is_not_filled_up_in_colour(tmp_path, capsys):
    assert export(tmp_path / "g", "--per-class", 1) == 0
    assert export(tmp_path / "g", "--colour", "--per-class", 2) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "is not the picture these options write" in err[0]
    assert len(list((tmp_path / "g").glob("*/*.png"))) == 10                  # nothing added
