"""ColTran, the Colorization Transformer (Kumar, Weissenborn, Kalchbrenner, ICLR 2021), as the official TF2 code
builds it, so that its checkpoints convert tensor for tensor (engine/importers/coltran_tf.py).

Three stages: `ColTranCore` samples a 64x64 coarse colouring (512 symbols = 3 bits per RGB channel) pixel by pixel
with an axial transformer conditioned on the grayscale image; `ColorUpsampler` turns it into 8-bit colour at 64x64;
`SpatialUpsampler` brings that to 256x256. Both upsamplers are parallel and deterministic (argmax).

Faithful to the code, not the paper figure: activations are channels-last (B, H, W, D) so every Keras Dense is a
Linear on the last axis; blocks are post-LN, x = norm(x + sublayer(x)); LayerNorm epsilon is Keras' 1e-3; the
attention adds a learned relative position bias and masks the future with -1e6 (the current position stays
visible); conditioning splits its projections in three different orders (attention: per head scale|shift; MLP:
shift|scale; layer norm: scale|shift).

Sampling. `ColTranCore.sample_reference` recomputes like the official sampler: the outer decoder over the whole
canvas once per row, the inner decoder over the whole row once per pixel. `ColTranCore.sample` is the exact
incremental decoder: per-layer key/value caches for the causal column attention (outer) and the causal row
attention (inner), and every context projection computed once per row, so a pixel costs one pass of the inner
layers on a single position and a row one pass of the outer layers on a single row. Both give identical samples
for the same generator (tests/test_coltran.py).

Sampling-time quirk of the reference: while sampling, the inner decoder's conditional layer norms get only the
current row of the grayscale context, and their learned spatial average (1, H, W, 1) broadcasts over it, so the
context is mean_ij w[i, j] z[r, j] instead of the training-time mean_ij w[i, j] z[i, j]. `row_context_quirk=True`
(the default) reproduces it; False uses the training-time context. The released weights were only ever judged with
the quirk, so imports keep it; our small demo colorizer suffers from it (on the held-out photos one sample scores
below the gray photo with it and above without it: issue 20's note), so the folders we train turn it off.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from engine.precision import with_prepared_linears

NUM_SYMBOLS = 512  # 8 levels of each of R, G, B
LN_EPS = 1e-3  # Keras LayerNormalization default


# ----------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class CoreConfig:
    hidden_size: int = 512
    ff_size: int = 512
    num_heads: int = 4
    num_encoder_layers: int = 4
    num_outer_layers: int = 2
    num_inner_layers: int = 2
    resolution: tuple[int, int] = (64, 64)


@dataclass
class UpsamplerConfig:
    hidden_size: int = 512
    ff_size: int = 512
    num_heads: int = 4
    num_encoder_layers: int = 4  # 4 for the colour upsampler, 3 for the spatial one
    resolution: tuple[int, int] = (64, 64)  # (256, 256) for the spatial upsampler


@dataclass
class ColTranConfig:
    core: CoreConfig = field(default_factory=CoreConfig)
    color_upsampler: UpsamplerConfig = field(default_factory=UpsamplerConfig)
    spatial_upsampler: UpsamplerConfig = field(
        default_factory=lambda: UpsamplerConfig(num_encoder_layers=3, resolution=(256, 256)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "ColTranConfig":
        def up(part):
            return UpsamplerConfig(**{**part, "resolution": tuple(part["resolution"])})

        return cls(CoreConfig(**{**raw["core"], "resolution": tuple(raw["core"]["resolution"])}),
                   up(raw["color_upsampler"]), up(raw["spatial_upsampler"]))


# ----------------------------------------------------------------------------------------------------------------
# Building blocks (coltran/models/layers.py)


class PositionEmbed(nn.Module):
    """Two additive tables, broadcast: rows [H, 1, D] and columns [W, D]."""

    def __init__(self, height: int, width: int, dim: int):
        super().__init__()
        self.position_embedding_0 = nn.Parameter(torch.randn(height, 1, dim) * dim**-0.5)
        self.position_embedding_1 = nn.Parameter(torch.randn(width, dim) * dim**-0.5)

    def table(self) -> torch.Tensor:  # (H, W, D)
        return self.position_embedding_0 + self.position_embedding_1

    def forward(self, x, offset: tuple[int, int] = (0, 0)):
        """`offset` places a crop of the full grid (training the 256x256 spatial upsampler on crops)."""
        top, left = offset
        return x + self.table()[top: top + x.shape[-3], left: left + x.shape[-2]]


def relative_bias(weight: torch.Tensor, length: int) -> torch.Tensor:
    """(heads, 2L) learned weights -> (heads, L, L) bias with bias[h, i, j] = weight[h, L - 1 + j - i]."""
    offsets = torch.arange(length, device=weight.device)
    index = (length - 1) + offsets[None, :] - offsets[:, None]
    return weight[:, index]


class AxialAttention(nn.Module):
    """SelfAttentionND along one axis: rows (attend across the width) or columns (across the height).

    q/k/v/output are the DenseND kernels [D, heads, D/heads] and [heads, D/heads, D] flattened head-major.
    cond_q/k/v project a context to per-head (scale | shift) pairs that modulate q, k and v.
    """

    def __init__(self, dim: int, heads: int, axis: str, length: int, causal: bool = False,
                 context_dim: int | None = None):
        super().__init__()
        assert axis in ("row", "column")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.axis, self.length, self.causal = axis, length, causal
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.output = nn.Linear(dim, dim, bias=False)
        # the official weight is named after the attended axis of nd_block_size [1, W] (1) or [H, 1] (0)
        bias = nn.Parameter(torch.zeros(heads, 2 * length))
        setattr(self, "relative_attention_bias_1" if axis == "row" else "relative_attention_bias_0", bias)
        self.conditional = context_dim is not None
        if self.conditional:
            self.cond_q = nn.Linear(context_dim, 2 * dim, bias=False)
            self.cond_k = nn.Linear(context_dim, 2 * dim, bias=False)
            self.cond_v = nn.Linear(context_dim, 2 * dim, bias=False)

    @property
    def bias_weight(self) -> nn.Parameter:
        return self.relative_attention_bias_1 if self.axis == "row" else self.relative_attention_bias_0

    def attention_bias(self) -> torch.Tensor:
        """(heads, L, L): relative position bias, plus -1e6 on keys after the query when causal."""
        bias = relative_bias(self.bias_weight, self.length)
        if self.causal:
            future = torch.ones(self.length, self.length, dtype=torch.bool, device=bias.device).triu(1)
            bias = bias + future * -1e6
        return bias

    def _split(self, x):  # (..., D) -> (..., heads, head_dim)
        return x.unflatten(-1, (self.heads, self.head_dim))

    def _modulate(self, x, layer, context):
        """x (..., heads, hd); scale|shift per head from the context (cond_scale=True, identity activation)."""
        scale, shift = layer(context).unflatten(-1, (self.heads, 2 * self.head_dim)).chunk(2, dim=-1)
        return x * scale + shift

    def project(self, x, context=None):
        """q (scaled by hd^-0.5 after conditioning, as the reference), k, v: each (..., heads, hd)."""
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        if self.conditional:
            q = self._modulate(q, self.cond_q, context)
            k = self._modulate(k, self.cond_k, context)
            v = self._modulate(v, self.cond_v, context)
        return q * self.head_dim**-0.5, k, v

    def forward(self, x, context=None):
        """x (B, H, W, D) -> (B, H, W, D), attending along this module's axis."""
        q, k, v = self.project(x, context)  # (B, H, W, heads, hd)
        if self.axis == "row":  # sequences are rows: (B, H, heads, W, hd)
            q, k, v = (t.permute(0, 1, 3, 2, 4) for t in (q, k, v))
        else:  # sequences are columns: (B, W, heads, H, hd)
            q, k, v = (t.permute(0, 2, 3, 1, 4) for t in (q, k, v))
        bias = self.attention_bias()[:, : q.shape[-2], : k.shape[-2]]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)
        out = out.permute(0, 1, 3, 2, 4) if self.axis == "row" else out.permute(0, 3, 1, 2, 4)
        return self.output(out.flatten(-2))

    def attend_one(self, q, k_cache, v_cache, position: int):
        """One query at `position` against cached keys/values 0..position (causal, so nothing later exists).

        q (N, heads, hd); k_cache, v_cache (N, heads, position + 1, hd) -> (N, D).
        """
        bias = self.bias_weight[:, self.length - 1 - position: self.length]  # offsets j - position, j <= position
        out = F.scaled_dot_product_attention(q.unsqueeze(-2), k_cache, v_cache,
                                             attn_mask=bias[:, None, :].to(q.dtype), scale=1.0)
        return self.output(out.squeeze(-2).flatten(-2))


