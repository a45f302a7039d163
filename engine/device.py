"""Which torch device the engine runs on: CUDA, then MPS, then CPU, unless the user says otherwise.

`$SGRAFFITO_DEVICE` or an explicit choice ("cpu", "cuda", "cuda:1", "mps") overrides the automatic pick;
asking for a device this machine does not have is an InputError, not a silent fallback, so a user who
expects the GPU learns that it is not being used.

Torch's intra-op thread count is process-wide, so it is set once, by `configure_threads()` (the runtime calls
it on its worker before the first job, the CLI runner before it starts one); engine code never changes it. The
one exception is the runtime itself, the only code running torch on the device: `job_threads` applies an
engine's declared preference (`Pipeline.threads`) around that engine's jobs.
"""

from __future__ import annotations

import contextlib
import os
import threading

from engine.errors import InputError

THREADS_ENV = "SGRAFFITO_THREADS"
_threads: int | None = None  # what configure_threads() set, once per process
_threads_lock = threading.Lock()


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask in a container or under taskset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


def _threads_wanted(n: int | None) -> int:
    if n is not None:
        source, text = "threads", str(n)
    elif os.environ.get(THREADS_ENV, "").strip():
        source, text = f"${THREADS_ENV}", os.environ[THREADS_ENV].strip()
    elif os.environ.get("OMP_NUM_THREADS", "").strip():  # torch honours it at import: keep what the user set
        source, text = "$OMP_NUM_THREADS", os.environ["OMP_NUM_THREADS"].strip()
    else:
        return cpu_cores()
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"{source}={text!r}: expected a whole number of threads") from None
    if value < 1:
        raise InputError(f"{source}={text!r}: at least one thread is needed")
    return value


def configure_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count once for the process and return it.

    `n`, else `$SGRAFFITO_THREADS`, else `$OMP_NUM_THREADS`, else the cores this process may use. The first call
    decides; later calls (a second runtime, the CLI runner after the GUI's) change nothing and return the count
    already set, so no job ever flips a process-wide setting under another thread's feet."""
    global _threads
    with _threads_lock:
        if _threads is None:
            wanted = _threads_wanted(n)
            import torch

            if torch.get_num_threads() != wanted:
                torch.set_num_threads(wanted)
            _threads = wanted
        return _threads


def configured_threads() -> int | None:
    """The count configure_threads() set, or None before it ran."""
    return _threads


@contextlib.contextmanager
def job_threads(n: int | None):
    """For the runtime's worker only: run one job with an engine's preferred thread count (`Pipeline.threads`,
    e.g. 1 for samplers made of tiny ops), then restore the process setting. None leaves it as configured."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
