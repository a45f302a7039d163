"""The engine runtime with the deterministic fake backend: states, cancel, errors, superseding, seeds."""

import os
import threading

import numpy as np
import pytest

from engine.errors import InputError
from engine.jobs import Candidate, JobState, Request, backend_names, thaw
from tests import fake_backend
from tests.fake_backend import scene

TIMEOUT = 30  # generous: only a hang fails; nothing here asserts on timing


def edit_request(**overrides):
    photo, before, after = scene()
    fields = dict(backend=fake_backend.NAME, photo=photo, labels_before=before, labels_after=after, k=3, seed=7)
    fields.update(overrides)
    return Request(**fields)


class Recorder:
    def __init__(self):
        self.events = []
        self.lock = threading.Lock()
        self.reached = threading.Event()
        self.wanted_stage = None

    def __call__(self, event):
        with self.lock:
            self.events.append(event)
        if self.wanted_stage and event.stage.startswith(self.wanted_stage):
            self.reached.set()

    def states(self, job_id):
        states = [e.state for e in self.events if e.job_id == job_id and e.kind == "state"]
        return [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]


def test_a_request_is_an_immutable_snapshot_of_the_callers_buffers():
    photo, before, after = scene()
    request = Request(backend="fake", photo=photo, labels_before=before, labels_after=after,
                      params={"temperature": 1.0, "classes": [1, 2]})
    photo[:] = 0
    after[:] = before
    assert request.photo.any(), "painting on after submit must not change the request"
    assert request.edit_mask().sum() == 32 * 16
    with pytest.raises(ValueError):
        request.photo[0, 0, 0] = 1
    with pytest.raises(TypeError):
        request.params["temperature"] = 2.0
    assert thaw(request.params) == {"temperature": 1.0, "classes": [1, 2]}


def test_a_read_only_photo_is_shared_not_copied():
    photo, before, after = scene()
    photo.flags.writeable = False  # like engine.imageio's Photo.rgb: nobody can paint on it
    request = Request(backend="fake", photo=photo, labels_before=before, labels_after=after)
    assert np.shares_memory(request.photo, photo), "a 24-MP photo is not copied on every Generate"
    assert not np.shares_memory(request.labels_after, after), "the label map being painted is copied"
    view = np.ones((8, 8, 3), np.uint8)[:4]  # read-only view of a writable buffer: still copied
    view.flags.writeable = False
    assert not np.shares_memory(Request(backend="fake", photo=view).photo, view)


def test_bad_requests_are_refused_with_a_message():
    photo, before, after = scene()
    with pytest.raises(InputError, match="labels_after"):
        Request(backend="fake", photo=photo, labels_before=before, labels_after=after[:10])
    with pytest.raises(InputError, match="k"):
        Request(backend="fake", photo=photo, k=0)
    with pytest.raises(InputError, match="region"):
        Request(backend="fake", photo=photo, region=(0, 0, 100, 10))


def test_a_job_goes_queued_running_done_with_k_reproducible_candidates(runtime):
    recorder = Recorder()
    runtime.add_listener(recorder)
    job = runtime.submit(edit_request())
    assert job.wait(TIMEOUT)
    assert job.state is JobState.DONE and job.fraction == 1.0
    assert recorder.states(job.id) == [JobState.QUEUED, JobState.RUNNING, JobState.DONE]
    assert [c.seed for c in job.candidates] == [7, 8, 9]
    assert any(e.kind == "progress" and e.preview is not None for e in recorder.events)
    # the mask is 16 rows x 32 columns in the middle; the region is its bounding box
    assert all(c.region == (16, 32, 48, 48) for c in job.candidates)
    first, second = job.candidates[0].image, job.candidates[1].image
    assert not np.array_equal(first, second), "different seeds give different candidates"
    again = runtime.submit(edit_request(seed=8, k=1))
    assert again.wait(TIMEOUT)
    np.testing.assert_array_equal(again.candidates[0].image, second)


def test_candidate_compose_changes_only_its_region():
    photo, before, after = scene()
    patch = np.full((10, 20, 3), 200, np.uint8)
    result = Candidate(image=patch, region=(5, 6, 25, 16), seed=1).compose(photo)
    assert result.shape == photo.shape
    assert (result[6:16, 5:25] == 200).all()
    outside = np.ones(photo.shape[:2], bool)
    outside[6:16, 5:25] = False
    np.testing.assert_array_equal(result[outside], photo[outside])


