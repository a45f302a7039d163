"""Whole folders: one engine command over many inputs, resumable, sharded over processes with torchrun.

    sgraffito colorize scans/ --out coloured/               # every photo under scans/, recursively
    sgraffito segment 'box1/*.jpg' box2/ --out labels/      # globs, folders and files, mixed
    sgraffito translate maps/ --out renders/
    sgraffito edit edits.csv --out edited/                  # rows: photo,labels,new_labels (labels may be empty)
    torchrun --nproc_per_node 4 -m app colorize scans/ --out coloured/   # one process per GPU (or CPU slot)

A command runs a batch when a positional argument is a folder or a glob, or when it names several files (edit:
a .csv or .json list of rows). The command gives `run_batch` the items (`find_inputs`, `read_edit_rows`) and a
function that processes one item with the process's one runtime (`ItemContext.run`); the rest is here:

- One runtime per process (engine.jobs.Runtime), so the model loads once and its cache keeps it for every item.
- Items are keyed by their path relative to the inputs' common folder; the outputs mirror that tree under --out:
  a folder per input (candidate_XX.png and candidates.json: colorize, edit, taming translate) or one file
  (OUT/<key without suffix>.png: segment, ASAPNet translate). Two inputs that differ only in their suffix keep it
  (photo.jpg/, photo.png/). Files under --out are never inputs.
- Seeds: item seed = (--seed + a hash of the item's key) mod 2**31, candidate i uses item seed + i; never the rank
  or the order, so the outputs do not depend on how the items are sharded.
- The manifest (--out/manifest.json) records every item: status (done, failed), input fingerprint (size and
  mtime of each file read), the options' hash, seed, engine, model, device, rank, seconds, error, outputs. It is
  written atomically after every item, after the item's outputs, so it never lists an output that is not
  complete; a crash loses at most the item in progress.
- Resume: the same command again skips every item that is done with the same inputs, the same options and all
  its outputs present, and every failed item unless --retry-failed; changed inputs or options redo the item.
- Ctrl+C (or SIGTERM) stops after the current item with the manifest written (exit 130); a second Ctrl+C, a
  second or more later, cancels the current item too (it stays to do).
- torchrun (WORLD_SIZE > 1): each rank takes every WORLD_SIZE-th item still to do (all ranks compute the same
  list: rank 0 first merges the manifests of earlier runs, then a barrier), runs on its own device (cuda:LOCAL_RANK
  with nccl when CUDA exists, else the CPU with gloo) and writes manifest.rank<R>.json after every item; after a
  final barrier rank 0 merges them into manifest.json. A run killed before that leaves the rank files, and the
  next run (of any size) merges them first.
- Progress: one bar over the items (rank 0's share under torchrun) with items/s and an ETA; at the end the failed
  items with their errors and a summary line (done, skipped, failed). Exit status 0 only when nothing failed.
- A bad item (unreadable, damaged, too large, a label map of the wrong size) is recorded failed; the batch goes on.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Callable

from engine.errors import Cancelled, InputError, SgraffitoError

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")
GLOB_CHARACTERS = "*?["
MANIFEST = "manifest.json"
RANK_MANIFEST = "manifest.rank{rank}.json"
MANIFEST_LIMIT = 512 << 20  # bytes of a manifest we read: about a million items
SEED_RANGE = 2**31 - 64  # item seed + candidate index (at most 64 candidates) stays a non-negative int32
HARD_STOP_AFTER_S = 1.0  # a second Ctrl+C this long after the first cancels the current item (torchrun
#                          forwards the terminal's Ctrl+C as a second signal at once: that one only stops)
STOPPED, CANCELLED = "stopped", "cancelled"  # how a run ended early: after an item, or in the middle of one
BARRIER_TIMEOUT_HOURS = 24  # ranks wait this long for each other at the end (a rank's share may take hours)
# Options that never change an item's outputs: they do not enter the fingerprint that decides what is done.
NOT_OPTIONS = {"run", "command", "out", "device", "retry_failed", "inputs", "weights"}


def add_batch_arguments(parser) -> None:
    parser.add_argument("--retry-failed", action="store_true",
                        help="batch mode: run the items an earlier run of the same command recorded as failed "
                             "again (default: skip them, as the finished ones)")


def is_batch(arguments: list[str]) -> bool:
    """True when the positional arguments name several inputs: more than one, a folder or a glob."""
    if len(arguments) != 1:
        return True
    (only,) = arguments
    path = Path(only)
    return path.is_dir() or (not path.exists() and any(c in only for c in GLOB_CHARACTERS))


# ---- items ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One unit of work. key: its identity (a path relative to the batch's base folder, POSIX); sources: the
    files it reads (None for an optional one not given); name: its outputs' path under --out, without suffix."""

    key: str
    sources: tuple[Path | None, ...]
    name: str = ""


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def find_inputs(arguments: list[str], out: str | Path, suffixes=PHOTO_SUFFIXES) -> list[Item]:
    """The items named by files, folders (recursively: files with `suffixes`, hidden ones skipped) and globs,
    sorted by key, each file once; files under `out` are left out (a folder of results inside the photos)."""
    out = Path(os.path.abspath(out))
    roots, files = [], []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            root = Path(os.path.abspath(path))
            roots.append(root)
            files += [p for p in sorted(root.rglob("*")) if p.is_file() and p.suffix.lower() in suffixes
                      and _visible(p, root) and not _inside(p, out)]
        elif path.exists():
            file = Path(os.path.abspath(path))
            if _inside(file, out):
                raise InputError(f"{argument} is inside --out {out}; results are never inputs")
            roots.append(file.parent)
            files.append(file)
        elif any(c in argument for c in GLOB_CHARACTERS):
            matches = [Path(os.path.abspath(m)) for m in sorted(glob.glob(argument, recursive=True))]
            matches = [m for m in matches if m.is_file() and not _inside(m, out)]
            if not matches:
                raise InputError(f"{argument}: no file matches")
            roots += [m.parent for m in matches]
            files += matches
        else:
            raise InputError(f"{argument} does not exist")
    if not files:
        raise InputError(f"no input files in {' '.join(arguments)} (looked for {', '.join(suffixes)})")
    base = Path(os.path.commonpath(roots))
    unique = {file: None for file in files}  # each file once, in the order found
    items = [Item(PurePosixPath(file.relative_to(base)).as_posix(), (file,)) for file in unique]
    return name_outputs(sorted(items, key=lambda item: item.key))


