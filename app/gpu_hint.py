"""An NVIDIA GPU with a CPU-only torch: tell the user once how to install the CUDA build.

pip's default torch on Linux is a CUDA build, but `make` and our bundle install the smaller CPU build, so a user
with a GPU may be generating on the CPU without knowing it. The GPU check is cheap (a file or a program on
PATH); torch is imported only when a GPU is there, in a worker thread, since the import takes seconds.
"""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QObject, Signal

from app import settings

NOTICE = "cuda_build"
CUDA_INDEX = "https://download.pytorch.org/whl/cu128"


def nvidia_gpu_present() -> bool:
    """The NVIDIA driver is loaded (Linux) or its tool is installed (Linux, Windows)."""
    return Path("/proc/driver/nvidia").exists() or shutil.which("nvidia-smi") is not None


def torch_cuda_version() -> str | None:
    """The CUDA version torch was built with; None for a CPU build."""
    import torch

    return torch.version.cuda


def torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def install_command() -> str:
    return f"{sys.executable} -m pip install --force-reinstall 'torch=={torch_version()}' --index-url {CUDA_INDEX}"


def cuda_hint() -> str | None:
    """What to tell the user, or None when there is nothing to say (no GPU, or torch already uses CUDA)."""
    if not nvidia_gpu_present() or torch_cuda_version() is not None:
        return None
    if getattr(sys, "frozen", False):
        return QCoreApplication.translate(
            "gpu_hint", "An NVIDIA GPU is present, but this bundle ships the CPU build of PyTorch. Install Sgraffito "
                        "with pip and the CUDA build of torch to generate on the GPU.")
    return QCoreApplication.translate(
        "gpu_hint", "An NVIDIA GPU is present, but PyTorch is a CPU build. To generate on the GPU, install the CUDA "
                    "build: {command}").format(command=install_command())

class CudaHint(QObject):
    """Runs `cuda_hint()` off the UI thread; `found(text)` arrives on the UI thread (queued signal)."""

    found = Signal(str)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.text: str | None = None
        self.found.connect(self._store)

    def _store(self, text: str) -> None:
        self.text = text

    def check(self, once: bool = True) -> None:
        """Look in the background; with `once`, say nothing if the user has already been told."""
        if once and settings.seen(NOTICE):
            return
        if not nvidia_gpu_present():  # the common case costs no thread and no torch import
            return

        def work() -> None:
            try:
                text = cuda_hint()
            except Exception:  # noqa: BLE001 - a broken torch install shows up when generating, not here
                return
            if text:
                try:
                    self.found.emit(text)
                except RuntimeError:  # the window closed meanwhile
                    pass

        threading.Thread(target=work, name="cuda-hint", daemon=True).start()
