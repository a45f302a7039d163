"""A small deterministic backend for the runtime, gallery and CLI tests (not shipped as a model).

It "samples" row by row like an autoregressive model: every row of the working region inside the edit mask
gets a colour derived from (seed, row), so candidates differ by seed and are reproducible. Params:
  rows_per_step   how many rows per progress/cancel step (default 8)
  hold_at_row     stop at that row and wait (checking cancel) until cancelled: deterministic mid-job cancel
  hold_marker     a file created when it starts holding (for tests that cancel another process)
  hold_until      a file path: wait at the start (checking cancel) until it exists (tests that release a job)
  fail            "input" raises InputError (user error), "bug" raises RuntimeError (a backend bug)
  work            extra CPU work per row: that many 64x64 float matrix products in numpy (the UI-stall bench)
  python_work     pure-Python loop iterations per row (holds the GIL, the worst case for a UI thread)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from engine import composite
from engine.errors import InputError
from engine import registry
from engine.jobs import Candidate, JobContext, Request

NAME = "fake"


def seed_colour(seed: int, row: int) -> np.ndarray:
    rng = np.random.default_rng([seed, row])
    return rng.integers(0, 256, 3, dtype=np.uint8)


class FakeBackend:
    name = NAME

    def run(self, request: Request, ctx: JobContext) -> list[Candidate]:
        params = request.params
        if params.get("fail") == "input":
            raise InputError(f"fake model {request.model or 'default'!r}: the label map has no editable class")
        if params.get("fail") == "bug":
            raise RuntimeError("simulated bug in the fake backend")
        photo = request.photo if request.photo.ndim == 3 else np.repeat(request.photo[:, :, None], 3, 2)
        mask = request.edit_mask()
        region = request.region or composite.mask_bbox(mask) or composite.full_region(photo)
        x0, y0, x1, y1 = region
        step = int(params.get("rows_per_step", 8))
        hold = params.get("hold_at_row")
        if params.get("hold_until"):
            ctx.progress(0.0, "waiting for release")
            while not Path(params["hold_until"]).exists():
                ctx.check_cancelled()
                time.sleep(0.002)
        work = int(params.get("work", 0))
        python_work = int(params.get("python_work", 0))
        matrix = np.random.default_rng(0).standard_normal((64, 64))
        out = []
        for i, seed in enumerate(ctx.seeds):
            started = time.perf_counter()
            patch = photo[y0:y1, x0:x1].copy()
            sub = mask[y0:y1, x0:x1]
            for row in range(0, y1 - y0, step):
                ctx.check_cancelled()
                if hold is not None and row >= hold:
                    ctx.progress(ctx.seeds.index(seed) / request.k, f"holding at row {row}")
                    if params.get("hold_marker"):
                        Path(params["hold_marker"]).touch()
                    while True:
                        ctx.check_cancelled()
                        time.sleep(0.002)
                for r in range(row, min(row + step, y1 - y0)):
                    patch[r][sub[r]] = seed_colour(seed, r)
                    for _ in range(work):
                        matrix = np.tanh(matrix @ matrix.T / 64.0)
                    total = 0
                    for j in range(python_work):
                        total += j * j
                ctx.progress((i + (row + step) / (y1 - y0)) / request.k,
                             f"candidate {i + 1}/{request.k}", preview=patch[::8, ::8])
            out.append(Candidate(image=patch, region=region, seed=seed, info={"rows": y1 - y0},
                                 seconds=time.perf_counter() - started))
        return out


# registered at run time, the way a plugin would: engine/registry.py lists only the shipped engines
registry.add_spec(registry.ModelSpec(kind=NAME, title="Fake row-by-row sampler (tests)", models=__name__,
                                     modes=("edit", "colorize"), backend=FakeBackend))


def scene(size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small photo with its label map, and the label map after a "paint a lake in the middle" edit."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    photo = np.stack([xx * 255 // size, yy * 255 // size, (xx + yy) * 127 // size], -1).astype(np.uint8)
    photo = np.clip(photo.astype(int) + rng.integers(-8, 9, photo.shape), 0, 255).astype(np.uint8)
    before = np.where(yy < size // 2, 156, 123).astype(np.uint8)  # sky over grass (COCO-Stuff 0-based ids)
    after = before.copy()
    after[size // 2: 3 * size // 4, size // 4: 3 * size // 4] = 177  # water
    return photo, before, after


class RendererBackend:
    """A live-preview backend around an injected renderer (anything with `render(labels, size=None)` and a
    `label_set`), rendering as the ASAPNet backend's translate mode does with params["max_side"]: maps larger
    than that are rendered at that size and scaled up (linear)."""

    threads = 1  # as engine.pipelines.asapnet.ASAPNetBackend

    def __init__(self, load_renderer):
        self._load_renderer = load_renderer
        self.renderer = None

    def run(self, request: Request, ctx: JobContext) -> list[Candidate]:
        import cv2

        if self.renderer is None:
            self.renderer = self._load_renderer()
        renderer = self.renderer
        if renderer.label_set and renderer.label_set != request.label_set:
            raise InputError(f"live preview: the ASAPNet model reads {renderer.label_set} label maps, "
                             f"this document uses {request.label_set}")
        labels = request.labels_after
        h, w = labels.shape
        scale = min(1.0, int(request.params.get("max_side", 1024)) / max(h, w))
        ctx.check_cancelled()
        if scale == 1.0:
            image = renderer.render(labels)
        else:
            image = renderer.render(labels, (max(16, round(w * scale)), max(16, round(h * scale))))
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        return [Candidate(image=image, region=(0, 0, w, h), seed=ctx.seed)]


def register_renderer(kind: str, load_renderer) -> str:
    """Register an engine `kind` whose backend renders with `load_renderer()` (see RendererBackend)."""
    registry.add_spec(registry.ModelSpec(kind=kind, title=f"{kind} (tests)", models=__name__,
                                         modes=("translate",), backend=lambda: RendererBackend(load_renderer)))
    return kind
