"""Where Sgraffito finds its bundled assets and keeps per-user data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import platformdirs

APP_NAME = "Sgraffito"
APP_ID = "io.github.sgraffito.Sgraffito"


def assets_dir() -> Path:
    """The bundled `assets/` folder: $SGRAFFITO_ASSETS, a PyInstaller bundle, or the source checkout."""
    if env := os.environ.get("SGRAFFITO_ASSETS"):
        return Path(env)
    if bundle := getattr(sys, "_MEIPASS", None):
        return Path(bundle) / "assets"
    return Path(__file__).resolve().parent.parent / "assets"


def user_data_dir() -> Path:
    """Per-user data (autosaves, imported models); $SGRAFFITO_DATA overrides, which the tests use."""
    path = Path(os.environ.get("SGRAFFITO_DATA") or platformdirs.user_data_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dirs() -> list[Path]:
    """Model folders, searched in order: the user's imported models, then the shipped demo models."""
    return [user_data_dir() / "models", assets_dir() / "models"]
