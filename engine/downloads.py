"""`sgraffito models get NAME`: download a catalogue entry (engine/catalogue.json), unpack it safely and import it
strictly with its engine's importer, recording where every file came from.

- HTTP through `requests`: resumable (a `.part` file continued with a Range request, also after a dropped
  connection within one run), verified (size and sha256 where the catalogue knows them, always the
  Content-Length), with connect/read timeouts and progress (bytes, speed, ETA) and cancel callbacks.
- Host quirks: Dropbox share links get `dl=1`, heibox folder links the `files/?p=...&dl=1` direct form, Google
  Drive file links the `uc?export=download` form and its "can't scan this file for viruses" confirmation page
  is followed, Google Cloud Storage console links become storage.googleapis.com.
  `$SGRAFFITO_MODEL_MIRROR=URL` replaces every host by URL/<model name>/<file name> (labs, offline mirrors).
- Archives are unpacked with size limits and refused whole if a member is absolute, contains `..`, or is a
  link or device.
- Everything is written under `<models>/.downloads/<name>/` (a hidden folder the model list skips): the
  download goes to `<file>.part` and is renamed when complete and verified, the importer writes the model
  folder, and the download folder is removed after a successful import or a failed one (a strict-import
  failure leaves nothing installed); only an interrupted download's `.part` stays, to be resumed.
- `from_path` (`--from FILE_OR_DIR`) imports files the user already downloaded, with the same checks.
- Offline or failed: a DownloadError naming the URL, the size and the manual `sgraffito import ...` command.
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import json
import os
import shutil
import socket
import stat
import tarfile
import threading
import time
import urllib.parse
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Callable

from engine import registry
from engine.catalogue import Entry, SourceFile, human_size
from engine.errors import Cancelled, InputError, SgraffitoError
from engine.model_store import list_models, user_models_dir

CHUNK = 1 << 20
NET_CHUNK = 64 << 10  # a dropped connection loses at most one network block (a partial block is not handed out)
CONNECT_TIMEOUT = 5.0  # seconds; with the name look-up below an offline machine fails within ~10 s
READ_TIMEOUT = 30.0  # seconds without a byte before a download counts as stalled
MAX_ATTEMPTS = 5  # per file, while each attempt makes progress (dropped connections are resumed)
RECORD = "download.json"  # in the model folder: where every file came from, its size and sha256


class DownloadError(SgraffitoError):
    """A download or its import failed; the message says what to do by hand."""


@dataclass(frozen=True)
class Progress:
    phase: str  # "download", "verify", "unpack", "import", "done"
    file: str = ""
    done: int = 0
    total: int | None = None
    speed: float = 0.0  # bytes per second, over the last seconds
    eta: float | None = None  # seconds

    def text(self) -> str:
        if self.phase != "download":
            return f"{self.phase} {self.file}".strip()
        total = f" of {human_size(self.total)}" if self.total else ""
        eta = f", {format_eta(self.eta)} left" if self.eta is not None else ""
        return f"{self.file}: {human_size(self.done)}{total} at {human_size(self.speed)}/s{eta}"


def format_eta(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


@dataclass(frozen=True)
class Result:
    name: str
    path: Path
    already: bool  # it was installed before; nothing was done


ProgressCallback = Callable[[Progress], None]


# ----------------------------------------------------------------------------------------------------------
# Addresses


def direct_url(url: str) -> str:
    """The direct-download form of a share link (Dropbox, heibox, Google Drive, Cloud Storage)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.lower()
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)

    def with_query(**changes):
        merged = {**{k: v[-1] for k, v in query.items()}, **changes}
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(merged, safe="/")))

    if host.endswith("dropbox.com"):
        return with_query(dl="1")
    if host == "heibox.uni-heidelberg.de":
        segments = parts.path.strip("/").split("/")
        if len(segments) >= 2 and segments[0] == "d":  # a shared folder: /d/ID/files/?p=PATH&dl=1
            if "p" not in query or query["p"][-1] in ("", "/"):
                return url  # the folder itself: no single file to fetch
            return urllib.parse.urlunsplit(parts._replace(
                path=f"/d/{segments[1]}/files/",
                query=urllib.parse.urlencode({"p": query["p"][-1], "dl": "1"})))
        if len(segments) >= 2 and segments[0] == "f":  # a shared file: /f/ID/?dl=1
            return with_query(dl="1")
        return url
    if host in ("drive.google.com", "docs.google.com"):
        segments = parts.path.strip("/").split("/")
        file_id = None
        if "file" in segments and "d" in segments:
            index = segments.index("d")
            file_id = segments[index + 1] if index + 1 < len(segments) else None
        elif "id" in query:
            file_id = query["id"][-1]
        if file_id and "folders" not in segments:
            return f"https://drive.google.com/uc?export=download&id={urllib.parse.quote(file_id)}"
        return url
    if host == "storage.cloud.google.com":  # the console link needs a login; the same object is public here
        return urllib.parse.urlunsplit(parts._replace(netloc="storage.googleapis.com"))
    return url


