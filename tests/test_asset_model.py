"""ASSET transformer: blocked SGA against a dense log-multiplicity oracle, causality, the cached sampler
against the full-recompute reference, and the official checkpoint key layout."""

import math

import pytest
import torch

from engine.models.asset import (
    ASSET,
    N_FULL_CAUSAL,
    ASSETAttention,
    ASSETConfig,
    Guidance,
    config_from_state_dict,
    strip_permutation,
    to_raster,
    to_strip,
)
from engine.models.asset_sampling import sample_tokens, sample_tokens_reference

TINY = dict(vocab_size=40, d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, cond_vocab_size=24)


def tiny(**kw) -> ASSET:
    torch.manual_seed(0)
    model = ASSET(ASSETConfig(**{**TINY, **kw})).eval()
    with torch.no_grad():  # larger weights than BART's init, so attention is far from uniform
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def random_guidance(cfg, batch, gen, reference_rows_5_6=True):
    """Guided blocks as the official rules allow them: never a sliding neighbour of a bidirectional row;
    causal rows >= 7 pick from 0..i-3, rows 5 and 6 from 0..i (reference) or 0..i-3."""
    nb, h, ld = cfg.num_blocks, cfg.decoder_attention_heads, cfg.decoder_layers

    def full(nl):
        out = torch.empty(nl, batch, h, nb, 3, dtype=torch.long)
        for i in range(nb):
            allowed = torch.tensor([j for j in range(nb) if abs(j - i) > 1])
            out[..., i, :] = allowed[torch.randint(len(allowed), (nl, batch, h, 3), generator=gen)]
        return out

    causal = torch.empty(ld, batch, h, nb - N_FULL_CAUSAL, 3, dtype=torch.long)
    for r, i in enumerate(range(N_FULL_CAUSAL, nb)):
        top = i if (reference_rows_5_6 and i < 7) else i - 2
        picks = torch.stack([torch.randperm(top, generator=gen)[:3] for _ in range(ld * batch * h)])
        causal[..., r, :] = picks.view(ld, batch, h, 3)
    if reference_rows_5_6:  # make sure the quirk is exercised: row 5 of layer 0, head 0 picks itself
        causal[0, :, 0, 0] = torch.tensor([5, 4, 1])
    return Guidance(full(cfg.encoder_layers), causal, full(ld))


# ---------------------------------------------------------------- dense oracle (tests only)


def multiplicity_full(guided, nb, nt):
    """(B,H,L,L) count of how often each key token appears in each query's key list (bidirectional rows)."""
    b, h = guided.shape[:2]
    rows = torch.arange(nb)
    m = ((rows.view(-1, 1) - rows.view(1, -1)).abs() <= 1).float().expand(b, h, nb, nb).clone()
    m.scatter_add_(-1, guided, torch.ones(guided.shape))
    return m.repeat_interleave(nt, 2).repeat_interleave(nt, 3)


def multiplicity_causal(guided, nb, nt):
    """(B,H,1+L,1+L) over [START] + strip tokens: [START] once, rows 0..4 every earlier block, rows >= 5
    blocks i-2, i-1 and the guided blocks (each occurrence counted), the own block up to the query."""
    b, h = guided.shape[:2]
    rows = torch.arange(nb)
    diff = rows.view(-1, 1) - rows.view(1, -1)
    early = (rows.view(-1, 1) < N_FULL_CAUSAL) & (diff > 0)
    late = (rows.view(-1, 1) >= N_FULL_CAUSAL) & (diff >= 1) & (diff <= 2)
    blocks = (early | late).float().expand(b, h, nb, nb).clone()
    blocks[:, :, N_FULL_CAUSAL:].scatter_add_(-1, guided, torch.ones(guided.shape))
    length = nb * nt
    m = torch.zeros(b, h, 1 + length, 1 + length)
    m[:, :, :, 0] = 1
    m[:, :, 1:, 1:] = blocks.repeat_interleave(nt, 2).repeat_interleave(nt, 3)
    m[:, :, 1:, 1:] += torch.block_diag(*[torch.ones(nt, nt).tril()] * nb)
    return m


def dense_with_multiplicity(att: ASSETAttention, x, kv, mult):
    q, k, v = att.heads(att.q_proj(x)), att.heads(att.k_proj(kv)), att.heads(att.v_proj(kv))
    scores = (q @ k.transpose(-1, -2)) * att.head_dim**-0.5 + torch.log(mult)
    return att.merge(scores.softmax(-1) @ v)


