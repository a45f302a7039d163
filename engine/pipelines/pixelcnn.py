"""Colorization with the gated PixelCNN: gray photo -> k chroma samples -> colour photos at full resolution.

Pipeline: the photo's luminance is reduced to a working image (long side `work_size`), the embedding network
turns it (and the colour hints, if any) into a conditioning map at 1/`downsample` of the working size, the
PixelCNN samples a chroma map there for every candidate in one batch, and the runtime's chroma transfer puts
the upsampled chroma on the full-resolution luminance, so edges and texture come from the photo itself.

Hints ({x, y, radius, rgb} in photo pixels) act twice: they are an input of the embedding (a hint map and its
mask, as in training), and the chroma pixels under a hint are clamped to the hint's colour before sampling,
so the autoregressive decoder sees them as context and never overwrites them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from engine.errors import InputError
from engine.hints import Hint, parse_hints
from engine.safe_io import finite
from engine.models.pixelcnn import PixelCNNColorizer, PixelCNNConfig
from engine.pipelines.base import Pipeline, load_folder, model_folder, strict

DEFAULT_MODEL = "demo-pixelcnn-colorizer"


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 sRGB -> float32 Lab (L in [0, 100], a and b about [-110, 110])."""
    return cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    rgb = cv2.cvtColor(np.ascontiguousarray(lab, dtype=np.float32), cv2.COLOR_Lab2RGB)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def luminance(photo: np.ndarray) -> np.ndarray:
    """(H, W) float32 Lab L of a gray (H, W) or RGB (H, W, 3) uint8 image."""
    rgb = np.repeat(photo[:, :, None], 3, axis=2) if photo.ndim == 2 else photo
    return rgb_to_lab(rgb)[:, :, 0]


def working_shape(height: int, width: int, config: PixelCNNConfig) -> tuple[int, int]:
    """Working (h, w): long side `work_size`, both multiples of `downsample`, the aspect ratio kept."""
    scale = config.work_size / max(height, width)
    ds = config.downsample
    return (max(ds, round(height * scale / ds) * ds), max(ds, round(width * scale / ds) * ds))


def hint_maps(hints: list[Hint], photo_hw, work_hw, chroma_hw):
    """Hint map (3, h, w) = (a, b, mask) at the working size, and the clamped chroma pixels: ab (2, hc, wc) and
    mask (hc, wc). A hint clamps every chroma pixel whose centre lies in its disk, and at least the nearest."""
    H, W = photo_hw
    for hint in hints:
        if not (0 <= hint.x < W and 0 <= hint.y < H):
            raise InputError(f"hint at ({hint.x:g}, {hint.y:g}) lies outside the {W}x{H} photo")
    points = [(h.x, h.y, h.radius, *rgb_to_lab(np.array([[h.rgb]], np.uint8))[0, 0, 1:]) for h in hints]
    return paint_hints(points, photo_hw, work_hw, chroma_hw)


def paint_hints(points, photo_hw, work_hw, chroma_hw):
    """`hint_maps` for (x, y, radius, a, b) tuples in photo pixels (training draws its hints this way)."""
    H, W = photo_hw
    work = np.zeros((3, *work_hw), np.float32)
    ab_c = np.zeros((2, *chroma_hw), np.float32)
    mask_c = np.zeros(chroma_hw, bool)
    for x, y, radius, a, b in points:
        for (h, w), target, mask in ((work_hw, work[:2], work[2]), (chroma_hw, ab_c, mask_c)):
            sy, sx = h / H, w / W
            yy, xx = np.ogrid[0:h, 0:w]
            cx, cy = x * sx - 0.5, y * sy - 0.5  # pixel centres sit at integer + 0.5
            disk = (xx - cx) ** 2 + (yy - cy) ** 2 <= (radius * max(sx, sy)) ** 2
            disk[min(h - 1, int(y * sy)), min(w - 1, int(x * sx))] = True
            target[0][disk], target[1][disk] = a, b
            mask[disk] = 1
    return work, ab_c, mask_c


