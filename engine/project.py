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

import io
import json
import os
import re
import stat
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from engine import __version__
from engine.errors import InputError, SgraffitoError
from engine.imageio import DEFAULT_MAX_PIXELS, Photo, check_label_ids, load_photo_bytes, open_image
from engine.labels import check_set_name, load_label_set
from engine.paths import user_data_dir
from engine.safe_io import (Budget, atomic_write, close_zip, human, open_zip, parse_json,
                            read_member, remove_stale_temps, safe_member_name)

__all__ = ["atomic_write", "load_project", "save_project", "read_manifest", "list_recoverable"]

SUFFIX = ".sgraffito"
FORMAT = "sgraffito-project"
FORMAT_VERSION = (1, 0)  # a reader accepts every minor version of its major: minors only add optional keys
MODES = ("edit", "colorize", "translate")
# Bounds on what an archive may claim, checked from the zip directory before reading: a photo of the 200 MP limit
# is at most ~1.2 GB as a 16-bit TIFF, and a project with dozens of full-size candidates stays below the total.
MAX_MEMBER_BYTES = 2 << 30
MAX_TOTAL_BYTES = 8 << 30
MAX_MANIFEST_BYTES = 16 << 20
MAX_MEMBERS = 10_000
MAX_CANDIDATES = 1_000
# Decoded pixels of one project, all images together (photo, two label maps, result, candidates): a 24-MP photo
# with 20 full-size candidates is ~550 MP; a candidate never exceeds the photo's own size.
MAX_PROJECT_PIXELS = 1_000_000_000
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


def save_project(path: str | Path, project: Project, *, extra: dict | None = None) -> dict:
    """Write `project` to `path` atomically; returns the manifest written. `extra` adds top-level manifest keys."""
    path = Path(path)
    _check_project(project)
    photo_member = None if project.photo is None else _photo_member(project.photo.name)
    manifest = _manifest(project, photo_member, extra)
    manifest_json = json.dumps(manifest, indent=1, default=_json_value)  # fails before the old file is touched
    with atomic_write(path) as handle:  # through a symlink: its target is replaced, the link kept
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


# ---- loading ---------------------------------------------------------------------------------------------------


def _check_members(archive: zipfile.ZipFile, name: str) -> dict[str, zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise InputError(f"{name} has {len(infos)} members, more than a project can hold ({MAX_MEMBERS})")
    members, total = {}, 0
    for info in infos:
        member = info.filename
        if not safe_member_name(member):
            raise InputError(f"{name} is unsafe: member {member!r} points outside the archive")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InputError(f"{name} is unsafe: member {member!r} is a symbolic link")
        if info.file_size > MAX_MEMBER_BYTES:
            raise InputError(f"{name}: member {member!r} claims {human(info.file_size)}, more than the "
                             f"{human(MAX_MEMBER_BYTES)} limit")
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise InputError(f"{name} unpacks to more than {human(MAX_TOTAL_BYTES)}; refusing to open it")
        if member in members:
            raise InputError(f"{name} is damaged: member {member!r} appears twice")
        members[member] = info
    return members


def _read_member(archive: zipfile.ZipFile, members: dict, member, name: str, limit: int | None = None,
                 budget: Budget | None = None) -> bytes:
    """A member, inflated in chunks within its limit, its compression-ratio limit and the archive's budget."""
    limit = MAX_MEMBER_BYTES if limit is None else limit
    if not isinstance(member, str) or member not in members:
        raise InputError(f"{name} is incomplete: {member if isinstance(member, str) else repr(member)} is missing")
    return read_member(archive, members[member], f"{name}: {member}", limit, budget,
                       damaged=f"{name} is damaged: {member}")


def _read_png(data: bytes, label: str, max_pixels: int, pixels: Budget | None = None) -> np.ndarray:
    image = open_image(data, label, max_pixels, pixels)
    return np.asarray(image)


def _manifest_list(manifest: dict, key: str, name: str) -> list:
    value = manifest.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list):
        raise InputError(f"{name} is damaged: manifest entry {key!r} is not a list")
    return value