class FeedForward(nn.Module):
    """Keras Sequential([Dense(ff, relu), Dense(D)])."""

    def __init__(self, dim: int, ff_size: int):
        super().__init__()
        self.dense_in = nn.Linear(dim, ff_size)
        self.dense_out = nn.Linear(ff_size, dim)

    def forward(self, x):
        return self.dense_out(F.relu(self.dense_in(x)))


class ConditionalLayerNorm(nn.Module):
    """LayerNorm (fixed gamma 1, beta 0, named `normalize`) whose scale and shift come from the context:
    learned spatial weights, mean over H and W, then Dense(2D) split into (scale, shift); one pair per image."""

    def __init__(self, height: int, width: int, dim: int, context_dim: int):
        super().__init__()
        self.normalize = nn.LayerNorm(dim, eps=LN_EPS)
        self.normalize.requires_grad_(False)  # non-trainable in the reference
        self.spatial_average = nn.Parameter(torch.ones(1, height, width, 1))
        self.channel_dense = nn.Linear(context_dim, 2 * dim)

    def scale_shift(self, context):
        """context (B, H, W, C), or one row (B, 1, W, C) which broadcasts as in the reference sampler."""
        pooled = (self.spatial_average * context).mean(dim=(1, 2), keepdim=True)
        return self.channel_dense(pooled).chunk(2, dim=-1)  # each (B, 1, 1, D)

    def forward(self, x, context=None, scale_shift=None):
        scale, shift = scale_shift if scale_shift is not None else self.scale_shift(context)
        return self.normalize(x) * scale + shift


