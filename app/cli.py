"""The `sgraffito` command: engine subcommands, or the GUI when the first argument is not one."""

from __future__ import annotations

import argparse
import sys

from engine.commands import build_parser, command_names
from engine.errors import Cancelled, SgraffitoError


def gui_parser() -> argparse.ArgumentParser:
    from engine import __version__

    parser = argparse.ArgumentParser(
        prog="sgraffito",
        description="Open the Sgraffito editor. Subcommands: " + ", ".join(sorted(command_names())),
    )
    parser.add_argument("--version", action="version", version=f"sgraffito {__version__}")
    parser.add_argument("file", nargs="?", help="a photo, a label map or a .sgraffito project to open")
    parser.add_argument("--labels", metavar="MAP.png", help="the photo's label map")
    parser.add_argument("--label-set", metavar="SET", help="label set for --labels (default: coco-stuff-182)")
    parser.add_argument("--demo", action="store_true", help="open a bundled sample photo when no file is given")
    parser.add_argument("--screenshot", metavar="PNG", help=argparse.SUPPRESS)
    parser.add_argument("--quit-after", type=int, metavar="MS", help=argparse.SUPPRESS)
    return parser


def run_command(argv: list[str]) -> int:
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SgraffitoError as error:
        print(f"sgraffito {args.command}: error: {error}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in command_names():
        return run_command(argv)
    args = gui_parser().parse_args(argv)
    from app.gui import launch  # Qt is imported only when the GUI starts

    return launch(args)
