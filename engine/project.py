"""The `.sgraffito` project file: one zip holding everything needed to resume work.

    manifest.json           format version, app version, label set, mode, times, candidate/history/hint metadata
    photo/<original name>   the photo's file bytes, unchanged (absent for a label-map-only document)
    labels/original.png     the label map as loaded or estimated (8-bit PNG when every id < 256, else 16-bit)
    labels/edited.png       the label map as painted
    result.png              the photo with applied candidates, when it differs from the photo
    candidates/<id>.png     every kept candidate, lossless

Loading treats the file as untrusted: member names, sizes and contents are checked before anything is decoded.
Saving is atomic: a temporary file in the same folder, fsync, then os.replace; a failed save leaves the old file.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import stat
import tempfile
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from engine import __version__
from engine.errors import InputError, SgraffitoError
from engine.imageio import DEFAULT_MAX_PIXELS, Photo, check_label_ids, load_photo_bytes, open_image
from engine.labels import load_label_set
from engine.paths import user_data_dir

SUFFIX = ".sgraffito"
FORMAT = "sgraffito-project"
FORMAT_VERSION = (1, 0)  # a reader accepts every minor version of its major: minors only add optional keys
MODES = ("edit", "colorize", "translate")
# Bounds on what an archive may claim, checked from the zip directory before reading: a photo of the 200 MP limit
# is at most ~1.2 GB as a 16-bit TIFF, and a project with dozens of full-size candidates stays below the total.
MAX_MEMBER_BYTES = 2 << 30
MAX_TOTAL_BYTES = 8 << 30
MAX_MANIFEST_BYTES = 16 << 20
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(eq=False)
class StoredCandidate:
    id: str  # unique in the project; becomes the file name candidates/<id>.png
    request_id: str  # the request (one click on "generate") that produced it
    image: np.ndarray  # (h, w, 3) uint8; where it goes in the photo is in meta (e.g. "box")
    meta: dict = field(default_factory=dict)  # model, seed, strength, ...: JSON values only
    pinned: bool = False


@dataclass(eq=False)
class Project:
    photo: Photo | None  # None for a document made from a label map alone
    label_set: str
    original_labels: np.ndarray  # (H, W) uint16
    edited_labels: np.ndarray  # (H, W) uint16
    result: np.ndarray | None = None  # (H, W, 3) uint8 photo with applied candidates; None while unchanged
    candidates: list[StoredCandidate] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # applied candidates, oldest first
    hints: list[dict] = field(default_factory=list)  # colorize mode: colour hints
    mode: str = "edit"
    created: str = ""  # ISO 8601 UTC; filled on first save
    modified: str = ""
    app_version: str = __version__  # the version that last saved it

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.edited_labels.shape[1], self.edited_labels.shape[0]


# ---- saving ----------------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _png(array: np.ndarray) -> bytes:
    if array.ndim == 2:
        # 8-bit when it fits: smaller and readable by every viewer; 16-bit ids otherwise
        image = Image.fromarray(array.astype(np.uint8)) if array.max(initial=0) < 256 else Image.fromarray(
            array.astype(np.uint16)
        )
    else:
        image = Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # level 1: label maps still shrink ~50x, saving stays fast
    return buffer.getvalue()


def _photo_member(name: str) -> str:
    cleaned = re.sub(r"[\x00-\x1f/\\:]", "_", name).strip(". ") or "photo"
    return f"photo/{cleaned}"


def _check_project(project: Project) -> None:
    if project.mode not in MODES:
        raise InputError(f"unknown project mode {project.mode!r}; expected one of {', '.join(MODES)}")
    if project.original_labels.shape != project.edited_labels.shape:
        raise InputError(
            f"original and edited label maps differ in size: {project.original_labels.shape[::-1]} vs "
            f"{project.edited_labels.shape[::-1]}"
        )
    if project.photo is not None and project.photo.size != project.size:
        raise InputError(f"label maps are {project.size[0]}x{project.size[1]} but the photo is "
                         f"{project.photo.size[0]}x{project.photo.size[1]}")
    if project.result is not None and project.result.shape[:2] != project.edited_labels.shape:
        raise InputError("the result image does not have the label maps' size")
    seen = set()
    for candidate in project.candidates:
        if not _SAFE_ID.match(candidate.id) or candidate.id in seen:
            raise InputError(f"candidate id {candidate.id!r} is empty, repeated or not a plain name")
        seen.add(candidate.id)


def _json_value(value):
    """Metadata often carries numpy scalars and arrays (seeds, boxes); anything else is a caller's bug."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise InputError(f"project metadata holds a {type(value).__name__}, which cannot be saved: {value!r:.80}")


