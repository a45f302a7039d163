"""Gated conditional PixelCNN colorizer.

The decoder is the Gated PixelCNN of van den Oord et al. 2016 (arXiv 1606.05328): a vertical and a horizontal
stack in the shift/crop formulation (no blind spot), gated activations tanh(f) * sigmoid(g), a residual path on
the horizontal stack and 1x1 skip outputs summed into the head. As in Royer et al.'s probabilistic colorization
(PIC, arXiv 1705.04258) it samples Lab chroma at a quarter of the working resolution, conditioned on a
feed-forward embedding of the luminance: the embedding enters every gated layer twice, as a location-dependent
term (an unmasked 1x1 conv of the conditioning map) and as a global bias (a linear map of its spatial mean).

Output: one categorical over a joint a*b grid (`bins` x `bins` cells over [-ab_range, ab_range)), not two
channel-masked 32-way softmaxes and not a logistic mixture. Chroma is only two numbers per pixel and strongly
correlated (hue), so the joint grid models the pair exactly; "b sees a" is then implicit and there is no
channel mask: one sampling step per pixel instead of two, which halves the sequential work of sampling. A
categorical is also multi-modal by construction (a sky pixel is blue or orange, never the grey average a
unimodal fit prefers), and temperature scaling of logits is trivial. The masks are therefore spatial only:
mask A (the first layer's horizontal conv reads the input shifted one pixel right, so it excludes the current
pixel) and mask B (later layers include the current position of the previous layer).

Sampling has two paths that draw the same samples from the same uniforms: `sample_reference` (one full forward
per pixel, for tests) and `sample` (Fast PixelCNN style, Ramachandran et al. 2017: per-layer caches of the
vertical stack rows and of the horizontal stack inputs of the current row, so a new pixel costs a few small
matrix products per layer and a finished row one row-high conv per layer).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F



@dataclass
class PixelCNNConfig:
    channels: int = 64  # p: gated layers emit 2p pre-activations
    layers: int = 8
    kernel: int = 5  # n: vertical n/2+1 x n, horizontal 1 x n/2+1
    cond_channels: int = 64
    embed_channels: int = 48
    downsample: int = 4  # chroma is sampled at 1/downsample of the working resolution (2 stride-2 convs)
    bins: int = 16  # per chroma axis; the categorical has bins**2 classes
    input_embed: int = 16  # the decoder reads earlier pixels as a learned embedding of their bin
    ab_range: float = 112.0  # a, b in [-ab_range, ab_range) are quantised; outside is clipped
    work_size: int = 128  # long side of the working image the embedding sees

    @classmethod
    def from_dict(cls, d: dict) -> "PixelCNNConfig":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


def gate(x: torch.Tensor) -> torch.Tensor:
    f, g = x.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class GatedLayer(nn.Module):
    def __init__(self, in_channels: int, channels: int, kernel: int, cond_channels: int, first: bool):
        super().__init__()
        k2 = kernel // 2
        self.first = first  # mask A: the horizontal conv reads the input shifted right by one pixel
        self.k2 = k2
        self.v_conv = nn.Conv2d(in_channels, 2 * channels, (k2 + 1, kernel))  # rows i-k2..i, cols j-k2..j+k2
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_conv = nn.Conv2d(in_channels, 2 * channels, (1, k2 + 1))  # cols j-k2..j of its (shifted) input
        self.h_out = nn.Conv2d(channels, channels, 1)
        self.skip = nn.Conv2d(channels, channels, 1)
        self.cond = nn.Conv2d(cond_channels, 4 * channels, 1)  # location-dependent: [v 2p | h 2p]
        self.glob = nn.Linear(cond_channels, 4 * channels)  # global bias: [v 2p | h 2p]

    def conditioning(self, cond: torch.Tensor, glob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position additive terms for the vertical and horizontal pre-activations, (B, 2p, h, w) each."""
        c = self.cond(cond) + self.glob(glob)[:, :, None, None]
        return c.chunk(2, dim=1)

    def forward(self, v, h, cond_v, cond_h):
        H, W = v.shape[-2:]
        k2 = self.k2
        v_pre = self.v_conv(F.pad(v, (k2, k2, k2, 0)))  # (B, 2p, H, W): row i sees input rows <= i
        # Shift down one row: the horizontal stack at row i may only see rows < i through the vertical stack.
        vh = F.pad(self.v_to_h(v_pre), (0, 0, 1, 0))[:, :, :H]
        h_in = F.pad(h, (1, 0))[..., :W] if self.first else h
        h_pre = self.h_conv(F.pad(h_in, (k2, 0))) + vh + cond_h
        g = gate(h_pre)
        h_next = self.h_out(g) if self.first else h + self.h_out(g)
        return gate(v_pre + cond_v), h_next, self.skip(g)


