"""Taming Transformers translation: a label map -> k sampled images of any size (S-FLCKR style).

1. the label map at the working size: its own size (params "max_side" caps the long side, default 1024 px;
   a map whose short side is below the model's window, 256 px for S-FLCKR, is scaled up to it), rounded to
   multiples of the VQGAN factor (16), nearest-neighbour;
2. its seg codes through the cond stage VQGAN;
3. sliding-window sampling over the whole token grid (engine.models.taming_sampling; params "sampler": "fast"
   (default) or "reference", the official full-recompute loop, same tokens), "top_k" (100) and "temperature"
   (1.0) as the official scripts;
4. each candidate decoded by the first stage VQGAN and resized to the label map's size.
Candidate i uses its own generator seeded with ctx.seeds[i], so it does not depend on k.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import torch

from engine.errors import InputError
from engine.model_store import find_model, load_model_dir
from engine.models.taming import Net2NetTransformer, TamingConfig
from engine.models.taming_sampling import reduced_precision, sample_fast, sample_reference
from engine.precision import resolve_precision
from engine.pipelines.base import Pipeline, load_folder, strict
from engine.safe_io import finite

DEFAULT_MODEL = "demo-taming-landscape"
MAX_SIDE = 1024


def load_taming(path: Path, device: str = "cpu") -> tuple[Net2NetTransformer, dict]:
    """An imported model holds all three modules in model.safetensors. A folder whose config has "stages" (the
    demo) holds only the transformer and names the model folder whose VQGANs are its two stages, so they are
    shipped once; the union is loaded strictly, key for key."""
    config, weights = load_folder(path, "taming", ["model"])
    cfg = TamingConfig.from_dict(config["taming"])
    state = dict(weights["model"])
    stages = config.get("stages")
    if stages:
        folder = find_model(str(stages["folder"])).path
        _, stage_weights = load_model_dir(folder, [stages["first_stage_model"], stages["cond_stage_model"]])
        for prefix, stem in (("first_stage_model.", stages["first_stage_model"]),
                             ("cond_stage_model.", stages["cond_stage_model"])):
            state.update({prefix + k: v for k, v in stage_weights[stem].items()})
    model = strict(Net2NetTransformer(cfg), state, str(path / "model.safetensors")).to(device)
    model.config_json = config  # label set, title
    return model, config


def working_size(width: int, height: int, factor: int, window: int, max_side: int) -> tuple[int, int]:
    """(width, height) the model samples at: see the module docstring, step 1."""
    scale = min(1.0, max_side / max(width, height))
    scale = max(scale, window * factor / min(width, height))  # at least one window on the short side
    return (max(window, round(width * scale / factor)) * factor, max(window, round(height * scale / factor)) * factor)


@torch.no_grad()
def translate(model: Net2NetTransformer, labels: np.ndarray, seeds: list[int], ctx=None, *, top_k: int | None = 100,
              temperature: float = 1.0, sampler: str = "fast", max_side: int = MAX_SIDE,
              size: tuple[int, int] | None = None, precision: str = "fp32") -> tuple[list[np.ndarray], dict]:
    """len(seeds) RGB images (H, W, 3) uint8 of label map `labels` (H, W), or of `size` = (width, height).
    `precision`: the transformer's linear layers in fp32 (exact, the default), int8, bf16, fp16 or auto
    (engine.precision; the VQGAN stages stay fp32)."""
    if sampler not in ("fast", "reference"):
        raise InputError(f"sampler must be 'fast' or 'reference', not {sampler!r}")
    device = model.transformer.pos_emb.device
    precision = resolve_precision(precision, device, rows=len(seeds))
    transformer = reduced_precision(model.transformer, precision)
    h, w = labels.shape
    out_w, out_h = size or (w, h)
    factor, window = model.first_stage_model.config.factor, model.window
    sw, sh = working_size(out_w, out_h, factor, window, max_side)
    small = cv2.resize(labels.astype(np.uint16), (sw, sh), interpolation=cv2.INTER_NEAREST) if (sw, sh) != (w, h) \
        else labels
    cond = model.encode_labels(torch.from_numpy(small.astype(np.int64)).to(device)[None])[0]
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    run = sample_fast if sampler == "fast" else sample_reference
    started = time.perf_counter()
    codes = run(transformer, cond, len(seeds), window=window, top_k=top_k, temperature=temperature,
                generator=gens, ctx=ctx, stage=f"sampling {cond.shape[1]}x{cond.shape[0]} tokens", span=(0.02, 0.9))
    sampled = time.perf_counter() - started
    images = []
    for i in range(len(seeds)):  # one at a time: a candidate's pixels must not depend on the batch size
        if ctx is not None:
            ctx.check_cancelled()
            ctx.progress(0.9 + 0.1 * i / len(seeds), "decoding")
        x = model.decode_codes(codes[i:i + 1])[0].clamp(-1, 1)
        rgb = ((x + 1) * 127.5 + 0.5).byte().permute(1, 2, 0).cpu().numpy()
        if rgb.shape[:2] != (out_h, out_w):
            shrink = rgb.shape[0] * rgb.shape[1] > out_h * out_w
            rgb = cv2.resize(rgb, (out_w, out_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
        images.append(np.ascontiguousarray(rgb))
    info = {"tokens": [int(cond.shape[0]), int(cond.shape[1])], "working_size": [sw, sh], "sampler": sampler,
            "precision": precision, "sampling_seconds": round(sampled, 3)}
    return images, info


class TamingBackend(Pipeline):
    """The "taming" backend: translate mode, k candidates of the whole label map."""

    name = "taming"
    default_model = DEFAULT_MODEL
    loading_stage = "loading the taming transformer"

    def load(self, path: Path, device: str) -> Net2NetTransformer:
        return load_taming(path, device)[0]

    def check(self, request) -> None:
        if request.labels_after is None:
            raise InputError("Taming Transformers renders a label map, and this request has none")
        mode = request.mode or "translate"
        if mode != "translate":
            raise InputError(f"Taming Transformers serves translate mode (a label map alone), not {mode!r}")

    def candidate_bytes(self, request) -> int:
        # the sampler's caches are bounded on their own (1 GB); per candidate: the float images of decoding
        w, h = request.size
        return w * h * 3 * 4 * 8

    def sample(self, model: Net2NetTransformer, request, ctx):
        from engine.jobs import Candidate

        label_set = model.config_json.get("label_set")
        if label_set and request.label_set != label_set:
            raise InputError(f"model {request.model or DEFAULT_MODEL!r} reads {label_set} label maps, the document "
                             f"uses {request.label_set}")
        params = request.params
        top_k = params.get("top_k", 100)
        max_side = int(params.get("max_side", MAX_SIDE))
        if max_side < 16:
            raise InputError(f"max_side must be at least 16 pixels, not {max_side}")
        started = time.perf_counter()
        images, info = translate(
            model, np.asarray(request.labels_after), list(ctx.seeds), ctx,
            top_k=None if top_k in (None, 0) else int(top_k),
            temperature=finite(params.get("temperature", 1.0), "temperature", positive=True),
            sampler=str(params.get("sampler", "fast")), max_side=max_side,
            precision=params.get("precision", "fp32"))
        seconds = (time.perf_counter() - started) / len(images)
        h, w = request.labels_after.shape
        info = {**info, "model": Path(str(request.model or DEFAULT_MODEL)).name, "mode": "translate"}
        if ctx is not None:
            ctx.progress(1.0, "done")
        return [Candidate(image=img, region=(0, 0, w, h), seed=s, info=info, seconds=seconds)
                for img, s in zip(images, ctx.seeds)]
