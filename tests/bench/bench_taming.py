"""Taming Transformers: the cached sliding-window sampler against the official full-recompute loop, and
`sgraffito translate` end to end with the demo model when it exists.

Sampler. 32x48 tokens (a 512x768 px image), a 16x16 window (block 512), one candidate, top-k 100, torch with one
thread (the runtime's setting for sampling chains), random weights:
- "demo size": the shipped demo-taming-landscape transformer (vocab 512, 6 layers, 6 heads, 192 wide; random
  weights of that size if the folder is missing); both samplers run the whole grid and must return identical tokens;
- "official width": S-FLCKR's vocab 1024, 16 heads, 1024 wide, with 1 of its 24 layers: both paths' time is
  linear in the depth (every layer does the same work), and 24 layers on this 2-core machine would take hours
  for the reference. The reference's cost per token does not depend on the position (always 511 tokens), so it
  is timed on the first REF_STEPS tokens; the fast path runs the whole grid; tokens are compared on that prefix.
Official size, token steps: the full S-FLCKR transformer (24 layers, random weights) on the two kinds of step
the cached sampler takes, in fp32 and in the reduced precisions this CPU runs (int8 weights with dynamically
quantized activations, bf16 where oneDNN has bf16 kernels: engine.precision):
a standing window (one new token after a cached prefix: the border rows and columns, where the step streams
every weight once for one position) and a new window (an interior target's own window: the seg codes and the
image codes before the target, 392 positions, in one pass). Each against the weight-streaming floor of a step
(the transformer's weight bytes over the measured memory bandwidth, tests/bench/bandwidth.py); the new-window
step computes 392 positions, so it is bound by arithmetic, not by the weights, and sits far above that floor.
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
OFFICIAL = dict(vocab_size=1024, n_layer=24, n_head=16, n_embd=1024)  # S-FLCKR's transformer
BYTES_PER_WEIGHT = {"fp32": 4, "int8": 1, "bf16": 2, "fp16": 2}


def _demo_gpt() -> GPT:
    """The shipped demo's transformer, or random weights of its size without it."""
    from engine.model_store import find_model
    from engine.pipelines.taming import load_taming

    try:
        return load_taming(find_model("demo-taming-landscape", "taming").path)[0].transformer
    except Exception:  # a checkout without the demo: time the same size
        return _gpt(vocab_size=512, n_layer=6, n_head=6, n_embd=192)


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


def step_weight_bytes(gpt: GPT, bytes_per_weight: float = 4.0) -> float:
    """Weight bytes one token step reads: every block, the final norm and the head (the embeddings are
    looked up, one row per token)."""
    return sum(p.numel() for m in (gpt.blocks, gpt.ln_f, gpt.head) for p in m.parameters()) * bytes_per_weight


def _sampler_rows(label: str, gpt: GPT, ref_steps: int | None, floor_gbs: float | None = None) -> list[dict]:
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
    rows = [
        {"name": f"sampler_{label}_fast_tokens_per_s", "value": fast_rate, "unit": "tok/s", "target": None,
         "note": note},
        {"name": f"sampler_{label}_reference_tokens_per_s", "value": ref_rate, "unit": "tok/s", "target": None,
         "note": note},
        {"name": f"sampler_{label}_speedup", "value": fast_rate / ref_rate, "unit": "x", "target": ">= 10",
         "note": note},
        {"name": f"sampler_{label}_identical_tokens", "value": float(same), "unit": "bool", "target": "== 1",
         "note": f"fast vs reference on {n_ref} tokens, same seed"},
    ]
    if floor_gbs is not None:
        from tests.bench.bandwidth import describe, floor_ms

        floor = floor_ms(step_weight_bytes(gpt), floor_gbs)
        rows.append({"name": f"sampler_{label}_floor_per_token_ms", "value": floor, "unit": "ms", "target": None,
                     "note": f"{step_weight_bytes(gpt) / 2**20:.0f} MiB of fp32 weights / {describe(floor_gbs)}"})
        for kind, rate in (("fast", fast_rate), ("reference", ref_rate)):
            rows.append({"name": f"sampler_{label}_{kind}_x_floor", "value": 1000 / rate / floor, "unit": "x",
                         "target": None, "note": f"{1000 / rate:.1f} ms per token over the floor"})
    return rows


