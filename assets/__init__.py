"""Installed as the package `engine.assets` (see setup.py), so that an installed Sgraffito finds these files with
importlib.resources; engine.paths.assets_dir() is the one place that looks them up."""
