import numpy as np
import pytest
from PIL import Image
from skimage import data

from engine.errors import InputError
from engine.export import COMPOSITE_WITH_AI, export_image, export_label_map, read_export_metadata
from engine.imageio import load_label_map, load_photo
from engine.labels import load_label_set

COCO = load_label_set("coco-stuff-182")


@pytest.fixture
def result():
    rgb = data.chelsea()  # 451x300: odd width catches any resampling or padding
    rgb = rgb.copy()
    rgb[100:140, 200:260] = (30, 90, 200)
    return rgb


@pytest.mark.parametrize("suffix", ["png", "jpg", "tif", "webp"])
def test_exports_keep_native_size_and_carry_metadata(tmp_path, result, suffix):
    meta = {"models": ["asset-landscape-demo"], "seeds": [7, 8], "strength": 0.8}
    path = export_image(tmp_path / f"out.{suffix}", result, metadata=meta, generated=True, quality=92)
    found = read_export_metadata(path)
    assert found["size"] == (451, 300)
    assert found["digital_source_type"] == COMPOSITE_WITH_AI
    assert found["creator_tool"].startswith("Sgraffito") and found["software"].startswith("Sgraffito")
    assert found["parameters"]["seeds"] == [7, 8] and found["parameters"]["models"] == ["asset-landscape-demo"]
    assert found["icc_profile"]
    pixels = load_photo(path).rgb
    error = np.abs(pixels.astype(int) - result).mean()
    assert error == 0 if suffix in ("png", "tif") else error < 3
    if suffix == "png":
        assert found["text"]["seeds"] == "[7, 8]" and found["text"]["Software"].startswith("Sgraffito")


def test_unedited_export_has_no_ai_marker(tmp_path, result):
    found = read_export_metadata(export_image(tmp_path / "plain.jpg", result, generated=False))
    assert found["digital_source_type"] is None and found["creator_tool"].startswith("Sgraffito")


def test_jpeg_quality_changes_size_and_format_errors(tmp_path, result):
    low = export_image(tmp_path / "low.jpg", result, quality=40).stat().st_size
    high = export_image(tmp_path / "high.jpg", result, quality=98).stat().st_size
    assert high > 2 * low
    lossless = export_image(tmp_path / "lossless.webp", result, quality=100)
    assert (load_photo(lossless).rgb == result).all()
    with pytest.raises(InputError, match="unknown export format '.gif'"):
        export_image(tmp_path / "x.gif", result)
    with pytest.raises(InputError, match="does not exist"):
        export_image(tmp_path / "no-such-folder" / "x.png", result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["high.jpg", "lossless.webp", "low.jpg"]  # no temp files


def test_label_map_export_is_indexed_with_the_set_palette(tmp_path):
    ids = np.full((40, 60), COCO.id_of("sky-other"), np.uint16)
    ids[20:] = COCO.id_of("grass")
    ids[0, 0] = COCO.unlabeled
    path = export_label_map(tmp_path / "labels.png", ids, COCO)
    with Image.open(path) as image:
        assert image.mode == "P"
        assert image.convert("RGB").getpixel((5, 30)) == COCO.by_id[COCO.id_of("grass")].color
    assert (load_label_map(path, COCO, size=(60, 40)) == ids).all()


def test_exported_files_get_ordinary_permissions(tmp_path, result):
    import os
    import stat

    path = export_image(tmp_path / "shared.png", result)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600


def test_cli_export_writes_the_project_result(tmp_path, result, capsys):
    from app.cli import main
    from engine.imageio import new_label_map, photo_from_rgb
    from engine.project import Project, save_project

    photo = photo_from_rgb(result, "cat.png")
    labels = new_label_map(photo.size, COCO)
    edited = labels.copy()
    edited[100:140, 200:260] = COCO.id_of("sea")
    changed = result.copy()
    changed[:10] = 0
    project = Project(photo, COCO.name, labels, edited, result=changed,
                      history=[{"model": "asset-demo", "seed": 3}])
    save_project(tmp_path / "cat.sgraffito", project)
    out, labels_out = tmp_path / "cat.tif", tmp_path / "cat-labels.png"
    assert main(["export", str(tmp_path / "cat.sgraffito"), str(out), "--labels", str(labels_out)]) == 0
    assert (load_photo(out).rgb == changed).all()
    found = read_export_metadata(out)
    assert found["digital_source_type"] == COMPOSITE_WITH_AI
    assert found["parameters"]["History"] == [{"model": "asset-demo", "seed": 3}]
    assert (load_label_map(labels_out, COCO) == edited).all()
    assert main(["export", str(tmp_path / "cat.sgraffito"), str(tmp_path / "x.gif")]) == 2
    assert "unknown export format '.gif'" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", ["jpg", "png", "tif", "webp"])
def test_camera_exif_is_kept_without_gps_or_orientation(tmp_path, result, suffix):
    from PIL import ExifTags

    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Canon"
    exif[ExifTags.Base.Orientation] = 6
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2019:07:14 18:02:11"
    exif.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitude] = (50.0, 5.0, 0.0)
    original = tmp_path / "IMG_0001.jpg"
    Image.fromarray(result).save(original, exif=exif)
    photo = load_photo(original)  # upright: rotated by the orientation tag
    out = export_image(tmp_path / f"out.{suffix}", np.ascontiguousarray(photo.rgb), source=photo)
    with Image.open(out) as image:
        written = image.getexif()
        assert written.get(ExifTags.Base.Make) == "Canon"
        if suffix != "tif":  # Pillow writes no EXIF sub-IFD into TIFFs
            assert written.get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.DateTimeOriginal) == "2019:07:14 18:02:11"
        assert ExifTags.Base.Orientation not in written and not written.get_ifd(ExifTags.IFD.GPSInfo)
        assert written.get(ExifTags.Base.Software).startswith("Sgraffito")
    assert load_photo(out).size == photo.size == (300, 451)