def _manifest(project: Project, photo_member: str | None, extra: dict | None) -> dict:
    manifest = {
        "format": FORMAT,
        "format_version": list(FORMAT_VERSION),
        "app_version": __version__,
        "created": project.created or _now(),
        "modified": _now(),
        "mode": project.mode,
        "label_set": project.label_set,
        "size": list(project.size),
        "photo": None if project.photo is None else {
            "member": photo_member,
            "name": project.photo.name,
            "format": project.photo.format,
            "bytes": len(project.photo.data),
        },
        "labels": {"original": "labels/original.png", "edited": "labels/edited.png"},
        "result": None if project.result is None else "result.png",
        "candidates": [
            {"id": c.id, "request_id": c.request_id, "pinned": c.pinned, "member": f"candidates/{c.id}.png",
             "size": [int(c.image.shape[1]), int(c.image.shape[0])], "meta": c.meta}
            for c in project.candidates
        ],
        "history": project.history,
        "hints": project.hints,
    }
    if extra:
        manifest.update(extra)
    return manifest


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


@contextlib.contextmanager
def atomic_write(path: str | Path):
    """Yield a binary file that replaces `path` only once fully written and synced. On any error the old file
    is untouched, the temporary file removed, and OSErrors become messages (disk full, no permission)."""
    path = Path(path)
    try:
        descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except FileNotFoundError:
        raise InputError(f"cannot save {path}: the folder {path.parent} does not exist") from None
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise _disk_full(path) from None
        raise InputError(f"cannot save {path}: {error.strerror or error}") from None
    temp = Path(temp_name)
    try:
        # mkstemp makes the file private (0600); a saved file gets the mode an ordinary open() would give it
        os.chmod(temp, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~_UMASK)
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as error:
        temp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            if error.errno == errno.ENOSPC:
                raise _disk_full(path) from None
            raise InputError(f"cannot save {path}: {error.strerror or error}") from None
        raise
    _fsync_folder(path.parent)


def save_project(path: str | Path, project: Project, *, extra: dict | None = None) -> dict:
    """Write `project` to `path` atomically; returns the manifest written. `extra` adds top-level manifest keys."""
    path = Path(path)
    _check_project(project)
    photo_member = None if project.photo is None else _photo_member(project.photo.name)
    manifest = _manifest(project, photo_member, extra)
    manifest_json = json.dumps(manifest, indent=1, default=_json_value)  # fails before the old file is touched
    with atomic_write(path) as handle:
        # Photos and PNGs are compressed already: store them, deflate only the JSON
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            archive.writestr("manifest.json", manifest_json, compress_type=zipfile.ZIP_DEFLATED)
            if project.photo is not None:
                archive.writestr(photo_member, project.photo.data)
            archive.writestr("labels/original.png", _png(project.original_labels))
            archive.writestr("labels/edited.png", _png(project.edited_labels))
            if project.result is not None:
                archive.writestr("result.png", _png(project.result))
            for candidate in project.candidates:
                archive.writestr(f"candidates/{candidate.id}.png", _png(candidate.image))
    project.created, project.modified, project.app_version = manifest["created"], manifest["modified"], __version__
    return manifest


def _fsync_folder(folder: Path) -> None:
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


# ---- loading ---------------------------------------------------------------------------------------------------


