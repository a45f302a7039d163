"""A tiny trainer for the loop's tests: a 1x1-conv 'label map -> colours' model on 64x64 landscapes.

Also runnable as a script (that is how the torchrun test starts it):
    torchrun --nproc_per_node 2 -m tests.train_tiny_task OUT STEPS [--resume]
Each rank then writes OUT/hash-rank<R>.txt with a hash of its final weights and the step it reached.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch
from torch import nn

from engine.data.datasets import LandscapeDataset, SeededStream, to_item
from engine.data.landscapes import EVAL_SEEDS, TRAIN_SEEDS, generate_scene
from engine.train import TrainConfig, TrainTask, register_task, train

CLASSES = 183  # COCO-Stuff 182 ids plus one slot for everything else (unlabeled)


def onehot(labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.one_hot(labels.clamp(max=CLASSES - 1), CLASSES).permute(0, 3, 1, 2).float()


class TinyScenes(SeededStream):
    """An endless stream of small training scenes (items as LandscapeDataset's, with their "seed")."""

    def __init__(self, size: int = 64):
        self.size = size

    def __iter__(self):
        rng = self.rng()
        while True:
            seed = self.train_seed(rng, TRAIN_SEEDS)
            scene = generate_scene(seed, self.size)
            item = to_item(scene.image, scene.labels)
            item["seed"] = seed
            yield item


@register_task("tiny-test")
class TinyTask(TrainTask):
    """options: length (map-style scenes), stream (true: TinyScenes instead), noise (draw noise), and crash_at /
    nan_at / inf_grad_at (the step index at which the loss raises, is NaN, or has infinite gradients)."""

    def __init__(self, config):
        super().__init__(config)
        self.seen: list[int] = []  # the scene seeds of every micro-batch item this rank trained on

    def build_model(self):
        return nn.Sequential(nn.Conv2d(CLASSES, 8, 1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))

    def train_dataset(self):
        if self.config.options.get("stream"):
            return TinyScenes(int(self.config.options.get("size", 64)))
        return LandscapeDataset(size=64, length=self.config.options.get("length", 32))

    def loss(self, model, batch):
        options = self.config.options
        self.seen.extend(int(s) for s in batch["seed"])
        if options.get("crash_at") == self.step:
            raise KeyboardInterrupt(f"simulated interruption at step index {self.step}")
        prediction = model(onehot(batch["labels"]))
        if options.get("inf_grad_at") == self.step:
            prediction.register_hook(lambda grad: grad * float("inf"))
        target = batch["image"]
        if options.get("noise"):  # draws from torch's generator every step, as dropout would
            target = target + 0.05 * torch.randn_like(target)
        loss = nn.functional.mse_loss(prediction, target)
        if options.get("nan_at") == self.step:
            loss = loss * float("nan")
        return loss, {"mse": loss.item()}

    def evaluate(self, model):
        if self.config.options.get("noise"):
            torch.rand(3)  # evaluation that draws random numbers must not change the training's draws
        data = LandscapeDataset(size=64, length=4, seeds=EVAL_SEEDS)
        batch = torch.utils.data.default_collate([data[i] for i in range(len(data))])
        prediction = model(onehot(batch["labels"]).to(self.device))
        return {"eval_mse": nn.functional.mse_loss(prediction.float(), batch["image"].to(self.device)).item()}

    def export(self, model, out_dir):
        from safetensors.torch import save_model

        path = Path(out_dir) / "tiny.safetensors"
        save_model(model, str(path))
        return path


def weights_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    out, steps, resume = argv[0], int(argv[1]), "--resume" in argv
    config = TrainConfig(task="tiny-test", steps=steps, batch_size=2, lr=1e-2, save_every=2, eval_every=3,
                         log_every=1, out_dir=out, ema_decay=0.9, grad_accum=2)
    result = train(config, resume=resume)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else int(__import__("os").environ.get("RANK", 0))
    Path(out, f"hash-rank{rank}.txt").write_text(f"{result.step} {weights_hash(result.model)}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
