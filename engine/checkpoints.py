"""Checkpoints: read official PyTorch / Lightning files safely, check them against our modules, and keep
models as folders of safetensors plus a JSON config.

Official `.ckpt` files are pickles. Unpickling can run arbitrary code, and Lightning checkpoints also pickle
Lightning/omegaconf objects we neither have nor want. `read_checkpoint` therefore runs its own unpickler:
tensors are rebuilt from their raw storages by our code, plain containers are allowed, any other class becomes an
inert placeholder that is never imported or called, and a call of anything that is neither allowed nor a known
metadata class (e.g. `os.system`) stops the load with a CheckpointError naming it.

A model folder (`assets/models/<name>/` for demo models, `<user data>/models/<name>/` for imported ones) holds
`<stem>.safetensors` files, `config.json` ("kind", "title", architecture) and, for trained demo weights,
`MODEL_CARD.md`.
"""

from __future__ import annotations

import _compat_pickle
import difflib
import importlib
import io
import json
import logging
import os
import pickle
import pkgutil
import re
import struct
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from engine.errors import CheckpointError, InputError
from engine.paths import models_dirs, user_data_dir

log = logging.getLogger(__name__)

KINDS = ("asset", "vqgan", "coltran", "asapnet", "pixelcnn")

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}

# Packages whose objects appear as metadata in Lightning checkpoints (hyper-parameters, callback and loop
# states, enums, paths). Calls to their classes build placeholders instead of being refused.
_METADATA_PACKAGES = {"pytorch_lightning", "lightning", "lightning_fabric", "omegaconf", "typing", "pathlib",
                      "argparse", "numpy", "enum", "datetime", "torchmetrics"}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# ----------------------------------------------------------------------------------------------------------
# Restricted unpickling


class Opaque:
    """An object of a class that was not loaded. Keeps what the pickle stored so it can be inspected."""

    _qualname = "?"

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs
        self.state = None
        self.items = {}
        self.list = []

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def __getitem__(self, key):
        return self.items[key]

    def __contains__(self, key):
        return key in self.items

    def append(self, value):
        self.list.append(value)

    def extend(self, values):
        self.list.extend(values)

    def __repr__(self):
        return f"<not loaded: {self._qualname}>"


_placeholders: dict[str, type] = {}


def _placeholder(module: str, name: str) -> type:
    qualname = f"{module}.{name}"
    if qualname not in _placeholders:
        _placeholders[qualname] = type(name, (Opaque,), {"_qualname": qualname, "__module__": "placeholder." + module})
    return _placeholders[qualname]


class _Storage:
    """The bytes of one saved storage, read only when a tensor of the state dict needs them."""

    def __init__(self, path: Path, key: str, dtype: torch.dtype, numel: int, read: Callable[[], bytes]):
        self.path, self.key, self.dtype, self.numel, self._read = path, key, dtype, numel, read
        self._buffer = None
        self._views: dict[torch.dtype, torch.Tensor] = {}

    def typed(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._views:
            if self._buffer is None:
                nbytes = self.numel * self.dtype.itemsize
                data = self._read()
                if len(data) < nbytes:
                    raise CheckpointError(f"{self.path}: storage {self.key} is truncated "
                                          f"({len(data)} of {nbytes} bytes)")
                self._buffer = bytearray(data[:nbytes])
            self._views[dtype] = (torch.frombuffer(self._buffer, dtype=dtype) if self._buffer
                                  else torch.empty(0, dtype=dtype))
        return self._views[dtype]


class _LazyTensor:
    def __init__(self, storage: _Storage, offset: int, size, stride, dtype: torch.dtype | None = None):
        if not isinstance(storage, _Storage):
            raise CheckpointError(f"tensor rebuilt from {type(storage).__name__}, not from a saved storage")
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)
        self.dtype = dtype or storage.dtype

    def materialize(self) -> torch.Tensor:
        flat = self.storage.typed(self.dtype)
        extent = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
        if any(n == 0 for n in self.size):
            return torch.empty(self.size, dtype=self.dtype)
        if self.offset < 0 or extent > flat.numel():
            raise CheckpointError(f"{self.storage.path}: a tensor of shape {list(self.size)} reaches past the end "
                                  f"of storage {self.storage.key}")
        return flat.as_strided(self.size, self.stride, self.offset)