def read_edit_rows(path: str | Path) -> list[Item]:
    """Rows of (photo, labels, new labels) from a .csv (a header row photo,labels,new_labels is optional) or a
    .json list of {"photo", "labels", "new_labels"} objects or 3-item lists; relative paths are relative to the
    list's folder; an empty labels cell means "segment the photo". Keys: the photo's relative path (with the new
    labels' name when a photo has several rows)."""
    from engine.safe_io import parse_json, read_bytes

    path = Path(path)
    data = read_bytes(path, "JSON")
    if path.suffix.lower() == ".json":
        rows = parse_json(data, str(path))
        if not isinstance(rows, list):
            raise InputError(f"{path}: expected a JSON list of rows")
    else:
        try:
            rows = [row for row in csv.reader(io.StringIO(data.decode("utf-8-sig"))) if any(c.strip() for c in row)]
        except (UnicodeDecodeError, csv.Error) as error:
            raise InputError(f"{path}: not a readable CSV file ({error})") from None
        if rows and [c.strip().lower().replace("-", "_") for c in rows[0]] == ["photo", "labels", "new_labels"]:
            rows = rows[1:]
    folder = Path(os.path.abspath(path.parent))
    triples = []
    for number, row in enumerate(rows, 1):
        if isinstance(row, dict):
            row = [row.get("photo"), row.get("labels"), row.get("new_labels")]
        if not isinstance(row, list) or len(row) != 3 or not row[0] or not row[2]:
            raise InputError(f"{path}: row {number} must give photo, labels (may be empty) and new_labels")
        triples.append(tuple(Path(os.path.abspath(folder / str(cell).strip())) if cell and str(cell).strip()
                             else None for cell in row))
    if not triples:
        raise InputError(f"{path}: no rows")
    base = Path(os.path.commonpath([t[0].parent for t in triples]))
    photo_keys = [PurePosixPath(t[0].relative_to(base)).as_posix() for t in triples]
    keys = [key if photo_keys.count(key) == 1 else f"{key}+{t[2].stem}" for key, t in zip(photo_keys, triples)]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise InputError(f"{path}: rows repeat the same photo and new labels: {', '.join(repeated)}")
    return name_outputs(sorted((Item(key, triple) for key, triple in zip(keys, triples)), key=lambda i: i.key))


