"""The engine runtime: immutable requests, one worker thread that owns the device, job kinds and priorities,
progress, cancel, backends, the model cache.

How a model plugs in (ASSET, ColTran, ASAPNet, PixelCNN)
--------------------------------------------------------
A backend is any object with a `name` and a `run(request, ctx) -> list[Candidate]` method. It lives in
`engine/pipelines/` (on `engine.pipelines.base.Pipeline`, which loads, places and seeds) and is named by its
engine's entry in `engine/registry.py`; the backend name is the `"kind"` of the model folders it serves
(config.json), so the GUI can map a model to its backend::

    from engine import composite
    from engine.jobs import Candidate, JobContext, Request

    GEOMETRY = composite.ModelGeometry(size=(256, 256), grid=16, fit="stretch")

    class AssetBackend:
        name = "asset"

        def run(self, request: Request, ctx: JobContext) -> list[Candidate]:
            model = ctx.models.get(("asset", request.model, ctx.device),   # the runtime's one LRU model cache
                                   lambda: load_asset(request.model, ctx.device))
            mask = request.edit_mask()                           # (H, W) bool: user mask, else the label diff
            region = request.region or composite.working_region(mask, GEOMETRY)
            image, fit = composite.to_model(request.photo, region, GEOMETRY)
            labels, _ = composite.to_model(request.labels_after, region, GEOMETRY, kind="labels")
            small_mask, _ = composite.to_model(mask, region, GEOMETRY, kind="mask")
            out = []
            for i, seed in enumerate(ctx.seeds):                 # candidate i depends only on (request, seed + i)
                for token in range(n_tokens):
                    ctx.check_cancelled()                        # at least once per sampled row or token
                    ...
                    ctx.progress((i + (token + 1) / n_tokens) / request.k, f"candidate {i + 1}/{request.k}")
                patch = composite.paste_back(request.photo, mask, output, fit)   # Laplacian blend, full res
                out.append(Candidate(image=patch, region=fit.region, seed=seed, info={"nll": nll}))
            return out

    # engine/registry.py: ModelSpec(kind="asset", ..., backend="engine.pipelines.asset:AssetBackend")

Colorization backends use `composite.transfer_chroma(original_region, model_output)` instead of `paste_back`.

Contract
* `run` is called on the runtime's single worker thread, never on the UI thread, one job at a time; it may
  block for minutes. It must not mutate the request (its arrays are read-only anyway).
* `ctx.check_cancelled()` raises `engine.errors.Cancelled`; call it at least once per sampled row or token.
  Let it propagate (do not catch it).
* Load models through `ctx.models` (an engine.model_cache.ModelCache with a byte budget and LRU eviction,
  shared by every backend of the runtime); key them by everything that makes them differ (model, device).
* Never call `torch.set_num_threads`: the thread count is process-wide and set once before the worker's first
  job (engine.device.configure_threads, from $SGRAFFITO_THREADS or the core count). A backend whose sampling
  is a chain of tiny ops declares `threads = 1` (a class attribute); the runtime, the only code that runs
  torch on the device, applies it around that backend's jobs and restores the process setting after.
* `ctx.progress(fraction in [0, 1], stage text, preview=None)`; a preview is a small (h, w, 3) uint8 RGB image.
* Candidate i should be reproducible from `(request, seed=ctx.seeds[i], k=1)`; report that seed in
  `Candidate.seed`. `ctx.seeds == [request.seed + i for i in range(request.k)]`.
* `Candidate.image` is the final pixels for `Candidate.region` of the photo at the photo's full resolution,
  already composited (use engine.composite: `working_region`, `to_model` / `from_model`, `laplacian_blend`,
  `transfer_chroma`). `Candidate.compose(photo)` pastes it into a full-size copy.
* Raise `InputError` / `CheckpointError` for problems the user can fix: the message reaches the UI as is.
  Any other exception also fails the job, with the exception type in the message and the traceback kept.

Runtime
* `Runtime(device=None, models=None)`: `submit(request, kind=JobKind.GENERATE)` -> Job; `cancel(job_id)`,
  `cancel_active()`, `cancel_queued(slot=None, kind=None)`, `cancel_all(slot=None, kind=None)`;
  `add_listener(fn)` gets a `JobEvent` snapshot for every state change and (throttled) progress step, called
  from the worker thread (or the caller's thread for queued/cancelled jobs). Qt code must re-emit them as
  queued signals (app/engine_bridge.py does). `runtime.models` is its ModelCache (budget:
  $SGRAFFITO_MODEL_CACHE_MB).
* The editor and each CLI command use one runtime (app.engine_bridge.bridge_for, engine/commands/_runner.py):
  its one worker thread runs every job (generation, live preview, the command's job), is the only code that
  touches the device, one job at a time, and sets torch's thread count once, before its first job.

Job kinds and priorities
* Every job has a `JobKind`; the worker always starts the queued job of the highest priority, first in first
  out within a priority:
    1. `JobKind.LIVE_PREVIEW`: a label map rendered after a stroke (ASAPNet, milliseconds). Small, and the user
       is waiting on every stroke, so it goes before anything queued.
    2. `JobKind.GENERATE`: candidates for the gallery or the command line (ASSET, ColTran, PixelCNN, ASAPNet
       edits); seconds to minutes, and the user expects to wait.
  Priorities order the queue only: a running job is never interrupted by a more urgent one (a live preview
  submitted during a long generation starts when that job reaches its end or is cancelled).
* A request carries a `slot` (the document's key). A new submit supersedes the older jobs of the same slot AND
  the same kind: queued ones are cancelled, a running one is asked to stop, and whatever it still returns is
  dropped. So a new stroke's live preview replaces the previous preview without touching the document's
  generation jobs, and a new Generate replaces the previous generation without touching the preview.
* Cancelling one job (by id) never touches another; the bulk cancels take an optional slot and kind.
"""

