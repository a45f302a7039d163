"""ASSET semantic editing: a photo, its label map before and after the user's edit -> k candidates.

Pipeline (the official test.py, reorganised for the runtime):
1. working region around the edit (engine.composite), resized to the model's square resolution R (512 for
   an SGA model: 32x32 tokens; 256 for a guiding-only model);
2. tokens: the image through the mask-aware VQGAN encoder (codes outside the hole do not depend on it),
   the edited label map through the segmentation VQGAN; token mask = the 16x16 cells the edit touches
   (params "token_mask": "reference" = only cells whose top-left pixel is edited, as the official code);
3. the guiding transformer samples the hole at 256 px (16x16 tokens, dense attention), then a dense pass
   over each sampled result gives that candidate's SGA guidance;
4. the SGA transformer samples the hole at R with that guidance; decode the edited tokens plus a margin of
   context (params "decode_margin", "full" = the whole grid as the official code); Laplacian-blend into the photo.
params "precision": the transformers' token steps in "fp32" (default; exact), "int8" (CPU), "bf16", "fp16" (GPU)
or "auto" (the fastest on this device by measurement; engine.precision).
Candidate i uses its own random generator seeded with ctx.seeds[i], so it does not depend on k.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from engine import composite
from engine.errors import CheckpointError, InputError
from engine.model_store import load_model_dir
from engine.models.asset import ASSET, ASSETConfig
from engine.models.asset_sampling import sample_tokens
from engine.models.vqgan import VQGAN, VQGANConfig
from engine.pipelines.base import Pipeline, load_folder, model_folder, strict
from engine.precision import resolve_precision
from engine.safe_io import finite

DEFAULT_MODEL = "demo-asset-landscape"
GUIDE_SIZE = 256
CELL = 16
DECODE_MARGIN = 4  # tokens of context around the edit when decoding (64 px at the model's resolution)


@dataclass
class AssetBundle:
    path: Path
    config: dict
    image_vqgan: torch.nn.Module
    seg_vqgan: torch.nn.Module
    guiding: ASSET
    sga: ASSET | None
    resolution: int

    @property
    def geometry(self) -> composite.ModelGeometry:
        return composite.ModelGeometry(size=(self.resolution, self.resolution), grid=CELL, fit="stretch")


def _transformer(config: dict, weights: dict, stem: str, path: Path) -> ASSET:
    return strict(ASSET(ASSETConfig.from_dict(config[stem])), weights[stem], str(path / f"{stem}.safetensors"))


def load_vqgan(directory: str | Path, stem: str = "vqgan") -> VQGAN:
    """The VQGAN stored as `<stem>.safetensors` in a model folder, its config under config.json's `stem` key."""
    config, weights = load_model_dir(directory, [stem])
    if stem not in config:
        raise CheckpointError(f"{directory}/config.json has no {stem!r} section")
    return strict(VQGAN(VQGANConfig.from_dict(config[stem])), weights[stem], f"{directory}/{stem}.safetensors")


def load_bundle(name: str = "", device: str = "cpu") -> AssetBundle:
    """An ASSET model folder (name in the model list, or a path): image + seg VQGANs, guiding and SGA."""
    return bundle_from_folder(model_folder(name, "asset", DEFAULT_MODEL), device)


def bundle_from_folder(path: Path, device: str = "cpu") -> AssetBundle:
    config, weights = load_folder(path, "asset", [s for s in ("guiding", "sga") if (path / f"{s}.safetensors").is_file()])
    if "guiding" not in weights:
        raise CheckpointError(f"{path}: no guiding.safetensors; the ASSET model is incomplete")
    guiding = _transformer(config, weights, "guiding", path)
    sga = _transformer(config, weights, "sga", path) if "sga" in weights else None
    resolution = int(config.get("resolution", 512 if sga is not None else GUIDE_SIZE))
    bundle = AssetBundle(path, config, load_vqgan(path, "image_vqgan"), load_vqgan(path, "seg_vqgan"),
                         guiding, sga, resolution)
    for m in (bundle.image_vqgan, bundle.seg_vqgan, bundle.guiding, bundle.sga):
        if m is not None:
            m.to(device)
    for m in (bundle.image_vqgan, bundle.seg_vqgan):  # NHWC convolutions: about 1.4x faster on CPU
        m.to(memory_format=torch.channels_last)
    return bundle


