"""The catalogue of official models (engine/catalogue.json): what exists, where it comes from, what it is for.

The data lives in `catalogue.json` beside this file (one entry per model: engine, purpose, official source
URL(s), archive layout, the files that are imported, size where known, licence, paper); this module only reads
and checks it. `$SGRAFFITO_CATALOGUE=FILE` adds the entries of another file of the same format (a lab's own
models; the tests' tiny ones), replacing entries of the same name.

`sgraffito models --available` lists it; engine.downloads fetches and imports an entry.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import InputError

CATALOGUE_FILE = Path(__file__).with_name("catalogue.json")


@dataclass(frozen=True)
class SourceFile:
    name: str  # the file name on disk (also the name under a mirror: MIRROR/<model>/<name>)
    url: str | None  # direct download address; None when only `page` exists (download by hand)
    page: str | None = None  # the link in the official README
    size: int | None = None
    sha256: str | None = None
    archive: str | None = None  # "zip", "tar" or None (a single file)
    manual: str | None = None  # what to download by hand from `page` when there is no direct URL


@dataclass(frozen=True)
class Entry:
    name: str
    engine: str
    title: str
    purpose: str
    paper: str
    licence: str
    files: tuple[SourceFile, ...]
    import_file: str  # a file name inside the download ('.' = the unpacked folder)
    import_options: dict[str, Any] = field(default_factory=dict)  # option -> value or {"file": name}
    paper_url: str | None = None
    homepage: str | None = None
    size_note: str | None = None
    layout: str | None = None

    @property
    def size(self) -> int | None:
        """Bytes to download, when every file's size is known."""
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(sizes)

    def size_text(self) -> str:
        if self.size is not None:
            return human_size(self.size)
        return self.size_note or "size unknown"

    def import_command(self, folder: str = "DOWNLOAD_FOLDER") -> str:
        """The `sgraffito import ...` command for files downloaded by hand into `folder`."""
        def where(name):
            return folder if name == "." else f"{folder.rstrip('/')}/{name}"

        words = ["sgraffito", "import", self.engine, where(self.import_file)]
        for option, value in self.import_options.items():
            flag = "--" + option.replace("_", "-")
            if isinstance(value, dict):
                words += [flag, where(value["file"])]
            elif value is True:
                words.append(flag)
            else:
                words += [flag, str(value)]
        words += ["--name", self.name]
        return " ".join(shlex.quote(w) if w != folder else w for w in words)


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _text(raw: dict, key: str, where: str, required: bool = True) -> str | None:
    value = raw.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}: {key!r} must be a non-empty string")
    return value


def _source(raw: dict, where: str) -> SourceFile:
    if not isinstance(raw, dict):
        raise InputError(f"{where}: a file entry must be an object")
    name = _text(raw, "name", where)
    if "/" in name or "\\" in name or name in (".", ".."):
        raise InputError(f"{where}: file name {name!r} must be a plain name")
    size, sha = raw.get("size"), raw.get("sha256")
    if size is not None and (not isinstance(size, int) or size < 0):
        raise InputError(f"{where}: size must be a byte count or null")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
        raise InputError(f"{where}: sha256 must be 64 hex digits or null")
    archive = raw.get("archive")
    if archive not in (None, "zip", "tar"):
        raise InputError(f"{where}: archive must be 'zip', 'tar' or null")
    url = _text(raw, "url", where, required=False)
    page = _text(raw, "page", where, required=False)
    if url is None and page is None:
        raise InputError(f"{where}: a file needs a url or a page")
    return SourceFile(name, url, page, size, sha.lower() if sha else None, archive,
                      _text(raw, "manual", where, required=False))


def _entry(raw: dict, where: str) -> Entry:
    if not isinstance(raw, dict):
        raise InputError(f"{where}: an entry must be an object")
    name = _text(raw, "name", where)
    where = f"{where} ({name})"
    files = raw.get("files")
    if not isinstance(files, list) or not files:
        raise InputError(f"{where}: 'files' must be a non-empty list")
    imports = raw.get("import")
    if not isinstance(imports, dict) or not isinstance(imports.get("file"), str):
        raise InputError(f"{where}: 'import' must name the imported 'file'")
    options = imports.get("options") or {}
    if not isinstance(options, dict):
        raise InputError(f"{where}: import options must be an object")
    return Entry(
        name=name, engine=_text(raw, "engine", where), title=_text(raw, "title", where),
        purpose=_text(raw, "purpose", where), paper=_text(raw, "paper", where), licence=_text(raw, "licence", where),
        files=tuple(_source(f, f"{where} files[{i}]") for i, f in enumerate(files)),
        import_file=imports["file"], import_options=dict(options),
        paper_url=raw.get("paper_url"), homepage=raw.get("homepage"), size_note=raw.get("size_note"),
        layout=raw.get("layout"))


def read_catalogue(path: str | os.PathLike) -> list[Entry]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such catalogue") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a valid catalogue ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise InputError(f"{path}: a catalogue is an object with a 'models' list")
    entries = [_entry(raw, f"{path} models[{i}]") for i, raw in enumerate(data["models"])]
    names = [e.name for e in entries]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise InputError(f"{path}: more than one entry named {', '.join(doubled)}")
    return entries


def entries() -> list[Entry]:
    """The built-in catalogue plus $SGRAFFITO_CATALOGUE's entries (which replace built-in ones of that name)."""
    found = {e.name: e for e in read_catalogue(CATALOGUE_FILE)}
    if extra := os.environ.get("SGRAFFITO_CATALOGUE"):
        found.update({e.name: e for e in read_catalogue(extra)})
    return list(found.values())


def entry(name: str) -> Entry:
    every = entries()
    for candidate in every:
        if candidate.name == name:
            return candidate
    raise InputError(f"no model named {name!r} in the catalogue (available: {', '.join(e.name for e in every)})")