from __future__ import annotations

import enum
import itertools
import threading
import time
import traceback
import types
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np

from engine.errors import Cancelled, InputError, SgraffitoError
from engine.model_cache import ModelCache

Region = tuple[int, int, int, int]  # (x0, y0, x1, y1) in photo pixels, x1/y1 exclusive


def _immutable(array) -> bool:
    """True if no one can write these pixels: the array and every array it views are read-only."""
    while isinstance(array, np.ndarray):
        if array.flags.writeable:
            return False
        array = array.base
    return array is None or isinstance(array, bytes)


def _frozen_array(array, name: str, dtype_kinds: str, ndims: tuple[int, ...]) -> np.ndarray | None:
    if array is None:
        return None
    if not _immutable(array):
        array = np.array(array, copy=True)  # a private copy: the editor keeps painting on its own buffers
    if array.dtype.kind not in dtype_kinds or array.ndim not in ndims:
        raise InputError(f"request {name}: expected a {ndims}-D array of kind {dtype_kinds!r}, "
                         f"got shape {array.shape} dtype {array.dtype}")
    array.flags.writeable = False
    return array


def _frozen_params(params: Mapping[str, Any]) -> Mapping[str, Any]:
    def freeze(value):
        if isinstance(value, Mapping):
            return types.MappingProxyType({str(k): freeze(v) for k, v in value.items()})
        if isinstance(value, (list, tuple)):
            return tuple(freeze(v) for v in value)
        return value

    return freeze(dict(params))