def test_cancel_mid_job_stops_the_backend_and_keeps_no_results(runtime):
    recorder = Recorder()
    recorder.wanted_stage = "holding"
    runtime.add_listener(recorder)
    job = runtime.submit(edit_request(params={"hold_at_row": 8, "rows_per_step": 4}))
    assert recorder.reached.wait(TIMEOUT), "the fake backend never reached row 8"
    assert job.state is JobState.RUNNING
    assert runtime.cancel_active()
    assert job.wait(TIMEOUT)
    assert job.state is JobState.CANCELLED and job.candidates == ()
    assert recorder.states(job.id)[-1] is JobState.CANCELLED
    follow_up = runtime.submit(edit_request(k=1))
    assert follow_up.wait(TIMEOUT) and follow_up.state is JobState.DONE, "the worker survives a cancel"


def test_cancel_queued_and_cancel_all(runtime):
    recorder = Recorder()
    recorder.wanted_stage = "holding"
    runtime.add_listener(recorder)
    blocker = runtime.submit(edit_request(params={"hold_at_row": 0}))
    assert recorder.reached.wait(TIMEOUT)
    queued = [runtime.submit(edit_request(k=1)) for _ in range(3)]
    assert all(j.state is JobState.QUEUED for j in queued)
    assert runtime.cancel(queued[0].id)
    assert queued[0].state is JobState.CANCELLED
    assert runtime.cancel_queued() == 2
    assert all(j.state is JobState.CANCELLED for j in queued)
    assert blocker.state is JobState.RUNNING
    assert runtime.cancel_all() == 1
    assert blocker.wait(TIMEOUT) and blocker.state is JobState.CANCELLED
    assert not runtime.cancel(blocker.id), "a finished job cannot be cancelled again"


def test_an_input_error_reaches_the_listener_as_the_message(runtime):
    recorder = Recorder()
    runtime.add_listener(recorder)
    job = runtime.submit(edit_request(params={"fail": "input"}, model="lake-v1"))
    assert job.wait(TIMEOUT)
    assert job.state is JobState.FAILED
    final = [e for e in recorder.events if e.job_id == job.id][-1]
    assert final.state is JobState.FAILED
    assert final.error == "fake model 'lake-v1': the label map has no editable class"


def test_a_backend_bug_fails_the_job_with_its_type_and_keeps_the_traceback(runtime):
    job = runtime.submit(edit_request(params={"fail": "bug"}))
    assert job.wait(TIMEOUT)
    assert job.state is JobState.FAILED
    assert job.error == "fake failed: RuntimeError: simulated bug in the fake backend"
    assert "fake_backend.py" in job.traceback


def test_an_unknown_backend_names_the_available_ones_and_the_broken_modules(runtime):
    from engine import registry

    # an engine whose code fails to import (a missing dependency) must name itself and the error
    registry.add_spec(registry.ModelSpec(kind="broken", title="broken", models="engine.models.broken",
                                         backend="engine.models.broken_missing_dep:Backend"))
    try:
        job = runtime.submit(edit_request(backend="nonexistent"))
        assert job.wait(TIMEOUT)
        assert job.state is JobState.FAILED
        assert "no engine backend named 'nonexistent'" in job.error and "fake" in job.error
        broken = runtime.submit(edit_request(backend="broken"))
        assert broken.wait(TIMEOUT) and broken.state is JobState.FAILED
        assert "the broken engine failed to load (engine.models.broken_missing_dep:Backend)" in broken.error
        assert "No module named 'engine.models.broken_missing_dep'" in broken.error
        assert "fake" in backend_names()
    finally:
        registry.remove_spec("broken")