def name_outputs(items: list[Item]) -> list[Item]:
    """Each item's output name: its key without the suffix, or the whole key where two would collide."""
    stems = [str(PurePosixPath(item.key).with_suffix("")) for item in items]
    return [Item(item.key, item.sources, stem if stems.count(stem) == 1 else item.key)
            for item, stem in zip(items, stems)]


def item_seed(base_seed: int, key: str) -> int:
    """The item's seed: from the base seed and its key only (never the rank or the order)."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return (int(base_seed) + digest) % SEED_RANGE


def fingerprint(sources) -> list:
    """[size, mtime_ns] of each file read (None for an absent optional one): a changed file is redone, a folder
    moved as a whole (mv keeps the times) is not."""
    prints = []
    for source in sources:
        try:
            info = os.stat(source) if source is not None else None
            prints.append(info and [info.st_size, info.st_mtime_ns])
        except OSError:
            prints.append([None, None])
    return prints


def options_of(args, exclude=(), **resolved) -> dict:
    """The options that decide an item's outputs (the command's arguments less the ones that do not, plus the
    engine and model actually used), as JSON values."""
    options = {name: value for name, value in vars(args).items() if name not in NOT_OPTIONS and name not in exclude}
    options.update(resolved)
    return json.loads(json.dumps(options, default=str))


def options_hash(command: str, options: dict) -> str:
    text = json.dumps({"command": command, **options}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- processes -----------------------------------------------------------------------------------------------


@dataclass
class Ranks:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun) and its device."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"
    backend: str | None = None  # the process group's (gloo, nccl); None alone

    @classmethod
    def start(cls, device_choice: str | None) -> "Ranks":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            from engine.device import resolve_device

            return cls(device=resolve_device(device_choice))
        import torch
        import torch.distributed as dist

        from engine.train.loop import choose_device  # the training loop's rule: cuda:LOCAL_RANK, else the CPU

        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device, backend = choose_device(device_choice or "auto", world, local_rank,
                                        int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            from datetime import timedelta

            dist.init_process_group(backend, timeout=timedelta(hours=BARRIER_TIMEOUT_HOURS))
        return cls(int(os.environ.get("RANK", "0")), world, str(device), backend)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if self.backend == "nccl":
                import torch

                dist.barrier(device_ids=[torch.cuda.current_device()])
            else:
                dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


class StopRequest:
    """Ctrl+C and SIGTERM ask the batch to stop after the current item; a second Ctrl+C (a second or more
    later) raises KeyboardInterrupt, which cancels the current item. The handlers only set flags: printing from
    a handler could deadlock on the progress bar's lock."""

    def __init__(self):
        self.signal: str | None = None
        self.first_at: float | None = None
        self.announced = False
        self._previous = {}

    def __enter__(self):
        for number in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[number] = signal.signal(number, self._handle)
            except ValueError:  # not the main thread: Ctrl+C then reaches the caller as usual
                pass
        return self

    def __exit__(self, *exc):
        for number, previous in self._previous.items():
            signal.signal(number, previous)

    def _handle(self, number, frame) -> None:
        now = time.monotonic()
        if (number == signal.SIGINT and self.first_at is not None and self.signal == "SIGINT"
                and now - self.first_at >= HARD_STOP_AFTER_S):
            raise KeyboardInterrupt
        if self.first_at is None:
            self.first_at = now
            self.signal = signal.Signals(number).name

    @property
    def requested(self) -> bool:
        return self.signal is not None


