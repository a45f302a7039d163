"""Training task for the Taming Transformers demo (demo-taming-landscape): a small conditional GPT over the
tokens of the shipped ASSET demo's VQGANs (image VQGAN = first stage, seg VQGAN = cond stage).

Data: the ASSET demo's token cache (engine.train.tasks_asset.build_token_cache: procedural 512 px scenes encoded
once, 32x32 image codes and 32x32 seg codes each), shared with the ASSET transformers' training. Every sample is a
random window x window crop of one scene's two grids, laid out as the official S-FLCKR training does
(taming/models/cond_transformer.py): the window's seg codes, then its image codes, raster order, one shared
embedding table without offset; the GPT reads the first 2 w^2 - 1 tokens and is trained with cross-entropy on its
predictions of the image codes only (outputs w^2 - 1 .. 2 w^2 - 2). Random crops are what S-FLCKR trains on, and
they teach the model the window positions the sliding sampler uses (the target anywhere in the window).

Held out: the first `eval_sequences` cached scenes (never trained on) at fixed crops.

The exported folder holds only the transformer (`model.safetensors`, keys `transformer.*`); its config names
the folder whose `image_vqgan`/`seg_vqgan` weights are the two stages (engine.pipelines.taming.load_taming), so
the demo VQGANs are shipped once. Weights are stored in fp16 and the causal masks as uint8 (a quarter of the
bytes); they load into the fp32 model key for key.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.data.datasets import SeededStream
from engine.device import describe_device
from engine.model_store import read_model_config, save_model_dir
from engine.models.taming import GPT, GPTConfig, TamingConfig
from engine.models.vqgan import VQGANConfig
from engine.paths import assets_dir
from engine.train.task import TrainConfig, TrainTask

DEMO_DIR = "demo-taming-landscape"
STAGES_DIR = "demo-asset-landscape"


class WindowCrops(SeededStream):
    """Endless (window of seg codes, window of image codes), each (w*w,) raster order, from random scenes and
    positions of a token cache; seeded by the loop from (config seed, rank, worker, step)."""

    def __init__(self, z: torch.Tensor, c: torch.Tensor, window: int, seed: int):
        self.z, self.c, self.window = z, c, window
        self.place(seed)

    def __iter__(self):
        rng = self.rng()
        n, h, w = self.z.shape
        s = self.window
        while True:
            # ranks take disjoint scenes (every world-th one), as SeededStream.train_seed does for scene seeds
            i = int(rng.integers(n // self.world)) * self.world + self.rank
            y, x = int(rng.integers(h - s + 1)), int(rng.integers(w - s + 1))
            yield self.c[i, y:y + s, x:x + s].reshape(-1), self.z[i, y:y + s, x:x + s].reshape(-1)


def window_loss(model: GPT, c: torch.Tensor, z: torch.Tensor, pkeep: float = 1.0,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the image codes given the seg codes and the image codes before them; also top-1.
    pkeep < 1 (Net2NetTransformer's `pkeep`): each input image code is replaced by a random code with probability
    1 - pkeep (the targets stay), so the model cannot lean on the codes above alone and must read the seg codes."""
    inputs = z
    if pkeep < 1.0:
        keep = torch.rand(z.shape, generator=generator, device=z.device) < pkeep
        noise = torch.randint(model.config.vocab_size, z.shape, generator=generator, device=z.device)
        inputs = torch.where(keep, z, noise)
    sequence = torch.cat((c, inputs), dim=1)
    logits = model(sequence[:, :-1])[:, c.shape[1] - 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), z.reshape(-1))
    accuracy = (logits.argmax(-1) == z).float().mean()
    return loss, accuracy


