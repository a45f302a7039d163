"""Colorization with ColTran: gray photo -> k colourings at the photo's full resolution.

Stages as the official `custom_colorize.py` runs them: the gray image is brought to 256x256 and 64x64 with
TF-style AREA resizing and half-to-even rounding; the colorizer samples 64x64 coarse colours (3 bits per
channel) pixel by pixel; the colour upsampler turns them into 8-bit colour (argmax); the result is
pixel-replicated to 256x256 and the spatial upsampler sharpens it (argmax). Then the model's chroma goes onto the
original full-resolution luminance (engine.composite.transfer_chroma), as the ColTran authors advise for
outputs above 256 px.

Framing: the official script centre-crops to a square. A user's photo must keep all of its pixels, so by default
we stretch the whole photo to the square and stretch the chroma back (`framing="stretch"`); `framing="crop"` is
the official centre crop, for comparisons with the reference.

Colour hints (beyond ColTran; {x, y, radius, rgb} in photo pixels, the same format as the PixelCNN colorizer):
every 64x64 cell a hint's disk covers may only take the hint's coarse colour bin (or bins within
`hint_tolerance` levels per channel), by masking the colorizer's logits before sampling. The autoregressive
decoder then sees the hinted colour as context for the pixels after it, so hints also steer their
surroundings. In the hinted cells the two upsamplers then choose only 8-bit values inside the sampled coarse
level (`hinted_value_range`; the spatial upsampler inside the hints' disks), so their refinement cannot drift
back from the hint; elsewhere they run as the official argmax. Limits: a hint fixes 3-bit colour (8 levels per channel), and the final luminance is always
the photo's own, so a hint changes hue and saturation, not brightness.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import torch

from engine.hints import Hint, parse_hints
from engine.safe_io import finite
from engine.errors import InputError
from engine.models.coltran import ColTran, ColTranConfig, ColTranCore, reduced_precision, symbols_to_rgb, upsample_argmax
from engine.precision import resolve_precision
from engine.pipelines.base import Pipeline, load_folder, model_folder, strict

DEFAULT_MODEL = "demo-coltran"
STAGES = ("colorizer", "color_upsampler", "spatial_upsampler")
COARSE, FINE = 64, 256  # the official models; `colorize` follows the resolutions a model was built for


def area_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of TF's AREA resize: each output pixel averages the input interval it covers, with
    fractional weights at the interval's ends (upsampling degenerates to pixel replication)."""
    scale = in_size / out_size
    weights = np.zeros((out_size, in_size), np.float64)
    for o in range(out_size):
        start, end = o * scale, (o + 1) * scale
        for i in range(int(np.floor(start)), min(int(np.ceil(end)), in_size)):
            weights[o, i] = min(end, i + 1) - max(start, i)
    return weights / weights.sum(axis=1, keepdims=True)


def area_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """TF `tf.image.resize(method='area')` then `tf.round` (half to even): (H, W[, C]) -> (height, width[, C])."""
    rows, cols = area_matrix(image.shape[0], height), area_matrix(image.shape[1], width)
    resized = np.tensordot(rows, image.astype(np.float64), axes=(1, 0))  # (height, W, ...)
    resized = np.moveaxis(np.tensordot(resized, cols, axes=(1, 1)), -1, 1)  # (height, width, ...)
    return np.rint(resized)


def to_gray(photo: np.ndarray) -> np.ndarray:
    """(H, W) uint8 gray; colour photos (sepia scans) by BT.601 luma, the luminance chroma transfer keeps."""
    if photo.ndim == 2:
        return photo
    luma = photo.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)


def frame(gray: np.ndarray, framing: str) -> np.ndarray:
    if framing == "crop":
        side = min(gray.shape)
        top, left = (gray.shape[0] - side) // 2, (gray.shape[1] - side) // 2
        return gray[top: top + side, left: left + side]
    if framing != "stretch":
        raise InputError(f"framing must be 'stretch' or 'crop', not {framing!r}")
    return gray


