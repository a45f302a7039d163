"""VQGAN tokenizer speed: encode (masked image encoder, with and without an edit), decode, and seg-map encode
of the ASSET demo tokenizers at 256 and 512 px. Falls back to random weights of the demo architecture when the
demo folder has no weights yet (timings do not depend on the weights; the note says which was used)."""

from __future__ import annotations

import time

import torch
import yaml

from engine.models.vqgan import VQGAN, VQGANConfig
from engine.pipelines.asset import load_vqgan
from engine.paths import assets_dir

DEMO = assets_dir() / "models" / "demo-asset-landscape"


def _model(stem: str, **fixed) -> tuple[VQGAN, str]:
    if (DEMO / f"{stem}.safetensors").is_file():
        return load_vqgan(DEMO, stem), "demo weights"
    options = yaml.safe_load((DEMO / f"train_{stem}.yaml").read_text())["options"]
    arch = {k: options[k] for k in ("ch", "ch_mult", "num_res_blocks", "z_channels", "embed_dim", "n_embed")}
    return VQGAN(VQGANConfig(**arch, **fixed)).eval(), "random weights, demo architecture"


def _time(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def run() -> list[dict]:
    image, image_note = _model("image_vqgan", masked_encoder=True)
    seg, seg_note = _model("seg_vqgan", in_channels=182, out_ch=182, n_labels=182)
    rows = []
    threads = torch.get_num_threads()
    with torch.no_grad():
        for size in (256, 512):
            x = torch.rand(1, 3, size, size) * 2 - 1
            mask = torch.zeros(1, 1, size, size)
            mask[..., size // 2:, : size // 2] = 1  # a quarter of the image edited
            labels = torch.randint(0, 182, (1, size, size))
            _, codes = image.encode(x)
            common = f"{size}x{size}, batch 1, {threads} torch threads, best of 3; {image_note}"
            rows += [
                {"name": f"vqgan encode {size}px (no edit)", "value": _time(lambda: image.encode(x)), "unit": "ms",
                 "target": None, "note": common},
                {"name": f"vqgan encode {size}px (quarter masked)", "value": _time(lambda: image.encode(x, mask)),
                 "unit": "ms", "target": None, "note": common + "; partial convs run twice near the hole"},
                {"name": f"vqgan decode {size}px", "value": _time(lambda: image.decode_code(codes)), "unit": "ms",
                 "target": None, "note": common},
                {"name": f"seg vqgan encode {size}px", "value": _time(lambda: seg.encode_labels(labels)),
                 "unit": "ms", "target": None, "note": f"{size}x{size}, 182 classes, table-lookup conv_in; {seg_note}"},
            ]
    return rows
