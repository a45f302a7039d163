"""ASSET transformer (Liu et al. 2022): a BART-style encoder/decoder over VQGAN tokens with block (strip)
embeddings, PEG, and Sparsified Guided Attention (SGA) at high resolution.

Attribute names are the keys of the official checkpoints under their `transformer.` prefix
(DifanLiu/ASSET, asset/modules/transformer/asset.py), including the shared-embedding aliases
(`shared` = `encoder.embed_tokens` = `decoder.embed_tokens`, likewise `shared_pos` and `shared_block`).

Token layout. A square grid of side S (16, 32, 64) is cut into block_h x block_w = 16 x 4 blocks of
(S/16) x (S/4) tokens; "strip order" lists blocks in raster order and tokens inside each block in raster
order. Everything inside the transformer runs in strip order; the decoder sequence is [START] + the image
tokens, so decoder position p > 0 holds strip token p - 1 and the output at position p predicts strip token p.

Attention. The guiding transformer runs dense attention at 16x16 tokens. At 32x32 and 64x64 tokens SGA
restricts every query block to 6 key blocks: 3 sliding neighbours plus 3 blocks picked per layer and head
from the guiding transformer's block-pooled attention (`Guidance`). It is computed here with blocked
gathers (each query block gathers its key blocks, then scaled_dot_product_attention on 1 + 6 blocks),
never as a dense L x L matrix. Duplicate key blocks count twice, as in the official code.

Parity (2026-11-23, CPU, random weights, official code at 6868ba7 with transformers 4.27.4 in a scratch
folder): an official state dict loads strictly; logits differ by <= 4e-6 (dense, 16x16) and <= 9e-6 (SGA,
32x32, guidance from the official get_topK_* functions, identical to ours); the official guiding and SGA
samplers and ours return identical tokens for the same seed (rows 5/6 picking their own block included).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from engine.precision import PreparedLinear, prepare_linear, prepare_weight

N_GUIDED = 3  # guided blocks per query block
N_SLIDING = 3  # sliding blocks per query block (the block itself included)
N_FULL_CAUSAL = N_GUIDED + N_SLIDING - 1  # causal rows 0..4 attend to all previous blocks


@dataclass
class ASSETConfig:
    vocab_size: int = 1024  # image codebook size; the token table adds [MASK] = vocab and [START] = vocab + 1
    d_model: int = 1024
    encoder_layers: int = 7
    decoder_layers: int = 15
    encoder_attention_heads: int = 16
    decoder_attention_heads: int = 16
    encoder_ffn_dim: int = 4096
    decoder_ffn_dim: int = 4096
    max_position_embeddings: int = 256  # only row max_position_embeddings ([START]) of shared_pos is used
    cond_vocab_size: int | None = None  # rows of embed_cond; the official code uses vocab_size
    block_h: int = 16
    block_w: int = 4
    peg_list: tuple[str, ...] = ("E_all", "D_0")
    peg_ks: int = 5
    # The official guidance leaves causal rows 5 and 6 unpenalised, so their 3 guided blocks may repeat
    # blocks i-2, i-1 and i; the guided copy of block i is not causally masked, so a token there sees later
    # tokens of its own block. True reproduces that (needed for the published weights); False penalises
    # columns >= i-2 from row 5 on, which makes the decoder strictly causal.
    reference_rows_5_6: bool = True

    def __post_init__(self):
        self.peg_list = tuple(self.peg_list)
        if self.cond_vocab_size is None:
            self.cond_vocab_size = self.vocab_size

    @property
    def num_blocks(self) -> int:
        return self.block_h * self.block_w

    @property
    def mask_token(self) -> int:
        return self.vocab_size

    @property
    def start_token(self) -> int:
        return self.vocab_size + 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["peg_list"] = list(self.peg_list)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ASSETConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def config_from_state_dict(sd: dict[str, torch.Tensor], **overrides) -> ASSETConfig:
    """Infer the architecture from the shapes of a `transformer.`-less ASSET state dict.

    Head counts cannot be read from shapes; they default to d_model // 64 (the official head size)."""
    tokens, d_model = sd["shared.weight"].shape
    n_enc = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers."))
    n_dec = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("decoder.layers."))
    peg = [f"E_{i}" for i in range(n_enc) if f"encoder.layers.{i}.PEG_net.proj.0.weight" in sd]
    peg = ["E_all"] if len(peg) == n_enc else peg
    peg += [f"D_{i}" for i in range(n_dec) if f"decoder.layers.{i}.PEG_net.proj.0.weight" in sd]
    peg_key = next((k for k in sd if k.endswith("PEG_net.proj.0.weight")), None)
    n_blocks = sd["shared_block.weight"].shape[0]
    cfg = dict(
        vocab_size=tokens - 2,
        d_model=d_model,
        encoder_layers=n_enc,
        decoder_layers=n_dec,
        encoder_attention_heads=max(1, d_model // 64),
        decoder_attention_heads=max(1, d_model // 64),
        encoder_ffn_dim=sd["encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=sd["decoder.layers.0.fc1.weight"].shape[0],
        max_position_embeddings=sd["shared_pos.weight"].shape[0] - 1,
        cond_vocab_size=sd["encoder.embed_cond.weight"].shape[0],
        block_h=16,
        block_w=n_blocks // 16,
        peg_list=tuple(peg),
        peg_ks=sd[peg_key].shape[-1] if peg_key else 5,
    )
    cfg.update(overrides)
    return ASSETConfig(**cfg)


# ----------------------------------------------------------------------------------------------- orders


def grid_side(length: int) -> int:
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError(f"ASSET needs a square token grid, got {length} tokens")
    return side


def strip_permutation(side: int, block_h: int = 16, block_w: int = 4) -> torch.Tensor:
    """perm[s] = raster index of strip position s."""
    th, tw = side // block_h, side // block_w
    raster = torch.arange(side * side).view(block_h, th, block_w, tw)
    return raster.permute(0, 2, 1, 3).reshape(-1)


def to_strip(x: torch.Tensor, block_h: int = 16, block_w: int = 4) -> torch.Tensor:
    """(B, L, ...) raster order -> strip order."""
    return x[:, strip_permutation(grid_side(x.shape[1]), block_h, block_w).to(x.device)]


def to_raster(x: torch.Tensor, block_h: int = 16, block_w: int = 4) -> torch.Tensor:
    """(B, L, ...) strip order -> raster order."""
    perm = strip_permutation(grid_side(x.shape[1]), block_h, block_w).to(x.device)
    return x[:, torch.argsort(perm)]


# ------------------------------------------------------------------------------------------- guidance


@dataclass
class Guidance:
    """Guided key blocks per layer, candidate, head and query block (block indices in strip order).

    encoder: (encoder_layers, B, H, nb, 3); cross: (decoder_layers, B, H, nb, 3);
    causal: (decoder_layers, B, H, nb - 5, 3) for causal rows 5 .. nb-1."""

    encoder: torch.Tensor
    causal: torch.Tensor
    cross: torch.Tensor

    def expand(self, batch: int) -> "Guidance":
        def rep(t):
            return t.expand(t.shape[0], batch, *t.shape[2:]).contiguous() if t.shape[1] == 1 else t

        return Guidance(rep(self.encoder), rep(self.causal), rep(self.cross))

    def own_block_rows(self) -> set[int]:
        """Causal rows whose guided set contains the row's own block (only possible with reference_rows_5_6)."""
        rows = torch.arange(N_FULL_CAUSAL, N_FULL_CAUSAL + self.causal.shape[3], device=self.causal.device)
        hit = (self.causal >= rows.view(-1, 1)).flatten(0, 2).any(0).any(-1)
        return {int(r) for r in rows[hit]}


def full_penalty(nb: int) -> torch.Tensor:
    """Block penalty for bidirectional rows: the sliding neighbours are never guided blocks."""
    pen = torch.zeros(nb, nb)
    pen[0, 0:2] = -10000.0
    pen[-1, -2:] = -10000.0
    for i in range(1, nb - 1):
        pen[i, i - 1 : i + 2] = -10000.0
    return pen


def causal_penalty(nb: int, reference_rows_5_6: bool) -> torch.Tensor:
    """Block penalty for causal rows: own block, 2 predecessors and the future are never guided.

    The official code starts the penalty at row 7 (rows 5 and 6 may pick blocks i-2..i). Future blocks have
    exactly zero pooled attention there, so penalising them too changes nothing unless attention underflows."""
    pen = torch.zeros(nb, nb)
    first = N_GUIDED + N_SLIDING + 1 if reference_rows_5_6 else N_FULL_CAUSAL
    for i in range(nb):
        if i >= first:
            pen[i, i - (N_SLIDING - 1) :] = -10000.0
        elif i + 1 < nb:
            pen[i, i + 1 :] = -10000.0
    return pen


def pooled_topk(attn: torch.Tensor, penalty: torch.Tensor, nb: int) -> torch.Tensor:
    """attn (..., L, L) probabilities at 16x16 tokens -> (..., nb, 3) top blocks of the block-pooled map."""
    lead = attn.shape[:-2]
    length = attn.shape[-1]
    nt = length // nb
    pooled = F.avg_pool2d(attn.reshape(-1, 1, length, length), nt, stride=nt).squeeze(1)
    pooled = pooled + penalty.to(pooled.device)
    return torch.topk(pooled, N_GUIDED, dim=-1).indices.view(*lead, nb, N_GUIDED)


def guidance_from_attentions(enc, dec_self, cross, cfg: ASSETConfig) -> Guidance:
    """Attention probabilities of a dense 16x16 pass (lists per layer: (B,H,256,256), (B,H,257,257),
    (B,H,257,256)) -> Guidance for an SGA model with the same layer and head counts."""
    nb = cfg.num_blocks
    full = full_penalty(nb)
    enc_idx = pooled_topk(torch.stack(enc), full, nb)
    cross_idx = pooled_topk(torch.stack(cross)[..., 1:, :], full, nb)
    causal_idx = pooled_topk(torch.stack(dec_self)[..., 1:, 1:], causal_penalty(nb, cfg.reference_rows_5_6), nb)
    return Guidance(enc_idx, causal_idx[..., N_FULL_CAUSAL:, :].contiguous(), cross_idx)


# ------------------------------------------------------------------------------------ key-block layouts


def full_layout(guided: torch.Tensor, nb: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bidirectional rows: key blocks [i-1, i, i+1, g0, g1, g2]. guided (B,H,nb,3) ->
    table (B,H,nb,6) of block indices and valid (nb,6) (row 0 has no i-1, the last row no i+1)."""
    rows = torch.arange(nb, device=guided.device)
    sliding = torch.stack([rows - 1, rows, rows + 1], -1).clamp(0, nb - 1)
    table = torch.cat([sliding.expand(*guided.shape[:2], nb, 3), guided], -1)
    valid = torch.ones(nb, 6, dtype=torch.bool, device=guided.device)
    valid[0, 0] = False
    valid[-1, 2] = False
    return table, valid


def causal_layout(guided: torch.Tensor, nb: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal rows: key blocks [g0, g1, g2, i-2, i-1, i] for rows >= 5, [.., 0, .., i-1, i] (all previous
    blocks) for rows 0..4; the own block is always slot 5. guided (B,H,nb-5,3) -> table (B,H,nb,6), valid (nb,6)."""
    b, h = guided.shape[:2]
    dev = guided.device
    rows = torch.arange(nb, device=dev)
    offsets = torch.arange(-5, 1, device=dev)  # slot s holds block i - 5 + s
    table = (rows.view(-1, 1) + offsets).clamp(min=0).expand(b, h, nb, 6).clone()
    valid = (rows.view(-1, 1) + offsets) >= 0
    table[:, :, N_FULL_CAUSAL:, :N_GUIDED] = guided
    valid[N_FULL_CAUSAL:] = True
    return table, valid


def gather_blocks(blocked: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """blocked (B,H,nb,nt,d), table (B,H,R,S) -> (B,H,R,S*nt,d): one index_select over (B*H*nb) blocks."""
    b, h, nb, nt, d = blocked.shape
    rows, slots = table.shape[2:]
    offset = torch.arange(b * h, device=table.device).view(b, h, 1, 1) * nb
    out = blocked.reshape(b * h * nb, nt, d).index_select(0, (table + offset).reshape(-1))
    return out.view(b, h, rows, slots * nt, d)


def blocked_attention(q, k, v, bias):
    """q (B,H,R,n,d), k/v (B,H,R,K,d), bias (R,n,K) -> (B,H,R,n,d). SDPA on 4-D views with a 4-D mask,
    which takes torch's fused CPU kernel (5-D inputs or a broadcast 3-D mask fall back to a slower path)."""
    out = F.scaled_dot_product_attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), attn_mask=bias[None])
    return out.view(q.shape)


ROW_CHUNK = 8  # query blocks per gather: bounds the gathered keys/values and scores to 8 of 64 rows


def _row_chunks(qb, kb, vb, table, bias, start_k, start_v):
    """Blocked attention of all query blocks, ROW_CHUNK blocks at a time. qb/kb/vb (B,H,nb,nt,d); table
    (B,H,nb,S) key blocks per query block; bias (nb,nt,K); start_k/v (B,H,1,d) prepended to every row's keys."""
    b, h, nb = qb.shape[:3]
    kb, vb = kb.contiguous(), vb.contiguous()  # gather_blocks flattens them; copy once, not per chunk
    outs = []
    for r0 in range(0, nb, ROW_CHUNK):
        rows = slice(r0, min(nb, r0 + ROW_CHUNK))
        keys, values = gather_blocks(kb, table[:, :, rows]), gather_blocks(vb, table[:, :, rows])
        if start_k is not None:
            n = keys.shape[2]
            keys = torch.cat([start_k[:, :, None].expand(b, h, n, 1, -1), keys], 3)
            values = torch.cat([start_v[:, :, None].expand(b, h, n, 1, -1), values], 3)
        outs.append(blocked_attention(qb[:, :, rows], keys, values, bias[rows]))
    return torch.cat(outs, 2)


def sga_causal_core(q, k, v, guided, nb):
    """Causal SGA on projected heads q/k/v (B,H,1+L,d) ([START] first) -> (B,H,1+L,d)."""
    b, h, length, d = q.shape
    length -= 1
    nt = length // nb
    table, valid = causal_layout(guided, nb)
    start_k, start_v = k[:, :, :1].clone(), v[:, :, :1].clone()
    blocks = [t[:, :, 1:].reshape(b, h, nb, nt, d) for t in (q, k, v)]
    bias = F.pad(slot_bias(valid, nt, causal_slot=5), (1, 0))
    out = _row_chunks(*blocks, table, bias, start_k, start_v)
    return torch.cat([start_v, out.reshape(b, h, length, d)], 2)


def slot_bias(valid: torch.Tensor, nt: int, causal_slot: int | None):
    """Additive bias (R, nt, S*nt) from slot validity and the within-block causal rule of one slot."""
    q_pos = torch.arange(nt, device=valid.device)
    rows, slots = valid.shape
    bias = torch.zeros(rows, nt, slots, nt, device=valid.device)
    bias.masked_fill_(~valid.view(rows, 1, slots, 1), float("-inf"))
    if causal_slot is not None:
        future = torch.arange(nt, device=valid.device).view(1, -1) > q_pos.view(-1, 1)
        bias[:, :, causal_slot].masked_fill_(future, float("-inf"))
    return bias.flatten(2)


# ------------------------------------------------------------------------------------------- modules


class ASSETAttention(nn.Module):
    """BART attention (q/k/v/out projections with bias). The scaling is folded into SDPA (head_dim^-0.5)."""

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, H, L, d)
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def merge(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, L, d) -> projected (B, L, C)
        return self.out_proj(x.transpose(1, 2).flatten(2))

    def dense(self, x, kv=None, causal=False, need_weights=False):
        kv = x if kv is None else kv
        q, k, v = self.heads(self.q_proj(x)), self.heads(self.k_proj(kv)), self.heads(self.v_proj(kv))
        if not need_weights:
            return self.merge(F.scaled_dot_product_attention(q, k, v, is_causal=causal)), None
        scores = (q * self.head_dim**-0.5) @ k.transpose(-1, -2)
        if causal:
            scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
        weights = scores.softmax(-1)
        return self.merge(weights @ v), weights

    def sga_full(self, x, kv, guided, nb):
        """Bidirectional SGA over image tokens (encoder self-attention, decoder cross-attention)."""
        q, k, v = self.heads(self.q_proj(x)), self.heads(self.k_proj(kv)), self.heads(self.v_proj(kv))
        b, h, length, d = q.shape
        nt = length // nb
        table, valid = full_layout(guided, nb)
        out = _row_chunks(q.view(b, h, nb, nt, d), k.view(b, h, nb, nt, d), v.view(b, h, nb, nt, d), table,
                          slot_bias(valid, nt, None), None, None)
        return self.merge(out.reshape(b, h, length, d))

    def sga_causal(self, x, guided, nb):
        """Causal SGA over [START] + image tokens (decoder self-attention). [START] attends to itself only."""
        q, k, v = self.heads(self.q_proj(x)), self.heads(self.k_proj(x)), self.heads(self.v_proj(x))
        return self.merge(sga_causal_core(q, k, v, guided, nb))

    def sga_cross(self, x, kv, guided, nb):
        """Decoder cross-attention: [START] attends densely to the whole encoder output, image tokens by SGA."""
        start = self.dense(x[:, :1], kv)[0]
        return torch.cat([start, self.sga_full(x[:, 1:], kv, guided, nb)], 1)


class PosCNN(nn.Module):
    """PEG: depth-wise conv applied per block (zero padding at every block border), strip order in and out."""

    def __init__(self, embed_dim: int, ks: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(embed_dim, embed_dim, ks, 1, (ks - 1) // 2, groups=embed_dim))

    def forward(self, x, block_h=16, block_w=4):
        b, length, c = x.shape
        side = grid_side(length)
        th, tw = side // block_h, side // block_w
        y = self.proj(x.reshape(b * block_h * block_w, th, tw, c).permute(0, 3, 1, 2))
        return y.permute(0, 2, 3, 1).reshape(b, length, c)


class ASSETEncoderLayer(nn.Module):
    def __init__(self, cfg: ASSETConfig, use_peg: bool):
        super().__init__()
        d = cfg.d_model
        if use_peg:
            self.PEG_net = PosCNN(d, cfg.peg_ks)
        self.self_attn = ASSETAttention(d, cfg.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.encoder_ffn_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.cfg = cfg

    def forward(self, x, guided=None, need_weights=False):
        if hasattr(self, "PEG_net"):
            x = x + self.PEG_net(x, self.cfg.block_h, self.cfg.block_w)
        if guided is None:
            a, weights = self.self_attn.dense(x, need_weights=need_weights)
        else:
            a, weights = self.self_attn.sga_full(x, x, guided, self.cfg.num_blocks), None
        x = self.self_attn_layer_norm(x + a)
        x = self.final_layer_norm(x + self.fc2(F.gelu(self.fc1(x))))
        return x, weights


class ASSETDecoderLayer(nn.Module):
    def __init__(self, cfg: ASSETConfig, use_peg: bool):
        super().__init__()
        d = cfg.d_model
        if use_peg:
            self.PEG_net = PosCNN(d, cfg.peg_ks)
        self.self_attn = ASSETAttention(d, cfg.decoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.encoder_attn = ASSETAttention(d, cfg.decoder_attention_heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.decoder_ffn_dim)
        self.fc2 = nn.Linear(cfg.decoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.cfg = cfg

    def peg(self, memory):
        """PEG of the encoder output (strip order), added to the decoder's image positions."""
        return self.PEG_net(memory, self.cfg.block_h, self.cfg.block_w)

    def ffn(self, x):
        return self.final_layer_norm(x + self.fc2(F.gelu(self.fc1(x))))

    def forward(self, x, memory, causal_guided=None, cross_guided=None, need_weights=False):
        if hasattr(self, "PEG_net"):
            x = torch.cat([x[:, :1], x[:, 1:] + self.peg(memory)], 1)
        nb = self.cfg.num_blocks
        if causal_guided is None:
            a, w_self = self.self_attn.dense(x, causal=True, need_weights=need_weights)
        else:
            a, w_self = self.self_attn.sga_causal(x, causal_guided, nb), None
        x = self.self_attn_layer_norm(x + a)
        if cross_guided is None:
            a, w_cross = self.encoder_attn.dense(x, memory, need_weights=need_weights)
        else:
            a, w_cross = self.encoder_attn.sga_cross(x, memory, cross_guided, nb), None
        x = self.encoder_attn_layer_norm(x + a)
        return self.ffn(x), w_self, w_cross


def _peg_flags(peg_list, prefix: str, n: int) -> list[bool]:
    return [f"{prefix}_{i}" in peg_list or f"{prefix}_all" in peg_list for i in range(n)]


class ASSETEncoder(nn.Module):
    def __init__(self, cfg: ASSETConfig, embed_tokens, embed_positions, embed_blocks):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.embed_cond = nn.Embedding(cfg.cond_vocab_size, cfg.d_model)
        self.embed_positions = embed_positions
        self.embed_blocks = embed_blocks
        flags = _peg_flags(cfg.peg_list, "E", cfg.encoder_layers)
        self.layers = nn.ModuleList(ASSETEncoderLayer(cfg, f) for f in flags)
        self.layernorm_embedding = nn.LayerNorm(cfg.d_model)
        self.cfg = cfg

    def forward(self, input_ids, cond_ids, guidance: Guidance | None = None, need_weights=False):
        """input_ids, cond_ids: (B, L) raster order ([MASK] at masked tokens) -> (B, L, C) strip order."""
        cfg = self.cfg
        blocks = block_ids(input_ids.shape[1], cfg, input_ids.device)
        x = self.embed_tokens(input_ids) + self.embed_blocks(blocks) + self.embed_cond(cond_ids)
        x = to_strip(self.layernorm_embedding(x), cfg.block_h, cfg.block_w)
        weights = []
        for i, layer in enumerate(self.layers):
            x, w = layer(x, None if guidance is None else guidance.encoder[i], need_weights)
            weights.append(w)
        return x, weights


def block_ids(length: int, cfg: ASSETConfig, device=None) -> torch.Tensor:
    """Block index of every raster position, (L,)."""
    side = grid_side(length)
    th, tw = side // cfg.block_h, side // cfg.block_w
    rows = torch.arange(side, device=device) // th
    cols = torch.arange(side, device=device) // tw
    return (rows.view(-1, 1) * cfg.block_w + cols.view(1, -1)).reshape(-1)


class ASSETDecoder(nn.Module):
    def __init__(self, cfg: ASSETConfig, embed_tokens, embed_positions, embed_blocks):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.embed_positions = embed_positions
        self.embed_blocks = embed_blocks
        flags = _peg_flags(cfg.peg_list, "D", cfg.decoder_layers)
        self.layers = nn.ModuleList(ASSETDecoderLayer(cfg, f) for f in flags)
        self.layernorm_embedding = nn.LayerNorm(cfg.d_model)
        self.cfg = cfg

    def positions(self, length: int, device=None) -> torch.Tensor:
        """Position embeddings of the decoder sequence in strip order, (1 + L, C)."""
        cfg = self.cfg
        start = self.embed_positions.weight[cfg.max_position_embeddings][None]
        blocks = to_strip(block_ids(length, cfg, device)[None], cfg.block_h, cfg.block_w)[0]
        return torch.cat([start, self.embed_blocks(blocks)], 0)

    def embed(self, ids_strip: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """ids_strip: (B, n) decoder tokens, positions: their (n, C) position embeddings -> layer input."""
        return self.layernorm_embedding(self.embed_tokens(ids_strip) + positions)

    def forward(self, ids_strip, memory, guidance: Guidance | None = None, need_weights=False):
        """ids_strip: (B, 1 + L) = [START] + image tokens in strip order; memory: encoder output (strip)."""
        x = self.embed(ids_strip, self.positions(ids_strip.shape[1] - 1, ids_strip.device))
        w_self, w_cross = [], []
        for i, layer in enumerate(self.layers):
            cg = None if guidance is None else guidance.causal[i]
            xg = None if guidance is None else guidance.cross[i]
            x, ws, wc = layer(x, memory, cg, xg, need_weights)
            w_self.append(ws)
            w_cross.append(wc)
        return x, w_self, w_cross


class ASSET(nn.Module):
    def __init__(self, cfg: ASSETConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.shared = nn.Embedding(cfg.vocab_size + 2, d)  # image tokens + [MASK] + [START]
        self.shared_pos = nn.Embedding(cfg.max_position_embeddings + 1, d)
        self.shared_block = nn.Embedding(cfg.num_blocks, d)
        self.encoder = ASSETEncoder(cfg, self.shared, self.shared_pos, self.shared_block)
        self.decoder = ASSETDecoder(cfg, self.shared, self.shared_pos, self.shared_block)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        # BART's init (std 0.02, zero bias); LayerNorm and conv keep torch defaults
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def decoder_ids(self, image_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) raster image tokens -> (B, 1 + L) [START] + strip-order tokens."""
        start = torch.full_like(image_ids[:, :1], self.cfg.start_token)
        return torch.cat([start, to_strip(image_ids, self.cfg.block_h, self.cfg.block_w)], 1)

    def forward_strip(self, input_ids, cond_ids, image_ids, guidance=None, need_weights=False):
        """Teacher-forced pass. Returns logits (B, 1 + L, V) in decoder (strip) order, where logits[:, p]
        predicts strip token p, and the attention probabilities when need_weights (dense mode only)."""
        if guidance is not None and need_weights:
            raise ValueError("attention probabilities exist only for dense attention")
        memory, w_enc = self.encoder(input_ids, cond_ids, guidance, need_weights)
        x, w_self, w_cross = self.decoder(self.decoder_ids(image_ids), memory, guidance, need_weights)
        return self.lm_head(x), (w_enc, w_self, w_cross)

    def forward(self, input_ids, cond_ids, image_ids, guidance=None, strip_order=False):
        """Logits (B, 1 + L, V). strip_order: in decoder order (logits[:, p] predicts strip token p). Otherwise
        the official layout: [:, 0] is [START]'s output, [:, 1:] the outputs of the image tokens converted back
        to raster order (each predicts the token after it in strip order)."""
        logits, _ = self.forward_strip(input_ids, cond_ids, image_ids, guidance)
        if strip_order:
            return logits
        return torch.cat([logits[:, :1], to_raster(logits[:, 1:], self.cfg.block_h, self.cfg.block_w)], 1)

    @torch.no_grad()
    def guidance(self, input_ids, cond_ids, image_ids, target: ASSETConfig | None = None) -> Guidance:
        """Dense pass at 16x16 tokens -> guided blocks for an SGA model (same layers and heads)."""
        _, (w_enc, w_self, w_cross) = self.forward_strip(input_ids, cond_ids, image_ids, need_weights=True)
        return guidance_from_attentions(w_enc, w_self, w_cross, target or self.cfg)


# --------------------------------------------------------------------------------- incremental decoding


@dataclass
class StepWeights:
    """One decoder layer's linear layers as they run in a token step (engine.precision): q/k/v as one fused
    projection. The cross-attention key/value projections are absent: the encoder's keys and values are
    projected once per sampling run."""

    qkv: PreparedLinear
    out: PreparedLinear
    cross_q: PreparedLinear
    cross_out: PreparedLinear
    fc1: PreparedLinear
    fc2: PreparedLinear


def prepare_step_weights(model: ASSET, precision: str = "fp32", rows: int = 1) -> tuple[list[StepWeights], PreparedLinear]:
    """The decoder's per-step linears and lm_head in `precision` (a concrete one: fp32, int8, bf16, fp16) for
    `rows` rows per step. Reduced precisions are kept on the model between sampling runs (one set, rebuilt
    when a weight changes); fp32 is rebuilt per run (the fused q/k/v copy, and on CPU with rows > 1 a
    oneDNN-packed copy of every weight), so fp32 holds no second copy of the weights between runs."""
    params = list(model.decoder.layers.parameters()) + [model.lm_head.weight]
    key = (precision, str(model.lm_head.weight.device), tuple((p.data_ptr(), p._version) for p in params))
    held = model.__dict__.get("_step_weights")
    if held is not None and held[0] == key:
        return held[1]

    def prep(linear):
        return prepare_linear(linear, precision, rows)

    def fused(attention):
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        return prepare_weight(torch.cat([p.weight for p in projections]), torch.cat([p.bias for p in projections]),
                              precision, rows)

    layers = [StepWeights(fused(l.self_attn), prep(l.self_attn.out_proj), prep(l.encoder_attn.q_proj),
                          prep(l.encoder_attn.out_proj), prep(l.fc1), prep(l.fc2)) for l in model.decoder.layers]
    # lm_head stays fp32: its error lands directly on the logits (it doubled the top-1 flips of int8 and bf16
    # on the demo model) and it is under 1 % of a step's bytes at official size
    prepared = layers, prepare_linear(model.lm_head, "fp32", rows)
    model.__dict__.pop("_step_weights", None)
    if precision != "fp32":
        model.__dict__["_step_weights"] = (key, prepared)
    return prepared


def step_weight_bytes(model: ASSET, precision: str = "fp32") -> int:
    """Weight bytes one token step reads: every decoder linear except the cross-attention key/value
    projections (their outputs are cached) in `precision`, plus lm_head (always fp32). Embeddings, norms and
    PEG are negligible."""
    per_value = {"fp32": 4, "int8": 1, "bf16": 2, "fp16": 2}[precision]
    layer = model.decoder.layers[0]
    linears = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.out_proj,
               layer.encoder_attn.q_proj, layer.encoder_attn.out_proj, layer.fc1, layer.fc2]
    per_layer = sum(m.weight.numel() for m in linears)
    return per_value * per_layer * len(model.decoder.layers) + 4 * model.lm_head.weight.numel()


@dataclass
class DecoderCache:
    """Incremental decoding state of B candidates.

    self_kv (layers, 2, B, H, 1 + L, d): self-attention keys (0) and values (1) of [START] (position 0) and of
    every image token in strip order. cross_kv (layers, 2, B, H, L, d): the encoder output's, projected once.
    With guidance (SGA) the keys and values a query row (block) attends to are gathered once per row into
    row_kv / cross_row_kv (only the valid key blocks, the row's own block last, at `row_own`); new tokens of
    the row are written there only, and the row's own block is copied back into self_kv when the next row
    starts. A row whose guided blocks include its own block (`regather_rows`) writes into self_kv and gathers
    again for every piece instead."""

    self_kv: torch.Tensor
    cross_kv: torch.Tensor
    peg: dict[int, torch.Tensor]
    positions: torch.Tensor
    guidance: Guidance | None
    nb: int
    nt: int
    weights: list[StepWeights]
    lm_head: PreparedLinear
    causal_table: torch.Tensor | None = None  # (layers, B, H, nb, 6) key blocks of causal rows
    causal_valid: torch.Tensor | None = None  # (nb, 6)
    cross_table: torch.Tensor | None = None
    cross_valid: torch.Tensor | None = None
    regather_rows: frozenset = frozenset()
    row: int = -1  # the row whose keys row_kv holds, its own block not yet copied back into self_kv
    row_own: int = 0
    row_index: torch.Tensor | None = None  # (layers, 2, B, H, K): rows of self_kv's flat view in row_kv
    row_kv: torch.Tensor | None = None
    cross_row_kv: torch.Tensor | None = None
    row_layers: list = field(default_factory=list)  # per layer: views (row_kv, keys, values, cross keys, values)


@torch.no_grad()
def init_cache(model: ASSET, memory: torch.Tensor, guidance: Guidance | None, precision: str = "fp32") -> DecoderCache:
    """Decoder state for `memory` (the encoder output of B candidates); `precision` as prepare_step_weights."""
    dec = model.decoder
    b, length, _ = memory.shape
    first = dec.layers[0].self_attn
    h, d, n_layers = first.num_heads, first.head_dim, len(dec.layers)
    self_kv = memory.new_zeros(n_layers, 2, b, h, 1 + length, d)
    cross_kv = memory.new_empty(n_layers, 2, b, h, length, d)
    peg = {}
    for i, layer in enumerate(dec.layers):
        cross_kv[i, 0] = layer.encoder_attn.heads(layer.encoder_attn.k_proj(memory))
        cross_kv[i, 1] = layer.encoder_attn.heads(layer.encoder_attn.v_proj(memory))
        if hasattr(layer, "PEG_net"):
            peg[i] = layer.peg(memory)
    nb = model.cfg.num_blocks
    weights, lm_head = prepare_step_weights(model, precision, b)
    cache = DecoderCache(self_kv, cross_kv, peg, dec.positions(length, memory.device), guidance, nb, length // nb,
                         weights, lm_head)
    if guidance is not None:
        table, cache.causal_valid = causal_layout(guidance.causal.flatten(0, 1), nb)
        cache.causal_table = table.view(n_layers, b, *table.shape[1:])
        table, cache.cross_valid = full_layout(guidance.cross.flatten(0, 1), nb)
        cache.cross_table = table.view(n_layers, b, *table.shape[1:])
        cache.regather_rows = frozenset(guidance.own_block_rows())
    return cache


def _token_index(table: torch.Tensor, valid: torch.Tensor, nt: int, span: int, offset: int) -> torch.Tensor:
    """Rows of a (layers * 2 * B * H * span, d) view of a key/value cache holding the tokens of the valid key
    blocks in `table` (layers, B, H, 6) of one query row, for keys and values; block j's tokens sit at
    offset + j * nt .. + nt - 1 of each span. -> (layers, 2, B, H, S * nt)."""
    blocks = table[..., valid][:, None]  # layers, 1, B, H, S
    n_layers, _, b, h, _ = blocks.shape
    heads = torch.arange(n_layers * 2 * b * h, device=table.device).view(n_layers, 2, b, h, 1, 1) * span
    tokens = offset + blocks[..., None] * nt + torch.arange(nt, device=table.device)
    return (heads + tokens).flatten(-2)


def _gather(source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """source (..., span, d), index (..., K) from _token_index -> (..., K, d)."""
    d = source.shape[-1]
    return source.view(-1, d).index_select(0, index.reshape(-1)).view(*index.shape, d)


def _flush_row(cache: DecoderCache) -> None:
    """Copy the buffered row's own block back into self_kv, where later rows gather it from."""
    if cache.row >= 0:
        nt, own = cache.nt, cache.row_own
        first = 1 + cache.row * nt
        cache.self_kv[..., first : first + nt, :] = cache.row_kv[..., own : own + nt, :]
        cache.row = -1


def _enter_row(cache: DecoderCache, row: int, buffered: bool) -> None:
    """Find the key/value blocks the tokens of query block `row` attend to, gather the cross-attention ones
    and, when `buffered`, the self-attention ones (all layers at once)."""
    _flush_row(cache)
    nt, span = cache.nt, cache.self_kv.shape[-2]
    index = _token_index(cache.causal_table[:, :, :, row], cache.causal_valid[row], nt, span, 1)
    starts = index[..., :1] - index[..., :1] % span  # each head's [START] keys (position 0), first
    cache.row_index = torch.cat([starts, index], -1)
    cache.row_own = cache.row_index.shape[-1] - nt
    index = _token_index(cache.cross_table[:, :, :, row], cache.cross_valid[row], nt, cache.cross_kv.shape[-2], 0)
    cache.cross_row_kv = _gather(cache.cross_kv, index)
    if buffered:
        cache.row_kv = _gather(cache.self_kv, cache.row_index)
        cache.row = row
        # per-layer views made once per row: a token step then only narrows them
        cache.row_layers = [(kv, kv[0], kv[1], cross[0], cross[1])
                            for kv, cross in zip(cache.row_kv.unbind(0), cache.cross_row_kv.unbind(0))]


def _own_block_mask(n_keys: int, own: int, q_pos: torch.Tensor) -> torch.Tensor:
    """(n, n_keys) True where a query at in-block position q_pos may attend: every key before the own block
    (at `own`), and the own block's keys up to the query itself."""
    keys = torch.arange(n_keys, device=q_pos.device)
    return (keys.view(1, -1) < own) | (keys.view(1, -1) - own <= q_pos.view(-1, 1))


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


@torch.no_grad()
def decode_step(model: ASSET, cache: DecoderCache, ids: torch.Tensor, start: int) -> torch.Tensor:
    """Feed decoder tokens `ids` (B, n) at decoder positions start .. start+n-1 and return their final
    hidden states (B, n, C) (logits: cache.lm_head). Position 0 ([START]) is fed alone; other pieces stay
    inside one block and every earlier position must already be in the cache. Sparse iff the cache holds
    guidance."""
    dec = model.decoder
    b, n = ids.shape
    x = dec.embed(ids, cache.positions[start : start + n])
    nt = cache.nt
    row = (start - 1) // nt if start > 0 else -1
    if start > 0 and (start + n - 2) // nt != row:
        raise ValueError("a decoder piece must stay inside one block")
    q0 = start - 1 - row * nt  # in-block position of the first query
    sparse = cache.guidance is not None and start > 0
    regather = sparse and row in cache.regather_rows
    if regather or (sparse and row != cache.row):
        _enter_row(cache, row, buffered=not regather)
    own, mask = cache.row_own, None
    if sparse and (n > 1 or regather):
        mask = _own_block_mask(own + nt, own, torch.arange(q0, q0 + n, device=ids.device))
    elif not sparse and n > 1:
        positions = torch.arange(start + n, device=ids.device)
        mask = positions.view(1, -1) <= positions[start:].view(-1, 1)
    heads, head_dim = cache.self_kv.shape[3], cache.self_kv.shape[-1]
    channels = heads * head_dim
    buffered = sparse and not regather
    stop = own + q0 + n if mask is None else own + nt  # row_kv keys a single query may see

    for li, layer in enumerate(dec.layers):
        w = cache.weights[li]
        if li in cache.peg and start > 0:
            x = x + cache.peg[li][:, start - 1 : start - 1 + n]
        qkv = w.qkv(x).view(b, n, 3, heads, head_dim)
        q, kv = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1:].permute(2, 0, 3, 1, 4)  # (B,H,n,d), (2,B,H,n,d)
        if buffered:
            row_kv, keys, values, cross_keys, cross_values = cache.row_layers[li]
            row_kv.narrow(3, own + q0, n).copy_(kv)
            keys, values = keys.narrow(2, 0, stop), values.narrow(2, 0, stop)
        else:
            cache.self_kv[li, :, :, :, start : start + n] = kv
            if start == 0:  # [START] attends to itself only
                keys = values = None
            elif regather:
                keys, values = _gather(cache.self_kv, cache.row_index[li])  # after this piece's keys
            else:
                keys, values = cache.self_kv[li, 0, :, :, : start + n], cache.self_kv[li, 1, :, :, : start + n]
        a = kv[1] if keys is None else F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        x = _layer_norm(x + w.out(a.transpose(1, 2).reshape(b, n, channels)), layer.self_attn_layer_norm)
        q = w.cross_q(x).view(b, n, heads, head_dim).transpose(1, 2)
        if buffered:
            a = F.scaled_dot_product_attention(q, cross_keys, cross_values)
        else:
            cross = cache.cross_row_kv[li] if sparse else cache.cross_kv[li]
            a = F.scaled_dot_product_attention(q, cross[0], cross[1])
        x = _layer_norm(x + w.cross_out(a.transpose(1, 2).reshape(b, n, channels)), layer.encoder_attn_layer_norm)
        x = _layer_norm(x + w.fc2(F.gelu(w.fc1(x))), layer.final_layer_norm)
    return x
