"""One registry: every engine is one `ModelSpec` in `SPECS`, and everything that needs an engine reads it here.

The CLI (`sgraffito import`, `models`, `train`), the runtime (which backend serves a request), the GUI's model
choosers (which engines serve a document mode) and the trainer all look engines up in this table. Nothing is
discovered by importing modules for their side effects: a spec names its parts as dotted paths
("package.module:attribute") that are imported on first use, so listing the engines costs no torch import.

Add an engine by adding an entry:
- `models`: the module of its plain `nn.Module`s (engine/models/), for the reader and the import-rules test;
- `backend`: the class that serves requests (engine/pipelines/), constructed once per runtime;
- `importer`: the `Importer` for its official checkpoints (engine/importers/), listed by `sgraffito import`;
- `tasks`: its training tasks, name -> TrainTask class or factory (engine/train/).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from engine.errors import InputError

MODES = ("edit", "colorize", "translate", "segment")


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # the "kind" of its model folders (config.json) and the backend name requests use
    title: str
    models: str  # dotted module path of its nn.Modules
    modes: tuple[str, ...] = ()  # document modes it serves, the first being its main one
    backend: str | None = None  # "module:Class" of its pipeline backend
    importer: str | None = None  # "module:attribute" of its engine.importers.Importer
    tasks: Mapping[str, str] = field(default_factory=dict)  # training task name -> "module:factory"
    default_model: str = ""  # the model folder a request with model "" uses

    def serves(self, mode: str) -> bool:
        return mode in self.modes


SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        kind="asset", title="ASSET (masked VQ-token resampling with Sparsified Guided Attention)",
        models="engine.models.asset", modes=("edit",),
        backend="engine.pipelines.asset:AssetBackend",
        importer="engine.importers.lightning:ASSET_IMPORTER",
        tasks={"asset_guiding": "engine.train.tasks_asset:GuidingTask",
               "asset_sga": "engine.train.tasks_asset:SGATask"},
        default_model="demo-asset-landscape"),
    ModelSpec(
        kind="vqgan", title="VQGAN (taming transformers' first stage)",
        models="engine.models.vqgan",
        importer="engine.importers.lightning:VQGAN_IMPORTER",
        tasks={"vqgan": "engine.train.tasks_vqgan:ImageVQGANTask",
               "seg_vqgan": "engine.train.tasks_vqgan:SegVQGANTask"}),
    ModelSpec(
        kind="coltran", title="ColTran (axial-transformer colorization)",
        models="engine.models.coltran", modes=("colorize",),
        backend="engine.pipelines.coltran:ColTranBackend",
        importer="engine.importers.coltran_tf:IMPORTER",
        tasks={"coltran": "engine.train.tasks_coltran:ColTranTask"},
        default_model="demo-coltran"),
    ModelSpec(
        kind="pixelcnn", title="Gated conditional PixelCNN colorizer",
        models="engine.models.pixelcnn", modes=("colorize",),
        backend="engine.pipelines.pixelcnn:PixelCNNBackend",
        tasks={"pixelcnn-colorizer": "engine.train.tasks_pixelcnn:PixelCNNColorizerTask"},
        default_model="demo-pixelcnn-colorizer"),
    ModelSpec(
        kind="asapnet", title="ASAPNet (label map to image)",
        models="engine.models.asapnet", modes=("translate", "edit"),
        backend="engine.pipelines.asapnet:ASAPNetBackend",
        importer="engine.importers.asapnet_pth:IMPORTER",
        tasks={"asapnet-landscape": "engine.train.tasks_asapnet:ASAPNetLandscapeTask"},
        default_model="demo-asapnet-landscape"),
    ModelSpec(
        kind="taming", title="Taming Transformers (label map to image by sliding-window sampling, S-FLCKR)",
        models="engine.models.taming", modes=("translate",),
        backend="engine.pipelines.taming:TamingBackend",
        importer="engine.importers.taming_ckpt:IMPORTER",
        tasks={"taming-landscape": "engine.train.tasks_taming:TamingLandscapeTask"},
        default_model="demo-taming-landscape"),
    ModelSpec(
        kind="segmenter", title="Demo segmenter (frozen ImageNet VGG16 + a head trained on synthetic landscapes)",
        models="engine.models.segmenter", modes=("segment",),
        backend="engine.pipelines.segment:SegmenterBackend",
        tasks={"segmenter-landscape": "engine.train.tasks_segmenter:SegmenterLandscapeTask"},
        default_model="demo-segmenter-landscape"),
    ModelSpec(
        kind="deeplab", title="DeepLab-v2 ResNet-101 MSC (kazuto1011/deeplab-pytorch, COCO-Stuff 164k)",
        models="engine.models.deeplab", modes=("segment",),
        backend="engine.pipelines.segment:DeepLabBackend",
        importer="engine.importers.deeplab_pth:IMPORTER",
        default_model="deeplab-cocostuff164k"),
)

KINDS: tuple[str, ...] = tuple(spec.kind for spec in SPECS)

# Specs added at run time by tests and plugins (a fake backend, a tiny training task); never by an import.
_extra: dict[str, ModelSpec] = {}
_extra_tasks: dict[str, Callable[..., Any]] = {}


def resolve(dotted: str) -> Any:
    """"package.module:attribute" -> the attribute (imports the module)."""
    module, _, attribute = dotted.partition(":")
    return getattr(importlib.import_module(module), attribute)


def specs(mode: str | None = None) -> list[ModelSpec]:
    """All engines (or those serving `mode`), in the table's order."""
    every = [*SPECS, *_extra.values()]
    return [s for s in every if mode is None or s.serves(mode)]


