"""Every external file enters through a bounded reader here, and every output leaves through an atomic writer.

Reading (images, label maps, projects, checkpoints, TF bundles, hints, label sets, model configs):
- regular files only: a FIFO would hang, a device (or a symlink to /dev/zero) would never end; both are refused
  after the path is resolved and again on the opened descriptor;
- a size cap per kind of file (`LIMITS`), checked from the file's size and again while reading (a file may grow);
- zip members are read in chunks against a `Budget` of inflated bytes per archive and a ratio limit, so a zip bomb
  stops after the budget, not after the allocation; `extract_zip` extracts the same way;
- `parse_json` refuses NaN/Infinity, nesting deeper than `MAX_JSON_DEPTH` and non-UTF-8 text with a message.
Each reader raises the error class its caller names (InputError for documents, CheckpointError for weights), with
the file and the problem in the message.

Writing: `atomic_write` (a temporary file named `.NAME.PID.XXXX.sgraffito-tmp` in the target's folder, fsync,
rename; through a symlink it writes the link's target), `refuse_input` (never write over a file being read) and
`remove_stale_temps` (temporary files of ours left by a killed process).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from engine.errors import InputError, SgraffitoError

MiB, GiB = 1 << 20, 1 << 30
# Largest file of each kind we read. An image at the 200-MP limit is ~1.2 GB as a 16-bit TIFF.
LIMITS = {
    "image": 1536 * MiB,
    "label map": 1536 * MiB,
    "project": 8 * GiB,
    "checkpoint": 32 * GiB,
    "TF checkpoint index": 256 * MiB,
    "TF checkpoint shard": 32 * GiB,
    "hints": 16 * MiB,
    "label set": 16 * MiB,
    "JSON": 16 * MiB,
    "archive": 16 * GiB,
}
MAX_JSON_DEPTH = 64
# A zip member may inflate to `MAX_RATIO` times its compressed size once it passes `RATIO_FLOOR`: our own files
# store images (ratio ~1) and deflate only JSON; a zip bomb reaches ratios of 1000.
MAX_RATIO = 100
RATIO_FLOOR = 32 * MiB
CHUNK = 4 * MiB
TEMP_SUFFIX = ".sgraffito-tmp"
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[^.]+" + re.escape(TEMP_SUFFIX) + r"$")
STALE_AFTER_S = 24 * 3600  # a temp file of a live process older than this is stale too (pids are reused)


def human(size: int) -> str:
    if size >= 1e9:
        return f"{size / 1e9:.1f} GB"
    if size >= 1e6:
        return f"{size / 1e6:.0f} MB"
    return f"{size / 1e3:.0f} kB" if size >= 1e3 else f"{size} bytes"


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _refuse_special(path, mode: int, kind: str, error: type[SgraffitoError]) -> None:
    if not stat.S_ISREG(mode):
        what = _kind_of(mode)
        if stat.S_ISDIR(mode):
            raise error(f"{path} is a folder, not a file ({kind} expected)")
        raise error(f"{path} is {what}, not a regular file; Sgraffito reads files only ({kind} expected)")


def open_regular(path: str | os.PathLike, kind: str, error: type[SgraffitoError] = InputError,
                 limit: int | None = None) -> io.BufferedReader:
    """Open a regular file of at most `limit` (default LIMITS[kind]) bytes for reading; FIFOs, devices, sockets
    and folders (also behind symlinks) are refused without blocking. The caller closes the file."""
    limit = LIMITS[kind] if limit is None else limit
    try:
        info = os.stat(path)  # follows symlinks: a link to /dev/zero is a character device here
    except FileNotFoundError:
        raise error(f"{path} does not exist") from None
    except OSError as problem:
        raise error(f"{path} cannot be read: {problem.strerror or problem}") from None
    _refuse_special(path, info.st_mode, kind, error)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)  # O_NONBLOCK: a FIFO swapped in since the stat cannot hang the open
    except OSError as problem:
        raise error(f"{path} cannot be read: {problem.strerror or problem}") from None
    try:
        info = os.fstat(descriptor)
        _refuse_special(path, info.st_mode, kind, error)
        if getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(descriptor, True)
        if info.st_size > limit:
            raise error(f"{path} is {human(info.st_size)}, more than the {human(limit)} limit for a {kind}")
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_stream(handle, limit: int, what: str, error: type[SgraffitoError] = InputError,
                expected: int | None = None) -> bytes:
    """At most `limit` bytes of an open stream, in chunks; more is an error (the stream is never read past
    limit + 1). `expected` (a declared size) sizes the first read."""
    first = min(limit, expected if expected is not None else CHUNK) + 1
    try:
        data = handle.read(first)
        if len(data) < first:
            return data
        parts, total = [data], len(data)
        while total <= limit:
            part = handle.read(min(CHUNK, limit + 1 - total))
            if not part:
                break
            parts.append(part)
            total += len(part)
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, ValueError, NotImplementedError,
            RuntimeError) as problem:
        raise error(f"{what} cannot be read ({getattr(problem, 'strerror', None) or problem})") from None
    if total > limit:
        raise error(f"{what} is larger than the {human(limit)} limit")
    return b"".join(parts)


def read_bytes(path: str | os.PathLike, kind: str, error: type[SgraffitoError] = InputError,
               limit: int | None = None) -> bytes:
    """The whole content of a regular file of kind `kind`, bounded (see open_regular)."""
    limit = LIMITS[kind] if limit is None else limit
    with open_regular(path, kind, error, limit) as handle:
        size = os.fstat(handle.fileno()).st_size
        return read_stream(handle, limit, str(path), error, expected=size)


def read_tar_member(path: str | os.PathLike, matches, kind: str, error: type[SgraffitoError] = InputError,
                    limit: int | None = None) -> bytes | None:
    """The first regular member of the gzip'd tar at `path` whose name `matches(name)`, or None if none does.
    The archive must be a regular file within LIMITS["archive"]; the member is read in chunks up to `limit`
    (default LIMITS[kind]) bytes, so a tar bomb stops at the limit."""
    import tarfile

    limit = LIMITS[kind] if limit is None else limit
    with open_regular(path, "archive", error) as handle:
        try:
            with tarfile.open(fileobj=handle, mode="r:gz") as archive:
                for member in archive:
                    if member.isfile() and matches(member.name):
                        if member.size > limit:
                            raise error(f"{path}: {member.name} is larger than the {human(limit)} limit")
                        return read_stream(archive.extractfile(member), limit, f"{path}: {member.name}", error,
                                           expected=member.size)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as problem:
            raise error(f"{path}: not a readable .tar.gz archive ({problem})") from None
    return None


def parse_json(data: bytes | str, source: str, error: type[SgraffitoError] = InputError,
               max_depth: int = MAX_JSON_DEPTH):
    """JSON text -> value; invalid UTF-8 or JSON, NaN/Infinity and nesting deeper than max_depth are errors."""
    def no_constant(name):
        raise ValueError(f"{name} is not a number JSON allows")

    try:
        text = data.decode("utf-8-sig") if isinstance(data, (bytes, bytearray)) else data
        value = json.loads(text, parse_constant=no_constant)
    except UnicodeDecodeError as problem:
        raise error(f"{source} is not UTF-8 text ({problem.reason} at byte {problem.start})") from None
    except RecursionError:
        raise error(f"{source} is nested too deeply (more than {max_depth} levels)") from None
    except ValueError as problem:  # JSONDecodeError too
        raise error(f"{source} is not valid JSON ({problem})") from None
    if json_depth(value) > max_depth:
        raise error(f"{source} is nested too deeply (more than {max_depth} levels)")
    return value


def json_depth(value) -> int:
    """Nesting depth of a JSON value, without recursion."""
    depth, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            depth = max(depth, level)
            if level <= MAX_JSON_DEPTH * 4:  # deeper than any limit: no need to walk further
                stack.extend((child, level + 1) for child in item)
    return depth


def read_json(path: str | os.PathLike, kind: str = "JSON", error: type[SgraffitoError] = InputError):
    return parse_json(read_bytes(path, kind, error), str(path), error)


def finite(value, what: str, *, minimum: float | None = None, positive: bool = False,
           error: type[SgraffitoError] = InputError) -> float:
    """`value` as a finite float (and > 0, or >= minimum); otherwise an error naming `what`."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise error(f"{what} must be a number, got {value!r:.40}") from None
    if not math.isfinite(number):
        raise error(f"{what} must be a finite number, got {number}")
    if positive and number <= 0:
        raise error(f"{what} must be positive, got {number:g}")
    if minimum is not None and number < minimum:
        raise error(f"{what} must be at least {minimum:g}, got {number:g}")
    return number