class TamingLandscapeTask(TrainTask):
    """options: n_layer, n_head, n_embd (the GPT), window (16), pkeep (1.0: Net2NetTransformer's input-code
    dropout), init_from (a taming folder to fine-tune), scenes, scene_size, token_cache, eval_sequences,
    stages_dir (the folder with the VQGANs), export_dir."""

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        from engine.train.tasks_asset import build_token_cache

        self.options = dict(config.options)
        self.stages = Path(self.options.get("stages_dir") or assets_dir() / "models" / STAGES_DIR)
        self.directory = Path(self.options.get("export_dir") or assets_dir() / "models" / DEMO_DIR)
        stage_config = read_model_config(self.stages)
        self.first_stage = VQGANConfig.from_dict(stage_config["image_vqgan"])
        self.cond_stage = VQGANConfig.from_dict(stage_config["seg_vqgan"])
        self.window = int(self.options.get("window", 16))
        cache = build_token_cache(self.stages, Path(self.options.get("token_cache", "runs/asset-tokens-v2.pt")),
                                  int(self.options.get("scenes", 320)), int(self.options.get("scene_size", 512)))
        side = int(cache["z"].shape[1] ** 0.5)
        z, c = cache["z"].reshape(-1, side, side), cache["c"].reshape(-1, side, side)
        held = int(self.options.get("eval_sequences", 16))
        self.train_z, self.train_c = z[held:], c[held:]
        rng = np.random.default_rng(0)  # fixed held-out crops
        crops = [(i, int(rng.integers(side - self.window + 1)), int(rng.integers(side - self.window + 1)))
                 for i in range(held) for _ in range(2)]
        s = self.window
        self.eval_c = torch.stack([c[i, y:y + s, x:x + s].reshape(-1) for i, y, x in crops])
        self.eval_z = torch.stack([z[i, y:y + s, x:x + s].reshape(-1) for i, y, x in crops])
        self.metrics: dict = {}

    def gpt_config(self) -> GPTConfig:
        o = self.options
        return GPTConfig(vocab_size=max(self.first_stage.n_embed, self.cond_stage.n_embed),
                         block_size=2 * self.window ** 2, n_layer=int(o.get("n_layer", 6)),
                         n_head=int(o.get("n_head", 6)), n_embd=int(o.get("n_embd", 192)),
                         embd_pdrop=float(o.get("dropout", 0.0)), resid_pdrop=float(o.get("dropout", 0.0)),
                         attn_pdrop=float(o.get("dropout", 0.0)))

    def build_model(self):
        model = GPT(self.gpt_config())
        if self.options.get("init_from"):  # a taming model folder whose transformer this run fine-tunes
            from engine.importers.state_dicts import load_state_dict_strict
            from engine.model_store import read_safetensors

            path = Path(self.options["init_from"]) / "model.safetensors"
            state = {k[len("transformer."):]: v.float() for k, v in read_safetensors(path).items()
                     if k.startswith("transformer.")}
            load_state_dict_strict(model, state, str(path))
        return model

    def train_dataset(self):
        return WindowCrops(self.train_z, self.train_c, self.window, self.config.seed)

    def collate(self, items):
        return torch.utils.data.default_collate(items)

    def loss(self, model, batch):
        c, z = batch
        loss, accuracy = window_loss(model, c, z, float(self.options.get("pkeep", 1.0)))
        return loss, {"ce": loss.item(), "accuracy": accuracy.item()}

    @torch.no_grad()
    def evaluate(self, model):
        device = next(model.parameters()).device
        losses, hits = [], []
        for i in range(0, len(self.eval_z), 8):
            loss, accuracy = window_loss(model, self.eval_c[i:i + 8].to(device), self.eval_z[i:i + 8].to(device))
            losses.append(float(loss) * len(self.eval_z[i:i + 8]))
            hits.append(float(accuracy) * len(self.eval_z[i:i + 8]))
        n = len(self.eval_z)
        # how much the label map matters: the same windows with another held-out window's seg codes
        wrong = sum(float(window_loss(model, self.eval_c.roll(1, 0)[i:i + 8].to(device),
                                      self.eval_z[i:i + 8].to(device))[0]) * len(self.eval_z[i:i + 8])
                    for i in range(0, n, 8))
        self.metrics = {"eval_ce": sum(losses) / n, "eval_top1": sum(hits) / n,
                        "eval_ce_with_another_map": wrong / n, "eval_windows": float(n)}
        return self.metrics

    def export(self, model, out_dir: Path) -> Path:
        metrics = self.metrics or self.evaluate(model)
        cfg = TamingConfig(model.config, self.first_stage, self.cond_stage)
        cfg.check()
        training = {
            "task": self.config.task, "steps": self.step + 1, "batch": self.config.batch_size,
            "parameters": sum(p.numel() for p in model.parameters()),
            "training scenes": len(self.train_z), "wall time": f"{self.training_minutes():.1f} min",
            "hardware": f"{describe_device(str(self.device))}, torch threads: {torch.get_num_threads()}",
            **{k: round(v, 4) for k, v in metrics.items()},
        }
        config = {"kind": "taming", "title": "Taming Transformers demo (synthetic landscapes)",
                  "label_set": "coco-stuff-182", "taming": cfg.to_dict(),
                  "stages": {"folder": self.stages.name, "first_stage_model": "image_vqgan",
                             "cond_stage_model": "seg_vqgan"},
                  "training": training}
        return save_model_dir(self.directory, {"model": compact_state(model)}, config)


