"""VQGAN tokenizers (Esser et al., taming-transformers) as used by ASSET (Liu et al. 2022).

Attribute names are the official checkpoint keys (`encoder.down.0.block.0.norm1.weight`,
`quantize.embedding.weight`, ...), so taming VQGANs (vqgan_imagenet_f16_1024/16384) and the `first_stage_model.` /
`cond_stage_model.` halves of ASSET checkpoints load strictly.

Three variants share these modules:
- the taming image VQGAN (plain encoder);
- ASSET's mask-aware image encoder (`masked_encoder`): every 3x3 conv is a partial conv and every norm a region
  norm, driven by the full-resolution edit mask (1 = edit) that each layer resizes to its own input with nearest
  sampling. Unmasked outputs then never see hole content, so the codes of unmasked tokens do not depend on it;
  the decoder is unchanged;
- the segmentation VQGAN (`n_labels`): one-hot label maps in, per-class logits out, plus the `colorize` buffer
  of taming's VQSegmentationModel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import CheckpointError, InputError


@dataclass
class VQGANConfig:
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # len - 1 downsamplings: f = 16
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)  # levels with attention, named by their size at `resolution`
    resolution: int = 256  # only places attention; any input size divisible by f works
    in_channels: int = 3
    out_ch: int = 3
    z_channels: int = 256
    double_z: bool = False
    dropout: float = 0.0
    n_embed: int = 1024
    embed_dim: int = 256
    beta: float = 0.25
    legacy: bool = True  # VectorQuantizer2's original loss weighting (beta on the codebook term)
    masked_encoder: bool = False  # ASSET: PartialConv + RegionNorm encoder (downsample_legacy: False)
    n_labels: int | None = None  # segmentation VQGAN: number of classes (adds the `colorize` buffer)
    norm_groups: int = 32  # taming's Normalize always uses 32; small demo models use fewer (no key changes)

    def __post_init__(self):
        self.ch_mult = tuple(self.ch_mult)
        self.attn_resolutions = tuple(self.attn_resolutions)

    @property
    def factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ch_mult"], d["attn_resolutions"] = list(self.ch_mult), list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VQGANConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CheckpointError(f"unknown VQGAN config fields: {', '.join(sorted(unknown))}")
        return cls(**d)


def swish(x):
    return x * torch.sigmoid(x)


def _fit(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The edit mask at the size of x, nearest sampling (output (i, j) takes mask pixel (i*s, j*s))."""
    return mask if mask.shape[-2:] == x.shape[-2:] else F.interpolate(mask, size=x.shape[-2:])


class GroupNorm(nn.GroupNorm):
    """taming's Normalize: 32 groups, eps 1e-6. Takes (and ignores) a mask so plain and masked blocks share code."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__(groups, channels, eps=1e-6, affine=True)

    def forward(self, x, mask=None):
        return super().forward(x)


class RegionNorm(GroupNorm):
    """ASSET's RNGroupNorm. Unmasked positions are normalised by statistics of the unmasked region only: each
    group's masked positions are filled with (sum over unmasked pixels) / (number of unmasked pixels), the
    result is group-normalised and scaled by sqrt(n_unmasked / (C/G * H * W)). That fill is C/G times the
    true mean and the scale makes an empty mask give GN(x) / sqrt(C/G): quirks the published weights were
    trained with, kept as they are. Masked positions get the ordinary affine group norm."""

    def forward(self, x, mask=None):
        b, c, h, w = x.shape
        g = self.num_groups
        m = _fit(mask, x)  # B,1,H,W
        keep = (1.0 - m).unsqueeze(1)  # B,1,1,H,W
        xg = x.view(b, g, c // g, h, w)
        n = keep.sum(dim=(2, 3, 4))  # B,1
        fill = ((keep * xg).sum(dim=(2, 3, 4)) / n)[:, :, None, None, None]  # B,G,1,1,1
        filled = keep * xg + (1.0 - keep) * fill
        scale = torch.sqrt(n / (c // g * h * w))[:, :, None, None]
        region = F.group_norm(filled.view(b, c, h, w), g, eps=self.eps) * scale
        region = region * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if not m.any():
            return region * (1.0 - m)
        return region * (1.0 - m) + super().forward(x) * m


class Conv2d(nn.Conv2d):
    def forward(self, x, mask=None):
        return super().forward(x)


class PartialConv2d(nn.Conv2d):
    """ASSET's SpecialConv2d with conv_type PartialConv. Outputs whose 3x3 window touches the hole but which lie
    outside it ("leaked" positions) are computed from the input with the hole zeroed; all others (inside the
    hole too) from the plain input. Stride 2 pads (0, 1, 0, 1) like taming's Downsample."""

    def forward(self, x, mask=None):
        m = _fit(mask, x)
        ones = torch.ones(1, 1, 3, 3, dtype=m.dtype, device=m.device)
        if self.stride[0] == 1:
            touched = F.conv2d(m, ones, padding=self.padding).clamp(0, 1)
            leaked = (touched - m).clamp(0, 1)
            plain, hole_zeroed = x, x * (1.0 - m)
        else:
            pad = (0, 1, 0, 1)
            touched = F.conv2d(F.pad(m, pad), ones, stride=self.stride).clamp(0, 1)
            leaked = (touched - F.interpolate(m, scale_factor=0.5)).clamp(0, 1)
            plain, hole_zeroed = F.pad(x, pad), F.pad(x * (1.0 - m), pad)
        out = super().forward(plain)
        if not leaked.any():  # no edit near here: identical to the blend below, one conv cheaper
            return out
        return out * (1.0 - leaked) + super().forward(hole_zeroed) * leaked


