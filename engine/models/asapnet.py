"""ASAPNet (Rott Shaham, Gharbi, Zhang, Shechtman, Michaeli; CVPR 2021): label map -> image with per-pixel MLPs.

A convolutional low-resolution stream looks at the (pre-downsampled) label map and predicts, for every cell of a
grid 1/S of the image size, the weights and biases of a small MLP. Every pixel of the full-resolution label map,
concatenated with cosine positional codes, then runs through the MLP of its S x S tile. Only the low-resolution
stream has learned weights, so a checkpoint holds `lowres_stream.model.*` keys only.

Module tree and attribute names follow tamarott/ASAPNet (models/networks/generator.py, architecture.py), so the
official `latest_net_G.pth` files load with strict=True. Deviation: positional codes are cached per
(H, W, dtype, device) and broadcast over the batch; upstream caches the first call's (B, C, H, W) tensor, so
every later call with another batch size or resolution fails.

Two extensions, off by default so official checkpoints run exactly as upstream: `noise_channels` appends multi-scale
Gaussian noise maps to every pixel's MLP input, and `tile_blend` mixes the MLPs of the four nearest tiles bilinearly
per pixel. Upstream's model is deterministic and its positional codes repeat in every S x S tile, so a uniform region
renders one texture repeated per tile, with steps where the tiles' parameters change; with `hr_coor=None` (an
upstream option), noise and blending, texture comes from the noise and nothing repeats at the tile period.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.errors import CheckpointError, InputError
from engine.labels import DEFAULT_SET, load_label_set


@dataclass(frozen=True)
class ASAPNetConfig:
    in_channels: int  # C_in seen by the LR stream: one-hot (+ dontcare) (+ instance edge)
    downsampling: int = 16  # S = S1 * S2: image pixels per LR cell side (upstream: crop_size // (16 * aspect_ratio))
    learned_ds_factor: int = 16  # S2: learned by stride-2 convs; S1 = S / S2 is the fixed tent pre-downsample
    lr_width: int = 64
    lr_max_width: int = 1024
    lr_depth: int = 7
    hr_width: int = 64
    hr_depth: int = 5
    output_nc: int = 3
    padding: str = "zero"  # "zero" | "reflection" | "replicate" (the last two share one key layout)
    lr_instance: bool = False  # the last input channel feeds the LR stream only
    hr_coor: str | None = "cosine"  # upstream's --hr_coor: "cosine" positional codes or None (labels only)
    # Extensions, off by default (official checkpoints never use them; see the module docstring):
    noise_channels: int = 0  # multi-scale Gaussian noise maps appended to every pixel's MLP input
    tile_blend: bool = False  # each pixel blends the MLPs of its 4 nearest tiles bilinearly

    def __post_init__(self):
        for name, value in (("downsampling", self.downsampling), ("learned_ds_factor", self.learned_ds_factor)):
            if value < 2 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two >= 2, got {value}")
        if self.downsampling < self.learned_ds_factor:
            raise ValueError(f"downsampling {self.downsampling} < learned_ds_factor {self.learned_ds_factor}")
        if self.padding not in ("zero", "reflection", "replicate"):
            raise ValueError(f"unknown padding {self.padding!r}")
        if self.hr_coor not in ("cosine", None):
            raise ValueError(f"hr_coor must be 'cosine' or None, not {self.hr_coor!r}")
        if not isinstance(self.noise_channels, int) or self.noise_channels < 0:
            raise ValueError(f"noise_channels must be an integer >= 0, not {self.noise_channels!r}")

    @property
    def hr_channels(self) -> list[int]:
        """MLP layer widths: [C_hr, hr_width x (hr_depth - 1), output_nc]; C_hr adds 4 codes per frequency (with
        cosine codes) and the noise maps."""
        codes = 4 * int(math.log2(self.downsampling)) if self.hr_coor == "cosine" else 0
        c_hr = self.in_channels - int(self.lr_instance) + codes + self.noise_channels
        return [c_hr] + [self.hr_width] * (self.hr_depth - 1) + [self.output_nc]

    @property
    def num_params(self) -> int:
        ch = self.hr_channels
        return sum((nci + 1) * nco for nci, nco in zip(ch[:-1], ch[1:]))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "ASAPNetConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


def _pad(padding: str) -> list[nn.Module]:
    if padding == "reflection":
        return [nn.ReflectionPad2d(1)]
    if padding == "replicate":
        return [nn.ReplicationPad2d(1)]
    return []


def _conv_in(cin: int, cout: int, stride: int, padding: str) -> nn.Sequential:
    # upstream's 'instanceaffine' norm deletes the conv bias (IN removes it anyway) and wraps Sequential(conv, IN)
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1 if padding == "zero" else 0, bias=False)
    return nn.Sequential(conv, nn.InstanceNorm2d(cout, affine=True))


class ASAPNetsBlock(nn.Module):
    """conv3x3 -> IN -> ReLU. Not residual, despite the name."""

    def __init__(self, dim: int, padding: str):
        super().__init__()
        self.conv_block = nn.Sequential(*_pad(padding), _conv_in(dim, dim, 1, padding), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.conv_block(x)


class ASAPNetsLRStream(nn.Module):
    """(B, C_in, H/S1, W/S1) -> (B, N_params, H/S, W/S)."""

    def __init__(self, cfg: ASAPNetConfig):
        super().__init__()
        p, width = cfg.padding, cfg.lr_width
        layers = [*_pad(p), _conv_in(cfg.in_channels, width, 1, p), nn.ReLU(inplace=True)]
        n_ds = int(math.log2(cfg.learned_ds_factor))
        for i in range(n_ds):
            out = cfg.lr_max_width if i == n_ds - 1 else width
            layers += [*_pad(p), _conv_in(width, out, 2, p), nn.ReLU(inplace=True)]
            width = out
        layers += [ASAPNetsBlock(width, p) for _ in range(cfg.lr_depth)]
        layers += [nn.Conv2d(width, cfg.num_params, 1)]  # the head keeps its bias: no norm follows
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def tent_downsample(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Upstream's separable 'bilinear' downsample: kernel 1,3,..,2s-1,2s-1,..,1 (normalised), reflection pad s/2,
    depthwise horizontal then vertical pass. Output is exactly (H/s, W/s) for even s."""
    ramp = np.arange(1, 2 * stride + 1, 2)
    kernel = np.concatenate([ramp, ramp[::-1]])
    kernel = torch.tensor(kernel / kernel.sum(), dtype=torch.float32).to(x.device, x.dtype)
    c = x.shape[1]
    x = F.pad(x, [stride // 2] * 4, mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), stride=(1, stride), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), stride=(stride, 1), groups=c)


def cosine_codes(h: int, w: int, downsampling: int) -> torch.Tensor:
    """(1, 4 log2 S, h, w) float32: [cos x, sin x, cos y, sin y] of 2 pi (p mod f) / f for f = S, S/2, .., 2.
    Built in float32 on the CPU, like upstream, because bitwise parity depends on it."""
    x = torch.arange(w, dtype=torch.float32)
    y = torch.arange(h, dtype=torch.float32)
    codes = []
    f = downsampling
    while f > 1:
        ax = 2 * math.pi * torch.remainder(x, f) / f
        ay = 2 * math.pi * torch.remainder(y, f) / f
        codes += [
            torch.cos(ax).view(1, w).expand(h, w),
            torch.sin(ax).view(1, w).expand(h, w),
            torch.cos(ay).view(h, 1).expand(h, w),
            torch.sin(ay).view(h, 1).expand(h, w),
        ]
        f //= 2
    return torch.stack(codes)[None]


def noise_maps(b: int, channels: int, h: int, w: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(b, channels, h, w) float32 Gaussian noise on the CPU, channel c smooth at 2**c pixels: white noise blurred by
    a Gaussian of sigma 2**c / 2 (none for c = 0), scaled to unit standard deviation. Blurring keeps the noise
    stationary; upsampling a coarse grid instead would modulate its contrast with the grid's period, which divides
    the tile's. Drawn on the CPU so a seed gives the same maps on every device."""
    maps = []
    for c in range(channels):
        sigma = 2 ** c / 2 if c else 0.0
        r = math.ceil(3 * sigma)
        n = torch.randn(b, 1, h + 2 * r, w + 2 * r, generator=generator)
        if r:
            taps = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
            taps = taps / taps.sum()
            n = F.conv2d(F.conv2d(n, taps.view(1, 1, 1, -1)), taps.view(1, 1, -1, 1))
        maps.append(n / n.std().clamp(min=1e-6))
    return torch.cat(maps, 1) if maps else torch.zeros(b, 0, h, w)


class ASAPNetsHRStream(nn.Module):
    """Per-pixel MLPs whose parameters come from the LR stream; no learned weights of its own.

    Flat layout of the N_params channels, layer by layer: bias (nco) first, then weights (nci * nco) read as an
    input-major (nci, nco) matrix, applied as tiles @ W + b."""

    BAND_PIXELS = 1 << 16  # pixels per band of tile rows (at least one row of tiles)

    def __init__(self, cfg: ASAPNetConfig):
        super().__init__()
        self.downsampling = cfg.downsampling
        self.lr_instance = cfg.lr_instance
        self.hr_coor, self.noise_channels, self.tile_blend = cfg.hr_coor, cfg.noise_channels, cfg.tile_blend
        self.channels = cfg.hr_channels
        self.splits = []  # per layer: (bias start, weight start, weight stop)
        idx = 0
        for nci, nco in zip(self.channels[:-1], self.channels[1:]):
            self.splits.append((idx, idx + nco, idx + nco + nci * nco))
            idx += nco + nci * nco
        self.num_params = idx
        self._codes: dict[tuple, torch.Tensor] = {}

    def codes(self, h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (h, w, dtype, torch.device(device))
        if key not in self._codes:
            self._codes[key] = cosine_codes(h, w, self.downsampling).to(device=device, dtype=dtype)
        return self._codes[key]

    def forward(self, highres: torch.Tensor, lr_params: torch.Tensor, noise: torch.Tensor | None = None
                ) -> torch.Tensor:
        """`noise`: (B, noise_channels, H, W) for a model with noise channels (noise_maps; None draws it from
        torch's global generator, as training does); must be None for one without."""
        if lr_params.shape[1] != self.num_params:
            raise ValueError(f"expected {self.num_params} parameter channels, got {lr_params.shape[1]}")
        if self.lr_instance:
            highres = highres[:, :-1]
        k = self.downsampling
        b, _, h, w = highres.shape
        hl, wl = lr_params.shape[2:]
        if (h, w) != (hl * k, wl * k):
            raise ValueError(f"input {h}x{w} does not match the {hl}x{wl} parameter grid at S={k}")
        parts = [(highres, "replicate")]
        if self.hr_coor == "cosine":
            # the codes repeat every k pixels and h, w are multiples of k: wrapping them around extends them exactly
            parts.append((self.codes(h, w, highres.dtype, highres.device).expand(b, -1, -1, -1), "circular"))
        if self.noise_channels:
            if noise is None:
                noise = noise_maps(b, self.noise_channels, h, w).to(highres.device, highres.dtype)
            if tuple(noise.shape) != (b, self.noise_channels, h, w):
                raise ValueError(f"noise of shape {tuple(noise.shape)}, expected {(b, self.noise_channels, h, w)}")
            parts.append((noise, "reflect"))
        elif noise is not None:
            raise ValueError("this model has no noise input")
        if self.tile_blend:
            return self._blended(parts, lr_params)
        return self._banded([p for p, _ in parts], lr_params)

    def _banded(self, parts: list[torch.Tensor], lr_params: torch.Tensor) -> torch.Tensor:
        """The tiled MLPs over the concatenated input parts, in bands of tile rows: each band's activations stay
        small enough for the cache, and a 2048 px image never materialises its (B, C, H, W) input at once. Tiles
        are independent, so this is exact."""
        k = self.downsampling
        b, w = parts[0].shape[0], parts[0].shape[3]
        rows = max(1, self.BAND_PIXELS // (b * w * k))
        bands = [self._mlp(torch.cat([p[:, :, r * k:(r + rows) * k] for p in parts], 1), lr_params[:, :, r:r + rows])
                 for r in range(0, lr_params.shape[2], rows)]
        return bands[0] if len(bands) == 1 else torch.cat(bands, 2)

    def _blended(self, parts: list[tuple[torch.Tensor, str]], lr_params: torch.Tensor) -> torch.Tensor:
        """Each pixel's output is the bilinear blend of the outputs of the MLPs of the four tiles whose centres
        surround it, so neighbouring tiles meet without a step. Computed as overlap-add: every tile's MLP runs on
        the 2S x 2S window centred on its tile (inputs padded by half a tile), weighted by a tent that falls from
        1 at the tile's centre to 0 at its neighbours' centres, and the windows are summed. Near the border, where
        a pixel has fewer tiles around it, the sum is divided by its weights: the border tiles extend outwards.
        4x the MLP work of upstream's tiles, in bands of tile rows like _banded."""
        k, half = self.downsampling, self.downsampling // 2
        b, _, h, w = parts[0][0].shape
        hl, wl = lr_params.shape[2:]
        dtype, device = lr_params.dtype, lr_params.device
        padded = [F.pad(p, [half] * 4, mode=mode) for p, mode in parts]
        ramp = 1 - ((torch.arange(2 * k, dtype=dtype, device=device) - k + 0.5).abs() / k)
        tent = (ramp[:, None] * ramp[None, :]).reshape(1, 4 * k * k, 1)
        out = torch.zeros(b, self.channels[-1], h + k, w + k, dtype=dtype, device=device)
        rows = max(1, self.BAND_PIXELS // (b * (w + k) * 4 * k))  # a band's windows overlap by a tile row
        for r in range(0, hl, rows):
            n_rows = min(rows, hl - r)
            x = torch.cat([p[:, :, r * k:(r + n_rows + 1) * k] for p in padded], 1)
            y = self._mlp_windows(x, lr_params[:, :, r:r + n_rows], 2 * k) * tent  # (tiles, 4 k^2, C)
            y = y.view(b, n_rows * wl, 4 * k * k, -1).permute(0, 3, 2, 1).reshape(b, -1, n_rows * wl)
            out[:, :, r * k:(r + n_rows + 1) * k] += F.fold(y, ((n_rows + 1) * k, w + k), 2 * k, stride=k)

        def coverage(n: int) -> torch.Tensor:  # per axis, the summed tent weights of the windows over each pixel
            total = torch.zeros(n * k + k, dtype=dtype, device=device)
            for t in range(n):
                total[t * k:t * k + 2 * k] += ramp
            return total[half:half + n * k]

        weight = coverage(hl)[:, None] * coverage(wl)[None, :]
        return out[:, :, half:half + h, half:half + w] / weight

    def _mlp_windows(self, x: torch.Tensor, lr_params: torch.Tensor, window: int) -> torch.Tensor:
        """(tiles, window^2, C_out): tile (i, j)'s MLP on the window x window pixels of `x` starting at (i S, j S);
        window = S gives upstream's tiles, 2 S the overlapping windows of _blended."""
        k = self.downsampling
        b, nci = x.shape[:2]
        hl, wl = lr_params.shape[2:]
        n = b * hl * wl
        # (B, C, hl, wl, m, m) -> (tiles, m*m, C): one row of pixels per tile, channels last for matmul
        out = x.unfold(2, window, k).unfold(3, window, k).permute(0, 2, 3, 4, 5, 1).reshape(n, window * window, nci)
        params = lr_params.permute(0, 2, 3, 1).reshape(n, -1)  # (tiles, N_params)
        last = len(self.splits) - 1
        for i, ((b0, w0, w1), nci, nco) in enumerate(zip(self.splits, self.channels[:-1], self.channels[1:])):
            # contiguous 3-D operands: one batched GEMM (strided ones fall back to a loop of thousands of small
            # GEMMs); bmm then add_ gives bit for bit upstream's 5-D matmul + broadcast add
            weight = params[:, w0:w1].reshape(n, nci, nco).contiguous()
            out = torch.bmm(out, weight).add_(params[:, b0:w0].reshape(n, 1, nco).contiguous())
            out = torch.tanh(out) if i == last else F.leaky_relu(out, 0.01, inplace=True)
        return out

    def _mlp(self, x: torch.Tensor, lr_params: torch.Tensor) -> torch.Tensor:
        k = self.downsampling
        b, _, h, w = x.shape
        hl, wl = lr_params.shape[2:]
        c = self.channels[-1]
        out = self._mlp_windows(x, lr_params, k)
        return out.view(b, hl, wl, k, k, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


class ASAPNetsGenerator(nn.Module):
    """(B, C_in, H, W) one-hot input -> (B, 3, H, W) in [-1, 1]. H and W must be multiples of S."""

    def __init__(self, cfg: ASAPNetConfig):
        super().__init__()
        self.config = cfg
        self.highres_stream = ASAPNetsHRStream(cfg)
        self.lowres_stream = ASAPNetsLRStream(cfg)

    def lowres(self, x: torch.Tensor) -> torch.Tensor:
        """The per-cell MLP parameters, (B, N_params, H/S, W/S)."""
        s1 = self.config.downsampling // self.config.learned_ds_factor
        return self.lowres_stream(tent_downsample(x, s1) if s1 > 1 else x)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.highres_stream(x, self.lowres(x), noise)


# --- checkpoint layout -------------------------------------------------------------------------------------------


def config_from_state_dict(
    sd: dict[str, torch.Tensor], hr_width: int | None = None, hr_depth: int | None = None, output_nc: int = 3,
    padding: str | None = None, source: str = "checkpoint",
) -> ASAPNetConfig:
    """Everything the checkpoint's shapes determine: C_in, widths, depth, S2, padding variant, and (through
    N_params) S and lr_instance. The MLP width/depth cannot be told apart from N_params alone, so the upstream
    defaults (64, 5) are tried first, then other small shapes; ambiguity raises and names the options to pass."""
    prefix = "lowres_stream.model."
    convs, blocks, head = {}, 0, None
    for key, t in sd.items():
        if not key.startswith(prefix):
            raise CheckpointError(f"{source}: unexpected key {key!r}: not an ASAPNet generator (netG) state dict")
        rest = key[len(prefix):].split(".")
        idx = int(rest[0])
        if rest[1:] == ["0", "weight"] and t.ndim == 4:
            convs[idx] = t.shape
        elif rest[1] == "conv_block" and rest[-1] == "weight" and t.ndim == 4:
            blocks += 1
        elif rest[1:] == ["weight"] and t.ndim == 4:
            head = (idx, t.shape)
    if not convs or head is None:
        raise CheckpointError(f"{source}: no ASAPNet LR-stream convolutions or parameter head found")
    first = min(convs)
    if first not in (0, 1):
        raise CheckpointError(f"{source}: first convolution at model.{first}; expected model.0 (zero padding) "
                              "or model.1 (reflection padding)")
    pad = padding or ("zero" if first == 0 else "reflection")
    if (pad == "zero") != (first == 0):
        raise CheckpointError(f"{source}: padding {pad!r} does not match the key layout (first conv at model.{first})")
    ordered = [convs[i] for i in sorted(convs)]
    in_channels, lr_width = ordered[0][1], ordered[0][0]
    n_ds = len(ordered) - 1
    lr_max_width = ordered[-1][0]
    num_params = head[1][0]

    candidates = []
    widths = [hr_width] if hr_width else [64, 32, 16, 128, 48, 96, 256]
    depths = [hr_depth] if hr_depth else [5, 4, 6, 3, 7, 8, 2]
    for w in widths:
        for d in depths:
            rest = num_params - (d - 2) * (w + 1) * w - (w + 1) * output_nc
            if rest <= 0 or rest % w:
                continue
            c_hr = rest // w - 1
            for lr_instance in (0, 1):
                codes = c_hr - in_channels + lr_instance
                if codes > 0 and codes % 4 == 0 and codes // 4 >= n_ds:
                    candidates.append((w, d, lr_instance, 2 ** (codes // 4)))
    if not candidates:
        raise CheckpointError(
            f"{source}: {num_params} parameters per pixel fit no MLP shape for {in_channels} input channels "
            "(pass --hr-width/--hr-depth if the model was trained with other values)")
    upstream_default = [c for c in candidates if c[:2] == (64, 5)]
    if len(candidates) > 1 and not upstream_default:
        shapes = ", ".join(f"width {w} depth {d}" for w, d, *_ in candidates)
        raise CheckpointError(f"{source}: {num_params} parameters per pixel fit several MLP shapes ({shapes}); "
                              "pass --hr-width and --hr-depth")
    w, d, lr_instance, s = (upstream_default or candidates)[0]
    return ASAPNetConfig(
        in_channels=in_channels, downsampling=s, learned_ds_factor=2 ** n_ds, lr_width=lr_width,
        lr_max_width=lr_max_width, lr_depth=blocks, hr_width=w, hr_depth=d, output_nc=output_nc, padding=pad,
        lr_instance=bool(lr_instance),
    )


# --- label maps to inputs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelEncoding:
    """How a label map becomes the model input.

    `class_ids`: the label id behind each one-hot channel (compact models); None means the channel index IS the id
    (upstream datasets). `dontcare`: one more channel for unlabeled pixels (and, with class_ids, every id outside the
    list). `instance_edge`: one more, last channel marking 4-neighbour label changes (we have no instance maps, so
    label boundaries stand in for instance boundaries)."""

    num_classes: int
    class_ids: tuple[int, ...] | None = None
    dontcare: bool = False
    instance_edge: bool = False
    unlabeled: int = 255

    @property
    def channels(self) -> int:
        return self.num_classes + int(self.dontcare) + int(self.instance_edge)

    def index_map(self, labels: np.ndarray, source: str = "label map") -> np.ndarray:
        """(H, W) label ids -> (H, W) int64 channel indices."""
        labels = np.asarray(labels).astype(np.int64)
        if self.class_ids is not None:
            lut = np.full(max(max(self.class_ids), self.unlabeled, int(labels.max(initial=0))) + 1,
                          self.num_classes if self.dontcare else -1, np.int64)
            lut[list(self.class_ids)] = np.arange(self.num_classes)
            index = lut[labels]
        else:
            index = labels.copy()
            if self.dontcare:
                index[labels == self.unlabeled] = self.num_classes
        bad = (index < 0) | (index >= self.num_classes + int(self.dontcare))
        if bad.any():
            ids = sorted(set(labels[bad].tolist()))[:8]
            raise InputError(f"{source}: ids {ids} have no input channel in this model "
                             f"({self.num_classes} classes{', no dontcare channel' if not self.dontcare else ''})")
        return index

    def encode(self, labels: np.ndarray, source: str = "label map") -> torch.Tensor:
        """(H, W) or (B, H, W) label ids -> (B, channels, H, W) float32."""
        labels = np.asarray(labels)
        batch = labels[None] if labels.ndim == 2 else labels
        index = torch.from_numpy(np.stack([self.index_map(m, source) for m in batch]))
        x = torch.zeros(index.shape[0], self.num_classes + int(self.dontcare), *index.shape[1:])
        x.scatter_(1, index[:, None], 1.0)
        if self.instance_edge:
            x = torch.cat([x, label_edges(index)[:, None]], 1)
        return x

    def to_dict(self) -> dict:
        return asdict(self) | {"class_ids": list(self.class_ids) if self.class_ids is not None else None}

    @classmethod
    def from_dict(cls, raw: dict) -> "LabelEncoding":
        ids = raw.get("class_ids")
        return cls(int(raw["num_classes"]), tuple(ids) if ids is not None else None, bool(raw.get("dontcare")),
                   bool(raw.get("instance_edge")), int(raw.get("unlabeled", 255)))


def label_edges(index: torch.Tensor) -> torch.Tensor:
    """(B, H, W) -> (B, H, W) float: 1 where the left/right/up/down neighbour differs, marked on both sides."""
    edge = torch.zeros(index.shape, dtype=torch.bool)
    dx = index[:, :, 1:] != index[:, :, :-1]
    dy = index[:, 1:, :] != index[:, :-1, :]
    edge[:, :, 1:] |= dx
    edge[:, :, :-1] |= dx
    edge[:, 1:, :] |= dy
    edge[:, :-1, :] |= dy
    return edge.float()


# --- upstream datasets -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetPreset:
    label_set: str
    encoding: LabelEncoding
    aspect: float = 1.0  # width / height at the training crop; the native height is 16 * S


DATASETS = {
    # labelIds 0..33 (+ the unused 34), instance edges fed to the LR stream only
    "cityscapes": DatasetPreset("cityscapes", LabelEncoding(35, instance_edge=True, unlabeled=0), aspect=2.0),
    # CMP facades ids 1..12; channel 0 is never set by the dataset
    "facades": DatasetPreset("cmp-facades", LabelEncoding(13, unlabeled=0)),
    # SPADE's convention: PNG value v -> channel v - 1, and 0 ('other') -> the dontcare channel 150
    "ade20k": DatasetPreset("ade20k-150", LabelEncoding(150, tuple(range(1, 151)), dontcare=True, unlabeled=0)),
    # 0-based ids, 255 -> dontcare channel 182, instance edge last
    "coco": DatasetPreset("coco-stuff-182", LabelEncoding(182, dontcare=True, instance_edge=True)),
}


def landscape_encoding() -> LabelEncoding:
    """Our demo models: one channel per id of the coco-stuff-182 'landscape' subset, every other id -> dontcare."""
    subset = load_label_set(DEFAULT_SET).subsets["landscape"]
    return LabelEncoding(len(subset), tuple(subset), dontcare=True)


def dataset_preset(name: str) -> DatasetPreset:
    if name == "landscape":
        return DatasetPreset("coco-stuff-182", landscape_encoding())
    try:
        return DATASETS[name]
    except KeyError:
        raise InputError(f"unknown dataset {name!r}: use one of {', '.join([*DATASETS, 'landscape'])}") from None


def model_config(cfg: ASAPNetConfig, preset: DatasetPreset, title: str, **extra) -> dict:
    """config.json of an ASAPNet model folder."""
    height = 16 * cfg.downsampling
    return {
        "kind": "asapnet", "title": title, "label_set": preset.label_set, "encoding": preset.encoding.to_dict(),
        "generator": cfg.to_dict(), "native_size": [int(round(height * preset.aspect)), height], **extra,
    }
