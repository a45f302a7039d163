"""Which torch device the engine runs on: CUDA, then MPS, then CPU, unless the user says otherwise.

`$SGRAFFITO_DEVICE` or an explicit choice ("cpu", "cuda", "cuda:1", "mps") overrides the automatic pick;
asking for a device this machine does not have is an InputError, not a silent fallback, so a user who
expects the GPU learns that it is not being used.
"""

from __future__ import annotations

import os

from engine.errors import InputError


def resolve_device(choice: str | None = None) -> str:
    """A torch device string ("cuda", "cuda:1", "mps" or "cpu"); `choice` None or "auto" picks the best one."""
    choice = (choice or os.environ.get("SGRAFFITO_DEVICE") or "auto").strip().lower()
    if choice == "cpu":  # no torch import: it costs seconds, and `--device cpu` needs no probing
        return "cpu"
    import torch

    if choice == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if _mps_available(torch):
            return "mps"
        return "cpu"
    if choice == "mps":
        if not _mps_available(torch):
            raise InputError("device 'mps' was requested but Apple's Metal backend is not available here")
        return "mps"
    if choice == "cuda" or choice.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError(f"device {choice!r} was requested but this torch build sees no CUDA GPU "
                             f"(torch {torch.__version__}); use --device cpu")
        index = choice.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise InputError(f"device {choice!r} does not exist: {torch.cuda.device_count()} CUDA device(s) found")
        return choice
    raise InputError(f"unknown device {choice!r}: use auto, cpu, cuda, cuda:N or mps")


def describe_device(device: str) -> str:
    """A human-readable name, e.g. "NVIDIA H100 80GB HBM3 (cuda)" or "CPU (4 cores)"."""
    if device.startswith("cuda"):
        import torch

        return f"{torch.cuda.get_device_name(torch.device(device))} ({device})"
    if device == "mps":
        return "Apple GPU (mps)"
    return f"CPU ({os.cpu_count()} cores)"


def _mps_available(torch) -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())