# ---- the manifest --------------------------------------------------------------------------------------------


def _read_manifest(path: Path) -> dict:
    from engine.safe_io import parse_json, read_bytes

    if not path.is_file():
        return {}
    data = parse_json(read_bytes(path, "JSON", limit=MANIFEST_LIMIT), str(path))
    if not isinstance(data, dict) or not isinstance(data.get("items"), dict):
        raise InputError(f"{path}: not a Sgraffito batch manifest; use another --out folder")
    return data


def _rank_manifests(out: Path) -> list[Path]:
    return sorted(out.glob("manifest.rank*.json"))


def _write_manifest(path: Path, command: str, options: dict, items: dict, **extra) -> None:
    from engine import __version__
    from engine.safe_io import write_bytes_atomic

    counts = {}
    for entry in items.values():
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
    header = {"sgraffito": __version__, "command": command, "options": options,
              "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra, "counts": counts}
    # one item a line: readable, greppable, and a tenth of the size of an indented document
    lines = ",\n".join(f"  {json.dumps(key)}: {json.dumps(items[key])}" for key in sorted(items))
    text = json.dumps(header, indent=1)[:-2] + f',\n "items": {{\n{lines}\n }}\n}}\n'
    write_bytes_atomic(path, text.encode())


def merge_manifests(out: Path, command: str, options: dict) -> dict:
    """manifest.json and the rank files a run left behind, merged (a rank's entries are newer) and written back
    as manifest.json; the rank files are removed after. Returns the items."""
    main = _read_manifest(out / MANIFEST)
    if main and main.get("command") not in (None, command):
        raise InputError(f"--out {out} holds the results of `sgraffito {main['command']}`; use another folder")
    items = dict(main.get("items", {}))
    rank_files = _rank_manifests(out)
    for path in rank_files:
        items.update(_read_manifest(path).get("items", {}))
    if rank_files or main:
        _write_manifest(out / MANIFEST, command, options, items)
    for path in rank_files:
        path.unlink(missing_ok=True)
    return items


def _finished(entry: dict | None, item: Item, options: str, out: Path, retry_failed: bool) -> str | None:
    """'done' or 'failed' when an earlier run's entry stands for this item as it is now, else None (to do)."""
    if not entry or entry.get("options") != options or entry.get("inputs") != fingerprint(item.sources):
        return None
    if entry.get("status") == "done" and all((out / name).is_file() for name in entry.get("outputs", ())):
        return "done"
    if entry.get("status") == "failed" and not retry_failed:
        return "failed"
    return None


# ---- progress ------------------------------------------------------------------------------------------------


def _progress_class():
    from engine.commands._progress import StageProgress

    class BatchProgress(StageProgress):
        """The command's stage bar over items ("items 12/64"), with the throughput appended."""

        finished = 0

        def line(self) -> str:
            elapsed = self.now() - self.started
            rate = f"  {self.finished / elapsed:.2f} items/s" if self.finished and elapsed > 0 else ""
            return super().line() + rate

    return BatchProgress


class QuietProgress:
    """Ranks other than 0 draw no bar (one terminal, one bar); their notes are lines with the rank's title."""

    finished = 0

    def __init__(self, title: str, stream):
        self.title, self.stream = title, stream

    def update(self, fraction: float, stage: str) -> None:
        pass

    def note(self, text: str) -> None:
        self.stream.write(f"{self.title}: {text}\n")
        self.stream.flush()

    def close(self) -> None:
        pass


# ---- running -------------------------------------------------------------------------------------------------


@dataclass
class ItemContext:
    """What a command's item function gets: where to write, the item's seed and the shared runtime."""

    item: Item
    out: Path
    seed: int
    device: str
    _run: Callable = field(repr=False, default=None)

    def run(self, request):
        """Run `request` (its seed replaced by the item's) on the process's runtime; the finished Job. A user
        error raises SgraffitoError; a backend bug raises SgraffitoError after printing its traceback."""
        return self._run(request.with_seed(self.seed))

    def folder(self) -> Path:
        folder = self.out / self.item.name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def file(self, suffix: str) -> Path:
        path = self.out / f"{self.item.name}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_candidates(self, job, started: float) -> list[Path]:
        from engine.commands._runner import write_candidates

        folder = self.folder()
        return write_candidates(folder, job, self.device, started, echo=False)


def run_batch(args, *, command: str, items: list[Item], options: dict, engine: str, model: str,
              process: Callable[[ItemContext], list[Path]]) -> int:
    """Run `process` for every item not finished yet (see the module docstring); the exit status."""
    from engine.commands._runner import check_backend
    from engine.device import configure_threads
    from engine.jobs import Runtime

    check_backend(engine)
    from engine.commands._runner import prepare_out

    out = prepare_out(args.out)
    ranks = Ranks.start(getattr(args, "device", None))
    digest = options_hash(command, options)
    try:
        if ranks.rank == 0:
            merge_manifests(out, command, options)
        ranks.barrier()  # every rank now reads the same manifest and computes the same items to do
        earlier = _read_manifest(out / MANIFEST).get("items", {})
        state = {item.key: _finished(earlier.get(item.key), item, digest, out, args.retry_failed) for item in items}
        todo = [item for item in items if state[item.key] is None]
        mine = todo[ranks.rank::ranks.world]
        skipped = sum(1 for s in state.values() if s == "done")
        failed_before = [item.key for item in items if state[item.key] == "failed"]

        configure_threads()
        runtime = Runtime(device=ranks.device)
        title = command if ranks.world == 1 else f"{command} rank {ranks.rank}/{ranks.world}"
        bar = (_progress_class() if ranks.rank == 0 else QuietProgress)(title, sys.stderr)
        entries = dict(earlier) if ranks.world == 1 else {}
        manifest_path = out / (MANIFEST if ranks.world == 1 else RANK_MANIFEST.format(rank=ranks.rank))
        started = time.monotonic()
        interrupted = None
        with StopRequest() as stop:  # until the end: a Ctrl+C while ranks wait for each other only stops too
            try:
                interrupted = _run_items(mine, runtime, bar, stop, ranks, out, args, command, options, digest,
                                         engine, model, process, entries, manifest_path)
            finally:
                runtime.shutdown(wait=True, timeout=60)  # never exit while the worker still runs torch code
                bar.close()
            if ranks.world > 1 and interrupted != CANCELLED:
                # every rank's share is done (or stopped after its current item: Ctrl+C reaches every rank) and
                # its rank file written; a cancelled rank leaves at once (torchrun then stops the others)
                ranks.barrier()
            if ranks.rank != 0:
                return 130 if interrupted else 0
            if ranks.world > 1 and interrupted != CANCELLED:
                entries = merge_manifests(out, command, options)
            this_run = {key: entries[key] for key in (item.key for item in items)
                        if key in entries and state[key] is None}
            return _summary(command, out, items, this_run, skipped, failed_before, ranks, interrupted,
                            time.monotonic() - started)
    finally:
        ranks.close()


def _run_items(mine, runtime, bar, stop, ranks, out, args, command, options, digest, engine, model, process,
               entries, manifest_path) -> str | None:
    """Process this rank's items in order; STOPPED or CANCELLED when a stop request ended the run early."""
    position = {"index": 0}

    def show(event) -> None:
        if event.kind == "progress":
            bar.update((position["index"] + event.fraction) / len(mine), f"items {position['index']}/{len(mine)}")

    runtime.add_listener(show)

    def run_job(request):
        job = runtime.submit(request)
        try:
            while not job.wait(0.1):  # a timed wait: signals reach this thread at once
                if stop.requested and not stop.announced:
                    _announce(stop, bar)
        except KeyboardInterrupt:
            runtime.cancel_all()
            job.wait(30)
            raise Cancelled("interrupted: the current item was cancelled") from None
        if job.state.value == "cancelled":
            raise Cancelled(f"{request.backend}: {job.stage}")
        if job.state.value == "failed":
            if job.traceback:
                bar.note(job.traceback.rstrip())
            raise SgraffitoError(job.error)
        return job

    if mine:
        bar.update(0.0, f"items 0/{len(mine)}")
    for index, item in enumerate(mine):
        if stop.requested:
            _announce(stop, bar)
            return STOPPED
        position["index"] = index
        seed = item_seed(args.seed if getattr(args, "seed", None) is not None else 0, item.key)
        context = ItemContext(item, out, seed, ranks.device, run_job)
        began = time.perf_counter()
        entry = {"status": "done", "input": [str(s) if s else None for s in item.sources],
                 "inputs": fingerprint(item.sources), "options": digest, "seed": seed, "engine": engine,
                 "model": model, "device": ranks.device, "rank": ranks.rank}
        try:
            try:
                outputs = process(context)
                entry.update(outputs=[PurePosixPath(p.relative_to(out)).as_posix() for p in outputs], error=None)
            except SgraffitoError as error:
                if isinstance(error, Cancelled):
                    raise
                entry.update(status="failed", outputs=[], error=str(error))
            except Exception as error:  # a bug while processing one item: keep its traceback, go on with the rest
                bar.note(traceback.format_exc().rstrip())
                entry.update(status="failed", outputs=[], error=f"{type(error).__name__}: {error}")
            entry.update(seconds=round(time.perf_counter() - began, 3),
                         finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            entries[item.key] = entry
            extra = {"rank": ranks.rank, "world": ranks.world} if ranks.world > 1 else {}
            _write_manifest(manifest_path, command, options, entries, **extra)  # after the outputs: never ahead
        except (Cancelled, KeyboardInterrupt):
            # a second Ctrl+C: the item stays to do; the manifest on disk is the last complete one (atomic)
            bar.note("cancelled the current item; it is left to do")
            return CANCELLED
        if entry["status"] == "failed":
            bar.note(f"{item.key}: failed: {entry['error']}")
        bar.finished = index + 1
        bar.update((index + 1) / len(mine), f"items {index + 1}/{len(mine)}")
    return STOPPED if stop.requested else None


def _announce(stop: StopRequest, bar) -> None:
    if not stop.announced:
        stop.announced = True
        again = " (Ctrl+C again to cancel it)" if stop.signal == "SIGINT" else ""
        bar.note(f"{stop.signal}: stopping after the current item{again}")


def _summary(command, out, items, this_run, skipped, failed_before, ranks, interrupted, seconds) -> int:
    from engine.commands._progress import clock

    done = [key for key, entry in this_run.items() if entry["status"] == "done"]
    failed = [(key, entry["error"]) for key, entry in this_run.items() if entry["status"] == "failed"]
    left = len(items) - skipped - len(failed_before) - len(this_run)
    for key, error in failed:
        print(f"failed: {key}: {error}", file=sys.stderr)
    if failed_before:
        print(f"failed in an earlier run ({len(failed_before)}; --retry-failed runs them again): "
              f"{', '.join(failed_before[:10])}{' ...' if len(failed_before) > 10 else ''}", file=sys.stderr)
    rate = f", {len(this_run) / seconds:.2f} items/s" if this_run and seconds > 0 else ""
    processes = f" on {ranks.world} processes" if ranks.world > 1 else ""
    parts = [f"{len(done)} done", f"{skipped} skipped", f"{len(failed) + len(failed_before)} failed"]
    if left:
        parts.append(f"{left} not started (interrupted; run the same command again to go on)")
    manifest = out / MANIFEST if ranks.world == 1 or interrupted != CANCELLED else out / "manifest.rank*.json"
    print(f"{command}: {', '.join(parts)} of {len(items)} items{processes} in {clock(seconds)}{rate}; "
          f"manifest {manifest}", file=sys.stderr, flush=True)
    if interrupted:
        return 130
    return 1 if failed or failed_before else 0