def compact_state(model: GPT) -> dict[str, torch.Tensor]:
    """The transformer's state under its official keys, weights in fp16 and the 0/1 causal masks as uint8."""
    out = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        out["transformer." + key] = value.to(torch.uint8) if key.endswith("attn.mask") else value.half()
    return out


@torch.no_grad()
def evaluate_translations(directory: Path, count: int = 12, size: tuple[int, int] = (256, 384), k: int = 2) -> dict:
    """Held-out scenes (EVAL_SEEDS, never trained on), procedural and photo-textured, rendered from their label
    maps by this taming demo (k candidates), by the ASAPNet demo, and by the naive baseline (each pixel its class's
    mean training colour plus Gaussian noise of the class's deviation): label agreement (engine.metrics), LPIPS-alex
    to the scene's own rendering, and the 16-px grid-artefact score."""
    import time

    from engine import metrics
    from engine.data.landscapes import EVAL_SEEDS, generate_scene
    from engine.pipelines.asapnet import ASAPNetRenderer
    from engine.pipelines.taming import load_taming, translate
    from engine.train.tasks_asset import class_colour_stats, naive_fill

    model, _ = load_taming(Path(directory))
    asapnet = ASAPNetRenderer.load("demo-asapnet-landscape")
    stats = class_colour_stats()
    rng = np.random.default_rng(0)
    kinds = {"procedural": lambda s: s}
    try:
        from engine.data.textures import texture_scene

        texture_scene(generate_scene(int(EVAL_SEEDS[0]), 64))
        kinds["textured"] = texture_scene
    except Exception as error:  # no texture cache (`sgraffito data textures`): procedural scenes only
        print(f"textured scenes skipped: {error}")
    rows: dict = {}
    seconds = []
    for kind, make in kinds.items():
        for seed in EVAL_SEEDS[:count]:
            scene = make(generate_scene(int(seed), size))
            labels, reference = scene.labels, scene.image
            started = time.perf_counter()
            samples, _ = translate(model, labels, [int(seed) + i for i in range(k)])
            seconds.append((time.perf_counter() - started) / k)
            outputs = {"taming demo": samples, "ASAPNet demo": [asapnet.render(labels)],
                       "naive fill": [naive_fill(reference, labels, np.ones(labels.shape, bool), stats, rng)]}
            for name, images in outputs.items():
                for image in images:
                    row = rows.setdefault((kind, name), {"agreement": [], "lpips": [], "grid": []})
                    row["agreement"].append(metrics.label_agreement(image, labels))
                    row["lpips"].append(metrics.lpips(image, reference, "alex"))
                    row["grid"].append(metrics.grid_artefact_score(image))
    result = {"scenes per kind": count, "size": f"{size[1]}x{size[0]} px ({size[1] // 16}x{size[0] // 16} tokens)",
              "taming candidates per scene": k, "taming seconds per candidate (this CPU)": float(np.mean(seconds))}
    for (kind, name), row in rows.items():
        result[f"{kind}: {name}"] = {"label agreement": float(np.nanmean(row["agreement"])),
                                     "LPIPS-alex": float(np.nanmean(row["lpips"])),
                                     "grid-artefact median": float(np.nanmedian(row["grid"]))}
    return result


