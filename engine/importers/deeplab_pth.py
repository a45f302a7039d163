"""DeepLab-v2 ResNet-101 MSC checkpoints of kazuto1011/deeplab-pytorch -> a deeplab model folder.

`sgraffito import deeplab deeplabv2_resnet101_msc-cocostuff164k-100000.pth` (COCO-Stuff 164k, 182 classes, the
0-based COCO-Stuff ids of label set coco-stuff-182 that taming's and ASSET's landscape models use). The file is
read through the restricted unpickler; its keys are the MSC module's (`base.layer1.conv1.conv.weight`, ...); the
network's size (classes, stem width, blocks per stage) comes from the tensor shapes, the atrous rates from
--atrous-rates (upstream: 6,12,18,24; the "DeepLabV2S" variant 3,6,9,12), and every key and shape is checked
strictly against engine.models.deeplab.MSC, with a report naming what does not fit.
"""

from __future__ import annotations

import re
from pathlib import Path

from engine.errors import CheckpointError, InputError
from engine.importers import Importer
from engine.importers.state_dicts import load_state_dict_strict, read_checkpoint
from engine.model_store import new_model_dir, save_model_dir
from engine.models.deeplab import MSC, DeepLabConfig

DEFAULT_NAME = "deeplab-cocostuff164k"


def config_from_state_dict(sd, atrous_rates=(6, 12, 18, 24), source: str = "checkpoint") -> DeepLabConfig:
    """The network size the keys and shapes describe."""
    stem = sd.get("base.layer1.conv1.conv.weight")
    head = sd.get("base.aspp.c0.weight")
    if stem is None or head is None:
        some = ", ".join(list(sd)[:5])
        raise CheckpointError(f"{source}: not a DeepLab-v2 MSC state dict (no base.layer1.conv1.conv.weight or "
                              f"base.aspp.c0.weight; first keys: {some})")
    blocks = []
    for layer in range(2, 6):
        numbers = {int(m.group(1)) for k in sd if (m := re.match(rf"base\.layer{layer}\.block(\d+)\.", k))}
        blocks.append(max(numbers) if numbers else 0)
    if 0 in blocks:
        raise CheckpointError(f"{source}: stage layer{blocks.index(0) + 2} has no blocks")
    return DeepLabConfig(n_classes=int(head.shape[0]), n_blocks=tuple(blocks), atrous_rates=tuple(atrous_rates),
                         width=int(stem.shape[0]))


def import_checkpoint(path, atrous_rates=(6, 12, 18, 24), label_set: str = "coco-stuff-182"):
    """An official .pth -> (config.json dict, state dict), loaded strictly into engine.models.deeplab.MSC."""
    from engine.labels import load_label_set

    path = Path(path)
    sd = read_checkpoint(path)
    cfg = config_from_state_dict(sd, atrous_rates, str(path))
    labels = load_label_set(label_set)
    ids = sorted(label.id for label in labels.labels)
    if ids[: cfg.n_classes] != list(range(cfg.n_classes)) or len(ids) < cfg.n_classes:
        raise CheckpointError(f"{path}: {cfg.n_classes} classes, but label set {label_set} does not number its "
                              f"labels 0..{cfg.n_classes - 1} (COCO-Stuff 164k models have 182 classes: "
                              "coco-stuff-182)")
    model = MSC(cfg)
    load_state_dict_strict(model, sd, str(path))
    config = {"kind": "deeplab", "title": f"DeepLab-v2 ResNet-101 MSC ({path.name})", "label_set": label_set,
              "network": cfg.to_dict(), "class_ids": list(range(cfg.n_classes)), "source": str(path),
              "preprocessing": "long side 513 (cv2 bilinear), BGR minus mean (104.008, 116.669, 122.675)"}
    return config, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _rates(text: str) -> tuple[int, ...]:
    try:
        rates = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--atrous-rates {text!r}: expected comma-separated integers, e.g. 6,12,18,24") from None
    if not rates or min(rates) < 1:
        raise InputError(f"--atrous-rates {text!r}: expected positive integers")
    return rates


def _importer_arguments(parser) -> None:
    parser.add_argument("--atrous-rates", default="6,12,18,24", metavar="R,R,R,R",
                        help="ASPP dilations (default 6,12,18,24 as DeepLabV2_ResNet101_MSC; 3,6,9,12 for V2S)")
    parser.add_argument("--label-set", default="coco-stuff-182", metavar="SET",
                        help="the label set whose ids 0..N-1 are the classes (default coco-stuff-182)")


def _importer_run(args) -> Path:
    config, sd = import_checkpoint(Path(args.file), _rates(args.atrous_rates), args.label_set)
    name = args.name or DEFAULT_NAME
    return save_model_dir(new_model_dir(name, overwrite=args.force), {"model": sd}, config)


IMPORTER = Importer("deeplab", "DeepLab-v2 ResNet-101 MSC (kazuto1011/deeplab-pytorch, e.g. "
                    "deeplabv2_resnet101_msc-cocostuff164k-100000.pth)", _importer_arguments, _importer_run)