def _framing(photo_hw: tuple[int, int], framing: str, size: int) -> tuple[float, float, float, float]:
    """(top, left, sy, sx): photo pixel (y, x) lies in cell ((y - top) * sy, (x - left) * sx) of a size x size grid."""
    height, width = photo_hw
    if framing == "crop":
        side = min(height, width)
        return (height - side) / 2, (width - side) / 2, size / side, size / side
    return 0.0, 0.0, size / height, size / width


def hint_cells(hint: Hint, photo_hw: tuple[int, int], framing: str, size: int) -> np.ndarray:
    """(size, size) bool: the cells of a size x size grid over the framed photo whose centre lies in the hint's disk,
    and always the cell under the hint's centre."""
    top, left, sy, sx = _framing(photo_hw, framing, size)
    cy, cx = np.mgrid[0:size, 0:size] + 0.5
    inside = ((cy / sy + top - hint.y) ** 2 + (cx / sx + left - hint.x) ** 2) <= hint.radius ** 2
    row, col = int((hint.y - top) * sy), int((hint.x - left) * sx)
    if 0 <= row < size and 0 <= col < size:
        inside[row, col] = True
    return inside


def hint_constraints(hints: list[Hint], photo_hw: tuple[int, int], framing: str, tolerance: int = 0,
                     coarse: int = COARSE) -> np.ndarray | None:
    """(coarse, coarse, 512) bool of allowed coarse symbols per cell, or None without hints."""
    if not hints:
        return None
    allowed = np.ones((coarse, coarse, 512), bool)
    levels = np.stack(np.meshgrid(np.arange(8), np.arange(8), np.arange(8), indexing="ij"), -1).reshape(512, 3)
    for hint in hints:
        bins = np.array(hint.rgb) // 32
        allowed[hint_cells(hint, photo_hw, framing, coarse)] = (np.abs(levels - bins) <= tolerance).all(-1)
    return allowed


def hinted_value_range(bins: torch.Tensor, hinted: torch.Tensor | None, tolerance: int = 0):
    """(low, high) 8-bit values per cell and channel that an upsampler may choose, or None without hints: in a
    hinted cell the values of its coarse level +- `tolerance` levels (so the upsampler refines the hinted colour
    instead of drifting from it), elsewhere all of 0..255 (the official, unconstrained argmax).
    `bins` (B, h, w, 3) coarse levels 0..7 at the upsampler's resolution; `hinted` (B, h, w) bool."""
    if hinted is None:
        return None
    hinted = hinted[..., None]
    low = torch.where(hinted, (bins - tolerance).clamp(0, 7) * 32, torch.zeros_like(bins))
    high = torch.where(hinted, (bins + tolerance).clamp(0, 7) * 32 + 31, torch.full_like(bins, 255))
    return low, high


