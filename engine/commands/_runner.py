"""The shared runner for engine subcommands (edit, colorize, translate): one request through the runtime.

    def register(subparsers):
        parser = subparsers.add_parser("edit", help=...)
        parser.add_argument("photo")
        add_engine_arguments(parser, "edit", "asset", "an ASSET model ...")   # --model NAME|DIR --engine KIND
        add_runner_arguments(parser)            # --samples K --seed S --device D --out DIR
        parser.set_defaults(run=run)

    def run(args):
        photo = load_photo(args.photo)
        fields = {"photo": photo.rgb, "model": args.model, "labels_before": ..., "labels_after": ...}
        return run_request(choose_engine(args, "asset"), fields, args)

`run_request` writes DIR/candidate_XX.png (the whole photo at its native size with the candidate pasted in)
and DIR/candidates.json (request, device, per-candidate seed/region/time/info, timings), shows progress on
stderr (engine.commands._progress: stages with counters, an ETA once meaningful, plain lines off a terminal),
turns Ctrl+C into a clean cancel (exit 130, nothing half-written) and a failed job into an error message
(exit 2; a backend bug also prints its traceback and exits 1).

`run_job(request, device)` is the part before the files: the runtime (engine.jobs.Runtime, the same one the
GUI uses: one worker that owns the device, one model cache, the thread count set once), the bar and Ctrl+C. A
command that writes something else (translate writes one image file) calls it and writes its own output.

One spelling in every engine command: `--model NAME|DIR` is always a model (a name from `sgraffito models` or a
model folder) and `--engine KIND` the backend that runs it (default: the model's kind, else the command's
default engine). `add_engine_arguments` and `choose_engine` implement it; `deprecated` warns about the old
spellings a command still accepts for one release.
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
from typing import TYPE_CHECKING, Any, Mapping

from engine.errors import Cancelled, InputError, SgraffitoError

if TYPE_CHECKING:  # engine.jobs imports torch, which --help must not
    from engine.jobs import Request


MAX_SAMPLES = 64  # = engine.jobs.MAX_SAMPLES (not imported here: --help must not import torch)


class BackendBug(Exception):
    """A job failed with an unexpected exception; its traceback was printed and the command exits 1."""


def add_device_argument(parser) -> None:
    parser.add_argument("--device", default=None, metavar="D",
                        help="auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")


def add_runner_arguments(parser: argparse.ArgumentParser, *, default_samples: int = 4) -> None:
    group = parser.add_argument_group("sampling and output")
    group.add_argument("--samples", "-k", type=int, default=default_samples, metavar="K",
                       help=f"number of candidates, 1 to {MAX_SAMPLES} (default {default_samples}); they are "
                            "sampled in batches that fit in memory")
    group.add_argument("--seed", type=int, default=0, metavar="S", help="candidate i uses seed S + i (default 0)")
    add_device_argument(group)
    group.add_argument("--out", required=True, metavar="DIR",
                       help="folder for candidate_XX.png and candidates.json (created if missing)")


def add_engine_arguments(parser, mode: str, default_engine: str, model_help: str) -> None:
    """`--model NAME|DIR` and `--engine KIND`, KIND one of the engines serving `mode` (engine/registry.py)."""
    from engine import registry

    kinds = [s.kind for s in registry.specs(mode) if s.backend]
    parser.add_argument("--model", default="", metavar="NAME|DIR", help=model_help)
    parser.add_argument("--engine", default=None, metavar="KIND",
                        help=f"the engine that runs the model: {', '.join(kinds)} (default: the model's kind, "
                             f"else {default_engine})")


def deprecated(old: str, new: str) -> None:
    """Tell the user on stderr that a spelling goes away in the next release (the command still runs)."""
    print(f"sgraffito: warning: {old} is deprecated and will be removed in the next release; use {new}",
          file=sys.stderr)


def model_kind(model: str) -> str | None:
    """The kind (config.json) of a model name or folder; None when it cannot be found (the backend then says
    why, with the list of models)."""
    from engine import model_store

    if not model:
        return None
    try:
        if Path(model).is_dir():
            return model_store.read_model_config(Path(model)).get("kind")
        return model_store.find_model(model).kind
    except (SgraffitoError, OSError, ValueError):
        return None


def choose_engine(args: argparse.Namespace, default_engine: str) -> str:
    """The backend for a command: --engine, else the kind of --model, else `default_engine`."""
    return getattr(args, "engine", None) or model_kind(getattr(args, "model", "")) or default_engine


def check_backend(backend_name: str) -> None:
    from engine.jobs import backend_names

    if backend_name not in backend_names():
        raise InputError(f"no engine backend named {backend_name!r} "
                         f"(available: {', '.join(backend_names()) or 'none'})")


def check_samples(samples: int) -> None:
    if samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    if samples > MAX_SAMPLES:
        raise InputError(f"--samples must be at most {MAX_SAMPLES} (candidates are kept in memory), got {samples}")


def _build_request(backend_name: str, request, args):
    from engine.jobs import Request, thaw

    check_samples(args.samples)
    if isinstance(request, Request):
        return dataclasses.replace(request, backend=backend_name, k=args.samples, seed=args.seed,
                                   params=thaw(request.params))
    return Request(backend=backend_name, k=args.samples, seed=args.seed, **dict(request))


def prepare_out(path: str, inputs=()) -> Path:
    """The --out folder, created and writable, with no leftover temporary files; none of `inputs` may be
    overwritten by the candidates written there."""
    from engine.safe_io import refuse_input, remove_stale_temps

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {path} is a file; --out names a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--out {path}: cannot create the folder: {error.strerror or error}") from None
    if not os.access(out, os.W_OK):
        raise InputError(f"--out {path}: the folder is not writable")
    for name in ("candidates.json", *(f"candidate_{i:02d}.png" for i in range(MAX_SAMPLES))):
        refuse_input(out / name, inputs, "--out")
    remove_stale_temps(out)  # temporary files a killed run left behind
    return out


def write_image(path: Path, image) -> None:
    """Save an image atomically (a temporary file in the same folder, then rename): a full disk or a crash never
    leaves a truncated file, and the previous file stays until the new one is complete."""
    from PIL import Image

    from engine.export import export_format
    from engine.safe_io import atomic_write

    fmt = export_format(path)
    try:
        with atomic_write(path) as handle:
            # PNG level 1: 2-4x faster than Pillow's default 6 for ~20 % more bytes; writing four 1024x768
            # candidates took longer than sampling them in a batch colorize (still lossless)
            Image.fromarray(image).save(handle, format=fmt, **({"compress_level": 1} if fmt == "PNG" else {}))
    except (ValueError, TypeError) as error:
        raise InputError(f"{path}: cannot write ({error})") from None


def run_job(request, device: str, *, nothing_written: str = "nothing written"):
    """Run `request` (an engine.jobs.Request) on a runtime with a progress bar on stderr; returns the finished
    engine.jobs.Job, DONE. Ctrl+C cancels it (raises Cancelled: exit 130); a user error raises SgraffitoError
    (exit 2); a backend bug prints its traceback and raises BackendBug (the command returns 1)."""
    from engine.commands._progress import StageProgress
    from engine.device import configure_threads
    from engine.jobs import JobState, Runtime

    check_backend(request.backend)
    configure_threads()  # once for the process, before the worker's first job (which would do it too)
    runtime = Runtime(device=device)
    # stages with their own counters, an ETA only once meaningful, plain lines when stderr is not a terminal
    bar = StageProgress(request.backend, sys.stderr)

    def show(event) -> None:
        bar.update(event.fraction, event.stage)

    runtime.add_listener(show)
    job = runtime.submit(request)
    try:
        while not job.wait(0.1):  # a timed wait, so Ctrl+C reaches this thread at once
            pass
    except KeyboardInterrupt:
        bar.note("cancelling")
        runtime.cancel_all()
        job.wait(30)
        raise Cancelled(f"interrupted: {nothing_written}") from None
    finally:
        # Wait for the worker to stop: a process that exits while it still runs torch code aborts
        # ("terminate called without an active exception", exit 134).
        runtime.shutdown(wait=True, timeout=60)
        bar.close()

    if job.state is JobState.CANCELLED:
        raise Cancelled(f"{request.backend}: {job.stage}")
    if job.state is JobState.FAILED:
        if job.traceback:
            print(job.traceback, file=sys.stderr)
            print(f"sgraffito: error: {job.error}", file=sys.stderr)
            raise BackendBug(job.error)
        raise SgraffitoError(job.error)
    return job


def run_request(backend_name: str, request: Request | Mapping[str, Any], args: argparse.Namespace) -> int:
    """Run one request (a Request, or a mapping of Request fields without backend/k/seed) and write its
    candidates to args.out. Returns the exit status; user errors raise SgraffitoError (the CLI exits 2)."""

    from engine.device import resolve_device

    check_backend(backend_name)
    request = _build_request(backend_name, request, args)
    device = resolve_device(args.device)
    out = prepare_out(args.out, getattr(args, "inputs", ()))
    started = time.perf_counter()
    try:
        job = run_job(request, device, nothing_written=f"no candidates written to {out}")
    except BackendBug:
        return 1

    files = write_candidates(out, job, device, started)
    print(f"{len(files) - 1} candidate(s) in {job.seconds:.1f} s -> {out}", file=sys.stderr)
    return 0


def write_candidates(out: Path, job, device: str, started: float, *, echo: bool = True) -> list[Path]:
    """DIR/candidate_XX.png and DIR/candidates.json of a finished job (candidates.json last); the files written,
    each printed on stdout when `echo`. `started` (time.perf_counter) dates the request for its timings."""
    from engine import __version__
    from engine.device import describe_device
    from engine.jobs import thaw
    from engine.safe_io import write_bytes_atomic

    request = job.request
    records, files = [], []
    for index, candidate in enumerate(job.candidates):
        name = f"candidate_{index:02d}.png"
        write_image(out / name, candidate.compose(request.photo))  # atomic: never a truncated candidate
        records.append({"file": name, "seed": candidate.seed, "region": list(candidate.region),
                        "seconds": round(candidate.seconds, 3), "info": thaw(candidate.info)})
        files.append(out / name)
        if echo:
            print(out / name)
    metadata = {
        "sgraffito": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backend": request.backend,
        "device": device,
        "device_name": describe_device(device),
        "request": request.describe(),
        "timings": {"total_seconds": round(time.perf_counter() - started, 3),
                    "run_seconds": round(job.seconds, 3)},
        "candidates": records,
    }
    # last, and atomic: a candidates.json always describes candidate files that are complete
    write_bytes_atomic(out / "candidates.json", (json.dumps(metadata, indent=2) + "\n").encode())
    return [*files, out / "candidates.json"]
