"""Colour hints for the colorizers: {x, y, radius, rgb} in photo pixels, from the GUI's hint tool, a JSON file
(`sgraffito colorize --hints`, read by the command) or a job's params. Shared by the PixelCNN and ColTran pipelines."""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.errors import InputError

MAX_HINTS = 10_000


@dataclass(frozen=True)
class Hint:
    x: float
    y: float
    radius: float
    rgb: tuple[int, int, int]


def parse_hints(items, source: str = "hints") -> list[Hint]:
    """A list of {"x", "y", "radius", "rgb": [r, g, b] or "#rrggbb"} -> Hints; InputError naming the entry."""
    if not isinstance(items, (list, tuple)):
        raise InputError(f"{source}: expected a JSON list of {{x, y, radius, rgb}} objects")
    if len(items) > MAX_HINTS:
        raise InputError(f"{source}: {len(items)} hints, more than the {MAX_HINTS} a colorizer takes")
    hints = []
    for n, item in enumerate(items):
        try:
            rgb = item["rgb"]
            if isinstance(rgb, str):
                rgb = [int(rgb.lstrip("#")[i : i + 2], 16) for i in (0, 2, 4)]
            rgb = tuple(int(c) for c in rgb)
            hint = Hint(float(item["x"]), float(item["y"]), float(item.get("radius", 8)), rgb)
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as error:
            raise InputError(f"{source}: hint {n} is not {{x, y, radius, rgb}}: {error!r:.120}") from None
        if not all(math.isfinite(v) for v in (hint.x, hint.y, hint.radius)):
            raise InputError(f"{source}: hint {n} has a NaN or infinite x, y or radius")
        if len(hint.rgb) != 3 or not all(0 <= c <= 255 for c in hint.rgb) or hint.radius <= 0:
            raise InputError(f"{source}: hint {n} needs rgb of three 0-255 values and a positive radius")
        hints.append(hint)
    return hints
