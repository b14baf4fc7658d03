"""Pictures: schedule plots and the forward-diffusion strip are written as readable PNGs, without pyplot."""
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from tinyddpm import viz
from tinyddpm.backend import to_device
from tinyddpm.diffusion import make_schedule


def _ring(size=16):
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    r = np.hypot(xx, yy)
    return np.where((r > 0.4) & (r < 0.8), 1.0, -1.0)  # (H, W) in [-1, 1]


def test_plot_schedules_png(tmp_path):
    path = viz.plot_schedules(tmp_path / "sub" / "schedules.png", num_timesteps=200)
    assert path == tmp_path / "sub" / "schedules.png" and path.exists()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (1100, 400)
        assert np.asarray(im.convert("L")).std() > 10  # not a blank canvas


def test_plot_schedules_figure_content():
    fig = viz.plot_schedules(None, {"DDPM linear": make_schedule("linear", 100), "cos": make_schedule("cosine", 100)})
    assert isinstance(fig, Figure)
    ax_ab, ax_snr = fig.axes
    assert ax_snr.get_yscale() == "log" and ax_ab.get_yscale() == "linear"
    assert "bar" in ax_ab.get_title() and "Signal-to-noise" in ax_snr.get_title()
    assert ax_ab.get_xlabel() == "timestep t" and "log" in ax_snr.get_ylabel()
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["DDPM linear", "cos"]
        assert len(ax.get_lines()) == 2
    one = viz.plot_schedules(None, make_schedule("sigmoid", 50))
    assert [t.get_text() for t in one.axes[0].get_legend().get_texts()] == ["sigmoid"]


@pytest.mark.parametrize("image", [_ring(), _ring()[None], np.stack([_ring()] * 3)])
def test_forward_diffusion_strip(tmp_path, image):
    schedule = make_schedule("cosine", 1000)
    ts = (0, 100, 500, 999)
    path = viz.plot_forward_diffusion(tmp_path / "strip.png", to_device(image), schedule, ts)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 2 * im.size[1]
    fig = viz.plot_forward_diffusion(None, image, schedule, ts)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "clean x0" and len(titles) == len(ts) + 1
    assert all(f"t = {t}" in title for t, title in zip(ts, titles[1:]))
    assert "cosine" in fig.get_suptitle()


def test_to_display():
    img = _ring(8)
    gray = viz.to_display(img[None])
    assert gray.shape == (8, 8) and gray.min() == 0.0 and gray.max() == 1.0
    assert viz.to_display(np.stack([img] * 3)).shape == (8, 8, 3)
    np.testing.assert_array_equal(viz.to_display(np.asarray([[3.0, -3.0, 0.0]])), [[1.0, 0.0, 0.5]])
    assert np.isnan(viz.to_display(np.asarray([[np.nan, 0.0]]))[0, 0])


def test_bad_input(tmp_path):
    schedule = make_schedule("linear", 100)
    with pytest.raises(ValueError, match=r"to_display: an image \(C, H, W\) needs C = 1 or 3, got shape \(2, 4, 4\)"):
        viz.to_display(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=r"to_display: image must be \(C, H, W\) or \(H, W\), got shape \(4,\)"):
        viz.to_display(np.zeros(4))
    with pytest.raises(ValueError, match=r"plot_forward_diffusion: timesteps \[100\] are outside \[0, 100\)"):
        viz.plot_forward_diffusion(tmp_path / "x.png", _ring(), schedule, (0, 100))


def test_viz_does_not_use_pyplot():
    code = "import sys, tinyddpm.viz as v; v.plot_schedules(None, None, 50); print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_failed_picture_write_names_the_picture_and_keeps_the_old_one(tmp_path, monkeypatch):
    """A full disk while a PNG is written: the OSError names the picture (a file object's write names none), the
    earlier picture stays whole, no temporary file is left; the first error is kept when the cleanup fails too."""
    import errno
    from pathlib import Path

    path = viz.plot_loss_curve(tmp_path / "loss.png", np.linspace(1.0, 0.1, 20))
    before = path.read_bytes()

    def full(self, f, **kwargs):
        f.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    with pytest.raises(OSError) as raised:
        viz.plot_loss_curve(path, np.linspace(2.0, 0.2, 20))
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert "cannot write the picture: No space left on device" in str(raised.value)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["loss.png"]

    real_unlink = Path.unlink

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(OSError) as raised:
        viz.plot_loss_curve(path, np.linspace(2.0, 0.2, 20))
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)   # not the cleanup's EROFS
    monkeypatch.setattr(Path, "unlink", real_unlink)
    for p in tmp_path.glob(".loss.png.*.tmp"):
        p.unlink()


def test_a_failed_gif_write_names_the_gif(tmp_path, monkeypatch):
    import errno

    from PIL import Image as PILImage

    def full(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PILImage.Image, "save", full)
    frames = [np.zeros((2, 1, 4, 4)), np.ones((2, 1, 4, 4))]
    with pytest.raises(OSError) as raised:
        viz.save_denoising_gif(tmp_path / "d.gif", frames)
    assert raised.value.filename == str(tmp_path / "d.gif") and raised.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
