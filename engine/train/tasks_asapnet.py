"""Training task "asapnet-landscape": the demo ASAPNet on synthetic landscapes (engine.data.landscapes).

GAN as in ASAPNet/SPADE minus the VGG loss: a conditional multiscale patch discriminator (pix2pixHD layout, hinge
loss) with discriminator feature matching, plus a reconstruction loss that stands in for the VGG perceptual loss.
VGG-19 needs ImageNet weights we cannot download, and a perceptual network we trained ourselves on these scenes
would only know their few textures. What the VGG loss mostly buys a short run is matching colours and edges at
several scales, so we use L1 on a 3-level image pyramid plus L1 on the image gradients; texture statistics come
from the discriminator's feature matching, which is itself a learned perceptual distance.

Optional terms (weights default 0, so the shipped config trains as before): weights.lpips x LPIPS (SPADE's
perceptual loss, with options.perceptual_net vgg or alex; engine/train/losses.py) and weights.taming_d x the
adversarial term of taming's unconditional patch discriminator (engine/models/discriminator.py, hinge loss)
beside the conditional multiscale one, and weights.tile_period x tile_period_loss (texture and seams repeated in
every per-pixel MLP tile). options.init_from continues a model folder's generator.

The loop has one optimizer and one backward per step, so the generator's adversarial and feature-matching terms go
through the discriminator with detached parameters (torch.func.functional_call): the sum of the generator and
discriminator losses then gives each network exactly its own gradient.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from engine.errors import InputError
from engine.model_store import save_model_dir
from engine.data.datasets import SeededStream
from engine.data.landscapes import EVAL_SEEDS, TRAIN_SEEDS, generate_scene
from engine.models.asapnet import ASAPNetConfig, ASAPNetsGenerator, dataset_preset, model_config
from engine.train.losses import PerceptualLoss, generator_logits, hinge_d_loss
from engine.train.task import TrainConfig, TrainTask, lr_lambda

MODEL_NAME = "demo-asapnet-landscape"


class PatchDiscriminator(nn.Module):
    """pix2pixHD's NLayerDiscriminator: 4x4 convs, stride 2 then 1, instance norm, leaky ReLU 0.2; every
    layer's output is kept for feature matching."""

    def __init__(self, in_channels: int, ndf: int = 32, n_layers: int = 3):
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(in_channels, ndf, 4, 2, 2), nn.LeakyReLU(0.2))]
        c = ndf
        for i in range(1, n_layers):
            out = min(c * 2, 256)
            layers.append(nn.Sequential(nn.Conv2d(c, out, 4, 2 if i < n_layers - 1 else 1, 2),
                                        nn.InstanceNorm2d(out), nn.LeakyReLU(0.2)))
            c = out
        layers.append(nn.Conv2d(c, 1, 4, 1, 2))
        self.model = nn.ModuleList(layers)

    def forward(self, x):
        feats = []
        for layer in self.model:
            x = layer(x)
            feats.append(x)
        return feats


class MultiscaleDiscriminator(nn.Module):
    def __init__(self, in_channels: int, num_d: int = 2, ndf: int = 32):
        super().__init__()
        self.scales = nn.ModuleList(PatchDiscriminator(in_channels, ndf) for _ in range(num_d))

    def forward(self, x):
        out = []
        for d in self.scales:
            out.append(d(x))
            x = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
        return out


