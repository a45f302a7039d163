"""Sgraffito's engine: models, data, jobs and file formats. Never imports Qt."""

__version__ = "0.1.0"