def mirror_url(entry: Entry, source: SourceFile) -> str | None:
    mirror = os.environ.get("SGRAFFITO_MODEL_MIRROR", "").strip()
    if not mirror:
        return None
    return f"{mirror.rstrip('/')}/{urllib.parse.quote(entry.name)}/{urllib.parse.quote(source.name)}"


def source_url(entry: Entry, source: SourceFile) -> str | None:
    """Where `source` is downloaded from: the mirror, else the direct form of its URL (None: by hand only)."""
    return mirror_url(entry, source) or (direct_url(source.url) if source.url else None)


def manual_instructions(entry: Entry) -> str:
    """What to do by hand: the page(s) to download from and the commands that import the files."""
    lines = []
    for source in entry.files:
        where = source.page or source.url
        what = source.manual or f"download {source.name}"
        lines.append(f"  {what} from {where}")
    lines.append(f"then run:\n  sgraffito models get {entry.name} --from "
                 f"{entry.files[0].name if len(entry.files) == 1 else 'DOWNLOAD_FOLDER'}")
    unpacked = "UNPACKED_FOLDER" if any(s.archive for s in entry.files) else "DOWNLOAD_FOLDER"
    lines.append(f"or{' unpack it and' if unpacked == 'UNPACKED_FOLDER' else ''} run:\n"
                 f"  {entry.import_command(unpacked)}")
    return "\n".join(lines)


def source_size(source: SourceFile) -> str:
    return human_size(source.size) if source.size is not None else "size unknown"


# ----------------------------------------------------------------------------------------------------------
# HTTP


class _FormParser(html.parser.HTMLParser):
    """The download form of Google Drive's confirmation page: its action and hidden inputs."""

    def __init__(self):
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self.links: list[str] = []
        self._in_form = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and (attrs.get("id") == "download-form" or self.action is None):
            self.action, self._in_form = attrs.get("action"), True
            self.fields = {}
        elif tag == "input" and self._in_form and attrs.get("name"):
            self.fields[attrs["name"]] = attrs.get("value") or ""
        elif tag == "a" and attrs.get("href") and "confirm=" in attrs["href"]:
            self.links.append(attrs["href"])

    def handle_endtag(self, tag):
        if tag == "form":
            self._in_form = False


def confirmation_url(page: str, base: str, cookies) -> str | None:
    """The URL that confirms a Google-Drive-style "download anyway" page, or None if the page has no such form."""
    parser = _FormParser()
    try:
        parser.feed(page)
    except Exception:  # a broken page: no confirmation found
        return None
    if parser.action and ("confirm" in parser.fields or "id" in parser.fields):
        action = urllib.parse.urljoin(base, parser.action)
        return action + ("&" if "?" in action else "?") + urllib.parse.urlencode(parser.fields)
    if parser.links:
        return urllib.parse.urljoin(base, parser.links[0].replace("&amp;", "&"))
    for name, value in (cookies or {}).items():  # the older flow: a download_warning cookie holds the token
        if name.startswith("download_warning"):
            return base + ("&" if "?" in base else "?") + urllib.parse.urlencode({"confirm": value})
    return None