# ---- budgets ----------------------------------------------------------------------------------------------------


class Budget:
    """A total that several reads share (inflated zip bytes of one archive, decoded pixels of one project)."""

    def __init__(self, total: int, what: str, unit: str = "bytes", error: type[SgraffitoError] = InputError):
        self.total, self.left, self.what, self.unit, self.error = total, total, what, unit, error

    def charge(self, amount: int, item: str) -> None:
        if amount > self.left:
            limit = human(self.total) if self.unit == "bytes" else f"{self.total / 1e6:.0f} M{self.unit}"
            raise self.error(f"{self.what}: {item} exceeds the {limit} that Sgraffito decodes from one file")
        self.left -= amount


def open_zip(path: str | os.PathLike, kind: str, error: type[SgraffitoError] = InputError,
             bad_zip: str | None = None) -> zipfile.ZipFile:
    """A zip archive over a regular file (see open_regular); `BadZipFile` becomes `error` (message `bad_zip`)."""
    handle = open_regular(path, kind, error)
    try:
        return zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as problem:
        handle.close()
        raise error(bad_zip or f"{path} is not a readable zip archive ({problem})") from None


def close_zip(archive: zipfile.ZipFile) -> None:
    handle = archive.fp
    archive.close()
    if handle is not None and not handle.closed:
        handle.close()