class ASAPNetGAN(nn.Module):
    """netG + netD; forward(onehot, real) -> (loss, logs) with the combined loss described in the module doc."""

    def __init__(self, cfg: ASAPNetConfig, weights: dict[str, float], perceptual_net: str = "vgg"):
        super().__init__()
        self.netG = ASAPNetsGenerator(cfg)
        self.netD = MultiscaleDiscriminator(cfg.in_channels + 3)
        if weights.get("taming_d", 0.0):
            from engine.models.discriminator import NLayerDiscriminator

            self.netD_patch = NLayerDiscriminator(3, 64, 3)
        self.weights = weights
        self.perceptual = PerceptualLoss(perceptual_net) if weights.get("lpips", 0.0) else None
        init_hypernetwork(self.netG)

    def forward(self, x: torch.Tensor, real: torch.Tensor):
        w = self.weights
        fake = self.netG(x)
        d_real = self.netD(torch.cat([x, real], 1))
        d_fake = self.netD(torch.cat([x, fake.detach()], 1))
        n = len(d_real)
        loss_d = sum(F.relu(1 - r[-1]).mean() + F.relu(1 + f[-1]).mean() for r, f in zip(d_real, d_fake)) / n
        frozen = {name: p.detach() for name, p in self.netD.named_parameters()}
        g_fake = functional_call(self.netD, frozen, (torch.cat([x, fake], 1),))
        adv = sum(-f[-1].mean() for f in g_fake) / n
        fm = sum(F.l1_loss(a, b.detach()) for fs, rs in zip(g_fake, d_real) for a, b in zip(fs[:-1], rs[:-1])) / n
        rec, grad = pyramid_losses(fake, real)
        loss_g = adv + w["fm"] * fm + w["l1"] * rec + w["grad"] * grad
        terms = [("d", loss_d), ("g_adv", adv), ("fm", fm), ("l1", rec), ("grad", grad)]
        if w.get("tile_period", 0.0):
            period = tile_period_loss(fake, real, self.netG.config.downsampling)
            loss_g = loss_g + w["tile_period"] * period
            terms.append(("tile_period", period))
        if self.perceptual is not None:
            p = self.perceptual(fake, real)
            loss_g = loss_g + w["lpips"] * p
            terms.append(("lpips", p))
        if hasattr(self, "netD_patch"):
            g_patch = -generator_logits(self.netD_patch, fake).mean()
            d_patch = hinge_d_loss(self.netD_patch(real), self.netD_patch(fake.detach()))
            loss_g = loss_g + w["taming_d"] * g_patch
            loss_d = loss_d + d_patch
            terms += [("g_patch", g_patch), ("d_patch", d_patch)]
        logs = {k: float(v.detach()) for k, v in terms}
        return loss_d + loss_g, logs


