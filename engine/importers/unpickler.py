"""The restricted unpickler: official `.ckpt`/`.pth` files are read without ever running code they contain.

Official checkpoints are pickles. Unpickling can run arbitrary code, and Lightning checkpoints also pickle
Lightning/omegaconf objects we neither have nor want. This unpickler rebuilds tensors from their raw storages by
our code, allows plain containers, turns any other class into an inert placeholder that is never imported or
called, and stops with a CheckpointError naming any call of something that is neither allowed nor a known
metadata class (e.g. `os.system`).
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Callable


import torch

from engine.errors import CheckpointError
from engine.safe_io import LIMITS, Budget, close_zip, open_regular, open_zip, read_member

MAX_PICKLE_BYTES = 1 << 30  # the pickle of a checkpoint (its tensors' bytes are separate members)

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


def _defaultdict(default_factory=None, *_ignored):
    """collections.defaultdict as omegaconf pickles it (a DictConfig's `resolver_cache` is `defaultdict(dict)`):
    an empty plain dict that SETITEMS fills. The factory (any global, possibly a placeholder) is never kept or
    called, so the result is inert data."""
    return {}


def _latin1(text, encoding="latin1"):
    if encoding != "latin1":
        raise CheckpointError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


MAX_BYTEARRAY = 64 << 20  # a bytearray a pickle may ask for by size (metadata never needs more)


def _bytearray(source=b"", *args):
    """bytearray, but never one allocated from a size the file states (`bytearray(2**31)` from 40 bytes)."""
    if isinstance(source, bool) or isinstance(source, int):
        if not 0 <= source <= MAX_BYTEARRAY:
            raise CheckpointError(f"refusing bytearray({source}) while unpickling (more than "
                                  f"{MAX_BYTEARRAY >> 20} MB asked for by size)")
        return bytearray(source)
    if isinstance(source, (bytes, bytearray, str)):
        return bytearray(source, *args) if isinstance(source, str) else bytearray(source)
    if isinstance(source, (list, tuple)) and len(source) <= MAX_BYTEARRAY:
        try:
            return bytearray(source)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"bytearray from a malformed list while unpickling ({error})") from None
    raise CheckpointError(f"refusing bytearray({type(source).__name__}) while unpickling")


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
    ("builtins", "bytearray"): _bytearray,
    ("_codecs", "encode"): _latin1,
    ("builtins", "getattr"): _placeholder_attribute,
    ("collections", "defaultdict"): _defaultdict,  # omegaconf DictConfig metadata
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
    dtype, key, numel = pid[1], str(pid[2])[:200], pid[4]
    if not isinstance(dtype, torch.dtype) or not isinstance(numel, int) or isinstance(numel, bool):
        raise CheckpointError(f"{path}: unsupported storage {pid!r:.80}")
    if not 0 <= numel * dtype.itemsize <= LIMITS["checkpoint"]:
        raise CheckpointError(f"{path}: storage {key} claims {numel} elements, not a size a checkpoint can hold")
    return dtype, key, numel, pid[5] if len(pid) > 5 else None


def _unpickle_zip(path: Path):
    """A torch zip checkpoint. Every member is inflated in chunks within its declared size, a compression-ratio
    limit and a budget for the whole file (torch stores storages uncompressed: a zip bomb exceeds both)."""
    archive = open_zip(path, "checkpoint", CheckpointError,
                       bad_zip=f"{path}: a truncated or damaged zip archive (not a readable PyTorch checkpoint)")
    try:
        size = os.fstat(archive.fp.fileno()).st_size
        budget = Budget(max(2 * size, 256 << 20), str(path), error=CheckpointError)
        infos = {info.filename: info for info in archive.infolist()}
        names = list(infos)
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pickles:
            kind = "a TorchScript archive" if any(n.endswith("constants.pkl") for n in names) else "not a torch file"
            raise CheckpointError(f"{path}: zip archive without data.pkl ({kind})")
        prefix = pickles[0][: -len("data.pkl")]

        def member(name: str, limit: int) -> bytes:
            return read_member(archive, infos[name], f"{path}: {name}", limit, budget, CheckpointError)

        if prefix + "byteorder" in infos and member(prefix + "byteorder", 64).strip() != b"little":
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        storages: dict[str, _Storage] = {}

        def load_storage(pid):
            dtype, key, numel, _ = _storage_pid(pid, path)
            if key not in storages:
                name = f"{prefix}data/{key}"
                if name not in infos:
                    raise CheckpointError(f"{path}: storage {key} is missing from the archive")
                nbytes = numel * dtype.itemsize

                def read(name=name, nbytes=nbytes):  # lazily, when a tensor of the state dict needs it
                    again = open_zip(path, "checkpoint", CheckpointError)
                    try:
                        return read_member(again, again.getinfo(name), f"{path}: {name}", nbytes, budget,
                                           CheckpointError)
                    except KeyError:
                        raise CheckpointError(f"{path}: storage {name} is missing from the archive") from None
                    finally:
                        close_zip(again)

                storages[key] = _Storage(path, key, dtype, numel, read)
            return storages[key]

        data = member(pickles[0], MAX_PICKLE_BYTES)
        return _RestrictedUnpickler(io.BytesIO(data), path, load_storage).load()
    finally:
        close_zip(archive)


class _BoundedFile:
    """A file for the pure-Python unpickler whose reads never ask for more than the file has left: a length
    field of 2**60 in a pickle is a truncated file, not a 1-EB allocation."""

    def __init__(self, handle, size: int, path: Path):
        self.handle, self.size, self.path = handle, size, path

    def _check(self, n: int) -> None:
        if n > self.size - self.handle.tell():
            raise CheckpointError(f"{self.path}: truncated (a pickle field of {n} bytes runs past the end of the file)")

    def read(self, n: int = -1) -> bytes:
        if n is not None and n >= 0:
            self._check(n)
        return self.handle.read(n)

    def readinto(self, buffer) -> int:
        self._check(len(buffer))
        return self.handle.readinto(buffer)

    def readline(self, limit: int = -1) -> bytes:
        return self.handle.readline(1 << 20 if limit < 0 else limit)

    def peek(self, n: int = 0) -> bytes:
        return self.handle.peek(n)

    def seek(self, *args):
        return self.handle.seek(*args)

    def tell(self) -> int:
        return self.handle.tell()

    def fileno(self) -> int:
        return self.handle.fileno()


def _unpickle_legacy(path: Path):
    with open_regular(path, "checkpoint", CheckpointError) as handle:
        f = _BoundedFile(handle, os.fstat(handle.fileno()).st_size, path)
        first = _RestrictedUnpickler(f, path).load()
        if first != _LEGACY_MAGIC:
            # A plain pickle (no torch storages): the first object is the whole content.
            return first
        _RestrictedUnpickler(f, path).load()  # protocol version
        _RestrictedUnpickler(f, path).load()  # sys info
        storages: dict[str, _Storage] = {}
        offsets: dict[str, int] = {}

        def read_at(key):
            with open_regular(path, "checkpoint", CheckpointError) as g:
                g.seek(offsets[key])
                (numel,) = struct.unpack("<q", g.read(8))
                nbytes = numel * storages[key].dtype.itemsize
                if not 0 <= nbytes <= size - offsets[key] - 8:
                    raise CheckpointError(f"{path}: storage {key} ends past the end of the file")
                return g.read(nbytes)

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
            if numel < 0 or position > size:
                raise CheckpointError(f"{path}: truncated (storage {key} ends past the end of the file)")
    return result