def token_mask(mask: np.ndarray, rule: str = "cover") -> np.ndarray:
    """(H, W) pixel mask -> (H/16, W/16) token mask: cells touched by the edit, or (rule "reference") the
    official rule, cells whose top-left pixel is edited."""
    h, w = mask.shape
    if rule == "reference":
        return mask[::CELL, ::CELL].copy()
    if rule != "cover":
        raise InputError(f"token_mask must be 'cover' or 'reference', not {rule!r}")
    return mask.reshape(h // CELL, CELL, w // CELL, CELL).any(axis=(1, 3))


def _pixel_mask(tokens: np.ndarray) -> np.ndarray:
    return np.kron(tokens, np.ones((CELL, CELL), bool))


@torch.no_grad()
def _codes(bundle: AssetBundle, image: np.ndarray, labels: np.ndarray, pixel_mask: np.ndarray, device):
    """Image codes (masked encoder) and label codes, both (L,) raster order."""
    x = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    m = torch.from_numpy(pixel_mask.astype(np.float32)).to(device)[None, None]
    _, z = bundle.image_vqgan.encode(x, m)
    c = bundle.seg_vqgan.encode_labels(torch.from_numpy(labels.astype(np.int64)).to(device)[None])
    return z.reshape(-1), c.reshape(-1)


def _check_labels(bundle: AssetBundle, labels: np.ndarray) -> None:
    n = bundle.seg_vqgan.config.n_labels
    if int(labels.max()) >= n:
        raise InputError(f"label id {int(labels.max())} is outside the {n} classes of ASSET model "
                         f"{bundle.path.name}")


def decode_window(tokens: np.ndarray, margin: int | None) -> tuple[slice, slice]:
    """Rows and columns of the token grid to decode: the edited tokens' bounding box grown by `margin` tokens of
    context (None: the whole grid, as the official code). Outside the edit the photo's own pixels are kept, so
    decoding them only costs time; the margin gives the decoder's convolutions and the blend real neighbours."""
    h, w = tokens.shape
    if margin is None or not tokens.any():
        return slice(0, h), slice(0, w)
    ys, xs = np.nonzero(tokens)
    return (slice(max(0, ys.min() - margin), min(h, ys.max() + 1 + margin)),
            slice(max(0, xs.min() - margin), min(w, xs.max() + 1 + margin)))


@torch.no_grad()
def edit(bundle: AssetBundle, photo: np.ndarray, labels_after: np.ndarray, mask: np.ndarray, seeds: list[int],
         ctx=None, *, top_k: int = 100, temperature: float = 1.0, rule: str = "cover",
         region=None, decode_margin: int | None = DECODE_MARGIN,
         precision: str = "fp32") -> tuple[list[np.ndarray], composite.Fit, list[float]]:
    """Sample len(seeds) candidates. Returns the patches for fit.region (full resolution, blended), the
    fit, and per-candidate seconds (the batch time split evenly). decode_margin: see decode_window.
    precision: the transformers' token steps in fp32 (exact), int8 (CPU), bf16, fp16 (GPU) or auto
    (engine.precision; a concrete name from resolve_precision is used as is)."""
    device = next(bundle.guiding.parameters()).device
    start = time.perf_counter()
    if not mask.any():
        raise InputError("nothing to edit: the label maps are identical and no mask was given")
    _check_labels(bundle, labels_after)
    region = region or composite.working_region(mask, bundle.geometry)
    image, fit = composite.to_model(photo, region, bundle.geometry)
    labels, _ = composite.to_model(labels_after, region, bundle.geometry, kind="labels")
    small_mask, _ = composite.to_model(mask, region, bundle.geometry, kind="mask")
    tokens = token_mask(small_mask, rule)
    if not tokens.any():
        raise InputError("the edit is smaller than one 16x16 token cell of the model input; paint a larger area")
    if tokens.all():
        raise InputError("the edit covers the whole working region: ASSET needs some unedited context")
    encoder_mask = small_mask if rule == "reference" else _pixel_mask(tokens)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    k = len(seeds)
    precision = resolve_precision(precision, device, rows=k)
    have_sga = bundle.sga is not None and bundle.resolution > GUIDE_SIZE

    # guide: 256 px, 16x16 tokens, dense attention
    g_image = cv2.resize(image, (GUIDE_SIZE, GUIDE_SIZE), interpolation=cv2.INTER_AREA)
    g_labels = cv2.resize(labels.astype(np.int32), (GUIDE_SIZE, GUIDE_SIZE), interpolation=cv2.INTER_NEAREST)
    g_pixels = cv2.resize(encoder_mask.astype(np.uint8), (GUIDE_SIZE, GUIDE_SIZE), interpolation=cv2.INTER_NEAREST) > 0
    g_tokens = token_mask(g_pixels, rule)
    if g_tokens.all():
        g_tokens[0, 0] = False  # keep one known token; the guide only steers the high-resolution pass
    gz, gc = _codes(bundle, g_image, g_labels, g_pixels, device)
    g_mask = torch.from_numpy(g_tokens.reshape(-1)).to(device)
    guide_span = (0.0, 0.25) if have_sga else (0.0, 0.95)
    if g_mask.any():
        guide = sample_tokens(bundle.guiding, gz, gc, g_mask, k, top_k=top_k, temperature=temperature,
                              generator=gens, ctx=ctx, stage="guide (256 px)", span=guide_span, precision=precision)
    else:
        guide = gz[None].expand(k, -1).clone()
    if have_sga:
        z, c = _codes(bundle, image, labels, encoder_mask, device)
        guide_in = guide.masked_fill(g_mask, bundle.guiding.cfg.mask_token)
        guidance = bundle.guiding.guidance(guide_in, gc[None].expand(k, -1), guide, target=bundle.sga.cfg)
        mask_t = torch.from_numpy(tokens.reshape(-1)).to(device)
        out = sample_tokens(bundle.sga, z, c, mask_t, k, guidance=guidance, top_k=top_k, temperature=temperature,
                            generator=gens, ctx=ctx, stage=f"ASSET ({bundle.resolution} px)", span=(0.25, 0.95),
                            precision=precision)
        side = bundle.resolution // CELL
    else:
        out, side = guide, GUIDE_SIZE // CELL
    if ctx is not None:
        ctx.check_cancelled()
        ctx.progress(0.96, "decoding")
    grid_mask = tokens if side * CELL == bundle.resolution else token_mask(g_pixels, rule)
    patches = [_paste_tokens(bundle, out[i], side, grid_mask, decode_margin, image, photo, mask, fit)
               for i in range(k)]  # one at a time: a candidate's pixels must not depend on the batch size
    seconds = (time.perf_counter() - start) / k
    return patches, fit, [seconds] * k


def _paste_tokens(bundle: AssetBundle, codes: torch.Tensor, side: int, grid_mask: np.ndarray,
                  decode_margin: int | None, image: np.ndarray, photo: np.ndarray, mask: np.ndarray,
                  fit: composite.Fit) -> np.ndarray:
    """A (side x side) token grid decoded around `grid_mask` (decode_window) over the model-size `image`, back at
    the photo's resolution and blended into fit.region where `mask` is set."""
    rows, cols = decode_window(grid_mask, decode_margin)
    decoded = bundle.image_vqgan.decode_code(codes.reshape(1, side, side)[:, rows, cols])
    window = ((decoded[0].clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).cpu().numpy().astype(np.uint8)
    result = cv2.resize(image, (side * CELL, side * CELL), interpolation=cv2.INTER_AREA)
    result[rows.start * CELL:rows.stop * CELL, cols.start * CELL:cols.stop * CELL] = window
    if result.shape[0] != bundle.resolution:
        result = cv2.resize(result, (bundle.resolution, bundle.resolution), interpolation=cv2.INTER_CUBIC)
    return composite.paste_back(photo, mask, result, fit)


@torch.no_grad()
def reconstruct(bundle: AssetBundle, photo: np.ndarray, mask: np.ndarray,
                decode_margin: int | None = DECODE_MARGIN) -> tuple[np.ndarray, composite.Fit]:
    """The edit a perfect transformer would give when asked for the photo's own content: the photo's own tokens
    (unmasked encoder) decoded and blended exactly as `edit` does. What is left between it and the photo is the
    tokenizer's share of an edit's error."""
    device = next(bundle.image_vqgan.parameters()).device
    region = composite.working_region(mask, bundle.geometry)
    image, fit = composite.to_model(photo, region, bundle.geometry)
    small_mask, _ = composite.to_model(mask, region, bundle.geometry, kind="mask")
    x = torch.from_numpy(image).to(device).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    _, codes = bundle.image_vqgan.encode(x)  # no mask: the whole photo, as the training targets are encoded
    side = bundle.resolution // CELL
    return _paste_tokens(bundle, codes.reshape(-1), side, token_mask(small_mask), decode_margin, image, photo,
                         mask, fit), fit


def _decode_margin(value) -> int | None:
    """params["decode_margin"]: tokens of context, or "full" to decode the whole grid like the official code."""
    if value in (None, "full"):
        return None
    try:
        margin = int(value)
    except (TypeError, ValueError):
        margin = -1
    if margin < 0:
        raise InputError(f"decode_margin must be a number of tokens (0 or more) or 'full', not {value!r}")
    return margin


class AssetBackend(Pipeline):
    """The "asset" backend of engine.jobs: label edits on photos."""

    name = "asset"
    default_model = DEFAULT_MODEL

    def load(self, path: Path, device: str) -> AssetBundle:
        return bundle_from_folder(path, device)

    def check(self, request) -> None:
        if request.labels_after is None or request.photo.ndim != 3:
            raise InputError("ASSET edits a colour photo through its label map: give the labels before and after")

    def sample(self, bundle: AssetBundle, request, ctx):
        from engine.jobs import Candidate

        params = request.params
        device = next(bundle.guiding.parameters()).device
        precision = resolve_precision(params.get("precision", "fp32"), device, rows=len(ctx.seeds))
        patches, fit, seconds = edit(
            bundle, request.photo, np.asarray(request.labels_after), request.edit_mask(), list(ctx.seeds), ctx,
            top_k=int(params.get("top_k", 100)),
            temperature=finite(params.get("temperature", 1.0), "temperature", positive=True),
            rule=str(params.get("token_mask", "cover")), region=request.region,
            decode_margin=_decode_margin(params.get("decode_margin", DECODE_MARGIN)), precision=precision)
        info = {"model": bundle.path.name, "resolution": bundle.resolution, "precision": precision}
        return [Candidate(image=p, region=fit.region, seed=s, info=info, seconds=t)
                for p, s, t in zip(patches, ctx.seeds, seconds)]