def pyramid_losses(fake: torch.Tensor, real: torch.Tensor, levels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean L1 of the images and of their x/y differences over a `levels`-level average-pooling pyramid."""
    rec = grad = 0.0
    for level in range(levels):
        if level:
            fake, real = F.avg_pool2d(fake, 2), F.avg_pool2d(real, 2)
        rec = rec + F.l1_loss(fake, real)
        grad = grad + F.l1_loss(fake.diff(dim=-1), real.diff(dim=-1)) + F.l1_loss(fake.diff(dim=-2), real.diff(dim=-2))
    return rec / levels, grad / levels


def local_tile_pattern(x: torch.Tensor, period: int, window: int = 4) -> torch.Tensor:
    """(B, C, H, W) -> (B, C * period^2, H', W'): the mean period x period tile of each window x window block of
    tiles (blocks overlap by half), minus the tile's own mean. What a pixel shares with the pixels at the same place
    in its neighbouring tiles: for a photo mostly its smooth shading, for a render whose per-tile MLPs repeat the
    same texture or seam in every tile, that texture and seam (the 16-px grid, GRID_PERIOD in engine.metrics)."""
    b, c, h, w = x.shape
    tiles = x.reshape(b, c, h // period, period, w // period, period).permute(0, 1, 3, 5, 2, 4)
    tiles = tiles.reshape(b, c * period * period, h // period, w // period)
    window = min(window, h // period, w // period)
    pattern = F.avg_pool2d(tiles, window, stride=max(1, window // 2))
    pattern = pattern.view(b, c, period * period, *pattern.shape[2:])
    return (pattern - pattern.mean(2, keepdim=True)).flatten(1, 2)


def tile_period_loss(fake: torch.Tensor, real: torch.Tensor, period: int) -> torch.Tensor:
    """L1 between the local tile patterns (local_tile_pattern) of the render and the scene: the energy the render
    adds at the MLP tile's period and its harmonics, which ASAPNet's tile-periodic positional codes and per-tile
    parameters make easy to add and no other term singles out. A generator that varies its texture from tile to
    tile, as a photo does, pays nothing. On the demo (its card) 2500 steps at weight 50 lowered it little and did not
    lower the grid-artefact score."""
    return F.l1_loss(local_tile_pattern(fake, period), local_tile_pattern(real, period))


def init_hypernetwork(g: ASAPNetsGenerator, modulation: float = 0.2) -> None:
    """Start from a sensible per-pixel MLP: the head's bias holds one MLP shared by every tile, and
    the head's weights are scaled down so the LR stream starts as a small modulation of it. (Upstream's xavier
    init with gain 0.02 and zero head bias gives an almost constant output that a short CPU run cannot escape.)"""
    head = g.lowres_stream.model[-1]
    hr = g.highres_stream
    fan_in = head.weight.shape[1] * 0.5  # ReLU features after instance norm: E[h^2] = 1/2
    with torch.no_grad():
        head.bias.zero_()
        last = len(hr.splits) - 1
        for i, ((b0, w0, w1), nci) in enumerate(zip(hr.splits, hr.channels[:-1])):
            std = math.sqrt((0.25 if i == last else 2.0) / nci)  # He for leaky ReLU; a small last layer: mid-gray
            head.bias[w0:w1].normal_(0, std)
            head.weight[w0:w1] *= modulation * std / math.sqrt(fan_in) / head.weight[w0:w1].std()
            head.weight[b0:w0] *= modulation * 0.1 / math.sqrt(fan_in) / head.weight[b0:w0].std()


class LandscapeScenes(SeededStream):
    """Endless (channel index map, image in [-1, 1]) pairs from random training seeds, randomly mirrored; seeded
    from (config seed, rank, worker, start step) by the loop (engine.data.datasets.SeededStream).

    `textured` is the fraction of scenes drawn photo-textured (engine.data.textures: the same label map with
    flightgear-data-base photo textures, `sgraffito data textures`); 0 draws procedural scenes only, with exactly
    the draws of the stream before the option existed."""

    def __init__(self, size: int, seed: int, encoding, textured: float = 0.0):
        self.size, self.encoding, self.textured = size, encoding, float(textured)
        if not 0.0 <= self.textured <= 1.0:
            raise ValueError(f"options.textured must be a fraction in [0, 1], not {textured}")
        self.place(seed)

    def __iter__(self):
        rng = self.rng()
        while True:
            scene = generate_scene(self.train_seed(rng, TRAIN_SEEDS), self.size)
            if self.textured and rng.random() < self.textured:  # no draw at 0: the procedural stream is unchanged
                from engine.data.textures import texture_scene

                scene = texture_scene(scene)
            index, image = self.encoding.index_map(scene.labels), scene.image
            if rng.random() < 0.5:
                index, image = index[:, ::-1], image[:, ::-1]
            image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 127.5 - 1
            yield torch.from_numpy(np.ascontiguousarray(index)), image


class ASAPNetLandscapeTask(TrainTask):
    """options: size (256), generator (ASAPNetConfig fields), lr_d, weights {fm, l1, grad, lpips, taming_d,
    tile_period}, perceptual_net (vgg|alex), textured (fraction of photo-textured training scenes, default 0),
    eval_scenes, init_trunk_from (an ASAPNet model folder whose LR stream but not its parameter head this run
    continues: load_trunk), init_from (an ASAPNet model folder of the same architecture whose generator this run continues,
    loaded key for key; the discriminator starts fresh)."""

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        opts = config.options
        self.size = int(opts.get("size", 256))
        self.preset = dataset_preset("landscape")
        self.gen_cfg = ASAPNetConfig(in_channels=self.preset.encoding.channels, downsampling=self.size // 16,
                                     **opts.get("generator", {}))
        self.weights = {"fm": 10.0, "l1": 10.0, "grad": 5.0} | opts.get("weights", {})
        self.eval_scenes = int(opts.get("eval_scenes", 32))

    def build_model(self) -> nn.Module:
        model = ASAPNetGAN(self.gen_cfg, self.weights, self.config.options.get("perceptual_net", "vgg"))
        init = self.config.options.get("init_from")
        if init:
            from engine.importers.state_dicts import load_state_dict_strict
            from engine.pipelines.base import load_folder

            config, weights = load_folder(Path(init), "asapnet", ["netG"])
            if ASAPNetConfig.from_dict(config["generator"]) != self.gen_cfg:
                raise InputError(f"options.init_from: {init} holds another generator architecture "
                                 f"({config['generator']}) than this run's ({self.gen_cfg.to_dict()})")
            load_state_dict_strict(model.netG, weights["netG"], str(Path(init) / "netG.safetensors"))
        trunk = self.config.options.get("init_trunk_from")
        if trunk:
            load_trunk(model.netG, Path(trunk))
        return model

    def train_dataset(self):
        return LandscapeScenes(self.size, self.config.seed, self.preset.encoding,
                               float(self.config.options.get("textured", 0.0)))

    def onehot(self, index: torch.Tensor) -> torch.Tensor:
        n = self.preset.encoding.num_classes + int(self.preset.encoding.dontcare)
        return torch.zeros(index.shape[0], n, *index.shape[1:], device=index.device).scatter_(1, index[:, None], 1.0)

    def loss(self, model, batch):
        index, real = batch
        return model(self.onehot(index), real)

    def configure_optimizers(self, model: ASAPNetGAN):
        """Adam, beta1 0.5 as in pix2pixHD; the discriminator gets its own learning rate (options.lr_d)."""
        cfg = self.config
        lr_d = float(cfg.options.get("lr_d", cfg.lr))
        optimizer = torch.optim.Adam([
            {"params": list(model.netG.parameters()), "lr": cfg.lr},
            {"params": list(model.netD.parameters()) + (list(model.netD_patch.parameters())
                                                         if hasattr(model, "netD_patch") else []), "lr": lr_d},
        ], betas=cfg.betas)  # fmt: skip
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))

    def evaluate(self, model: ASAPNetGAN) -> dict[str, float]:
        return evaluate_generator(model.netG, self.preset.encoding, self.size, self.eval_scenes)

    def export(self, model: ASAPNetGAN, out_dir: Path) -> Path:
        config = model_config(self.gen_cfg, self.preset, "ASAPNet demo (synthetic landscapes)", dataset="landscape",
                              training={"task": self.config.task, "steps": self.step + 1})
        return save_model_dir(Path(out_dir) / MODEL_NAME, {"netG": model.netG.state_dict()}, config)


def load_trunk(netG: ASAPNetsGenerator, folder: Path) -> None:
    """Continue the LR stream of another ASAPNet model folder, all but its parameter head, whose size depends on the
    per-pixel MLP (positional codes, noise): every trunk key must be there with its shape, or InputError names it.
    The head keeps its fresh init_hypernetwork start."""
    from engine.pipelines.base import load_folder

    _, weights = load_folder(folder, "asapnet", ["netG"])
    source = weights["netG"]
    head = f"lowres_stream.model.{len(netG.lowres_stream.model) - 1}."
    own = {k: v for k, v in netG.state_dict().items() if not k.startswith(head)}
    for key, value in own.items():
        if key not in source or tuple(source[key].shape) != tuple(value.shape):
            found = tuple(source[key].shape) if key in source else "missing"
            raise InputError(f"options.init_trunk_from: {folder} has another LR stream: {key} is {found}, "
                             f"this run's is {tuple(value.shape)}")
    netG.load_state_dict({k: source[k].to(v.dtype) for k, v in own.items()}, strict=False)


def evaluate_generator(netG: ASAPNetsGenerator, encoding, size: int, scenes: int) -> dict[str, float]:
    """Mean PSNR / SSIM against the synthetic ground truth and label agreement on the first held-out scenes."""
    from engine import metrics

    rows = []
    device = next(netG.parameters()).device
    for seed in EVAL_SEEDS[:scenes]:
        scene = generate_scene(seed, size)
        with torch.no_grad():
            out = netG(encoding.encode(scene.labels).to(device))[0]
        image = ((out.clamp(-1, 1) + 1) * 127.5 + 0.5).byte().permute(1, 2, 0).cpu().numpy()
        rows.append((metrics.psnr(image, scene.image), metrics.ssim(image, scene.image),
                     metrics.label_agreement(image, scene.labels)))
    psnr, ssim, agreement = np.mean(rows, axis=0)
    return {"psnr": float(psnr), "ssim": float(ssim), "label_agreement": float(agreement)}




MATE_PHOTOS = ("Dune.jpg", "Storm.jpg")  # with assets/samples/summer-palace.jpg: the card's held-out real photos


def held_out_render_photos() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (photo, label map)} never trained on: the repo's summer palace with its hand-made label map, and
    Debian mate-backgrounds' Dune and Storm (when installed) resized to 512 px wide with the demo segmenter's
    labels."""
    import cv2

    from engine.imageio import load_label_map, load_photo
    from engine.labels import load_label_set
    from engine.paths import assets_dir
    from engine.pipelines.segment import DemoSegmenterModel, segment

    samples = assets_dir() / "samples"
    palace = load_photo(samples / "summer-palace.jpg").rgb
    labels = load_label_map(samples / "summer-palace.labels.png", load_label_set(), (palace.shape[1], palace.shape[0]))
    photos = {"summer-palace": (palace, labels)}
    mate = Path("/usr/share/backgrounds/mate/nature")
    segmenter = None
    for name in MATE_PHOTOS:
        if not (mate / name).is_file():
            continue
        segmenter = segmenter or DemoSegmenterModel.from_folder(assets_dir() / "models" / "demo-segmenter-landscape")
        rgb = load_photo(mate / name).rgb
        h, w = rgb.shape[:2]
        rgb = cv2.resize(rgb, (512, round(h * 512 / w)), interpolation=cv2.INTER_AREA)
        photos[f"mate/{name}"] = (rgb, segment(segmenter, rgb))
    return photos


