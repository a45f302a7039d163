"""Sliding-window sampling of a conditional taming GPT over a token grid larger than its window.

The official rule (scripts/sample_conditional.py, scripts/make_samples.py): tokens are sampled in raster order
over the whole H x W grid; for token (i, j) an n x n window (n = 16 for S-FLCKR) is cut so the target sits at
local row/column n/2 in the interior and the window is clamped at the borders (`window_start`). The GPT gets the
window's n^2 seg codes, then its image codes up to the last (2 n^2 - 1 tokens), and the logits at the target's
local position are divided by the temperature, cut to the top k and sampled. Because the model is causal, only
image codes before the target in window raster order matter, and those are all sampled already.

`sample_reference` is that algorithm: one full forward of 2 n^2 - 1 tokens per sampled token.

`sample_fast` computes the same logits from cached keys and values:
- one cache per window position (the window's column start; all windows of a row share the row start). A
  window's cache holds positions 0..L-1 and grows: the next target in the same window only feeds the tokens
  sampled since (one token while the window stands still, at the left and right borders);
- a row's caches are built in batches when the row starts, from what is known then (the seg codes and the image
  rows above the target row), the seg part once for all candidates;
- windows of rows that share their row start (the top n/2 + 1 rows and the bottom n/2) are kept for the next row
  while they fit `cache_bytes`, so those rows only feed the new tokens.
Every cached position holds the same tokens at the same window position as in the reference, so the logits are
equal up to summation order and, with the same random stream, so are the tokens. The forward passes it saves are
the positions after the target (always) and everything a window already computed (border rows and columns); in
the interior of a large grid every target has its own window, and the prefix up to the target (n^2 + n^2/2 + n/2
tokens) still has to be computed once: the FLOP saving there is about 1.3x per candidate (more with several
candidates, which share the seg part). See tests/bench/bench_taming.py.

Randomness: one `torch.multinomial` per token (engine.models.asset_sampling.draw): a single generator for the
whole batch (the official scripts' call) or one generator per candidate (the runtime's contract: candidate i
depends only on its seed). Both paths draw in raster order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.errors import InputError
from engine.models.asset_sampling import Generators, _Reporter, draw
from engine.models.taming import GPT, KV
from engine.precision import with_prepared_linears


TICK = 8  # tokens between progress reports (each also checks for cancellation)


def window_start(index: int, size: int, window: int = 16) -> tuple[int, int]:
    """(start, local) of the window along one axis of length `size` for target `index`: the official rule
    (local = index near the start, window - (size - index) near the end, else window / 2)."""
    half = window // 2
    if index <= half:
        local = index
    elif size - index < half:
        local = window - (size - index)
    else:
        local = half
    return index - local, local


def _check_grid(gpt: GPT, height: int, width: int, window: int) -> None:
    if 2 * window * window != gpt.block_size:
        raise InputError(f"a {window}x{window} window needs a block of {2 * window * window} tokens, the "
                         f"transformer has {gpt.block_size}")
    if height < window or width < window:
        raise InputError(f"the token grid {height}x{width} is smaller than the {window}x{window} window")


def _start(cond: torch.Tensor, num_samples: int, init: torch.Tensor | None) -> torch.Tensor:
    h, w = cond.shape
    if init is None:  # the official scripts start from zeros; only already-sampled tokens are ever read
        return torch.zeros(num_samples, h, w, dtype=torch.long, device=cond.device)
    return init.reshape(1, h, w).expand(num_samples, h, w).clone() if init.dim() == 2 else init.clone()


@torch.no_grad()
def sample_reference(gpt: GPT, cond: torch.Tensor, num_samples: int = 1, *, window: int = 16,
                     top_k: int | None = 100, temperature: float = 1.0, generator: Generators = None,
                     init: torch.Tensor | None = None, ctx=None, stage: str = "sampling",
                     span: tuple[float, float] = (0.0, 1.0), steps: int | None = None) -> torch.Tensor:
    """Image codes (num_samples, H, W) for seg codes `cond` (H, W): the official sliding-window sampler.
    `steps`: stop after that many tokens (raster order; the rest keep their initial value)."""
    h, w = cond.shape
    _check_grid(gpt, h, w, window)
    n2 = window * window
    idx = _start(cond, num_samples, init)
    cidx = cond.reshape(1, h, w).expand(num_samples, h, w)
    total = h * w if steps is None else min(steps, h * w)
    report = _Reporter(ctx, stage, total, span)
    for step in range(total):
        i, j = divmod(step, w)
        a, li = window_start(i, h, window)
        b, lj = window_start(j, w, window)
        patch = idx[:, a:a + window, b:b + window].reshape(num_samples, -1)
        cpatch = cidx[:, a:a + window, b:b + window].reshape(num_samples, -1)
        logits = gpt(torch.cat((cpatch, patch), dim=1)[:, :-1])[:, -n2:, :]
        logits = logits.reshape(num_samples, window, window, -1)[:, li, lj, :]
        idx[:, i, j] = draw(logits, top_k, temperature, generator)
        if j == w - 1 or step % TICK == 0:
            report.tick(step + 1)
    report.tick(total)
    return idx


@dataclass
class _Window:
    kv: KV  # per layer (keys, values) of positions 0..length-1, batch = candidates
    last: torch.Tensor  # ln_f output at position length - 1 (candidates, C): predicts image token length - n^2

    @property
    def length(self) -> int:
        return self.kv[0][0].shape[2]

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k, _ in self.kv)


def _kv_bytes(gpt: GPT, batch: int, length: int) -> int:
    cfg = gpt.config
    return 2 * cfg.n_layer * batch * length * cfg.n_embd * gpt.pos_emb.element_size()


@torch.no_grad()
def _build_windows(gpt: GPT, idx: torch.Tensor, cond: torch.Tensor, a: int, rows: int, starts: list[int],
                   window: int) -> dict[int, _Window]:
    """Caches of the windows at row start `a` and column starts `starts`, holding the seg codes and the first
    `rows` image rows of each window; the seg part is computed once and shared by the candidates."""
    b = idx.shape[0]
    nw = len(starts)
    seg = torch.stack([cond[a:a + window, s:s + window].reshape(-1) for s in starts])  # nw, n^2
    hidden, kv = gpt.extend(seg)
    if rows == 0:
        kv = [(k.repeat_interleave(b, 0), v.repeat_interleave(b, 0)) for k, v in kv]
        last = hidden[:, -1].repeat_interleave(b, 0)
    else:
        image = torch.stack([idx[:, a:a + rows, s:s + window].reshape(b, -1) for s in starts], 1)  # B, nw, r*n
        image = image.transpose(0, 1).reshape(nw * b, -1)  # window-major, then candidates
        kv = [(k.repeat_interleave(b, 0), v.repeat_interleave(b, 0)) for k, v in kv]
        hidden, kv = gpt.extend(image, kv)
        last = hidden[:, -1]
    out = {}
    for n, s in enumerate(starts):
        part = slice(n * b, (n + 1) * b)
        out[s] = _Window([(k[part], v[part]) for k, v in kv], last[part])
    return out


@torch.no_grad()
def sample_fast(gpt: GPT, cond: torch.Tensor, num_samples: int = 1, *, window: int = 16,
                top_k: int | None = 100, temperature: float = 1.0, generator: Generators = None,
                init: torch.Tensor | None = None, ctx=None, stage: str = "sampling",
                span: tuple[float, float] = (0.0, 1.0), steps: int | None = None,
                cache_bytes: int = 1 << 30) -> torch.Tensor:
    """Same contract and tokens as sample_reference, from cached keys and values (module docstring).
    cache_bytes: keys and values kept at once (windows built together, windows kept for the next row)."""
    h, w = cond.shape
    _check_grid(gpt, h, w, window)
    n2 = window * window
    b = num_samples
    idx = _start(cond, num_samples, init)
    total = h * w if steps is None else min(steps, h * w)
    report = _Reporter(ctx, stage, total, span)
    column = [window_start(j, w, window) for j in range(w)]
    last_use = {}  # column start -> last column j that uses it
    for j, (s, _) in enumerate(column):
        last_use[s] = j
    per_window = _kv_bytes(gpt, b, 2 * n2)  # an upper bound: a full window
    chunk = max(1, cache_bytes // max(per_window, 1))
    caches: dict[int, _Window] = {}
    row_start = None
    step = 0
    for i in range(h):
        if step >= total:
            break
        a, li = window_start(i, h, window)
        if a != row_start:
            caches.clear()
            row_start = a
        for j in range(w):
            if step >= total:
                break
            s, lj = column[j]
            if s not in caches:
                # build this window and the next missing ones of the row together (one batched pass)
                todo, seen = [], set()
                for jj in range(j, w):
                    ss = column[jj][0]
                    if ss not in caches and ss not in seen:
                        seen.add(ss)
                        todo.append(ss)
                        if len(todo) >= chunk:
                            break
                caches.update(_build_windows(gpt, idx, cond, a, li, todo, window))
            entry = caches[s]
            need = n2 + li * window + lj  # positions 0..need-1: the seg codes and the image codes before the target
            if entry.length < need:
                flat = idx[:, a:a + window, s:s + window].reshape(b, -1)[:, entry.length - n2:need - n2]
                hidden, kv = gpt.extend(flat, entry.kv)
                entry = caches[s] = _Window(kv, hidden[:, -1])
            idx[:, i, j] = draw(gpt.head(entry.last), top_k, temperature, generator)
            step += 1
            if step % TICK == 0:  # progress and cancellation every few tokens (seconds each at official size)
                report.tick(step)
            if j == last_use[s]:
                keep = i + 1 < h and window_start(i + 1, h, window)[0] == a
                if not keep:
                    del caches[s]
        # windows kept for the next row (same row start) only while they fit the budget; rebuilt otherwise
        if sum(c.nbytes() for c in caches.values()) > cache_bytes:
            caches.clear()
        report.tick(step)
    return idx


def forward_tokens(h: int, w: int, window: int = 16) -> dict[str, int]:
    """Token positions computed by each sampler for one candidate on an h x w grid (the FLOP measure of a
    transformer pass: every position costs the same except the attention), with an unlimited cache."""
    n2 = window * window
    reference = h * w * (2 * n2 - 1)
    windows: dict[tuple[int, int], int] = {}
    for i in range(h):
        a, li = window_start(i, h, window)
        for j in range(w):
            s, lj = window_start(j, w, window)
            need = n2 + li * window + lj
            windows[a, s] = max(windows.get((a, s), 0), need)
    return {"reference": reference, "fast": sum(windows.values()), "windows": len(windows)}


# ----------------------------------------------------------------------------------------------------------------
# Reduced precision (engine.precision)



def reduced_precision(gpt: GPT, precision: str) -> GPT:
    """`gpt` for sampling with every linear layer (attention, MLP, head) in `precision`, a concrete one of
    engine.precision (int8, bf16, fp16); embeddings and norms stay fp32. "fp32" is `gpt` itself, the exact path
    (the only one that reproduces sample_reference's tokens). The reduced copy shares every fp32 tensor it does
    not convert, and is made once and kept on `gpt` (outside its modules and state dict) until a weight changes."""
    if precision == "fp32":
        return gpt
    key = (precision, str(gpt.head.weight.device), tuple((p.data_ptr(), p._version) for p in gpt.parameters()))
    held = gpt.__dict__.get("_reduced_precision")
    if held is not None and held[0] == key:
        return held[1]
    variant = with_prepared_linears(gpt, precision)
    variant.__dict__.pop("_reduced_precision", None)
    gpt.__dict__["_reduced_precision"] = (key, variant)
    return variant


