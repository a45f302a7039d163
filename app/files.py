"""Between the window and the engine's file formats: each reader validates completely and returns the keyword
arguments of Document.load, so a bad file raises before the open document is touched."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import functools

from engine import export as engine_export
from engine import project as engine_project
from engine.errors import InputError, SgraffitoError
from engine.hints import parse_hints
from engine.imageio import load_label_map, load_photo, new_label_map
from engine.labels import LabelSet, load_label_set
from engine.project import Project, Recoverable, load_project, save_project, scan_autosaves, write_autosave
from engine.safe_io import remove_stale_temps

PROJECT_SUFFIX = engine_project.SUFFIX
DEFAULT_QUALITY = 95
SAMPLE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp"}


def _reader(function):
    """A reader's unexpected failure is a message naming the file too (never a traceback in the window): the
    engine's loaders raise SgraffitoError for what they know; this is the net for what they do not."""
    @functools.wraps(function)
    def read(path, *args, **kwargs):
        try:
            return function(path, *args, **kwargs)
        except (SgraffitoError, OSError):
            raise
        except MemoryError:
            raise InputError(f"{getattr(path, 'name', path)}: not enough memory to open it") from None
        except Exception as error:  # noqa: BLE001 - see above
            name = getattr(path, "path", path)
            raise InputError(f"{name} cannot be opened ({type(error).__name__}: {error})") from None
    return read


@_reader
def read_photo(path: Path, labels_path: Path | None, label_set: LabelSet) -> dict:
    photo = load_photo(path)
    if labels_path is not None:
        labels = load_label_map(labels_path, label_set, size=photo.size)
    else:
        labels = new_label_map(photo.size, label_set)
    return {"label_set": label_set, "labels": labels, "photo": photo, "title": photo.name, "source": Path(path)}


@_reader
def read_label_map_document(path: Path, label_set: LabelSet) -> dict:
    """Translation mode: the label map is the whole document, there is no photo."""
    labels = load_label_map(path, label_set)
    return {"label_set": label_set, "labels": labels, "title": Path(path).name, "source": Path(path)}


@_reader
def read_labels_for(path: Path, label_set: LabelSet, size: tuple[int, int]):
    return load_label_map(path, label_set, size=size)


def demo_sample(samples_dir: Path) -> tuple[Path, Path | None] | None:
    """A bundled colour photo and its label map (`<stem>.labels.png`): one that has a map shows the editor
    best, else the first colour photo; grayscale ones would open in colorize mode."""
    photos = sorted(p for p in samples_dir.glob("*")
                    if p.suffix.lower() in SAMPLE_SUFFIXES and not p.name.endswith(".labels.png"))
    colour = []
    for path in photos:
        try:
            if not load_photo(path).is_grayscale:
                colour.append(path)
        except SgraffitoError:  # a broken sample must not stop the demo from opening another one
            continue
    for path in colour:
        labels = path.with_name(path.stem + ".labels.png")
        if labels.is_file():
            return path, labels
    return (colour[0], None) if colour else None


@_reader
def read_project(path: Path) -> dict:
    project = load_project(path)
    return _project_content(project, path=Path(path), source=Path(path))


def _project_content(project: Project, **extra) -> dict:
    photo = project.photo
    source = extra.get("path") or extra.get("source")
    where = Path(source).name if source else "the project"
    parse_hints(project.hints, f"{where}: colour hints")  # the hint tool needs {x, y, radius, rgb} each
    return {"label_set": load_label_set(project.label_set), "labels": project.edited_labels,
            "original_labels": project.original_labels, "photo": photo, "image": project.result,
            "project": project, "mode": project.mode,
            "title": photo.name if photo is not None else (extra.get("path") or Path("untitled")).name, **extra}


def to_project(document, copy: bool = False) -> Project:
    """The document as an engine Project. The arrays are shared unless `copy` (for a save in another thread
    while the user keeps painting)."""
    photo, image = document.photo, document.image
    unchanged = image is None or (photo is not None and (image is photo.rgb or np.array_equal(image, photo.rgb)))
    take = np.copy if copy else (lambda array: array)
    project = Project(photo=photo, label_set=document.label_set.name,
                      original_labels=take(document.original_labels), edited_labels=take(document.labels),
                      result=None if unchanged else take(image), candidates=list(document.candidates),
                      history=list(document.history), hints=list(document.hints), mode=document.mode)
    if document.project is not None:
        project.created = document.project.created
    return project


def write_project(document, path: Path) -> Project:
    project = to_project(document)
    save_project(path, project)
    return project


def write_autosave_project(doc_id: str, project: Project, source: Path | None) -> Path:
    return write_autosave(doc_id, project, source=source)


def discard_autosave(document) -> None:
    if document.doc_id:
        engine_project.discard_autosave(document.doc_id)


def recoverable() -> list[Recoverable]:
    return scan_autosaves()[0]


def scan_recovery() -> tuple[list[Recoverable], list[tuple[Path, str]]]:
    """(autosaves to offer, damaged autosaves with the problem); never raises (start-up must go on)."""
    try:
        return scan_autosaves()
    except Exception as error:  # noqa: BLE001 - e.g. an unreadable autosave folder
        return [], [(Path("autosave"), f"the autosave folder cannot be read ({error})")]


def set_aside_autosave(path: Path) -> Path | None:
    """Move a damaged autosave to autosave/damaged/ so that it is never offered again (kept for the user)."""
    return engine_project.set_aside_autosave(path)


def remove_stale_temp_files(folders) -> None:
    """Temporary files of ours left by a save that was killed half-way (autosaves, recent projects' folders)."""
    for folder in folders:
        try:
            remove_stale_temps(folder)
        except OSError:
            continue


def describe_recoverable(entry: Recoverable) -> str:
    when = entry.modified.replace("T", " ").split("+")[0]
    origin = f" (from {entry.source})" if entry.source else ""
    return f"{entry.title}{origin}, autosaved {when} UTC"


@_reader
def read_autosave(entry: Recoverable) -> dict:
    """Recovered work is unsaved work: the document opens dirty, tied to its project file if it had one."""
    project = load_project(entry.path)
    source = Path(entry.source) if entry.source else None
    path = source if source is not None and source.suffix.lower() == PROJECT_SUFFIX else None
    return _project_content(project, path=path, source=source, unsaved=True)


def forget_autosave(entry: Recoverable) -> None:
    engine_project.discard_autosave(entry.doc_id)


def export_metadata(document) -> dict:
    """What went into the exported image: the source photo, the label set and every applied candidate's
    parameters (model, seed, ...), in the order they were applied."""
    metadata = {"Source": document.photo.name if document.photo is not None else document.title,
                "LabelSet": document.label_set.name}
    if document.history:
        metadata["Models"] = engine_export.history_models(document.history)
        metadata["History"] = document.history
    return metadata


def export_image(document, path: Path, quality: int = DEFAULT_QUALITY) -> Path:
    return engine_export.export_image(path, document.image, quality=quality, metadata=export_metadata(document),
                                      generated=bool(document.history), source=document.photo)


def export_label_map(document, path: Path) -> Path:
    return engine_export.export_label_map(path, document.labels, document.label_set)
