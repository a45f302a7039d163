"""engine.model_cache: one LRU cache of loaded models with a byte budget; the runtime hands it to backends."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from engine.errors import InputError
from engine.model_cache import DEFAULT_BUDGET_MB, ModelCache, nbytes_of


class Blob:
    """A stand-in model that reports its size."""

    def __init__(self, name: str, size: int):
        self.name, self.size = name, size

    def nbytes_held(self) -> int:
        return self.size


def loader(log: list, name: str, size: int):
    def load():
        log.append(name)
        return Blob(name, size)

    return load


def test_a_hit_returns_the_cached_object_without_loading_again():
    cache, loads = ModelCache(1000), []
    first = cache.get("a", loader(loads, "a", 100))
    assert cache.get("a", loader(loads, "a", 100)) is first
    assert loads == ["a"] and len(cache) == 1 and cache.nbytes == 100


def test_the_least_recently_used_entries_are_evicted_until_the_total_fits():
    cache, loads = ModelCache(300), []
    for name in "abc":
        cache.get(name, loader(loads, name, 100))
    assert cache.keys() == ["a", "b", "c"] and cache.nbytes == 300
    cache.get("a", loader(loads, "a", 100))  # a hit: "a" becomes the most recently used, "b" the least
    assert cache.keys() == ["b", "c", "a"]
    cache.get("d", loader(loads, "d", 150))  # 450 > 300: drop "b", then "c"
    assert cache.keys() == ["a", "d"] and cache.nbytes == 250
    assert "b" not in cache and "a" in cache
    cache.get("b", loader(loads, "b", 100))  # evicted ones load again
    assert loads == ["a", "b", "c", "d", "b"]
    assert cache.keys() == ["d", "b"] and cache.nbytes == 250


def test_the_newest_entry_stays_even_when_it_alone_is_over_the_budget():
    cache, loads = ModelCache(100), []
    cache.get("small", loader(loads, "small", 60))
    huge = cache.get("huge", loader(loads, "huge", 500))
    assert cache.keys() == ["huge"] and cache.nbytes == 500
    assert cache.get("huge", loader(loads, "huge", 500)) is huge and loads == ["small", "huge"]
    cache.get("small", loader(loads, "small", 60))  # the next load pushes the oversized one out
    assert cache.keys() == ["small"]


def test_clear_and_a_zero_budget():
    cache = ModelCache(0)
    cache.get("a", lambda: Blob("a", 10))
    cache.get("b", lambda: Blob("b", 10))
    assert cache.keys() == ["b"], "a zero budget keeps only the model in use"
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_a_failed_load_caches_nothing():
    cache = ModelCache(1000)

    def broken():
        raise OSError("no such file")

    with pytest.raises(OSError):
        cache.get("a", broken)
    assert len(cache) == 0


def test_the_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("SGRAFFITO_MODEL_CACHE_MB", raising=False)
    assert ModelCache().budget_bytes == DEFAULT_BUDGET_MB * 2**20
    monkeypatch.setenv("SGRAFFITO_MODEL_CACHE_MB", "512")
    assert ModelCache().budget_bytes == 512 * 2**20
    assert ModelCache(123).budget_bytes == 123, "an explicit budget wins"
    monkeypatch.setenv("SGRAFFITO_MODEL_CACHE_MB", "lots")
    with pytest.raises(InputError, match="SGRAFFITO_MODEL_CACHE_MB"):
        ModelCache()


def test_nbytes_of_counts_parameters_buffers_and_held_modules_once():
    linear = torch.nn.Linear(10, 20)  # 10*20 + 20 float32
    assert nbytes_of(linear) == 220 * 4
    norm = torch.nn.BatchNorm1d(8)  # weight, bias, running mean/var (float32) and num_batches_tracked (int64)
    assert nbytes_of(norm) == 4 * 8 * 4 + 8
    assert nbytes_of(torch.zeros(5, dtype=torch.float16)) == 10
    assert nbytes_of(np.zeros((4, 4), np.uint8)) == 16

    @dataclass
    class Pair:
        encoder: torch.nn.Module
        decoder: torch.nn.Module
        name: str = "pair"

    assert nbytes_of(Pair(torch.nn.Linear(10, 20), torch.nn.Linear(20, 10))) == (220 + 210) * 4

    class Renderer:  # a plain object holding a model and a reference to the same weights
        def __init__(self):
            self.model = torch.nn.Linear(10, 20)
            self.weights = {"w": self.model.weight}
            self.label_set = "coco-stuff-182"

    assert nbytes_of(Renderer()) == 220 * 4, "shared storage counts once"
    assert nbytes_of(Blob("x", 77)) == 77
    assert nbytes_of(object()) == 0 and nbytes_of("text") == 0 and nbytes_of(None) == 0


def test_the_cache_measures_real_modules():
    cache = ModelCache(2 * 220 * 4)
    for name in "abc":
        cache.get(name, lambda: torch.nn.Linear(10, 20))
    assert cache.keys() == ["b", "c"] and cache.nbytes == 2 * 220 * 4


def test_the_runtime_hands_its_one_cache_to_every_backend():
    from engine import registry
    from engine.jobs import Candidate, JobState, Request, Runtime

    seen = []

    class Probe:
        name = "probe"

        def run(self, request, ctx):
            seen.append(ctx.models)
            ctx.models.get(("probe", request.model), lambda: Blob(request.model, 10))
            return [Candidate(image=request.photo[:1, :1], region=(0, 0, 1, 1), seed=ctx.seed)]

    registry.add_spec(registry.ModelSpec(kind="probe", title="probe", models=__name__, backend=Probe))
    cache = ModelCache(1000)
    runtime = Runtime(device="cpu", models=cache)
    try:
        photo = np.zeros((4, 4, 3), np.uint8)
        jobs = [runtime.submit(Request(backend="probe", photo=photo, model=m)) for m in ("x", "y", "x")]
        assert all(job.wait(30) and job.state is JobState.DONE for job in jobs)
    finally:
        runtime.shutdown()
        registry.remove_spec("probe")
    assert runtime.models is cache and all(models is cache for models in seen)
    assert cache.keys() == [("probe", "y"), ("probe", "x")]