def _resolve(host: str, timeout: float) -> None:
    """Look the host name up within `timeout` seconds (getaddrinfo itself has no timeout)."""
    outcome: list = []

    def look_up():
        try:
            socket.getaddrinfo(host, None)
            outcome.append(None)
        except OSError as error:
            outcome.append(error)

    thread = threading.Thread(target=look_up, daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        raise OSError(f"looking up {host} took more than {timeout:.0f} s")
    if outcome[0] is not None:
        raise OSError(f"cannot look up {host} ({outcome[0]})")


def _sha256_of(path: Path) -> "hashlib._Hash":
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest


def download(url: str, dest: Path, *, size: int | None = None, sha256: str | None = None,
             progress: ProgressCallback | None = None, cancelled: Callable[[], bool] | None = None,
             read_timeout: float | None = None) -> dict:
    """Download `url` to `dest` through `dest.part` (continued if present), verify, rename; returns
    {"url", "size", "sha256"}. Raises DownloadError (with the reason), or Cancelled (the .part stays)."""
    import requests  # only commands that download pay for the import

    read_timeout = read_timeout or float(os.environ.get("SGRAFFITO_DOWNLOAD_TIMEOUT") or READ_TIMEOUT)
    part = dest.with_name(dest.name + ".part")
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        _resolve(host, CONNECT_TIMEOUT)
    except OSError as error:
        raise DownloadError(f"no network connection? {error}") from None
    session = requests.Session()
    session.headers["User-Agent"] = "sgraffito-model-download"
    digest = _sha256_of(part) if part.exists() else hashlib.sha256()
    done = part.stat().st_size if part.exists() else 0
    total = size
    attempts, target = 0, url
    window: list[tuple[float, int]] = [(time.monotonic(), done)]
    while True:
        attempts += 1
        headers = {"Range": f"bytes={done}-"} if done else {}
        try:
            response = session.get(target, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT, read_timeout),
                                   allow_redirects=True)
        except requests.exceptions.Timeout:
            raise DownloadError(f"the server did not answer within {read_timeout:g} s") from None
        except requests.exceptions.RequestException as error:
            raise DownloadError(f"cannot connect ({type(error).__name__}: {_short(error)})") from None
        with response:
            if response.status_code == 416 and done and size is not None and done == size:
                break  # the .part is already complete
            if response.status_code == 416:
                part.unlink(missing_ok=True)  # the .part does not fit what the server has: start again
                digest, done = hashlib.sha256(), 0
                if attempts < MAX_ATTEMPTS:
                    continue
            if response.status_code >= 400:
                raise DownloadError(f"the server answered HTTP {response.status_code} {response.reason}")
            kind = response.headers.get("Content-Type", "")
            if kind.startswith("text/html") and not dest.name.endswith((".html", ".htm")):
                page = next(response.iter_content(2_000_000), b"").decode("utf-8", "replace")  # a page, not GBs
                confirm = confirmation_url(page, response.url, response.cookies)
                if confirm and confirm != target and attempts < MAX_ATTEMPTS:
                    target = confirm  # Google Drive: "can't scan this file for viruses - download anyway"
                    continue
                raise DownloadError("the server sent a web page instead of the file (the link may need a login, "
                                    "or the file was moved)")
            if response.status_code == 206:
                start = _content_range_start(response.headers.get("Content-Range"))
                if start != done:
                    raise DownloadError(f"the server resumed at byte {start}, not at {done}")
                length = _content_range_total(response.headers.get("Content-Range"))
            else:
                if done:  # the server ignored the Range: start again
                    digest, done = hashlib.sha256(), 0
                length = response.headers.get("Content-Length")
                length = int(length) if length and length.isdigit() else None
            if length is not None:
                if size is not None and length != size:
                    raise DownloadError(f"the server's file has {length:,} bytes, the catalogue says {size:,} "
                                        "(a different file; not downloaded)")
                total = length
            progressed = False
            try:
                with open(part, "ab" if done else "wb") as out:
                    for block in response.iter_content(NET_CHUNK):
                        if cancelled is not None and cancelled():
                            raise Cancelled(f"download of {dest.name} cancelled ({human_size(done)} kept in "
                                            f"{part.name}; getting the model again resumes it)")
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        progressed = True
                        if total is not None and done > total:
                            raise DownloadError(f"the server sent more than the {total:,} bytes it announced")
                        if progress is not None:
                            progress(_progress(dest.name, done, total, window))
            except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.Timeout) as error:
                if progressed and attempts < MAX_ATTEMPTS:
                    continue  # a dropped connection: resume where it stopped
                raise DownloadError(f"the connection dropped at {human_size(done)} "
                                    f"({type(error).__name__}: {_short(error)}); run the same command again to "
                                    "resume") from None
            if total is not None and done < total:
                if progressed and attempts < MAX_ATTEMPTS:
                    continue
                raise DownloadError(f"the download stopped at {done:,} of {total:,} bytes; run the same command "
                                    "again to resume")
            break
    if progress is not None:
        progress(Progress("verify", dest.name, done, total))
    if size is not None and done != size:
        part.unlink(missing_ok=True)
        raise DownloadError(f"downloaded {done:,} bytes, the catalogue says {size:,}; the file was deleted")
    got = digest.hexdigest()
    if sha256 is not None and got != sha256:
        part.unlink(missing_ok=True)
        raise DownloadError(f"sha256 {got} does not match the catalogue's {sha256}; the file was deleted")
    os.replace(part, dest)
    return {"url": url, "size": done, "sha256": got}