def thaw(value):
    """A frozen params mapping back to plain dicts and lists (for JSON and for `replace`)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


MAX_SAMPLES = 64  # candidates of one request; a backend samples them in memory-sized chunks (pipelines/base.py)

@dataclass(frozen=True, eq=False)
class Request:
    """Everything a backend needs, snapshotted when the user pressed Generate; arrays are read-only copies.

    photo: (H, W, 3) uint8 RGB, or for colorization the (H, W) uint8 gray image.
    labels_before / labels_after: (H, W) integer label ids of `label_set` (semantic edits), else None.
    mask: (H, W) bool, the user's edit mask; None means "the label diff" (see `edit_mask()`).
    region: the working region (x0, y0, x1, y1) if the caller fixed it, else None (the backend chooses one
    with engine.composite.working_region).
    """

    backend: str
    photo: np.ndarray
    model: str = ""  # model folder name or path; "" = the backend's default model
    mode: str = ""  # the document mode asking: edit, colorize, translate or segment; "" = the engine's main mode
    labels_before: np.ndarray | None = None
    labels_after: np.ndarray | None = None
    mask: np.ndarray | None = None
    k: int = 1
    seed: int = 0
    params: Mapping[str, Any] = field(default_factory=dict)
    region: Region | None = None
    label_set: str = "coco-stuff-182"
    slot: str | None = None  # the document this request belongs to; None never supersedes anything

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise fields once, here
        set_(self, "photo", _frozen_array(self.photo, "photo", "u", (2, 3)))
        if self.photo is None:
            raise InputError("request: a photo (or gray image) is required")
        if self.photo.ndim == 3 and self.photo.shape[2] != 3:
            raise InputError(f"request photo: expected 3 channels, got shape {self.photo.shape}")
        for name in ("labels_before", "labels_after"):
            set_(self, name, _frozen_array(getattr(self, name), name, "ui", (2,)))
        mask = self.mask
        set_(self, "mask", None if mask is None else _frozen_array(np.asarray(mask) > 0, "mask", "b", (2,)))
        height, width = self.photo.shape[:2]
        for name in ("labels_before", "labels_after", "mask"):
            array = getattr(self, name)
            if array is not None and array.shape != (height, width):
                raise InputError(f"request {name}: shape {array.shape} differs from the photo's {(height, width)}")
        if (self.labels_before is None) != (self.labels_after is None):
            raise InputError("request: labels_before and labels_after go together")
        if not 1 <= int(self.k) <= MAX_SAMPLES:
            raise InputError(f"request: k (number of samples) must be between 1 and {MAX_SAMPLES}, got {self.k}")
        set_(self, "k", int(self.k))
        from engine.registry import MODES

        if self.mode and self.mode not in MODES:
            raise InputError(f"request: unknown mode {self.mode!r}; one of {', '.join(MODES)}")
        set_(self, "seed", int(self.seed))
        set_(self, "params", _frozen_params(self.params))
        if self.region is not None:
            x0, y0, x1, y1 = (int(v) for v in self.region)
            if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
                raise InputError(f"request region {self.region} is empty or outside the {width}x{height} photo")
            set_(self, "region", (x0, y0, x1, y1))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the photo."""
        return self.photo.shape[1], self.photo.shape[0]

    def edit_mask(self) -> np.ndarray:
        """(H, W) bool: the user's mask if given, else where the labels changed, else everything."""
        from engine import composite

        return composite.edit_mask(self.labels_before, self.labels_after, self.mask, shape=self.photo.shape[:2])

    def with_seed(self, seed: int, k: int | None = None) -> "Request":
        """The same request with new seeds ("more like this")."""
        return replace(self, seed=seed, k=self.k if k is None else k, params=thaw(self.params))

    def describe(self) -> dict[str, Any]:
        """JSON-able metadata (no pixels)."""
        return {"backend": self.backend, "model": self.model, "mode": self.mode, "k": self.k, "seed": self.seed,
                "params": thaw(self.params), "region": list(self.region) if self.region else None,
                "label_set": self.label_set, "size": list(self.size)}


@dataclass(frozen=True, eq=False)
class Candidate:
    """One sample: `image` (h, w, 3) uint8 RGB are the final pixels of `region` of the photo, full resolution."""

    image: np.ndarray
    region: Region
    seed: int
    info: Mapping[str, Any] = field(default_factory=dict)  # JSON-able extras, e.g. {"nll": 123.4}
    seconds: float = 0.0  # sampling time of this candidate, if the backend measured it

    def __post_init__(self):
        image = np.asarray(self.image)
        x0, y0, x1, y1 = (int(v) for v in self.region)
        if image.dtype != np.uint8 or image.shape != (y1 - y0, x1 - x0, 3):
            raise TypeError(f"candidate image must be ({y1 - y0}, {x1 - x0}, 3) uint8 for region {self.region}, "
                            f"got {image.shape} {image.dtype}")
        if _immutable(image):
            frozen = image
        else:
            frozen = image.copy()
            frozen.flags.writeable = False
        object.__setattr__(self, "image", frozen)
        object.__setattr__(self, "region", (x0, y0, x1, y1))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "info", _frozen_params(self.info))

    def compose(self, photo: np.ndarray) -> np.ndarray:
        """A full-size (H, W, 3) copy of `photo` (RGB or gray) with this candidate pasted in."""
        base = np.asarray(photo)
        out = np.repeat(base[:, :, None], 3, axis=2) if base.ndim == 2 else base.copy()
        x0, y0, x1, y1 = self.region
        if x1 > out.shape[1] or y1 > out.shape[0]:
            raise InputError(f"candidate region {self.region} does not fit a {out.shape[1]}x{out.shape[0]} photo")
        out[y0:y1, x0:x1] = self.image
        return out


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class JobKind(str, enum.Enum):
    """What a job is for; decides its priority (see the module docstring). Listed most urgent first."""

    LIVE_PREVIEW = "live_preview"
    GENERATE = "generate"

    @property
    def priority(self) -> int:
        """0 is the most urgent."""
        return PRIORITY.index(self)