def affine(x, layer, context):
    """Conditional MLP (cond_mlp='affine'): Dense(2D) on the context split into (shift, scale)."""
    shift, scale = layer(context).chunk(2, dim=-1)
    return x * scale + shift


class FactorizedAttention(nn.Module):
    """Unconditional axial encoder: per layer [row attention, FF, column attention, FF], each post-LN."""

    def __init__(self, height: int, width: int, dim: int, ff_size: int, heads: int, num_layers: int):
        super().__init__()
        self.pos_embed = PositionEmbed(height, width, dim)
        layers = []
        for _ in range(num_layers):
            layers += [AxialAttention(dim, heads, "row", width), FeedForward(dim, ff_size),
                       AxialAttention(dim, heads, "column", height), FeedForward(dim, ff_size)]
        self.residual_layers = nn.ModuleList(layers)
        self.layer_norms = nn.ModuleList(nn.LayerNorm(dim, eps=LN_EPS) for _ in layers)

    def forward(self, x, offset: tuple[int, int] = (0, 0)):
        x = self.pos_embed(x, offset)
        for layer, norm in zip(self.residual_layers, self.layer_norms):
            x = norm(x + layer(x))
        return x


# ----------------------------------------------------------------------------------------------------------------
# The colorizer (coltran/models/core.py, colorizer.py)


class GrayScaleEncoder(nn.Module):
    def __init__(self, config: CoreConfig):
        super().__init__()
        height, width = config.resolution
        self.embedding = nn.Linear(256, config.hidden_size)  # one-hot gray -> Dense with bias
        self.encoder = FactorizedAttention(height, width, config.hidden_size, config.ff_size, config.num_heads,
                                           config.num_encoder_layers)

    def forward(self, gray):  # (B, H, W) int 0..255 -> z (B, H, W, D)
        return self.encoder(self.embedding.weight.t()[gray] + self.embedding.bias)


class OuterDecoder(nn.Module):
    """Row attention + causal column attention over the colour embeddings, conditioned on z, then shift down:
    row r of the output summarises rows < r."""

    def __init__(self, config: CoreConfig):
        super().__init__()
        height, width = config.resolution
        dim, heads = config.hidden_size, config.num_heads
        self.num_layers = config.num_outer_layers
        self.pos_embed = PositionEmbed(height, width, dim)
        for i in range(self.num_layers):
            setattr(self, f"unmask_row_att_{i}", AxialAttention(dim, heads, "row", width, context_dim=dim))
            setattr(self, f"row_dense_{i}", FeedForward(dim, config.ff_size))
            setattr(self, f"mask_col_att_{i}",
                    AxialAttention(dim, heads, "column", height, causal=True, context_dim=dim))
            setattr(self, f"col_dense_{i}", FeedForward(dim, config.ff_size))
            setattr(self, f"affine_r_{i}", nn.Linear(dim, 2 * dim))
            setattr(self, f"affine_c_{i}", nn.Linear(dim, 2 * dim))
        self.layer_norms = nn.ModuleList(
            ConditionalLayerNorm(height, width, dim, dim) for _ in range(4 * self.num_layers))

    def layer(self, i):
        return (getattr(self, f"unmask_row_att_{i}"), getattr(self, f"row_dense_{i}"), getattr(self, f"affine_r_{i}"),
                getattr(self, f"mask_col_att_{i}"), getattr(self, f"col_dense_{i}"), getattr(self, f"affine_c_{i}"))

    def forward(self, embeddings, z):
        x = self.pos_embed(embeddings) + z
        for i in range(self.num_layers):
            row_att, row_ff, affine_r, col_att, col_ff, affine_c = self.layer(i)
            norms = self.layer_norms[4 * i: 4 * i + 4]
            x = norms[0](x + row_att(x, z), z)
            x = norms[1](x + affine(row_ff(x), affine_r, z), z)
            x = norms[2](x + col_att(x, z), z)
            x = norms[3](x + affine(col_ff(x), affine_c, z), z)
        return F.pad(x, (0, 0, 0, 0, 1, 0))[:, :-1]  # shift down


