"""One cache for loaded models, with a byte budget and least-recently-used eviction.

The runtime owns one `ModelCache` and hands it to every backend as `ctx.models`; a backend loads through it::

    model = ctx.models.get(("asapnet", path, ctx.device), lambda: ASAPNetRenderer.load(path, ctx.device))

A hit marks the entry most recently used. A miss calls `load()`, measures what it returned with `nbytes_of`
and evicts the least recently used entries until the total fits the budget; the entry just loaded always
stays, even when it alone is over the budget (a model larger than the budget still runs, it just keeps no
company). Evicting only drops the cache's reference: a backend still holding the model keeps it alive.

The budget is `budget_bytes`, else `$SGRAFFITO_MODEL_CACHE_MB` (mebibytes), else DEFAULT_BUDGET_MB. It counts
the bytes of the tensors the cached objects hold (parameters and buffers), on whatever device they live.
The cache is thread-safe; the runtime only uses it from its worker thread.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import types
from collections import OrderedDict
from typing import Callable, Hashable, TypeVar

from engine.errors import InputError

T = TypeVar("T")

DEFAULT_BUDGET_MB = 4096
ENV = "SGRAFFITO_MODEL_CACHE_MB"


def _budget_from_env() -> int:
    text = os.environ.get(ENV, "").strip()
    if not text:
        return DEFAULT_BUDGET_MB * 2**20
    try:
        megabytes = float(text)
    except ValueError:
        raise InputError(f"${ENV}={text!r}: expected a number of megabytes, e.g. 2048") from None
    if megabytes < 0:
        raise InputError(f"${ENV}={text!r}: the model cache budget cannot be negative")
    return int(megabytes * 2**20)


class ModelCache:
    """key -> loaded model, at most `budget_bytes` of tensors (see the module docstring)."""

    def __init__(self, budget_bytes: int | None = None):
        if budget_bytes is not None and budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self.budget_bytes = _budget_from_env() if budget_bytes is None else int(budget_bytes)
        self._entries: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()  # oldest use first
        self._lock = threading.RLock()  # re-entrant: a load() may itself get a sub-model through the cache

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The cached value of `key`, else `load()`'s result, cached (evicting the least recently used)."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key][0]  # type: ignore[return-value]
            value = load()
            self._entries[key] = (value, nbytes_of(value))
            self._entries.move_to_end(key)
            self._evict(keep=key)
            return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def keys(self) -> list[Hashable]:
        """The cached keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached values (as measured when each was loaded)."""
        with self._lock:
            return sum(size for _, size in self._entries.values())

    def _evict(self, keep: Hashable) -> None:
        total = sum(size for _, size in self._entries.values())
        for key in list(self._entries):
            if total <= self.budget_bytes:
                break
            if key == keep:
                continue
            total -= self._entries.pop(key)[1]

    def __repr__(self) -> str:
        return f"<ModelCache {len(self)} models, {self.nbytes / 2**20:.1f} of {self.budget_bytes / 2**20:.0f} MB>"


def nbytes_of(obj) -> int:
    """Bytes of the tensors `obj` holds: an nn.Module's parameters and buffers, a tensor or numpy array, an
    object's `nbytes_held()`, or the sum over the attributes (dataclass fields, instance attributes, dict,
    list and tuple items) of a plain object that holds those. Storage shared by several of them counts once.
    0 when nothing is found."""
    return _Measure().of(obj, depth=0)


_NOT_CONTAINERS = (type, types.ModuleType, types.FunctionType, types.MethodType, types.BuiltinFunctionType)


class _Measure:
    MAX_DEPTH = 4  # a renderer holding a model holding modules: deep enough, and no walking of arbitrary graphs

    def __init__(self):
        self.torch = sys.modules.get("torch")  # no tensor can exist if torch was never imported
        self.seen_objects: set[int] = set()
        self.seen_storage: set[tuple[str, int]] = set()

    def tensor(self, tensor) -> int:
        try:
            storage = tensor.untyped_storage()
            key = (str(tensor.device), storage.data_ptr())
            size = storage.nbytes()
        except Exception:  # noqa: BLE001 - sparse, meta or exotic tensors: count their elements
            return tensor.numel() * tensor.element_size()
        if key[1] == 0:  # meta/empty storage: no address to deduplicate on
            return size
        if key in self.seen_storage:
            return 0
        self.seen_storage.add(key)
        return size

    def of(self, obj, depth: int) -> int:
        if obj is None or isinstance(obj, (str, bytes, int, float, bool)) or id(obj) in self.seen_objects:
            return 0
        self.seen_objects.add(id(obj))
        torch = self.torch
        if torch is not None:
            if isinstance(obj, torch.Tensor):
                return self.tensor(obj)
            if isinstance(obj, torch.nn.Module):
                return (sum(self.tensor(p) for p in obj.parameters())
                        + sum(self.tensor(b) for b in obj.buffers()))
        held = getattr(obj, "nbytes_held", None)
        if callable(held) and not isinstance(obj, type):
            return int(held())
        if type(obj).__module__ == "numpy" and hasattr(obj, "nbytes"):
            return int(obj.nbytes)
        if depth >= self.MAX_DEPTH:
            return 0
        if isinstance(obj, dict):
            values = list(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            values = list(obj)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            values = [getattr(obj, f.name, None) for f in dataclasses.fields(obj)]
        elif hasattr(obj, "__dict__") and not isinstance(obj, _NOT_CONTAINERS):
            values = list(vars(obj).values())
        else:
            return 0
        return sum(self.of(value, depth + 1) for value in values)