def _dimension(value, what: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 20:
        raise InputError(f"{name} is damaged: {what} {value!r:.40} is not a size in pixels")
    return value


def _size_of(value, what: str, name: str) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise InputError(f"{name} is damaged: {what} {value!r:.60} is not [width, height]")
    return _dimension(value[0], what, name), _dimension(value[1], what, name)


def _entry(value, what: str, name: str, kind: type | tuple, optional: bool = False):
    if value is None and optional:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InputError(f"{name} is damaged: {what} is a {type(value).__name__}, not a {expected}")
    return value


def _read_manifest(archive: zipfile.ZipFile, members: dict, name: str, budget: Budget | None = None) -> dict:
    data = _read_member(archive, members, "manifest.json", name, MAX_MANIFEST_BYTES, budget)
    manifest = parse_json(data, f"{name}: manifest.json")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{name} is not a Sgraffito project (manifest.json has no {FORMAT!r} format tag)")
    version = manifest.get("format_version")
    if not (isinstance(version, list) and len(version) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in version)):
        raise InputError(f"{name} is damaged: its format version {version!r:.60} is not [major, minor]")
    if version[0] > FORMAT_VERSION[0]:
        raise InputError(
            f"{name} was saved by a newer Sgraffito ({str(manifest.get('app_version', '?')):.40}, project format "
            f"{version[0]}.{version[1]}); this version {__version__} reads format {FORMAT_VERSION[0]}.x: "
            "please update Sgraffito"
        )
    return manifest


def load_project(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_total_pixels: int = MAX_PROJECT_PIXELS) -> Project:
    """Open a project; every problem is an InputError naming the file and what is wrong."""
    path = Path(path)
    archive = open_zip(path, "project", bad_zip=f"{path.name} is not a Sgraffito project or is damaged (not a "
                                                 "readable zip archive)")
    try:
        return _load(archive, path.name, max_pixels, max_total_pixels)
    except SgraffitoError:
        raise
    except MemoryError:
        raise InputError(f"{path.name}: not enough memory to open this project") from None
    except RecursionError:
        raise InputError(f"{path.name} is damaged: its manifest is nested too deeply") from None
    except Exception as error:  # noqa: BLE001 - a malformed file must give a message, never a traceback
        raise InputError(f"{path.name} is damaged or not a Sgraffito project "
                         f"({type(error).__name__}: {error})") from None
    finally:
        close_zip(archive)


