"""Training task "coltran": the three ColTran stages, small enough for a CPU, on colour images we have offline:
procedural landscapes (engine.data.landscapes) and random crops of the bundled sample photos; or, with
`options.real_photo_fraction` > 0, landscapes and that share of crops of the real photos' train split
(engine.data.photos, `sgraffito data photos`), without the sample photos (held out for evaluation). The default
0 keeps the shipped config's data and draws.

The stages share no parameters, so one model holding all three trained on the sum of their losses is the same as
training them separately with one learning rate. Losses as the official code: the colorizer's cross-entropy over
512 coarse symbols with teacher forcing (weight 0.99) plus the parallel head's (0.01); the colour upsampler's
cross-entropy over 256 levels per channel at 64x64; the spatial upsampler's at 256x256 on one random channel per
image, as the official training slices one channel to save memory, and on a random 64x64 crop of the
256x256 grid (positional tables sliced to the crop), which a CPU can afford. Inputs are prepared exactly as at sampling
time (engine.pipelines.coltran: luma, TF AREA resizing with half-to-even rounding, pixel replication 64 -> 256).
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from engine.data.datasets import PhotoCrops, SeededStream
from engine.model_store import save_model_dir
from engine.pipelines.coltran import COARSE, FINE, area_resize, colorize, to_gray
from engine.data.landscapes import EVAL_SEEDS, TRAIN_SEEDS, generate_scene
from engine.models.coltran import (ColTran, ColTranConfig, CoreConfig, UpsamplerConfig, rgb_to_symbols,
                                   symbols_to_rgb)
from engine.paths import assets_dir
from engine.train.task import TrainTask
from engine.train.tasks_pixelcnn import psnr_ab  # the same chroma PSNR as the PixelCNN card

MODEL_NAME = "demo-coltran"


def training_photos() -> list[np.ndarray]:
    """The colour sample photos shipped in assets/samples (grayscale ones cannot teach colour)."""
    from engine.imageio import load_photo

    photos = []
    for path in sorted((assets_dir() / "samples").glob("*.jpg")):
        photo = load_photo(path)
        if not photo.is_grayscale:
            photos.append(photo.rgb)
    return photos


def stage_inputs(rgb256: np.ndarray) -> dict[str, torch.Tensor]:
    """One 256x256 colour image -> every stage's inputs and targets."""
    gray256 = area_resize(to_gray(rgb256), FINE, FINE)
    rgb64 = area_resize(rgb256, COARSE, COARSE)
    return {"gray256": torch.from_numpy(gray256).long(), "gray64": torch.from_numpy(area_resize(gray256, COARSE, COARSE)).long(),
            "rgb64": torch.from_numpy(rgb64).long(), "rgb256": torch.from_numpy(rgb256.astype(np.int64))}


class ColourImages(torch.utils.data.Dataset):
    """Item i: a landscape scene (three in four) or a random crop of a sample photo, 256x256."""

    def __init__(self, length: int, photos: list[np.ndarray], seeds=TRAIN_SEEDS):
        self.length, self.photos, self.seeds = length, photos, seeds

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([index, 17])
        if not self.photos or index % 4:
            image = generate_scene(int(self.seeds[index]), FINE).image
        else:
            photo = self.photos[rng.integers(len(self.photos))]
            side = int(rng.integers(FINE, min(photo.shape[:2]) + 1))
            top, left = (int(rng.integers(s - side + 1)) for s in photo.shape[:2])
            image = cv2.resize(photo[top: top + side, left: left + side], (FINE, FINE), interpolation=cv2.INTER_AREA)
            if rng.random() < 0.5:
                image = image[:, ::-1]
        return stage_inputs(np.ascontiguousarray(image))


