"""The one training loop: single process, or one process per device under `torchrun` (DDP)."""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import math
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
from torch.utils.data import DataLoader, IterableDataset, Sampler
from tqdm import tqdm

from engine.data.datasets import SeededStream
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


class TrainingDiverged(InputError):
    """The loss or the gradient norm became NaN or infinite; the run stops on that step without applying it."""

    def __init__(self, message: str, step: int, loss: float, grad_norm: float | None):
        super().__init__(message)
        self.step, self.loss, self.grad_norm = step, loss, grad_norm


def choose_device(
    choice: str, world: int = 1, local_rank: int = 0, local_world: int = 1
) -> tuple[torch.device, str | None]:
    """(device, process-group backend) for `config.device` in a process of `world` (backend None when alone).

    Under torchrun "auto" and "cuda" give local rank i GPU i (nccl), or the CPU (gloo) when "auto" finds no CUDA;
    "cuda:N" is GPU N (for one process per node: several processes cannot share a GPU under nccl); "cpu" is gloo.
    A device this machine does not have is an InputError, never a silent fallback."""
    from engine.device import resolve_device

    choice = (choice or "auto").strip().lower()
    if world <= 1:
        return torch.device(resolve_device(choice)), None
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cpu":
        return torch.device("cpu"), "gloo"
    if choice == "mps":
        raise InputError("device 'mps' cannot run several training processes (DDP needs CPU or CUDA); use device cpu")
    resolved = resolve_device(choice)  # InputError without CUDA, or for a GPU index this machine does not have
    if resolved == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise InputError(f"local rank {local_rank} has no GPU of its own: {count} CUDA device(s) for "
                             f"{local_world} processes on this node; start at most {count} (--nproc_per_node)")
        return torch.device("cuda", local_rank), "nccl"
    if local_world > 1:
        raise InputError(f"device {choice!r} would put all {local_world} processes of this node on one GPU, which "
                         "nccl refuses; use device cuda (GPU i for local rank i) or CUDA_VISIBLE_DEVICES")
    return torch.device(resolved), "nccl"


class _Dist:
    """Process group state: set up from torchrun's environment, or a single process."""

    def __init__(self, config: TrainConfig):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        self.owns_group = False
        self.device, self.backend = choose_device(config.device, self.world, self.local_rank, local_world)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(self.backend)
            self.owns_group = True

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
    seed = torch.initial_seed() % 2**32  # the loader seeds each worker's torch from its generator (see _Stream)
    np.random.seed(seed)
    random.seed(seed)


def _mix(*values: int) -> int:
    """A 63-bit seed from a tuple of non-negative integers (numpy's SeedSequence hashing)."""
    entropy = [int(v) % 2**64 for v in values]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) & (2**63 - 1)


class _ShardSampler(Sampler):
    """Endless indices of a map-style dataset for one rank, from its `skip`-th on. Pass (epoch) p is a permutation
    seeded from (seed, p), the same on every rank, of which rank r takes every world-th index from r: ranks never
    share an item within a pass, and the order is a function of the position alone, so a resumed run continues
    the pass it was in."""

    def __init__(self, size: int, seed: int, rank: int, world: int, skip: int = 0):
        self.size, self.seed, self.rank, self.world, self.skip = size, seed, rank, world, skip

    def __iter__(self):
        per_rank = self.size // self.world
        first, offset = divmod(self.skip, per_rank)
        for p in itertools.count(first):
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(_mix(self.seed, p)))
            yield from order[: per_rank * self.world][self.rank :: self.world][offset:].tolist()
            offset = 0


