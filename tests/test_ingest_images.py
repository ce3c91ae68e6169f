"""Ingest's image policy: the centre crop and the Lanczos resize (files and arrays alike, JPEG
draft decoding close to a full decode), and every colour mode made RGB (grey, alpha on white,
palettes, CMYK, 16-bit grey, EXIF orientation). Sources, quarantine, atomicity and the cache are
in ``test_ingest.py``, whose helpers and autouse ``home`` fixture this module shares.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from test_ingest import home, ingest, jpeg_bytes, rgb, stored, to_bytes  # noqa: F401  (home: the autouse fixture)

from pipeline.data.images import CropPolicy

# --- crop / resize policy --------------------------------------------------------------------------


def test_centre_crop_of_non_square_images_without_resampling(tmp_path):
    x = rgb(3, 6, 10, seed=6)  # 6 high, 10 wide
    np.savez(tmp_path / "a.npz", images=x)
    ingest(tmp_path / "a.npz", size=6)
    assert np.array_equal(stored()[0], x[:, :, 2:8])
    ingest(tmp_path / "a.npz", name="c", size=4, crop=4)  # --crop C: box (3, 1, 7, 5)
    assert np.array_equal(stored("c")[0], x[:, 1:5, 3:7])
    ingest(tmp_path / "a.npz", name="big", size=6, crop=50)  # larger than the image: the short side
    assert np.array_equal(stored("big")[0], x[:, :, 2:8])


def test_resize_uses_lanczos_on_the_centre_crop_for_files_and_arrays(tmp_path):
    x = rgb(2, 20, 14, seed=7)  # 20 high, 14 wide: crop rows 3..17, resampled in place (box=)
    want = np.stack([np.asarray(Image.fromarray(a).resize((5, 5), Image.LANCZOS, box=(0, 3, 14, 17))) for a in x])
    np.savez(tmp_path / "a.npz", images=x)
    ingest(tmp_path / "a.npz", size=5)
    assert np.array_equal(stored()[0], want)
    (tmp_path / "f").mkdir()
    for i, a in enumerate(x):
        Image.fromarray(a).save(tmp_path / "f" / f"{i}.png")
    ingest(tmp_path / "f", name="f", size=5)
    assert np.array_equal(stored("f")[0], want)
    up = np.asarray(Image.fromarray(x[0]).resize((21, 21), Image.LANCZOS, box=(0, 3, 14, 17)))  # upscale too
    ingest(tmp_path / "a.npz", name="up", size=21)
    assert np.array_equal(stored("up")[0][0], up)


def test_jpeg_draft_decode_matches_a_full_decode_closely(tmp_path):
    yy, xx = np.mgrid[0:218, 0:178]
    a = np.stack([xx * 255 // 177, yy * 255 // 217, (xx + yy) % 256], -1).astype(np.uint8)
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "celeba.jpg").write_bytes(jpeg_bytes(Image.fromarray(a)))
    ingest(tmp_path / "j", size=32, crop=178)
    full = Image.open(tmp_path / "j" / "celeba.jpg").convert("RGB")
    ref = np.asarray(full.resize((32, 32), Image.LANCZOS, box=(0, 20, 178, 198))).astype(int)
    got = stored()[0][0].astype(int)
    assert np.abs(got - ref).mean() < 3


# --- colour modes ----------------------------------------------------------------------------------


def single(tmp_path, data: bytes, ext="png", size=4, **kw) -> np.ndarray:
    d = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    (d / f"x.{ext}").write_bytes(data)
    name = d.name
    ingest(d, name=name, size=size, **kw)
    return stored(name)[0][0]


def test_grey_becomes_three_equal_channels(tmp_path):
    g = np.random.default_rng(8).integers(0, 256, (4, 4), dtype=np.uint8)
    out = single(tmp_path, to_bytes(Image.fromarray(g, "L")))
    assert np.array_equal(out, np.repeat(g[..., None], 3, -1))
    bw = single(tmp_path, to_bytes(Image.fromarray(g > 127)))  # mode "1"
    assert np.array_equal(bw[..., 0], np.where(g > 127, 255, 0)) and np.array_equal(bw[..., 0], bw[..., 2])


def test_alpha_is_composited_on_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 200  # red 200
    a[:2, :, 3] = 0  # top half transparent → white
    a[2:, :2, 3] = 255  # opaque → red
    a[2:, 2:, 3] = 128  # half → blend
    out = single(tmp_path, to_bytes(Image.fromarray(a, "RGBA"))).astype(int)
    assert (out[:2] == 255).all()
    assert (out[2:, :2] == [200, 0, 0]).all()
    assert np.allclose(out[2:, 2:], [200 * 128 / 255 + 255 * 127 / 255, 255 * 127 / 255, 255 * 127 / 255], atol=1)
    la = Image.fromarray(np.stack([np.full((4, 4), 50, np.uint8), a[..., 3]], -1), "LA")
    out = single(tmp_path, to_bytes(la)).astype(int)
    assert (out[:2] == 255).all() and (out[2:, :2] == 50).all()


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.new("P", (4, 4))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putdata([0, 1] * 8)
    out = single(tmp_path, to_bytes(p))
    assert (out[:, ::2] == [255, 0, 0]).all() and (out[:, 1::2] == [0, 0, 255]).all()
    out = single(tmp_path, to_bytes(p, transparency=1))
    assert (out[:, ::2] == [255, 0, 0]).all() and (out[:, 1::2] == 255).all()


def test_cmyk_jpeg_is_converted(tmp_path):
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    data = to_bytes(cmyk, "JPEG", quality=95)
    out = single(tmp_path, data, ext="jpg", size=16).astype(int)
    assert np.array_equal(out, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    assert np.abs(out - [255, 0, 0]).max() < 8


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    v = np.array([[0, 257, 32896, 65535], [1000, 20000, 40000, 60000]] * 2, np.uint16)
    img = Image.fromarray(v)
    assert img.mode == "I;16"
    out = single(tmp_path, to_bytes(img))
    assert np.array_equal(out[..., 0], (v.astype(int) + 128) // 257) and out[0, 3, 0] == 255 and out[0, 2, 0] == 128
    assert np.array_equal(out[..., 0], out[..., 1])


def test_exif_orientation_6_is_applied(tmp_path):
    a = rgb(1, 4, 8, seed=9)[0]  # 4 high, 8 wide; stored sideways, orientation 6 = rotate 90° clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    out = single(tmp_path, to_bytes(Image.fromarray(a), exif=exif.tobytes()))
    upright = np.rot90(a, k=-1)  # 8 high, 4 wide
    assert np.array_equal(out, upright[2:6])


def test_exif_rotation_with_jpeg_draft_crops_in_the_upright_frame(tmp_path):
    a = np.zeros((100, 300, 3), np.uint8)  # wide: top half red, bottom half blue
    a[:50, :, 0] = 255
    a[50:, :, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    out = single(tmp_path, jpeg_bytes(Image.fromarray(a), exif=exif.tobytes()), ext="jpg", size=32).astype(int)
    # upright it is 100 wide, 300 high, red on the right: the centre square is blue | red
    assert out[:, :12, 2].mean() > 200 and out[:, :12, 0].mean() < 50
    assert out[:, -12:, 0].mean() > 200 and out[:, -12:, 2].mean() < 50


def test_crop_policy_box_and_draft_size():
    p = CropPolicy(64, 178)
    assert p.box(178, 218) == (0, 20, 178, 198)
    w, h = p.draft_size(178, 218)
    assert (w, h) == (64, 79)  # JPEG draft picks scale 1/2: 89×109, crop 89 ≥ 64
    assert CropPolicy(32).box(10, 6) == (2, 0, 8, 6) and CropPolicy(32, 4).box(10, 6) == (3, 1, 7, 5)