def _short(error) -> str:
    text = str(error)
    return text if len(text) < 200 else text[:200] + "..."


def _content_range_start(header: str | None) -> int | None:
    try:
        return int(header.split(" ", 1)[1].split("-", 1)[0])
    except (AttributeError, IndexError, ValueError):
        return None


def _content_range_total(header: str | None) -> int | None:
    try:
        total = header.rsplit("/", 1)[1]
        return None if total == "*" else int(total)
    except (AttributeError, IndexError, ValueError):
        return None


def _progress(name: str, done: int, total: int | None, window: list) -> Progress:
    now = time.monotonic()
    window.append((now, done))
    while len(window) > 2 and now - window[0][0] > 5.0:  # speed over the last five seconds
        window.pop(0)
    elapsed = now - window[0][0]
    speed = (done - window[0][1]) / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / speed if total is not None and speed > 0 else None
    return Progress("download", name, done, total, speed, eta)


# ----------------------------------------------------------------------------------------------------------
# Unpacking


def _member_problem(name: str) -> str | None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if ".." in path.parts:
        return "contains '..'"
    return None


def unpack(archive: Path, into: Path, kind: str, *, max_bytes: int | None = None, max_members: int = 100_000,
           cancelled: Callable[[], bool] | None = None) -> None:
    """Unpack a zip or tar archive into `into`, refusing the whole archive (nothing written) if a member is
    absolute, has `..`, is a link or device, or the members add up to more than `max_bytes` (default: 20 times
    the archive's size plus 64 MiB, which no checkpoint archive reaches and every zip bomb does)."""
    if max_bytes is None:
        max_bytes = 20 * archive.stat().st_size + (64 << 20)
    into.mkdir(parents=True, exist_ok=True)
    if kind == "zip":
        try:
            with zipfile.ZipFile(archive) as z:
                infos = z.infolist()
                _check_members(archive, [(i.filename, i.file_size, _zip_kind(i)) for i in infos], max_bytes,
                               max_members)
                written = 0
                for info in infos:
                    target = into / info.filename
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as src, open(target, "wb") as out:
                        while block := src.read(CHUNK):
                            written += len(block)
                            if written > max_bytes:  # the sizes in the directory lied
                                raise DownloadError(f"{archive.name}: unpacks to more than {human_size(max_bytes)}")
                            if cancelled is not None and cancelled():
                                raise Cancelled(f"unpacking {archive.name} cancelled")
                            out.write(block)
        except zipfile.BadZipFile as error:
            raise DownloadError(f"{archive.name}: not a valid zip file ({error})") from None
    elif kind == "tar":
        try:
            with tarfile.open(archive) as t:
                members = t.getmembers()
                _check_members(archive, [(m.name, m.size, "file" if m.isfile() else "dir" if m.isdir() else "link")
                                         for m in members], max_bytes, max_members)
                for member in members:
                    target = into / member.name
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = t.extractfile(member)
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, CHUNK)
        except tarfile.TarError as error:
            raise DownloadError(f"{archive.name}: not a valid tar file ({error})") from None
    else:
        raise InputError(f"unknown archive kind {kind!r}")