class _Stream:
    """This rank's endless micro-batches. The loop restarts the stream at every checkpoint it writes, and a resumed
    run at the checkpoint's step, so a resumed run draws exactly what an uninterrupted one would have, and never
    replays what it has seen. Iterable datasets must be SeededStreams: each worker draws from (config seed, rank,
    worker, start step). Map-style datasets are shuffled and sharded by _ShardSampler, continuing from the number
    of items this rank has drawn; their loader workers are seeded from (config seed, rank, start step)."""

    def __init__(self, task: TrainTask, cfg: TrainConfig, d: _Dist):
        self.cfg, self.d, self.task = cfg, d, task
        self.dataset, self.iterable = None, False
        self.start, self.start_items, self.iterator = 0, 0, None

    def _open(self) -> None:
        """task.train_dataset(), on the first restart (a finished run never builds it); whatever random numbers it
        draws are not taken from the training's generators, so it cannot shift a resumed run's draws."""
        cfg, d = self.cfg, self.d
        with _rng_fork():
            self.dataset = self.task.train_dataset()
        self.iterable = isinstance(self.dataset, IterableDataset)
        if self.iterable and not isinstance(self.dataset, SeededStream):
            raise InputError(f"{cfg.task}: its training data ({type(self.dataset).__name__}) is an IterableDataset "
                             "but not an engine.data.datasets.SeededStream, so ranks and resumed runs could draw "
                             "the same batches; derive it from SeededStream and draw from self.rng()")
        if not self.iterable and len(self.dataset) // d.world < cfg.batch_size:
            raise InputError(f"training data for {cfg.task!r} has fewer items ({len(self.dataset)}) than one batch "
                             f"({cfg.batch_size}) per process ({d.world})")

    def items(self, step: int) -> int:
        """Items this rank has drawn before optimizer step `step` (counted from the current segment's start)."""
        return self.start_items + (step - self.start) * self.cfg.grad_accum * self.cfg.batch_size

    def restart(self, start: int, items: int | None = None) -> None:
        """Begin the stream's segment that starts at optimizer step `start` (map-style: at item `items` of this
        rank's shards, by default what `start` steps draw)."""
        cfg, d = self.cfg, self.d
        self.iterator = None  # shuts the previous segment's workers down
        if self.dataset is None:
            self._open()
        items = self.items(start) if items is None else items
        self.start, self.start_items, sampler = start, items, None
        if self.iterable:
            self.dataset.place(cfg.seed, d.rank, d.world, start)
        else:
            sampler = _ShardSampler(len(self.dataset), cfg.seed, d.rank, d.world, items)
        loader = DataLoader(
            self.dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
            collate_fn=self.task.collate, drop_last=True, pin_memory=d.device.type == "cuda",
            worker_init_fn=_seed_worker, generator=torch.Generator().manual_seed(_mix(cfg.seed, d.rank, start)),
        )  # fmt: skip
        self.iterator = iter(loader)

    def __next__(self):
        try:
            return next(self.iterator)
        except StopIteration:
            raise InputError(f"the training stream of {self.cfg.task!r} ended (from step {self.start}): a SeededStream "
                             f"must be endless and yield at least one batch ({self.cfg.batch_size})") from None

    def state(self, start: int) -> dict:
        """The stream position a checkpoint at step `start` records: a resumed run restarts the stream there."""
        return {"start": start, "items": self.items(start), "rank": self.d.rank, "world_size": self.d.world,
                "num_workers": self.cfg.num_workers, "seed": self.cfg.seed}  # fmt: skip


@contextlib.contextmanager
def _rng_fork():
    """Whatever runs inside (evaluation) leaves the training's random state as it found it."""
    state = _rng_state()
    try:
        yield
    finally:
        _set_rng_state(state)


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
        new = [key for key in row if key not in self.fields[name]]
        if new:  # a term that starts later (a discriminator after disc_start): widen the file, keep its rows
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            self.fields[name] += new
            temp = path.with_suffix(".csv.tmp")
            with temp.open("w", newline="") as f:
                writer = csv.DictWriter(f, self.fields[name], restval="")
                writer.writeheader()
                writer.writerows(rows)
            temp.replace(path)
        with path.open("a", newline="") as f:
            csv.DictWriter(f, self.fields[name], restval="").writerow(row)
        if self.tb is not None:
            for key, value in row.items():
                if key != "step":
                    self.tb.add_scalar(f"{name}/{key}", value, int(row["step"]))

    def forget_after(self, step: int) -> None:
        """Drop the rows logged after `step`: a resumed run repeats the steps after its checkpoint, and the log
        should read as the run that made the weights, one row per step."""
        if not self.enabled:
            return
        for path in (self.out / "train.csv", self.out / "eval.csv"):
            if not path.is_file() or not path.stat().st_size:
                continue
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                fields, rows = reader.fieldnames or [], list(reader)
            kept = [row for row in rows if float(row.get("step") or 0) <= step]
            if len(kept) == len(rows):
                continue
            temp = path.with_suffix(".csv.tmp")
            with temp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fields, restval="")
                writer.writeheader()
                writer.writerows(kept)
            temp.replace(path)

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


