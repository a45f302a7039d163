"""Taming Transformers (Esser et al. 2021): the conditional GPT of `Net2NetTransformer` over VQGAN tokens, with a
segmentation VQGAN as its conditioning stage (the S-FLCKR landscape model).

Attribute names are the official checkpoint keys (CompVis/taming-transformers, taming/models/cond_transformer.py
and taming/modules/transformer/mingpt.py): `transformer.tok_emb`, `transformer.pos_emb`,
`transformer.blocks.N.{ln1,ln2,attn.{key,query,value,proj},attn.mask,mlp.0,mlp.2}`, `transformer.ln_f`,
`transformer.head`, and the two stages `first_stage_model.*` / `cond_stage_model.*` (engine.models.vqgan, whose
names are taming's). The causal `mask` buffer of every attention layer is part of the state dict, as in the
official GPT.

Sequence layout (S-FLCKR: vocab 1024, block 512, 24 layers, 16 heads, 1024 wide): the 256 seg codes of a 16x16
token window, then the 256 image codes of the same window, both raster order and embedded with the one shared
`tok_emb` table (no offset); the GPT sees the first 511 and output p predicts token p + 1, so the logits of the
image tokens are outputs 255..510. Pre-LN blocks, exact GELU, learned positions, `head` without bias.

`GPT.forward` is the official computation (explicit q k^T, the `mask` buffer, softmax, times v); `GPT.extend`
runs new tokens against cached keys and values (engine.models.taming_sampling's fast sampler).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import CheckpointError, InputError
from engine.models.vqgan import VQGAN, VQGANConfig


@dataclass
class GPTConfig:
    vocab_size: int = 1024
    block_size: int = 512
    n_layer: int = 24
    n_head: int = 16
    n_embd: int = 1024
    n_unmasked: int = 0  # leading positions that attend to each other both ways (0 in every official config)
    embd_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CheckpointError(f"unknown GPT config fields: {', '.join(sorted(unknown))}")
        return cls(**d)


def causal_mask(block_size: int, n_unmasked: int = 0) -> torch.Tensor:
    mask = torch.tril(torch.ones(block_size, block_size))
    if n_unmasked:
        mask[:n_unmasked, :n_unmasked] = 1
    return mask.view(1, 1, block_size, block_size)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.n_embd % cfg.n_head:
            raise InputError(f"n_embd {cfg.n_embd} is not a multiple of n_head {cfg.n_head}")
        self.key = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.query = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.value = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.attn_drop = nn.Dropout(cfg.attn_pdrop)
        self.resid_drop = nn.Dropout(cfg.resid_pdrop)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.register_buffer("mask", causal_mask(cfg.block_size, cfg.n_unmasked))
        self.n_head, self.n_unmasked = cfg.n_head, cfg.n_unmasked

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, nh, T, hs)
        b, t, c = x.shape
        return x.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None):
        """x (B, T, C) at sequence positions L..L+T-1, where L is the length of `past` (cached keys, values
        (B, nh, L, hs)); returns (output, (keys, values) of positions 0..L+T-1)."""
        b, t, c = x.shape
        k, q, v = self._heads(self.key(x)), self._heads(self.query(x)), self._heads(self.value(x))
        start = 0
        if past is not None:
            start = past[0].shape[2]
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        if t > 1 or start < self.n_unmasked:  # one new token after a cache sees every cached position
            att = att.masked_fill(self.mask[:, :, start:start + t, :start + t] == 0, float("-inf"))
        y = self.attn_drop(F.softmax(att, dim=-1)) @ v
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.resid_drop(self.proj(y)), (k, v)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(),
                                 nn.Linear(4 * cfg.n_embd, cfg.n_embd), nn.Dropout(cfg.resid_pdrop))

    def forward(self, x, past=None):
        a, present = self.attn(self.ln1(x), past)
        x = x + a
        return x + self.mlp(self.ln2(x)), present


KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (B, nh, L, hs)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.block_size, cfg.n_embd))
        self.drop = nn.Dropout(cfg.embd_pdrop)
        self.blocks = nn.Sequential(*[Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.block_size = cfg.block_size
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) of token ids (B, T), T <= block_size: the official full forward."""
        t = idx.shape[1]
        if t > self.block_size:
            raise InputError(f"{t} tokens do not fit the transformer's block of {self.block_size}")
        x = self.drop(self.tok_emb(idx) + self.pos_emb[:, :t, :])
        for block in self.blocks:
            x, _ = block(x)
        return self.head(self.ln_f(x))

    def extend(self, idx: torch.Tensor, past: KV | None = None) -> tuple[torch.Tensor, KV]:
        """Hidden states after ln_f (B, T, C) of tokens idx (B, T) placed after the L cached positions of `past`,
        and the keys/values of all L + T positions. Equal to the matching rows of the full forward (a causal
        model: position p depends on positions <= p only) up to summation order."""
        start = 0 if past is None else past[0][0].shape[2]
        t = idx.shape[1]
        if start + t > self.block_size:
            raise InputError(f"{start + t} tokens do not fit the transformer's block of {self.block_size}")
        x = self.drop(self.tok_emb(idx) + self.pos_emb[:, start:start + t, :])
        presents = []
        for n, block in enumerate(self.blocks):
            x, present = block(x, None if past is None else past[n])
            presents.append(present)
        return self.ln_f(x), presents


