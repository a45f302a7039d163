"""Masked autoregressive sampling with an ASSET transformer: only masked tokens are resampled, in strip
order, with temperature and top-k, for k candidates in one batch.

`sample_tokens` feeds the decoder incrementally (engine.models.asset.decode_step): every token costs one
token pass through the decoder, where the official sampler re-runs the whole block (16 or 64 tokens) after
each sampled token. The exception is a causal row whose guided blocks contain the row's own block (rows 5
and 6 with `reference_rows_5_6`): there a token sees later tokens of its block, so that block is re-run as a
whole after each sampled token, exactly as the official sampler does. `sample_tokens_reference` recomputes
the full teacher-forced pass for every token; it is the slow ground truth for tests and benchmarks.

Randomness: one `torch.multinomial` call per masked token for the whole candidate batch (or one per
candidate with per-candidate generators), so both paths consume random numbers identically and a seed
reproduces the result.
"""

from __future__ import annotations

import contextlib

import torch

from engine.models.asset import ASSET, Guidance, decode_step, init_cache, to_raster, to_strip
from engine.precision import resolve_precision


def top_k_logits(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest logits (ties with the k-th are kept, as in the official code)."""
    if not k or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


Generators = torch.Generator | list[torch.Generator] | None


def draw(logits: torch.Tensor, top_k: int | None, temperature: float, generator: Generators) -> torch.Tensor:
    """One token per row. A list of generators gives every candidate its own random stream, so candidate i
    depends only on its own seed (the runtime's contract), not on how many candidates share the batch."""
    probs = torch.softmax(top_k_logits(logits / temperature, top_k), dim=-1)
    if isinstance(generator, (list, tuple)):
        return torch.cat([torch.multinomial(p[None], 1, generator=g)[0] for p, g in zip(probs, generator)])
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class _Reporter:
    """Maps token progress onto ctx.progress within [lo, hi] and checks for cancellation."""

    def __init__(self, ctx, stage: str, total: int, span: tuple[float, float]):
        self.ctx, self.stage, self.total, self.span = ctx, stage, max(total, 1), span

    def tick(self, done: int) -> None:
        if self.ctx is None:
            return
        self.ctx.check_cancelled()
        lo, hi = self.span
        self.ctx.progress(lo + (hi - lo) * done / self.total, self.stage)


def _prepare(model: ASSET, image_ids, cond_ids, token_mask, num_samples):
    cfg = model.cfg
    length = image_ids.shape[-1]
    ids = image_ids.reshape(1, length).expand(num_samples, length).clone()
    cond = cond_ids.reshape(1, length).expand(num_samples, length)
    mask = token_mask.reshape(length).bool()
    if not mask.any():
        raise ValueError("the token mask is empty: nothing to sample")
    enc_in = ids.masked_fill(mask, cfg.mask_token)
    mask_s = to_strip(mask[None], cfg.block_h, cfg.block_w)[0]
    return ids, cond, enc_in, mask_s


@torch.no_grad()
def sample_tokens(
    model: ASSET,
    image_ids: torch.Tensor,
    cond_ids: torch.Tensor,
    token_mask: torch.Tensor,
    num_samples: int,
    guidance: Guidance | None = None,
    top_k: int | None = 100,
    temperature: float = 1.0,
    generator: Generators = None,
    ctx=None,
    stage: str = "sampling",
    span: tuple[float, float] = (0.0, 1.0),
    precision: str = "fp32",
) -> torch.Tensor:
    """image_ids, cond_ids, token_mask: (L,) raster order (a square grid). Returns (num_samples, L) raster
    tokens equal to image_ids outside the mask. Dense attention when guidance is None (the guiding model
    at 16x16), SGA otherwise. ctx: an engine.jobs.JobContext (progress + cancellation) or None.
    precision: the token steps' linear layers in fp32 (exact, the default), int8, bf16, fp16 or auto
    (engine.precision); on CUDA the encoder pass then runs under autocast in bf16/fp16."""
    cfg = model.cfg
    ids, cond, enc_in, mask_s = _prepare(model, image_ids, cond_ids, token_mask, num_samples)
    device = model.lm_head.weight.device
    precision = resolve_precision(precision, device, rows=num_samples)
    if guidance is not None:
        guidance = guidance.expand(num_samples)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast("cuda", half) if half and device.type == "cuda" else contextlib.nullcontext()
    with autocast:
        memory, _ = model.encoder(enc_in, cond, guidance)
        cache = init_cache(model, memory.float(), guidance, precision)
    dec = model.decoder_ids(ids)
    length = ids.shape[1]
    nt = cache.nt
    masked = torch.nonzero(mask_s).flatten().tolist()
    last = masked[-1]
    whole_rows = guidance.own_block_rows() if guidance is not None else set()
    report = _Reporter(ctx, stage, len(masked), span)
    done = 0

    def sample_at(s, hidden):
        nonlocal done
        dec[:, 1 + s] = draw(cache.lm_head(hidden), top_k, temperature, generator)
        done += 1

    h = decode_step(model, cache, dec[:, :1], 0)[:, -1]  # output at position s predicts strip token s
    s = 0
    report.tick(0)
    while s <= last:
        row = s // nt
        b0, b1 = row * nt, (row + 1) * nt
        if row in whole_rows:
            for t in (t for t in masked if b0 <= t < b1):
                if t > b0:
                    h = decode_step(model, cache, dec[:, 1 + b0 : 1 + b1], 1 + b0)[:, t - 1 - b0]
                sample_at(t, h)
            if b1 <= last:
                h = decode_step(model, cache, dec[:, 1 + b0 : 1 + b1], 1 + b0)[:, -1]
            s = b1
            report.tick(done)
            continue
        if mask_s[s]:
            sample_at(s, h)
            if s == last:
                break
        e = s + 1
        while e < b1 and not mask_s[e]:
            e += 1
        h = decode_step(model, cache, dec[:, 1 + s : 1 + e], 1 + s)[:, -1]
        s = e
        if s % nt == 0 or mask_s[s - 1]:
            report.tick(done)
    report.tick(done)
    return to_raster(dec[:, 1:], cfg.block_h, cfg.block_w)[:, :length]


@torch.no_grad()
def sample_tokens_reference(
    model: ASSET,
    image_ids: torch.Tensor,
    cond_ids: torch.Tensor,
    token_mask: torch.Tensor,
    num_samples: int,
    guidance: Guidance | None = None,
    top_k: int | None = 100,
    temperature: float = 1.0,
    generator: Generators = None,
) -> torch.Tensor:
    """Same contract as sample_tokens; one full teacher-forced pass per sampled token."""
    cfg = model.cfg
    ids, cond, enc_in, mask_s = _prepare(model, image_ids, cond_ids, token_mask, num_samples)
    if guidance is not None:
        guidance = guidance.expand(num_samples)
    strip = to_strip(ids, cfg.block_h, cfg.block_w)
    for s in torch.nonzero(mask_s).flatten().tolist():
        logits, _ = model.forward_strip(enc_in, cond, to_raster(strip, cfg.block_h, cfg.block_w), guidance)
        strip[:, s] = draw(logits[:, s], top_k, temperature, generator)
    return to_raster(strip, cfg.block_h, cfg.block_w)