class InnerDecoder(nn.Module):
    """Causal row attention over the colour embeddings shifted right, conditioned on z and the outer context."""

    def __init__(self, config: CoreConfig):
        super().__init__()
        height, width = config.resolution
        dim, heads = config.hidden_size, config.num_heads
        self.num_layers = config.num_inner_layers
        self.pos_embed = PositionEmbed(height, width, dim)
        for i in range(self.num_layers):
            setattr(self, f"mask_row_att_{i}",
                    AxialAttention(dim, heads, "row", width, causal=True, context_dim=2 * dim))
            setattr(self, f"dense_{i}", FeedForward(dim, config.ff_size))
            setattr(self, f"affine_c_{i}", nn.Linear(2 * dim, 2 * dim))
        # context z only: the outer context through the spatial average would leak later pixels
        self.layer_norms = nn.ModuleList(
            ConditionalLayerNorm(height, width, dim, dim) for _ in range(2 * self.num_layers))

    def layer(self, i):
        return getattr(self, f"mask_row_att_{i}"), getattr(self, f"dense_{i}"), getattr(self, f"affine_c_{i}")

    def forward(self, embeddings, upper, z, row: int | None = None, norm_context=None):
        """Training: embeddings, upper, z all (B, H, W, D). Reference sampling: one row each (B, 1, W, D) and
        `row` selects the positional embedding; `norm_context` overrides the layer norms' context."""
        shifted = F.pad(embeddings, (0, 0, 1, 0))[:, :, :-1]  # shift right
        table = self.pos_embed.table()
        x = shifted + (table if row is None else table[row: row + 1]) + z + upper
        all_context = torch.cat((z, upper), dim=-1)
        norm_context = z if norm_context is None else norm_context
        for i in range(self.num_layers):
            att, ff, affine_c = self.layer(i)
            x = self.layer_norms[2 * i](x + att(x, all_context), norm_context)
            x = self.layer_norms[2 * i + 1](x + affine(ff(x), affine_c, all_context), norm_context)
        return x


