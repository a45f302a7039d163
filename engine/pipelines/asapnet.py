"""ASAPNet rendering: a label map -> an RGB image (translate mode), or a re-rendered edit blended into the photo.

`ASAPNetRenderer` holds one loaded model folder and renders label maps of any size: the LR stream runs at a
power-of-two reduction chosen per call (see `lr_factor`), the per-pixel MLPs at full resolution. `ASAPNetBackend`
serves the runtime's "asapnet" requests, the live preview among them.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from engine import composite
from engine.errors import InputError
from engine.jobs import Candidate
from engine.models.asapnet import ASAPNetConfig, ASAPNetsGenerator, LabelEncoding, noise_maps
from engine.pipelines.base import Pipeline, load_folder, model_folder, strict

DEFAULT_MODEL = "demo-asapnet-landscape"


class ASAPNetRenderer:
    """A loaded model folder that turns label maps into RGB images. Thread-safe for one caller at a time."""

    def __init__(self, config: dict, state_dict: dict[str, torch.Tensor], device: str = "cpu", source: str = ""):
        self.config = config
        self.generator_config = ASAPNetConfig.from_dict(config["generator"])
        self.encoding = LabelEncoding.from_dict(config["encoding"])
        self.label_set = config.get("label_set")
        self.device = device
        self.model = strict(ASAPNetsGenerator(self.generator_config), state_dict, source or "netG").to(device)

    @classmethod
    def load(cls, model: str = "", device: str = "cpu") -> "ASAPNetRenderer":
        """`model`: a model folder path or the name of an asapnet model in the model list ("" = the demo)."""
        return cls.from_folder(model_folder(model, "asapnet", DEFAULT_MODEL), device)

    @classmethod
    def from_folder(cls, path: Path, device: str = "cpu") -> "ASAPNetRenderer":
        config, weights = load_folder(path, "asapnet", ["netG"])
        return cls(config, weights["netG"], device, source=str(path / "netG.safetensors"))

    @property
    def multiple(self) -> int:
        """S: rendered sizes are padded to multiples of S (times the LR factor)."""
        return self.generator_config.downsampling

    @property
    def stochastic(self) -> bool:
        """A model with noise inputs renders another image for every seed; without, one image per label map."""
        return self.generator_config.noise_channels > 0

    def lr_factor(self, h: int, w: int) -> int:
        """The power of two by which the LR stream's input is shrunk for an (h, w) map: the largest that keeps it at
        least the model's native size, so the LR stream sees objects at about the scale it was trained on, while
        the per-pixel MLPs still run at full resolution (the paper's S = S1 x S2 idea, with S1 chosen per call)."""
        native = max(self.config.get("native_size") or [16 * self.multiple])
        return 2 ** max(0, int(math.floor(math.log2(max(h, w) / native))))

    @torch.inference_mode()
    def render(self, labels: np.ndarray, size: tuple[int, int] | None = None, source: str = "label map",
               check_cancelled=None, lr_factor: int | None = None, seed: int = 0) -> np.ndarray:
        """(H, W) label ids -> (H, W, 3) uint8 RGB, or resized to `size` = (width, height) if given.
        `lr_factor`: see lr_factor(); 1 runs the LR stream at full resolution as upstream does.
        `check_cancelled` is called between the two streams. `seed` draws the noise maps of a stochastic model
        (ignored by a deterministic one)."""
        return self.render_timed(labels, size, source, check_cancelled, lr_factor, seed)[0]

    @torch.inference_mode()
    def render_timed(self, labels, size=None, source="label map", check_cancelled=None, lr_factor=None, seed=0):
        """render() plus the seconds spent in the LR stream and in the HR stream."""
        return self._render(np.asarray(labels), size, source, check_cancelled, lr_factor, seed)

    def _render(self, labels, size, source, check_cancelled, lr_factor, seed):
        if size is not None and (size[0], size[1]) != (labels.shape[1], labels.shape[0]):
            labels = cv2.resize(labels.astype(np.uint16), tuple(size), interpolation=cv2.INTER_NEAREST)
        h, w = labels.shape
        f = lr_factor or self.lr_factor(h, w)
        m = self.multiple * f
        padded = np.pad(labels, ((0, -h % m), (0, -w % m)), mode="edge")  # crop the result back to h x w
        started = time.perf_counter()
        x_lr = self.encoding.encode(padded[f // 2::f, f // 2::f] if f > 1 else padded, source).to(self.device)
        params = self.model.lowres(x_lr)
        lr_done = time.perf_counter()
        if check_cancelled is not None:
            check_cancelled()
        if f > 1:
            # each LR cell now spans f x f MLP tiles: interpolating the parameter grid to the tile grid (instead of
            # repeating each cell) halves the steps at cell borders, e.g. a sky's bands. On 3 held-out photos
            # (engine.train.tasks_asapnet.held_out_render_photos, f = 2) the grid-artefact score fell from 25.8 /
            # 9.7 / 4.5 to 22.7 / 6.5 / 4.4 and LPIPS-alex from 0.752 / 0.689 / 0.666 to 0.721 / 0.686 / 0.660.
            # f = 1, upstream's case, is untouched.
            params = _bilinear_upsample(params, f)
        x = x_lr if f == 1 else self.encoding.encode(padded, source).to(self.device)
        noise = None
        if self.stochastic:
            generator = torch.Generator().manual_seed(int(seed))
            noise = noise_maps(1, self.generator_config.noise_channels, *padded.shape, generator).to(self.device)
        image = self.model.highres_stream(x, params, noise)[0, :, :h, :w]
        rgb = ((image.clamp(-1, 1) + 1) * 127.5 + 0.5).byte().permute(1, 2, 0).contiguous().cpu().numpy()
        return rgb, lr_done - started, time.perf_counter() - lr_done


def _bilinear_upsample(grid: torch.Tensor, f: int) -> torch.Tensor:
    """F.interpolate(grid, scale_factor=f, mode="bilinear", align_corners=False) as two small matrix products: the
    same numbers (to float rounding) at repeat_interleave's speed; interpolate itself is 2-5x slower on a
    (1, 4643, h, w) parameter grid on one CPU thread."""
    h, w = grid.shape[2:]
    rows = F.interpolate(torch.eye(h, dtype=grid.dtype, device=grid.device)[None, None], size=(h * f, h),
                         mode="bilinear", align_corners=False)[0, 0]
    cols = F.interpolate(torch.eye(w, dtype=grid.dtype, device=grid.device)[None, None], size=(w * f, w),
                         mode="bilinear", align_corners=False)[0, 0]
    return rows @ grid @ cols.T


class ASAPNetBackend(Pipeline):
    """The request's mode: "translate" renders the whole label map (labels_after) as the image; "edit" renders the
    working region around the edit mask and Laplacian-blends it into the photo there. A request without a mode
    is a translation (the engine's main mode). A model with noise inputs gives one candidate per seed; a
    deterministic one (upstream's) gives one candidate whatever the request's k."""

    name = "asapnet"
    default_model = DEFAULT_MODEL
    loading_stage = "loading ASAPNet"
    # a few small convolutions and thousands of tiny matmuls: on a busy 2-core CPU, 2 threads measured 5-50x
    # slower than 1 (synchronisation)
    threads = 1
    MAX_SIDE = 2048  # larger regions are rendered at this size and scaled up (params["max_side"] overrides it)

    def load(self, path: Path, device: str) -> ASAPNetRenderer:
        return ASAPNetRenderer.from_folder(path, device)

    def check(self, request) -> None:
        if request.labels_after is None:
            raise InputError("ASAPNet renders a label map, and this request has none")
        if self.mode(request) not in ("translate", "edit"):
            raise InputError(f"ASAPNet: unknown mode {self.mode(request)!r} (translate or edit)")

    @staticmethod
    def mode(request) -> str:
        return request.mode or request.params.get("mode") or "translate"

    def sample(self, renderer: ASAPNetRenderer, request, ctx) -> list[Candidate]:
        mode = self.mode(request)
        started = time.perf_counter()
        if renderer.label_set and request.label_set != renderer.label_set:
            raise InputError(f"model {request.model or DEFAULT_MODEL!r} reads {renderer.label_set} label maps, "
                             f"the document uses {request.label_set}")
        h, w = request.labels_after.shape
        region, mask = (0, 0, w, h), None
        if mode == "edit":
            mask = request.edit_mask()
            if not mask.any():
                raise InputError("nothing to render: no label was changed")
            native = tuple(renderer.config.get("native_size") or (256, 256))
            region = composite.working_region(mask, composite.ModelGeometry(native, renderer.multiple))
        x0, y0, x1, y1 = region
        max_side = int(request.params.get("max_side", self.MAX_SIDE))
        if max_side < 16:
            raise InputError(f"ASAPNet: max_side must be at least 16 pixels, not {max_side}")
        scale = min(1.0, max_side / max(x1 - x0, y1 - y0))
        size = (max(16, round((x1 - x0) * scale)), max(16, round((y1 - y0) * scale)))
        ctx.check_cancelled()
        seeds = list(ctx.seeds) if renderer.stochastic else list(ctx.seeds[:1])
        candidates = []
        for i, seed in enumerate(seeds):
            ctx.progress(0.2 + 0.8 * i / len(seeds), "rendering")
            image = renderer.render(request.labels_after[y0:y1, x0:x1], size, check_cancelled=ctx.check_cancelled,
                                    seed=seed)
            if scale < 1.0:
                image = cv2.resize(image, (x1 - x0, y1 - y0), interpolation=cv2.INTER_CUBIC)
            if mode == "edit":
                photo = request.photo if request.photo.ndim == 3 else np.repeat(request.photo[:, :, None], 3, 2)
                image = composite.laplacian_blend(image, np.ascontiguousarray(photo[y0:y1, x0:x1]),
                                                  mask[y0:y1, x0:x1], color_match=True)
            candidates.append(Candidate(image=image, region=region, seed=seed,
                                        info={"deterministic": not renderer.stochastic, "mode": mode},
                                        seconds=time.perf_counter() - started))
            started = time.perf_counter()
            ctx.check_cancelled()
        ctx.progress(1.0, "done")
        return candidates