class _StorageView:
    """Legacy (pre-zip) files can reference a slice of a storage."""

    def __init__(self, storage: _Storage, offset: int):
        self.storage, self.offset = storage, offset


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    if isinstance(storage, _StorageView):
        return _LazyTensor(storage.storage, storage.offset + storage_offset, size, stride)
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, *_ignored):
    if not isinstance(dtype, torch.dtype):
        raise CheckpointError(f"tensor with dtype {dtype!r}")
    offset = storage_offset
    if isinstance(storage, _StorageView):
        storage, offset = storage.storage, storage.offset + storage_offset
    return _LazyTensor(storage, offset, size, stride, dtype)


def _rebuild_parameter(data, *_ignored):
    return data


def _rebuild_from_type(func, new_type, args, state):
    if func not in (_rebuild_tensor, _rebuild_tensor_v3, _rebuild_parameter):
        raise CheckpointError(f"tensor rebuilt by {func!r}")
    return func(*args)


def _placeholder_attribute(obj, name):
    """getattr as Python >= 3.12 pickles enum members (`getattr(EnumClass, "NAME")`): allowed on placeholders only."""
    if isinstance(obj, type) and issubclass(obj, Opaque) and isinstance(name, str):
        module, _, owner = obj._qualname.rpartition(".")
        return _placeholder(module, f"{owner}.{name}")
    raise CheckpointError(f"refusing getattr({obj!r}, {name!r}) while unpickling")


def _latin1(text, encoding="latin1"):
    if encoding != "latin1":
        raise CheckpointError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# Globals the unpickler hands out as real objects: our own rebuild functions, dtypes and harmless containers.
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Size"): tuple,
    ("torch", "device"): torch.device,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("builtins", "tuple"): tuple,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "bytearray"): bytearray,
    ("_codecs", "encode"): _latin1,
    ("builtins", "getattr"): _placeholder_attribute,
}
_CALLABLE = set(map(id, _ALLOWED.values()))


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler with every opcode that calls something routed through `_call`."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path: Path, storages: Callable[[tuple], object] | None = None):
        super().__init__(file)
        self.path = path
        self.storages = storages

    def find_class(self, module, name):
        if self.proto < 3 and self.fix_imports:  # Python 2 names (`__builtin__`), as pickle itself maps them
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _placeholder(module, name)

    def persistent_load(self, pid):
        if self.storages is None:
            raise CheckpointError(f"{self.path}: unexpected persistent reference {pid!r}")
        return self.storages(pid)

    def _call(self, func, args, kwargs=None, *, construct=False):
        kwargs = kwargs or {}
        if id(func) in _CALLABLE:
            return func(*args, **kwargs)
        if isinstance(func, type) and issubclass(func, Opaque):
            package = func._qualname.split(".")[0]
            # NEWOBJ is what pickle emits for ordinary objects (cls.__new__ + BUILD): always inert.
            if construct or package in _METADATA_PACKAGES:
                return func(*args, **kwargs)
            raise CheckpointError(f"{self.path}: refusing to call {func._qualname} while unpickling (the file may "
                                  "be malicious; only tensors, plain containers and Lightning/omegaconf metadata "
                                  "are accepted)")
        raise CheckpointError(f"{self.path}: refusing to call {func!r} while unpickling")

    def load_reduce(self):
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args, construct=True))

    def load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args, kwargs, construct=True))

    def _instantiate(self, klass, args):
        self.append(self._call(klass, tuple(args), construct=True))

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Opaque):
            inst.__setstate__(state)
        elif isinstance(inst, OrderedDict) and isinstance(state, dict):
            inst.__dict__.update(state)  # a state dict's `_metadata`
        elif state is not None:
            raise CheckpointError(f"{self.path}: unexpected object state for {type(inst).__name__}")

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build


def _storage_pid(pid, path: Path) -> tuple[torch.dtype, str, int, object]:
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
        raise CheckpointError(f"{path}: unsupported persistent reference {pid!r:.80}")
    dtype, key, numel = pid[1], str(pid[2]), pid[4]
    if not isinstance(dtype, torch.dtype) or not isinstance(numel, int):
        raise CheckpointError(f"{path}: unsupported storage {pid!r:.80}")
    return dtype, key, numel, pid[5] if len(pid) > 5 else None