def _conv3(cin: int, cout: int, masked: bool, stride: int = 1) -> nn.Conv2d:
    cls = PartialConv2d if masked else Conv2d
    return cls(cin, cout, kernel_size=3, stride=stride, padding=1 if stride == 1 else 0)


def _norm(channels: int, masked: bool, groups: int = 32) -> GroupNorm:
    return RegionNorm(channels, groups) if masked else GroupNorm(channels, groups)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, masked: bool = False,
                 groups: int = 32):
        super().__init__()
        self.norm1 = _norm(in_channels, masked, groups)
        self.conv1 = _conv3(in_channels, out_channels, masked)
        self.norm2 = _norm(out_channels, masked, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv3(out_channels, out_channels, masked)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)  # 1x1: cannot leak

    def forward(self, x, mask=None):
        h = self.conv1(swish(self.norm1(x, mask)), mask)
        h = self.conv2(self.dropout(swish(self.norm2(h, mask))), mask)
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 q/k/v/proj_out convs. In the masked encoder, keys inside the
    hole are hidden from queries outside it (queries inside the hole still see every key)."""

    def __init__(self, channels: int, masked: bool = False, groups: int = 32):
        super().__init__()
        self.masked = masked
        self.norm = _norm(channels, masked, groups)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x, mask=None):
        b, c, h, w = x.shape
        hn = self.norm(x, mask)
        q = self.q(hn).reshape(b, c, h * w).transpose(1, 2)  # B,HW,C
        k = self.k(hn).reshape(b, c, h * w)  # B,C,HW
        v = self.v(hn).reshape(b, c, h * w)
        scores = torch.bmm(q, k) * c ** -0.5  # B,HW(query),HW(key)
        if self.masked and mask is not None:
            hole = (_fit(mask, x) != 0).reshape(b, 1, h * w)
            hidden = hole & ~hole.transpose(1, 2)  # key in the hole, query outside it
            scores = scores.masked_fill(hidden, float("-inf"))
        attn = scores.softmax(dim=2)
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv with taming's asymmetric (0, 1, 0, 1) zero padding."""

    def __init__(self, channels: int, masked: bool = False):
        super().__init__()
        self.conv = (PartialConv2d if masked else Conv2d)(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x, mask=None):
        if mask is None:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return self.conv(x, mask)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        masked, groups = cfg.masked_encoder, cfg.norm_groups
        self.conv_in = _conv3(cfg.in_channels, cfg.ch, masked)
        res, mult_in = cfg.resolution, (1,) + cfg.ch_mult
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.ch_mult):
            down = nn.Module()
            down.block, down.attn = nn.ModuleList(), nn.ModuleList()
            block_in = cfg.ch * mult_in[level]
            for _ in range(cfg.num_res_blocks):
                down.block.append(ResnetBlock(block_in, cfg.ch * mult, cfg.dropout, masked, groups))
                block_in = cfg.ch * mult
                if res in cfg.attn_resolutions:
                    down.attn.append(AttnBlock(block_in, masked, groups))
            if level != len(cfg.ch_mult) - 1:
                down.downsample = Downsample(block_in, masked)
                res //= 2
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, cfg.dropout, masked, groups)
        self.mid.attn_1 = AttnBlock(block_in, masked, groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, cfg.dropout, masked, groups)
        self.norm_out = _norm(block_in, masked, groups)
        self.conv_out = _conv3(block_in, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, masked)

    def forward(self, x, mask=None):
        return self.features(self.conv_in(x, mask), mask)

    def features(self, h, mask=None):
        """Everything after conv_in."""
        for down in self.down:
            for i, block in enumerate(down.block):
                h = block(h, mask)
                if len(down.attn):
                    h = down.attn[i](h, mask)
            if hasattr(down, "downsample"):
                h = down.downsample(h, mask)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, mask), mask), mask)
        return self.conv_out(swish(self.norm_out(h, mask)), mask)


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        block_in, groups = cfg.ch * cfg.ch_mult[-1], cfg.norm_groups
        res = cfg.resolution // cfg.factor
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, kernel_size=3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, cfg.dropout, groups=groups)
        self.mid.attn_1 = AttnBlock(block_in, groups=groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, cfg.dropout, groups=groups)
        ups = []
        for level in reversed(range(len(cfg.ch_mult))):
            up = nn.Module()
            up.block, up.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                up.block.append(ResnetBlock(block_in, cfg.ch * cfg.ch_mult[level], cfg.dropout, groups=groups))
                block_in = cfg.ch * cfg.ch_mult[level]
                if res in cfg.attn_resolutions:
                    up.attn.append(AttnBlock(block_in, groups=groups))
            if level != 0:
                up.upsample = Upsample(block_in)
                res *= 2
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)  # up[0] is the full-resolution level, as in taming
        self.norm_out = GroupNorm(block_in, groups)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, kernel_size=3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for up in reversed(self.up):
            for i, block in enumerate(up.block):
                h = block(h)
                if len(up.attn):
                    h = up.attn[i](h)
            if hasattr(up, "upsample"):
                h = up.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class VectorQuantizer2(nn.Module):
    """Nearest-codebook-entry quantiser with a straight-through gradient. `legacy` keeps taming's original loss,
    which puts beta on the codebook term instead of the commitment term; the lookup is the same either way.
    (taming's `remap` of indices to a used subset is not supported.)"""

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25, legacy: bool = True):
        super().__init__()
        self.n_e, self.e_dim, self.beta, self.legacy = n_e, e_dim, beta, legacy
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Indices (B,H,W) of the nearest codebook rows to z (B,C,H,W): argmin |z|^2 + |e|^2 - 2 z.e."""
        b, c, h, w = z.shape
        zf = z.permute(0, 2, 3, 1).reshape(-1, c)
        e = self.embedding.weight
        d = zf.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * zf @ e.t()
        return d.argmin(1).view(b, h, w)

    def forward(self, z):
        indices = self.codes(z)
        zq = self.embedding(indices).permute(0, 3, 1, 2)
        if self.legacy:
            loss = F.mse_loss(zq.detach(), z) + self.beta * F.mse_loss(zq, z.detach())
        else:
            loss = self.beta * F.mse_loss(zq.detach(), z) + F.mse_loss(zq, z.detach())
        zq = z + (zq - z).detach()
        return zq.contiguous(), loss, indices

    def get_codebook_entry(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook rows for indices (B,H,W), as (B,C,H,W)."""
        return self.embedding(indices).permute(0, 3, 1, 2).contiguous()