def _step_rows(floor_gbs: float) -> list[dict]:
    """The official-size transformer's two kinds of token step, fp32 and int8 (module docstring)."""
    from engine.models.taming_sampling import reduced_precision
    from engine.precision import supported
    from tests.bench.bandwidth import describe, floor_ms

    gpt = _gpt(**OFFICIAL)
    models = {precision: reduced_precision(gpt, precision) for precision in supported("cpu")}
    floors = {kind: floor_ms(step_weight_bytes(gpt, BYTES_PER_WEIGHT[kind]), floor_gbs) for kind in models}
    n2 = 256
    prefix = torch.randint(0, 1024, (1, n2 + 8 * 16 + 8), generator=torch.Generator().manual_seed(3))
    token = prefix[:, -1:]
    times: dict[tuple[str, str], float] = {}
    with torch.no_grad():
        for kind, model in models.items():
            (hidden, kv), times["new window", kind] = _time(lambda: model.extend(prefix))
            model.head(hidden[:, -1])
            steps = []
            for _ in range(3):
                (hidden, _), seconds = _time(lambda: model.extend(token, kv))
                model.head(hidden[:, -1])
                steps.append(seconds)
            times["standing window", kind] = min(steps)
    cfg = gpt.config
    rows = [{"name": f"official_step_floor_{kind}_ms", "value": floor, "unit": "ms", "target": None,
             "note": f"{cfg.n_layer} layers x {cfg.n_embd} wide: "
                     f"{step_weight_bytes(gpt, BYTES_PER_WEIGHT[kind]) / 2**20:.0f} MiB of {kind} weights / "
                     f"{describe(floor_gbs)}"}
            for kind, floor in floors.items()]
    for (step, kind), seconds in times.items():
        what = "one token after a 392-position cache" if step == "standing window" else "392 positions in one pass"
        label = step.replace(" ", "_")
        rows.append({"name": f"official_{label}_step_{kind}_ms", "value": seconds * 1000, "unit": "ms",
                     "target": None, "note": f"{what}, 1 candidate, 1 thread"})
        rows.append({"name": f"official_{label}_step_{kind}_x_floor", "value": seconds * 1000 / floors[kind],
                     "unit": "x", "target": None, "note": f"over the {kind} floor ({floors[kind]:.1f} ms)"})
    for step in ("standing window", "new window"):
        for kind in models:
            if kind != "fp32":
                rows.append({"name": f"official_{step.replace(' ', '_')}_{kind}_speedup", "unit": "x",
                             "target": None, "value": times[step, "fp32"] / times[step, kind],
                             "note": f"fp32 time / {kind} time"})
    return rows


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
    from tests.bench.bandwidth import measure_bandwidth_gbs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        counts = forward_tokens(H, W)
        rows = [{"name": "forward_positions_ratio", "value": counts["reference"] / counts["fast"], "unit": "x",
                 "target": None, "note": f"{H}x{W} tokens, window 16: token positions the reference computes over "
                                         f"those the cached sampler computes ({counts['windows']} distinct windows)"}]
        rows += _sampler_rows("demo_size", _demo_gpt(), None)
        gbs = measure_bandwidth_gbs()
        rows += _sampler_rows("official_width", _gpt(vocab_size=1024, n_layer=1, n_head=16, n_embd=1024), REF_STEPS,
                              gbs)
        rows += _step_rows(gbs)
    finally:
        torch.set_num_threads(threads)
    return rows + _translate_rows()
