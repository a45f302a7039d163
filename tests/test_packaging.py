"""Desktop integration files are valid and agree with each other."""

import configparser
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from PIL import Image

from engine.paths import APP_ID

PACKAGING = Path(__file__).resolve().parent.parent / "packaging"


def desktop_entry():
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser.read(PACKAGING / f"{APP_ID}.desktop", encoding="utf-8")
    return parser["Desktop Entry"]


def test_desktop_file_opens_images_and_projects_and_uses_our_icon():
    entry = desktop_entry()
    assert entry["Icon"] == APP_ID
    assert entry["Categories"].split(";")[:3] == ["Graphics", "2DGraphics", "RasterGraphics"]
    mime_types = set(filter(None, entry["MimeType"].split(";")))
    assert {"image/jpeg", "image/png", "application/x-sgraffito-project"} <= mime_types
    mime = ElementTree.parse(PACKAGING / f"{APP_ID}.xml").getroot()
    ns = {"m": "http://www.freedesktop.org/standards/shared-mime-info"}
    project_type = mime.find("m:mime-type", ns)
    assert project_type.get("type") == "application/x-sgraffito-project"
    assert project_type.find("m:glob", ns).get("pattern") == "*.sgraffito"


def test_metainfo_names_the_desktop_file_and_app_id():
    root = ElementTree.parse(PACKAGING / f"{APP_ID}.metainfo.xml").getroot()
    assert root.findtext("id") == APP_ID
    assert root.findtext("launchable") == f"{APP_ID}.desktop"


def test_icons_exist_at_every_hicolor_size():
    for size in (16, 24, 32, 48, 64, 128, 256, 512):
        with Image.open(PACKAGING / "icons" / "hicolor" / f"{size}x{size}" / "apps" / f"{APP_ID}.png") as icon:
            assert icon.size == (size, size) and icon.mode == "RGBA"


@pytest.mark.skipif(not shutil.which("desktop-file-validate"), reason="Debian desktop-file-utils not installed")
def test_desktop_file_validate_passes():
    result = subprocess.run(["desktop-file-validate", str(PACKAGING / f"{APP_ID}.desktop")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.skipif(not shutil.which("appstreamcli"), reason="Debian appstream not installed")
def test_appstreamcli_validate_passes():
    result = subprocess.run(["appstreamcli", "validate", "--no-net", str(PACKAGING / f"{APP_ID}.metainfo.xml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
