"""Lightning checkpoints of taming-transformers and ASSET: VQGANs (`sgraffito import vqgan`) and ASSET bundles
(`sgraffito import asset`: the SGA checkpoint with both tokenizers, plus its guiding checkpoint).

Every tensor is checked strictly against our modules (engine.models.vqgan, engine.models.asset), whose attribute
names are the official keys; the architecture is read from the tensor shapes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from engine.errors import CheckpointError, InputError
from engine.importers import Importer
from engine.importers.state_dicts import load_state_dict_strict, read_checkpoint, split_by_prefix
from engine.model_store import new_model_dir, save_model_dir
from engine.models import asset
from engine.models.vqgan import VQGAN, config_from_state_dict


def vqgan_from_state_dict(sd: dict[str, torch.Tensor], source: str, **overrides) -> VQGAN:
    """A VQGAN built from and strictly loaded with `sd` (official keys; taming's `loss.*` training keys dropped)."""
    sd = {k: v for k, v in sd.items() if not k.startswith("loss.")}
    model = VQGAN(config_from_state_dict(sd, **overrides))
    load_state_dict_strict(model, sd, source)
    return model.eval()


def _import_vqgan(args: argparse.Namespace) -> Path:
    source = str(args.file)
    sd = read_checkpoint(args.file)
    if any(k.startswith("first_stage_model.") for k in sd):
        raise InputError(f"{source} is a transformer checkpoint; import its tokenizer with `sgraffito import asset`"
                         " or give the VQGAN checkpoint itself")
    model = vqgan_from_state_dict(sd, source)
    cfg = model.config
    directory = new_model_dir(args.name or Path(source).stem.replace(" ", "-"), overwrite=args.force)
    title = f"VQGAN f{cfg.factor}, {cfg.n_embed} codes ({Path(source).name})"
    save_model_dir(directory, {"vqgan": model.state_dict()},
                   {"kind": "vqgan", "title": title, "source": Path(source).name, "vqgan": cfg.to_dict()})
    return directory


def _vqgan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Example: sgraffito import vqgan vqgan_imagenet_f16_1024/ckpts/last.ckpt --name imagenet-f16-1024"


VQGAN_IMPORTER = Importer(
    "vqgan", "a taming-transformers VQGAN checkpoint (e.g. vqgan_imagenet_f16_1024); config read from shapes",
    _vqgan_arguments, _import_vqgan)


def split_asset_tokenizers(sd: dict[str, torch.Tensor], source: str) -> tuple[VQGAN, VQGAN, dict, dict]:
    """The image VQGAN (mask-aware encoder) and the segmentation VQGAN of an ASSET checkpoint, plus its
    `transformer.` weights and the remaining keys (e.g. `guiding_transformer.`)."""
    parts = split_by_prefix(sd, ["first_stage_model", "cond_stage_model", "transformer"])
    for prefix in ("first_stage_model", "cond_stage_model"):
        if not parts[prefix]:
            raise CheckpointError(f"{source}: no {prefix}.* keys; not an ASSET checkpoint")
    image = vqgan_from_state_dict(parts["first_stage_model"], f"{source} (first_stage_model)", masked_encoder=True)
    seg = vqgan_from_state_dict(parts["cond_stage_model"], f"{source} (cond_stage_model)")
    return image, seg, parts["transformer"], parts[""]


def _import_asset(args: argparse.Namespace) -> Path:
    source, guiding_source = str(args.file), str(args.guiding)
    image, seg, transformer_sd, rest = split_asset_tokenizers(read_checkpoint(args.file), source)
    if not transformer_sd:
        raise CheckpointError(f"{source}: no transformer.* keys; not an ASSET checkpoint")
    guiding_sd = split_by_prefix(read_checkpoint(args.guiding), ["transformer"])["transformer"]
    if not guiding_sd:
        raise CheckpointError(f"{guiding_source}: no transformer.* keys; not an ASSET guiding checkpoint")
    transformers = {}
    for stem, sd, where in (("sga", transformer_sd, source), ("guiding", guiding_sd, guiding_source)):
        cfg = asset.config_from_state_dict(sd)
        model = asset.ASSET(cfg)
        load_state_dict_strict(model, sd, f"{where} (transformer)")
        transformers[stem] = (cfg, model.state_dict())
    if transformers["sga"][0].vocab_size != image.config.n_embed:
        raise CheckpointError(f"{source}: transformer vocabulary {transformers['sga'][0].vocab_size} does not match "
                              f"the image VQGAN's {image.config.n_embed} codes")
    n_labels = seg.config.in_channels
    directory = new_model_dir(args.name or Path(source).stem.replace(" ", "-"), overwrite=args.force)
    config = {
        "kind": "asset",
        "title": f"ASSET {Path(source).stem} ({image.config.n_embed} codes, {n_labels} classes)",
        "source": [Path(source).name, Path(guiding_source).name],
        # landscape models use the 182 0-based COCO-Stuff ids, COCO models 183 with 0 = unlabeled
        "label_set": "coco-stuff-182" if n_labels == 182 else f"coco-stuff-{n_labels}",
        "image_vqgan": image.config.to_dict(),
        "seg_vqgan": seg.config.to_dict(),
        "sga": transformers["sga"][0].to_dict(),
        "guiding": transformers["guiding"][0].to_dict(),
        # Lightning also saved the SGA model's frozen copy of the guiding transformer; the guiding file is used
        "ignored_keys": sorted({k.split(".")[0] for k in rest}),
    }
    save_model_dir(directory, {"image_vqgan": image.state_dict(), "seg_vqgan": seg.state_dict(),
                               "sga": transformers["sga"][1], "guiding": transformers["guiding"][1]}, config)
    return directory


def _asset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--guiding", type=Path, required=True, metavar="GUIDING.ckpt",
                        help="the guiding transformer checkpoint of the same bundle (e.g. landscape_guiding.ckpt)")
    parser.epilog = ("Example: sgraffito import asset landscape/landscape_1024.ckpt "
                     "--guiding landscape/landscape_guiding.ckpt --name asset-landscape")


ASSET_IMPORTER = Importer(
    "asset", "an official ASSET bundle: the SGA checkpoint (image + seg VQGANs + transformer) and its guiding "
             "checkpoint", _asset_arguments, _import_asset)