class ColTranCore(nn.Module):
    """The autoregressive colorizer, stage 'encoder_decoder' (with the parallel head)."""

    def __init__(self, config: CoreConfig):
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.encoder = GrayScaleEncoder(config)
        self.parallel_logits = nn.Linear(dim, NUM_SYMBOLS, bias=False)
        self.pixel_embed_layer = nn.Linear(NUM_SYMBOLS, dim, bias=False)  # one-hot symbol -> embedding
        self.outer_decoder = OuterDecoder(config)
        self.inner_decoder = InnerDecoder(config)
        self.final_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.auto_logits = nn.Linear(dim, NUM_SYMBOLS)

    def embed(self, symbols):  # (...) int -> (..., D)
        return self.pixel_embed_layer.weight.t()[symbols]

    def forward(self, gray, symbols):
        """Teacher forcing. gray, symbols (B, H, W) -> (autoregressive logits, parallel logits), (B, H, W, 512)."""
        z = self.encoder(gray)
        embeddings = self.embed(symbols)
        upper = self.outer_decoder(embeddings, z)
        inner = self.inner_decoder(embeddings, upper, z)
        return self.auto_logits(self.final_norm(inner)), self.parallel_logits(z)

    def parallel_preview(self, gray, encoded=None):
        """The one-shot colouring of the auxiliary head: argmax symbols (B, H, W); `encoded` as in `sample`."""
        return self.parallel_logits(self.encoder(gray) if encoded is None else encoded).argmax(-1)

    # -- sampling ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_reference(self, gray, *, uniforms=None, mode="sample", temperature=1.0, constraints=None,
                         row_context_quirk=True, on_row=None, rows=None, encoded=None):
        """The official procedure: the outer decoder over the whole canvas once per row, the inner decoder over
        the whole row once per pixel. Slow; kept as the oracle for `sample`. Arguments as `sample`."""
        z = self.encoder(gray) if encoded is None else encoded
        batch, height, width, dim = z.shape
        canvas = torch.zeros_like(z)
        upper = torch.zeros_like(z)
        symbols = torch.zeros(batch, height, width, dtype=torch.long, device=z.device)
        for r in range(rows or height):  # `rows` < height: only the first rows (benchmarks)
            row_cache = torch.zeros(batch, 1, width, dim, dtype=z.dtype, device=z.device)
            z_row, upper_row = z[:, r: r + 1], upper[:, r: r + 1]
            for c in range(width):
                inner = self.inner_decoder(row_cache, upper_row, z_row, row=r,
                                           norm_context=z_row if row_context_quirk else z)
                logits = self.auto_logits(self.final_norm(inner[:, 0, c]))
                chosen = choose(logits, mode, temperature, _uniform(uniforms, r, c), _constraint(constraints, r, c))
                symbols[:, r, c] = chosen
                embedding = self.embed(chosen)
                row_cache[:, 0, c] = embedding
                canvas[:, r, c] = embedding
            upper = self.outer_decoder(canvas, z)
            if on_row:
                on_row(r + 1, height)
        return symbols

    @torch.no_grad()
    def sample(self, gray, *, uniforms=None, mode="sample", temperature=1.0, constraints=None,
               row_context_quirk=True, on_row=None, rows=None, encoded=None):
        """Exact incremental decoding; the same symbols as `sample_reference` for the same uniforms.

        gray (B, H, W) int; uniforms (B, H, W) in [0, 1) drive mode "sample"; constraints: optional bool
        (B, H, W, 512) of allowed symbols per pixel (colour hints); on_row(done, total) is called after every row
        (progress and cancellation: it may raise); `rows` stops after that many rows (benchmarks); `encoded`:
        the encoder's output for `gray` when the caller already has it (the pipeline runs that large parallel
        pass on all threads and the pixel chain on one).
        Returns symbols (B, H, W).
        """
        z = self.encoder(gray) if encoded is None else encoded
        batch, height, width, dim = z.shape
        image_z = _one_image(z)  # what depends on z alone: once when all candidates share one gray image
        inner = _IncrementalInnerDecoder(self, z, image_z, row_context_quirk)
        outer = _IncrementalOuterDecoder(self.outer_decoder, z, image_z, self.config.num_heads)
        symbols = torch.zeros(batch, height, width, dtype=torch.long, device=z.device)
        upper_row = z.new_zeros(batch, width, dim)
        for r in range(rows or height):  # `rows` < height: only the first rows (benchmarks)
            inner.start_row(r, upper_row)
            previous = z.new_zeros(batch, dim)  # shift right: column 0 sees no pixel
            row_symbols, row_embeddings = [], []
            for c in range(width):
                chosen = choose(inner.logits(c, previous), mode, temperature, _uniform(uniforms, r, c),
                                _constraint(constraints, r, c))
                previous = self.embed(chosen)
                row_symbols.append(chosen)
                row_embeddings.append(previous)
            symbols[:, r] = torch.stack(row_symbols, dim=1)
            upper_row = outer.next_upper_row(r, torch.stack(row_embeddings, dim=1))
            if on_row:
                on_row(r + 1, height)
        return symbols


def _one_image(z):
    """z itself, or its first image when every candidate shares one gray image (an expanded tensor)."""
    return z[:1] if z.shape[0] > 1 and z.stride(0) == 0 else z


def _norm_scale_shift(norm: ConditionalLayerNorm, context, batch: int):
    """A conditional layer norm's (scale, shift) for `context` (as the reference computes them), each (B, D)."""
    return tuple(t[:, 0, 0].expand(batch, -1) for t in norm.scale_shift(context))