def write_card(directory: Path, results: dict) -> None:
    """MODEL_CARD.md of the demo from its config's training record and the held-out results."""
    config = read_model_config(directory)
    t = config["taming"]["transformer"]
    lines = ["# Taming Transformers demo (synthetic landscapes)", "",
             "A small segmentation-conditioned GPT over the tokens of the ASSET demo's VQGANs "
             f"({config['stages']['folder']}: image_vqgan is the first stage, seg_vqgan the cond stage; they are "
             "not copied here). Official S-FLCKR layout: 16x16-token windows, the window's seg codes then its image "
             "codes in one 512-token block, one shared embedding table; sampled with the official sliding window. "
             "Shipped to show taming's k-candidate translate mode offline; import the official S-FLCKR model "
             "(`sgraffito models get taming-sflckr`) for quality.", "",
             "## Training", "",
             f"- GPT: {t['n_layer']} layers, {t['n_head']} heads, {t['n_embd']} wide, vocab {t['vocab_size']}, "
             f"block {t['block_size']}",
             "- Data: the ASSET demo's token cache (procedural landscapes from engine/data/landscapes.py, TRAIN_SEEDS, "
             "512 px, encoded once by the demo VQGANs; generated here, no third-party data), random 16x16-token "
             "crops; the first `eval_sequences` cached scenes are held out. Loss: cross-entropy on the image codes "
             "(the official objective). Recipe: train_taming.yaml (`sgraffito train taming-landscape --config "
             "assets/models/demo-taming-landscape/train_taming.yaml`).", ""]
    lines += [f"- {k}: {v}" for k, v in config.get("training", {}).items()]
    lines += ["", "## Held-out label maps (EVAL_SEEDS), against the ASAPNet demo and a naive baseline", "",
              "Naive baseline: each pixel its class's mean training colour plus Gaussian noise of the class's "
              "standard deviation. Label agreement: engine.metrics.label_agreement (a classifier of colour and "
              "texture per region; higher is better). LPIPS-alex to the scene's own rendering (lower is better; "
              "a sampler is not meant to reproduce it, so read it as distance from a plausible photo). Grid: "
              "engine.metrics.grid_artefact_score, energy at the 16-px token period over its neighbours (1 = none).",
              "", "| scenes | renderer | label agreement | LPIPS-alex | grid median |", "|---|---|---|---|---|"]
    for key, value in results.items():
        if isinstance(value, dict):
            kind, name = key.split(": ", 1)
            lines.append(f"| {kind} | {name} | {value['label agreement']:.3f} | {value['LPIPS-alex']:.3f} | "
                         f"{value['grid-artefact median']:.2f} |")
    lines += [""] + [f"- {k}: {v}" for k, v in results.items() if not isinstance(v, dict)] + [""]
    for title, text in config.get("notes", {}).items():  # the assessment, written by whoever trained it
        lines += [f"## {title}", "", text, ""]
    (Path(directory) / "MODEL_CARD.md").write_text("\n".join(lines))


if __name__ == "__main__":  # python -m engine.train.tasks_taming [FOLDER]: evaluate, write the card
    import json
    import sys

    torch.set_num_threads(1)
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else assets_dir() / "models" / DEMO_DIR
    results = evaluate_translations(folder)
    print(json.dumps(results, indent=1))
    write_card(folder, results)
