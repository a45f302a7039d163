"""The package installs from a wheel (issue 14): a wheel built from the working tree, installed into a fresh venv
outside the checkout, finds its label sets, demo models and samples (package data `engine.assets`).

The build runs on a copy of what a build reads (so it leaves no build/ or *.egg-info in the checkout), offline
(`--no-build-isolation --no-index`). The new venv sees the heavy dependencies (torch, PySide6, ...) through a
`.pth` file naming this interpreter's site-packages, written after the install; `.pth` files in that folder (the
editable install's finder) are not processed, so the checkout stays invisible, which the tests assert.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from PIL import Image

# one worker builds and installs once (make test runs pytest-xdist with --dist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wheel")]

ROOT = Path(__file__).resolve().parent.parent
# everything a build reads: pyproject.toml names README.md and the licence, setup.py the packages and assets/
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "app", "engine", "assets")
LABEL_SAMPLE = "summer-palace.labels.png"  # indexed COCO-Stuff-182 label map (assets/samples/LICENSES.md)
DEMO_ASAPNET = "demo-asapnet-landscape"


class Installed:
    def __init__(self, base: Path, source: Path, wheel: Path, venv: Path):
        self.base, self.source, self.wheel, self.venv = base, source, wheel, venv
        self.bin = venv / ("Scripts" if os.name == "nt" else "bin")
        self.cwd = base / "cwd"
        self.cwd.mkdir()
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "SGRAFFITO_ASSETS", "VIRTUAL_ENV")}
        self.env.update(SGRAFFITO_DATA=str(base / "data"), XDG_CONFIG_HOME=str(base / "config"),
                        QT_QPA_PLATFORM="offscreen", PYTHONDONTWRITEBYTECODE="1")

    def run(self, program: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        result = subprocess.run([str(self.bin / program), *args], cwd=self.cwd, env=self.env, capture_output=True,
                                text=True, timeout=timeout)
        assert result.returncode == 0, f"{program} {' '.join(args)} exited {result.returncode}:\n" \
                                       f"{result.stdout}\n{result.stderr}"
        return result

    def sgraffito(self, *args: str) -> str:
        return self.run("sgraffito", *args).stdout


def _pip(*args: str, cwd: Path) -> None:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    dist = base / "dist"
    _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir", "-w", str(dist), ".",
         cwd=source)
    (wheel,) = dist.glob("sgraffito-*.whl")

    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    _pip("--python", str(python), "install", "-q", "--no-deps", "--no-index", "--no-cache-dir", str(wheel), cwd=base)
    # after the install, so that pip never sees the dependencies' environment (nor its editable sgraffito)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, cwd=base).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(purelib) / "_sgraffito_test_dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    return Installed(base, source, wheel, venv)


def test_wheel_holds_every_module_and_asset(installed):
    listing = zipfile.ZipFile(installed.wheel).namelist()
    names = set(listing)
    assert len(listing) == len(names), "the wheel lists a file twice"
    expected = {p.relative_to(installed.source).as_posix()
                for top in ("app", "engine") for p in (installed.source / top).rglob("*.py")}
    expected |= {"engine/assets/" + p.relative_to(installed.source / "assets").as_posix()
                 for p in (installed.source / "assets").rglob("*") if p.is_file()}
    assert "engine/assets/labels/coco-stuff-182.json" in expected
    assert f"engine/assets/samples/{LABEL_SAMPLE}" in expected
    assert f"engine/assets/models/{DEMO_ASAPNET}/netG.safetensors" in expected
    assert sorted(expected - names) == []
    assert not [n for n in names if n.startswith(("assets/", "tests/")) or "__pycache__" in n]


def test_installed_package_is_the_wheel_not_the_checkout(installed):
    code = ("import sys, engine, app, engine.paths; print(engine.__file__); print(app.__file__); "
            "print(engine.paths.assets_dir()); print(*sys.path, sep='\\n')")
    out = installed.run("python", "-c", code).stdout.splitlines()
    engine_file, app_file, assets = (Path(line).resolve() for line in out[:3])
    venv = installed.venv.resolve()
    for path in (engine_file, app_file, assets):
        assert path.is_relative_to(venv), f"{path} is not inside the new venv {venv}"
    assert assets.name == "assets" and assets.parent.name == "engine"
    assert (assets / "labels" / "coco-stuff-182.json").is_file()
    root = ROOT.resolve()
    assert not [p for p in out[3:] if p and Path(p).resolve().is_relative_to(root)
                and not Path(p).resolve().is_relative_to(root / ".venv")], "the checkout is on sys.path"


def test_installed_labels(installed):
    out = installed.sgraffito("labels")
    assert "coco-stuff-182" in out and "cityscapes" in out
    assert "sky-other" in installed.sgraffito("labels", "coco-stuff-182")


def test_installed_models(installed):
    out = installed.sgraffito("models")
    for name in (DEMO_ASAPNET, "demo-asset-landscape", "demo-coltran", "demo-pixelcnn-colorizer"):
        assert name in out
    assert str(installed.venv.resolve()) in installed.sgraffito("models", "--paths")


def test_installed_translate_renders_a_sample(installed):
    labels = next(installed.venv.rglob(f"engine/assets/samples/{LABEL_SAMPLE}"))  # the installed copy
    out = installed.base / "render.png"
    installed.sgraffito("translate", str(labels), "--size", "256x192", "--device", "cpu", "--out", str(out))
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (256, 192) and image.mode == "RGB"
    default = installed.base / "render-default.png"
    installed.sgraffito("translate", str(labels), "--device", "cpu", "--out", str(default))
    with Image.open(default) as image, Image.open(labels) as source:
        assert image.size == source.size
