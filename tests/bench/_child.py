"""Benchmarks that measure in a fresh child process (peak RSS of its own, no state from earlier benchmarks)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys


def run_child(command: list[str], **kwargs) -> str:
    """Run `command`; its stdout. A failing child raises with its stderr's end (its traceback), so the
    benchmark module is reported FAILED with the reason, not with a bare exit status."""
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} ... exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done.stdout


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def peak_rss_bytes() -> int:
    """This process's own peak resident set (VmHWM). Not ru_maxrss: on Linux a forked child starts with its
    parent's high-water mark, so after an official-size benchmark every child would report the parent's gigabytes."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
