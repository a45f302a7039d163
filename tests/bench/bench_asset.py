"""ASSET: Sparsified Guided Attention against dense attention, the cached sampler against the full-recompute
reference, and `sgraffito edit` end to end.

Attention. The core of one decoder causal self-attention layer (d_model 512, 8 heads, batch 1) over
[START] + L tokens with random guidance, from projected q/k/v to the per-head output (the projections are
identical for both and left out). "dense" is the dense formulation of the same attention pattern: the (H, 1+L, 1+L)
score matrix plus a log-multiplicity mask, softmax, times V (what a dense implementation of SGA, or the
official BART attention, materialises). "SGA" is engine.models.asset's blocked path. Each variant runs in its
own subprocess (glibc's mmap threshold fixed at 128 kB, so freed tensors leave RSS); memory = the peak RSS
(VmHWM, reset through /proc/self/clear_refs just before the call) minus the RSS before it, next to the
analytic size of the score tensors (dense: H x (1+L)^2 floats; SGA: H x L x (1+6 L/64) floats).
tracemalloc does not see torch's allocations, so it is not used. Linux only.

Sampler. A model of the demo's size at 32x32 tokens, 4 candidates, a 128-token hole; tokens/s counts sampled
tokens of all candidates. Both paths run side by side in one process and must return identical tokens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from engine.models.asset import ASSET, ASSETAttention, ASSETConfig, N_FULL_CAUSAL, sga_causal_core

D_MODEL, HEADS = 512, 8
DEMO = dict(vocab_size=512, cond_vocab_size=512, d_model=128, encoder_layers=2, decoder_layers=4,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512,
            reference_rows_5_6=False)


def _causal_guidance(length: int, gen) -> torch.Tensor:
    nb = 64
    rows = [torch.stack([torch.randperm(i - 2, generator=gen)[:3] for _ in range(HEADS)])
            for i in range(N_FULL_CAUSAL, nb)]
    return torch.stack(rows, 1)[None]  # 1, H, nb-5, 3


def _dense_multiplicity_mask(guided: torch.Tensor, length: int) -> torch.Tensor:
    """(1, H, 1+L, 1+L) log-multiplicity mask of the SGA causal pattern (the dense formulation)."""
    nb, nt = 64, length // 64
    rows = torch.arange(nb)
    diff = rows.view(-1, 1) - rows.view(1, -1)
    early = (rows.view(-1, 1) < N_FULL_CAUSAL) & (diff > 0)
    late = (rows.view(-1, 1) >= N_FULL_CAUSAL) & (diff >= 1) & (diff <= 2)
    blocks = (early | late).float().expand(1, HEADS, nb, nb).clone()
    blocks[:, :, N_FULL_CAUSAL:].scatter_add_(-1, guided, torch.ones(guided.shape))
    m = torch.zeros(1, HEADS, 1 + length, 1 + length)
    m[:, :, :, 0] = 1
    m[:, :, 1:, 1:] = blocks.repeat_interleave(nt, 2).repeat_interleave(nt, 3)
    m[:, :, 1:, 1:] += torch.block_diag(*[torch.ones(nt, nt).tril()] * nb)
    return m.log_()


def _status_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS and return that RSS in kB; building the
    inputs (the dense mask above all) must not hide the attention call's own peak."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmRSS")


def _attention_worker(kind: str, length: int) -> dict:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    att = ASSETAttention(D_MODEL, HEADS).eval()
    x = torch.randn(1, 1 + length, D_MODEL, generator=gen)
    guided = _causal_guidance(length, gen)
    mask = _dense_multiplicity_mask(guided, length) if kind == "dense" else None

    with torch.no_grad():  # the projections are the same for both; time and measure the attention itself
        q, k, v = (att.heads(p(x)).contiguous() for p in (att.q_proj, att.k_proj, att.v_proj))

    def run():
        with torch.no_grad():
            if kind == "sga":
                return sga_causal_core(q, k, v, guided, 64)
            scores = (q @ k.transpose(-1, -2)) * att.head_dim**-0.5 + mask
            return scores.softmax(-1) @ v

    before = _reset_peak_rss()
    run()
    grown = _status_kb("VmHWM") - before
    times = []
    for _ in range(3):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return {"ms": 1000 * min(times), "peak_mb": grown / 1024}


def _attention_rows() -> list[dict]:
    rows, results = [], {}
    for length in (1024, 4096):
        for kind in ("dense", "sga"):
            out = subprocess.run([sys.executable, "-m", "tests.bench.bench_asset", kind, str(length)],
                                 capture_output=True, text=True, check=True,
                                 env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
            results[kind, length] = json.loads(out.stdout.strip().splitlines()[-1])
        nt = length // 64
        analytic = {"dense": HEADS * (1 + length) ** 2 * 4 / 2**20, "sga": HEADS * length * (1 + 6 * nt) * 4 / 2**20}
        for kind in ("dense", "sga"):
            r = results[kind, length]
            rows.append({"name": f"attention_{kind}_ms_{length}", "value": r["ms"], "unit": "ms", "target": None,
                         "note": f"decoder causal self-attention core (q/k/v given), d {D_MODEL}, {HEADS} heads, batch 1, 1 thread"})
            rows.append({"name": f"attention_{kind}_peak_rss_mb_{length}", "value": r["peak_mb"], "unit": "MB",
                         "target": None, "note": f"peak RSS growth over the call, own process; analytic score tensors "
                                                 f"{analytic[kind]:.1f} MB"})
        target = ">= 8" if length == 4096 else None
        rows.append({"name": f"attention_time_ratio_{length}", "unit": "x", "target": target,
                     "value": results["dense", length]["ms"] / results["sga", length]["ms"],
                     "note": "dense / SGA, side by side in one run"})
        rows.append({"name": f"attention_memory_ratio_{length}", "unit": "x", "target": target,
                     "value": results["dense", length]["peak_mb"] / max(results["sga", length]["peak_mb"], 1e-3),
                     "note": f"dense / SGA peak RSS growth; analytic score-tensor ratio "
                             f"{analytic['dense'] / analytic['sga']:.1f}x"})
    return rows


def _sampler_rows() -> list[dict]:
    from engine.models.asset_sampling import sample_tokens, sample_tokens_reference

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ASSET(ASSETConfig(**DEMO)).eval()
    cfg = model.cfg
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(cfg.vocab_size, (1024,), generator=gen)
    cond = torch.randint(cfg.cond_vocab_size, (1024,), generator=gen)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[20:24, :] = True  # 128 tokens: 4 token rows across the grid
    mask = mask.flatten()
    g_ids = torch.randint(cfg.vocab_size, (4, 256), generator=gen)
    guide = model.guidance(g_ids, cond[:256].expand(4, -1), g_ids)
    k = 4
    timings, outs = {}, {}
    for name, fn in (("cached", sample_tokens), ("reference", sample_tokens_reference)):
        started = time.perf_counter()
        outs[name] = fn(model, ids, cond, mask, k, guidance=guide, generator=torch.Generator().manual_seed(3))
        timings[name] = time.perf_counter() - started
    same = torch.equal(outs["cached"], outs["reference"])
    n = int(mask.sum()) * k
    note = f"32x32 tokens, {int(mask.sum())}-token hole, {k} candidates, demo-size model, 1 thread; identical: {same}"
    return [
        {"name": "sampler_cached_tokens_per_s", "value": n / timings["cached"], "unit": "tok/s", "target": None, "note": note},
        {"name": "sampler_reference_tokens_per_s", "value": n / timings["reference"], "unit": "tok/s", "target": None,
         "note": note},
        {"name": "sampler_speedup", "value": timings["reference"] / timings["cached"], "unit": "x", "target": ">= 8",
         "note": note},
    ]


def _edit_rows() -> list[dict]:
    import tempfile
    from pathlib import Path

    from PIL import Image

    from engine.model_store import find_model
    from tests.bench._child import run_child
    from engine.data.landscapes import EVAL_SEEDS, generate_scene, ids

    model = find_model("demo-asset-landscape", "asset").path  # raises (a FAILED module) when not shipped
    if not (model / "sga.safetensors").is_file():
        raise FileNotFoundError(f"{model}: the demo ASSET model has no sga.safetensors")
    scene = generate_scene(int(EVAL_SEEDS[0]), 512)
    after = scene.labels.copy()
    after[256:, 256:] = ids().sea  # a quarter of the photo
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        Image.fromarray(scene.image).save(tmp / "photo.png")
        Image.fromarray(scene.labels.astype(np.uint8)).save(tmp / "labels.png")
        Image.fromarray(after.astype(np.uint8)).save(tmp / "new.png")
        seconds = {}
        for margin in ("4", "full"):  # the default window decode, then the official whole-image decode
            started = time.perf_counter()
            run_child([sys.executable, "-m", "app", "edit", str(tmp / "photo.png"), "--labels",
                       str(tmp / "labels.png"), "--new-labels", str(tmp / "new.png"), "--samples", "4",
                       "--decode-margin", margin, "--out", str(tmp / f"out-{margin}")])
            seconds[margin] = time.perf_counter() - started
    note = "sgraffito edit, 512x512 photo, bottom-right quarter -> sea, 4 candidates, demo model, whole process incl. start-up"
    return [{"name": "edit_512_quarter_4_candidates_s", "value": seconds["4"], "unit": "s", "target": "< 15",
             "note": note},
            {"name": "edit_512_quarter_4_candidates_full_decode_s", "value": seconds["full"], "unit": "s",
             "note": note + ", --decode-margin full (the official whole-image decode)"}]


def run() -> list[dict]:
    return _attention_rows() + _sampler_rows() + _edit_rows()


if __name__ == "__main__":
    if len(sys.argv) == 3:
        print(json.dumps(_attention_worker(sys.argv[1], int(sys.argv[2]))))
    else:
        for row in run():
            print(f"{row['name']:42s} {row['value']:10.2f} {row['unit']:5s} {row['target'] or '':6s} {row['note']}")
