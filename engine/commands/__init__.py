"""CLI subcommands. Each module here defines `register(subparsers)` and is discovered automatically,
so an engine issue adds its command by adding a module (`edit.py`, `colorize.py`, ...)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil


def command_modules():
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{__name__}.{info.name}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of the command `only` alone: running one command imports only its own
    module (`sgraffito info` never imports torch, which other commands' modules load for their options)."""
    from engine import __version__

    parser = argparse.ArgumentParser(prog="sgraffito", description="Semantic image editing with generative models.")
    parser.add_argument("--version", action="version", version=f"sgraffito {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    if only in command_names():
        modules = [importlib.import_module(f"{__name__}.{only}")]
    else:
        modules = command_modules()
    for module in modules:
        module.register(subparsers)
    return parser


def command_names() -> set[str]:
    return {info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")}