class ScenesAndPhotos(SeededStream):
    """Endless 256x256 colour images: a random training landscape, or with probability `photo_fraction` a crop of
    a real photo (`photos`, this rank's share of them). Seeded from (config seed, rank, worker, start step) by
    the loop (engine.data.datasets.SeededStream)."""

    def __init__(self, photos: PhotoCrops, photo_fraction: float):
        self.photos, self.photo_fraction = photos, float(photo_fraction)

    def __iter__(self):
        rng = self.rng()
        while True:
            if rng.random() < self.photo_fraction:
                image = self.photos.draw(rng, self)
            else:
                image = generate_scene(self.train_seed(rng), FINE).image
            yield stage_inputs(image)


def architecture(options: dict) -> ColTranConfig:
    return ColTranConfig(
        CoreConfig(hidden_size=options.get("hidden", 64), ff_size=options.get("ff", 128),
                   num_heads=options.get("heads", 2), num_encoder_layers=options.get("encoder_layers", 2),
                   num_outer_layers=options.get("outer_layers", 1), num_inner_layers=options.get("inner_layers", 1)),
        UpsamplerConfig(hidden_size=options.get("up_hidden", 32), ff_size=options.get("up_ff", 64),
                        num_heads=options.get("heads", 2), num_encoder_layers=options.get("up_layers", 1)),
        UpsamplerConfig(hidden_size=options.get("up_hidden", 32), ff_size=options.get("up_ff", 64),
                        num_heads=options.get("heads", 2), num_encoder_layers=options.get("up_layers", 1),
                        resolution=(FINE, FINE)))


def evaluate_colorizer(model: ColTran, images: list[np.ndarray], samples: int = 1) -> dict:
    """Chroma PSNR and colourfulness of sampled colourings, the parallel head alone and a gray baseline."""
    from engine.composite import transfer_chroma
    from engine.metrics import colorfulness

    rows = {"sampled": [], "parallel": [], "gray": []}
    colour = {"sampled": [], "parallel": [], "gray": [], "truth": []}
    started = time.perf_counter()
    for n, truth in enumerate(images):
        gray = to_gray(truth)
        results = {"gray": np.repeat(gray[:, :, None], 3, axis=2)}
        results["sampled"] = colorize(model, gray, [1000 + n])[0]
        coarse = torch.from_numpy(area_resize(area_resize(gray, FINE, FINE), COARSE, COARSE)).long()[None]
        preview = (symbols_to_rgb(model.colorizer.parallel_preview(coarse))[0].numpy() * 32 + 16).astype(np.uint8)
        results["parallel"] = transfer_chroma(gray, preview)
        for key, image in results.items():
            rows[key].append(psnr_ab(image, truth))
            colour[key].append(colorfulness(image))
        colour["truth"].append(colorfulness(truth))
    out = {f"psnr_ab_{k}": float(np.mean(v)) for k, v in rows.items()}
    out |= {f"colorfulness_{k}": float(np.mean(v)) for k, v in colour.items()}
    out["seconds_per_image"] = (time.perf_counter() - started) / max(len(images), 1)
    return out