def _zip_kind(info: zipfile.ZipInfo) -> str:
    kind = stat.S_IFMT(info.external_attr >> 16)  # unix type bits, when the zip was made on unix
    if kind == stat.S_IFLNK:
        return "link"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "device"
    return "dir" if info.is_dir() else "file"


def _check_members(archive: Path, members: list[tuple[str, int, str]], max_bytes: int, max_members: int) -> None:
    if len(members) > max_members:
        raise DownloadError(f"{archive.name}: {len(members)} members, more than the {max_members} allowed")
    total = 0
    for name, size, kind in members:
        problem = _member_problem(name)
        if problem:
            raise DownloadError(f"{archive.name}: member {name!r} {problem}; the archive was not unpacked")
        if kind not in ("file", "dir"):
            raise DownloadError(f"{archive.name}: member {name!r} is a {kind}; the archive was not unpacked")
        total += size
    if total > max_bytes:
        raise DownloadError(f"{archive.name}: unpacks to {human_size(total)}, more than the "
                            f"{human_size(max_bytes)} allowed; the archive was not unpacked")


# ----------------------------------------------------------------------------------------------------------
# Installing a catalogue entry


def installed(name: str) -> Path | None:
    """The user's model folder of that name, if it is installed."""
    for info in list_models():
        if info.name == name and info.source == "imported":
            return info.path
    return None


def _find(roots: list[Path], name: str, what: str, renamed: dict[str, Path]) -> Path:
    if name in renamed:
        return renamed[name]
    if name == ".":
        return roots[-1]
    found = []
    for root in roots:
        if root.is_file():
            found += [root] if root.name == name else []
        elif root.is_dir():
            found += [p for p in root.rglob(name) if p.is_file() and not p.name.endswith(".part")]
    found = sorted(set(found))
    if not found:
        raise DownloadError(f"{what}: no file named {name} in the download")
    if len(found) > 1:
        raise DownloadError(f"{what}: {len(found)} files named {name} ({', '.join(map(str, found[:4]))})")
    return found[0]


def _import_args(entry: Entry, roots: list[Path], force: bool, renamed: dict[str, Path]) -> argparse.Namespace:
    """The importer's arguments, parsed by the importer's own parser exactly as `sgraffito import` would;
    `renamed`: catalogue file name -> the file the user gave for it under another name."""
    try:
        dotted = registry.spec(entry.engine).importer
    except InputError:
        dotted = None
    if dotted is None:
        raise DownloadError(f"{entry.name}: the {entry.engine} engine has no importer in this version")
    importer = registry.resolve(dotted)
    parser = argparse.ArgumentParser(prog=f"sgraffito import {entry.engine}", exit_on_error=False)
    parser.add_argument("file", type=Path)
    parser.add_argument("--name")
    parser.add_argument("--force", action="store_true")
    importer.add_arguments(parser)
    words = [str(_find(roots, entry.import_file, entry.name, renamed)), "--name", entry.name]
    for option, value in entry.import_options.items():
        flag = "--" + option.replace("_", "-")
        if isinstance(value, dict):
            words += [flag, str(_find(roots, value["file"], entry.name, renamed))]
        elif value is True:
            words.append(flag)
        else:
            words += [flag, str(value)]
    if force:
        words.append("--force")
    try:
        args = parser.parse_args(words)
    except (argparse.ArgumentError, SystemExit) as error:
        raise DownloadError(f"{entry.name}: the catalogue's import options do not fit the {entry.engine} importer "
                            f"({error})") from None
    args.importer = importer
    return args


def _verify_local(path: Path, source: SourceFile, progress: ProgressCallback | None) -> dict:
    if progress is not None:
        progress(Progress("verify", path.name))
    size = path.stat().st_size
    if source.size is not None and size != source.size:
        raise DownloadError(f"{path}: {size:,} bytes, the catalogue says {source.size:,} for {source.name}")
    got = _sha256_of(path).hexdigest()
    if source.sha256 is not None and got != source.sha256:
        raise DownloadError(f"{path}: sha256 {got} does not match the catalogue's {source.sha256}")
    return {"from": str(path), "size": size, "sha256": got}


