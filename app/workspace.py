"""The document's generation state as a plain Python model: no Qt here (napari's / krita-ai-diffusion's model
layer). Widgets bind to it: they call its methods and listen to `workspace.events`; nothing here knows a widget.

Per document it owns
- the candidate groups, one per request (request id, the request, its running jobs, status, candidate ids);
- the stored candidates themselves (engine.project.StoredCandidate in `document.candidates`, so they are saved
  in the project), which of them are applied (read from `document.history`) and the label baseline;
- the size cap: when a new batch would exceed it, the oldest unpinned, unapplied candidates are removed;
- request building, with the document mode ("edit", "colorize", "translate") always named in the request.

The document is duck-typed (app.document.Document in the editor, a plain object in tests): it has `candidates`,
`history`, `hints`, `labels`, `original_labels`, `image`, `mode`, `label_set`, `doc_id`, `is_open`, `size`,
`ensure_image()`, `put_patch(layer, x, y, patch)` (write without undo, tell the views) and `mark_modified()`.
Jobs go out through `jobs` (app.engine_bridge.EngineBridge in the editor: `submit(request, supersede=...) -> job
id` and `cancel_all(slot)`); their events come back through `job_changed` and `job_finished`, which the owner
calls on the thread the listeners may run on (the UI thread in the editor).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np

from engine import registry
from engine.errors import InputError
from engine.jobs import JobEvent, JobState, Request, thaw
from engine.project import StoredCandidate

CAP_BYTES = 512 * 2 ** 20  # raw pixels of all kept candidates; PNG in the project is usually smaller
KEEP_REQUESTS = 4  # groups that keep their request's pixels for "more like this"; older ones rebuild it


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _mb(nbytes: int) -> str:
    return f"{nbytes / 2 ** 20:.0f} MB" if nbytes >= 2 ** 20 else f"{nbytes / 2 ** 10:.0f} kB"


# ---- requests ------------------------------------------------------------------------------------------------
def build_request(document, engine: str, model: str, *, k: int, seed: int, mode: str | None = None,
                  params: dict | None = None, baseline: np.ndarray | None = None,
                  fallback: np.ndarray | None = None, notes: list[str] | None = None) -> Request:
    """A snapshot of the document for one Generate: the current image (with applied candidates), the labels
    as they were after the last applied candidate (`baseline`, else as loaded) and as painted now.
    `mode` (default: the document's) is passed on to the engine as it is; nothing is inferred from pixels.

    In edit mode the models need every pixel labelled: unlabeled pixels are filled first (`fill_unlabeled`: from
    `fallback`, the photo's automatic segmentation, else the nearest label), with the painted change as the
    request's explicit mask; what was done is appended to `notes` (a message for the user), if given."""
    if not document.is_open:
        raise InputError("open a photo or a label map first")
    mode = mode or document.mode
    labels = document.labels
    before = document.original_labels if baseline is None else baseline
    params = dict(params or {})
    common = dict(backend=engine, model=model, mode=mode, k=k, seed=seed, label_set=document.label_set.name,
                  slot=document.doc_id)
    if mode == "colorize":
        if document.hints:
            params.setdefault("hints", list(document.hints))
        return Request(photo=document.image, params=params, **common)
    # a document made from a label map alone has no image until a rendering is applied; the request still
    # needs a photo of the map's size (translate mode does not read it)
    photo = document.image if document.image is not None else np.zeros((*labels.shape, 3), np.uint8)
    if mode == "edit" and not (labels != before).any():
        raise InputError("nothing to generate: paint a new label over part of the photo first")
    mask = None
    unlabeled = getattr(document.label_set, "unlabeled", None)
    if mode == "edit" and unlabeled is not None and ((before == unlabeled).any() or (labels == unlabeled).any()):
        mask = labels != before  # the painted change, decided before the holes are filled
        before, labels, note = fill_unlabeled(before, labels, unlabeled, fallback)
        if notes is not None and note:
            notes.append(note)
    return Request(photo=photo, labels_before=before, labels_after=labels, mask=mask, params=params, **common)


def nearest_labels(labels: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """`labels` with every pixel of `holes` set to the label of the nearest pixel outside `holes` (Euclidean
    distance transform; one pass whatever the number of labels). `holes` must not cover everything."""
    import cv2

    index = cv2.distanceTransformWithLabels(holes.astype(np.uint8), cv2.DIST_L2, 5,
                                            labelType=cv2.DIST_LABEL_PIXEL)[1]
    values = labels[~holes]  # the source pixels in raster order: OpenCV numbers them 1, 2, ... in that order
    out = labels.copy()
    out[holes] = values[index[holes] - 1]
    return out


def fill_unlabeled(before: np.ndarray, after: np.ndarray, unlabeled: int,
                   fallback: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(before, after, note) with no unlabeled pixel, so no model refuses the map (ASSET reads every id).

    The photo's map (`before`) is completed from `fallback` (the automatic segmentation of the photo, when there
    is one) and then from the nearest labelled pixel (of the map; of the painted labels if the map has none);
    `after` takes those labels wherever it is unlabeled itself, so the painted change stays exactly what it was.
    `note` says what was filled and what the user can do for better results ("" when nothing worth saying)."""
    base = np.array(before, dtype=np.uint16, copy=True)
    holes = base == unlabeled
    share = float(holes.mean()) if holes.size else 0.0
    from_fallback = False
    if fallback is not None and fallback.shape == base.shape and holes.any():
        known = holes & (fallback != unlabeled)
        if known.any():
            base[known] = fallback[known]
            holes &= ~known
            from_fallback = True
    note = ""
    if holes.any():
        source = base
        if holes.all():  # a photo with no map at all: only the painted labels say anything about it
            source = np.asarray(after, dtype=np.uint16)
            holes = source == unlabeled
        if holes.any() and not holes.all():
            base = nearest_labels(source, holes)
        if share >= 0.01:
            note = (f"{share:.0%} of the photo had no label and took the nearest painted label, so the model "
                    f"sees a rough map there: for better candidates segment the photo (Tools > Segment Again) or "
                    f"open its label map (File > Open Label Map…)")
    elif from_fallback and share >= 0.01:
        note = f"{share:.0%} of the photo had no label and took the automatic segmentation's labels"
    after = np.asarray(after, dtype=np.uint16)
    after = np.where(after == unlabeled, base, after).astype(np.uint16)
    return base, after, note


NO_LABEL_MAP = ("This photo has no label map yet, and the models edit a photo through its labels: let Sgraffito label "
                "it (Tools > Segment Again, with the model of your choice), open its label map (File > Open Label "
                "Map…), or label the photo yourself (Fill labels all of it at once; the superpixel brush and GrabCut "
                "follow its edges) and keep that as its map (File > Keep Labels as the Photo's Map); then paint the "
                "change.")


def lacks_label_map(document) -> bool:
    """A photo opened without a label map: every pixel of the map it was opened with is unlabeled."""
    unlabeled = getattr(document.label_set, "unlabeled", None)
    before = document.original_labels
    return unlabeled is not None and before.size > 0 and not (before != unlabeled).any()


def colorize_params(document, engine: str, temperature: float, hint_tolerance: int = 0) -> dict:
    """The Colorize panel's sampling parameters; hints in photo pixels, as the backends read them."""
    params = {"temperature": float(temperature), "hints": [dict(h) for h in document.hints]}
    if engine == "coltran":  # ColTran restricts hinted cells to the hint's colour bin +- this many levels
        params["hint_tolerance"] = int(hint_tolerance)
    return params


def colorize_request(document, engine: str, model: str, *, k: int, seed: int, temperature: float = 1.0,
                     hint_tolerance: int = 0) -> Request:
    """The request one Colorize makes: the document's image with its hints in photo pixels."""
    return build_request(document, engine, model, mode="colorize", k=k, seed=seed,
                         params=colorize_params(document, engine, temperature, hint_tolerance))


def _default_model(engine: str) -> str:
    """The model a request with model "" runs (the engine's default), so candidates and exports name it."""
    try:
        return registry.spec(engine).default_model
    except InputError:
        return ""


def generators(models: list, mode: str) -> list:
    """The models (engine.model_store.ModelInfo) that generate in document mode `mode`, in the registry's order
    of the engines serving it (ASSET before ASAPNet for edits); models of other modes (a colorizer in
    translate mode), tokenizers and other engines without a mode are left out."""
    serving = [s.kind for s in registry.specs(mode)] if mode else []
    usable = [m for m in models if m.kind in serving]
    return sorted(usable, key=lambda m: (serving.index(m.kind), m.kind, m.name))


# ---- observable --------------------------------------------------------------------------------------------
class Event:
    """A list of listener callbacks; `emit` calls them in the order they connected."""

    def __init__(self):
        self._listeners: list[Callable[..., Any]] = []

    def connect(self, listener: Callable[..., Any]) -> Callable[..., Any]:
        self._listeners.append(listener)
        return listener

    def disconnect(self, listener: Callable[..., Any]) -> None:
        self._listeners.remove(listener)

    def emit(self, *args) -> None:
        for listener in list(self._listeners):
            listener(*args)


class WorkspaceEvents:
    def __init__(self):
        self.reset = Event()  # (): reloaded from the document; everything changed
        self.group_added = Event()  # (RequestGroup)
        self.group_changed = Event()  # (RequestGroup): status, progress preview or candidate count
        self.group_removed = Event()  # (RequestGroup)
        self.candidate_added = Event()  # (StoredCandidate)
        self.candidate_changed = Event()  # (StoredCandidate): pinned or applied
        self.candidates_removed = Event()  # (set of ids)
        self.preview_changed = Event()  # (StoredCandidate | None): the candidate shown over the canvas
        self.error = Event()  # (str): a message for the user (failed job, nothing to generate, ...)
        self.notice = Event()  # (str): a transient status message


@dataclass
class RequestGroup:
    id: str  # the request id, StoredCandidate.request_id of its candidates
    title: str
    request: Request | None  # None for groups loaded from a project (pixels not kept): rebuilt on demand
    meta: dict  # backend, model, mode, params, label_set
    next_seed: int = 0
    jobs: set[int] = field(default_factory=set)
    status: str = ""
    candidate_ids: list[str] = field(default_factory=list)  # in order of arrival
    preview: np.ndarray | None = None  # the sample taking shape while a job runs


@dataclass
class AppliedChange:
    """What one Apply changed, for undo: the candidate, the image rectangle's pixels before and after, the
    history entry and the label baseline before and after."""

    candidate_id: str
    x: int
    y: int
    before: np.ndarray  # a copy of the pixels the candidate replaced
    after: np.ndarray  # the candidate's own pixels (its array, not a copy: redo works after a discard too)
    entry: dict
    baseline_before: np.ndarray | None
    baseline_after: np.ndarray | None
    text: str


class Workspace:
    def __init__(self, document, *, jobs=None, push_undo: Callable[[AppliedChange], None] | None = None,
                 cap_bytes: int = CAP_BYTES):
        """`jobs.submit(request, supersede=bool) -> job id` queues a request, `jobs.cancel_all(slot)` cancels a
        document's jobs; `push_undo(change)` records an applied change (already done) on the owner's undo stack."""
        self.document = document
        self.events = WorkspaceEvents()
        self.jobs = jobs
        self.push_undo = push_undo
        self.cap_bytes = cap_bytes
        self.groups: dict[str, RequestGroup] = {}
        self.job_groups: dict[int, str] = {}
        self.baseline: np.ndarray | None = None  # labels as the last applied candidate's request saw them
        self.previewed: str | None = None
        self.slot: str | None = None  # the doc_id whose jobs these are
        self.last_notice = ""
        # the photo's automatic segmentation (app.segmentation): its labels fill unlabeled pixels at Generate
        # (even after its undo step was undone); while it runs, a Generate that needs it waits for it
        self.segmentation: np.ndarray | None = None
        self.segmenting = False
        self.deferred: dict | None = None  # the Generate waiting for the segmentation
        self.reload()

    # ---- document ------------------------------------------------------------------------------------------
    def reload(self) -> None:
        """A new document (or a loaded project): its stored candidates, grouped by request."""
        previous, document = self.slot, self.document
        if previous and previous != document.doc_id and self.jobs is not None:
            self.jobs.cancel_all(previous)  # the old document's jobs can no longer be applied anywhere
        self.groups.clear()
        self.job_groups.clear()
        self.baseline = None
        self.previewed = None
        self.segmentation = None
        self.segmenting = False
        self.deferred = None
        self.slot = document.doc_id or None
        for candidate in document.candidates:
            if candidate.request_id not in self.groups:
                meta = {k: candidate.meta.get(k) for k in ("backend", "model", "mode", "params", "label_set")}
                self._new_group(candidate.request_id, None, meta, announce=False)
            group = self.groups[candidate.request_id]
            group.next_seed = max(group.next_seed, int(candidate.meta.get("seed", 0)) + 1)
            group.candidate_ids.append(candidate.id)
        self.events.reset.emit()

    @property
    def applied(self) -> set[str]:
        """Ids of the candidates applied to the image (the history is the record, so undo keeps it right)."""
        return {entry["candidate"] for entry in self.document.history if entry.get("candidate")}

    def candidate(self, candidate_id: str | None) -> StoredCandidate | None:
        return next((c for c in self.document.candidates if c.id == candidate_id), None)

    def candidate_ids(self) -> list[str]:
        """Groups oldest first, each group's candidates in order of arrival."""
        return [i for group in self.groups.values() for i in group.candidate_ids]

    def total_bytes(self) -> int:
        return sum(c.image.nbytes for c in self.document.candidates)

    def size_text(self) -> tuple[str, bool]:
        """The gallery's size line, and whether the candidates are over the cap."""
        total, count = self.total_bytes(), len(self.document.candidates)
        text = f"{count} candidate{'s' * (count != 1)} · {_mb(total)} of {_mb(self.cap_bytes)} (saved losslessly)"
        over = total > self.cap_bytes
        if over:
            text += " — over the cap: the rest are pinned, applied or new; discard some to make room"
        elif self.last_notice:
            text += f"\n{self.last_notice}"
        return text, over

    # ---- generating ----------------------------------------------------------------------------------------
    def generate(self, *, engine: str, model: str = "", mode: str | None = None, k: int,
                 params: dict | None = None, seed: int | None = None) -> int | None:
        """Snapshot the document and queue a request for `engine` (a registry kind) and `model`; `mode`
        defaults to the document's. Returns the job id, or None after telling the user why not (events.error)."""
        if self.segmenting and (mode or self.document.mode) == "edit" and self._needs_segmentation():
            self.deferred = dict(engine=engine, model=model, mode=mode, k=k, params=params, seed=seed)
            self.events.notice.emit("Labelling the photo first: Generate starts when the segmentation is done "
                                    "(Cancel in the status bar stops both)")
            return None
        if seed is None:
            seed = secrets.randbelow(1_000_000)  # short enough to read in the gallery and type into the CLI
        notes: list[str] = []
        try:
            request = build_request(self.document, engine, model, k=k, seed=seed, mode=mode, params=params,
                                    baseline=self.baseline, fallback=self.segmentation, notes=notes)
        except InputError as error:
            self.events.error.emit(str(error))
            return None
        for note in notes:
            self.events.notice.emit(note)
        return self.submit(request)

    def _needs_segmentation(self) -> bool:
        """The labels a Generate compares with have unlabeled pixels (the segmentation would fill them)."""
        unlabeled = getattr(self.document.label_set, "unlabeled", None)
        before = self.document.original_labels if self.baseline is None else self.baseline
        return unlabeled is not None and bool((before == unlabeled).any())

    def segmentation_done(self, labels: np.ndarray | None) -> int | None:
        """The photo's segmentation arrived (`labels`) or ended without a result (None: failed or cancelled).
        Runs the Generate that waited for it, if any (without a result it is dropped: returns None)."""
        self.segmenting = False
        if labels is not None:
            self.segmentation = labels
        deferred, self.deferred = self.deferred, None
        if deferred is None or labels is None:
            return None
        return self.generate(**deferred)

    def submit(self, request: Request, *, group_id: str | None = None, supersede: bool = True) -> int:
        """Queue a built request as a new group; `supersede` cancels this document's queued jobs."""
        meta = {"backend": request.backend, "model": request.model or _default_model(request.backend),
                "mode": request.mode,
                "params": thaw(request.params), "label_set": request.label_set}
        group = self._new_group(group_id or uuid.uuid4().hex[:12], request, meta)
        group.next_seed = request.seed + request.k
        # a request holds a copy of the photo and both label maps: keep it for the latest groups only; "more like
        # this" on an older group rebuilds it from the document as it is now
        for old in list(self.groups.values())[:-KEEP_REQUESTS]:
            old.request = None
        return self._submit(group, request, supersede)

    def more_like_this(self, candidate_id: str | None, *, k: int) -> int | None:
        """The candidate's request again with the next unused seeds, added to the same group."""
        candidate = self.candidate(candidate_id)
        if candidate is None:
            return None
        group = self.groups[candidate.request_id]
        if group.request is not None:
            request = group.request.with_seed(group.next_seed, k=k)
        else:
            meta = group.meta
            try:
                request = build_request(self.document, meta["backend"], meta.get("model") or "", k=k,
                                        seed=group.next_seed, mode=meta.get("mode"), params=meta.get("params"),
                                        baseline=self.baseline, fallback=self.segmentation)
            except InputError as error:
                self.events.error.emit(str(error))
                return None
            group.request = request
        group.next_seed += k
        return self._submit(group, request, supersede=False)

    def _new_group(self, group_id: str, request: Request | None, meta: dict, announce: bool = True) -> RequestGroup:
        group = RequestGroup(group_id, f"{meta.get('model') or meta.get('backend')}", request, meta)
        self.groups[group_id] = group
        if announce:
            self.events.group_added.emit(group)
        return group

    def _submit(self, group: RequestGroup, request: Request, supersede: bool) -> int:
        if self.jobs is None:
            raise RuntimeError("this workspace has no runtime to submit requests to")
        try:
            job_id = self.jobs.submit(request, supersede=supersede)
        except Exception:
            self._drop_if_empty(group)  # never left behind as an empty "queued" group
            raise
        group.jobs.add(job_id)
        self.job_groups[job_id] = group.id
        group.status = "queued"
        self.events.group_changed.emit(group)
        return job_id

    def job_changed(self, event: JobEvent) -> None:
        """Progress of any job: a running one of ours shows its stage and the sample taking shape."""
        group = self.groups.get(self.job_groups.get(event.job_id, ""))
        if group is not None and event.state is JobState.RUNNING:
            group.status = f"{event.fraction:.0%} {event.stage}"
            if event.preview is not None:
                group.preview = event.preview
            self.events.group_changed.emit(group)

    def job_finished(self, event: JobEvent) -> None:
        group = self.groups.get(self.job_groups.pop(event.job_id, None) or "")
        if group is None:
            return  # another document's job, or one from before a reset
        group.jobs.discard(event.job_id)
        if event.state is JobState.DONE:
            fresh = {self._store(group, event, candidate) for candidate in event.candidates}
            self._prune(keep=fresh)
            self.document.mark_modified()  # candidates live in the project file
        if not group.jobs:
            group.preview = None
        group.status = "" if not group.jobs else "queued"
        if event.state is JobState.CANCELLED and not group.jobs:
            group.status = "superseded" if event.superseded else "cancelled"
        elif event.state is JobState.FAILED and not group.jobs:
            group.status = f"failed: {event.error or 'generation failed'}"
        # a group left without candidates and jobs goes (a failed first Generate leaves no stale "0 candidates"
        # row); one with candidates says why its last job failed. Before the error dialog: it may be modal.
        self._drop_if_empty(group)
        if event.state is JobState.FAILED:
            message = event.error or "generation failed"
            if group.meta.get("mode") == "edit" and lacks_label_map(self.document):
                message += "\n\n" + NO_LABEL_MAP  # the engine names an id; the user needs the way out
            self.events.error.emit(message)

    def _drop_if_empty(self, group: RequestGroup) -> None:
        if group.id in self.groups and not group.candidate_ids and not group.jobs:
            del self.groups[group.id]
            self.events.group_removed.emit(group)
        elif group.id in self.groups:
            self.events.group_changed.emit(group)

    def _store(self, group: RequestGroup, event: JobEvent, candidate) -> str:
        meta = {**group.meta, "seed": candidate.seed, "box": list(candidate.region),
                "seconds": round(candidate.seconds or event.seconds / max(1, len(event.candidates)), 3),
                "info": thaw(candidate.info), "created": _now()}
        stored = StoredCandidate(id=uuid.uuid4().hex[:16], request_id=group.id,
                                 image=np.array(candidate.image), meta=meta)
        self.document.candidates.append(stored)
        group.candidate_ids.append(stored.id)
        self.events.candidate_added.emit(stored)
        return stored.id

    # ---- candidates ----------------------------------------------------------------------------------------
    def preview(self, candidate_id: str | None) -> None:
        """Show a candidate over the canvas (None: none)."""
        stored = self.candidate(candidate_id)
        self.previewed = stored.id if stored is not None else None
        self.events.preview_changed.emit(stored)

    def apply(self, candidate_id: str | None) -> AppliedChange | None:
        """Paste the candidate into the image; `push_undo` records it as one undo step. None (after saying why
        on events.error when it is not obvious) when there is nothing to apply."""
        stored = self.candidate(candidate_id)
        if stored is None:
            return None
        document = self.document
        x0, y0, x1, y1 = stored.meta["box"]
        if x1 > document.size[0] or y1 > document.size[1]:
            self.events.error.emit(f"the candidate ({x1 - x0}×{y1 - y0} at {x0}, {y0}) does not fit this image")
            return None
        group = self.groups.get(stored.request_id)
        request = group.request if group is not None else None
        entry = {"candidate": stored.id, "model": stored.meta.get("model"), "backend": stored.meta.get("backend"),
                 "seed": stored.meta.get("seed"), "params": stored.meta.get("params"), "box": [x0, y0, x1, y1],
                 "applied": _now()}
        image = document.ensure_image()
        change = AppliedChange(
            candidate_id=stored.id, x=x0, y=y0, before=image[y0:y1, x0:x1].copy(), after=stored.image, entry=entry,
            baseline_before=self.baseline, baseline_after=None if request is None else request.labels_after,
            text=f"Apply candidate (seed {stored.meta.get('seed')})")
        self.redo_apply(change)
        self.preview(None)
        if self.push_undo is not None:
            self.push_undo(change)
        return change

    def redo_apply(self, change: AppliedChange) -> None:
        self.document.put_patch("image", change.x, change.y, change.after)
        self.document.history.append(change.entry)
        self.baseline = change.baseline_after
        self._announce(change.candidate_id)

    def undo_apply(self, change: AppliedChange) -> None:
        self.document.put_patch("image", change.x, change.y, change.before)
        history = self.document.history
        if history and history[-1] is change.entry:
            history.pop()
        self.baseline = change.baseline_before
        self._announce(change.candidate_id)

    def _announce(self, candidate_id: str) -> None:
        stored = self.candidate(candidate_id)
        if stored is not None:
            self.events.candidate_changed.emit(stored)

    def toggle_pin(self, candidate_id: str | None) -> None:
        stored = self.candidate(candidate_id)
        if stored is None:
            return
        stored.pinned = not stored.pinned
        self.events.candidate_changed.emit(stored)
        self.document.mark_modified()

    def discard(self, candidate_ids) -> int:
        return self._remove({i for i in candidate_ids if i})

    def clear_unpinned(self) -> int:
        removed = self._remove({c.id for c in self.document.candidates if not c.pinned})
        if removed:
            self.events.notice.emit(f"removed {removed} unpinned candidate{'s' * (removed != 1)}")
        return removed

    def _remove(self, ids: set[str]) -> int:
        document = self.document
        gone = {c.id for c in document.candidates if c.id in ids}
        if not gone:
            return 0
        document.candidates[:] = [c for c in document.candidates if c.id not in gone]
        touched = []
        for group in self.groups.values():
            kept = [i for i in group.candidate_ids if i not in gone]
            if len(kept) != len(group.candidate_ids):
                group.candidate_ids = kept
                touched.append(group)
        self.events.candidates_removed.emit(gone)
        for group in touched:
            if not group.candidate_ids and not group.jobs:
                del self.groups[group.id]
                self.events.group_removed.emit(group)
            else:
                self.events.group_changed.emit(group)
        if self.previewed in gone:
            self.preview(None)
        document.mark_modified()
        return len(gone)

    def _prune(self, keep: set[str] = frozenset()) -> None:
        """Over the cap: remove the oldest unpinned, unapplied candidates (never the batch that just arrived,
        `keep`), and say so."""
        excess = self.total_bytes() - self.cap_bytes
        applied = self.applied
        victims = []
        for candidate in self.document.candidates:
            if excess <= 0:
                break
            if not candidate.pinned and candidate.id not in applied and candidate.id not in keep:
                victims.append(candidate.id)
                excess -= candidate.image.nbytes
        if victims:
            self._remove(set(victims))
            message = (f"removed the {len(victims)} oldest unpinned candidate{'s' * (len(victims) != 1)} to stay "
                       f"under the {_mb(self.cap_bytes)} cap; pin candidates to keep them")
            self.last_notice = message
            self.events.notice.emit(message)