class ColTranTask(TrainTask):
    """options: hidden, ff, heads, encoder_layers, outer_layers, inner_layers, up_hidden, up_ff, up_layers,
    spatial_crop, length (dataset size), eval_images, real_photo_fraction (0: landscapes and sample photos as
    shipped; above 0: landscapes and that share of real photo crops, `ScenesAndPhotos`), real_photo_cache
    (the photos' cache folder, default the user's)."""

    def build_model(self):
        return ColTran(architecture(self.config.options))

    def train_dataset(self):
        options = self.config.options
        fraction = float(options.get("real_photo_fraction", 0.0))
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"options.real_photo_fraction must be a fraction in [0, 1], not {fraction}")
        if fraction == 0:
            return ColourImages(int(options.get("length", 50_000)), training_photos())
        # crops of 60-100 % of a photo's short side: sampling stretches a whole photo to the 256 px square
        return ScenesAndPhotos(PhotoCrops(FINE, cache=options.get("real_photo_cache"), scale=(0.6, 1.0)), fraction)

    def loss(self, model, batch):
        coltran = model.module if hasattr(model, "module") else model
        symbols = rgb_to_symbols(batch["rgb64"])
        logits, parallel = coltran.colorizer(batch["gray64"], symbols)
        colorizer_loss = F.cross_entropy(logits.flatten(0, 2), symbols.flatten())
        parallel_loss = F.cross_entropy(parallel.flatten(0, 2), symbols.flatten())
        up_logits = coltran.color_upsampler(batch["rgb64"] // 32, batch["gray64"])
        color_loss = F.cross_entropy(up_logits.flatten(0, 3), batch["rgb64"].flatten())
        # the spatial upsampler on one random channel per image, as the official training, and (ours, for a
        # CPU) on a random crop of the 256x256 grid, its positional tables sliced to the crop's place
        crop = int(self.config.options.get("spatial_crop", 64))
        top, left = (int(v) for v in torch.randint(0, FINE - crop + 1, (2,)))
        rows, cols = slice(top, top + crop), slice(left, left + crop)
        blurry = batch["rgb64"].repeat_interleave(4, dim=1).repeat_interleave(4, dim=2)[:, rows, cols]
        spatial_logits = coltran.spatial_upsampler(blurry, batch["gray256"][:, rows, cols], offset=(top, left))
        images = torch.arange(blurry.shape[0], device=blurry.device)
        channel = torch.randint(0, 3, (blurry.shape[0],), device=blurry.device)
        picked = spatial_logits[images, :, :, channel]  # (B, crop, crop, 256)
        target = batch["rgb256"][:, rows, cols][images, :, :, channel]
        spatial_loss = F.cross_entropy(picked.flatten(0, 2), target.flatten())
        loss = 0.99 * colorizer_loss + 0.01 * parallel_loss + color_loss + spatial_loss
        bits = 1 / np.log(2)
        return loss, {"colorizer_bits": colorizer_loss.item() * bits, "parallel_bits": parallel_loss.item() * bits,
                      "color_up_bits": color_loss.item() * bits, "spatial_up_bits": spatial_loss.item() * bits}

    def evaluate(self, model):
        count = int(self.config.options.get("eval_images", 4))
        images = [generate_scene(int(seed), FINE).image for seed in EVAL_SEEDS[:count]]
        model.eval()
        try:
            return evaluate_colorizer(model, images)
        finally:
            model.train()

    def export(self, model, out_dir):
        config = architecture(self.config.options)
        states = {stage: {k: v.detach().cpu() for k, v in getattr(model, stage).state_dict().items()}
                  for stage in ("colorizer", "color_upsampler", "spatial_upsampler")}
        return save_model_dir(Path(out_dir) / MODEL_NAME, states, {
            "kind": "coltran", "title": "ColTran demo (synthetic landscapes and sample photos)",
            "architecture": config.to_dict()})


def write_model_card(model_dir: Path, run_dir: Path, scenes: int = 16, size: int = 128) -> str:
    """Evaluate the exported model on held-out scenes (the PixelCNN card's scenes and size, so the two cards
    compare) and write MODEL_CARD.md from the run's log."""
    import csv
    import json

    from engine.pipelines.coltran import load_model
    from engine.device import describe_device
    from engine.train.tasks_pixelcnn import evaluate_backend

    model = load_model(str(model_dir))
    rows = list(csv.DictReader(open(run_dir / "train.csv")))
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    config = json.loads((model_dir / "config.json").read_text())["architecture"]
    images = [generate_scene(int(seed), size).image for seed in EVAL_SEEDS[:scenes]]
    own = evaluate_colorizer(model, images)
    sampled = evaluate_backend("coltran", str(model_dir), scenes, size=size, samples=4)
    params = {stage: sum(p.numel() for p in getattr(model, stage).parameters())
              for stage in ("colorizer", "color_upsampler", "spatial_upsampler")}
    last = rows[-1]
    card = f"""# ColTran (demo)

The three ColTran stages (engine/models/coltran.py), built exactly as the official code builds them but small:
colorizer {params["colorizer"] / 1e3:.0f} k parameters (hidden {config["core"]["hidden_size"]}, {config["core"]["num_heads"]} heads,
{config["core"]["num_encoder_layers"]} encoder / {config["core"]["num_outer_layers"]} outer / {config["core"]["num_inner_layers"]} inner layers, 64x64, 512 coarse colours), colour upsampler
{params["color_upsampler"] / 1e3:.0f} k and spatial upsampler {params["spatial_upsampler"] / 1e3:.0f} k (hidden {config["spatial_upsampler"]["hidden_size"]}, {config["spatial_upsampler"]["num_encoder_layers"]} layer). The official
models are about 46 M, 13.5 M and 10.9 M parameters; import them with `sgraffito import coltran coltran.zip`.

## Data
256x256 colour images: procedural landscapes (engine.data.landscapes, TRAIN_SEEDS; three in four) and random
crops of the colour photos in assets/samples (one in four), prepared as at sampling time (BT.601 luma, TF AREA
resizing with half-to-even rounding). The spatial upsampler trains on random 64x64 crops of the 256x256 grid.

## Training
`sgraffito train coltran --config assets/models/demo-coltran/train.yaml --max-minutes 60`: {summary.get("step", last["step"])} steps of
batch 4, {float(summary.get("minutes", last["minutes"])):.1f} minutes wall time on {describe_device("cpu")}, one thread, on a machine shared with
about ten other training and test jobs (load average 10-20), so this is a short, unconverged run. Losses
at the end, bits per symbol: colorizer {float(last["colorizer_bits"]):.2f} (started at 9.0; log2 512 = 9), parallel head
{float(last["parallel_bits"]):.2f}, colour upsampler {float(last["color_up_bits"]):.2f}, spatial upsampler {float(last["spatial_up_bits"]):.2f} (log2 256 = 8).
{("Summary: " + json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict) and k != "exported"})) if summary else ""}

## Held-out metrics
{scenes} held-out scenes (EVAL_SEEDS) at {size} px, the same scenes and size as the PixelCNN demo card; the
model sees only their gray version. Chroma PSNR: PSNR of the Lab a*, b* channels against the true colours,
peak 255. Colourfulness: Hasler and Suesstrunk. The true images score {own["colorfulness_truth"]:.1f}.

| method | chroma PSNR (dB) | colourfulness |
|---|---|---|
| gray (no colour) | {own["psnr_ab_gray"]:.2f} | {own["colorfulness_gray"]:.1f} |
| ColTran parallel head alone (argmax) | {own["psnr_ab_parallel"]:.2f} | {own["colorfulness_parallel"]:.1f} |
| ColTran, one sample (T=1), mean of 4 | {sampled["psnr_ab_sample"]:.2f} | {sampled["colorfulness_sample"]:.1f} |
| ColTran, best of 4 samples | {sampled["psnr_ab_best_of_4"]:.2f} | |

Sampling time through the runtime: {sampled["seconds_per_image"]:.1f} s for 4 candidates of a {size} px image
(on the shared CPU; in the 1024x768 end-to-end benchmark the spatial upsampler takes
three quarters of the time, the autoregressive colorizer a fifth).

## Limits
A demonstration of the engine, not a colorizer to rely on: trained for an hour of one shared CPU core on landscapes and five photos,
it colours other subjects with landscape colours. Its samples are as the model is: a short run that learned the
common colours of gray levels and regions; use colour hints to steer it, or import the official weights.
"""
    (model_dir / "MODEL_CARD.md").write_text(card)
    return card


if __name__ == "__main__":
    import sys

    print(write_model_card(Path(sys.argv[1]), Path(sys.argv[2])))
