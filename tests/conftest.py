import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest


@pytest.fixture(autouse=True)
def isolated_user_data(tmp_path, monkeypatch):
    """Autosaves, settings and imported models of a test never touch the real user's folders."""
    data = tmp_path / "user-data"
    monkeypatch.setenv("SGRAFFITO_DATA", str(data))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return data
