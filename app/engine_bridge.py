"""The engine runtime as Qt signals: every runtime callback arrives on the UI thread, so the UI never blocks.

The runtime calls its listeners on its worker thread. `EngineBridge` re-emits each JobEvent through a signal of
a QObject that lives on the UI thread; Qt queues cross-thread emissions, so slots run in the event loop like
any other event (napari's thread_worker / krita-ai-diffusion's 20 ms pump, without a pump). The runtime throttles
progress to ~20 events per second, so a backend that reports every token cannot flood the queue.

One bridge, one runtime per window: the gallery's generation jobs and the live preview's renderings go to the
same runtime, whose one worker owns the device and runs live previews first (engine.jobs, "Job kinds and
priorities"). `bridge_for(window)` finds that bridge. The bridge's counts and bulk cancels (`pending`, `busy`,
`active_job`, `cancel_queued`, `cancel_all`) concern generation jobs unless given `kind` (None: every kind):
Cancel Generation and the progress widget leave the live preview alone, which manages its own jobs.
"""

from __future__ import annotations

import logging
import sys
import threading

from PySide6.QtCore import QObject, Qt, Signal, Slot

from engine.jobs import JobEvent, JobKind, JobState, Request, Runtime

GENERATE = JobKind.GENERATE

log = logging.getLogger(__name__)


class EngineBridge(QObject):
    changed = Signal(object)  # JobEvent: any state change or progress step of any job
    progress = Signal(object)  # JobEvent of kind "progress"
    finished = Signal(object)  # JobEvent of a job that reached done, failed or cancelled
    failed = Signal(str)  # the user-facing message of a failed job
    models_listed = Signal(list)  # engine.model_store.ModelInfo list, from `list_models_async`
    _event = Signal(object)

    def __init__(self, runtime: Runtime | None = None, parent: QObject | None = None, *, device: str | None = None):
        super().__init__(parent)
        # A backend's Python code (sampling loops between torch ops) holds the GIL; the UI thread gets it back only
        # at the next switch. 1 ms instead of CPython's 5 ms keeps the event loop's stalls short while costing
        # the worker almost nothing (it only switches when the UI thread actually wants to run).
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
        self._runtime = runtime
        self._device = device
        self._owns_runtime = runtime is None
        self._remove_listener = lambda: None
        # queued explicitly: the listener below emits from the worker thread
        self._event.connect(self._dispatch, Qt.ConnectionType.QueuedConnection)
        if runtime is not None:
            self._remove_listener = runtime.add_listener(self._forward)

    @property
    def runtime(self) -> Runtime:
        """The runtime, started on first use: a window that never generates never starts the worker thread."""
        if self._runtime is None:
            self._runtime = Runtime(device=self._device)
            self._remove_listener = self._runtime.add_listener(self._forward)
        return self._runtime

    def _forward(self, event: JobEvent) -> None:
        try:
            self._event.emit(event)
        except RuntimeError:  # the bridge was deleted (window closed) while the worker still reports
            self._remove_listener()

    def submit(self, request: Request, *, kind: JobKind | str = GENERATE, supersede: bool = True) -> int:
        """Queue `request` as a job of `kind`; returns the job id. Superseding replaces the same slot's older
        jobs of the same kind only (a new stroke's preview never cancels a generation, nor the reverse)."""
        return self.runtime.submit(request, kind=kind, supersede=supersede).id

    def cancel(self, job_id: int) -> bool:
        return self._runtime is not None and self._runtime.cancel(job_id)

    def cancel_active(self, kind: JobKind | str | None = GENERATE) -> bool:
        active = self.active_job(kind)
        return active is not None and self._runtime.cancel(active.id)

    def cancel_queued(self, slot: str | None = None, kind: JobKind | str | None = GENERATE) -> int:
        return 0 if self._runtime is None else self._runtime.cancel_queued(slot, kind)

    def cancel_all(self, slot: str | None = None, kind: JobKind | str | None = GENERATE) -> int:
        return 0 if self._runtime is None else self._runtime.cancel_all(slot, kind)

    def pending(self, slot: str | None = None, kind: JobKind | str | None = GENERATE) -> tuple[int, int]:
        """(running, queued) job counts of `kind`, optionally of one document."""
        if self._runtime is None:
            return 0, 0
        jobs = [j for j in self._runtime.jobs(kind) if slot is None or j.request.slot == slot]
        return (sum(j.state is JobState.RUNNING for j in jobs), sum(j.state is JobState.QUEUED for j in jobs))

    def active_job(self, kind: JobKind | str | None = GENERATE):
        """The running engine.jobs.Job (if it is of `kind`), or None."""
        active = None if self._runtime is None else self._runtime.active
        if active is None or (kind is not None and active.kind is not JobKind(kind)):
            return None
        return active

    def busy(self, slot: str | None = None, kind: JobKind | str | None = GENERATE) -> bool:
        return any(self.pending(slot, kind))

    def list_models_async(self) -> None:
        """Scan the model folders off the UI thread (engine.model_store imports torch: seconds)."""

        def scan():
            try:
                from engine.model_store import list_models

                models = list_models()
            except Exception as error:  # an unreadable models folder must not kill the scan thread silently
                self.failed.emit(f"cannot list models: {error}")
                models = []
            self.models_listed.emit(models)

        threading.Thread(target=scan, name="sgraffito-models", daemon=True).start()

    def shutdown(self) -> None:
        self._remove_listener()
        if self._owns_runtime and self._runtime is not None:
            self._runtime.shutdown(wait=False)

    @Slot(object)
    def _dispatch(self, event: JobEvent) -> None:
        self.changed.emit(event)
        if event.kind == "progress":
            self.progress.emit(event)
        elif event.state.finished:
            self.finished.emit(event)
            if event.state is JobState.FAILED and event.error:
                if event.traceback:  # a bug in a backend: the dialog shows the message, the log the details
                    log.error("job %d failed:\n%s", event.job_id, event.traceback)
                self.failed.emit(event.error)


def bridge_for(window) -> EngineBridge:
    """The window's one bridge (and so its one runtime): the one already installed (by the gallery or an earlier
    call), else a new one parented to the window and shut down when the application quits."""
    bridge = getattr(window, "engine_bridge", None) or getattr(getattr(window, "gallery", None), "bridge", None)
    if bridge is None:
        from PySide6.QtWidgets import QApplication

        bridge = EngineBridge(parent=window)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(bridge.shutdown)
    window.engine_bridge = bridge
    return bridge