def _unpickle_zip(path: Path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pickles:
            kind = "a TorchScript archive" if any(n.endswith("constants.pkl") for n in names) else "not a torch file"
            raise CheckpointError(f"{path}: zip archive without data.pkl ({kind})")
        prefix = pickles[0][: -len("data.pkl")]
        if prefix + "byteorder" in names and archive.read(prefix + "byteorder").strip() != b"little":
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        storages: dict[str, _Storage] = {}

        def load_storage(pid):
            dtype, key, numel, _ = _storage_pid(pid, path)
            if key not in storages:
                member = f"{prefix}data/{key}"
                if member not in names:
                    raise CheckpointError(f"{path}: storage {key} is missing from the archive")

                def read(member=member):
                    with zipfile.ZipFile(path) as again:
                        return again.read(member)

                storages[key] = _Storage(path, key, dtype, numel, read)
            return storages[key]

        data = archive.read(pickles[0])
    return _RestrictedUnpickler(io.BytesIO(data), path, load_storage).load()


def _unpickle_legacy(path: Path):
    with open(path, "rb") as f:
        first = _RestrictedUnpickler(f, path).load()
        if first != _LEGACY_MAGIC:
            # A plain pickle (no torch storages): the first object is the whole content.
            return first
        _RestrictedUnpickler(f, path).load()  # protocol version
        _RestrictedUnpickler(f, path).load()  # sys info
        storages: dict[str, _Storage] = {}
        offsets: dict[str, int] = {}

        def read_at(key):
            with open(path, "rb") as g:
                g.seek(offsets[key])
                (numel,) = struct.unpack("<q", g.read(8))
                return g.read(numel * storages[key].dtype.itemsize)

        def load_storage(pid):
            dtype, key, numel, view = _storage_pid(pid, path)
            if key not in storages:
                storages[key] = _Storage(path, key, dtype, numel, lambda key=key: read_at(key))
            if view is not None:
                view_key, offset, _size = view
                return _StorageView(storages[key], offset)
            return storages[key]

        result = _RestrictedUnpickler(f, path, load_storage).load()
        keys = _RestrictedUnpickler(f, path).load()
        position = f.tell()
        size = os.fstat(f.fileno()).st_size
        for key in keys:
            if key not in storages:
                raise CheckpointError(f"{path}: storage list names unknown storage {key}")
            offsets[key] = position
            f.seek(position)
            header = f.read(8)
            if len(header) < 8:
                raise CheckpointError(f"{path}: truncated (storage {key} missing)")
            (numel,) = struct.unpack("<q", header)
            position += 8 + numel * storages[key].dtype.itemsize
            if position > size:
                raise CheckpointError(f"{path}: truncated (storage {key} ends past the end of the file)")
    return result


def _state_dict_of(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Opaque):
        obj = obj.items
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), (Mapping, Opaque)):
        obj = obj["state_dict"]
        obj = obj.items if isinstance(obj, Opaque) else obj
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v.materialize() for k, v in obj.items() if isinstance(k, str) and isinstance(v, _LazyTensor)}
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(f"{path}: no tensors found (top-level keys: {keys or 'none'})")
    return tensors


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a .ckpt/.pth/.pt/.bin (zip or legacy torch format) or .safetensors file.

    Lightning checkpoints give their "state_dict" entry; a plain state dict is returned as is.
    Raises CheckpointError for unsafe, truncated or foreign files.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            return safetensors.torch.load_file(str(path))
        except (safetensors.SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None
    try:
        obj = _unpickle_zip(path) if zipfile.is_zipfile(path) else _unpickle_legacy(path)
        return _state_dict_of(obj, path)
    except CheckpointError:
        raise
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, struct.error, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: truncated or not a PyTorch checkpoint ({type(error).__name__}: {error})") \
            from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, OSError) as error:
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(error).__name__}: {error})") from None


# ----------------------------------------------------------------------------------------------------------
# Checking state dicts against modules