class VQGAN(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer2(cfg.n_embed, cfg.embed_dim, cfg.beta, cfg.legacy)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        if cfg.n_labels is not None:
            # taming draws it with randn for log images only; kept so official keys load strictly
            self.register_buffer("colorize", torch.randn(3, cfg.n_labels, 1, 1))

    def _check(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        f = self.config.factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise InputError(f"image size {x.shape[-1]}x{x.shape[-2]} is not a multiple of {f}")
        if not self.config.masked_encoder:
            return None
        if mask is None:
            return x.new_zeros(x.shape[0], 1, *x.shape[-2:])
        mask = mask.to(x.dtype)
        if mask.dim() == 3:
            mask = mask[:, None]
        # Every level keeps a subset of the pixels of the finer ones, so this catches an empty region anywhere.
        coarsest = F.interpolate(mask, size=(x.shape[-2] // f, x.shape[-1] // f))
        if bool((coarsest.flatten(1) != 0).all(1).any()):
            raise InputError("the edit covers the whole image: the tokenizer needs some unedited area")
        return mask

    def encode_z(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Continuous latents before quantisation (B, embed_dim, H/f, W/f). `mask` (B,1,H,W) or (B,H,W), 1 = edit,
        is used only by the masked encoder; None there means no edit."""
        return self.quant_conv(self.encoder(x, self._check(x, mask)))

    @torch.no_grad()
    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(quant (B,C,h,w), indices (B,h,w)) for images x in [-1, 1] (or one-hot maps for the seg VQGAN)."""
        quant, _, indices = self.quantize(self.encode_z(x, mask))
        return quant, indices

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))

    @torch.no_grad()
    def decode_code(self, indices: torch.Tensor, shape: tuple[int, int, int] | None = None) -> torch.Tensor:
        """Decode codes (B,h,w), or flat codes with shape=(B,h,w)."""
        if shape is not None:
            indices = indices.reshape(shape)
        return self.decode(self.quantize.get_codebook_entry(indices))

    def _train_path(self, z: torch.Tensor, quantize: bool):
        if not quantize:  # the continuous autoencoder of a training warm-up: no codes yet
            return self.decode(z), z.new_zeros(()), None
        quant, qloss, indices = self.quantize(z)
        return self.decode(quant), qloss, indices

    def forward(self, x, mask=None, quantize: bool = True):
        """(reconstruction, quantiser loss, indices); the training path."""
        return self._train_path(self.encode_z(x, mask), quantize)

    # Segmentation VQGAN helpers: label maps (B,H,W) of 0-based class ids.

    def label_conv_in(self, labels: torch.Tensor) -> torch.Tensor:
        """encoder.conv_in of the one-hot map of `labels` (B,H,W), computed as nine table lookups: equal to the
        convolution up to summation order, without building the (B, n_labels, H, W) one-hot tensor."""
        conv = self.encoder.conv_in
        _, h, w = labels.shape
        taps = F.pad(conv.weight.permute(2, 3, 1, 0), (0, 0, 1, 0))  # 3,3,n_labels+1,C; row 0 = outside
        padded = F.pad(labels.long() + 1, (1, 1, 1, 1))
        out = conv.bias
        for ky in range(3):
            for kx in range(3):
                out = out + F.embedding(padded[:, ky:ky + h, kx:kx + w], taps[ky, kx])
        return out.permute(0, 3, 1, 2).contiguous()

    def _check_labels(self, labels: torch.Tensor) -> None:
        n = self.config.n_labels
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < n:
            raise InputError(f"label ids {int(labels.min())}..{int(labels.max())} are outside this model's {n} classes")
        f = self.config.factor
        if labels.shape[-1] % f or labels.shape[-2] % f:
            raise InputError(f"label map size {labels.shape[-1]}x{labels.shape[-2]} is not a multiple of {f}")

    def forward_labels(self, labels: torch.Tensor, quantize: bool = True):
        """(class logits (B,n_labels,H,W), quantiser loss, indices) for label maps; the training path."""
        self._check_labels(labels)
        return self._train_path(self.quant_conv(self.encoder.features(self.label_conv_in(labels))), quantize)

    def one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        self._check_labels(labels)
        n = self.config.n_labels
        return F.one_hot(labels.long(), n).permute(0, 3, 1, 2).to(self.quant_conv.weight.dtype)

    @torch.no_grad()
    def encode_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Codes (B,h,w) of label maps (B,H,W) of 0-based class ids."""
        self._check_labels(labels)
        return self.quantize.codes(self.quant_conv(self.encoder.features(self.label_conv_in(labels))))

    @torch.no_grad()
    def decode_labels(self, indices: torch.Tensor) -> torch.Tensor:
        """Label maps (B,H,W) decoded from codes (B,h,w) (argmax over class logits)."""
        return self.decode_code(indices).argmax(1)


# ----------------------------------------------------------------------------------------------------------
# Architecture from official checkpoints


def config_from_state_dict(sd: dict[str, torch.Tensor], **overrides) -> VQGANConfig:
    """The architecture of a taming/ASSET VQGAN state dict (no prefix), read from its tensor shapes.
    Attention levels are named for resolution 256 as in every official config."""
    try:
        ch, in_channels = sd["encoder.conv_in.weight"].shape[:2]
        levels = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.down.")})
        ch_mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in levels)
        num_res_blocks = len({k.split(".")[4] for k in sd if k.startswith("encoder.down.0.block.")})
        attn = tuple(256 // 2 ** i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in sd)
        z_channels = sd["decoder.conv_in.weight"].shape[1]
        n_embed, embed_dim = sd["quantize.embedding.weight"].shape
        out_ch = sd["decoder.conv_out.weight"].shape[0]
        double_z = sd["encoder.conv_out.weight"].shape[0] == 2 * z_channels
    except KeyError as missing:
        raise CheckpointError(f"not a VQGAN state dict: no {missing}") from None
    if "quantize.used" in sd:
        raise CheckpointError("this VQGAN remaps its codes to a used subset (taming `remap`), which is not supported")
    n_labels = sd["colorize"].shape[1] if "colorize" in sd else None
    cfg = dict(ch=int(ch), ch_mult=ch_mult, num_res_blocks=num_res_blocks, attn_resolutions=attn,
               in_channels=int(in_channels), out_ch=int(out_ch), z_channels=int(z_channels), double_z=bool(double_z),
               n_embed=int(n_embed), embed_dim=int(embed_dim), n_labels=None if n_labels is None else int(n_labels))
    cfg.update(overrides)
    return VQGANConfig(**cfg)


def vqgan_params(model: VQGAN) -> int:
    return sum(p.numel() for p in model.parameters())
