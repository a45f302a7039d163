"""The workspace model without Qt: request groups, job events, apply/undo/redo, pin/discard, the size cap and
the mode every request names. A plain document object and a recording job queue stand in for the editor's."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from app.workspace import Workspace, build_request, generators
from engine.errors import InputError
from engine.jobs import Candidate, JobEvent, JobState, thaw
from engine.project import StoredCandidate

H, W = 32, 48
BOX = (8, 4, 24, 20)  # where the fake results go: x0, y0, x1, y1


class PlainDocument:
    """What the workspace reads and writes of app.document.Document, without Qt."""

    def __init__(self, mode="edit", image=True):
        self.mode = mode
        self.doc_id = "doc-1"
        self.label_set = SimpleNamespace(name="coco-stuff-182")
        self.original_labels = np.zeros((H, W), np.uint16)
        self.labels = self.original_labels.copy()
        self.labels[BOX[1]:BOX[3], BOX[0]:BOX[2]] = 3  # a painted change
        self.image = np.full((H, W, 3), 50, np.uint8) if image else None
        self.candidates: list[StoredCandidate] = []
        self.history: list[dict] = []
        self.hints: list[dict] = []
        self.modified = 0

    is_open = property(lambda self: self.labels.size > 0)
    size = property(lambda self: (self.labels.shape[1], self.labels.shape[0]))

    def ensure_image(self):
        if self.image is None:
            self.image = np.zeros((H, W, 3), np.uint8)
        return self.image

    def put_patch(self, layer, x, y, patch):
        h, w = patch.shape[:2]
        {"image": self.image, "labels": self.labels}[layer][y:y + h, x:x + w] = patch

    def mark_modified(self):
        self.modified += 1


class RecordingJobs:
    """Takes requests like app.engine_bridge.EngineBridge; tests finish them by hand."""

    def __init__(self):
        self.requests: dict[int, object] = {}
        self.cancelled: list[str] = []

    def submit(self, request, supersede=True):
        job_id = len(self.requests) + 1
        self.requests[job_id] = request
        return job_id

    def cancel_all(self, slot):
        self.cancelled.append(slot)


def finish(workspace, job_id, state=JobState.DONE, value=None, error=None, superseded=False):
    request = workspace.jobs.requests[job_id]
    x0, y0, x1, y1 = BOX
    candidates = ()
    if state is JobState.DONE:
        candidates = tuple(Candidate(image=np.full((y1 - y0, x1 - x0, 3), (value or seed) % 256, np.uint8),
                                     region=BOX, seed=seed) for seed in range(request.seed, request.seed + request.k))
    workspace.job_finished(JobEvent(kind="state", job_id=job_id, slot=request.slot, state=state, fraction=1.0,
                                    stage="", preview=None, candidates=candidates, error=error,
                                    superseded=superseded, seconds=0.5, request=request))


def recorder(workspace):
    """Every event the workspace emits, as (name, argument) pairs."""
    seen = []
    for name, event in vars(workspace.events).items():
        event.connect(lambda *args, name=name: seen.append((name, args[0] if args else None)))
    return seen


@pytest.fixture
def workspace():
    return Workspace(PlainDocument(), jobs=RecordingJobs())


def test_importing_the_workspace_loads_no_qt():
    code = "import sys, app.workspace; assert 'PySide6' not in sys.modules, sorted(m for m in sys.modules if 'Qt' in m)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr


def test_a_request_makes_a_group_that_collects_its_candidates(workspace):
    seen = recorder(workspace)
    job = workspace.generate(engine="fake", model="m", k=3, seed=10)
    [group] = workspace.groups.values()
    assert group.jobs == {job} and group.status == "queued" and group.request.seed == 10
    assert workspace.job_groups == {job: group.id}
    finish(workspace, job)
    assert [c.meta["seed"] for c in workspace.document.candidates] == [10, 11, 12]
    assert group.candidate_ids == [c.id for c in workspace.document.candidates] == workspace.candidate_ids()
    assert {c.request_id for c in workspace.document.candidates} == {group.id}
    assert group.jobs == set() and group.status == ""
    meta = workspace.document.candidates[0].meta
    assert (meta["backend"], meta["model"], meta["mode"], meta["box"]) == ("fake", "m", "edit", list(BOX))
    assert workspace.document.modified, "new candidates are an unsaved change"
    names = [name for name, _ in seen]
    assert names == ["group_added", "group_changed"] + ["candidate_added"] * 3 + ["group_changed"]
    second = workspace.generate(engine="fake", k=1, seed=0)
    assert len(workspace.groups) == 2 and second != job


def test_more_like_this_continues_the_seeds_in_the_same_group(workspace):
    finish(workspace, workspace.generate(engine="fake", k=2, seed=5))
    job = workspace.more_like_this(workspace.document.candidates[0].id, k=3)
    finish(workspace, job)
    assert len(workspace.groups) == 1
    assert [c.meta["seed"] for c in workspace.document.candidates] == [5, 6, 7, 8, 9]


def test_a_cancelled_request_without_candidates_leaves_no_group_and_a_failure_is_reported(workspace):
    seen = recorder(workspace)
    finish(workspace, workspace.generate(engine="fake", k=1, seed=0), JobState.CANCELLED, superseded=True)
    assert workspace.groups == {} and ("group_removed", seen[-1][1]) == seen[-1]
    finish(workspace, workspace.generate(engine="fake", k=1, seed=0), JobState.FAILED, error="model missing")
    assert ("error", "model missing") in seen
    count = len(seen)
    workspace.job_finished(SimpleNamespace(job_id=99))
    assert len(seen) == count, "another document's job is ignored"


def test_nothing_to_generate_is_an_error_event_not_an_exception(workspace):
    seen = recorder(workspace)
    workspace.document.labels[:] = workspace.document.original_labels
    assert workspace.generate(engine="fake", k=1) is None
    assert seen[-1][0] == "error" and "paint a new label" in seen[-1][1]


def test_apply_undo_redo_through_the_model(workspace):
    document = workspace.document
    finish(workspace, workspace.generate(engine="fake", k=2, seed=1), value=200)
    original = document.image.copy()
    stored = document.candidates[1]
    request_labels = workspace.groups[stored.request_id].request.labels_after
    seen = recorder(workspace)
    workspace.preview(stored.id)
    change = workspace.apply(stored.id)
    x0, y0, x1, y1 = BOX
    np.testing.assert_array_equal(document.image[y0:y1, x0:x1], stored.image)
    assert document.history[-1]["candidate"] == stored.id and stored.id in workspace.applied
    assert workspace.baseline is request_labels, "the next request diffs against the labels this one saw"
    assert workspace.previewed is None and ("preview_changed", None) in seen
    assert change.candidate_id == stored.id and change.before.shape == (y1 - y0, x1 - x0, 3)
    assert change.after is stored.image, "undo keeps the candidate's own pixels, not a copy"
    workspace.undo_apply(change)
    np.testing.assert_array_equal(document.image, original)
    assert document.history == [] and stored.id not in workspace.applied and workspace.baseline is None
    assert workspace.discard([stored.id]) == 1, "an unapplied candidate can go; its change can still be redone"
    workspace.redo_apply(change)
    np.testing.assert_array_equal(document.image[y0:y1, x0:x1], stored.image)
    assert len(document.history) == 1 and workspace.baseline is request_labels


def test_apply_records_one_undo_step_with_the_owner(workspace):
    pushed = []
    workspace.push_undo = pushed.append
    finish(workspace, workspace.generate(engine="fake", k=1, seed=1))
    change = workspace.apply(workspace.document.candidates[0].id)
    assert pushed == [change]
    assert workspace.apply("no-such-id") is None and len(pushed) == 1


def test_a_candidate_that_does_not_fit_is_refused(workspace):
    seen = recorder(workspace)
    workspace.document.candidates.append(StoredCandidate("big", "r", np.zeros((40, 40, 3), np.uint8),
                                                         {"box": [20, 0, 60, 40]}))
    assert workspace.apply("big") is None and "does not fit" in seen[-1][1]


def test_pin_discard_and_clear_unpinned(workspace):
    finish(workspace, workspace.generate(engine="fake", k=3, seed=0))
    a, b, c = (s.id for s in workspace.document.candidates)
    workspace.toggle_pin(a)
    assert workspace.document.candidates[0].pinned
    assert workspace.discard([b, None]) == 1
    assert workspace.candidate_ids() == [a, c]
    assert workspace.clear_unpinned() == 1
    assert workspace.candidate_ids() == [a]
    workspace.toggle_pin(a)
    assert workspace.clear_unpinned() == 1 and workspace.groups == {}, "an empty group goes with its last one"


def test_pruning_under_the_cap_keeps_pinned_applied_and_new_candidates():
    patch_bytes = (BOX[2] - BOX[0]) * (BOX[3] - BOX[1]) * 3
    workspace = Workspace(PlainDocument(), jobs=RecordingJobs(), cap_bytes=4 * patch_bytes)
    seen = recorder(workspace)
    finish(workspace, workspace.generate(engine="fake", k=3, seed=0))
    pinned, applied, oldest_free = (s.id for s in workspace.document.candidates)
    workspace.toggle_pin(pinned)
    workspace.apply(applied)
    workspace.document.labels[0, 0] = 5  # the next edit: the applied request's labels are the new baseline
    finish(workspace, workspace.generate(engine="fake", k=3, seed=10))
    ids = workspace.candidate_ids()
    assert pinned in ids and applied in ids and oldest_free not in ids
    assert len(ids) == 5, "over the cap: the rest are pinned, applied or new"
    notices = [arg for name, arg in seen if name == "notice"]
    assert notices and "removed the 1 oldest unpinned candidate" in notices[0]
    text, over = workspace.size_text()
    assert over and "over the cap" in text


def test_requests_name_their_mode_explicitly():
    edit = PlainDocument("edit")
    assert build_request(edit, "asset", "", k=1, seed=0).mode == "edit"
    assert build_request(edit, "asapnet", "", k=1, seed=0, mode="translate").mode == "translate"

    gray = PlainDocument("colorize")
    gray.hints = [{"x": 1.5, "y": 2.5, "radius": 2.0, "rgb": [1, 2, 3]}]
    request = build_request(gray, "pixelcnn", "", k=1, seed=0)
    assert request.mode == "colorize" and request.labels_before is None
    assert thaw(request.params)["hints"] == gray.hints

    # a label map alone: translate, whether the image is still missing or holds an applied rendering
    labels_only = PlainDocument("translate", image=False)
    labels_only.original_labels = labels_only.labels.copy()
    assert build_request(labels_only, "asapnet", "", k=1, seed=0).mode == "translate"
    labels_only.image = np.full((H, W, 3), 90, np.uint8)
    assert build_request(labels_only, "asapnet", "", k=1, seed=0).mode == "translate"
    black_photo = PlainDocument("edit")
    black_photo.image[:] = 0
    assert build_request(black_photo, "asapnet", "", k=1, seed=0).mode == "edit", "black pixels are no mode"

    unchanged = PlainDocument("edit")
    unchanged.labels = unchanged.original_labels.copy()
    with pytest.raises(InputError, match="paint a new label"):
        build_request(unchanged, "asset", "", k=1, seed=0)


def test_colorize_through_the_workspace_and_more_like_this_after_a_reload_keeps_the_mode():
    workspace = Workspace(PlainDocument("colorize"), jobs=RecordingJobs())
    job = workspace.generate(mode="colorize", engine="pixelcnn", model="demo", k=1, seed=3,
                             params={"temperature": 0.5})
    assert workspace.jobs.requests[job].mode == "colorize"
    finish(workspace, job)
    workspace.reload()  # as after opening the saved project: groups rebuilt from the candidates, no request
    [group] = workspace.groups.values()
    assert group.request is None and group.next_seed == 4 and group.meta["mode"] == "colorize"
    job = workspace.more_like_this(workspace.document.candidates[0].id, k=2)
    request = workspace.jobs.requests[job]
    assert (request.mode, request.backend, request.model, request.seed, request.k) == ("colorize", "pixelcnn",
                                                                                        "demo", 4, 2)
    assert request.params["temperature"] == 0.5


def test_a_new_document_cancels_the_old_ones_jobs_and_reloads_its_candidates(workspace):
    seen = recorder(workspace)
    workspace.generate(engine="fake", k=1, seed=0)
    document = workspace.document
    document.doc_id = "doc-2"
    document.candidates = [StoredCandidate("c1", "r1", np.zeros((4, 4, 3), np.uint8), {"seed": 7, "box": [0, 0, 4, 4]})]
    document.history = [{"candidate": "c1"}]
    workspace.reload()
    assert workspace.jobs.cancelled == ["doc-1"] and workspace.slot == "doc-2"
    assert list(workspace.groups) == ["r1"] and workspace.job_groups == {}
    assert workspace.applied == {"c1"} and seen[-1] == ("reset", None)


def test_the_model_chooser_order_comes_from_the_registry():
    models = [SimpleNamespace(name=n, kind=k) for n, k in
              (("pc", "pixelcnn"), ("tok", "vqgan"), ("render", "asapnet"), ("land", "asset"), ("col", "coltran"))]
    assert [m.name for m in generators(models, "edit")] == ["land", "render"]
    assert [m.name for m in generators(models, "colorize")] == ["col", "pc"]
    assert [m.name for m in generators(models, "translate")] == ["render"], "no colorizer in translate mode"
    assert generators(models, "empty") == [] and generators(models, "") == []