def _load(archive: zipfile.ZipFile, name: str, max_pixels: int, max_total_pixels: int) -> Project:
    members = _check_members(archive, name)
    inflated = Budget(MAX_TOTAL_BYTES, name)  # what the directory claims can lie: count what inflates
    pixels = Budget(max_total_pixels, name, unit="pixels")
    manifest = _read_manifest(archive, members, name, inflated)
    for key in ("label_set", "mode", "size", "labels"):
        if key not in manifest:
            raise InputError(f"{name} is damaged: manifest.json lacks {key!r}")
    label_set_name = manifest["label_set"]
    try:
        check_set_name(label_set_name)
    except InputError as error:
        raise InputError(f"{name}: {error}") from None
    label_set = load_label_set(label_set_name)
    mode = manifest["mode"]
    if not isinstance(mode, str) or mode not in MODES:
        raise InputError(f"{name}: unknown mode {mode!r:.40}")
    width, height = _size_of(manifest["size"], "the project size", name)
    if width * height > max_pixels:
        raise InputError(f"{name} claims {width}x{height} pixels, more than the {max_pixels / 1e6:.0f} MP limit")
    labels_info = _entry(manifest["labels"], "manifest entry 'labels'", name, dict)
    photo_info = _entry(manifest.get("photo"), "manifest entry 'photo'", name, dict, optional=True)
    result_member = _entry(manifest.get("result"), "manifest entry 'result'", name, str, optional=True)
    entries = _manifest_list(manifest, "candidates", name)
    if len(entries) > MAX_CANDIDATES:
        raise InputError(f"{name} lists {len(entries)} candidates, more than {MAX_CANDIDATES}")
    history = _manifest_list(manifest, "history", name)
    hints = _manifest_list(manifest, "hints", name)
    if not all(isinstance(item, dict) for item in history):
        raise InputError(f"{name} is damaged: an entry of its history is not an object")
    for n, hint in enumerate(hints):
        if not isinstance(hint, dict):
            raise InputError(f"{name} is damaged: colour hint {n} is not an object")
        if "radius" in hint and not (isinstance(hint["radius"], (int, float)) and hint["radius"] > 0):
            raise InputError(f"{name} is damaged: colour hint {n} has radius {hint['radius']!r:.30}, not a "
                             "positive number")
    checked = []
    for n, entry in enumerate(entries):
        entry = _entry(entry, f"candidate {n}", name, dict)
        candidate_id = _entry(entry.get("id"), f"candidate {n}'s id", name, str)
        member = _entry(entry.get("member"), f"candidate {n}'s member", name, str)
        if not _SAFE_ID.match(candidate_id):
            raise InputError(f"{name}: candidate id {candidate_id!r:.60} is not a plain name")
        size = _size_of(entry.get("size"), f"candidate {candidate_id}'s size", name)
        if size[0] > width or size[1] > height:
            raise InputError(f"{name}: candidate {candidate_id} is {size[0]}x{size[1]}, larger than the "
                             f"{width}x{height} photo")
        meta = _entry(entry.get("meta", {}), f"candidate {candidate_id}'s meta", name, dict, optional=True) or {}
        request_id = entry.get("request_id", "")
        pinned = entry.get("pinned", False)
        if not isinstance(request_id, (str, int)) or isinstance(pinned, (dict, list)):
            raise InputError(f"{name} is damaged: candidate {candidate_id}'s request_id or pinned is malformed")
        checked.append((candidate_id, member, size, meta, str(request_id), bool(pinned)))
    # every image's size is fixed by the manifest (and checked against each header): refuse before decoding
    claimed = width * height * (2 + bool(photo_info) + bool(result_member)) + sum(w * h for _, _, (w, h), *_ in checked)
    if claimed > max_total_pixels:
        raise InputError(f"{name} holds {claimed / 1e6:.0f} MP of images in all, more than the "
                         f"{max_total_pixels / 1e6:.0f} MP Sgraffito decodes from one project")

    photo = None
    if photo_info:
        member = _entry(photo_info.get("member"), "the photo's member", name, str)
        shown = photo_info.get("name")
        shown = shown if isinstance(shown, str) and shown else PurePosixPath(member).name
        data = _read_member(archive, members, member, name, budget=inflated)
        photo = load_photo_bytes(data, f"{name}: {shown}", max_pixels=max_pixels, budget=pixels)
        del data  # the Photo keeps the bytes it needs (for the next save); nothing else does
        photo.name = shown
        if photo.size != (width, height):
            raise InputError(f"{name} is damaged: the photo is {photo.size[0]}x{photo.size[1]} but the "
                             f"project says {width}x{height}")

    def label_map(key: str) -> np.ndarray:
        member = labels_info.get(key)
        if not isinstance(member, str):
            raise InputError(f"{name} is damaged: the {key} label map has no member name")
        ids = _read_png(_read_member(archive, members, member, name, budget=inflated), f"{name}: {member}",
                        max_pixels, pixels)
        if ids.ndim != 2:
            raise InputError(f"{name}: {member} is not a single-channel label map")
        if ids.shape != (height, width):
            raise InputError(f"{name}: {member} is {ids.shape[1]}x{ids.shape[0]} but the photo is "
                             f"{width}x{height}")
        if ids.dtype.kind not in "ui" or ids.min(initial=0) < 0 or ids.max(initial=0) > 65535:
            raise InputError(f"{name}: {member} does not hold label ids (0..65535)")
        ids = ids.astype(np.uint16)
        check_label_ids(ids, label_set, f"{name}: {member}")
        return ids

    original, edited = label_map("original"), label_map("edited")

    def rgb_member(member: str, expected: tuple[int, int]) -> np.ndarray:
        rgb = _read_png(_read_member(archive, members, member, name, budget=inflated), f"{name}: {member}",
                        max_pixels, pixels)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise InputError(f"{name}: {member} is not an 8-bit RGB image")
        if rgb.shape[:2] != (expected[1], expected[0]):
            raise InputError(f"{name}: {member} is {rgb.shape[1]}x{rgb.shape[0]}, expected "
                             f"{expected[0]}x{expected[1]}")
        return rgb

    result = rgb_member(result_member, (width, height)) if result_member else None
    candidates = [StoredCandidate(candidate_id, request_id, rgb_member(member, size), meta, pinned)
                  for candidate_id, member, size, meta, request_id, pinned in checked]
    return Project(
        photo=photo, label_set=label_set.name, original_labels=original, edited_labels=edited, result=result,
        candidates=candidates, history=history, hints=hints, mode=mode,
        created=str(manifest.get("created", ""))[:64], modified=str(manifest.get("modified", ""))[:64],
        app_version=str(manifest.get("app_version", ""))[:64],
    )