def install(entry: Entry, *, from_path: str | os.PathLike | None = None, force: bool = False,
            progress: ProgressCallback | None = None, cancelled: Callable[[], bool] | None = None) -> Result:
    """Download (or take from `from_path`), verify, unpack and strictly import a catalogue entry."""
    existing = installed(entry.name)
    if existing is not None and not force:
        return Result(entry.name, existing, already=True)
    work = user_models_dir() / ".downloads" / entry.name
    work.mkdir(parents=True, exist_ok=True)
    try:
        records, roots, renamed = _fetch_all(entry, work, from_path, progress, cancelled)
    except BaseException:
        if not any(work.glob("*.part")):  # keep only what a later run can resume
            shutil.rmtree(work, ignore_errors=True)
            _remove_empty(work.parent)
        raise
    if progress is not None:
        progress(Progress("import", entry.name))
    destination = user_models_dir() / entry.name
    existed = destination.exists()
    try:
        args = _import_args(entry, roots, force, renamed)
        directory = Path(args.importer.run(args))
        record = {"catalogue": entry.name, "title": entry.title, "engine": entry.engine, "licence": entry.licence,
                  "paper": entry.paper, "imported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "files": records}
        tmp = directory / f".{RECORD}.tmp"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, directory / RECORD)
    except BaseException:
        if not existed:
            shutil.rmtree(destination, ignore_errors=True)
        raise
    finally:  # complete files that imported (or failed to import strictly) are not kept: nothing to resume
        shutil.rmtree(work, ignore_errors=True)
        _remove_empty(work.parent)
    if progress is not None:
        progress(Progress("done", entry.name))
    return Result(entry.name, directory, already=False)


def _fetch_all(entry: Entry, work: Path, from_path, progress, cancelled) \
        -> tuple[list[dict], list[Path], dict[str, Path]]:
    """Every file of the entry, downloaded into `work` (or found under `from_path`), verified and unpacked:
    (records for download.json, the files and unpacked folders to look for the imported files in, the files the
    user gave under another name than the catalogue's, by the catalogue's name)."""
    records, roots, renamed = [], [], {}
    for source in entry.files:
        if from_path is not None:
            given = Path(from_path)
            if not given.exists():
                raise InputError(f"{given}: no such file or folder")
            if given.is_file():
                if len(entry.files) > 1 and given.name != source.name:
                    raise InputError(f"{entry.name} has {len(entry.files)} files; give the folder holding them")
                path = given
                if given.name != source.name:  # a browser's "latest_net_G (1).pth": the size and hash decide
                    renamed[source.name] = given
            else:
                matches = sorted(given.rglob(source.name))
                if not matches:  # already unpacked by the user: import from the folder itself
                    roots.append(given)
                    records.append({"name": source.name, "from": str(given), "unpacked": True})
                    continue
                path = matches[0]
            record = {"name": source.name, **_verify_local(path, source, progress)}
        else:
            url = source_url(entry, source)
            if url is None:
                raise DownloadError(f"{entry.name} has no direct download link (size: {entry.size_text()}); "
                                    f"download it by hand:\n" + manual_instructions(entry))
            path = work / source.name
            try:
                record = {"name": source.name, **download(url, path, size=source.size, sha256=source.sha256,
                                                          progress=progress, cancelled=cancelled)}
            except DownloadError as error:
                raise DownloadError(f"cannot download {entry.name}: {error}\n  URL: {url}\n  size: "
                                    f"{entry.size_text()}\nDownload it by hand:\n{manual_instructions(entry)}") \
                    from None
        records.append(record)
        if source.archive:
            target = work / (source.name + ".unpacked")
            shutil.rmtree(target, ignore_errors=True)
            if progress is not None:
                progress(Progress("unpack", source.name))
            try:
                unpack(path, target, source.archive, cancelled=cancelled)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
            roots.append(target)
        else:
            roots.append(path)
    return records, roots, renamed


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
