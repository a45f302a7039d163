"""Sgraffito's Qt application. Talks to the engine only through its public API."""
