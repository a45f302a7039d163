"""Where Sgraffito finds its bundled assets and keeps per-user data."""

from __future__ import annotations

import functools
import importlib.resources
import os
import sys
from pathlib import Path

import platformdirs

APP_NAME = "Sgraffito"
APP_ID = "io.github.sgraffito.Sgraffito"


def assets_dir() -> Path:
    """The bundled assets folder (label sets, samples, demo models, the metrics classifier).

    In order: $SGRAFFITO_ASSETS; a PyInstaller bundle's `assets/`; the installed package data `engine.assets`
    (site-packages/engine/assets/ from a wheel; an editable install maps it to the checkout's `assets/`); the
    `assets/` folder next to `engine/` in a source checkout that is not installed (e.g. PYTHONPATH=.)."""
    if env := os.environ.get("SGRAFFITO_ASSETS"):
        return Path(env)
    if bundle := getattr(sys, "_MEIPASS", None):
        return Path(bundle) / "assets"
    return _package_assets() or Path(__file__).resolve().parent.parent / "assets"


@functools.cache
def _package_assets() -> Path | None:
    """The folder of the `engine.assets` package, or None when it is not installed (or not a plain folder)."""
    try:
        root = importlib.resources.files("engine.assets")
    except ModuleNotFoundError:
        return None
    return root if isinstance(root, Path) and root.is_dir() else None


def user_data_dir() -> Path:
    """Per-user data (autosaves, imported models); $SGRAFFITO_DATA overrides, which the tests use."""
    path = Path(os.environ.get("SGRAFFITO_DATA") or platformdirs.user_data_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dirs() -> list[Path]:
    """Model folders, searched in order: the user's imported models, then the shipped demo models."""
    return [user_data_dir() / "models", assets_dir() / "models"]