@dataclass
class _Run:
    """What a checkpoint holds besides the model: the loop's moving parts."""

    raw: torch.nn.Module
    ema: AveragedModel | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    task: TrainTask
    stream: _Stream


def _save(out: Path, d: _Dist, step: int, run: _Run, cfg: TrainConfig, restart: bool = True) -> None:
    """Write <out>/checkpoint as a whole (into a temporary folder, then swapped in), rank 0 only; and (`restart`)
    restart the data stream at `step`, as a run resumed from this checkpoint will."""
    raw, ema, optimizer, scheduler = run.raw, run.ema, run.optimizer, run.scheduler
    minutes = run.task.training_minutes()
    rng = [None] * d.world
    if d.world > 1:
        dist.all_gather_object(rng, _rng_state())
    else:
        rng[0] = _rng_state()
    if restart:
        run.stream.restart(step)
    streams = [None] * d.world
    if d.world > 1:
        dist.all_gather_object(streams, run.stream.state(step))
    else:
        streams[0] = run.stream.state(step)
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
            "stream": streams,  # where each rank's data stream starts again: this step (see _Stream)
            "scaler": run.scaler.state_dict() if run.scaler is not None else None,
            "task": run.task.state_dict(),
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


def _load(out: Path, d: _Dist, run: _Run) -> tuple[int, float, int | None]:
    """(step, minutes so far, items this rank's stream had drawn or None) from <out>/checkpoint."""
    raw, ema, optimizer, scheduler = run.raw, run.ema, run.optimizer, run.scheduler
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
        if run.scaler is not None and state.get("scaler"):
            run.scaler.load_state_dict(state["scaler"])
        run.task.load_state_dict(state.get("task") or {})
    except (OSError, RuntimeError, KeyError, ValueError) as error:
        raise CheckpointError(f"{folder}: cannot resume from this checkpoint ({error})") from None
    rng, streams, items = state["rng"], state.get("stream") or [], None
    if len(rng) == d.world:
        _set_rng_state(rng[d.rank])
    elif d.main:
        print(f"note: the checkpoint was written by {len(rng)} process(es), this run has {d.world}: the data and "
              "random draws continue, but not as the original run would have")
    if len(streams) == d.world and streams[d.rank]:
        items = int(streams[d.rank]["items"])
    return int(state["step"]), float(state.get("minutes", 0.0)), items


def _precision(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if cfg.precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)


def _tf32(cfg: TrainConfig, device: torch.device) -> bool:
    """Allow TF32 matmuls and convolutions on Ampere (compute capability 8) and newer; True when enabled."""
    if not cfg.tf32 or device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 8:
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