class PixelCNNColorizer(nn.Module):
    def __init__(self, config: PixelCNNConfig):
        super().__init__()
        self.config = c = config
        e = c.embed_channels
        assert c.downsample in (1, 2, 4, 8), "downsample must be a power of two <= 8"
        n_down = int(math.log2(c.downsample))
        # Input (B, 4, H, W): L / 50 - 1, hint a / ab_range, hint b / ab_range, hint mask.
        embed = [nn.Conv2d(4, e, 3, padding=1), nn.ELU()]
        for _ in range(n_down):
            embed += [nn.Conv2d(e, e, 3, stride=2, padding=1), nn.ELU()]
        # Dilated convs widen the context at the chroma resolution (PIC's embedding does the same).
        embed += [nn.Conv2d(e, e, 3, padding=2, dilation=2), nn.ELU()]
        embed += [nn.Conv2d(e, e, 3, padding=4, dilation=4), nn.ELU()]
        embed += [nn.Conv2d(e, c.cond_channels, 3, padding=1)]
        self.embed = nn.Sequential(*embed)
        # PIC's auxiliary feed-forward colorizer: chroma-bin logits straight from the conditioning map. Its loss
        # makes the embedding carry colour; without it a short run learned to copy the left neighbour's colour
        # and let the luminance decide little (green skies). Also the feed-forward baseline in evaluations.
        self.aux = nn.Conv2d(c.cond_channels, c.bins**2, 1)
        # Decoder input (B, E + 1, h, w): an embedding of each earlier pixel's bin and a constant 1 that marks
        # the zero padding as "outside the image". An embedding, not the a, b values: most chroma sits within
        # +-20 of gray, so a scaled (a, b) input differs little between neighbouring bins, and a first model
        # trained on it learned to ignore its context (same NLL with the context zeroed) and sampled noise.
        self.ab_embed = nn.Embedding(c.bins**2, c.input_embed)
        self.layers = nn.ModuleList(
            GatedLayer(c.input_embed + 1 if i == 0 else c.channels, c.channels, c.kernel, c.cond_channels, i == 0)
            for i in range(c.layers)
        )
        self.out1 = nn.Conv2d(c.channels, c.channels, 1)
        self.out2 = nn.Conv2d(c.channels, c.bins**2, 1)

    # -- chroma quantisation ------------------------------------------------------------------------------
    def quantize(self, ab: torch.Tensor) -> torch.Tensor:
        """(B, 2, h, w) Lab chroma -> (B, h, w) joint bin index."""
        c = self.config
        width = 2 * c.ab_range / c.bins
        q = ((ab + c.ab_range) / width).floor().clamp(0, c.bins - 1).long()
        return q[:, 0] * c.bins + q[:, 1]

    def bin_centers(self, index: torch.Tensor) -> torch.Tensor:
        """(B, h, w) joint bin index -> (B, 2, h, w) Lab chroma at the bin centres."""
        c = self.config
        width = 2 * c.ab_range / c.bins
        a = (index // c.bins).float() * width - c.ab_range + width / 2
        b = (index % c.bins).float() * width - c.ab_range + width / 2
        return torch.stack([a, b], dim=1)

    def decoder_input(self, index: torch.Tensor) -> torch.Tensor:
        """(B, h, w) bin indices -> (B, E + 1, h, w)."""
        x = self.ab_embed(index).permute(0, 3, 1, 2)
        return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)

    # -- network --------------------------------------------------------------------------------------------
    def conditioning(self, lum: torch.Tensor, hints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """lum (B, 1, H, W) Lab L in [0, 100]; hints (B, 3, H, W) = hint a, hint b, mask at working resolution.
        Returns the conditioning map (B, C, H/ds, W/ds) and its global vector (B, C)."""
        x = torch.cat([lum / 50.0 - 1.0, hints[:, :2] / self.config.ab_range, hints[:, 2:3]], dim=1)
        cond = self.embed(x)
        return cond, cond.mean(dim=(2, 3))

    def forward(self, index: torch.Tensor, cond: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        """index (B, h, w) chroma bins (only earlier pixels influence a position) -> logits (B, bins**2, h, w)."""
        return self.decode(self.decoder_input(index), cond, glob)

    def decode(self, x: torch.Tensor, cond: torch.Tensor, glob: torch.Tensor) -> torch.Tensor:
        v = h = x
        skip = 0
        for layer in self.layers:
            cv, ch = layer.conditioning(cond, glob)
            v, h, s = layer(v, h, cv, ch)
            skip = skip + s
        return self.out2(F.elu(self.out1(F.elu(skip))))

    # -- sampling -------------------------------------------------------------------------------------------
    def _pick(self, logits: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
        """Inverse-CDF draw from softmax(logits / T) with the given uniforms; T <= 0 is argmax."""
        if temperature <= 0:
            return logits.argmax(dim=1)
        cdf = torch.softmax(logits / temperature, dim=1).cumsum(dim=1)
        return torch.searchsorted(cdf, u[:, None].contiguous()).squeeze(1).clamp_(max=logits.shape[1] - 1)

    @torch.no_grad()
    def sample_reference(self, cond, glob, u, temperature=1.0, fixed=None, fixed_mask=None):
        """Slow path: one full forward per pixel. u (B, h, w) uniforms; fixed (B, h, w) bin indices that are
        kept where fixed_mask (B, h, w) is True. Returns (B, h, w) bin indices."""
        B, (hh, ww) = u.shape[0], cond.shape[-2:]
        index = torch.zeros(B, hh, ww, dtype=torch.long, device=u.device)
        for i in range(hh):
            for j in range(ww):
                logits = self.forward(index, cond, glob)[:, :, i, j]
                pick = self._pick(logits, u[:, i, j], temperature)
                if fixed_mask is not None:
                    pick = torch.where(fixed_mask[:, i, j], fixed[:, i, j], pick)
                index[:, i, j] = pick
        return index

    @torch.no_grad()
    def sample(
        self,
        cond,
        glob,
        u,
        temperature: float = 1.0,
        fixed=None,
        fixed_mask=None,
        on_row: Callable[[int, int], None] | None = None,
    ):
        """Fast path with the same contract as `sample_reference`; on_row(done_rows, rows) runs after each row
        (progress and cancellation). Each step is a handful of tiny matmuls: run it on one intra-op thread
        (engine.pipelines.pixelcnn declares so; the runtime sets it)."""
        return self._sample_cached(cond, glob, u, temperature, fixed, fixed_mask, on_row)

    def _sample_cached(self, cond, glob, u, temperature, fixed, fixed_mask, on_row):
        B, (hh, ww) = u.shape[0], cond.shape[-2:]
        k2 = self.config.kernel // 2
        p = self.config.channels
        dev = u.device
        if cond.shape[0] != B:
            cond, glob = cond.expand(B, -1, -1, -1), glob.expand(B, -1)
        layers = list(self.layers)
        conds = [layer.conditioning(cond, glob) for layer in layers]
        # Weights as matrices: a horizontal window (B, C, k2+1) flattened is one row of a matmul.
        h_w = [layer.h_conv.weight.flatten(1) for layer in layers]
        hs_w = [torch.cat([layer.h_out.weight, layer.skip.weight]).flatten(1) for layer in layers]
        hs_b = [torch.cat([layer.h_out.bias, layer.skip.bias]) for layer in layers]
        vh_w = [layer.v_to_h.weight.flatten(1) for layer in layers]
        # Row caches: each layer's vertical input with the conv's zero padding (k2 rows on top, k2 cols per side).
        in_ch = [self.config.input_embed + 1] + [p] * (len(layers) - 1)
        vbuf = [torch.zeros(B, c, hh + k2, ww + 2 * k2, device=dev) for c in in_ch]
        vbuf[0][:, -1, k2:, k2 : k2 + ww] = 1.0
        # The horizontal stack at row i sees the vertical stack of row i-1 (zero for row 0).
        vh_prev = [torch.zeros(B, 2 * p, ww, device=dev) for _ in layers]
        index = torch.zeros(B, hh, ww, dtype=torch.long, device=dev)
        for i in range(hh):
            # Column caches: the current row's horizontal inputs, left-padded; layer 0 by one more (mask A).
            hbuf = [torch.zeros(B, in_ch[0], ww + k2 + 1, device=dev)]
            hbuf[0][:, -1, k2 + 1 :] = 1.0
            hbuf += [torch.zeros(B, p, ww + k2, device=dev) for _ in layers[1:]]
            hbuf.append(torch.zeros(B, p, ww + k2, device=dev))  # output of the last layer, unused but uniform
            ch_rows = [ch[:, :, i] for _, ch in conds]  # (B, 2p, w)
            for j in range(ww):
                skip = 0
                for n, layer in enumerate(layers):
                    window = hbuf[n][:, :, j : j + k2 + 1].flatten(1)
                    pre = torch.addmm(layer.h_conv.bias, window, h_w[n].t()) + vh_prev[n][:, :, j] + ch_rows[n][:, :, j]
                    out = torch.addmm(hs_b[n], gate(pre), hs_w[n].t())
                    h_new, s = out[:, :p], out[:, p:]
                    if n > 0:
                        h_new = h_new + hbuf[n][:, :, j + k2]
                    hbuf[n + 1][:, :, j + k2] = h_new
                    skip = skip + s
                logits = F.linear(F.elu(F.linear(F.elu(skip), self.out1.weight.flatten(1), self.out1.bias)),
                                  self.out2.weight.flatten(1), self.out2.bias)
                pick = self._pick(logits, u[:, i, j], temperature)
                if fixed_mask is not None:
                    pick = torch.where(fixed_mask[:, i, j], fixed[:, i, j], pick)
                index[:, i, j] = pick
                x = self.decoder_input(pick[:, None, None])[:, :, 0, 0]
                hbuf[0][:, :, j + k2 + 1] = x
                vbuf[0][:, :, i + k2, j + k2] = x
            # Row i is final: advance the vertical stack by one row in every layer.
            for n, layer in enumerate(layers):
                v_pre = F.conv2d(vbuf[n][:, :, i : i + k2 + 1], layer.v_conv.weight, layer.v_conv.bias)[:, :, 0]
                vh_prev[n] = torch.baddbmm(layer.v_to_h.bias[None, :, None], vh_w[n].expand(B, -1, -1), v_pre)
                if n + 1 < len(layers):
                    vbuf[n + 1][:, :, i + k2, k2 : k2 + ww] = gate(v_pre + conds[n][0][:, :, i])
            if on_row is not None:
                on_row(i + 1, hh)
        return index