def held_out_labelled_photos() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (photo, demo-segmenter label map)} of engine.data.photos.held_out_photos: the photo cache's held-out
    split and the mate-backgrounds landscapes at 512 x 384, the real photos of the ASSET card's edits."""
    from engine.data.photos import held_out_photos
    from engine.paths import assets_dir
    from engine.pipelines.segment import DemoSegmenterModel, segment

    segmenter = DemoSegmenterModel.from_folder(assets_dir() / "models" / "demo-segmenter-landscape")
    return {name: (rgb, segment(segmenter, rgb)) for name, rgb in held_out_photos().items()}


def evaluate_renders(folders: dict[str, Path], scenes: int = 32) -> dict[str, dict[str, dict[str, float]]]:
    """The model card's table: {set: {model: {metric: value}}} for each model folder in `folders` and the naive
    baseline (every pixel its label's mean colour over 80 training scenes drawn as in training, 3 in 4
    photo-textured), on EVAL_SEEDS[:scenes] at 256 px once procedural and once photo-textured, on the card's first
    three real photos (held_out_render_photos) rendered at their size, and on the held-out photos of the ASSET card
    (held_out_labelled_photos). Metrics: LPIPS (AlexNet and VGG16) to the
    reference, label agreement of the render (the appearance classifier and the VGG16 judge), grid-artefact score
    (median over images)."""
    from engine import metrics
    from engine.data.textures import texture_scene
    from engine.pipelines.asapnet import ASAPNetRenderer

    rng = np.random.default_rng(0)
    sums: dict[int, np.ndarray] = {}
    for i in range(80):
        scene = generate_scene(int(TRAIN_SEEDS[20_000 + i]), 256)
        if rng.random() < 0.75:
            scene = texture_scene(scene)
        for label in np.unique(scene.labels):
            pixels = scene.image[scene.labels == label].astype(np.float64)
            sums[int(label)] = sums.get(int(label), np.zeros(4)) + np.append(pixels.sum(0), len(pixels))
    means = {k: v[:3] / v[3] for k, v in sums.items()}
    fallback = np.mean(list(means.values()), axis=0)

    def naive(labels: np.ndarray) -> np.ndarray:
        out = np.empty((*labels.shape, 3), np.float64)
        for label in np.unique(labels):
            out[labels == label] = means.get(int(label), fallback)
        return np.rint(out).astype(np.uint8)

    renderers = {name: ASAPNetRenderer.from_folder(Path(folder)) for name, folder in folders.items()}
    sets: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"procedural": [], "photo-textured": []}
    for seed in EVAL_SEEDS[:scenes]:
        scene = generate_scene(int(seed), 256)
        sets["procedural"].append((scene.image, scene.labels))
        sets["photo-textured"].append((texture_scene(scene).image, scene.labels))
    sets["real photos"] = list(held_out_render_photos().values())
    sets["held-out photos"] = list(held_out_labelled_photos().values())
    results: dict[str, dict[str, dict[str, float]]] = {}
    for set_name, pairs in sets.items():
        rows: dict[str, list[list[float]]] = {}
        for reference, labels in pairs:
            outputs = {name: r.render(labels) for name, r in renderers.items()} | {"naive": naive(labels)}
            for name, image in outputs.items():
                rows.setdefault(name, []).append([
                    metrics.lpips(image, reference, net="alex"), metrics.lpips(image, reference, net="vgg"),
                    metrics.label_agreement(image, labels), metrics.grid_artefact_score(image, reference),
                    metrics.vgg_label_agreement(image, labels)])
        results[set_name] = {}
        for name, values in rows.items():
            v = np.array(values)
            results[set_name][name] = {"lpips_alex": float(v[:, 0].mean()), "lpips_vgg": float(v[:, 1].mean()),
                                       "label_agreement": float(np.nanmean(v[:, 2])),
                                       "grid_median": float(np.median(v[:, 3])),
                                       "label_agreement_vgg": float(np.nanmean(v[:, 4]))}
    return results
