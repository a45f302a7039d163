"""`make bench`: run every tests/bench/bench_*.py module's `run()`, print one table, write bench-results.json.

    python -m tests.bench                 # all modules
    python -m tests.bench runtime io      # only bench_runtime.py and bench_io.py
    python -m tests.bench --out FILE      # results somewhere else (default: ./bench-results.json)

A module that raises, or returns malformed rows, is reported as FAILED in the table and the JSON with its
traceback, and the exit status is 1; the other modules still run. Every figure with a target ("< 2", ">= 10")
is compared with it: the table marks a miss, the JSON row says "met": false, the misses are listed at the end
with their measured values, and the exit status is 1. A NaN figure is a miss, never a pass.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import operator
import os
import re
import platform
import pkgutil
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import tests.bench as package

KEYS = {"name": str, "value": (int, float), "unit": str, "note": str}
TARGET = re.compile(r"^\s*(<=|>=|<|>|==)\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$")
COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}


def meets(value: float, target: str | None) -> bool | None:
    """Whether `value` meets `target` ("< 2", ">= 10"); None without a target. NaN never meets one."""
    if not target:
        return None
    match = TARGET.match(target)
    if match is None:
        raise ValueError(f"cannot read the target {target!r} (write it as '< 2', '>= 10', ...)")
    if isinstance(value, float) and math.isnan(value):
        return False
    return bool(COMPARE[match[1]](value, float(match[2])))


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = round(int(line.split()[1]) / 2 ** 20, 1)  # kB -> GiB
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "ram_gib": ram,
            "os": platform.platform(), "python": platform.python_version()}
    try:
        import torch

        from engine.device import describe_device, resolve_device

        device = resolve_device(None)
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(), device=device,
                    device_name=describe_device(device))
    except Exception as error:  # the table is still worth having without torch
        info.update(torch=None, device=None, device_error=f"{type(error).__name__}: {error}")
    return info


def modules(selected: list[str]) -> list[str]:
    names = sorted(info.name for info in pkgutil.iter_modules(package.__path__) if info.name.startswith("bench_"))
    if selected:
        wanted = {name if name.startswith("bench_") else f"bench_{name}" for name in selected}
        unknown = wanted - set(names)
        if unknown:
            raise SystemExit(f"no benchmark module {', '.join(sorted(unknown))} (have: {', '.join(names)})")
        names = [name for name in names if name in wanted]
    return names


def check_rows(rows) -> list[dict]:
    if not isinstance(rows, list) or not rows:
        raise TypeError(f"run() must return a non-empty list of dicts, got {type(rows).__name__}")
    for row in rows:
        for key, kind in KEYS.items():
            if not isinstance(row.get(key), kind):
                raise TypeError(f"row {row!r}: {key!r} must be {kind}")
        if row.get("target") is not None and not isinstance(row["target"], str):
            raise TypeError(f"row {row!r}: 'target' must be a string or None")
        row["met"] = meets(row["value"], row.get("target"))
    return rows


def run_module(name: str) -> dict:
    started = time.perf_counter()
    try:
        module = importlib.import_module(f"{package.__name__}.{name}")
        rows = check_rows(module.run())
        return {"module": name, "status": "ok", "seconds": round(time.perf_counter() - started, 1), "rows": rows}
    except Exception as error:
        return {"module": name, "status": "failed", "seconds": round(time.perf_counter() - started, 1),
                "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(), "rows": []}


def fmt(value) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.3e}"
    return str(value)


def table(results: list[dict]) -> str:
    lines = [("module", "name", "value", "unit", "target", "met", "note")]
    for result in results:
        short = result["module"].removeprefix("bench_")
        if result["status"] != "ok":
            lines.append((short, "FAILED", "-", "", "", "", result["error"]))
        for row in result["rows"]:
            met = {True: "yes", False: "MISS", None: ""}[row.get("met")]
            lines.append((short, row["name"], fmt(row["value"]), row["unit"], row.get("target") or "", met,
                          row["note"]))
    widths = [max(len(line[i]) for line in lines) for i in range(6)]
    out = []
    for index, line in enumerate(lines):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line[:6], widths)) + "  " + line[6])
        if index == 0:
            out.append("  ".join("-" * width for width in widths) + "  " + "-" * 4)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="module names (bench_x or x); default: all")
    parser.add_argument("--out", default="bench-results.json", help="JSON results file")
    args = parser.parse_args(argv)
    names = modules(args.only)
    results = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        result = run_module(name)
        if result["status"] != "ok":
            print(result["traceback"], file=sys.stderr)
        results.append(result)
    print(table(results))
    report = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "modules": [{k: v for k, v in r.items() if k != "rows"} for r in results],
              "results": [{"module": r["module"], **row} for r in results for row in r["rows"]]}
    Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    failed = [r["module"] for r in results if r["status"] != "ok"]
    misses = [(r["module"].removeprefix("bench_"), row) for r in results for row in r["rows"] if row["met"] is False]
    print(f"\n{len(results) - len(failed)} of {len(results)} modules ok; results in {args.out}"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    targets = sum(row["met"] is not None for r in results for row in r["rows"])
    print(f"{targets - len(misses)} of {targets} targets met" + (":" if misses else ""), file=sys.stderr)
    for module, row in misses:
        print(f"  MISS {module}: {row['name']} = {fmt(row['value'])} {row['unit']} (target {row['target']})",
              file=sys.stderr)
    return 1 if failed or misses else 0


if __name__ == "__main__":
    sys.exit(main())