class _IncrementalInnerDecoder:
    """The inner decoder one pixel at a time. Per row: the conditioning of every pixel (q/k/v scale and shift,
    the conditional MLP) from the row's context in one product each. Per pixel: only what depends on the new
    pixel, i.e. the layers on one position, its key and value appended to the row's cache, and its query against
    the cached keys (causal: the keys after it do not exist yet). Per-pixel slices are views made once (per call
    or per row), so a pixel step indexes Python lists instead of slicing tensors."""

    def __init__(self, core: "ColTranCore", z, image_z, row_context_quirk: bool):
        decoder = core.inner_decoder
        batch, height, width, dim = z.shape
        self.core, self.z, self.image_z = core, z, image_z
        self.layers = [decoder.layer(i) for i in range(decoder.num_layers)]
        self.norms = decoder.layer_norms
        self.heads, self.head_dim = core.config.num_heads, dim // core.config.num_heads
        self.table = decoder.pos_embed.table()  # (H, W, D)
        self.row_context_quirk = row_context_quirk
        if not row_context_quirk:  # the training-time context: all of z, one (scale, shift) per image
            self.row_norms = [_norm_scale_shift(norm, image_z, batch) for norm in self.norms]
        # per layer and column c: the cache slot of c, the cached prefix 0..c, the relative bias of query c
        self.key_slots, self.value_slots, self.key_prefixes, self.value_prefixes, self.biases = [], [], [], [], []
        for att, _, _ in self.layers:
            keys = z.new_empty(batch, self.heads, width, self.head_dim)
            values = torch.empty_like(keys)
            bias = relative_bias(att.bias_weight, width)  # (heads, W, W)
            self.key_slots.append(keys.unbind(2))
            self.value_slots.append(values.unbind(2))
            self.key_prefixes.append([keys[:, :, : c + 1] for c in range(width)])
            self.value_prefixes.append([values[:, :, : c + 1] for c in range(width)])
            self.biases.append([bias[:, c, : c + 1] for c in range(width)])

    def start_row(self, r: int, upper_row):
        """upper_row (B, W, D): the outer decoder's context for row r."""
        batch = upper_row.shape[0]
        z_row = self.z[:, r]
        context = torch.cat((z_row, upper_row), dim=-1)
        self.base = (self.table[r] + z_row + upper_row).unbind(1)  # every pixel's input but its left neighbour
        if self.row_context_quirk:  # the reference sampler's context: this row of z (module docstring)
            self.row_norms = [_norm_scale_shift(norm, self.image_z[:, r: r + 1], batch) for norm in self.norms]
        self.conditioning = []  # per layer: q, k, v (scale, shift) and the MLP's (shift, scale), each per column
        for att, _, affine_c in self.layers:
            parts = [t for layer in (att.cond_q, att.cond_k, att.cond_v)
                     for t in layer(context).unflatten(-1, (self.heads, 2 * self.head_dim)).chunk(2, dim=-1)]
            parts += affine_c(context).chunk(2, dim=-1)
            self.conditioning.append([t.unbind(1) for t in parts])

    def logits(self, c: int, previous):
        """(B, 512) logits of pixel c; previous (B, D) is the embedding of pixel c - 1 (zeros at c = 0)."""
        heads, head_dim = self.heads, self.head_dim
        shape = (previous.shape[0], heads, head_dim)
        x = self.base[c] + previous
        for i, (att, ff, _) in enumerate(self.layers):
            q_scale, q_shift, k_scale, k_shift, v_scale, v_shift, mlp_shift, mlp_scale = self.conditioning[i]
            q = torch.addcmul(q_shift[c], att.q(x).view(shape), q_scale[c])
            torch.addcmul(k_shift[c], att.k(x).view(shape), k_scale[c], out=self.key_slots[i][c])
            torch.addcmul(v_shift[c], att.v(x).view(shape), v_scale[c], out=self.value_slots[i][c])
            scores = torch.matmul(self.key_prefixes[i][c], (q * head_dim**-0.5).unsqueeze(-1)).squeeze(-1)
            weights = torch.softmax(scores + self.biases[i][c], dim=-1)  # (B, heads, c + 1)
            attended = torch.matmul(weights.unsqueeze(-2), self.value_prefixes[i][c]).flatten(1)  # (B, D)
            x = self._norm(2 * i, x + att.output(attended))
            x = self._norm(2 * i + 1, x + torch.addcmul(mlp_shift[c], ff(x), mlp_scale[c]))
        return self.core.auto_logits(self.core.final_norm(x))

    def _norm(self, index: int, x):
        scale, shift = self.row_norms[index]
        return torch.addcmul(shift, self.norms[index].normalize(x), scale)


