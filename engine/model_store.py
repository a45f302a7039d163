"""Model folders on disk: list, find, save and load them.

A model folder (`assets/models/<name>/` for demo models, `<user data>/models/<name>/` for imported ones) holds
`<stem>.safetensors` files, `config.json` ("kind", "title", architecture) and, for trained demo weights,
`MODEL_CARD.md`. Every file is written atomically (a temp file, then a rename), so a full disk never leaves a
half-written model.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from engine.errors import CheckpointError, InputError
from engine.paths import models_dirs, user_data_dir
from engine.safe_io import atomic_path

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str
    title: str
    path: Path
    source: str  # "imported" (user data folder) or "demo" (shipped in assets/)


def user_models_dir() -> Path:
    return user_data_dir() / "models"


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    with atomic_path(path) as temp:
        write(str(temp))


def _own_storage(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (aliases, views): give each its own contiguous copy."""
    seen: dict[int, int] = {}
    for t in tensors.values():
        ptr = t.untyped_storage().data_ptr()
        seen[ptr] = seen.get(ptr, 0) + 1
    out = {}
    for key, t in tensors.items():
        t = t.detach()
        whole = t.is_contiguous() and t.storage_offset() == 0 and t.nbytes == t.untyped_storage().nbytes()
        out[key] = t.contiguous() if seen[t.untyped_storage().data_ptr()] == 1 and whole else t.clone().contiguous()
    return out


def _check_config(config: Mapping, where: str) -> None:
    from engine.registry import KINDS  # the engines the registry lists

    if config.get("kind") not in KINDS:
        raise CheckpointError(f"{where}: config kind {config.get('kind')!r} is not one of {', '.join(KINDS)}")
    if not isinstance(config.get("title"), str):
        raise CheckpointError(f"{where}: config has no title")


def save_model_dir(directory: str | os.PathLike, state_dicts: Mapping[str, Mapping[str, torch.Tensor]],
                   config: Mapping, *, merge_config: bool = False, card: str | None = None) -> Path:
    """Write `<stem>.safetensors` for each entry and `config.json` (and `MODEL_CARD.md` if `card` is given),
    each file atomically. Other files in the folder are kept; with `merge_config` the existing config.json is
    updated (top-level keys) instead of replaced, so two exporters can fill one model folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(config)
    if merge_config and (directory / "config.json").is_file():
        config = {**json.loads((directory / "config.json").read_text()), **config}
    _check_config(config, str(directory))
    for stem, tensors in state_dicts.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", stem):
            raise ValueError(f"bad file stem {stem!r}")
        owned = _own_storage(tensors)
        _atomic_write(directory / f"{stem}.safetensors",
                      lambda tmp, owned=owned: safetensors.torch.save_file(owned, tmp, metadata={"format": "pt"}))
    text = json.dumps(config, indent=2) + "\n"
    _atomic_write(directory / "config.json", lambda tmp: Path(tmp).write_text(text))
    if card is not None:
        _atomic_write(directory / "MODEL_CARD.md", lambda tmp: Path(tmp).write_text(card))
    return directory


def read_model_config(directory: str | os.PathLike) -> dict:
    directory = Path(directory)
    from engine.safe_io import parse_json, read_bytes

    if not (directory / "config.json").exists():
        raise CheckpointError(f"{directory}: not a model folder (no config.json)")
    config = parse_json(read_bytes(directory / "config.json", "JSON", CheckpointError),
                        str(directory / "config.json"), CheckpointError)
    if not isinstance(config, dict):
        raise CheckpointError(f"{directory / 'config.json'}: not a JSON object")
    _check_config(config, str(directory / "config.json"))
    return config


def load_model_dir(directory: str | os.PathLike, stems: Iterable[str] | None = None) -> tuple[dict, dict]:
    """(config, {stem: state dict}) of a model folder; `stems` limits which safetensors files are read."""
    directory = Path(directory)
    config = read_model_config(directory)
    files = sorted(directory.glob("*.safetensors"))
    if stems is not None:
        wanted = list(stems)
        files = [directory / f"{s}.safetensors" for s in wanted]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{directory}: weights file {f.name} is missing")
    return config, {f.stem: read_safetensors(f) for f in files}


def list_models(kind: str | None = None) -> list[ModelInfo]:
    """Every model folder in engine.paths.models_dirs(): imported ones first, then the shipped demo models.
    Folders with a broken config.json are skipped with a logged warning."""
    found = []
    for root, source in zip(models_dirs(), ("imported", "demo")):
        if not root.is_dir():
            continue
        for directory in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not (directory / "config.json").is_file():
                continue
            try:
                config = read_model_config(directory)
            except CheckpointError as error:
                log.warning("skipping model: %s", error)
                continue
            if kind is None or config["kind"] == kind:
                found.append(ModelInfo(directory.name, config["kind"], config["title"], directory, source))
    return found


def find_model(name: str, kind: str | None = None) -> ModelInfo:
    """The model folder called `name` (an imported model shadows a demo model of the same name)."""
    models = list_models(kind)
    for info in models:
        if info.name == name:
            return info
    known = ", ".join(m.name for m in models) or "none"
    raise InputError(f"no {kind + ' ' if kind else ''}model named {name!r} (available: {known})")


def new_model_dir(name: str, *, overwrite: bool = False) -> Path:
    """The folder for an imported model `name` in the user's data folder (not created yet)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise InputError(f"model name {name!r}: use letters, digits, '-', '_' and '.'")
    directory = user_models_dir() / name
    if directory.exists() and not overwrite:
        raise InputError(f"a model named {name!r} already exists in {directory.parent} (use --force to replace it)")
    return directory


# ----------------------------------------------------------------------------------------------------------
# Importers for `sgraffito import KIND FILE`


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file; a damaged file is a CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return safetensors.torch.load_file(str(path))
    except (safetensors.SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None