def split_by_prefix(state_dict: Mapping[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, dict]:
    """{prefix: {key without prefix: tensor}} for each prefix ("first_stage_model" or "first_stage_model."),
    plus "" for the keys no prefix matched. The first matching prefix wins."""
    prefixes = [p if p.endswith(".") else p + "." for p in prefixes]
    parts: dict[str, dict] = {p[:-1]: {} for p in prefixes}
    parts[""] = {}
    for key, value in state_dict.items():
        for p in prefixes:
            if key.startswith(p):
                parts[p[:-1]][key[len(p):]] = value
                break
        else:
            parts[""][key] = value
    return parts


def _likely_renames(missing: dict[str, tuple], unexpected: dict[str, tuple]) -> list[tuple[str, str, float]]:
    candidates = []
    for m, m_shape in missing.items():
        for u, u_shape in unexpected.items():
            if m_shape == u_shape:
                score = difflib.SequenceMatcher(None, m, u).ratio()
                if score >= 0.6:
                    candidates.append((score, m, u))
    pairs, used_m, used_u = [], set(), set()
    for score, m, u in sorted(candidates, reverse=True):
        if m not in used_m and u not in used_u:
            pairs.append((m, u, score))
            used_m.add(m)
            used_u.add(u)
    return pairs


def state_dict_report(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor],
                      limit: int = 20) -> str | None:
    """A readable description of how `given` differs from `expected`, or None when keys and shapes match."""
    exp = {k: tuple(v.shape) for k, v in expected.items()}
    got = {k: tuple(v.shape) for k, v in given.items()}
    missing = {k: s for k, s in exp.items() if k not in got}
    unexpected = {k: s for k, s in got.items() if k not in exp}
    mismatched = [(k, got[k], exp[k]) for k in exp if k in got and got[k] != exp[k]]
    if not (missing or unexpected or mismatched):
        return None
    renames = _likely_renames(missing, unexpected)
    renamed_m = {m for m, _, _ in renames}
    renamed_u = {u for _, u, _ in renames}

    def shape(s):
        return "[" + ", ".join(map(str, s)) + "]"

    def section(title, rows):
        if not rows:
            return []
        lines = [f"{title} ({len(rows)}):"] + [f"  {r}" for r in rows[:limit]]
        if len(rows) > limit:
            lines.append(f"  ... and {len(rows) - limit} more")
        return lines

    counts = [f"{len(missing)} missing", f"{len(unexpected)} unexpected", f"{len(mismatched)} with another shape"]
    lines = [", ".join(counts) + f" of {len(exp)} expected keys"]
    lines += section("likely renamed (model key <- checkpoint key)",
                     [f"{m} <- {u} {shape(missing[m])}" for m, u, _ in renames])
    lines += section("missing from the checkpoint", [f"{k} {shape(s)}" for k, s in missing.items() if k not in renamed_m])
    lines += section("not in the model", [f"{k} {shape(s)}" for k, s in unexpected.items() if k not in renamed_u])
    lines += section("shape mismatch (checkpoint vs model)", [f"{k}: {shape(g)} vs {shape(e)}" for k, g, e in mismatched])
    return "\n".join(lines)


def load_state_dict_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state_dict` into `module` only if keys and shapes match exactly (dtypes are converted);
    otherwise raise CheckpointError with a report naming every difference and likely renames."""
    report = state_dict_report(module.state_dict(), state_dict)
    if report:
        raise CheckpointError(f"{source} does not fit {type(module).__name__}: {report}")
    module.load_state_dict(state_dict, strict=True)


# ----------------------------------------------------------------------------------------------------------
# Model folders


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
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    try:
        config = json.loads((directory / "config.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: not a model folder (no config.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{directory / 'config.json'}: not valid JSON ({error})") from None
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
    return config, {f.stem: read_checkpoint(f) for f in files}


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


@dataclass(frozen=True)
class Importer:
    kind: str
    help: str
    add_arguments: Callable  # (argparse parser) -> None; FILE, --name and --force are added by the command
    run: Callable  # (args) -> Path of the written model folder


_importers: dict[str, Importer] = {}


def register_importer(kind: str, add_arguments: Callable, run: Callable, help: str = "") -> None:
    """Called at import time by a model module (engine/models/<model>.py) that can convert official checkpoints."""
    _importers[kind] = Importer(kind, help, add_arguments, run)


def importers() -> dict[str, Importer]:
    """All registered importers, after importing every module of engine.models (a module that fails to import
    is logged and skipped so one broken model does not break the CLI)."""
    import engine.models

    for info in pkgutil.iter_modules(engine.models.__path__):
        if not info.name.startswith("_"):
            try:
                importlib.import_module(f"engine.models.{info.name}")
            except Exception as error:  # noqa: BLE001 - any failure of another model's module
                log.warning("engine.models.%s not available for `sgraffito import`: %s", info.name, error)
    return dict(sorted(_importers.items()))
