import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms
from skimage import data

from engine.errors import InputError
from engine.imageio import detect_grayscale, load_label_map, load_photo, new_label_map
from engine.labels import load_label_set

COCO = load_label_set("coco-stuff-182")


def save(path, array, **kwargs):
    Image.fromarray(array).save(path, **kwargs)
    return path


@pytest.fixture
def photo_rgb():
    return data.astronaut()[:240, :320]  # 320x240, landscape so orientation mistakes show in the shape


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_jpeg_png_tiff_webp_bmp_open_as_rgb(tmp_path, photo_rgb):
    for suffix, lossless in [("png", True), ("tiff", True), ("bmp", True), ("webp", False), ("jpg", False)]:
        path = save(tmp_path / f"p.{suffix}", photo_rgb, **({"lossless": True} if suffix == "webp" else {}))
        photo = load_photo(path)
        assert photo.rgb.shape == (240, 320, 3) and photo.rgb.dtype == np.uint8 and photo.size == (320, 240)
        assert photo.data == path.read_bytes() and photo.name == f"p.{suffix}"
        assert not photo.is_grayscale
        error = np.abs(photo.rgb.astype(int) - photo_rgb).mean()
        assert error == 0 if lossless or suffix == "webp" else error < 4, suffix


def test_exif_orientation_is_applied(tmp_path, photo_rgb):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    path = tmp_path / "phone.jpg"
    Image.fromarray(photo_rgb).save(path, exif=exif, quality=95)
    photo = load_photo(path)
    assert photo.size == (240, 320) and photo.orientation == 6
    # the stored top-left corner ends up top-right
    assert np.abs(photo.rgb[0, -1].astype(int) - photo_rgb[0, 0]).max() < 12


def s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def matrix_profile(columns, gamma: float) -> bytes:
    """A minimal ICC v2 display profile: three primaries (D50 XYZ) and one gamma curve, as a camera's
    "Adobe RGB" profile is built. Written by hand so the test needs no .icc file."""
    def xyz(values):
        return b"XYZ " + b"\0" * 4 + b"".join(s15(v) for v in values)

    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    text = b"wide test"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(text) + 1) + text + b"\0" + b"\0" * 8 + b"\0" * 70
    tags = [(b"desc", desc), (b"wtpt", xyz((0.9642, 1.0, 0.8249))), (b"rXYZ", xyz(columns[0])),
            (b"gXYZ", xyz(columns[1])), (b"bXYZ", xyz(columns[2])), (b"rTRC", curve), (b"gTRC", curve),
            (b"bTRC", curve)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, payload in tags:
        payload += b"\0" * (-len(payload) % 4)
        table += signature + struct.pack(">II", offset + len(body), len(payload))
        body += payload
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ " + b"\0" * 12 + b"acsp"
              + b"\0" * 24 + struct.pack(">I", 0) + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


ADOBE_D50 = ((0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446))
SRGB_D50 = ((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141))


def test_icc_profile_is_converted_to_srgb(tmp_path):
    stored = np.zeros((32, 32, 3), np.uint8)
    stored[:16] = (200, 60, 60)
    stored[16:] = (40, 180, 90)
    path = tmp_path / "adobe.png"
    Image.fromarray(stored).save(path, icc_profile=matrix_profile(ADOBE_D50, 563 / 256))
    photo = load_photo(path)
    assert photo.icc_converted
    # the same conversion by hand: linearise, Adobe primaries -> XYZ (D50) -> sRGB primaries, sRGB curve
    linear = (np.array([[200, 60, 60], [40, 180, 90]]) / 255.0) ** (563 / 256)
    xyz = linear @ np.array(ADOBE_D50)
    srgb_linear = (xyz @ np.linalg.inv(np.array(SRGB_D50))).clip(0, 1)
    encoded = np.where(srgb_linear <= 0.0031308, 12.92 * srgb_linear, 1.055 * srgb_linear ** (1 / 2.4) - 0.055)
    expected = (encoded * 255).round()
    assert np.abs(photo.rgb[[0, 31], 0].astype(int) - expected).max() <= 3
    assert photo.rgb[0, 0, 0] > 215  # Adobe's red is more saturated than the same numbers in sRGB


def test_srgb_tagged_photo_is_left_alone(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[...] = (40, 180, 60)
    path = tmp_path / "srgb-tagged.png"
    Image.fromarray(rgb).save(path, icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    photo = load_photo(path)
    assert not photo.icc_converted and (photo.rgb == rgb).all()


def test_16_bit_png_and_tiff(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (32, 1))
    png = tmp_path / "gray16.png"
    Image.fromarray(ramp).save(png)
    photo = load_photo(png)
    assert photo.bit_depth == 16 and photo.is_grayscale
    assert photo.rgb[0, -1, 0] == 255 and photo.rgb[0, 128, 0] == round(ramp[0, 128] / 257)
    import cv2

    colour16 = np.zeros((24, 40, 3), np.uint16)
    colour16[..., 0] = 65535  # in OpenCV's BGR order: blue
    colour16[..., 2] = 32768
    colour16[12:] = (0, 65535, 0)  # a green half: one flat colour alone would pass for a tinted gray
    tif = tmp_path / "colour16.tif"
    cv2.imwrite(str(tif), colour16)
    photo = load_photo(tif)
    assert photo.bit_depth == 16 and not photo.is_grayscale
    assert tuple(photo.rgb[0, 0]) == (128, 0, 255)
    png = tmp_path / "colour16.png"
    cv2.imwrite(str(png), colour16)
    photo = load_photo(png)
    assert photo.bit_depth == 16 and tuple(photo.rgb[0, 0]) == (128, 0, 255) and tuple(photo.rgb[-1, 0]) == (0, 255, 0)


def test_grayscale_and_sepia_are_detected_colour_is_not(tmp_path, photo_rgb):
    gray = data.camera()
    assert load_photo(save(tmp_path / "gray.png", gray)).is_grayscale
    luminance = photo_rgb.mean(axis=2) / 255.0
    sepia = np.stack([luminance * 255, luminance * 205, luminance * 145], axis=2)
    sepia += np.random.default_rng(0).normal(0, 4, sepia.shape)  # scan noise in every channel
    sepia = sepia.clip(0, 255).astype(np.uint8)
    assert load_photo(save(tmp_path / "sepia.jpg", sepia, quality=80)).is_grayscale
    for name in ("astronaut", "coffee", "chelsea"):
        assert not detect_grayscale(getattr(data, name)()), name


def test_truncated_jpeg_is_an_input_error_naming_the_file(tmp_path, photo_rgb):
    path = save(tmp_path / "cut.jpg", photo_rgb)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(InputError, match="cut.jpg is damaged or truncated"):
        load_photo(path)


def test_tiny_images_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"dot.png is only 1x1 pixels"):
        load_photo(save(tmp_path / "dot.png", np.zeros((1, 1, 3), np.uint8)))


def test_bomb_header_is_refused_before_decoding(tmp_path):
    header = struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)  # far too little data: only the header is ever looked at
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))
    with pytest.raises(InputError) as error:
        load_photo(path)
    assert str(error.value) == "bomb.png claims 50000x50000 pixels (2500 MP), more than the 200 MP limit"

    # the limit is the caller's: a modest photo is refused under a tight one
    small = save(tmp_path / "small.png", np.zeros((100, 120, 3), np.uint8))
    with pytest.raises(InputError, match=r"small.png claims 120x100 pixels \(0.012 MP\), more than the 0.01 MP limit"):
        load_photo(small, max_pixels=10_000)
    assert load_photo(small, max_pixels=12_000).size == (120, 100)