class _IncrementalOuterDecoder:
    """The outer decoder one row at a time: its row attention and feed-forwards see only the new row, and its
    causal column attention the new row's query against the cached keys and values of every earlier row."""

    def __init__(self, decoder: OuterDecoder, z, image_z, heads: int):
        batch, height, width, dim = z.shape
        self.decoder, self.z = decoder, z
        self.table = decoder.pos_embed.table()
        # every outer norm sees all of z: one (scale, shift) per image, (B, 1, 1, D) to broadcast over a row
        self.norm_scale_shift = [tuple(t[:, None, None] for t in _norm_scale_shift(norm, image_z, batch))
                                 for norm in decoder.layer_norms]
        # per layer, the keys and values of every generated row: (B * W, heads, H, hd)
        self.keys = [z.new_empty(batch * width, heads, height, dim // heads) for _ in range(decoder.num_layers)]
        self.values = [z.new_empty(batch * width, heads, height, dim // heads) for _ in range(decoder.num_layers)]

    def next_upper_row(self, r: int, embeddings):
        """embeddings (B, W, D) of the finished row r -> the upper context of row r + 1 (B, W, D)."""
        batch, width = embeddings.shape[:2]
        z_row = self.z[:, r: r + 1]  # (B, 1, W, D)
        x = embeddings[:, None] + self.table[r: r + 1] + z_row
        for i in range(self.decoder.num_layers):
            row_att, row_ff, affine_r, col_att, col_ff, affine_c = self.decoder.layer(i)
            norms = self.decoder.layer_norms[4 * i: 4 * i + 4]
            scale_shift = self.norm_scale_shift[4 * i: 4 * i + 4]
            x = norms[0](x + row_att(x, z_row), scale_shift=scale_shift[0])
            x = norms[1](x + affine(row_ff(x), affine_r, z_row), scale_shift=scale_shift[1])
            q, k, v = col_att.project(x, z_row)  # (B, 1, W, heads, hd)
            self.keys[i][:, :, r] = k[:, 0].flatten(0, 1)
            self.values[i][:, :, r] = v[:, 0].flatten(0, 1)
            attended = col_att.attend_one(q[:, 0].flatten(0, 1), self.keys[i][:, :, : r + 1],
                                          self.values[i][:, :, : r + 1], r)
            x = norms[2](x + attended.unflatten(0, (batch, width))[:, None], scale_shift=scale_shift[2])
            x = norms[3](x + affine(col_ff(x), affine_c, z_row), scale_shift=scale_shift[3])
        return x[:, 0]



REDUCED_PARTS = ("outer_decoder", "inner_decoder", "auto_logits")  # what a pixel or row step streams


def reduced_precision(core: ColTranCore, precision: str) -> ColTranCore:
    """`core` for sampling with the linear layers of its decoders and logits in `precision`, a concrete one of
    engine.precision (int8, bf16, fp16); the encoder (one pass per image), the embeddings and the norms stay
    fp32. "fp32" is `core` itself, the exact path. A reduced copy is made once and kept on `core` (outside its
    modules and state dict) until a weight changes."""
    if precision == "fp32":
        return core
    weights = [p for name in REDUCED_PARTS for p in getattr(core, name).parameters()]
    key = (precision, str(core.auto_logits.weight.device), tuple((p.data_ptr(), p._version) for p in weights))
    held = core.__dict__.get("_reduced_precision")
    if held is not None and held[0] == key:
        return held[1]
    variant = copy.copy(core)  # shares the fp32 parts; its own table of submodules
    variant.__dict__.pop("_reduced_precision", None)
    variant._modules = {name: with_prepared_linears(child, precision) if name in REDUCED_PARTS else child
                        for name, child in core._modules.items()}
    core.__dict__["_reduced_precision"] = (key, variant)
    return variant



def _uniform(uniforms, r, c):
    return None if uniforms is None else uniforms[:, r, c]


def _constraint(constraints, r, c):
    return None if constraints is None else constraints[:, r, c]


def choose(logits, mode: str, temperature: float, uniform, allowed=None):
    """Pick one symbol per image from (B, 512) logits: a categorical sample by inverting the CDF at `uniform`
    (B,) in [0, 1), with temperature (our extension; T = 1 is the reference), or argmax. Drawing the uniforms
    per candidate from its own seed makes candidate i independent of the batch it was sampled in.
    `allowed` (B, 512) bool restricts the choice (colour hints)."""
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if mode == "argmax" or temperature == 0:
        return logits.argmax(-1)
    cdf = torch.softmax(logits.double() / temperature, dim=-1).cumsum(-1)
    chosen = (cdf < uniform.double()[:, None]).sum(-1).clamp(max=NUM_SYMBOLS - 1)
    if allowed is not None:  # rounding at a plateau of the CDF can land next to the allowed symbols
        chosen = torch.where(allowed.gather(1, chosen[:, None])[:, 0], chosen, logits.argmax(-1))
    return chosen


# ----------------------------------------------------------------------------------------------------------------
# Upsamplers (coltran/models/upsampler.py): each of R, G, B upsampled independently with shared weights


class ColorUpsampler(nn.Module):
    """Coarse 3-bit colour + gray at 64x64 -> 8-bit colour logits (B, H, W, 3, 256)."""

    def __init__(self, config: UpsamplerConfig):
        super().__init__()
        height, width = config.resolution
        dim = config.hidden_size
        self.bit_embedding = nn.Linear(24, dim, bias=False)  # one-hot of value + 8 * channel
        self.gray_embedding = nn.Linear(256, dim, bias=False)
        self.input_dense = nn.Linear(2 * dim, dim)
        self.encoder = FactorizedAttention(height, width, dim, config.ff_size, config.num_heads,
                                           config.num_encoder_layers)
        self.final_dense = nn.Linear(dim, 256)

    def forward(self, coarse, gray):
        """coarse (B, H, W, 3) int 0..7; gray (B, H, W) int 0..255."""
        return _upsample(self, self.bit_embedding, coarse, gray, 8)


class SpatialUpsampler(nn.Module):
    """Blurry 8-bit colour at 256x256 (the 64x64 result, pixel-replicated) + gray -> logits (B, H, W, 3, 256)."""

    def __init__(self, config: UpsamplerConfig):
        super().__init__()
        height, width = config.resolution
        dim = config.hidden_size
        self.channel_embedding = nn.Linear(768, dim, bias=False)  # one-hot of value + 256 * channel
        self.gray_embedding = nn.Linear(256, dim, bias=False)
        self.input_dense = nn.Linear(2 * dim, dim)
        self.encoder = FactorizedAttention(height, width, dim, config.ff_size, config.num_heads,
                                           config.num_encoder_layers)
        self.final_dense = nn.Linear(dim, 256)

    def forward(self, colour, gray, offset: tuple[int, int] = (0, 0)):
        """colour (B, H, W, 3) int 0..255; gray (B, H, W) int 0..255; `offset` when they are a crop."""
        return _upsample(self, self.channel_embedding, colour, gray, 256, offset)


def upsample_argmax(model, values, gray, offset=(0, 0), on_slice=None, value_range=None):
    """The most likely 8-bit value per pixel and channel (B, H, W, 3) of a ColorUpsampler or SpatialUpsampler,
    one (candidate, channel) slice at a time: the same values as `model(values, gray).argmax(-1)` (the slices
    never see each other), with a ninth of the peak memory at batch 3 (at 256x256 the batched logits alone are
    600 MB and the row attention twice that). `value_range` (low, high), two (B, H, W, 3) tensors: the argmax
    only among values low..high (inclusive) per pixel and channel (colour hints; None: all 256)."""
    embedding, levels = ((model.bit_embedding, 8) if isinstance(model, ColorUpsampler)
                         else (model.channel_embedding, 256))
    out = torch.empty(values.shape, dtype=torch.long, device=values.device)
    for b in range(values.shape[0]):
        gray_embed = model.gray_embedding.weight.t()[gray[b:b + 1]]  # (1, H, W, D)
        for c in range(3):
            channel_embed = embedding.weight.t()[values[b:b + 1, ..., c] + c * levels]  # (1, H, W, D)
            x = model.input_dense(torch.cat((channel_embed, gray_embed), dim=-1))
            logits = model.final_dense(model.encoder(x, offset))[0]  # (H, W, 256)
            if value_range is not None:
                low, high = value_range[0][b, ..., c, None], value_range[1][b, ..., c, None]
                levels_ = torch.arange(logits.shape[-1], device=logits.device)
                logits = logits.masked_fill((levels_ < low) | (levels_ > high), float("-inf"))
            out[b, ..., c] = logits.argmax(-1)
            if on_slice is not None:
                on_slice(3 * b + c + 1, 3 * values.shape[0])
    return out


def _upsample(model, channel_embedding, values, gray, levels, offset=(0, 0)):
    batch = values.shape[0]
    gray_embed = model.gray_embedding.weight.t()[gray]  # (B, H, W, D)
    offsets = torch.arange(3, device=values.device) * levels
    channel_embed = channel_embedding.weight.t()[values + offsets]  # (B, H, W, 3, D)
    channel_embed = channel_embed.permute(3, 0, 1, 2, 4).flatten(0, 1)  # channels batched: (3B, H, W, D)
    x = model.input_dense(torch.cat((channel_embed, gray_embed.repeat(3, 1, 1, 1)), dim=-1))
    logits = model.final_dense(model.encoder(x, offset))  # (3B, H, W, 256)
    return logits.unflatten(0, (3, batch)).permute(1, 2, 3, 0, 4)


# ----------------------------------------------------------------------------------------------------------------
# Symbols


def symbols_to_rgb(symbols):
    """512-symbol coarse colours -> 3-bit (R, G, B), R most significant: symbol = 64 R + 8 G + B."""
    return torch.stack((symbols // 64, (symbols // 8) % 8, symbols % 8), dim=-1)


def rgb_to_symbols(rgb8):
    """8-bit RGB (..., 3) -> 512-symbol coarse colours (truncating 8 -> 3 bits, as convert_bits does)."""
    r, g, b = (rgb8 // 32).unbind(-1)
    return r * 64 + g * 8 + b


class ColTran(nn.Module):
    """The three stages together, as one model folder holds them. `row_context_quirk`: how the colorizer samples
    by default (see the module docstring): True, as the official code samples its released weights; a folder
    whose weights were trained here says False in its config.json (engine.pipelines.coltran.load_folder_model),
    because the quirk is a sampling-time context the model never saw in training."""

    def __init__(self, config: ColTranConfig, row_context_quirk: bool = True):
        super().__init__()
        self.config = config
        self.row_context_quirk = row_context_quirk
        self.colorizer = ColTranCore(config.core)
        self.color_upsampler = ColorUpsampler(config.color_upsampler)
        self.spatial_upsampler = SpatialUpsampler(config.spatial_upsampler)
