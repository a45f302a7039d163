"""Reduced-precision weights for token-by-token inference, and the choice between them per device.

A decoder that samples one token per step reads every weight once per step, so its speed is set by how many
bytes its linear layers stream, not by arithmetic. This module prepares a model's `nn.Linear` layers for such
a loop in one of these precisions, without touching the module (its state dict and its own forward stay fp32):

    fp32  exact arithmetic. On CPU with several rows per step (k candidates), or one row on several threads, a
          weight of PACK_BYTES or more is repacked once into oneDNN's blocked layout (a transient second copy):
          streamed from memory, torch's MKL sgemm for 2-16 rows took 2-3x as long as for one row on the 2-core
          AMD EPYC dev machine, oneDNN's packed kernel about as long as one row; and for one row MKL's sgemv
          does not gain from a second thread (official-size ASSET step 59 ms on 1 thread, 58 on 2) where the
          packed kernel does (64 ms on 1 thread, 40 on 2). One row on one thread keeps the weights in place.
    int8  CPU only: per-output-channel symmetric int8 weights with dynamically quantized activations (fbgemm /
          x86 engine, torch.ops.quantized.linear_dynamic; 8-bit activations on CPUs with VNNI, 7-bit otherwise),
          each input row scaled to the same range first (fbgemm picks one activation scale per call, so a
          candidate's activations would otherwise lose their resolution beside a larger one's): a quarter of
          the fp32 bytes. Rows still share the quantization grid, so a candidate's int8 result can round
          differently with another batch beside it (in fp32 and bf16 no row's values enter another's result).
    bf16  bfloat16 weights and activations, fp32 out. CPU: oneDNN's packed bf16 kernel, only where oneDNN
          reports bf16 support (AVX512-BF16/AMX); CUDA: where the GPU supports bf16.
    fp16  CUDA only.
    auto  the fastest of the device's precisions on a probe of linear layers too large for the caches,
          measured once per process, device and row count; fp32 unless another is at least AUTO_MARGIN
          faster (fp32 is the exact one, so it wins ties).

API (engine.models.asset uses it; any token-by-token decoder can):

    check_precision(name) -> str                      # "fp32" | "int8" | "bf16" | "fp16" | "auto", else InputError
    supported(device) -> tuple[str, ...]              # the concrete precisions this device runs
    resolve_precision(name, device, rows=1) -> str    # "auto" -> measured choice; refuses unsupported ones
    prepare_linear(linear, precision, rows=1) -> PreparedLinear
        # callable: fp32 (..., in) -> fp32 (..., out) on linear's device; .weight_bytes = bytes read per call
    prepare_weight(weight, bias, precision, rows=1) -> PreparedLinear   # the same for a bare weight (fused q/k/v)
    measure_precisions(device, rows=1) -> dict[str, float]   # probe ms per precision (what "auto" compares)

Preparing copies the weights (except fp32 on one row and one thread, which uses them in place), so prepare once
per sampling run, on the thread count it samples on, not per step. Callers must keep fp32 as their default: only fp32 reproduces the reference path's tokens.
"""

from __future__ import annotations

import copy
import time
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import InputError

PRECISIONS = ("fp32", "int8", "bf16", "fp16")
CHOICES = PRECISIONS + ("auto",)
AUTO_MARGIN = 1.25  # a reduced precision must beat fp32 by this factor for "auto" to pick it
PACK_BYTES = 4 << 20  # fp32 weights from this size on are repacked for several rows (smaller ones stay in cache)
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
_auto_cache: dict[tuple[str, int], str] = {}


def check_precision(name) -> str:
    text = str(name).strip().lower() if name is not None else "fp32"
    if text not in CHOICES:
        raise InputError(f"precision must be one of {', '.join(CHOICES)}, not {name!r}")
    return text


def _device_type(device) -> str:
    return torch.device(device).type


def _int8_engine() -> str | None:
    engines = torch.backends.quantized.supported_engines
    return next((e for e in ("x86", "fbgemm") if e in engines), None)


def _mkldnn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def supported(device) -> tuple[str, ...]:
    kind = _device_type(device)
    if kind == "cuda":
        return ("fp32", "bf16", "fp16") if torch.cuda.is_bf16_supported() else ("fp32", "fp16")
    if kind == "cpu":
        found = ["fp32"]
        if _int8_engine():
            found.append("int8")
        if _mkldnn_linear_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            found.append("bf16")
        return tuple(found)
    return ("fp32",)


def resolve_precision(name, device, rows: int = 1) -> str:
    """The concrete precision for `device`: "auto" is measured (once per process, device and row count)."""
    name = check_precision(name)
    device = str(torch.device(device))
    if name == "auto":
        key = (device, rows)
        if key not in _auto_cache:
            times = measure_precisions(device, rows)
            fastest = min(times, key=times.get)
            _auto_cache[key] = fastest if times[fastest] * AUTO_MARGIN < times["fp32"] else "fp32"
        return _auto_cache[key]
    if name not in supported(device):
        have = ", ".join(supported(device))
        raise InputError(f"precision {name!r} is not available on {device} (this device runs: {have})")
    return name


