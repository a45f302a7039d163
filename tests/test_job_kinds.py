"""Job kinds: live preview, edit and colorize jobs share one worker, in the documented priority order; superseding
stays within a kind; cancelling one job leaves the others running. With the fake backend, then with the real
ASAPNet demo model."""

import threading

import numpy as np
import pytest

from engine.jobs import PRIORITY, JobKind, JobState, Request
from tests import fake_backend
from tests.fake_backend import scene

TIMEOUT = 60  # only a hang fails; nothing here asserts on timing


class Order:
    """Records which job the worker started, in order, and on which thread."""

    def __init__(self):
        self.started, self.threads = [], set()
        self.lock = threading.Lock()

    def __call__(self, event):
        if event.kind == "state" and event.state is JobState.RUNNING and event.job_id not in self.started:
            with self.lock:  # (a running job asked to stop reports RUNNING again, stage "cancelling")
                self.started.append(event.job_id)
                self.threads.add(threading.current_thread().name)


@pytest.fixture
def gate(tmp_path):
    """A generate job that holds the worker until `open()`: the other jobs queue up behind it meanwhile."""

    class Gate:
        path = tmp_path / "release"

        def request(self):
            photo, _, _ = scene(16)
            return Request(backend=fake_backend.NAME, photo=photo, params={"hold_until": str(self.path)})

        def open(self):
            self.path.touch()

    return Gate()


def wait_running(job):
    for _ in range(TIMEOUT * 100):
        if job.state is JobState.RUNNING:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{job} never started")


def fake_jobs(runtime, **overrides):
    """An edit job and a colorize job (two documents) and a live preview of the first document."""
    photo, before, after = scene()
    gray = photo[:, :, 1].copy()
    edit = runtime.submit(Request(backend=fake_backend.NAME, photo=photo, labels_before=before, labels_after=after,
                                  mode="edit", k=2, slot="doc-1", **overrides.get("edit", {})))
    colorize = runtime.submit(Request(backend=fake_backend.NAME, photo=gray, mode="colorize", k=2, slot="doc-2",
                                      **overrides.get("colorize", {})))
    live = runtime.submit(Request(backend=fake_backend.NAME, photo=photo, labels_before=before, labels_after=after,
                                  mode="translate", slot="doc-1"), kind=JobKind.LIVE_PREVIEW)
    return edit, colorize, live


def test_the_priorities_are_documented_in_order():
    import engine.jobs

    assert PRIORITY == (JobKind.LIVE_PREVIEW, JobKind.GENERATE)
    assert JobKind.LIVE_PREVIEW.priority < JobKind.GENERATE.priority
    doc = engine.jobs.__doc__
    assert doc.index("1. `JobKind.LIVE_PREVIEW`") < doc.index("2. `JobKind.GENERATE`")


def test_live_preview_runs_first_then_generation_jobs_in_submission_order_on_one_worker(runtime, gate):
    order = Order()
    runtime.add_listener(order)
    blocker = runtime.submit(gate.request())
    wait_running(blocker)
    edit, colorize, live = fake_jobs(runtime)
    assert [j.id for j in runtime.queued()] == [live.id, edit.id, colorize.id]
    gate.open()
    for job in (blocker, edit, colorize, live):
        assert job.wait(TIMEOUT) and job.state is JobState.DONE, job
    assert order.started == [blocker.id, live.id, edit.id, colorize.id]
    assert order.threads == {"sgraffito-engine"}, "one worker runs every kind"
    assert live.kind is JobKind.LIVE_PREVIEW and edit.kind is JobKind.GENERATE
    assert len(edit.candidates) == 2 and len(colorize.candidates) == 2 and len(live.candidates) == 1


def test_a_new_live_preview_supersedes_only_the_older_live_preview_of_its_slot(runtime, gate):
    blocker = runtime.submit(gate.request())
    wait_running(blocker)
    edit, colorize, live = fake_jobs(runtime)
    photo, before, after = scene()
    newer = runtime.submit(Request(backend=fake_backend.NAME, photo=photo, labels_before=before,
                                   labels_after=after, mode="translate", slot="doc-1", seed=5),
                           kind=JobKind.LIVE_PREVIEW)
    assert live.state is JobState.CANCELLED and live.superseded
    assert edit.state is JobState.QUEUED, "a live preview never supersedes the document's generation"
    more = runtime.submit(Request(backend=fake_backend.NAME, photo=photo, labels_before=before,
                                  labels_after=after, mode="edit", slot="doc-1", seed=9))
    assert edit.state is JobState.CANCELLED and edit.superseded, "a new Generate replaces the old one"
    assert newer.state is JobState.QUEUED, "a new Generate leaves the live preview alone"
    gate.open()
    for job in (newer, colorize, more):
        assert job.wait(TIMEOUT) and job.state is JobState.DONE


