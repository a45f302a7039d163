"""The backend skeleton every engine pipeline shares: find the model folder, load it through the runtime's model
cache onto the job's device, run, report.

A pipeline subclasses `Pipeline`, names its engine (`name`, the registry kind), loads one model folder in
`load(path, device)` and turns a request into candidates in `sample(model, request, ctx)`. The runtime constructs
one instance per engine (engine/registry.py names the class) and calls `run` on its single worker thread.
Candidate i is sampled from `ctx.seeds[i]` alone, so it does not depend on k: `run` splits a request into chunks
of candidates whose estimated working memory (`candidate_bytes`) fits `BATCH_BYTES`, and refuses a request whose
finished candidates alone would not fit `RESULT_BYTES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from engine.errors import InputError
from engine.safe_io import human
from engine.importers.state_dicts import load_state_dict_strict
from engine.model_store import find_model, load_model_dir


BATCH_BYTES = 1 << 30  # working memory of one chunk of candidates
RESULT_BYTES = 6 << 30  # the finished candidates of one request, all together


class _ChunkContext:
    """A job context for one chunk of a request's seeds: progress is scaled into the chunk's share."""

    def __init__(self, ctx, seeds: list[int], start: float, share: float):
        self._ctx, self.seeds, self.seed = ctx, seeds, seeds[0]
        self._start, self._share = start, share

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def progress(self, fraction: float, stage: str = "", preview=None) -> None:
        self._ctx.progress(self._start + self._share * min(max(float(fraction), 0.0), 1.0), stage, preview)


def model_folder(model: str, kind: str, default: str) -> Path:
    """A model folder: `model` as a path to a folder, else the model of that name in the model list ("" = the
    engine's default model)."""
    if model and Path(model).is_dir():
        return Path(model)
    return find_model(model or default, kind).path


def load_folder(path: Path, kind: str, stems: list[str]) -> tuple[dict, dict]:
    """(config, {stem: state dict}) of a model folder that must hold a `kind` model."""
    config, states = load_model_dir(path, stems)
    if config["kind"] != kind:
        raise InputError(f"{path}: a {config['kind']!r} model, not {kind}")
    return config, states


def strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> torch.nn.Module:
    """`module` with `state` loaded key for key (a report of every mismatch otherwise), in eval mode."""
    load_state_dict_strict(module, state, source)
    return module.eval()


class Pipeline:
    """An engine backend: see the module docstring."""

    name: str = ""  # the engine's kind in engine/registry.py
    default_model: str = ""
    loading_stage = "loading the model"
    # torch intra-op threads this engine runs best with (None: the runtime's setting). Only the runtime, the one
    # owner of the device, applies it around a job: sampling chains of tiny ops runs best on one thread.
    threads: int | None = None

    def __init__(self):
        self._models: dict[tuple, Any] = {}  # used only when the caller has no model cache (direct use)

    # -- to implement ---------------------------------------------------------------------------------------

    def load(self, path: Path, device: str) -> Any:
        """The model in folder `path`, placed on `device`."""
        raise NotImplementedError

    def sample(self, model: Any, request, ctx) -> list:
        """The candidates (engine.jobs.Candidate) for `request`, one per seed in ctx.seeds."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------------------

    def check(self, request) -> None:
        """Refuse a request this engine cannot serve (before anything is loaded)."""

    def model(self, request, ctx) -> Any:
        """The request's model on the job's device: from the runtime's model cache, loaded on a miss."""
        path = model_folder(request.model, self.name, self.default_model)
        key = (self.name, str(path.resolve()), str(ctx.device))

        def load():
            ctx.progress(0.0, self.loading_stage)
            return self.load(path, ctx.device)

        cache = getattr(ctx, "models", None)
        if cache is not None:
            return cache.get(key, load)
        if key not in self._models:
            self._models[key] = load()
        return self._models[key]

    # bytes of working memory per candidate and photo pixel (activations, float images, the composite)
    batch_bytes_per_pixel = 64

    def candidate_bytes(self, request) -> int:
        """Estimated working memory of one candidate while its batch is sampled."""
        x0, y0, x1, y1 = request.region or (0, 0, request.size[0], request.size[1])
        return (x1 - x0) * (y1 - y0) * self.batch_bytes_per_pixel

    def chunk_size(self, request) -> int:
        return max(1, min(request.k, BATCH_BYTES // max(1, self.candidate_bytes(request))))

    def run(self, request, ctx) -> list:
        self.check(request)
        x0, y0, x1, y1 = request.region or (0, 0, request.size[0], request.size[1])
        results = request.k * (x1 - x0) * (y1 - y0) * 3
        if results > RESULT_BYTES:
            fit = max(1, RESULT_BYTES // ((x1 - x0) * (y1 - y0) * 3))
            raise InputError(f"{request.k} candidates of {x1 - x0}x{y1 - y0} pixels need {human(results)}, more "
                             f"than the {human(RESULT_BYTES)} Sgraffito keeps for one request; ask for at most {fit}")
        model = self.model(request, ctx)
        ctx.check_cancelled()
        chunk = self.chunk_size(request)
        if chunk >= request.k:
            return self.sample(model, request, ctx)
        seeds, candidates = list(ctx.seeds), []
        for start in range(0, len(seeds), chunk):
            part = seeds[start: start + chunk]
            view = _ChunkContext(ctx, part, start / len(seeds), len(part) / len(seeds))
            candidates.extend(self.sample(model, request.with_seed(part[0], len(part)), view))
            ctx.check_cancelled()
        return candidates