def member_limit(info: zipfile.ZipInfo, limit: int) -> int:
    """The most a member may inflate to: its own limit, and at most MAX_RATIO x its compressed size past the floor."""
    return min(limit, max(RATIO_FLOOR, MAX_RATIO * max(1, info.compress_size)))


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, what: str, limit: int,
                budget: Budget | None = None, error: type[SgraffitoError] = InputError,
                damaged: str | None = None) -> bytes:
    """One zip member, inflated in chunks: never past `limit`, its ratio limit or the archive's `budget`.
    `damaged` names it in the message when it cannot be inflated (default `what`)."""
    bound = member_limit(info, limit)
    if info.file_size > bound:
        raise error(f"{what} would inflate to {human(info.file_size)} from {human(info.compress_size)}, more "
                    f"than the {human(bound)} limit")
    if budget is not None:
        budget.charge(info.file_size, info.filename)
    try:
        with archive.open(info) as stream:
            data = read_stream(stream, bound, damaged or what, error, expected=info.file_size)
    except SgraffitoError:
        raise
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, NotImplementedError, RuntimeError,
            ValueError) as problem:
        raise error(f"{damaged or what} cannot be read ({problem})") from None
    if budget is not None and len(data) > info.file_size:
        budget.charge(len(data) - info.file_size, info.filename)
    return data


