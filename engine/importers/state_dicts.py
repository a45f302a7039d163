"""Read official checkpoints into state dicts and check them against our modules, key for key.

`read_checkpoint` reads .ckpt/.pth/.pt/.bin through the restricted unpickler (engine.importers.unpickler) and
.safetensors directly; `state_dict_report` names every missing, unexpected or mis-shaped key, with likely renames;
`load_state_dict_strict` refuses a checkpoint that does not fit.
"""

from __future__ import annotations

import difflib
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from engine.errors import CheckpointError
from engine.importers.unpickler import Opaque, _LazyTensor, _unpickle_legacy, _unpickle_zip
from engine.model_store import read_safetensors
from engine.safe_io import open_regular

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


_PICKLE_PROTOCOL = re.compile(rb"\x80[\x02-\x05]")  # the PROTO opcode that opens a pickle of protocol 2-5


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in a .ckpt/.pth/.pt/.bin (zip or legacy torch format) or .safetensors file.

    Lightning checkpoints give their "state_dict" entry; a plain state dict is returned as is.
    Raises CheckpointError for unsafe, truncated or foreign files.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    with open_regular(path, "checkpoint", CheckpointError) as handle:  # a FIFO, device or folder stops here
        head = handle.read(4)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if not (head.startswith(b"PK") or _PICKLE_PROTOCOL.match(head)):
        # torch.save writes a zip, or (legacy format) pickles from protocol 2 on: anything else is some other file,
        # and unpickling it would only fail somewhere in the middle with an opcode error
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle); "
                              "expected a .ckpt/.pth/.pt file saved by torch.save, or a .safetensors file")
    try:
        # a zip by its signature: a truncated zip has no readable directory, but it is not a legacy pickle either
        obj = _unpickle_zip(path) if head.startswith(b"PK") else _unpickle_legacy(path)
        return _state_dict_of(obj, path)
    except CheckpointError:
        raise
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, struct.error, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: truncated or not a PyTorch checkpoint ({type(error).__name__}: {error})") \
            from None
    except MemoryError:
        raise CheckpointError(f"{path}: not enough memory to read this checkpoint") from None
    except RecursionError:
        raise CheckpointError(f"{path}: its pickle is nested too deeply") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RuntimeError, OSError,
            OverflowError, LookupError) as error:
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