def test_cancelling_one_job_leaves_the_others_running(runtime, gate):
    order = Order()
    runtime.add_listener(order)
    blocker = runtime.submit(gate.request())
    wait_running(blocker)
    # the colorize job holds at row 8 until cancelled: cancel it while it runs, the live preview already done
    edit, colorize, live = fake_jobs(runtime, colorize={"params": {"hold_at_row": 8, "rows_per_step": 4}})
    assert runtime.cancel(edit.id) and edit.state is JobState.CANCELLED  # queued: gone at once
    assert live.state is JobState.QUEUED and colorize.state is JobState.QUEUED
    gate.open()
    assert live.wait(TIMEOUT) and live.state is JobState.DONE
    wait_running(colorize)
    second_live = runtime.submit(Request(backend=fake_backend.NAME, photo=scene()[0], slot="doc-1"),
                                 kind=JobKind.LIVE_PREVIEW)
    assert runtime.cancel(colorize.id)
    assert colorize.wait(TIMEOUT) and colorize.state is JobState.CANCELLED and not colorize.superseded
    assert second_live.wait(TIMEOUT) and second_live.state is JobState.DONE, "the worker goes on"
    assert blocker.state is JobState.DONE
    assert order.started == [blocker.id, live.id, colorize.id, second_live.id]


def test_bulk_cancels_can_name_a_kind(runtime, gate):
    blocker = runtime.submit(gate.request())
    wait_running(blocker)
    edit, colorize, live = fake_jobs(runtime)
    assert runtime.cancel_all(slot="doc-1", kind=JobKind.GENERATE) == 1
    assert edit.state is JobState.CANCELLED and live.state is JobState.QUEUED
    assert runtime.cancel_queued(kind="live_preview") == 1 and live.state is JobState.CANCELLED
    assert colorize.state is JobState.QUEUED
    gate.open()
    assert colorize.wait(TIMEOUT) and colorize.state is JobState.DONE


# ---- the same with the real ASAPNet demo model ------------------------------------------------------------------


def landscape(height=96, width=128):
    from engine.labels import load_label_set

    label_set = load_label_set("coco-stuff-182")
    labels = np.full((height, width), label_set.id_of("sky-other"), np.uint16)
    labels[height * 5 // 8:] = label_set.id_of("grass")
    edited = labels.copy()
    edited[70:90, 30:90] = label_set.id_of("sea")
    return labels, edited


def test_live_preview_edit_and_colorize_with_the_asapnet_demo(runtime, gate):
    from engine.model_store import find_model

    find_model("demo-asapnet-landscape", "asapnet")  # shipped with the repository
    order = Order()
    runtime.add_listener(order)
    labels, edited = landscape()
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (*labels.shape, 3), dtype=np.uint8)
    gray = photo[:, :, 0].copy()
    blank = np.zeros((*labels.shape, 3), np.uint8)

    blocker = runtime.submit(gate.request())
    wait_running(blocker)
    edit = runtime.submit(Request(backend="asapnet", mode="edit", photo=photo, labels_before=labels,
                                  labels_after=edited, slot="doc-1"))
    colorize = runtime.submit(Request(backend=fake_backend.NAME, mode="colorize", photo=gray, k=2, slot="doc-2"))
    doomed = runtime.submit(Request(backend=fake_backend.NAME, mode="colorize", photo=gray, slot="doc-3"))
    live = runtime.submit(Request(backend="asapnet", mode="translate", photo=blank, labels_before=edited,
                                  labels_after=edited, slot="doc-4", params={"max_side": 64}),
                          kind=JobKind.LIVE_PREVIEW)
    assert runtime.cancel(doomed.id)
    gate.open()
    for job in (edit, colorize, live):
        assert job.wait(TIMEOUT) and job.state is JobState.DONE, job.error
    assert doomed.state is JobState.CANCELLED
    assert order.started == [blocker.id, live.id, edit.id, colorize.id]
    assert order.threads == {"sgraffito-engine"}

    (rendering,) = live.candidates
    image = rendering.compose(blank)
    sky, grass = image[5:40].reshape(-1, 3).mean(0), image[65:70].reshape(-1, 3).mean(0)
    assert sky[2] > sky[1] and grass[1] > grass[2], "blue above, green below"
    (patch,) = edit.candidates
    x0, y0, x1, y1 = patch.region
    assert x0 <= 30 and x1 >= 90 and y0 <= 70 and y1 >= 90
    result = patch.compose(photo)
    assert np.abs(result[75:85, 40:80].astype(int) - photo[75:85, 40:80]).mean() > 20, "the sea was rendered"
    loaded = [key for key in runtime.models.keys() if key[0] == "asapnet"]
    assert len(loaded) == 1, "one weight load serves the live preview and the edit"