def safe_member_name(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return not (name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts or "\x00" in name)


def extract_zip(path: str | os.PathLike, into: str | os.PathLike, error: type[SgraffitoError] = InputError,
                *, kind: str = "archive", budget_bytes: int = 16 * GiB, max_members: int = 10000) -> None:
    """Extract an archive member by member with the same bounds as read_member (ratio, total budget), never
    outside `into`, never a symlink; streamed to disk in chunks."""
    into = Path(into)
    free = shutil.disk_usage(into).free
    budget = Budget(min(budget_bytes, max(0, free - 256 * MiB)), str(path), error=error)
    archive = open_zip(path, kind, error)
    try:
        members = archive.infolist()
        if len(members) > max_members:
            raise error(f"{path} has {len(members)} members, more than the {max_members} Sgraffito extracts")
        for info in members:
            if not safe_member_name(info.filename):
                raise error(f"{path}: member {info.filename!r} would escape the extraction folder")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise error(f"{path}: member {info.filename!r} is a symbolic link")
            target = into / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            bound = member_limit(info, budget.total)
            if info.file_size > bound:
                raise error(f"{path}: member {info.filename!r} would inflate to {human(info.file_size)} from "
                            f"{human(info.compress_size)}; refusing to extract it")
            budget.charge(info.file_size, f"member {info.filename!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            try:
                with archive.open(info) as source, open(target, "wb") as sink:
                    while part := source.read(CHUNK):
                        written += len(part)
                        if written > min(bound, info.file_size + CHUNK):
                            raise error(f"{path}: member {info.filename!r} inflates past its declared size")
                        sink.write(part)
            except SgraffitoError:
                raise
            except (OSError, EOFError, zlib.error, zipfile.BadZipFile, NotImplementedError, RuntimeError) as problem:
                if isinstance(problem, OSError) and problem.errno == errno.ENOSPC:
                    raise error(f"{path}: the disk is full while extracting {info.filename!r}") from None
                raise error(f"{path}: member {info.filename!r} cannot be extracted ({problem})") from None
    finally:
        close_zip(archive)


# ---- writing ----------------------------------------------------------------------------------------------------


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _disk_full(path: Path) -> SgraffitoError:
    try:
        free = shutil.disk_usage(path.parent).free
        detail = f" ({free / 1e6:.0f} MB free)"
    except OSError:
        detail = ""
    return SgraffitoError(f"cannot save {path.name}: the disk is full{detail}; the previous file is unchanged")


def write_target(path: str | os.PathLike) -> Path:
    """Where a write to `path` lands: a symlink's final target (saving through a link keeps the link)."""
    path = Path(path)
    if path.is_symlink():
        return Path(os.path.realpath(path))
    return path


def refuse_input(out: str | os.PathLike, inputs, what: str = "output") -> None:
    """InputError when `out` is (or links to) one of the files being read."""
    out_path = Path(out)
    for source in inputs:
        if source is None:
            continue
        try:
            same = out_path.exists() and os.path.samefile(out_path, source)
        except OSError:
            same = False
        if same:
            raise InputError(f"{what} {out} is the input file {source}; refusing to write over it")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove our temporary files (`.NAME.PID.XXXX.sgraffito-tmp`) in `folder` whose process is gone (or that
    are older than a day): a save killed half-way leaves one. `name` limits it to one target's temps."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if not match or (name is not None and not entry.name.startswith(f".{name}.")):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            stale = not _pid_alive(int(match.group(1))) or now - entry.stat().st_mtime > STALE_AFTER_S
            if stale and int(match.group(1)) != os.getpid():
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path` for a writer that takes a file name (safetensors, torch.save); once
    the block ends it is synced and replaces `path`. On any error the old file is untouched, the temporary file
    removed, and OSErrors become messages (disk full, no permission). A path that is a symlink keeps its link:
    the target is replaced. The new file gets the mode an ordinary open() would give it."""
    path = write_target(path)
    remove_stale_temps(path.parent, path.name)
    try:
        descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX,
                                                 dir=path.parent)
    except FileNotFoundError:
        raise InputError(f"cannot save {path}: the folder {path.parent} does not exist") from None
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise _disk_full(path) from None
        raise InputError(f"cannot save {path}: {error.strerror or error}") from None
    os.close(descriptor)
    temp = Path(temp_name)
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~_UMASK
    try:
        yield temp
        # mkstemp makes the file private (0600), and so does safetensors' writer: set the mode afterwards
        os.chmod(temp, mode)
        _fsync_file(temp)
        os.replace(temp, path)
    except BaseException as error:
        temp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            if error.errno == errno.ENOSPC:
                raise _disk_full(path) from None
            raise InputError(f"cannot save {path}: {error.strerror or error}") from None
        raise
    fsync_folder(path.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike):
    """Yield a binary file that replaces `path` only once fully written and synced (atomic_path's guarantees)."""
    with atomic_path(path) as temp, open(temp, "wb") as handle:
        yield handle


def _fsync_file(path: Path) -> None:
    descriptor = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))  # Windows syncs only a writable handle
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path) as handle:
        handle.write(data)


def fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; not possible (nor needed) on Windows."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
