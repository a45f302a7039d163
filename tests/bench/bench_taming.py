"""Taming Transformers: the cached sliding-window sampler against the official full-recompute loop, and
`sgraffito translate` end to end with the demo model when it exists.

Sampler. 32x48 tokens (a 512x768 px image), a 16x16 window (block 512), one candidate, top-k 100, torch with one
thread (the runtime's setting for sampling chains), random weights:
- "demo size": vocab 512, 4 layers, 4 heads, 128 wide (no demo-taming-landscape weights exist yet, so random
  weights at the size a demo would have); both samplers run the whole grid and must return identical tokens;
- "official width": S-FLCKR's vocab 1024, 16 heads, 1024 wide, with 1 of its 24 layers: both paths' time is
  linear in the depth (every layer does the same work), and 24 layers on this 2-core machine would take hours
  for the reference. The reference's cost per token does not depend on the position (always 511 tokens), so it
  is timed on the first REF_STEPS tokens; the fast path runs the whole grid; tokens are compared on that prefix.
`forward_positions_ratio` is the bound that exact reuse allows: token positions the reference computes over
those the cached sampler computes (engine.models.taming_sampling.forward_tokens). In the interior of a large
grid every target has its own window (the official rule moves the window with the target), so the prefix up
to the target must be recomputed once per token: about 1.3x there, more near the borders and with several
candidates (which share the seg part).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engine.models.taming import GPT, GPTConfig
from engine.models.taming_sampling import forward_tokens, sample_fast, sample_reference

H, W = 32, 48
REF_STEPS = 48


def _gpt(**kw) -> GPT:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(block_size=512, **kw)).eval()
    with torch.no_grad():
        for p in gpt.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return gpt


def _time(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def _sampler_rows(label: str, gpt: GPT, ref_steps: int | None) -> list[dict]:
    cond = torch.randint(0, gpt.config.vocab_size, (H, W), generator=torch.Generator().manual_seed(1))
    gen = lambda: [torch.Generator().manual_seed(7)]  # noqa: E731
    fast, t_fast = _time(lambda: sample_fast(gpt, cond, 1, generator=gen()))
    ref, t_ref = _time(lambda: sample_reference(gpt, cond, 1, generator=gen(), steps=ref_steps))
    n_ref = ref_steps or H * W
    same = torch.equal(fast.reshape(-1)[:n_ref], ref.reshape(-1)[:n_ref])
    fast_rate, ref_rate = H * W / t_fast, n_ref / t_ref
    cfg = gpt.config
    note = (f"{H}x{W} tokens, window 16, 1 candidate, {cfg.n_layer} layer(s) x {cfg.n_embd} wide, {cfg.n_head} "
            f"heads, 1 torch thread; reference on {'all' if ref_steps is None else f'the first {n_ref}'} tokens")
    return [
        {"name": f"sampler_{label}_fast_tokens_per_s", "value": fast_rate, "unit": "tok/s", "target": None,
         "note": note},
        {"name": f"sampler_{label}_reference_tokens_per_s", "value": ref_rate, "unit": "tok/s", "target": None,
         "note": note},
        {"name": f"sampler_{label}_speedup", "value": fast_rate / ref_rate, "unit": "x", "target": ">= 10",
         "note": note},
        {"name": f"sampler_{label}_identical_tokens", "value": float(same), "unit": "bool", "target": "== 1",
         "note": f"fast vs reference on {n_ref} tokens, same seed"},
    ]


def _translate_rows() -> list[dict]:
    from engine.model_store import find_model

    try:
        find_model("demo-taming-landscape", "taming")
    except Exception:
        return [{"name": "translate_1024x512_2_candidates_s", "value": float("nan"), "unit": "s", "target": None,
                 "note": "no demo-taming-landscape weights shipped yet: not measured"}]
    from PIL import Image

    from engine.data.landscapes import generate_scene

    work = Path(tempfile.mkdtemp(prefix="bench-taming-"))
    try:
        scene = generate_scene(12345, 512)
        Image.fromarray(np.asarray(scene.labels, np.uint8), "L").save(work / "map.png")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "app", "translate", str(work / "map.png"), "--model",
                        "demo-taming-landscape", "--size", "1024x512", "--samples", "2", "--out", str(work / "out"),
                        "--device", "cpu"], check=True, capture_output=True)
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [{"name": "translate_1024x512_2_candidates_s", "value": seconds, "unit": "s", "target": None,
             "note": "sgraffito translate --model demo-taming-landscape --size 1024x512 --samples 2, whole process"}]


def run() -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        counts = forward_tokens(H, W)
        rows = [{"name": "forward_positions_ratio", "value": counts["reference"] / counts["fast"], "unit": "x",
                 "target": None, "note": f"{H}x{W} tokens, window 16: token positions the reference computes over "
                                         f"those the cached sampler computes ({counts['windows']} distinct windows)"}]
        rows += _sampler_rows("demo_size", _gpt(vocab_size=512, n_layer=4, n_head=4, n_embd=128), None)
        rows += _sampler_rows("official_width", _gpt(vocab_size=1024, n_layer=1, n_head=16, n_embd=1024), REF_STEPS)
    finally:
        torch.set_num_threads(threads)
    return rows + _translate_rows()
