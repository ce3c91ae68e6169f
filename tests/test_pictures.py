"""Pictures a person can read: grids at least 512 px wide under a title naming what they show
(also in the PNG's metadata), and the training's loss curve with KL and JS on separate axes,
integer epoch ticks and a note when JS is saturated near ln 2."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.pictures import MIN_WIDTH, grid_array, run_title, save, titled_grid, upscale_factor


@pytest.mark.parametrize("k, size", [(1, 32), (16, 32), (64, 32), (64, 64), (4, 16)])
def test_grids_are_at_least_512_px_wide_and_keep_whole_pixels(tmp_path, k, size):
    from PIL import Image

    rng = np.random.default_rng(k)
    images = rng.integers(0, 256, (k, size, size, 3), dtype=np.uint8)
    path = tmp_path / "grid.png"
    save(titled_grid(images, "demo · smoke · random B=64 · seed 2 · epoch 3"), path)
    pic = Image.open(path)
    assert pic.width >= MIN_WIDTH and pic.text["Title"] == "demo · smoke · random B=64 · seed 2 · epoch 3"
    # the body is the plain grid scaled by a whole factor (nearest neighbour): every image pixel is there
    body = grid_array(images)
    f = upscale_factor(body.shape[1])
    arr = np.asarray(pic.convert("RGB"))
    band = arr.shape[0] - body.shape[0] * f
    x0 = (arr.shape[1] - body.shape[1] * f) // 2
    assert band > 0 and np.array_equal(arr[band:, x0 : x0 + body.shape[1] * f][::f, ::f], body)
    # the title is drawn: dark text pixels in the white band above the images
    assert (arr[:band].min(axis=2) < 100).sum() > 50 and (arr[:band] == 255).mean() > 0.5


def test_a_long_title_wraps_inside_the_picture():
    from PIL import Image

    images = np.zeros((4, 8, 8, 3), np.uint8)
    pic = titled_grid(images, "a very long title " * 12, lines=["and a second line"])
    body_h = grid_array(images).shape[0] * upscale_factor(grid_array(images).shape[1])
    band = np.asarray(pic.convert("L"))[: pic.height - body_h]
    assert pic.width >= MIN_WIDTH and band.shape[0] > 4 * 20  # wrapped onto several lines
    assert (band[:, -4:] < 100).sum() == 0  # nothing runs off the right edge
    assert isinstance(pic, Image.Image) and pic.info["Title"].endswith("and a second line")


def test_run_title_names_the_parts_that_are_known():
    assert (
        run_title("demo", "paper-128a", "constructed", 500, 1, 30)
        == "demo · paper-128a · constructed B=500 · seed 1 · epoch 30"
    )
    assert run_title("demo", None, "random", 64, 0) == "demo · custom · random B=64 · seed 0"
    assert run_title(epoch=0) == "epoch 0"


def _history(js_values):
    n = len(js_values) - 1
    return {
        "loss_d": list(np.linspace(1.4, 0.6, 3 * n)),
        "loss_g": list(np.linspace(0.7, 2.0, 3 * n)),
        "g_steps_at": list(range(1, 3 * n + 1)),
        "initial": {"epoch": 0, "step": 0, "feature_kl": 7.4, "feature_js": js_values[0]},
        "epochs": [{"epoch": e, "feature_kl": 7.4 / (e + 1), "feature_js": js_values[e]} for e in range(1, n + 1)],
    }


def _axis_of(fig, ys):
    hits = [ax for ax in fig.axes for line in ax.get_lines() if list(line.get_ydata()) == list(ys)]
    assert len(hits) == 1
    return hits[0]


def test_loss_curve_has_kl_and_js_on_separate_axes_from_epoch_0():
    import matplotlib.pyplot as plt

    from pipeline.stages.train_records import loss_figure

    h = _history([0.69, 0.68, 0.4, 0.3, 0.25])
    fig = loss_figure(h, "toy · smoke · random B=32 · seed 0")
    try:
        kl_ax = _axis_of(fig, [7.4] + [e["feature_kl"] for e in h["epochs"]])
        js_ax = _axis_of(fig, [e["feature_js"] for e in [h["initial"], *h["epochs"]]])
        assert kl_ax is not js_ax  # two axes: JS near ln 2 no longer flattens the KL curve
        for ax in (kl_ax, js_ax):
            x = list(ax.get_lines()[0].get_xdata())
            assert x == [0, 1, 2, 3, 4]  # from epoch 0, the untrained generator
            fig.canvas.draw()
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks)
        assert "saturated" in js_ax.get_title() and "2 of 5 epochs" in js_ax.get_title()
        assert fig._suptitle.get_text() == "toy · smoke · random B=32 · seed 0"
    finally:
        plt.close(fig)

    fig = loss_figure(_history([0.3, 0.3, 0.2]))
    try:  # JS well below ln 2: no note
        js_ax = _axis_of(fig, [0.3, 0.3, 0.2])
        assert "saturated" not in js_ax.get_title()
        assert max(js_ax.get_ylim()) > math.log(2)  # ln 2 stays in view, for scale
    finally:
        plt.close(fig)


def test_never_drawn_picture_says_when_every_image_was_drawn(tmp_path, monkeypatch):
    from PIL import Image

    from pipeline.stages.batches import write_never_drawn_grid
    from storage.store import write_store

    monkeypatch.setenv("SUBSAMPLE_HOME", str(tmp_path))
    store = write_store("few", np.full((10, 8, 8, 3), 128, np.uint8))
    write_never_drawn_grid(store, np.array([], np.int64), tmp_path / "none.png", title="few · never drawn · random B=5")
    pic = Image.open(tmp_path / "none.png")
    assert (
        pic.width >= MIN_WIDTH
        and "0 of 10 images" in pic.text["Title"]
        and "every image was drawn" in pic.text["Title"]
    )
    write_never_drawn_grid(store, np.arange(3), tmp_path / "three.png", title="few · never drawn · constructed B=5")
    pic = Image.open(tmp_path / "three.png")
    assert pic.width >= MIN_WIDTH and pic.text["Title"].startswith(
        "few · never drawn · constructed B=5\n3 of 10 images"
    )