def uniforms(seeds: list[int], shape) -> torch.Tensor:
    """(k, h, w) uniforms, candidate i from its own seed only, so it can be reproduced alone."""
    return torch.stack([torch.rand(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def sample_chroma(
    model: PixelCNNColorizer,
    lum: np.ndarray,
    seeds: list[int],
    *,
    temperature: float = 1.0,
    hints: list[Hint] = (),
    device: str = "cpu",
    on_row: Callable[[int, int], None] | None = None,
    fast: bool = True,
) -> np.ndarray:
    """Full-resolution luminance (H, W) -> chroma samples (k, hc, wc, 2) in Lab a, b at the chroma resolution."""
    cfg = model.config
    H, W = lum.shape
    work_hw = working_shape(H, W, cfg)
    chroma_hw = (work_hw[0] // cfg.downsample, work_hw[1] // cfg.downsample)
    lum_work = cv2.resize(lum, work_hw[::-1], interpolation=cv2.INTER_AREA)
    hint_work, hint_ab, hint_mask = hint_maps(list(hints), (H, W), work_hw, chroma_hw)
    cond, glob = model.conditioning(
        torch.from_numpy(lum_work)[None, None].to(device), torch.from_numpy(hint_work)[None].to(device)
    )
    k = len(seeds)
    u = uniforms(seeds, chroma_hw).to(device)
    fixed = model.quantize(torch.from_numpy(hint_ab)[None].to(device)).expand(k, -1, -1)
    fixed_mask = torch.from_numpy(hint_mask).to(device)[None].expand(k, -1, -1)
    sampler = model.sample if fast else model.sample_reference
    kwargs = {"on_row": on_row} if fast else {}
    index = sampler(cond.expand(k, -1, -1, -1), glob.expand(k, -1), u, temperature, fixed, fixed_mask, **kwargs)
    ab = model.bin_centers(index).cpu().numpy()
    ab[:, :, hint_mask] = hint_ab[:, hint_mask]  # exact hint colours, not their bin centres
    return ab.transpose(0, 2, 3, 1)


def load_model(name: str = "", device: str = "cpu") -> PixelCNNColorizer:
    """A model folder by name (searched in engine.paths.models_dirs()) or path; "" is the demo model."""
    return load_folder_model(model_folder(name, "pixelcnn", DEFAULT_MODEL), device)


def load_folder_model(path: Path, device: str = "cpu") -> PixelCNNColorizer:
    config, states = load_folder(path, "pixelcnn", ["model"])
    model = strict(PixelCNNColorizer(PixelCNNConfig.from_dict(config)), states["model"], str(path / "model.safetensors"))
    return model.to(device)


def colorize(
    model: PixelCNNColorizer,
    photo: np.ndarray,
    seeds: list[int],
    *,
    temperature: float = 1.0,
    hints: list[Hint] = (),
    device: str = "cpu",
    on_row: Callable[[int, int], None] | None = None,
) -> list[np.ndarray]:
    """A gray (H, W) or RGB (H, W, 3) uint8 photo -> one (H, W, 3) uint8 colouring per seed."""
    lum = luminance(photo)
    ab = sample_chroma(model, lum, seeds, temperature=temperature, hints=hints, device=device, on_row=on_row)
    return [apply_chroma(photo, lum, chroma, model.config) for chroma in ab]


def apply_chroma(photo: np.ndarray, lum: np.ndarray, chroma: np.ndarray, cfg: PixelCNNConfig) -> np.ndarray:
    """Chroma (hc, wc, 2) at the chroma resolution -> the photo coloured at full resolution: the chroma is
    upsampled to the working size, made an RGB image with the working luminance, and transferred."""
    from engine.composite import transfer_chroma

    work_hw = working_shape(*lum.shape, cfg)
    lum_work = cv2.resize(lum, work_hw[::-1], interpolation=cv2.INTER_AREA)
    chroma = cv2.resize(chroma, work_hw[::-1], interpolation=cv2.INTER_LINEAR)
    return transfer_chroma(photo, lab_to_rgb(np.concatenate([lum_work[:, :, None], chroma], axis=2)))


class PixelCNNBackend(Pipeline):
    """The "pixelcnn" engine backend. params: temperature (default 1; 0 = most likely colours), hints."""

    name = "pixelcnn"
    default_model = DEFAULT_MODEL
    loading_stage = "loading the PixelCNN colorizer"
    threads = 1  # each sampling step is a handful of tiny matmuls: more threads only add spin-waits

    def load(self, path: Path, device: str) -> PixelCNNColorizer:
        return load_folder_model(path, device)

    def sample(self, model: PixelCNNColorizer, request, ctx):
        from engine.composite import full_region
        from engine.jobs import Candidate, thaw

        params = thaw(request.params)
        temperature = finite(params.get("temperature", 1.0), "temperature", minimum=0.0)  # 0: most likely
        hints = parse_hints(params.get("hints", []), "request hints")
        x0, y0, x1, y1 = region = request.region or full_region(request.photo)
        if request.region is not None:
            hints = [Hint(h.x - x0, h.y - y0, h.radius, h.rgb) for h in hints if x0 <= h.x < x1 and y0 <= h.y < y1]

        def on_row(done: int, rows: int) -> None:
            ctx.check_cancelled()
            ctx.progress(0.05 + 0.9 * done / rows, f"sampling {request.k} colourings: row {done}/{rows}")

        images = colorize(model, request.photo[y0:y1, x0:x1], ctx.seeds, temperature=temperature, hints=hints,
                          device=ctx.device, on_row=on_row)
        info = {"temperature": temperature, "hints": len(hints)}
        return [Candidate(image=image, region=region, seed=seed, info=info) for image, seed in zip(images, ctx.seeds)]
