"""Training tasks "vqgan" (ASSET's mask-aware image VQGAN) and "seg_vqgan" (the label-map VQGAN) on synthetic
landscapes, and their export into the ASSET demo model folder.

Both train on random crops (`options.crop`, default 128 px) of scenes rendered at `options.scene_size` (256), so
the models see the scale they are used at, for a quarter of the compute of whole scenes.

vqgan: L1 + a multi-scale image-gradient L1 + (options.texture_weight) a local texture-statistics L1, cheap
stand-ins for taming's LPIPS and patch discriminator (VGG weights cannot be fetched, a GAN needs more steps than a
CPU has) + (options.colour_weight) an L1 of 8- and 16-px cell mean colours + the VectorQuantizer2
codebook/commitment loss. As in ASSET the encoder gets edit masks (from
options.mask_from_step): a share of the crops carry the (dilated) region of one class, like generate_mask_from_seg.
seg_vqgan: cross-entropy of the per-class logits + the codebook loss (the one-hot input is a table lookup), plus
(options.isolated_code_weight) the cross-entropy of single codes decoded alone against their cell's class, so that
a code names its class instead of leaving the decoder to guess it from the neighbours.
Codebook rows unused for a while are restarted on random encoder outputs of the current batch.

Optional terms as taming trains its VQGAN (engine/train/losses.py; every weight defaults to 0, so the shipped
configs train as before): options.perceptual_weight x LPIPS (options.perceptual_net: vgg, as taming, or alex) and
taming's patch discriminator (engine/models/discriminator.py) with the hinge loss: options.disc_weight (the
adversarial term's scale; with options.disc_adaptive, default true, times taming's adaptive weight that balances
its gradient on the decoder's last layer against the reconstruction's), options.disc_start (steps before it
starts), options.disc_ndf (64), options.disc_layers (3). The discriminator trains inside the model
(`loss_discriminator`, in checkpoints, never exported).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from engine.model_store import read_model_config, save_model_dir
from engine.data.datasets import SeededStream
from engine.data.landscapes import EVAL_SEEDS, LABEL_SET, TRAIN_SEEDS, generate_scene, water_under_mountains
from engine.device import describe_device
from engine.errors import InputError
from engine.metrics import label_agreement, psnr
from engine.models.vqgan import VQGAN, VQGANConfig
from engine.paths import assets_dir
from engine.train.losses import PerceptualLoss, adaptive_weight, generator_logits, hinge_d_loss
from engine.train.task import TrainConfig, TrainTask

DEMO_DIR = "demo-asset-landscape"
DISCRIMINATOR = "loss_discriminator"  # the optional patch discriminator's attribute on the trained VQGAN
CARD_BEGIN, CARD_END = "<!-- tokenizers: begin -->", "<!-- tokenizers: end -->"


def class_mask(labels: np.ndarray, rng: np.random.Generator, max_ratio: float = 0.6) -> np.ndarray:
    """A training edit mask (1 = edit): the region of the class under a random pixel, dilated; halved when it
    covers more than max_ratio, so some of the image always stays visible."""
    h, w = labels.shape
    y, x = int(rng.integers(h)), int(rng.integers(w))
    mask = (labels == labels[y, x]).astype(np.uint8)
    mask = cv2.dilate(mask, np.ones((5, 5), np.uint8), iterations=2)
    # RegionNorm divides by the unmasked area of every level; the coarsest (1/16, nearest) must keep a pixel
    if mask.mean() > max_ratio or mask[::16, ::16].all():
        if rng.random() < 0.5:
            mask[: h // 2] = 0
        else:
            mask[:, : w // 2] = 0
    return mask.astype(np.float32)


def paint_edit(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A label map as a user leaves it after one paint stroke: everything below a row, the whole region of one
    class, or an ellipse, repainted with a random landscape class. Such maps (a sea under mountains, a lake in a
    meadow) have layouts no generated scene has; a seg VQGAN that never saw them decodes the new region back as
    neighbouring classes, and the transformers are then conditioned on codes that do not say what was painted."""
    from engine.data.landscapes import ids

    h, w = labels.shape
    new = int(rng.choice(list(vars(ids()).values())))
    kind = rng.integers(3)
    if kind == 0:
        region = np.zeros((h, w), bool)
        region[int(rng.integers(h // 4, h)):] = True
    elif kind == 1:
        region = labels == labels[int(rng.integers(h)), int(rng.integers(w))]
    else:
        region = np.zeros((h, w), np.uint8)
        centre = (int(rng.integers(w)), int(rng.integers(h)))
        axes = (int(rng.integers(4, max(5, w // 2))), int(rng.integers(4, max(5, h // 2))))
        cv2.ellipse(region, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        region = region.astype(bool)
    edited = labels.copy()
    edited[region] = new
    return edited


class LandscapeCrops(SeededStream):
    """Endless random crops (with flips) of training scenes. Scenes cost more to render than a crop costs to
    train on, so a pool of `pool` scenes is kept and one of them is replaced every `crops_per_scene` crops; each
    crop comes from a random pool scene, so a batch mixes scenes. Seeded from (config seed, rank, worker, start
    step) by the loop (engine.data.datasets.SeededStream).

    `textured` is the fraction of scenes drawn photo-textured (engine.data.textures, `sgraffito data textures`:
    the same label map filled with photographic texture); 0 draws procedural scenes only, with exactly the draws
    of the stream before the option existed. `label_edits` is the fraction of crops whose label map gets one
    paint_edit (the image is left as it was, so only the label-map VQGAN may use it); 0 draws nothing for it."""

    def __init__(self, scene_size: int, crop: int, crops_per_scene: int, mask_prob: float, pool: int = 16,
                 textured: float = 0.0, label_edits: float = 0.0):
        self.scene_size, self.crop, self.crops_per_scene, self.mask_prob = scene_size, crop, crops_per_scene, mask_prob
        self.pool = pool
        self.textured = float(textured)
        if not 0.0 <= self.textured <= 1.0:
            raise ValueError(f"options.textured must be a fraction in [0, 1], not {textured}")
        self.label_edits = float(label_edits)
        if not 0.0 <= self.label_edits <= 1.0:
            raise ValueError(f"options.label_edits must be a fraction in [0, 1], not {label_edits}")

    def __iter__(self):
        rng = self.rng()
        c, pool, count = self.crop, [], 0
        while True:
            if len(pool) < self.pool or count % self.crops_per_scene == 0:
                scene = generate_scene(self.train_seed(rng, TRAIN_SEEDS), self.scene_size)
                if self.textured and rng.random() < self.textured:  # no draw at 0: the old stream is unchanged
                    from engine.data.textures import texture_scene

                    scene = texture_scene(scene)
                if len(pool) < self.pool:
                    pool.append(scene)
                else:
                    pool[int(rng.integers(self.pool))] = scene
            count += 1
            scene = pool[int(rng.integers(len(pool)))]
            y, x = (int(rng.integers(0, n - c + 1)) for n in scene.labels.shape)
            image, labels = scene.image[y:y + c, x:x + c], scene.labels[y:y + c, x:x + c]
            if rng.random() < 0.5:
                image, labels = image[:, ::-1], labels[:, ::-1]
            labels = np.ascontiguousarray(labels)
            if self.label_edits and rng.random() < self.label_edits:
                labels = paint_edit(labels, rng)
            mask = class_mask(labels, rng) if rng.random() < self.mask_prob else np.zeros((c, c), np.float32)
            yield {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 127.5 - 1,
                   "labels": torch.from_numpy(labels.astype(np.int64)),
                   "mask": torch.from_numpy(mask)[None]}


def gradient_loss(a: torch.Tensor, b: torch.Tensor, scales: int = 3) -> torch.Tensor:
    """L1 between the horizontal and vertical differences of a and b at 1, 1/2, 1/4 scale: edges and texture."""
    total = a.new_zeros(())
    for s in range(scales):
        if s:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        total = total + (a.diff(dim=-1) - b.diff(dim=-1)).abs().mean() + (a.diff(dim=-2) - b.diff(dim=-2)).abs().mean()
    return total / scales


def local_colour_loss(a: torch.Tensor, b: torch.Tensor, cells: tuple[int, ...] = (8, 16)) -> torch.Tensor:
    """L1 between the mean colours of a and b over 8- and 16-px cells: what a region reads as at a glance. LPIPS
    and the patch discriminator barely see a shift of a region's colour (the LPIPS stage moved whole scenes by up
    to 40 levels of red), and colour is what tells water from grass, to a viewer and to the label classifier."""
    return sum((F.avg_pool2d(a, c) - F.avg_pool2d(b, c)).abs().mean() for c in cells) / len(cells)


def texture_loss(a: torch.Tensor, b: torch.Tensor, windows: tuple[int, ...] = (8, 16)) -> torch.Tensor:
    """L1 between local texture statistics of a and b: per-channel standard deviation and mean absolute horizontal
    and vertical difference in windows of 8 and 16 px. Pixel losses (L1 and gradient_loss) are minimised by the
    average of all textures a token could stand for, that is by blur; this term asks for as much grass, ripple
    and rock detail as the target has, not for its exact noise. A hand-made stand-in for taming's LPIPS + patch
    discriminator, which need VGG weights we cannot fetch and more steps than a CPU has."""
    total = a.new_zeros(())
    da, db = (a.diff(dim=-1).abs(), a.diff(dim=-2).abs()), (b.diff(dim=-1).abs(), b.diff(dim=-2).abs())
    for k in windows:
        pool = lambda v: F.avg_pool2d(v, k, stride=k // 2)  # noqa: E731
        std_a = (pool(a * a) - pool(a) ** 2).clamp(min=0).add(1e-6).sqrt()
        std_b = (pool(b * b) - pool(b) ** 2).clamp(min=0).add(1e-6).sqrt()
        total = total + (std_a - std_b).abs().mean()
        total = total + sum((pool(x) - pool(y)).abs().mean() for x, y in zip(da, db))
    return total / len(windows)


class _Codebook:
    """Data-dependent codebook care. The first `warmup` steps train a continuous autoencoder (no quantiser) while
    the encoder outputs of the last steps are kept; the codebook is then set by k-means on them, and afterwards rows
    that no token chose in the last `every` steps are re-seeded on random encoder outputs of the current batch.
    With taming's tiny uniform initialisation all tokens share a handful of codes and a CPU-sized schedule never
    gets going (the first demo tokenizers collapsed that way)."""

    def __init__(self, model: VQGAN, every: int, warmup: int, keep: int = 64):
        self.every, self.warmup = every, warmup
        self.hits = torch.zeros(model.config.n_embed)
        self.initialised = False
        self.recent: list[torch.Tensor] = []
        self.keep = keep
        model.quant_conv.register_forward_hook(lambda _m, _i, out: self._observe(out))

    def _observe(self, out: torch.Tensor) -> None:
        self.recent = (self.recent + [out.detach().permute(0, 2, 3, 1).reshape(-1, out.shape[1]).cpu()])[-self.keep:]

    def quantizing(self, step: int) -> bool:
        return step >= self.warmup

    def state_dict(self) -> dict:
        """What a resumed run needs to go on exactly: usage counts, whether k-means ran, the kept encoder outputs
        (re-seeding draws from them)."""
        return {"hits": self.hits.clone(), "initialised": self.initialised, "recent": list(self.recent)}

    def load_state_dict(self, state: dict) -> None:
        self.hits = state["hits"].clone()
        self.initialised = bool(state["initialised"])
        self.recent = list(state["recent"])

    @torch.no_grad()
    def update(self, model: VQGAN, indices: torch.Tensor | None, step: int) -> float:
        weight = model.quantize.embedding.weight
        if not self.initialised:
            if step + 1 < self.warmup or not self.recent:
                return 0.0
            self.initialised = True
            centres = kmeans(torch.cat(self.recent), weight.shape[0])
            weight.copy_(centres.to(weight))
            return float(weight.shape[0])
        if indices is None:
            return 0.0
        self.hits += torch.bincount(indices.flatten().cpu(), minlength=self.hits.numel()).float()
        if step % self.every:
            return 0.0
        dead = (self.hits == 0).nonzero().flatten()
        self.hits.zero_()
        if not len(dead):
            return 0.0
        z = self.recent[-1]
        pick = z[torch.randint(len(z), (len(dead),))]
        weight[dead.to(weight.device)] = (pick + 0.05 * z.std() * torch.randn_like(pick)).to(weight)
        return float(len(dead))


def kmeans(points: torch.Tensor, k: int, iterations: int = 20, seed: int = 0) -> torch.Tensor:
    """k centres of points (N, D) by Lloyd's algorithm from k-means++-style distance-weighted seeds; empty
    clusters are re-seeded on the points farthest from their centres."""
    g = torch.Generator().manual_seed(seed)
    points = points.float()
    centres = points[torch.randint(len(points), (1,), generator=g)]
    while len(centres) < k:  # add seeds in chunks: exact k-means++ costs k passes
        d = torch.cdist(points, centres).min(1).values.pow(2)
        take = min(k - len(centres), max(1, len(centres)))
        centres = torch.cat([centres, points[torch.multinomial(d + 1e-12, take, replacement=True, generator=g)]])
    for _ in range(iterations):
        dist = torch.cdist(points, centres)
        assign = dist.argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).float()
        empty = counts == 0
        centres = torch.where(empty[:, None], centres, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            far = dist.gather(1, assign[:, None]).flatten().argsort(descending=True)
            centres[empty] = points[far[torch.arange(int(empty.sum())) % len(far)]]
    return centres


def _training_statistics(count: int = 24, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Mean colour in [-1, 1] and label frequencies of some training scenes, to start the output layers there:
    a short CPU schedule cannot afford the thousands of small Adam steps that move a bias that far."""
    scenes = [generate_scene(int(seed), size) for seed in TRAIN_SEEDS[:count]]
    colour = np.mean([s.image.reshape(-1, 3).mean(0) for s in scenes], axis=0) / 127.5 - 1
    counts = np.bincount(np.concatenate([s.labels.ravel() for s in scenes]), minlength=182)[:182]
    return colour, (counts + 1) / (counts.sum() + 182)


def _nearest(points: np.ndarray, palette: np.ndarray) -> np.ndarray:
    return torch.cdist(torch.from_numpy(points.astype(np.float32)), torch.from_numpy(palette)).argmin(1).numpy()


def _cell_palette(colours: int, size: int, count: int = 24) -> np.ndarray:
    """A `colours`-entry palette (k-means) of the 16x16-cell mean colours of training scenes: the naive
    tokenizer with a token's bit budget."""
    means = [cv2.resize(generate_scene(int(seed), size).image, (size // 16, size // 16), interpolation=cv2.INTER_AREA)
             for seed in TRAIN_SEEDS[:count]]
    points = torch.from_numpy(np.concatenate([m.reshape(-1, 3) for m in means]).astype(np.float32))
    return kmeans(points, colours).numpy()


def _vqgan_config(options: dict, **fixed) -> VQGANConfig:
    arch = {k: options[k] for k in ("ch", "ch_mult", "num_res_blocks", "z_channels", "embed_dim", "n_embed", "norm_groups")
            if k in options}
    return VQGANConfig(**{**arch, **fixed})


def _eval_scenes(count: int, size: int):
    return [generate_scene(int(seed), size) for seed in list(EVAL_SEEDS)[:count]]


def write_card_section(directory: Path, section: str, begin: str = CARD_BEGIN, end: str = CARD_END) -> None:
    """Put `section` between one exporter's markers in the shared MODEL_CARD.md of the ASSET demo folder,
    keeping what the other exporters wrote (tokenizers here, transformers in tasks_asset.py)."""
    card = directory / "MODEL_CARD.md"
    text = card.read_text() if card.is_file() else "# ASSET demo models: synthetic landscapes\n\n"
    block = f"{begin}\n{section.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = card.with_name(".MODEL_CARD.md.tmp")
    tmp.write_text(text)
    tmp.replace(card)


def _demo_dir(task: TrainTask) -> Path:
    return Path(task.config.options.get("export_dir") or assets_dir() / "models" / DEMO_DIR)


def _record(directory: Path, stem: str, entry: dict) -> dict:
    """Training facts for the card, kept in config.json under "training" so each exporter can rebuild the card."""
    training = {}
    if (directory / "config.json").is_file():
        training = dict(read_model_config(directory).get("training", {}))
    training[stem] = entry
    return training


def _card(training: dict, notes: dict | None = None) -> str:
    lines = ["## Tokenizers (image VQGAN and segmentation VQGAN)", ""]
    lines.append("Trained from scratch with `sgraffito train vqgan|seg_vqgan` (engine/train/tasks_vqgan.py) on "
                 "procedural landscapes (engine.data.landscapes, TRAIN_SEEDS), random crops of 256 px "
                 "scenes; evaluated on held-out EVAL_SEEDS scenes at 256 px with the float32 weights (the shipped files may "
                 "store them as float16, see export_dtype in the training YAML).")
    for stem, t in training.items():
        if stem not in ("image_vqgan", "seg_vqgan"):  # the transformers' entries belong to their own section
            continue
        lines += ["", f"### {stem}.safetensors", ""]
        lines += [f"- {k}: {v}" for k, v in t.items()]
    for title, text in (notes or {}).items():  # config.json "tokenizer_notes": what the numbers mean
        lines += ["", f"### {title}", "", text]
    return "\n".join(lines) + "\n"


class _VQGANTaskBase(TrainTask):
    stem = ""

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.options = dict(config.options)
        self.codebook: _Codebook | None = None
        self._resumed_codebook: dict | None = None
        self.metrics: dict = {}  # the last evaluation, reused by export

    def train_dataset(self):
        o = self.options
        if o.get("label_edits") and self.stem != "seg_vqgan":
            raise ValueError("options.label_edits repaints label maps only, so only the seg_vqgan task takes it")
        return LandscapeCrops(o.get("scene_size", 256), o.get("crop", 128), o.get("crops_per_scene", 4),
                              o.get("mask_prob", 0.5 if self.stem == "image_vqgan" else 0.0),
                              textured=o.get("textured", 0.0), label_edits=o.get("label_edits", 0.0))

    def _finetuning_decoder(self) -> bool:
        return bool(self.options.get("decoder_from"))

    def _initial(self, model: VQGAN) -> VQGAN:
        """options.decoder_from (a trained model's safetensors): start there and train only post_quant_conv and
        the decoder. The encoder and codebook stay frozen, so the tokens (and the transformers trained on them)
        stay valid while the pictures they decode to get better."""
        if not self._finetuning_decoder():
            return model
        from safetensors.torch import load_file

        from engine.importers.state_dicts import load_state_dict_strict

        path = str(self.options["decoder_from"])
        load_state_dict_strict(model, load_file(path), path)
        for frozen in (model.encoder, model.quant_conv, model.quantize):
            frozen.requires_grad_(False)
        return model

    def _quantizing(self, model) -> bool:
        return self._finetuning_decoder() or self._codebook(model).quantizing(self.step)

    def _codebook(self, model) -> _Codebook:
        if self.codebook is None:
            raw = getattr(model, "module", model)
            self.codebook = _Codebook(raw, self.options.get("restart_every", 10), self.options.get("autoencoder_steps", 0))
            if self._resumed_codebook is not None:
                self.codebook.load_state_dict(self._resumed_codebook)
        return self.codebook

    def state_dict(self) -> dict:
        return {"codebook": self.codebook.state_dict()} if self.codebook is not None else {}

    def load_state_dict(self, state: dict) -> None:
        # the codebook helper is made with the model on the first step; it takes this state then
        self._resumed_codebook = state.get("codebook")
        if self.codebook is not None and self._resumed_codebook is not None:
            self.codebook.load_state_dict(self._resumed_codebook)

    def _restart(self, model, indices) -> float:
        if self._finetuning_decoder():
            return 0.0
        return self._codebook(model).update(getattr(model, "module", model), indices, self.step)

    def export(self, model, out_dir: Path) -> Path:
        directory = _demo_dir(self)
        metrics = self.metrics or self.evaluate(model)
        model_cfg = model.config
        entry = {
            "architecture": (f"f{model_cfg.factor}, ch {model_cfg.ch}, ch_mult {list(model_cfg.ch_mult)}, "
                             f"{model_cfg.num_res_blocks} res blocks, codebook {model_cfg.n_embed} x "
                             f"{model_cfg.embed_dim}"),
            "parameters": sum(p.numel() for p in model.parameters()),
            "steps": self.step + 1,
            "batch": f"{self.config.batch_size} crops of {self.options.get('crop', 128)} px",
            "wall time": f"{self.training_minutes():.1f} min",
            "hardware": f"{describe_device(str(self.device))}, torch threads: {torch.get_num_threads()}",
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()},
        }
        if self._finetuning_decoder():  # the tokenizer's own training stays on record; add this stage to it
            previous = dict(read_model_config(directory).get("training", {}).get(self.stem, {})) \
                if (directory / "config.json").is_file() else {}
            o = self.options
            losses = "L1" + "".join(f" + {w} x {name}" for w, name in (
                (o.get("gradient_weight", 1.0), "gradient L1"), (o.get("texture_weight", 0.0), "texture"),
                (o.get("colour_weight", 0.0), "local colour L1 (8- and 16-px cell means)"),
                (o.get("perceptual_weight", 0.0), f"LPIPS-{o.get('perceptual_net', 'vgg')}"),
                (o.get("disc_weight", 0.0), f"patch-discriminator hinge loss (adaptive weight, from step "
                                            f"{o.get('disc_start', 0)})")) if w)
            if o.get("textured"):
                losses += f", {o['textured']:.0%} of the scenes photo-textured"
            stage = (f"{entry['steps']} steps of {entry['batch']}, {entry['wall time']}, {losses}, encoder and codebook "
                     "frozen (same tokens)")
            stages = [previous["decoder fine-tune"], stage] if "decoder fine-tune" in previous else [stage]
            entry = {**previous, **{k: entry[k] for k in metrics if k in entry}, "decoder fine-tune": "; then ".join(stages)}
        training = _record(directory, self.stem, entry)
        config = {"kind": "asset", "title": "ASSET demo (synthetic landscapes)", "label_set": LABEL_SET,
                  self.stem: model_cfg.to_dict(), "training": training}
        state = {k: v for k, v in model.state_dict().items() if not k.startswith(DISCRIMINATOR + ".")}
        if self.options.get("export_dtype") == "float16":  # halves the shipped files; loading converts back
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        save_model_dir(directory, {self.stem: state}, config, merge_config=True)
        write_card_section(directory, _card(training, read_model_config(directory).get("tokenizer_notes")))
        return directory


def _loss_weight(options: dict, key: str) -> float:
    """options[key] (default 0) as a float >= 0; anything else is named (InputError), not a traceback mid-run."""
    weight = options.get(key, 0.0)
    try:
        value = float(weight)
    except (TypeError, ValueError):
        value = -1.0
    if not value >= 0:
        raise InputError(f"options.{key} must be a number >= 0, not {weight!r}")
    return value


class ImageVQGANTask(_VQGANTaskBase):
    stem = "image_vqgan"

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.colour_weight = _loss_weight(self.options, "colour_weight")

    def build_model(self):
        model = VQGAN(_vqgan_config(self.options, masked_encoder=True))
        colour, _ = _training_statistics()
        with torch.no_grad():
            model.decoder.conv_out.bias.copy_(torch.from_numpy(colour))
        model = self._initial(model)
        if self.options.get("disc_weight", 0.0):
            from engine.models.discriminator import NLayerDiscriminator

            setattr(model, DISCRIMINATOR, NLayerDiscriminator(3, int(self.options.get("disc_ndf", 64)),
                                                              int(self.options.get("disc_layers", 3))))
            # before disc_start the discriminator's parameters get no gradient (DDP must be told)
            self.find_unused_parameters = bool(self.options.get("disc_start", 0))
        return model

    def _extra_terms(self, model, x, xrec, rec_loss):
        """(loss, logs) of the optional LPIPS and adversarial terms (module docstring)."""
        o, logs = self.options, {}
        extra = xrec.new_zeros(())
        if o.get("perceptual_weight", 0.0):
            if not hasattr(self, "_perceptual"):
                self._perceptual = PerceptualLoss(o.get("perceptual_net", "vgg"))
            p = self._perceptual(xrec, x)
            extra = extra + o["perceptual_weight"] * p
            rec_loss = rec_loss + o["perceptual_weight"] * p
            logs["lpips"] = p.item()
        raw = getattr(model, "module", model)
        disc = getattr(raw, DISCRIMINATOR, None)
        if disc is not None and self.step >= o.get("disc_start", 0):
            g_loss = -generator_logits(disc, xrec).mean()
            if o.get("disc_adaptive", True) and torch.is_grad_enabled():
                weight = adaptive_weight(rec_loss, g_loss, raw.decoder.conv_out.weight, o["disc_weight"])
            else:
                weight = torch.tensor(float(o["disc_weight"]), device=x.device)
            d_loss = hinge_d_loss(disc(x.detach()), disc(xrec.detach()))
            extra = extra + weight * g_loss + d_loss
            logs.update(g_adv=g_loss.item(), d=d_loss.item(), d_weight=float(weight))
        return extra, logs

    def loss(self, model, batch):
        x, mask = batch["image"], batch["mask"]
        if self.step < self.options.get("mask_from_step", 0):  # edit masks slow the first steps down a lot
            mask = torch.zeros_like(mask)
        xrec, qloss, indices = model(x, mask, quantize=self._quantizing(model))
        l1 = (xrec - x).abs().mean()
        grad = gradient_loss(xrec, x)
        texture = texture_loss(xrec, x)
        restarted = self._restart(model, indices)
        rec_loss = l1 + self.options.get("gradient_weight", 1.0) * grad + self.options.get("texture_weight", 0.0) * texture
        colour_logs = {}
        if self.colour_weight:
            colour = local_colour_loss(xrec, x)
            rec_loss = rec_loss + self.colour_weight * colour
            colour_logs["colour"] = colour.item()
        extra, extra_logs = self._extra_terms(model, x, xrec, rec_loss)
        loss = rec_loss + extra + qloss
        with torch.no_grad():
            mse = F.mse_loss(xrec.clamp(-1, 1), x)
        return loss, {"l1": l1.item(), "grad": grad.item(), "texture": texture.item(), "codebook": qloss.item(),
                      "psnr": float(10 * torch.log10(4 / mse)), "restarted": restarted,
                      "codes_used": float(indices.unique().numel()) if indices is not None else 0.0, **colour_logs,
                      **extra_logs}

    @torch.no_grad()
    def evaluate(self, model):
        size = self.options.get("eval_size", 256)
        scenes = _eval_scenes(self.options.get("eval_scenes", 16), size)
        palette = _cell_palette(model.config.n_embed, size)
        ours, cells, coded, codes = [], [], [], set()
        agree = {"ours": [], "truth": [], "cells": []}
        for scene in scenes:
            x = torch.from_numpy(scene.image.transpose(2, 0, 1).copy()).float()[None].to(self.device) / 127.5 - 1
            _, indices = model.encode(x)
            codes.update(indices.flatten().tolist())
            rec = model.decode_code(indices).float()
            rec = ((rec[0].permute(1, 2, 0).cpu().numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
            ours.append(psnr(rec, scene.image))
            # naive baseline with more bits per token: the mean colour of each 16x16 cell, upsampled bicubically
            small = cv2.resize(scene.image, (size // 16, size // 16), interpolation=cv2.INTER_AREA)
            blurred = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
            cells.append(psnr(blurred, scene.image))
            # the same with as many bits per cell as a token: each cell mean snapped to a 512-colour palette
            snapped = palette[_nearest(small.reshape(-1, 3), palette)].reshape(small.shape).astype(np.uint8)
            coded.append(psnr(cv2.resize(snapped, (size, size), interpolation=cv2.INTER_CUBIC), scene.image))
            for key, image in (("ours", rec), ("truth", scene.image), ("cells", blurred)):
                agree[key].append(label_agreement(image, scene.labels))
        self.metrics = {"eval_psnr_db": float(np.mean(ours)), "baseline_cell_mean_psnr_db": float(np.mean(cells)),
                        "baseline_palette_cell_psnr_db": float(np.mean(coded)),
                        "eval_label_agreement": float(np.nanmean(agree["ours"])),
                        "label_agreement_of_originals": float(np.nanmean(agree["truth"])),
                        "baseline_cell_mean_label_agreement": float(np.nanmean(agree["cells"])),
                        "eval_codes_used": float(len(codes)), "eval_scenes": float(len(scenes)),
                        "eval_size_px": float(size)}
        return self.metrics


class SegVQGANTask(_VQGANTaskBase):
    stem = "seg_vqgan"

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.isolated_code_weight = _loss_weight(self.options, "isolated_code_weight")

    def build_model(self):
        model = VQGAN(_vqgan_config(self.options, in_channels=182, out_ch=182, n_labels=182))
        _, prior = _training_statistics()
        with torch.no_grad():
            model.decoder.conv_out.bias.copy_(torch.from_numpy(np.log(prior)))
        return self._initial(model)

    def loss(self, model, batch):
        labels = batch["labels"]
        raw = getattr(model, "module", model)
        z = raw.quant_conv(raw.encoder.features(raw.label_conv_in(labels)))
        quantizing = self._quantizing(model)
        if quantizing:
            quant, qloss, indices = raw.quantize(z)
        else:  # the continuous autoencoder of a training warm-up: no codes yet
            quant, qloss, indices = z, z.new_zeros(()), None
        logits = raw.decode(quant)
        ce = F.cross_entropy(logits, labels)
        logs = {"ce": ce.item(), "codebook": qloss.item()}
        loss = ce + qloss
        weight = self.isolated_code_weight
        if weight and quantizing and not self._finetuning_decoder():
            isolated = self._isolated_code_loss(raw, quant, labels)
            loss = loss + weight * isolated
            logs["isolated_ce"] = isolated.item()
        restarted = self._restart(model, indices)
        with torch.no_grad():
            accuracy = (logits.argmax(1) == labels).float().mean()
        return loss, {**logs, "accuracy": accuracy.item(), "restarted": restarted,
                      "codes_used": float(indices.unique().numel()) if indices is not None else 0.0}

    def _isolated_code_loss(self, raw, quant: torch.Tensor, labels: torch.Tensor, cells: int = 64) -> torch.Tensor:
        """Cross-entropy of single codes decoded alone (a 2 x 2 grid of one code) against the class that fills
        their cell. Without it a code comes to mean "a cell of one water class" and the decoder picks which from
        the neighbours, so a sea painted under mountains decodes (and conditions the transformers) as a lake. The
        straight-through gradient reaches the encoder, which then sends cells of different classes to different
        codes. Only cells that one class fills to 90 % take part; `cells` of them at most, drawn at random."""
        f = labels.shape[-1] // quant.shape[-1]
        b, c, h, w = quant.shape
        blocks = labels.reshape(b, h, f, w, f).permute(0, 1, 3, 2, 4).reshape(-1, f * f)
        majority, _ = blocks.mode(1)
        pure = (blocks == majority[:, None]).float().mean(1) >= 0.9
        chosen = torch.nonzero(pure).squeeze(1)
        if chosen.numel() == 0:
            return quant.new_zeros(())
        chosen = chosen[torch.randperm(chosen.numel(), device=chosen.device)[:cells]]
        vectors = quant.permute(0, 2, 3, 1).reshape(-1, c)[chosen]
        logits = raw.decode(vectors[:, :, None, None].expand(-1, -1, 2, 2))
        target = majority[chosen][:, None, None].expand(-1, *logits.shape[-2:])
        return F.cross_entropy(logits, target)

    @torch.no_grad()
    def evaluate(self, model):
        size = self.options.get("eval_size", 256)
        scenes = _eval_scenes(self.options.get("eval_scenes", 16), size)
        def reconstruct(labels: np.ndarray) -> np.ndarray:
            return model.decode_labels(model.encode_labels(torch.from_numpy(labels.astype(np.int64))[None].to(self.device)))[0].cpu().numpy()

        def cells(labels: np.ndarray) -> np.ndarray:
            # naive baseline: the label of each 16x16 cell's top-left pixel (ASSET's token-mask rule), upsampled
            return labels[::16, ::16].repeat(16, 0).repeat(16, 1)

        ours, naive, edited, edited_naive, sea = [], [], [], [], []
        rng = np.random.default_rng(0)  # the same held-out paint edits at every evaluation
        for scene in scenes:
            ours.append(float((reconstruct(scene.labels) == scene.labels).mean()))
            naive.append(float((cells(scene.labels) == scene.labels).mean()))
            # what users paint: accuracy inside the repainted region of a paint_edit
            after = paint_edit(scene.labels, rng)
            region = after != scene.labels
            if region.any():
                edited.append(float((reconstruct(after) == after)[region].mean()))
                edited_naive.append(float((cells(after) == after)[region].mean()))
            sea_map = water_under_mountains(scene)
            if sea_map is not None:
                region = sea_map != scene.labels
                sea.append(float((reconstruct(sea_map) == sea_map)[region].mean()))
        self.metrics = {"eval_pixel_accuracy": float(np.mean(ours)), "baseline_cell_label_accuracy": float(np.mean(naive))}
        if edited:  # too few or too small scenes may have nothing to measure; a card holds no NaN
            self.metrics.update(eval_painted_region_accuracy=float(np.mean(edited)),
                                baseline_painted_region_cell_accuracy=float(np.mean(edited_naive)))
        if sea:
            self.metrics["eval_sea_edit_accuracy"] = float(np.mean(sea))
        self.metrics.update(eval_scenes=float(len(scenes)), eval_size_px=float(size))
        return self.metrics