@dataclass
class TamingConfig:
    transformer: GPTConfig
    first_stage: VQGANConfig
    cond_stage: VQGANConfig

    @property
    def window(self) -> int:
        """Side of the square token window: block_size = 2 x window^2 (seg codes + image codes)."""
        return math.isqrt(self.transformer.block_size // 2)

    @property
    def n_labels(self) -> int:
        return self.cond_stage.in_channels

    def to_dict(self) -> dict:
        return {"transformer": self.transformer.to_dict(), "first_stage": self.first_stage.to_dict(),
                "cond_stage": self.cond_stage.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "TamingConfig":
        try:
            return cls(GPTConfig.from_dict(d["transformer"]), VQGANConfig.from_dict(d["first_stage"]),
                       VQGANConfig.from_dict(d["cond_stage"]))
        except (KeyError, TypeError) as error:
            raise CheckpointError(f"not a taming model config ({type(error).__name__}: {error})") from None

    def check(self) -> None:
        t, f, c = self.transformer, self.first_stage, self.cond_stage
        w = self.window
        problems = []
        if 2 * w * w != t.block_size:
            problems.append(f"block_size {t.block_size} is not 2 x (window side)^2 (S-FLCKR: 512 = 2 x 16^2)")
        if t.vocab_size < max(f.n_embed, c.n_embed):
            problems.append(f"vocab_size {t.vocab_size} is smaller than the codebooks ({f.n_embed}, {c.n_embed})")
        if f.factor != c.factor:
            problems.append(f"the stages downsample by {f.factor} and {c.factor}; they must match")
        if problems:
            raise CheckpointError("unsupported taming model: " + "; ".join(problems))


class Net2NetTransformer(nn.Module):
    """The three modules of an official checkpoint (the permuter is taming's Identity: no parameters)."""

    def __init__(self, cfg: TamingConfig):
        super().__init__()
        self.config = cfg
        self.first_stage_model = VQGAN(cfg.first_stage)
        self.cond_stage_model = VQGAN(cfg.cond_stage)
        self.transformer = GPT(cfg.transformer)

    @property
    def window(self) -> int:
        return self.config.window

    @torch.no_grad()
    def encode_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Seg codes (B, h, w) of label maps (B, H, W) of 0-based class ids: the cond stage on the one-hot map
        (its first convolution as table lookups, engine.models.vqgan.VQGAN.label_conv_in). S-FLCKR's cond stage
        is a plain VQModel with 182 input channels, so the class count is its input width."""
        n = self.config.n_labels
        if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < n:
            raise InputError(f"label ids {int(labels.min())}..{int(labels.max())} are outside this model's "
                             f"{n} classes")
        cond = self.cond_stage_model
        f = cond.config.factor
        if labels.shape[-1] % f or labels.shape[-2] % f:
            raise InputError(f"label map size {labels.shape[-1]}x{labels.shape[-2]} is not a multiple of {f}")
        return cond.quantize.codes(cond.quant_conv(cond.encoder.features(cond.label_conv_in(labels))))

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] (not clamped) of image codes (B, h, w)."""
        return self.first_stage_model.decode_code(codes)


def gpt_params(model: GPT) -> int:
    return sum(p.numel() for p in model.parameters())
