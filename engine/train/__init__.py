"""The one training loop every Sgraffito model uses.

Run it
------
    sgraffito train TASK --config FILE.yaml [--max-minutes M] [--out DIR] [--resume] [--set key=value ...]
    .venv/bin/torchrun --nproc_per_node N -m app train TASK --config FILE.yaml     # one process per GPU or CPU slot
    sgraffito train --list                                                          # registered tasks

or from Python: `train(TrainConfig.from_yaml(path, task="name"), resume=False) -> TrainResult`.

The config is a YAML mapping of `TrainConfig` fields (engine/train/task.py): steps, batch_size (per process and
micro-batch), grad_accum, lr, weight_decay, betas, warmup_steps, schedule (cosine|constant), grad_clip,
ema_decay (0 = off), precision (auto|bf16|fp16|fp32; torch.autocast, fp16 with a GradScaler; auto is bf16 on CUDA),
tf32 (on Ampere and newer, default true), compile (torch.compile, default false), eval_every, save_every,
log_every, max_minutes, out_dir (default runs/<task>), seed, num_workers, device (auto|cpu|cuda|cuda:N|mps), and
`options`: a free mapping for your task (model size, crop size, ...). `--set a.b.c=VALUE` (YAML value) overrides
one nested key, e.g. `--set options.generator.hidden=64`.

What a run writes in out_dir: config.yaml; train.csv (step, minutes, lr, loss, grad_norm, your logs) and
eval.csv (step, your metrics), TensorBoard events when tensorboard is installed; checkpoint/ with model.safetensors,
ema.safetensors and state.pt (optimizer, scheduler, GradScaler, step, every rank's RNG state and data stream
position, the task's `state_dict()`; read back with torch.load(weights_only=True)); summary.json; and whatever your
`export` writes. A new run refuses an out_dir that holds a checkpoint unless `resume` is given; a resumed run
continues from the saved step and ends bit-identical to a run that was never interrupted (same settings, same
number of processes and workers). Map-style data is shuffled per pass and read on from the position reached;
an IterableDataset must derive from engine.data.datasets.SeededStream, which each worker seeds from (seed, rank,
worker, step), and the loop restarts it at every checkpoint. A NaN or infinite loss or gradient norm stops the run
on that step (TrainingDiverged, naming the step and the loss) without applying it.

Under torchrun (WORLD_SIZE > 1) the loop initialises the process group itself (nccl on CUDA, gloo on CPU; device
auto/cuda gives local rank i GPU i, cuda:N pins a one-process-per-node run to GPU N, and a missing GPU is an error,
not a fallback), wraps the model in DistributedDataParallel, gives each rank a disjoint share of the data, and only rank 0 logs,
evaluates, checkpoints and exports. Initial weights are identical on every rank (same seed before build_model).
Across several nodes, out_dir must be on a shared filesystem for --resume. The time budget (max_minutes) is
decided by rank 0 and broadcast, so every rank stops at the same step; a run that
ends by budget still saves, evaluates and exports.

Add a trainer
-------------
Write a TrainTask in `engine/train/tasks_<model>.py` and name it in its engine's entry of engine/registry.py
(`tasks={"tiny-colour": "engine.train.tasks_tiny:TinyColour"}`); `get_task` imports that module when the task is
run. Tests and plugins may register a task at run time with `register_task` instead. The loop sets task.config,
task.device, task.rank, task.world_size and, before each optimizer step, task.step.

    import torch
    from torch import nn
    from engine.data.datasets import LandscapeDataset
    from engine.train import TrainTask, register_task

    @register_task("tiny-colour")
    class TinyColour(TrainTask):
        '''Predict the RGB image from the one-hot label map with a 1x1 conv.'''

        def build_model(self):
            return nn.Conv2d(183, 3, 1)

        def train_dataset(self):
            size = self.config.options.get("size", 64)
            return LandscapeDataset(size=size, length=10_000)  # items: {"image": 3xHxW in [-1,1], "labels": HxW}

        def loss(self, model, batch):
            onehot = nn.functional.one_hot(batch["labels"].long().clamp(max=182), 183).permute(0, 3, 1, 2).float()
            loss = nn.functional.mse_loss(model(onehot), batch["image"])
            return loss, {"mse": loss.item()}

        def evaluate(self, model):           # held-out scenes: engine.data.landscapes.EVAL_SEEDS
            return {"eval_mse": ...}

        def export(self, model, out_dir):    # the folder the app loads (engine.model_store.save_model_dir)
            from engine.model_store import save_model_dir
            return save_model_dir(out_dir / "model", {"model": model.state_dict()}, {"kind": ..., "title": ...})

Optional overrides: `collate(items)` (default torch default_collate), `configure_optimizers(model) ->
(optimizer, scheduler | None)` (default AdamW with decay on >= 2-D weights, warmup then cosine to 10%), and a
class attribute `find_unused_parameters = True` if some parameters get no gradient in a step (DDP needs to know).
In `loss`, call `model(...)`: under torchrun `model` is the DDP wrapper and its forward is what syncs gradients;
use `engine.train.unwrap(model)` to reach your module's other methods for things that are not trained.
"""

from engine.train.loop import TrainResult, train
from engine.train.task import TrainConfig, TrainTask, available_tasks, get_task, register_task


def unwrap(model):
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return getattr(model, "module", model)


__all__ = [
    "TrainConfig", "TrainResult", "TrainTask", "available_tasks", "get_task", "register_task",
    "train", "unwrap",
]  # fmt: skip
