"""The one training loop: single process, or one process per device under `torchrun` (DDP)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from safetensors.torch import load_model, save_model
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler
from tqdm import tqdm

from engine.errors import CheckpointError, InputError
from engine.train.task import TrainConfig, TrainTask, get_task

CHECKPOINT = "checkpoint"  # <out>/checkpoint/{model,ema}.safetensors + state.pt


@dataclass
class TrainResult:
    step: int  # optimizer steps done in total (including those before a resume)
    minutes: float  # wall time of this invocation
    metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation
    out_dir: Path = Path()
    model: torch.nn.Module | None = None  # the raw trained model (unwrapped)
    ema: torch.nn.Module | None = None  # its EMA copy, when ema_decay > 0
    stopped_by_budget: bool = False


class _Dist:
    """Process group state: set up from torchrun's environment, or a single process."""

    def __init__(self, config: TrainConfig):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.owns_group = False
        use_cuda = torch.cuda.is_available() and config.device in ("auto", "cuda")
        if self.world > 1:
            if use_cuda:
                torch.cuda.set_device(self.local_rank)
                self.device = torch.device("cuda", self.local_rank)
            else:
                self.device = torch.device("cpu")
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
                self.owns_group = True
        else:
            from engine.device import resolve_device

            self.device = torch.device(resolve_device(config.device))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> float:
        if self.world > 1:
            value = value.detach().clone()
            dist.all_reduce(value)
            value /= self.world
        return float(value)

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision, everywhere (so every rank stops at the same step)."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(t, 0)
        return bool(t.item())

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _batches(task: TrainTask, cfg: TrainConfig, d: _Dist, start_step: int):
    """Endless micro-batches. Map-style datasets are shuffled (and sharded by DistributedSampler); the order
    is reseeded from the step on resume, so a resumed run does not replay the batches it has seen."""
    dataset = task.train_dataset()
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + start_step * 31 + d.rank)
    sampler = None
    if not isinstance(dataset, IterableDataset):
        if d.world > 1:
            sampler = DistributedSampler(dataset, d.world, d.rank, shuffle=True, seed=cfg.seed, drop_last=True)
        else:
            sampler = RandomSampler(dataset, generator=generator)
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
        collate_fn=task.collate, drop_last=True, pin_memory=d.device.type == "cuda",
        worker_init_fn=_seed_worker, generator=generator, persistent_workers=cfg.num_workers > 0,
    )  # fmt: skip
    epoch = start_step
    while True:
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        count = 0
        for batch in loader:
            count += 1
            yield batch
        if count == 0:
            raise InputError(f"training data for {cfg.task!r} has fewer items than one batch ({cfg.batch_size})")
        epoch += 1