PRIORITY: tuple[JobKind, ...] = (JobKind.LIVE_PREVIEW, JobKind.GENERATE)  # the worker's order, most urgent first


class Job:
    """A submitted request and its progress; fields are written by the runtime only (under its lock)."""

    def __init__(self, job_id: int, request: Request, kind: JobKind = JobKind.GENERATE):
        self.id = job_id
        self.request = request
        self.kind = JobKind(kind)
        self.state = JobState.QUEUED
        self.fraction = 0.0
        self.stage = "queued"
        self.preview: np.ndarray | None = None
        self.candidates: tuple[Candidate, ...] = ()
        self.error: str | None = None  # the message shown to the user when state is FAILED
        self.traceback: str | None = None  # for unexpected exceptions (bugs), for the log
        self.superseded = False
        self.submitted_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._cancel = threading.Event()
        self._done = threading.Event()

    @property
    def seconds(self) -> float:
        """Time spent running (0 while queued)."""
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.time()) - self.started_at

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job finished (done, failed or cancelled); False on timeout."""
        return self._done.wait(timeout)

    def __repr__(self):
        return (f"<Job {self.id} {self.kind.value} {self.request.backend} {self.state.value} {self.fraction:.0%} "
                f"{self.stage!r}>")


@dataclass(frozen=True, eq=False)
class JobEvent:
    """An immutable snapshot of a job, handed to listeners. kind: "state" or "progress"."""

    kind: str
    job_id: int
    slot: str | None
    state: JobState
    fraction: float
    stage: str
    preview: np.ndarray | None
    candidates: tuple[Candidate, ...]
    error: str | None
    superseded: bool
    seconds: float
    request: Request
    traceback: str | None = None  # a failed job's traceback when the failure was a bug, not a user error
    job_kind: JobKind = JobKind.GENERATE  # the job's JobKind (`kind` above is the event's)


class JobContext:
    """What a backend sees of its job: the device, the seeds, the model cache, progress and cancellation."""

    PROGRESS_INTERVAL = 0.05  # s; a backend may report every token, listeners get at most ~20 updates/s

    def __init__(self, runtime: "Runtime", job: Job, device: str):
        self._runtime = runtime
        self._job = job
        self.request = job.request
        self.kind = job.kind
        self.device = device
        self.models: ModelCache = runtime.models  # load models through it: one byte budget for all backends
        self.seed = job.request.seed
        self.seeds = [job.request.seed + i for i in range(job.request.k)]
        self._last_emit = 0.0

    @property
    def cancelled(self) -> bool:
        return self._job._cancel.is_set()

    def threads(self, n: int | None):
        """A context manager that runs one stage of this job on `n` intra-op threads and restores the setting
        after (the worker is the only code running torch, so it may; e.g. ColTran samples its pixel chain on one
        thread but upsamples on all). Backends never call torch.set_num_threads themselves."""
        from engine.device import job_threads

        return job_threads(n)

    def check_cancelled(self) -> None:
        """Raise engine.errors.Cancelled if the user cancelled this job (or a newer request superseded it)."""
        if self._job._cancel.is_set():
            raise Cancelled("superseded by a newer request" if self._job.superseded else "cancelled by the user")

    def progress(self, fraction: float, stage: str = "", preview: np.ndarray | None = None) -> None:
        job = self._job
        now = time.monotonic()
        fraction = min(max(float(fraction), 0.0), 1.0)
        changed_stage = bool(stage) and stage != job.stage
        with self._runtime._lock:
            job.fraction = fraction
            if stage:
                job.stage = stage
            if preview is not None:
                preview = np.array(preview, dtype=np.uint8, copy=True)
                preview.flags.writeable = False
                job.preview = preview
        if preview is not None or changed_stage or fraction >= 1.0 or now - self._last_emit >= self.PROGRESS_INTERVAL:
            self._last_emit = now
            self._runtime._emit(job, "progress")


@runtime_checkable
class Backend(Protocol):
    name: str

    def run(self, request: Request, ctx: JobContext) -> list[Candidate]: ...


def backend_names() -> list[str]:
    """The engines a request can name (engine.registry)."""
    from engine import registry

    return registry.backend_kinds()


class Runtime:
    """A job queue served by one worker thread; see the module docstring."""

    def __init__(self, device: str | None = None, models: ModelCache | None = None):
        self._device_choice = device
        self.device: str | None = None  # resolved on the worker thread before the first job
        self.models = models if models is not None else ModelCache()  # before the worker: a bad budget raises here
        self._lock = threading.RLock()
        self._wakeup = threading.Condition(self._lock)
        self._queues: dict[JobKind, deque[Job]] = {kind: deque() for kind in PRIORITY}
        self._jobs: dict[int, Job] = {}
        self._active: Job | None = None
        self._ids = itertools.count(1)
        self._listeners: list[Callable[[JobEvent], None]] = []
        self._backends: dict[str, Backend] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="sgraffito-engine", daemon=True)
        self._thread.start()

    # -- public API (any thread) --------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[JobEvent], None]) -> Callable[[], None]:
        """Call `listener(event)` on every job change; returns a function that removes it."""
        with self._lock:
            self._listeners.append(listener)
        return lambda: self._remove_listener(listener)

    def submit(self, request: Request, *, kind: JobKind | str = JobKind.GENERATE, supersede: bool = True) -> Job:
        """Queue `request` as a job of `kind` (its priority). With `supersede` (the default) older jobs of the
        same slot and kind are cancelled and their results dropped; "more like this" passes supersede=False to
        add samples next to the current ones."""
        if self._closed:
            raise RuntimeError("the runtime was shut down")
        job = Job(next(self._ids), request, JobKind(kind))
        stale = []
        with self._lock:
            if supersede and request.slot is not None:
                stale = [j for j in self._jobs.values()
                         if j.request.slot == request.slot and j.kind is job.kind and not j.state.finished]
            self._jobs[job.id] = job
            self._queues[job.kind].append(job)
        for old in stale:
            self._cancel(old, superseded=True)
        self._emit(job, "state")
        with self._lock:
            self._wakeup.notify()
        return job

    def job(self, job_id: int) -> Job | None:
        """A queued or running job (finished ones are forgotten: they hold a photo-sized request)."""
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self, kind: JobKind | str | None = None) -> list[Job]:
        """Queued and running jobs (of one kind if given), oldest first."""
        with self._lock:
            return [j for j in self._jobs.values() if kind is None or j.kind is JobKind(kind)]

    def queued(self) -> list[Job]:
        """Queued jobs in the order the worker will start them (priority, then submission)."""
        with self._lock:
            return [job for kind in PRIORITY for job in self._queues[kind]]

    @property
    def active(self) -> Job | None:
        return self._active

    def cancel(self, job_id: int) -> bool:
        """Cancel one job (queued: at once; running: at its next check). False if it already finished."""
        job = self.job(job_id)
        return job is not None and self._cancel(job)

    def cancel_active(self) -> bool:
        job = self._active
        return job is not None and self._cancel(job)

    def cancel_queued(self, slot: str | None = None, kind: JobKind | str | None = None) -> int:
        """Cancel the queued jobs (of one slot and/or kind if given); returns how many."""
        kinds = PRIORITY if kind is None else (JobKind(kind),)
        with self._lock:
            queued = [j for k in kinds for j in self._queues[k] if slot is None or j.request.slot == slot]
        return sum(self._cancel(job) for job in queued)

    def cancel_all(self, slot: str | None = None, kind: JobKind | str | None = None) -> int:
        """Cancel the queued jobs and the running one (of one slot and/or kind if given); returns how many."""
        count = self.cancel_queued(slot, kind)
        active = self._active
        if (active is not None and (slot is None or active.request.slot == slot)
                and (kind is None or active.kind is JobKind(kind))):
            count += self._cancel(active)
        return count

    def shutdown(self, wait: bool = True, timeout: float | None = 10.0) -> None:
        """Cancel everything and stop the worker."""
        self._closed = True
        self.cancel_all()
        with self._lock:
            self._wakeup.notify_all()
        if wait:
            self._thread.join(timeout)

    # -- internals ----------------------------------------------------------------------------------------

    def _remove_listener(self, listener):
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _cancel(self, job: Job, superseded: bool = False) -> bool:
        with self._lock:
            if job.state.finished:
                return False
            job.superseded = job.superseded or superseded
            job._cancel.set()
            if job.state is JobState.QUEUED:
                self._queues[job.kind].remove(job)
                self._finish(job, JobState.CANCELLED, "superseded" if job.superseded else "cancelled")
                finished = True
            else:
                job.stage = "cancelling"
                finished = False
        self._emit(job, "state")
        if finished:
            job._done.set()
        return True

    def _finish(self, job: Job, state: JobState, stage: str, candidates=(), error=None, trace=None) -> None:
        self._jobs.pop(job.id, None)
        job.state = state
        job.stage = stage
        job.candidates = tuple(candidates)
        job.error = error
        job.traceback = trace
        job.finished_at = time.time()
        if state is JobState.DONE:
            job.fraction = 1.0

    def _emit(self, job: Job, kind: str) -> None:
        with self._lock:
            event = JobEvent(kind=kind, job_id=job.id, slot=job.request.slot, state=job.state,
                             fraction=job.fraction, stage=job.stage, preview=job.preview,
                             candidates=job.candidates, error=job.error, superseded=job.superseded,
                             seconds=job.seconds, request=job.request, traceback=job.traceback,
                             job_kind=job.kind)
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # a broken listener must not kill the worker or hide other listeners
                traceback.print_exc()

    def _backend(self, name: str) -> Backend:
        if name not in self._backends:
            from engine import registry

            self._backends[name] = registry.create_backend(name)
        return self._backends[name]

    def _next(self) -> Job | None:
        """The most urgent queued job, first in first out within its kind (call with the lock held)."""
        for kind in PRIORITY:
            if self._queues[kind]:
                return self._queues[kind].popleft()
        return None

    def _work(self) -> None:
        while True:
            with self._lock:
                while not any(self._queues.values()) and not self._closed:
                    self._wakeup.wait()
                job = self._next()
                if job is None:
                    return
                job.state = JobState.RUNNING
                job.stage = "starting"
                job.started_at = time.time()
                self._active = job
            self._emit(job, "state")
            outcome = self._run(job)
            with self._lock:
                if job.superseded:
                    outcome = (JobState.CANCELLED, "superseded", (), None, None)
                elif job._cancel.is_set() and outcome[0] is JobState.DONE:
                    outcome = (JobState.CANCELLED, "cancelled", (), None, None)
                self._finish(job, *outcome)
                self._active = None
            self._emit(job, "state")
            job._done.set()

    def _run(self, job: Job):
        request = job.request
        try:
            if self.device is None:  # the worker's first job: settle the device and the thread count, once
                from engine.device import configure_threads, resolve_device

                self.device = resolve_device(self._device_choice)
                configure_threads()
            ctx = JobContext(self, job, self.device)
            backend = self._backend(request.backend)
            ctx.check_cancelled()
            from engine.device import job_threads

            with job_threads(getattr(backend, "threads", None)):
                candidates = backend.run(request, ctx)
            candidates = tuple(candidates or ())
            for candidate in candidates:
                if not isinstance(candidate, Candidate):
                    raise TypeError(f"backend {request.backend!r} returned {type(candidate).__name__}, "
                                    f"not a Candidate")
                x0, y0, x1, y1 = candidate.region
                width, height = request.size
                if x1 > width or y1 > height or x0 < 0 or y0 < 0:
                    raise TypeError(f"backend {request.backend!r} returned region {candidate.region} outside "
                                    f"the {width}x{height} photo")
            return JobState.DONE, "done", candidates, None, None
        except Cancelled:
            return JobState.CANCELLED, "superseded" if job.superseded else "cancelled", (), None, None
        except SgraffitoError as error:
            return JobState.FAILED, "failed", (), str(error), None
        except Exception as error:  # a bug in a backend: tell the user which one, keep the traceback
            message = f"{request.backend} failed: {type(error).__name__}: {error}"
            return JobState.FAILED, "failed", (), message, traceback.format_exc()