def _grad_norm(params: list[torch.Tensor], clip: float) -> torch.Tensor:
    """The global gradient norm (before clipping to `clip`, when clip > 0)."""
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(params, clip)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


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
    amp_dtype = _precision(cfg, d.device)
    scaler = torch.amp.GradScaler(d.device.type) if amp_dtype == torch.float16 else None
    tf32 = _tf32(cfg, d.device)
    run = _Run(raw, ema, optimizer, scheduler, scaler, task, _Stream(task, cfg, d))

    step, items = 0, None
    if resume and (out / CHECKPOINT / "state.pt").is_file():
        step, task.minutes_before, items = _load(out, d, run)
        if d.main:
            print(f"resuming {cfg.task} from step {step} ({out / CHECKPOINT})")
    else:
        if resume and d.main:
            print(f"no checkpoint in {out}; starting {cfg.task} from step 0")
        torch.manual_seed(cfg.seed * 7919 + d.rank)  # ranks draw different noise from here on
        np.random.seed((cfg.seed * 7919 + d.rank) % 2**32)
        random.seed(cfg.seed * 7919 + d.rank)
    last_saved = step

    model = raw
    if d.world > 1:
        model = DistributedDataParallel(
            raw, device_ids=[d.device.index] if d.device.type == "cuda" else None,
            find_unused_parameters=getattr(task, "find_unused_parameters", False),
        )  # fmt: skip
    if cfg.compile:
        model = torch.compile(model)

    def autocast():
        return torch.autocast(d.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None)

    log = _Log(out, d.main)
    if resume:
        log.forget_after(step)

    def evaluate() -> dict[str, float]:
        metrics: dict[str, float] = {}
        if d.main:
            target = ema.module if ema is not None else raw
            target.eval()
            with _rng_fork(), torch.no_grad(), autocast():
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
    if step < cfg.steps:
        run.stream.restart(step, items)
    bar = tqdm(total=cfg.steps, initial=step, disable=not d.main, desc=cfg.task, dynamic_ncols=True)
    raw.train()
    try:
        while step < cfg.steps:
            if d.agree(budget is not None and time.monotonic() - started > budget):
                stopped = True
                break
            task.step = step
            logs: dict[str, float] = {}
            total = torch.zeros((), device=d.device)
            for micro in range(cfg.grad_accum):
                batch = _to(next(run.stream), d.device)
                sync = micro == cfg.grad_accum - 1 or d.world == 1
                with contextlib.nullcontext() if sync else model.no_sync():
                    with autocast():
                        loss, micro_logs = task.loss(model, batch)
                    scaled = loss / cfg.grad_accum
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                total += loss.detach().float() / cfg.grad_accum
                for k, v in micro_logs.items():
                    logs[k] = logs.get(k, 0.0) + float(v) / cfg.grad_accum
            loss_value = d.mean(total)  # every rank sees the same value, so every rank stops on the same step
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = float(_grad_norm(list(raw.parameters()), cfg.grad_clip))  # the same on every rank: gradients are synced
            overflow = scaler is not None and not math.isfinite(grad_norm)  # fp16: GradScaler skips this step
            if not math.isfinite(loss_value) or not (math.isfinite(grad_norm) or overflow):
                what = "loss" if not math.isfinite(loss_value) else "gradient norm"
                raise TrainingDiverged(
                    f"{cfg.task}: training diverged at step {step + 1}: the {what} is not finite (loss {loss_value}, "
                    f"gradient norm {grad_norm}); the step was not applied and the run stopped. The last checkpoint "
                    f"is step {last_saved} in {out / CHECKPOINT}. Try a lower lr, a warmup, grad_clip, or "
                    "precision fp32.", step + 1, loss_value, grad_norm)  # fmt: skip
            logs["grad_norm"] = grad_norm
            lr = optimizer.param_groups[0]["lr"]
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
                logs["loss_scale"] = float(scaler.get_scale())
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            if ema is not None:
                ema.update_parameters(raw)
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                bar.set_postfix(loss=f"{loss_value:.4g}")
                log.write("train", {"step": step, "minutes": (time.monotonic() - started) / 60, "lr": lr,
                                    "loss": loss_value, **logs})  # fmt: skip
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                _save(out, d, step, run, cfg)
                last_saved = step
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                metrics = evaluate() or metrics
    except BaseException:
        log.close()
        raise
    finally:
        bar.close()
        run.stream.iterator = None  # the loader's workers end here

    _save(out, d, step, run, cfg, restart=False)
    metrics = evaluate() or metrics
    minutes = (time.monotonic() - started) / 60
    if d.main:
        exported = task.export(ema.module if ema is not None else raw, out)
        summary = {"task": cfg.task, "step": step, "minutes": minutes,
                   "training_minutes": task.training_minutes(),  # with the runs a resumed one continues
                   "stopped_by_budget": stopped,
                   "world_size": d.world, "device": str(d.device), "precision": str(amp_dtype or torch.float32),
                   "bf16": amp_dtype == torch.bfloat16, "tf32": tf32, "compiled": cfg.compile, "metrics": metrics,
                   "exported": str(exported) if exported else None}  # fmt: skip
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.close()
    d.barrier()
    return TrainResult(step, minutes, metrics, out, raw, ema.module if ema is not None else None, stopped)