class _Log:
    """CSV logs (train.csv, eval.csv) and TensorBoard when it is installed; rank 0 only."""

    def __init__(self, out: Path, enabled: bool):
        self.out, self.enabled = out, enabled
        self.fields: dict[str, list[str]] = {}
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                pass

    def write(self, name: str, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        path = self.out / f"{name}.csv"
        if name not in self.fields:
            if path.is_file() and path.stat().st_size:
                with path.open(newline="") as f:
                    self.fields[name] = next(csv.reader(f))
            else:
                self.fields[name] = list(row)
                with path.open("w", newline="") as f:
                    csv.writer(f).writerow(self.fields[name])
        with path.open("a", newline="") as f:
            csv.DictWriter(f, self.fields[name], restval="", extrasaction="ignore").writerow(row)
        if self.tb is not None:
            for key, value in row.items():
                if key != "step":
                    self.tb.add_scalar(f"{name}/{key}", value, int(row["step"]))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _save(out: Path, d: _Dist, step: int, raw, ema, optimizer, scheduler, cfg: TrainConfig, minutes: float) -> None:
    """Write <out>/checkpoint as a whole (into a temporary folder, then swapped in), rank 0 only."""
    rng = [None] * d.world
    if d.world > 1:
        dist.all_gather_object(rng, _rng_state())
    else:
        rng[0] = _rng_state()
    if d.main:
        tmp, final, old = out / f"{CHECKPOINT}.tmp", out / CHECKPOINT, out / f"{CHECKPOINT}.old"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(raw, str(tmp / "model.safetensors"))
        if ema is not None:
            save_model(ema.module, str(tmp / "ema.safetensors"))
        state = {
            "step": step,
            "minutes": minutes,  # wall time of the training so far, for the model cards of resumed runs
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "ema_n_averaged": int(ema.n_averaged) if ema is not None else 0,
            "rng": rng,
            "world_size": d.world,
            "config": json.dumps(cfg.to_dict()),
        }
        torch.save(state, tmp / "state.pt")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    d.barrier()


def _load(out: Path, d: _Dist, raw, ema, optimizer, scheduler) -> tuple[int, float]:
    folder = out / CHECKPOINT
    try:
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
        missing, unexpected = load_model(raw, str(folder / "model.safetensors"), strict=True, device=str(d.device))
        if ema is not None and (folder / "ema.safetensors").is_file():
            load_model(ema.module, str(folder / "ema.safetensors"), strict=True, device=str(d.device))
            ema.n_averaged.fill_(state["ema_n_averaged"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
    except (OSError, RuntimeError, KeyError, ValueError) as error:
        raise CheckpointError(f"{folder}: cannot resume from this checkpoint ({error})") from None
    rng = state["rng"]
    if len(rng) == d.world:
        _set_rng_state(rng[d.rank])
    return int(state["step"]), float(state.get("minutes", 0.0))


def _precision(cfg: TrainConfig, device: torch.device) -> bool:
    if cfg.precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return cfg.precision == "bf16"


def train(config: TrainConfig, *, resume: bool = False, task: TrainTask | None = None) -> TrainResult:
    """Run `config.task` (or the given `task` object) to `config.steps` or the time budget; see engine.train."""
    started = time.monotonic()
    cfg = config
    d = _Dist(cfg)
    try:
        return _train(cfg, d, resume, task, started)
    finally:
        d.close()


def _train(cfg: TrainConfig, d: _Dist, resume: bool, task: TrainTask | None, started: float) -> TrainResult:
    out = Path(cfg.out_dir or Path("runs") / cfg.task)
    if (out / CHECKPOINT).exists() and not resume:
        raise InputError(f"{out} already holds a checkpoint: pass --resume to continue it, or choose another --out")
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    d.barrier()

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    task = task or get_task(cfg.task)(cfg)
    task.config, task.device, task.rank, task.world_size = cfg, d.device, d.rank, d.world
    raw = task.build_model().to(d.device)
    ema = None
    if cfg.ema_decay > 0:
        ema = AveragedModel(raw, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        ema.module.requires_grad_(False)
    optimizer, scheduler = task.configure_optimizers(raw)

    step = 0
    if resume and (out / CHECKPOINT / "state.pt").is_file():
        step, task.minutes_before = _load(out, d, raw, ema, optimizer, scheduler)
        if d.main:
            print(f"resuming {cfg.task} from step {step} ({out / CHECKPOINT})")
    else:
        if resume and d.main:
            print(f"no checkpoint in {out}; starting {cfg.task} from step 0")
        torch.manual_seed(cfg.seed * 7919 + d.rank)  # ranks draw different noise from here on
        np.random.seed((cfg.seed * 7919 + d.rank) % 2**32)
        random.seed(cfg.seed * 7919 + d.rank)

    model = raw
    if d.world > 1:
        model = DistributedDataParallel(
            raw, device_ids=[d.device.index] if d.device.type == "cuda" else None,
            find_unused_parameters=getattr(task, "find_unused_parameters", False),
        )  # fmt: skip
    use_bf16 = _precision(cfg, d.device)
    autocast = lambda: torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=use_bf16)  # noqa: E731
    log = _Log(out, d.main)

    def evaluate() -> dict[str, float]:
        metrics: dict[str, float] = {}
        if d.main:
            target = ema.module if ema is not None else raw
            target.eval()
            with torch.no_grad(), autocast():
                metrics = {k: float(v) for k, v in task.evaluate(target).items()}
            target.train()
            if metrics:
                log.write("eval", {"step": step, **metrics})
                print(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        d.barrier()
        return metrics

    metrics: dict[str, float] = {}
    stopped = False
    budget = cfg.max_minutes * 60 if cfg.max_minutes > 0 else None
    batches = _batches(task, cfg, d, step) if step < cfg.steps else iter(())
    bar = tqdm(total=cfg.steps, initial=step, disable=not d.main, desc=cfg.task, dynamic_ncols=True)
    raw.train()
    while step < cfg.steps:
        if d.agree(budget is not None and time.monotonic() - started > budget):
            stopped = True
            break
        task.step = step
        logs: dict[str, float] = {}
        total = torch.zeros((), device=d.device)
        for micro in range(cfg.grad_accum):
            batch = _to(next(batches), d.device)
            sync = micro == cfg.grad_accum - 1 or d.world == 1
            with contextlib.nullcontext() if sync else model.no_sync():
                with autocast():
                    loss, micro_logs = task.loss(model, batch)
                (loss / cfg.grad_accum).backward()
            total += loss.detach().float() / cfg.grad_accum
            for k, v in micro_logs.items():
                logs[k] = logs.get(k, 0.0) + float(v) / cfg.grad_accum
        if cfg.grad_clip > 0:
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(raw)
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            loss_value = d.mean(total)
            if not np.isfinite(loss_value):
                raise InputError(f"{cfg.task}: training diverged, the loss is {loss_value} at step {step}; "
                                 "try a lower lr, a warmup, or precision fp32")
            bar.set_postfix(loss=f"{loss_value:.4g}")
            log.write("train", {"step": step, "minutes": (time.monotonic() - started) / 60, "lr": lr,
                                "loss": loss_value, **logs})  # fmt: skip
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
            _save(out, d, step, raw, ema, optimizer, scheduler, cfg, task.training_minutes())
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            metrics = evaluate() or metrics
    bar.close()

    _save(out, d, step, raw, ema, optimizer, scheduler, cfg, task.training_minutes())
    metrics = evaluate() or metrics
    minutes = (time.monotonic() - started) / 60
    if d.main:
        exported = task.export(ema.module if ema is not None else raw, out)
        summary = {"task": cfg.task, "step": step, "minutes": minutes, "stopped_by_budget": stopped,
                   "world_size": d.world, "device": str(d.device), "bf16": use_bf16, "metrics": metrics,
                   "exported": str(exported) if exported else None}  # fmt: skip
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.close()
    d.barrier()
    return TrainResult(step, minutes, metrics, out, raw, ema.module if ema is not None else None, stopped)
