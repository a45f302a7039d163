"""The shared runner for engine subcommands (edit, colorize, ...): one request through the runtime, to files.

    def register(subparsers):
        parser = subparsers.add_parser("edit", help=...)
        parser.add_argument("photo")
        add_runner_arguments(parser)            # --samples K --seed S --device D --out DIR
        parser.set_defaults(run=run)

    def run(args):
        photo = load_photo(args.photo)
        return run_request("asset", {"photo": photo.rgb, "labels_before": ..., "labels_after": ...}, args)

`run_request` writes DIR/candidate_XX.png (the whole photo at its native size with the candidate pasted in)
and DIR/candidates.json (request, device, per-candidate seed/region/time/info, timings), shows a tqdm bar
on stderr, turns Ctrl+C into a clean cancel (exit 130, nothing half-written) and a failed job into an
error message (exit 2; a backend bug also prints its traceback and exits 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from engine.errors import Cancelled, InputError, SgraffitoError


def add_runner_arguments(parser: argparse.ArgumentParser, *, default_samples: int = 4) -> None:
    group = parser.add_argument_group("sampling and output")
    group.add_argument("--samples", "-k", type=int, default=default_samples, metavar="K",
                       help=f"number of candidates (default {default_samples})")
    group.add_argument("--seed", type=int, default=0, metavar="S", help="candidate i uses seed S + i (default 0)")
    group.add_argument("--device", default=None, metavar="D",
                       help="auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    group.add_argument("--out", required=True, metavar="DIR",
                       help="folder for candidate_XX.png and candidates.json (created if missing)")


def _build_request(backend_name: str, request, args):
    from engine.jobs import Request, thaw

    if args.samples < 1:
        raise InputError(f"--samples must be at least 1, got {args.samples}")
    if isinstance(request, Request):
        return dataclasses.replace(request, backend=backend_name, k=args.samples, seed=args.seed,
                                   params=thaw(request.params))
    return Request(backend=backend_name, k=args.samples, seed=args.seed, **dict(request))


def _prepare_out(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--out {path}: cannot create the folder: {error.strerror or error}") from None
    if not os.access(out, os.W_OK):
        raise InputError(f"--out {path}: the folder is not writable")
    return out


def run_request(backend_name: str, request: "Request | Mapping[str, Any]", args: argparse.Namespace) -> int:
    """Run one request (a Request, or a mapping of Request fields without backend/k/seed) and write its
    candidates to args.out. Returns the exit status; user errors raise SgraffitoError (the CLI exits 2)."""
    from PIL import Image
    from tqdm import tqdm

    from engine import __version__
    from engine.device import describe_device, resolve_device
    from engine.jobs import JobState, Runtime, backend_names, discover_backends, thaw

    errors = {} if backend_name in backend_names() else discover_backends()
    if backend_name not in backend_names():
        broken = "".join(f"; {module} failed to load: {error}" for module, error in errors.items())
        raise InputError(f"no engine backend named {backend_name!r} "
                         f"(available: {', '.join(backend_names()) or 'none'}){broken}")
    request = _build_request(backend_name, request, args)
    device = resolve_device(args.device)
    out = _prepare_out(args.out)

    runtime = Runtime(device=device)
    bar = tqdm(total=100, file=sys.stderr, unit="%", desc=backend_name, dynamic_ncols=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

    def show(event) -> None:
        bar.n = round(event.fraction * 100)
        bar.set_postfix_str(event.stage, refresh=False)
        bar.refresh()

    runtime.add_listener(show)
    started = time.perf_counter()
    job = runtime.submit(request)
    try:
        while not job.wait(0.1):  # a timed wait, so Ctrl+C reaches this thread at once
            pass
    except KeyboardInterrupt:
        bar.set_postfix_str("cancelling")
        runtime.cancel_all()
        job.wait(30)
        raise Cancelled(f"interrupted: no candidates written to {out}") from None
    finally:
        runtime.shutdown(wait=False)
        bar.close()

    if job.state is JobState.CANCELLED:
        raise Cancelled(f"{backend_name}: {job.stage}")
    if job.state is JobState.FAILED:
        if job.traceback:
            print(job.traceback, file=sys.stderr)
            print(f"sgraffito: error: {job.error}", file=sys.stderr)
            return 1
        raise SgraffitoError(job.error)

    records = []
    for index, candidate in enumerate(job.candidates):
        name = f"candidate_{index:02d}.png"
        Image.fromarray(candidate.compose(request.photo)).save(out / name)
        records.append({"file": name, "seed": candidate.seed, "region": list(candidate.region),
                        "seconds": round(candidate.seconds, 3), "info": thaw(candidate.info)})
        print(out / name)
    metadata = {
        "sgraffito": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backend": backend_name,
        "device": device,
        "device_name": describe_device(device),
        "request": request.describe(),
        "timings": {"total_seconds": round(time.perf_counter() - started, 3),
                    "run_seconds": round(job.seconds, 3)},
        "candidates": records,
    }
    (out / "candidates.json").write_text(json.dumps(metadata, indent=2) + "\n")
    print(f"{len(records)} candidate(s) in {job.seconds:.1f} s -> {out}", file=sys.stderr)
    return 0