def _human(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def _check_members(archive: zipfile.ZipFile, name: str) -> dict[str, zipfile.ZipInfo]:
    members, total = {}, 0
    for info in archive.infolist():
        member = info.filename
        parts = PurePosixPath(member.replace("\\", "/")).parts
        if member.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", member) or ".." in parts:
            raise InputError(f"{name} is unsafe: member {member!r} points outside the archive")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InputError(f"{name} is unsafe: member {member!r} is a symbolic link")
        if info.file_size > MAX_MEMBER_BYTES:
            raise InputError(f"{name}: member {member!r} claims {_human(info.file_size)}, more than the "
                             f"{_human(MAX_MEMBER_BYTES)} limit")
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise InputError(f"{name} unpacks to more than {_human(MAX_TOTAL_BYTES)}; refusing to open it")
        if member in members:
            raise InputError(f"{name} is damaged: member {member!r} appears twice")
        members[member] = info
    return members


def _read_member(archive: zipfile.ZipFile, members: dict, member: str, name: str, limit: int | None = None) -> bytes:
    limit = MAX_MEMBER_BYTES if limit is None else limit
    if member not in members:
        raise InputError(f"{name} is incomplete: {member} is missing")
    try:
        with archive.open(members[member]) as stream:
            data = stream.read(limit + 1)  # the directory's size can lie; never read past the limit
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as error:
        raise InputError(f"{name} is damaged: {member} cannot be read ({error})") from None
    if len(data) > limit:
        raise InputError(f"{name}: {member} is larger than the {_human(limit)} limit")
    return data


def _read_png(data: bytes, label: str, max_pixels: int) -> np.ndarray:
    image = open_image(data, label, max_pixels)
    return np.asarray(image)


def _manifest_list(manifest: dict, key: str, name: str) -> list:
    value = manifest.get(key, [])
    if not isinstance(value, list):
        raise InputError(f"{name}: manifest entry {key!r} is not a list")
    return value


def load_project(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Project:
    """Open a project; every problem is an InputError naming the file and what is wrong."""
    path = Path(path)
    name = path.name
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except zipfile.BadZipFile:
        raise InputError(f"{name} is not a Sgraffito project or is damaged (not a readable zip archive)") from None
    except OSError as error:
        raise InputError(f"{path} cannot be read: {error.strerror or error}") from None
    with archive:
        members = _check_members(archive, name)
        try:
            manifest = json.loads(_read_member(archive, members, "manifest.json", name, MAX_MANIFEST_BYTES))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise InputError(f"{name} is damaged: manifest.json is not valid JSON ({error})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise InputError(f"{name} is not a Sgraffito project (manifest.json has no {FORMAT!r} format tag)")
        version = manifest.get("format_version")
        if not (isinstance(version, list) and len(version) == 2 and all(isinstance(v, int) for v in version)):
            raise InputError(f"{name} is damaged: its format version {version!r} is not [major, minor]")
        if version[0] > FORMAT_VERSION[0]:
            raise InputError(
                f"{name} was saved by a newer Sgraffito ({manifest.get('app_version', '?')}, project format "
                f"{version[0]}.{version[1]}); this version {__version__} reads format {FORMAT_VERSION[0]}.x: "
                "please update Sgraffito"
            )
        try:
            label_set = load_label_set(str(manifest["label_set"]))
            mode = manifest["mode"]
            width, height = (int(v) for v in manifest["size"])
            labels_info = manifest["labels"]
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"{name} is damaged: manifest.json lacks or mangles {error}") from None
        if mode not in MODES:
            raise InputError(f"{name}: unknown mode {mode!r}")

        photo = None
        if manifest.get("photo"):
            photo_info = manifest["photo"]
            data = _read_member(archive, members, str(photo_info.get("member")), name)
            photo = load_photo_bytes(data, f"{name}: {photo_info.get('name')}", max_pixels=max_pixels)
            photo.name = str(photo_info.get("name") or photo.name)
            if photo.size != (width, height):
                raise InputError(f"{name} is damaged: the photo is {photo.size[0]}x{photo.size[1]} but the "
                                 f"project says {width}x{height}")

        def label_map(key: str) -> np.ndarray:
            member = str(labels_info.get(key))
            ids = _read_png(_read_member(archive, members, member, name), f"{name}: {member}", max_pixels)
            if ids.ndim != 2:
                raise InputError(f"{name}: {member} is not a single-channel label map")
            if ids.shape != (height, width):
                raise InputError(f"{name}: {member} is {ids.shape[1]}x{ids.shape[0]} but the photo is "
                                 f"{width}x{height}")
            ids = ids.astype(np.uint16)
            check_label_ids(ids, label_set, f"{name}: {member}")
            return ids

        original, edited = label_map("original"), label_map("edited")

        def rgb_member(member: str, expected: tuple[int, int] | None) -> np.ndarray:
            rgb = _read_png(_read_member(archive, members, member, name), f"{name}: {member}", max_pixels)
            if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                raise InputError(f"{name}: {member} is not an 8-bit RGB image")
            if expected is not None and rgb.shape[:2] != (expected[1], expected[0]):
                raise InputError(f"{name}: {member} is {rgb.shape[1]}x{rgb.shape[0]}, expected "
                                 f"{expected[0]}x{expected[1]}")
            return rgb

        result = rgb_member(str(manifest["result"]), (width, height)) if manifest.get("result") else None
        candidates = []
        for entry in _manifest_list(manifest, "candidates", name):
            try:
                candidate_id, member = str(entry["id"]), str(entry["member"])
                size = tuple(int(v) for v in entry["size"])
            except (KeyError, TypeError, ValueError):
                raise InputError(f"{name} is damaged: a candidate entry lacks id, member or size") from None
            if not _SAFE_ID.match(candidate_id):
                raise InputError(f"{name}: candidate id {candidate_id!r} is not a plain name")
            candidates.append(StoredCandidate(candidate_id, str(entry.get("request_id", "")),
                                              rgb_member(member, size), dict(entry.get("meta") or {}),
                                              bool(entry.get("pinned", False))))
        return Project(
            photo=photo, label_set=label_set.name, original_labels=original, edited_labels=edited, result=result,
            candidates=candidates, history=_manifest_list(manifest, "history", name),
            hints=_manifest_list(manifest, "hints", name), mode=mode, created=str(manifest.get("created", "")),
            modified=str(manifest.get("modified", "")), app_version=str(manifest.get("app_version", "")),
        )


def read_manifest(path: str | Path) -> dict:
    """Only the manifest (cheap: no image is decoded), e.g. to list autosaves."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = _check_members(archive, path.name)
            return json.loads(_read_member(archive, members, "manifest.json", path.name, MAX_MANIFEST_BYTES))
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
        raise InputError(f"{path.name} is not a readable Sgraffito project ({error})") from None


# ---- autosave --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recoverable:
    doc_id: str
    path: Path  # the autosave file
    modified: str  # ISO time of the autosave
    title: str  # the photo's name, or "untitled"
    source: str | None  # the project or photo the document was opened from, if any


def new_doc_id() -> str:
    return uuid.uuid4().hex


def autosave_dir() -> Path:
    folder = user_data_dir() / "autosave"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def autosave_path(doc_id: str) -> Path:
    if not _SAFE_ID.match(doc_id):
        raise InputError(f"document id {doc_id!r} is not a plain name")
    return autosave_dir() / f"{doc_id}{SUFFIX}"


def write_autosave(doc_id: str, project: Project, source: str | Path | None = None) -> Path:
    """Save a copy of unsaved work; `source` (the file the user opened or saved last) is offered on recovery."""
    path = autosave_path(doc_id)
    save_project(path, project, extra={"autosave": {"doc_id": doc_id, "source": str(source) if source else None,
                                                     "pid": os.getpid()}})
    return path


def list_recoverable(exclude: set[str] | frozenset[str] = frozenset()) -> list[Recoverable]:
    """Autosaves left behind (by a crash), newest first; `exclude` holds the doc ids this session still has open.
    Unreadable autosaves are skipped, not fatal: recovery must never block start-up."""
    found = []
    for path in autosave_dir().glob(f"*{SUFFIX}"):
        doc_id = path.name[: -len(SUFFIX)]
        if doc_id in exclude:
            continue
        try:
            manifest = read_manifest(path)
        except InputError:
            continue
        info = manifest.get("autosave") or {}
        photo = manifest.get("photo") or {}
        found.append(Recoverable(doc_id, path, str(manifest.get("modified", "")), str(photo.get("name") or "untitled"),
                                 info.get("source")))
    return sorted(found, key=lambda item: item.modified, reverse=True)


def discard_autosave(doc_id: str) -> None:
    autosave_path(doc_id).unlink(missing_ok=True)