def oracle_attention(monkeypatch):
    """Replace the blocked SGA methods by dense L x L attention with a log-multiplicity bias."""

    def full(self, x, kv, guided, nb):
        return dense_with_multiplicity(self, x, kv, multiplicity_full(guided, nb, x.shape[1] // nb))

    def causal(self, x, guided, nb):
        return dense_with_multiplicity(self, x, x, multiplicity_causal(guided, nb, (x.shape[1] - 1) // nb))

    def cross(self, x, kv, guided, nb):
        nt = kv.shape[1] // nb
        m = torch.cat([torch.ones(*guided.shape[:2], 1, kv.shape[1]), multiplicity_full(guided, nb, nt)], 2)
        return dense_with_multiplicity(self, x, kv, m)

    monkeypatch.setattr(ASSETAttention, "sga_full", full)
    monkeypatch.setattr(ASSETAttention, "sga_causal", causal)
    monkeypatch.setattr(ASSETAttention, "sga_cross", cross)


def tokens(cfg, side, batch, gen):
    length = side * side
    ids = torch.randint(cfg.vocab_size, (batch, length), generator=gen)
    cond = torch.randint(cfg.cond_vocab_size, (batch, length), generator=gen)
    mask = torch.zeros(length, dtype=torch.bool)
    mask[length // 3 : length // 2] = True
    return ids.masked_fill(mask, cfg.mask_token), cond, ids


# ------------------------------------------------------------------------------------ tests


def test_strip_order_is_raster_at_16x16_and_blocks_of_2x8_at_32x32():
    assert torch.equal(strip_permutation(16), torch.arange(256))
    perm = strip_permutation(32)
    assert perm[:16].tolist() == [*range(0, 8), *range(32, 40)]  # block 0 = rows 0-1, columns 0-7
    x = torch.randn(2, 1024, 3)
    assert torch.equal(to_raster(to_strip(x)), x)


@pytest.mark.parametrize("side", [32, 64])
def test_blocked_sga_equals_dense_oracle(side, monkeypatch):
    small = dict(encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2)
    model = tiny(**small) if side == 64 else tiny()
    cfg = model.cfg
    batch = 1
    gen = torch.Generator().manual_seed(side)
    inp, cond, ids = tokens(cfg, side, batch, gen)
    guidance = random_guidance(cfg, batch, gen)
    with torch.no_grad():
        blocked, _ = model.forward_strip(inp, cond, ids, guidance)
        oracle_attention(monkeypatch)
        dense, _ = model.forward_strip(inp, cond, ids, guidance)
    assert blocked.abs().max() > 1
    torch.testing.assert_close(blocked, dense, atol=1e-5, rtol=1e-5)


def test_dense_oracle_is_sensitive_to_duplicate_keys(monkeypatch):
    """Counting a duplicated guided block once instead of twice changes the output: the oracle test above
    would catch an implementation that deduplicates keys."""
    model = tiny()
    cfg = model.cfg
    gen = torch.Generator().manual_seed(3)
    inp, cond, ids = tokens(cfg, 32, 1, gen)
    guidance = random_guidance(cfg, 1, gen)
    with torch.no_grad():
        with_dup, _ = model.forward_strip(inp, cond, ids, guidance)
        guidance.causal[0, :, 0, 0] = torch.tensor([0, 1, 2])  # row 5 no longer repeats blocks 4 and 5
        without, _ = model.forward_strip(inp, cond, ids, guidance)
    assert (with_dup[:, 1 + 5 * 16 : 1 + 6 * 16] - without[:, 1 + 5 * 16 : 1 + 6 * 16]).abs().max() > 1e-3


def _future_gradient(model, guidance, side=32):
    cfg = model.cfg
    gen = torch.Generator().manual_seed(7)
    inp, cond, ids = tokens(cfg, side, 1, gen)
    memory, _ = model.encoder(inp, cond, guidance)
    emb = model.decoder.embed(model.decoder_ids(ids), model.decoder.positions(ids.shape[1])).detach().requires_grad_()
    x = emb
    for i, layer in enumerate(model.decoder.layers):
        cg = None if guidance is None else guidance.causal[i]
        xg = None if guidance is None else guidance.cross[i]
        x, _, _ = layer(x, memory.detach(), cg, xg)
    return x, emb


@pytest.mark.parametrize("sparse", [False, True])
def test_decoder_is_causal(sparse):
    """The output at decoder position p has zero gradient w.r.t. every later input position."""
    model = tiny()
    gen = torch.Generator().manual_seed(1)
    side = 32 if sparse else 16
    guidance = random_guidance(model.cfg, 1, gen, reference_rows_5_6=False) if sparse else None
    x, emb = _future_gradient(model, guidance, side)
    for p in (0, 17, 5 * 16 + 3, 6 * 16 + 9, 40 * 16 + 15) if sparse else (0, 5, 100, 200):
        (grad,) = torch.autograd.grad(x[0, p].sum(), emb, retain_graph=True)
        assert grad[0, p + 1 :].abs().max() == 0, p
        assert grad[0, : p + 1].abs().max() > 0, p


def test_reference_rows_5_6_leak_own_block():
    """With the official quirk, a row-5 token whose guided set contains block 5 sees later tokens of block 5
    (and only of its own block)."""
    model = tiny()
    gen = torch.Generator().manual_seed(1)
    guidance = random_guidance(model.cfg, 1, gen, reference_rows_5_6=True)
    x, emb = _future_gradient(model, guidance)
    p = 1 + 5 * 16 + 3
    (grad,) = torch.autograd.grad(x[0, p].sum(), emb)
    assert grad[0, p + 1 : 1 + 6 * 16].abs().max() > 0
    assert grad[0, 1 + 6 * 16 :].abs().max() == 0


def _mask(side, rows, cols):
    m = torch.zeros(side, side, dtype=torch.bool)
    m[rows, cols] = True
    return m.flatten()


@pytest.mark.parametrize("reference_rows_5_6", [True, False])
def test_cached_sampler_matches_reference_sga(reference_rows_5_6):
    model = tiny()
    cfg = model.cfg
    gen = torch.Generator().manual_seed(11)
    _, cond, ids = tokens(cfg, 32, 1, gen)
    guidance = random_guidance(cfg, 3, gen, reference_rows_5_6)
    # an irregular hole over blocks 0, 5, 6 (rows 2-3) and the middle, plus a stray token
    mask = _mask(32, slice(2, 4), slice(6, 19)) | _mask(32, slice(13, 15), slice(9, 15)) | _mask(32, 30, 31)
    kw = dict(num_samples=3, guidance=guidance, top_k=8, temperature=1.3)
    fast = sample_tokens(model, ids[0], cond[0], mask, generator=torch.Generator().manual_seed(5), **kw)
    slow = sample_tokens_reference(model, ids[0], cond[0], mask, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(fast, slow)
    assert torch.equal(fast[:, ~mask], ids[:, ~mask].expand(3, -1))
    assert (fast[:, mask] != ids[:, mask]).float().mean() > 0.5  # the hole was actually resampled
    assert not torch.equal(fast[0], fast[1])  # candidates differ
    again = sample_tokens(model, ids[0], cond[0], mask, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(fast, again)


def test_cached_sampler_matches_reference_dense_16x16():
    model = tiny()
    gen = torch.Generator().manual_seed(2)
    _, cond, ids = tokens(model.cfg, 16, 1, gen)
    mask = _mask(16, slice(8, 16), slice(0, 16)) | _mask(16, 2, 5)
    kw = dict(num_samples=2, top_k=None, temperature=1.0)
    fast = sample_tokens(model, ids[0], cond[0], mask, generator=torch.Generator().manual_seed(9), **kw)
    slow = sample_tokens_reference(model, ids[0], cond[0], mask, generator=torch.Generator().manual_seed(9), **kw)
    assert torch.equal(fast, slow)


def test_sampler_reports_progress_and_can_be_cancelled():
    from engine.errors import Cancelled

    class Ctx:
        def __init__(self, stop_after):
            self.seen, self.stop_after = [], stop_after

        def progress(self, fraction, stage, preview=None):
            self.seen.append(fraction)

        def check_cancelled(self):
            if len(self.seen) >= self.stop_after:
                raise Cancelled("cancelled")

    model = tiny()
    gen = torch.Generator().manual_seed(2)
    _, cond, ids = tokens(model.cfg, 16, 1, gen)
    mask = _mask(16, slice(4, 12), slice(0, 16))
    ctx = Ctx(10**9)
    sample_tokens(model, ids[0], cond[0], mask, 1, ctx=ctx, span=(0.2, 0.6))
    assert ctx.seen[0] == pytest.approx(0.2) and ctx.seen[-1] == pytest.approx(0.6)
    assert len(ctx.seen) >= 8  # at least once per token row of the hole
    assert ctx.seen == sorted(ctx.seen)
    with pytest.raises(Cancelled):
        sample_tokens(model, ids[0], cond[0], mask, 1, ctx=Ctx(3))


def test_guidance_from_guiding_model_follows_official_penalties():
    model = tiny()
    cfg = model.cfg
    gen = torch.Generator().manual_seed(4)
    inp, cond, ids = tokens(cfg, 16, 2, gen)
    g = model.guidance(inp, cond, ids)
    nb = cfg.num_blocks
    assert g.encoder.shape == (cfg.encoder_layers, 2, 4, nb, 3)
    assert g.causal.shape == (cfg.decoder_layers, 2, 4, nb - 5, 3)
    rows = torch.arange(nb).view(-1, 1)
    assert ((g.encoder - rows).abs() > 1).all() and ((g.cross - rows).abs() > 1).all()
    crows = torch.arange(5, nb).view(-1, 1)
    assert (g.causal[..., 2:, :] < crows[2:] - 2).all()  # rows >= 7: strictly before i-2
    assert (g.causal <= crows).all()  # never the future
    strict = model.guidance(inp, cond, ids, target=ASSETConfig(**{**TINY, "reference_rows_5_6": False}))
    assert (strict.causal < crows - 2).all()


def official_layout(cfg: ASSETConfig) -> dict[str, torch.Size]:
    """Key names and shapes of an official ASSET `transformer.` state dict, written out from the reference
    notes (asset_taming.md 6.2) rather than from our module."""
    d, f, v = cfg.d_model, cfg.encoder_ffn_dim, cfg.vocab_size
    keys = {}
    for name in ("shared", "encoder.embed_tokens", "decoder.embed_tokens"):
        keys[f"{name}.weight"] = (v + 2, d)
    for name in ("shared_pos", "encoder.embed_positions", "decoder.embed_positions"):
        keys[f"{name}.weight"] = (cfg.max_position_embeddings + 1, d)
    for name in ("shared_block", "encoder.embed_blocks", "decoder.embed_blocks"):
        keys[f"{name}.weight"] = (64, d)
    keys["encoder.embed_cond.weight"] = (cfg.cond_vocab_size, d)
    keys["lm_head.weight"] = (v, d)

    def attn(prefix):
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            keys[f"{prefix}.{p}.weight"] = (d, d)
            keys[f"{prefix}.{p}.bias"] = (d,)

    def ln(prefix):
        keys[f"{prefix}.weight"] = keys[f"{prefix}.bias"] = (d,)

    for side, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        ln(f"{side}.layernorm_embedding")
        for i in range(n):
            p = f"{side}.layers.{i}"
            if side == "encoder" or i == 0:
                keys[f"{p}.PEG_net.proj.0.weight"] = (d, 1, 5, 5)
                keys[f"{p}.PEG_net.proj.0.bias"] = (d,)
            attn(f"{p}.self_attn")
            ln(f"{p}.self_attn_layer_norm")
            if side == "decoder":
                attn(f"{p}.encoder_attn")
                ln(f"{p}.encoder_attn_layer_norm")
            keys[f"{p}.fc1.weight"], keys[f"{p}.fc1.bias"] = (f, d), (f,)
            keys[f"{p}.fc2.weight"], keys[f"{p}.fc2.bias"] = (d, f), (d,)
            ln(f"{p}.final_layer_norm")
    return {k: torch.Size(s) for k, s in keys.items()}


def test_official_key_layout_loads_strictly():
    cfg = ASSETConfig(vocab_size=50, d_model=32, encoder_layers=7, decoder_layers=15, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64)
    layout = official_layout(cfg)
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=gen) for k, s in layout.items()}
    for group in (("shared", "encoder.embed_tokens", "decoder.embed_tokens"),):
        for k in group[1:]:
            sd[f"{k}.weight"] = sd[f"{group[0]}.weight"]
    inferred = config_from_state_dict(sd, encoder_attention_heads=2, decoder_attention_heads=2)
    assert inferred == cfg
    model = ASSET(inferred)
    assert {k: v.shape for k, v in model.state_dict().items()} == layout
    model.load_state_dict(sd, strict=True)
    assert torch.equal(model.decoder.embed_tokens.weight, sd["shared.weight"])
    assert model.encoder.embed_tokens is model.shared and model.decoder.embed_blocks is model.shared_block
    assert sum(p.numel() for p in model.parameters()) == sum(
        v.numel() for k, v in layout.items() if not k.startswith(("encoder.embed_t", "decoder.embed_", "encoder.embed_p", "encoder.embed_b"))
    )


def test_full_size_parameter_count_matches_official():
    with torch.device("meta"):
        model = ASSET(ASSETConfig())
    assert len(model.state_dict()) == 533
    assert sum(p.numel() for p in model.parameters()) == 343_817_216
    assert math.isclose(model.cfg.d_model / model.cfg.encoder_attention_heads, 64)
