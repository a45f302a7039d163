"""Official-size ASSET, ColTran and Taming transformers on a CUDA GPU: milliseconds per token step in fp32, under
bf16/fp16 autocast, and with the engines' reduced-precision weights (what `--precision bf16|fp16` runs).

    python -m tests.bench.gpu_official [--steps N] [--candidates K]

Random weights at the published sizes: ASSET d_model 1024 with 15 decoder layers at 32x32 tokens (a 512-px
edit); ColTran's core (engine.models.coltran.CoreConfig defaults) on a 64x64 gray image, a few rows of pixels;
Taming's GPT (engine.models.taming.GPTConfig defaults: 24 layers, d 1024) on a 16x16 token grid, a few dozen
tokens. One step is one sampled token (ASSET, Taming) or pixel (ColTran) for all K candidates. Next to each
time: the peak GPU memory of that run and, from the GPU's measured copy bandwidth (1 GiB device-to-device copy,
bytes read + written), the weight-streaming floor of a step and the ratio to it. Without CUDA it prints why and
exits 0. Not part of `make bench` (that runs on the CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

MODES = ("fp32", "autocast-bf16", "autocast-fp16", "weights-bf16", "weights-fp16")


def _sync():
    import torch

    torch.cuda.synchronize()


def gpu_bandwidth_gbs(size_bytes: int = 1 << 30, repeats: int = 5) -> float:
    """Device-to-device copy of `size_bytes`, bytes read + written, best of `repeats`, in GB/s."""
    import torch

    source = torch.ones(size_bytes // 4, device="cuda")
    target = torch.empty_like(source)
    target.copy_(source)
    best = float("inf")
    for _ in range(repeats):
        _sync()
        started = time.perf_counter()
        target.copy_(source)
        _sync()
        best = min(best, time.perf_counter() - started)
    del source, target
    return 2 * size_bytes / best / 1e9


def _dtype(mode: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode.rsplit("-", 1)[-1])


def _context(mode: str):
    import torch

    if mode.startswith("autocast"):
        return torch.autocast("cuda", _dtype(mode))
    return contextlib.nullcontext()


def _timed(step, steps: int) -> float:
    """Median ms of `step()` after two warm-up calls."""
    times = []
    for i in range(steps + 2):
        _sync()
        started = time.perf_counter()
        step(i)
        _sync()
        times.append(time.perf_counter() - started)
    times = sorted(times[2:])
    return 1000 * times[len(times) // 2]


def _weight_bytes(mode: str, parameters: int) -> int:
    """Autocast casts each weight once per autocast region and reuses the half copy, so it streams 2 bytes too."""
    return parameters * (4 if mode == "fp32" else 2)


def time_asset(mode: str, steps: int, candidates: int) -> tuple[float, int]:
    """ms per token step and the weight bytes a step reads (ASSET's step_weight_bytes)."""
    import torch

    from engine.models.asset import ASSET, ASSETConfig, decode_step, init_cache, step_weight_bytes
    from tests.bench.bench_asset import _official_guidance

    torch.manual_seed(0)
    model = ASSET(ASSETConfig()).eval().cuda()
    gen = torch.Generator().manual_seed(1)
    guidance = _official_guidance(model.cfg, gen).expand(candidates)
    guidance = type(guidance)(*(t.cuda() for t in (guidance.encoder, guidance.causal, guidance.cross)))
    precision = mode.split("-")[1] if mode.startswith("weights") else "fp32"
    memory = torch.randn(candidates, 1024, model.cfg.d_model, device="cuda")
    ids = torch.randint(model.cfg.vocab_size, (candidates, 1025), device="cuda")
    with torch.no_grad(), _context(mode):
        cache = init_cache(model, memory, guidance, precision)
        first = 1 + 20 * cache.nt

        def step(i):
            position = first + i
            hidden = decode_step(model, cache, ids[:, position : position + 1], position)[:, -1]
            cache.lm_head(hidden).argmax(-1)

        ms = _timed(step, steps)
    return ms, step_weight_bytes(model, "fp32" if mode == "fp32" else "bf16")


def time_taming(mode: str, steps: int, candidates: int) -> tuple[float, int]:
    import torch

    from engine.models import taming_sampling
    from engine.models.taming import GPT, GPTConfig

    torch.manual_seed(0)
    gpt = GPT(GPTConfig()).eval().cuda()
    parameters = sum(p.numel() for name, p in gpt.named_parameters() if "emb" not in name)
    if mode.startswith("weights"):
        gpt = taming_sampling.reduced_precision(gpt, mode.split("-")[1])
    cond = torch.randint(GPTConfig().vocab_size, (16, 16), device="cuda")
    with torch.no_grad(), _context(mode):
        taming_sampling.sample_fast(gpt, cond, candidates, steps=4)  # warm-up
        _sync()
        started = time.perf_counter()
        taming_sampling.sample_fast(gpt, cond, candidates, steps=steps)
        _sync()
    return 1000 * (time.perf_counter() - started) / steps, _weight_bytes(mode, parameters)


def time_coltran(mode: str, steps: int, candidates: int) -> tuple[float, int]:
    import torch

    from engine.models import coltran

    torch.manual_seed(0)
    core = coltran.ColTranCore(coltran.CoreConfig()).eval().cuda()
    parameters = sum(p.numel() for name in ("inner_decoder", "auto_logits", "final_norm")
                     for p in getattr(core, name).parameters())
    if mode.startswith("weights"):
        core = coltran.reduced_precision(core, mode.split("-")[1])
    height, width = core.config.resolution
    gray = torch.randint(256, (candidates, height, width), device="cuda")
    uniforms = torch.rand(candidates, height, width, device="cuda")
    rows = max(1, steps // width)
    with torch.no_grad(), _context(mode):
        core.sample(gray, uniforms=uniforms, rows=1)  # warm-up
        _sync()
        started = time.perf_counter()
        core.sample(gray, uniforms=uniforms, rows=rows)
        _sync()
    return 1000 * (time.perf_counter() - started) / (rows * width), _weight_bytes(mode, parameters)


MODELS = {"ASSET": time_asset, "ColTran core": time_coltran, "Taming GPT": time_taming}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=32, help="token steps timed per model and mode (default 32)")
    parser.add_argument("--candidates", type=int, default=1, help="candidates per step (default 1)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_official: skipped, torch {torch.__version__} sees no CUDA GPU (a CUDA build of torch and an "
              "NVIDIA GPU are needed); nothing was timed.")
        return 0
    gbs = gpu_bandwidth_gbs()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, copy bandwidth {gbs:.0f} GB/s "
          f"(1 GiB device copy, read + written), {args.candidates} candidate(s), {args.steps} steps")
    print(f"{'model':14s} {'mode':14s} {'ms/step':>9s} {'floor ms':>9s} {'x floor':>8s} {'peak GiB':>9s}")
    for name, timer in MODELS.items():
        for mode in MODES:
            if mode.endswith("bf16") and not torch.cuda.is_bf16_supported():
                print(f"{name:14s} {mode:14s} {'no bf16 on this GPU':>9s}")
                continue
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            try:
                ms, weight_bytes = timer(mode, args.steps, args.candidates)
            except Exception as error:  # one failing engine or mode must not hide the others' numbers
                print(f"{name:14s} {mode:14s} failed: {type(error).__name__}: {error}")
                continue
            floor = weight_bytes / (gbs * 1e9) * 1000
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(f"{name:14s} {mode:14s} {ms:9.2f} {floor:9.3f} {ms / floor:8.1f} {peak:9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