def test_unknown_format_and_missing_file(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(InputError, match="notes.png is not an image"):
        load_photo(text)
    with pytest.raises(InputError, match="gone.jpg does not exist"):
        load_photo(tmp_path / "gone.jpg")
    gif = save(tmp_path / "anim.gif", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(InputError, match="anim.gif is a GIF file"):
        load_photo(gif)


def test_label_map_from_id_png_8_and_16_bit(tmp_path):
    ids = np.full((20, 30), COCO.id_of("grass"), np.uint8)
    ids[:5] = COCO.id_of("sky-other")
    assert (load_label_map(save(tmp_path / "ids.png", ids), COCO, size=(30, 20)) == ids).all()
    ade_like = ids.astype(np.uint16)
    ade_like[0, 0] = 255
    out = load_label_map(save(tmp_path / "ids16.png", ade_like), COCO)
    assert out.dtype == np.uint16 and (out == ade_like).all()


def test_label_map_from_indexed_png_uses_indices(tmp_path):
    ids = np.zeros((16, 16), np.uint8)
    ids[4:, :] = COCO.id_of("sea")
    image = Image.fromarray(ids, mode="L").convert("P")
    palette = np.random.default_rng(1).integers(0, 255, 768).astype(np.uint8)  # palette colours are irrelevant
    image.putpalette(palette.tobytes())
    path = tmp_path / "indexed.png"
    image.save(path)
    assert (load_label_map(path, COCO) == ids).all()


def test_label_map_from_colours_and_unknown_colours(tmp_path):
    ids = np.full((16, 24), COCO.id_of("tree"), np.uint16)
    ids[:4] = COCO.id_of("clouds")
    ids[8, 8] = COCO.unlabeled
    rgb = COCO.colorize(ids)
    assert (load_label_map(save(tmp_path / "colours.png", rgb), COCO) == ids).all()
    rgb[10, 3] = (1, 2, 3)
    rgb[11:13, 20] = (1, 2, 3)
    with pytest.raises(InputError) as error:
        load_label_map(save(tmp_path / "odd.png", rgb), COCO)
    assert "odd.png has colours that are not in label set 'coco-stuff-182': #010203 (3 px, e.g. at x=3, y=10)" in str(
        error.value
    )


def test_label_map_wrong_size_and_unknown_ids(tmp_path):
    path = save(tmp_path / "map.png", np.zeros((20, 24), np.uint8))
    with pytest.raises(InputError, match=r"map.png is 24x20 but the photo is 640x480"):
        load_label_map(path, COCO, size=(640, 480))
    bad = np.zeros((20, 20), np.uint8)
    bad[2, 3] = 200
    with pytest.raises(InputError, match=r"bad.png has ids outside label set 'coco-stuff-182': id 200 \(1 px, e.g. at x=3"):
        load_label_map(save(tmp_path / "bad.png", bad), COCO)


def test_new_label_map_is_unlabeled():
    label_map = new_label_map((7, 5), COCO)
    assert label_map.shape == (5, 7) and label_map.dtype == np.uint16 and (label_map == 255).all()


def test_photo_pixels_are_read_only_and_match_the_file(tmp_path, photo_rgb):
    photo = load_photo(save(tmp_path / "p.png", photo_rgb))
    with pytest.raises(ValueError):
        photo.rgb[0, 0] = 0  # the original stays pristine: results are copies
    from engine.imageio import photo_from_rgb

    mutable = photo_rgb.copy()
    generated = photo_from_rgb(mutable, "scene.png")
    mutable[:] = 0
    assert (generated.rgb == photo_rgb).all() and load_photo_bytes_roundtrip(generated)


def load_photo_bytes_roundtrip(photo):
    from engine.imageio import load_photo_bytes

    return (load_photo_bytes(photo.data, photo.name).rgb == photo.rgb).all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(tmp_path, photo_rgb, orientation):
    from PIL import ImageOps

    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(photo_rgb).save(path, exif=exif, quality=90)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    photo = load_photo(path)
    assert photo.rgb.shape == expected.shape and np.abs(photo.rgb.astype(int) - expected).max() <= 1


def test_truncated_jpeg_with_exif_thumbnail_is_still_refused(tmp_path, photo_rgb):
    # the EXIF thumbnail carries an end-of-image marker of its own; it must not make a cut file look complete
    image = Image.fromarray(photo_rgb)
    thumbnail = io.BytesIO()
    image.resize((80, 60)).save(thumbnail, format="JPEG")
    exif = Image.Exif()
    exif[0x0112] = 1
    path = tmp_path / "cut-thumb.jpg"
    image.save(path, exif=exif.tobytes() + thumbnail.getvalue(), quality=90)
    assert path.read_bytes().count(b"\xff\xd9") >= 2
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) * 2 // 3])
    with pytest.raises(InputError, match="cut-thumb.jpg is damaged or truncated"):
        load_photo(path)


def test_colour_coded_map_saved_as_indexed_is_read_by_colour(tmp_path):
    ids = np.full((24, 32), COCO.id_of("sea"), np.uint16)
    ids[:8] = COCO.id_of("sky-other")
    ids[16:, :10] = COCO.id_of("sand")
    # an image editor's palette: the three label colours at indices 0, 1, 2
    quantized = Image.fromarray(COCO.colorize(ids)).quantize(colors=3, method=Image.Quantize.MEDIANCUT)
    path = tmp_path / "edited-in-gimp.png"
    quantized.save(path)
    assert Image.open(path).mode == "P"
    assert (load_label_map(path, COCO) == ids).all()


def test_cli_info_reports_bad_inputs_on_stderr_with_status_2(tmp_path, capsys, photo_rgb):
    from app.cli import main

    good = save(tmp_path / "good.png", photo_rgb)
    assert main(["info", str(good)]) == 0
    assert "good.png: PNG, 320x240, 8-bit, colour" in capsys.readouterr().out
    cut = save(tmp_path / "cut.jpg", photo_rgb)
    cut.write_bytes(cut.read_bytes()[:1500])
    wrong = save(tmp_path / "wrong.png", np.zeros((20, 20), np.uint8))
    for argv, message in [
        (["info", str(cut)], "cut.jpg is damaged or truncated"),
        (["info", str(save(tmp_path / "dot.png", np.zeros((1, 1, 3), np.uint8)))], "dot.png is only 1x1 pixels"),
        (["info", str(good), "--labels", str(wrong)], "wrong.png is 20x20 but the photo is 320x240"),
    ]:
        assert main(argv) == 2
        assert message in capsys.readouterr().err


def test_id_map_saved_as_gray_rgb_reads_as_ids(tmp_path):
    ids = np.full((20, 30), COCO.id_of("grass"), np.uint8)
    ids[:7] = COCO.id_of("sky-other")
    path = save(tmp_path / "gray-rgb.png", np.repeat(ids[:, :, None], 3, axis=2))
    assert (load_label_map(path, COCO) == ids).all()
