"""Training task "pixelcnn-colorizer": the gated PixelCNN colorizer on colour images.

Data: synthetic landscapes (engine.data.landscapes) rendered at the working size, plus crops of the colour
photos in `options.photos` (default assets/samples) when that folder has any, and with
`options.real_photo_fraction` > 0 that share of crops of the real photos' train split (engine.data.photos,
`sgraffito data photos`; 0, the default, keeps the draws of the shipped config). Training uses crops of the
working-scale image (`options.crop`, default 64 px: a 16x16 chroma grid), not whole 128 px images: the model is
fully convolutional and sees the same scale as at inference, for a quarter of the compute. Half of the items
carry random colour hints taken from the ground truth, so the embedding learns to use the hint channels.

Loss: cross-entropy of the joint a*b bin of every chroma pixel, teacher-forced on the quantised ground truth.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from engine.model_store import save_model_dir
from engine.pipelines.pixelcnn import (DEFAULT_MODEL, apply_chroma, colorize, lab_to_rgb, luminance, paint_hints,
                                     rgb_to_lab, working_shape)
from engine.data.datasets import IMAGE_SUFFIXES, PhotoCrops, SeededStream
from engine.data.landscapes import EVAL_SEEDS, TRAIN_SEEDS, generate_scene
from engine.models.pixelcnn import PixelCNNColorizer, PixelCNNConfig
from engine.paths import assets_dir
from engine.train.task import TrainConfig, TrainTask


def training_example(rgb: np.ndarray, rng: np.random.Generator, cfg: PixelCNNConfig, hint_prob: float) -> dict:
    """(c, c, 3) uint8 crop -> luminance (1, c, c), hint maps (3, c, c), target bins (c/ds, c/ds) as ab (2, ...)."""
    lab = rgb_to_lab(rgb)
    c, ds = rgb.shape[0], cfg.downsample
    ab_low = cv2.resize(lab[:, :, 1:], (c // ds, c // ds), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)
    points = []
    if rng.random() < hint_prob:
        for _ in range(int(rng.integers(1, 9))):
            py, px = (int(v) for v in rng.integers(0, c // ds, size=2))
            points.append(((px + 0.5) * ds, (py + 0.5) * ds, float(rng.uniform(1.5, 8)), *ab_low[:, py, px]))
    hints, _, _ = paint_hints(points, (c, c), (c, c), (c // ds, c // ds))
    return {"lum": torch.from_numpy(lab[None, :, :, 0].copy()), "hints": torch.from_numpy(hints),
            "ab": torch.from_numpy(np.ascontiguousarray(ab_low))}


class ColourCrops(SeededStream):
    """An endless stream of crops: `crops_per_scene` from each random training landscape (rendering a scene
    costs more than a training step's share of it) and, with probability `photo_fraction`, one of a photo.
    With probability `real_fraction`, `crops_per_scene` crops of `real_photos` (this rank's share of them) come
    instead of a scene's. Seeded from (config seed, rank, worker, start step) by the loop
    (engine.data.datasets.SeededStream)."""

    def __init__(self, cfg: PixelCNNConfig, crop: int, hint_prob: float, photos: list[np.ndarray],
                 photo_fraction: float, crops_per_scene: int = 4, real_photos: PhotoCrops | None = None,
                 real_fraction: float = 0.0):  # fmt: skip
        self.cfg, self.crop, self.hint_prob, self.crops_per_scene = cfg, crop, hint_prob, crops_per_scene
        self.photos, self.photo_fraction = photos, photo_fraction if photos else 0.0
        self.real_photos, self.real_fraction = real_photos, real_fraction if real_photos else 0.0

    def __iter__(self):
        rng = self.rng()
        ds = self.cfg.downsample
        while True:
            if self.real_fraction and rng.random() < self.real_fraction:  # no draw at 0: the old stream unchanged
                for _ in range(self.crops_per_scene):
                    rgb = self.real_photos.draw(rng, self)
                    yield training_example(rgb, rng, self.cfg, self.hint_prob)
                continue
            if rng.random() < self.photo_fraction:
                # Photos at about the working scale (long side 128 for 4:3), jittered.
                image = self.photos[int(rng.integers(len(self.photos)))]
                scale = rng.uniform(96, 160) / min(image.shape[:2])
                image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            else:
                image = generate_scene(self.train_seed(rng, TRAIN_SEEDS), self.cfg.work_size).image
            for _ in range(self.crops_per_scene):
                y, x = (int(rng.integers(0, (n - self.crop) // ds + 1)) * ds for n in image.shape[:2])
                rgb = image[y : y + self.crop, x : x + self.crop]
                if rng.random() < 0.5:
                    rgb = rgb[:, ::-1]
                yield training_example(np.ascontiguousarray(rgb), rng, self.cfg, self.hint_prob)


def mean_chroma(seeds, size: int) -> np.ndarray:
    """The average a*, b* of some training scenes: the "mean colour" baseline."""
    return np.mean([rgb_to_lab(generate_scene(int(s), size).image)[:, :, 1:].mean(axis=(0, 1)) for s in seeds], axis=0)


def psnr_ab(image: np.ndarray, truth: np.ndarray) -> float:
    """PSNR of the a*, b* channels with a peak of 255 (the a*b* span of 8-bit Lab)."""
    mse = float(np.mean((rgb_to_lab(image)[:, :, 1:] - rgb_to_lab(truth)[:, :, 1:]) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-10))


@torch.no_grad()
def feedforward(model: PixelCNNColorizer, gray: np.ndarray) -> np.ndarray:
    """The auxiliary head's expected chroma (the mean of its bin distribution), no sampling: the best guess in
    the squared-error sense that a feed-forward colorizer trained with the same data makes."""
    lum = luminance(gray)
    cfg = model.config
    lum_work = cv2.resize(lum, working_shape(*lum.shape, cfg)[::-1], interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(lum_work)[None, None]
    cond, _ = model.conditioning(x, torch.zeros(1, 3, *x.shape[-2:]))
    probs = torch.softmax(model.aux(cond), dim=1)  # (1, K, hc, wc)
    centres = model.bin_centers(torch.arange(cfg.bins**2)[None, None])[0, :, 0]  # (2, K)
    chroma = torch.einsum("bkhw,ck->bhwc", probs, centres)[0].numpy()
    return apply_chroma(gray, lum, chroma, cfg)


@torch.no_grad()
def evaluate_colorizer(model: PixelCNNColorizer, scenes: int, samples: int = 4, mean_ab=None) -> dict[str, float]:
    """Chroma PSNR and colourfulness on held-out scenes for: the gray photo, the mean training colour, the
    PixelCNN's most likely colours (temperature 0) and its samples (temperature 1; mean and best of `samples`),
    plus the teacher-forced NLL in bits per chroma pixel."""
    from engine import metrics
    from engine.composite import transfer_chroma

    cfg = model.config
    mean_ab = mean_chroma(TRAIN_SEEDS[:32], cfg.work_size) if mean_ab is None else mean_ab
    rows: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    for seed in EVAL_SEEDS[:scenes]:
        truth = generate_scene(int(seed), cfg.work_size).image
        gray = cv2.cvtColor(truth, cv2.COLOR_RGB2GRAY)
        lab = rgb_to_lab(truth)
        flat = lab.copy()
        flat[:, :, 1:] = mean_ab
        outputs = {"gray": np.repeat(gray[:, :, None], 3, axis=2),
                   "mean_colour": transfer_chroma(gray, lab_to_rgb(flat)),
                   "argmax": colorize(model, gray, [0], temperature=0.0)[0],
                   "feedforward": feedforward(model, gray)}
        drawn = colorize(model, gray, list(range(samples)), temperature=1.0)
        for name, image in outputs.items():
            add(f"psnr_ab_{name}", psnr_ab(image, truth))
            add(f"colorfulness_{name}", metrics.colorfulness(image))
        scores = [psnr_ab(image, truth) for image in drawn]
        add("psnr_ab_sample", float(np.mean(scores)))
        add(f"psnr_ab_best_of_{samples}", float(np.max(scores)))
        add("colorfulness_sample", float(np.mean([metrics.colorfulness(image) for image in drawn])))
        add("colorfulness_truth", metrics.colorfulness(truth))
        lum = torch.from_numpy(lab[None, None, :, :, 0].copy())
        ab_low = cv2.resize(lab[:, :, 1:], None, fx=1 / cfg.downsample, fy=1 / cfg.downsample,
                            interpolation=cv2.INTER_AREA)
        ab_low = torch.from_numpy(ab_low.transpose(2, 0, 1)[None].copy())
        cond, glob = model.conditioning(lum, torch.zeros(1, 3, *lum.shape[-2:]))
        target = model.quantize(ab_low)
        nll = F.cross_entropy(model(target, cond, glob), target)
        add("nll_bits_per_chroma_pixel", float(nll) / np.log(2))
    return {name: float(np.mean(values)) for name, values in rows.items()}


def evaluate_backend(backend: str, model: str, scenes: int, size: int = 128, samples: int = 4) -> dict[str, float]:
    """Chroma PSNR (mean and best of `samples`) and colourfulness of any colorization backend's samples on the
    same held-out scenes as `evaluate_colorizer`, through the runtime like the app runs it."""
    from engine import metrics
    from engine.errors import SgraffitoError
    from engine.jobs import JobState, Request, Runtime

    runtime = Runtime(device="cpu")
    rows: dict[str, list[float]] = {}
    try:
        for seed in EVAL_SEEDS[:scenes]:
            truth = generate_scene(int(seed), size).image
            gray = cv2.cvtColor(truth, cv2.COLOR_RGB2GRAY)
            job = runtime.submit(Request(backend=backend, photo=gray, model=model, k=samples, seed=0))
            job.wait()
            if job.state is not JobState.DONE:
                raise SgraffitoError(f"{backend} on held-out scene {seed}: {job.error or job.state.value}")
            images = [c.compose(gray) for c in job.candidates]
            scores = [psnr_ab(image, truth) for image in images]
            rows.setdefault("psnr_ab_sample", []).append(float(np.mean(scores)))
            rows.setdefault(f"psnr_ab_best_of_{samples}", []).append(float(np.max(scores)))
            rows.setdefault("colorfulness_sample", []).append(float(np.mean([metrics.colorfulness(i) for i in images])))
            rows.setdefault("seconds_per_image", []).append(job.seconds)
    finally:
        runtime.shutdown()
    return {name: float(np.mean(values)) for name, values in rows.items()}


class PixelCNNColorizerTask(TrainTask):
    """options: model (PixelCNNConfig fields), crop (64), hint_prob (0.5), aux_weight (1.0, the feed-forward
    head's loss weight), photos (folder, default
    assets/samples), photo_fraction (0.15), real_photo_fraction (0: the share of crops from the real photos'
    train split, engine.data.photos), real_photo_cache (their cache folder, default the user's), eval_scenes (16),
    name (the exported folder)."""

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        opts = config.options
        self.model_cfg = PixelCNNConfig.from_dict(opts.get("model", {}))
        self.crop = int(opts.get("crop", 64))
        if self.crop % self.model_cfg.downsample or self.crop > self.model_cfg.work_size:
            raise ValueError(f"crop {self.crop} must be a multiple of downsample and at most work_size")
        self.hint_prob = float(opts.get("hint_prob", 0.5))
        self.aux_weight = float(opts.get("aux_weight", 1.0))
        self.photos_dir = Path(opts.get("photos", assets_dir() / "samples"))
        self.photo_fraction = float(opts.get("photo_fraction", 0.15))
        self.real_photo_fraction = float(opts.get("real_photo_fraction", 0.0))
        if not 0.0 <= self.real_photo_fraction <= 1.0:
            raise ValueError(f"options.real_photo_fraction must be a fraction in [0, 1], not {self.real_photo_fraction}")
        self.real_photo_cache = opts.get("real_photo_cache")
        self.eval_scenes = int(opts.get("eval_scenes", 16))
        self.name = opts.get("name", DEFAULT_MODEL)
        self._mean_ab = None
        self.metrics: dict[str, float] = {}

    def photos(self) -> list[np.ndarray]:
        """The colour photos of `photos_dir` (not label maps, not gray ones), downscaled to short side 160."""
        from engine.imageio import load_photo

        found = []
        for path in sorted(self.photos_dir.glob("*")) if self.photos_dir.is_dir() else []:
            if path.suffix.lower() not in IMAGE_SUFFIXES or ".labels." in path.name:
                continue
            photo = load_photo(path)
            if not photo.is_grayscale:
                scale = 160 / min(photo.rgb.shape[:2])
                found.append(cv2.resize(photo.rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
        return found

    def build_model(self) -> PixelCNNColorizer:
        return PixelCNNColorizer(self.model_cfg)

    def train_dataset(self) -> ColourCrops:
        # real photo crops cover 40-80 % of a photo's short side: the scale a 128 px working image shows
        real = (PhotoCrops(self.crop, cache=self.real_photo_cache, scale=(0.4, 0.8))
                if self.real_photo_fraction > 0 else None)  # fmt: skip
        return ColourCrops(self.model_cfg, self.crop, self.hint_prob, self.photos(), self.photo_fraction,
                           real_photos=real, real_fraction=self.real_photo_fraction)

    def loss(self, model, batch):
        raw = model.module if hasattr(model, "module") else model
        cond, glob = raw.conditioning(batch["lum"], batch["hints"])
        target = raw.quantize(batch["ab"])
        logits = model(target, cond, glob)
        nll = F.cross_entropy(logits, target)
        aux = F.cross_entropy(raw.aux(cond), target)
        logs = {"bits_per_chroma_pixel": float(nll.detach()) / np.log(2), "aux_bits": float(aux.detach()) / np.log(2)}
        return nll + self.aux_weight * aux, logs

    def evaluate(self, model) -> dict[str, float]:
        if self._mean_ab is None:
            self._mean_ab = mean_chroma(TRAIN_SEEDS[:32], self.model_cfg.work_size)
        self.metrics = evaluate_colorizer(model, self.eval_scenes, mean_ab=self._mean_ab)
        return self.metrics

    def export(self, model, out_dir: Path) -> Path:
        config = {"kind": "pixelcnn", "title": "PixelCNN colorizer (demo, synthetic landscapes)",
                  **self.model_cfg.to_dict(), "training": {"task": self.config.task, "steps": self.config.steps}}
        card = model_card(model, self.config, self.step + 1, self.training_minutes(), self.metrics,
                          self.eval_scenes)
        return save_model_dir(Path(out_dir) / self.name, {"model": model.state_dict()}, config, card=card)


def model_card(model: PixelCNNColorizer, config: TrainConfig, steps: int, minutes: float, metrics: dict,
               eval_scenes: int, others: dict[str, dict] | None = None) -> str:
    """The MODEL_CARD.md text; `others` adds rows {title: evaluate_backend(...)} measured on the same scenes."""
    from engine.device import describe_device

    cfg = model.config
    opts = config.options
    params = sum(p.numel() for p in model.parameters())
    rows = [("gray (no colour)", "gray"), ("mean training colour", "mean_colour"),
            ("feed-forward head, expected colour", "feedforward"),
            ("PixelCNN, most likely colours (T=0)", "argmax"), ("PixelCNN, one sample (T=1), mean", "sample")]
    table = "\n".join(
        f"| {title} | {metrics.get(f'psnr_ab_{key}', float('nan')):.2f} | "
        f"{metrics.get(f'colorfulness_{key}', float('nan')):.1f} |" for title, key in rows)
    for title, other in (others or {}).items():
        table += (f"\n| {title}, one sample (T=1), mean | {other['psnr_ab_sample']:.2f} | "
                  f"{other['colorfulness_sample']:.1f} |")
    best = [f"{title} {other['psnr_ab_best_of_4']:.2f} dB" for title, other in (others or {}).items()]
    return f"""# PixelCNN colorizer (demo)

A gated conditional PixelCNN (engine/models/pixelcnn.py) that samples Lab chroma at 1/{cfg.downsample} of a
{cfg.work_size} px working image, conditioned on an embedding of the luminance and optional colour hints; the
chroma is put on the full-resolution luminance (engine.composite.transfer_chroma). {params / 1e6:.2f} M
parameters: {cfg.layers} gated layers of {cfg.channels} channels, kernel {cfg.kernel}, a joint {cfg.bins}x{cfg.bins}
a*b* categorical.

## Data
Procedural landscapes (engine.data.landscapes, TRAIN_SEEDS) rendered at {cfg.work_size} px, random
{opts.get("crop", 64)} px crops, flipped at random, plus crops of the colour photos in assets/samples
({opts.get("photo_fraction", 0.15):.0%} of the crops; grayscale photos and label maps excluded). Half of the
crops carry 1-8 random colour hints taken from the ground truth.

## Training
`sgraffito train pixelcnn-colorizer --config assets/models/demo-pixelcnn-colorizer/train.yaml`:
{steps} steps of batch {config.batch_size} (AdamW, lr {config.lr}, warmup {config.warmup_steps}, cosine over
{config.steps} steps, EMA {config.ema_decay}; the exported weights are the EMA), {minutes:.1f} minutes wall time
on {describe_device("cpu")} with torch.set_num_threads(1), on a 2-core machine shared with other jobs (a load of
about 10-18), so the step count is what a busy laptop core gives, not a converged model.

## Held-out metrics
{eval_scenes} held-out scenes (EVAL_SEEDS) at {cfg.work_size} px; the model sees only their gray version.
Chroma PSNR is the PSNR of the a*, b* channels against the true colours with a peak of 255; colourfulness is
Hasler and Suesstrunk's (engine.metrics.colorfulness); the true images score
{metrics.get("colorfulness_truth", float("nan")):.1f}. Best of 4 samples, chroma PSNR: PixelCNN
{metrics.get("psnr_ab_best_of_4", float("nan")):.2f} dB{"".join("; " + b for b in best)}. Teacher-forced NLL:
{metrics.get("nll_bits_per_chroma_pixel", float("nan")):.2f} bits per chroma pixel.

| method | chroma PSNR (dB) | colourfulness |
|---|---|---|
{table}

{"" if others else "No ColTran demo weights were available to compare against on the same scenes."}

## Limits
Trained on synthetic landscapes and five photos only: it knows skies, water, grass, trees, rock and snow,
and colours other subjects (people, objects, interiors) with landscape colours. Meant to show the engine, the
sampling speed and hint handling; not a general-purpose colorizer. Samples are spatially coherent and
about as colourful as the truth, but the luminance conditioning is still weak after this short run: a sample
often picks an implausible hue for a whole region (a green sky, a blue meadow), which is why single samples
score below the gray photo on chroma PSNR while the feed-forward head's expected colour scores above it.
Colour hints fix that per region.
"""