def test_a_newer_request_for_the_same_slot_drops_the_older_results(runtime):
    recorder = Recorder()
    recorder.wanted_stage = "holding"
    runtime.add_listener(recorder)
    running = runtime.submit(edit_request(slot="doc-1", params={"hold_at_row": 4}))
    assert recorder.reached.wait(TIMEOUT)
    queued = runtime.submit(edit_request(slot="doc-1", seed=1))
    other_document = runtime.submit(edit_request(slot="doc-2", seed=2))
    newest = runtime.submit(edit_request(slot="doc-1", seed=3))
    for job in (running, queued, newest, other_document):
        assert job.wait(TIMEOUT)
    assert running.state is JobState.CANCELLED and running.superseded and running.candidates == ()
    assert queued.state is JobState.CANCELLED and queued.superseded
    assert newest.state is JobState.DONE and [c.seed for c in newest.candidates] == [3, 4, 5]
    assert other_document.state is JobState.DONE, "another document's job is not superseded"
    more = runtime.submit(edit_request(slot="doc-1", seed=10, k=1), supersede=False)
    assert more.wait(TIMEOUT) and more.state is JobState.DONE
    assert newest.state is JobState.DONE and len(newest.candidates) == 3


def test_a_gray_photo_is_accepted_and_composes_to_rgb(runtime):
    photo, _, _ = scene()
    gray = photo[:, :, 1].copy()
    mask = np.zeros(gray.shape, bool)
    mask[:8] = True
    job = runtime.submit(Request(backend="fake", photo=gray, mask=mask, k=1))
    assert job.wait(TIMEOUT) and job.state is JobState.DONE
    composed = job.candidates[0].compose(gray)
    assert composed.shape == (64, 64, 3)
    np.testing.assert_array_equal(composed[8:, :, 0], gray[8:])


def test_a_broken_listener_does_not_stop_the_runtime(runtime):
    def broken(event):
        raise RuntimeError("listener bug")

    runtime.add_listener(broken)
    job = runtime.submit(edit_request(k=1))
    assert job.wait(TIMEOUT) and job.state is JobState.DONE


def test_finished_jobs_are_not_kept_by_the_runtime(runtime):
    jobs = [runtime.submit(edit_request(k=1, seed=s)) for s in range(3)]
    assert all(job.wait(TIMEOUT) for job in jobs)
    assert runtime.jobs() == [] and runtime.job(jobs[0].id) is None, "no photo-sized requests pile up"
    assert jobs[0].candidates, "the caller's Job keeps its results"


def test_device_choice_refuses_what_this_machine_lacks(monkeypatch):
    import torch

    from engine.device import resolve_device

    assert resolve_device("cpu") == "cpu"
    monkeypatch.setenv("SGRAFFITO_DEVICE", "cpu")
    assert resolve_device(None) == "cpu", "$SGRAFFITO_DEVICE overrides the automatic pick"
    monkeypatch.delenv("SGRAFFITO_DEVICE")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if expected == "cpu" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        expected = "mps"
    assert resolve_device("auto") == expected
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(InputError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_the_thread_count_is_set_once_and_an_engines_preference_applies_around_its_jobs_only():
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    script = textwrap.dedent("""
        import numpy as np, torch
        from engine import registry
        from engine.device import configure_threads, configured_threads
        from engine.jobs import Candidate, Request, Runtime

        seen = []

        class OneThread:
            threads = 1

            def run(self, request, ctx):
                seen.append(torch.get_num_threads())
                return [Candidate(image=request.photo[:1, :1], region=(0, 0, 1, 1), seed=0)]

        registry.add_spec(registry.ModelSpec(kind="one", title="one", models="x", backend=OneThread))
        runtime = Runtime(device="cpu")
        job = runtime.submit(Request(backend="one", photo=np.zeros((2, 2, 3), np.uint8)))
        assert job.wait(60) and job.state.value == "done", job.error
        assert configured_threads() == 3 and torch.get_num_threads() == 3, torch.get_num_threads()
        assert seen == [1]
        assert configure_threads(5) == 3 and torch.get_num_threads() == 3, "set once: later calls change nothing"
        runtime.shutdown()
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    result = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120,
                            env={**env, "SGRAFFITO_THREADS": "3", "PYTHONPATH": str(root)})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_no_engine_or_app_code_outside_the_runtime_changes_the_thread_count():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    files = [*root.glob("engine/commands/*.py"), root / "engine/jobs.py", *root.glob("app/*.py"),
             *root.glob("engine/pipelines/*.py")]
    offenders = [str(f.relative_to(root)) for f in files if f.exists() and "set_num_threads(" in f.read_text()]
    assert offenders == []