class PreparedLinear:
    """y = linear(x) in a chosen precision; fp32 in and out. `weight_bytes`: weight bytes read per call."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], weight_bytes: int, precision: str):
        self.run, self.weight_bytes, self.precision = run, weight_bytes, precision

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


def prepare_linear(linear: nn.Linear, precision: str, rows: int = 1) -> PreparedLinear:
    """`linear` ready for a loop that feeds it `rows` rows per call (the k candidates of a token step)."""
    return prepare_weight(linear.weight, linear.bias, precision, rows)


def prepare_weight(weight: torch.Tensor, bias: torch.Tensor | None, precision: str, rows: int = 1) -> PreparedLinear:
    """prepare_linear for a bare (out, in) weight and bias, e.g. several projections concatenated into one."""
    weight, bias = weight.detach(), None if bias is None else bias.detach()
    kind = weight.device.type
    if precision == "fp32":
        several = rows > 1 or torch.get_num_threads() > 1  # the thread count the caller samples on, now
        if kind == "cpu" and several and weight.numel() * 4 >= PACK_BYTES and _mkldnn_linear_available():
            return _onednn(weight, bias, "fp32")
        return PreparedLinear(lambda x: F.linear(x, weight, bias), weight.numel() * 4, "fp32")
    if precision == "int8":
        if kind != "cpu" or not _int8_engine():
            raise InputError(f"int8 weights need a CPU with torch's x86/fbgemm engine, not {weight.device}")
        return _int8(weight, bias)
    if precision in _HALF:
        if kind == "cpu":
            if precision != "bf16" or "bf16" not in supported("cpu"):
                raise InputError(f"{precision} weights are not supported by this CPU's oneDNN")
            return _onednn(weight, bias, "bf16")
        dtype = _HALF[precision]
        w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
        return PreparedLinear(lambda x: F.linear(x.to(dtype), w, b).float(), w.numel() * w.element_size(), precision)
    raise InputError(f"unknown precision {precision!r}")


def _onednn(weight: torch.Tensor, bias: torch.Tensor | None, precision: str) -> PreparedLinear:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.to(dtype), 4)
    b = None if bias is None else bias.to(dtype)
    linear_pointwise = torch.ops.mkldnn._linear_pointwise
    if dtype == torch.float32:
        def run(x):
            return linear_pointwise(x, packed, b, "none", [], "")
    else:
        def run(x):
            return linear_pointwise(x.to(dtype), packed, b, "none", [], "").float()
    return PreparedLinear(run, weight.numel() * (2 if precision == "bf16" else 4), precision)


def _cpu_has_vnni() -> bool:
    """Whether the CPU has VNNI dot-product instructions (Linux: /proc/cpuinfo). Without them fbgemm's 8-bit
    products are summed in saturating 16-bit pairs, so activations must use 7 bits (torch's reduce_range); with
    them the full 8 bits are safe and halve the activation rounding (int8 top-1 agreement with fp32 on the demo
    ASSET: 98.8 % with 7 bits, 99.4 % with 8)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    flags = line.split()
                    return "avx512_vnni" in flags or "avx_vnni" in flags
    except OSError:
        pass
    return False


def _int8(weight: torch.Tensor, bias: torch.Tensor | None) -> PreparedLinear:
    torch.backends.quantized.engine = _int8_engine()
    scale = (weight.abs().amax(1) / 127).clamp(min=1e-12).double()
    zero = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # torch 2.10+ marks quantized tensors deprecated; the kernels still run
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        qweight = torch.quantize_per_channel(weight.float(), scale, zero, 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.float())
        packed_no_bias = torch.ops.quantized.linear_prepack(qweight, None)
    linear_dynamic = torch.ops.quantized.linear_dynamic
    in_features = weight.shape[1]
    reduce_range = not _cpu_has_vnni()

    def run(x):
        if x.numel() == in_features:
            return linear_dynamic(x, packed, reduce_range)
        # fbgemm quantizes the whole input with one scale: bring every row (candidate, token) to the same
        # range first, so that a row with small activations keeps its resolution beside a large one
        row_scale = torch.linalg.vector_norm(x, float("inf"), -1, keepdim=True).clamp_min_(1e-12)
        y = linear_dynamic(x / row_scale, packed_no_bias, reduce_range)
        return y.mul_(row_scale) if bias is None else torch.addcmul(bias, y, row_scale)

    return PreparedLinear(run, weight.numel(), "int8")


def measure_precisions(device, rows: int = 1, in_features: int = 1024, out_features: int = 4096,
                       layers: int = 16, repeats: int = 3) -> dict[str, float]:
    """Milliseconds per pass through `layers` probe linears (256 MB of fp32 weights by default, beyond any
    cache) for every precision `device` supports, best of `repeats`."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    probes = [nn.Linear(in_features, out_features).to(device) for _ in range(layers)]
    with torch.no_grad():
        for probe in probes:
            probe.weight.copy_(torch.randn(out_features, in_features, generator=generator) * 0.02)
    x = torch.randn(rows, in_features, generator=generator).to(device)
    times = {}
    for precision in supported(device):
        prepared = [prepare_linear(p, precision, rows) for p in probes]
        best = float("inf")
        with torch.no_grad():
            for _ in range(repeats + 1):  # the first pass warms the kernels up
                _sync(device)
                started = time.perf_counter()
                for layer in prepared:
                    layer(x)
                _sync(device)
                best = min(best, time.perf_counter() - started)
        times[precision] = best * 1000
        del prepared
    return times


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PreparedLinearModule(nn.Module):
    """A linear layer run by a PreparedLinear kernel: fp32 in and out, its weights in another precision."""

    def __init__(self, prepared: PreparedLinear):
        super().__init__()
        self.prepared = prepared

    def forward(self, x):
        return self.prepared(x)


def with_prepared_linears(module: nn.Module, precision: str) -> nn.Module:
    """`module` with every nn.Linear replaced by its prepared kernel in `precision`: shallow copies of the modules
    on the way down (their other parameters shared, no fp32 weight copied), everything else `module`'s own."""
    if isinstance(module, nn.Linear):
        return PreparedLinearModule(prepare_linear(module, precision))
    if not any(isinstance(m, nn.Linear) for m in module.modules()):
        return module
    clone = copy.copy(module)
    clone._modules = {name: None if child is None else with_prepared_linears(child, precision)
                      for name, child in module._modules.items()}
    return clone
