"""The training config, the task interface every model trainer implements, and the task registry."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Callable

import torch
import yaml

from engine.errors import InputError


@dataclass
class TrainConfig:
    """Everything the loop needs; task-specific settings go in `options` (read them in your task)."""

    task: str = ""
    steps: int = 1000  # optimizer steps (each of `grad_accum` micro-batches)
    batch_size: int = 8  # per process and micro-batch
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0  # AdamW; applied to >= 2-D weights only
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 0
    schedule: str = "cosine"  # "cosine" (to 10% of lr) or "constant", after the linear warmup
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    ema_decay: float = 0.999  # 0 disables the EMA copy
    precision: str = "auto"  # "bf16", "fp16" (autocast; fp16 with a GradScaler), "fp32", or "auto" (bf16 on CUDA)
    tf32: bool = True  # TF32 matmuls and convolutions on Ampere and newer GPUs
    compile: bool = False  # torch.compile the model (the DDP wrapper under torchrun)
    eval_every: int = 500  # 0: only at the end
    save_every: int = 500  # 0: only at the end
    log_every: int = 10
    max_minutes: float = 0.0  # time budget; 0 means none. The run saves, evaluates and exports when it ends.
    out_dir: str = ""  # default: runs/<task>
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N" (under torchrun "auto"/"cuda" is cuda:LOCAL_RANK)
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> TrainConfig:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise InputError(f"{source}: unknown training settings {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
        config = cls(**{name: _typed(fields[name], value, source) for name, value in values.items()})
        config.betas = tuple(float(b) for b in config.betas)
        if config.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise InputError(f"{source}: precision must be auto, bf16, fp16 or fp32, not {config.precision!r}")
        if config.schedule not in ("cosine", "constant"):
            raise InputError(f"{source}: schedule must be cosine or constant, not {config.schedule!r}")
        if config.steps < 1 or config.batch_size < 1 or config.grad_accum < 1:
            raise InputError(f"{source}: steps, batch_size and grad_accum must be at least 1")
        return config

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> TrainConfig:
        """Load a YAML mapping of these fields; `overrides` (e.g. from the command line) win."""
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as error:
            raise InputError(f"{path}: cannot read training config ({error.strerror or error})") from None
        except yaml.YAMLError as error:
            raise InputError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(values, dict):
            raise InputError(f"{path}: a training config must be a YAML mapping of settings")
        merge(values, {k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values, str(path))

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas)
        return values


def _typed(f: dataclasses.Field, value: Any, source: str) -> Any:
    """`value` checked against the type of field `f`'s default (numbers written as strings, such as YAML's `1e-3`,
    are converted); an InputError names the setting otherwise."""
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    kind = type(default)
    if kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if kind is str and isinstance(value, PurePath):
        return str(value)
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        dict: lambda v: isinstance(v, dict),
        tuple: lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v),
    }[kind](value)
    if not ok:
        expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
                    dict: "a mapping", tuple: "a list of numbers"}[kind]  # fmt: skip
        raise InputError(f"{source}: {f.name} must be {expected}, not {value!r}")
    return float(value) if kind is float else value


def merge(values: dict, overrides: dict) -> dict:
    """Merge `overrides` into `values` in place, mapping by mapping (a nested key changes only itself)."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            merge(values[key], value)
        else:
            values[key] = value
    return values


def set_path(values: dict, dotted: str, value: Any, source: str = "--set") -> dict:
    """values["a"]["b"]["c"] = value for dotted "a.b.c", creating the mappings on the way; InputError when a
    part is empty or a value that is not a mapping is in the way."""
    parts = dotted.split(".")
    if not all(part.strip() for part in parts):
        raise InputError(f"{source}: {dotted!r} is not a setting name (NAME or NAME.NAME...)")
    node = values
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part.strip(), {})
        if not isinstance(child, dict):
            raise InputError(f"{source}: {'.'.join(parts[: depth + 1])} is already set to {child!r}, not a mapping")
        node = child
    last = parts[-1].strip()
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        merge(node[last], value)
    else:
        node[last] = value
    return values


class TrainTask:
    """What a model contributes to the loop. Subclass it and override at least build_model, train_dataset, loss.

    The loop sets `self.config` (TrainConfig), `self.device` (torch.device), `self.step` (the optimizer step
    being computed), `self.rank` and `self.world_size` before it calls anything else.
    """

    def __init__(self, config: TrainConfig):
        self.config = config
        self.device = torch.device("cpu")
        self.step = 0
        self.rank, self.world_size = 0, 1
        self.started = time.monotonic()
        self.minutes_before = 0.0  # wall time of the runs this one resumes (the loop reads it from the checkpoint)

    def training_minutes(self) -> float:
        """Wall time of the whole training so far, earlier runs of a resumed training included (for model cards)."""
        return self.minutes_before + (time.monotonic() - self.started) / 60

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """State the task keeps between steps (besides the model and optimizer), saved in the checkpoint so a
        resumed run continues exactly; tensors, numbers, strings, lists and dicts only. Default: none."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned, on resume."""

    def train_dataset(self) -> torch.utils.data.Dataset:
        """A map-style Dataset (shuffled and sharded across ranks by the loop) or an endless
        engine.data.datasets.SeededStream (an IterableDataset the loop seeds per rank, worker and step)."""
        raise NotImplementedError

    def collate(self, items: list) -> Any:
        return torch.utils.data.default_collate(items)

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """(scalar loss, logs) for one micro-batch already on `self.device`. Call `model(...)`: under torchrun
        `model` is the DistributedDataParallel wrapper, whose forward is what synchronises the gradients."""
        raise NotImplementedError

    def configure_optimizers(self, model: torch.nn.Module):
        """(optimizer, scheduler or None). Default: AdamW (decay on >= 2-D weights) with warmup + cosine/constant."""
        cfg = self.config
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Metrics on the held-out split (engine.data.landscapes.EVAL_SEEDS), rank 0 only, under no_grad."""
        return {}

    def export(self, model: torch.nn.Module, out_dir: Path) -> Path | None:
        """Write the trained model folder (engine.model_store.save_model_dir) under `out_dir`; rank 0 only."""
        return None


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    import math

    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def register_task(name: str):
    """Decorator for tasks defined outside the registry (tests, plugins): `@register_task("tiny-test")` on a
    TrainTask subclass or a factory(config) -> TrainTask. The shipped tasks are listed in engine/registry.py."""
    from engine import registry

    def decorate(factory):
        registry.add_task(name, factory)
        return factory

    return decorate


def available_tasks() -> list[str]:
    from engine import registry

    return registry.task_names()


def get_task(name: str) -> Callable[[TrainConfig], TrainTask]:
    from engine import registry

    return registry.task_factory(name)