def read_manifest(path: str | Path) -> dict:
    """Only the manifest (cheap: no image is decoded), e.g. to list autosaves; InputError when unreadable."""
    path = Path(path)
    archive = open_zip(path, "project", bad_zip=f"{path.name} is not a readable Sgraffito project (not a zip "
                                                 "archive)")
    try:
        return _read_manifest(archive, _check_members(archive, path.name), path.name)
    except SgraffitoError:
        raise
    except Exception as error:  # noqa: BLE001 - see load_project
        raise InputError(f"{path.name} is not a readable Sgraffito project ({type(error).__name__}: {error})") \
            from None
    finally:
        close_zip(archive)


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


def scan_autosaves(exclude: set[str] | frozenset[str] = frozenset()) -> tuple[list[Recoverable], list[tuple[Path, str]]]:
    """(autosaves left behind by a crash, newest first; damaged autosaves as (path, the problem)). `exclude`
    holds the doc ids this session still has open. Nothing here raises: recovery must never block start-up.
    Also removes our stale temporary files (a save killed half-way) from the autosave folder."""
    folder = autosave_dir()
    remove_stale_temps(folder)
    found, damaged = [], []
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        doc_id = path.name[: -len(SUFFIX)]
        if doc_id in exclude:
            continue
        try:
            manifest = read_manifest(path)
            info = manifest.get("autosave") or {}
            photo = manifest.get("photo") or {}
            if not isinstance(info, dict) or not isinstance(photo, dict):
                raise InputError(f"{path.name} is damaged: its autosave or photo entry is not an object")
            source = info.get("source")
            found.append(Recoverable(doc_id, path, str(manifest.get("modified", ""))[:64],
                                     str(photo.get("name") or "untitled")[:200],
                                     source if isinstance(source, str) else None))
        except SgraffitoError as error:
            damaged.append((path, str(error)))
        except Exception as error:  # noqa: BLE001 - whatever is wrong with one file, start-up goes on
            damaged.append((path, f"{path.name} cannot be read ({type(error).__name__}: {error})"))
    return sorted(found, key=lambda item: item.modified, reverse=True), damaged


def list_recoverable(exclude: set[str] | frozenset[str] = frozenset()) -> list[Recoverable]:
    """Autosaves left behind (by a crash), newest first; unreadable ones are left out (see scan_autosaves)."""
    return scan_autosaves(exclude)[0]


def set_aside_autosave(path: str | Path) -> Path | None:
    """Move a damaged autosave into autosave/damaged/ (kept for the user, never offered again); returns where it
    went, or None when it could not be moved (then it is deleted so that it stops being offered)."""
    path = Path(path)
    target_dir = autosave_dir() / "damaged"
    try:
        target_dir.mkdir(exist_ok=True)
        target = target_dir / f"{path.stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}{path.suffix}"
        os.replace(path, target)
        return target
    except OSError:
        path.unlink(missing_ok=True)
        return None


def discard_autosave(doc_id: str) -> None:
    autosave_path(doc_id).unlink(missing_ok=True)