def spec(kind: str) -> ModelSpec:
    for candidate in specs():
        if candidate.kind == kind:
            return candidate
    raise InputError(f"unknown engine {kind!r}; available: {', '.join(s.kind for s in specs())}")


def backend_kinds() -> list[str]:
    """The engines a request can name, sorted."""
    return sorted(s.kind for s in specs() if s.backend)


def create_backend(kind: str):
    """A new backend instance for `kind`. An engine whose code fails to import is named with the error."""
    try:
        entry = spec(kind)
    except InputError:
        entry = None
    if entry is None or entry.backend is None:
        raise InputError(f"no engine backend named {kind!r} (available: {', '.join(backend_kinds()) or 'none'})")
    target = entry.backend
    if callable(target):
        return target()
    try:
        factory = resolve(target)
    except Exception as error:  # a broken engine must not take the others down; say which one and why
        raise InputError(f"the {kind} engine failed to load ({target}): {type(error).__name__}: {error}") from error
    return factory()


def importers() -> dict[str, Any]:
    """kind -> engine.importers.Importer, for every engine that reads official checkpoints."""
    return {s.kind: resolve(s.importer) for s in specs() if s.importer}


def task_names() -> list[str]:
    return sorted({name for s in specs() for name in s.tasks} | set(_extra_tasks))


def task_factory(name: str) -> Callable[..., Any]:
    """The TrainTask class (or factory(config) -> TrainTask) of training task `name`."""
    if name in _extra_tasks:
        return _extra_tasks[name]
    for s in specs():
        if name in s.tasks:
            return resolve(s.tasks[name])
    raise InputError(f"unknown training task {name!r}; available: {', '.join(task_names()) or 'none'}")


def add_spec(entry: ModelSpec) -> None:
    """Register an engine at run time (tests, plugins). `backend` may be a dotted path or a factory."""
    _extra[entry.kind] = entry


def remove_spec(kind: str) -> None:
    _extra.pop(kind, None)


def add_task(name: str, factory: Callable[..., Any]) -> None:
    """Register a training task at run time (tests, plugins)."""
    _extra_tasks[name] = factory