def uniforms(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Per-candidate uniforms, each drawn from its own seed: candidate i does not depend on the batch."""
    return torch.stack([torch.rand(shape, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
                        for s in seeds])


def colorizer_at(model: ColTran, precision: str = "fp32", device: str | None = None, rows: int = 1) -> ColTranCore:
    """The colorizer that samples at `precision` ("fp32", the exact default, "int8", "bf16", "fp16" or "auto",
    engine.precision; `rows` = candidates per pixel step, what "auto" measures for): the model's own in fp32,
    else a copy whose decoders run reduced-precision weights (engine.models.coltran.reduced_precision)."""
    device = device or str(model.colorizer.auto_logits.weight.device)
    return reduced_precision(model.colorizer, resolve_precision(precision, device, rows))


@torch.no_grad()
def colorize(model: ColTran, photo: np.ndarray, seeds: list[int], *, temperature: float = 1.0,
             hints: list[Hint] = (), hint_tolerance: int = 0, framing: str = "stretch", mode: str = "sample",
             row_context_quirk: bool | None = None, device: str = "cpu", precision: str = "fp32",
             on_row: Callable[[int, int], None] | None = None,
             on_stage: Callable[[str, float], None] | None = None,
             on_preview: Callable[[np.ndarray], None] | None = None,
             sampling_threads: Callable[[], ContextManager] = contextlib.nullcontext) -> list[np.ndarray]:
    """A gray (H, W) or RGB (H, W, 3) uint8 photo -> one (H, W, 3) uint8 colouring per seed (crop framing:
    the centre square). `on_row(done, rows)` follows the autoregressive colorizer, `on_stage(stage, fraction)`
    the two upsamplers (one slice = one candidate's channel). The pixel-by-pixel sampling runs inside
    `sampling_threads()` (the runtime passes one intra-op thread: each pixel is a chain of tiny ops, and threads
    only add synchronisation; the grayscale encoder and the upsamplers are large parallel passes and keep every
    thread). All candidates colour the same gray image, so it is encoded once. `precision`: the colorizer's
    decoders in fp32 (exact, the default) or a reduced precision (`colorizer_at`); the upsamplers stay fp32.
    `row_context_quirk`: None samples as the model folder says (`ColTran.row_context_quirk`)."""
    from engine.composite import transfer_chroma

    if row_context_quirk is None:
        row_context_quirk = model.row_context_quirk
    coarse_size, fine_size = model.config.core.resolution[0], model.config.spatial_upsampler.resolution[0]
    gray_full = to_gray(photo)
    framed = frame(gray_full, framing)
    gray_fine = area_resize(framed, fine_size, fine_size)
    gray_coarse = area_resize(gray_fine, coarse_size, coarse_size)
    batch = len(seeds)
    colorizer = colorizer_at(model, precision, device, rows=batch)  # an unknown precision fails before any work
    fine = torch.from_numpy(gray_fine).long().to(device).expand(batch, -1, -1)
    coarse = torch.from_numpy(gray_coarse).long().to(device).expand(batch, -1, -1)
    encoded = colorizer.encoder(coarse[:1]).expand(batch, -1, -1, -1)  # one gray image: a large parallel pass
    if on_preview is not None:
        preview = symbols_to_rgb(colorizer.parallel_preview(coarse[:1], encoded[:1]))[0].cpu().numpy() * 32 + 16
        on_preview(transfer_chroma(gray_coarse.astype(np.uint8), preview.astype(np.uint8)))
    constraints = hint_constraints(list(hints), framed.shape if framing == "crop" else gray_full.shape, framing,
                                   hint_tolerance, coarse_size)
    if constraints is not None:
        constraints = torch.from_numpy(constraints).to(device).expand(batch, -1, -1, -1)
    with sampling_threads():
        symbols = colorizer.sample(coarse, uniforms=uniforms(seeds, (coarse_size, coarse_size)).to(device),
                                   mode=mode, temperature=temperature, constraints=constraints,
                                   row_context_quirk=row_context_quirk, on_row=on_row, encoded=encoded)
    # one candidate and channel at a time: the batched 256x256 logits and attention took 3.5 GB at k = 3
    bins = symbols_to_rgb(symbols)
    hinted_cells = None if constraints is None else (~constraints).any(-1)
    rgb64 = upsample_argmax(model.color_upsampler, bins, coarse,
                            value_range=hinted_value_range(bins, hinted_cells, hint_tolerance),
                            on_slice=on_stage and (lambda i, n: on_stage(f"colour upsampler, slice {i}/{n}", i / n)))
    scale = fine_size // coarse_size
    blurry = rgb64.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    fine_range = None
    if hints:  # the spatial upsampler keeps the hinted level inside the hints' disks (round, as drawn), not cells
        disks = np.zeros((fine_size, fine_size), bool)
        hint_bins = np.zeros((fine_size, fine_size, 3), np.int64)
        for hint in hints:  # a later hint wins where disks overlap, as in hint_constraints
            inside = hint_cells(hint, framed.shape if framing == "crop" else gray_full.shape, framing, fine_size)
            disks |= inside
            hint_bins[inside] = np.array(hint.rgb) // 32
        fine_range = hinted_value_range(torch.from_numpy(hint_bins).to(device).expand(batch, -1, -1, -1),
                                        torch.from_numpy(disks).to(device).expand(batch, -1, -1), hint_tolerance)
    rgb256 = upsample_argmax(model.spatial_upsampler, blurry, fine, value_range=fine_range, on_slice=on_stage and (
        lambda i, n: on_stage(f"spatial upsampler ({fine_size}x{fine_size}), slice {i}/{n}", i / n)))
    rgb256 = rgb256.to(torch.uint8).cpu().numpy()
    base = framed if framing == "crop" else photo
    return [transfer_chroma(base, image) for image in rgb256]


def load_model(name: str = "", device: str = "cpu") -> ColTran:
    """A model folder by name (searched in engine.paths.models_dirs()) or path; "" is the demo model."""
    return load_folder_model(model_folder(name, "coltran", DEFAULT_MODEL), device)


def load_folder_model(path: Path, device: str = "cpu") -> ColTran:
    config, states = load_folder(path, "coltran", list(STAGES))
    quirk = config.get("row_context_quirk", True)  # absent: an official import, sampled as the official code does
    if not isinstance(quirk, bool):
        raise InputError(f"{path / 'config.json'}: row_context_quirk must be true or false, not {quirk!r}")
    model = ColTran(ColTranConfig.from_dict(config["architecture"]), row_context_quirk=quirk)
    for stage in STAGES:
        strict(getattr(model, stage), states[stage], str(path / f"{stage}.safetensors"))
    return model.eval().to(device)


class ColTranBackend(Pipeline):
    """The "coltran" engine backend. params: temperature (default 1; 0 = most likely colours), hints,
    hint_tolerance (coarse levels per channel, default 0), framing ("stretch" or "crop"), precision of the
    colorizer's decoders ("fp32", exact, the default; "int8", "bf16", "fp16" or "auto": see `colorizer_at`)."""

    name = "coltran"
    default_model = DEFAULT_MODEL
    loading_stage = "loading ColTran"

    def load(self, path: Path, device: str) -> ColTran:
        return load_folder_model(path, device)

    def sample(self, model: ColTran, request, ctx):
        import time

        from engine.composite import full_region
        from engine.jobs import Candidate, thaw

        params = thaw(request.params)
        temperature = finite(params.get("temperature", 1.0), "temperature", minimum=0.0)  # 0: most likely
        framing = params.get("framing", "stretch")
        precision = resolve_precision(params.get("precision", "fp32"), ctx.device, rows=len(ctx.seeds))
        x0, y0, x1, y1 = region = request.region or full_region(request.photo)
        hints = [Hint(h.x - x0, h.y - y0, h.radius, h.rgb) for h in parse_hints(params.get("hints", []), "hints")
                 if x0 <= h.x < x1 and y0 <= h.y < y1]

        def on_row(done: int, rows: int) -> None:
            ctx.check_cancelled()
            ctx.progress(0.02 + 0.5 * done / rows, f"ColTran: colouring {request.k} candidates, row {done}/{rows}")

        def on_stage(stage: str, fraction: float) -> None:
            ctx.check_cancelled()
            upsampler_start, share = (0.52, 0.06) if stage.startswith("colour") else (0.58, 0.4)
            ctx.progress(upsampler_start + share * fraction, f"ColTran: {stage}")

        started = time.perf_counter()
        images = colorize(model, request.photo[y0:y1, x0:x1], ctx.seeds, temperature=temperature, hints=hints,
                          hint_tolerance=int(params.get("hint_tolerance", 0)), framing=framing,
                          device=ctx.device, precision=precision, on_row=on_row, on_stage=on_stage,
                          on_preview=lambda image: ctx.progress(0.02, "ColTran: parallel-head preview", image),
                          sampling_threads=lambda: ctx.threads(1))
        if framing == "crop":
            side = min(y1 - y0, x1 - x0)
            top, left = y0 + (y1 - y0 - side) // 2, x0 + (x1 - x0 - side) // 2
            region = (left, top, left + side, top + side)
        seconds = (time.perf_counter() - started) / len(images)
        info = {"temperature": temperature, "hints": len(hints), "framing": framing, "precision": precision}
        return [Candidate(image=image, region=region, seed=seed, info=info, seconds=seconds)
                for image, seed in zip(images, ctx.seeds)]
