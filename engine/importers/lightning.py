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
    stage = getattr(args, "stage", None)
    if stage:
        part = split_by_prefix(sd, [stage])[stage]
        if not part:
            found = sorted({k.split(".")[0] for k in sd if "." in k})
            raise CheckpointError(f"{source}: no {stage}.* keys (prefixes found: {', '.join(found) or 'none'})")
        sd, source = part, f"{source} ({stage})"
    elif any(k.startswith("first_stage_model.") for k in sd):
        raise InputError(f"{source} is a transformer checkpoint; import an ASSET bundle with `sgraffito import "
                         "asset`, or one of its tokenizers with --stage first_stage_model (or cond_stage_model)")
    model = vqgan_from_state_dict(sd, source)
    cfg = model.config
    directory = new_model_dir(args.name or Path(source).stem.replace(" ", "-"), overwrite=args.force)
    title = f"VQGAN f{cfg.factor}, {cfg.n_embed} codes ({Path(source).name})"
    save_model_dir(directory, {"vqgan": model.state_dict()},
                   {"kind": "vqgan", "title": title, "source": Path(source).name, "vqgan": cfg.to_dict()})
    return directory


def _vqgan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", choices=["first_stage_model", "cond_stage_model"],
                        help="import this tokenizer of a transformer checkpoint (e.g. taming's S-FLCKR last.ckpt)")
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
    # ASSET's VQSegmentationModel always has the `colorize` buffer: a checkpoint without it is refused like any
    # missing key (built from the input channels, so the strict check reports it)
    conv_in = parts["cond_stage_model"].get("encoder.conv_in.weight")
    labels = {"n_labels": int(conv_in.shape[1])} if conv_in is not None and conv_in.dim() == 4 else {}
    seg = vqgan_from_state_dict(parts["cond_stage_model"], f"{source} (cond_stage_model)", **labels)
    return image, seg, parts["transformer"], parts[""]


# ASSET.__init__'s defaults (BartConfig arguments the official yamls leave out): d_model 1024, 16 + 16 heads of 64
# (../shared/reference/asset_taming.md 2.3). The head count cannot be read from tensor shapes.
OFFICIAL_TRANSFORMER_DEFAULTS = {"d_model": 1024, "encoder_attention_heads": 16, "decoder_attention_heads": 16,
                                 "encoder_ffn_dim": 4096, "decoder_ffn_dim": 4096}
# yaml key -> ASSETConfig field, for the transformer_config.params checked against the checkpoint
_YAML_FIELDS = {"vocab_size": "vocab_size", "d_model": "d_model", "encoder_layers": "encoder_layers",
                "decoder_layers": "decoder_layers", "encoder_attention_heads": "encoder_attention_heads",
                "decoder_attention_heads": "decoder_attention_heads", "encoder_ffn_dim": "encoder_ffn_dim",
                "decoder_ffn_dim": "decoder_ffn_dim", "max_position_embeddings": "max_position_embeddings",
                "block_h": "block_h", "block_w": "block_w", "PEG_list": "peg_list", "PEG_ks": "peg_ks"}


def read_asset_yaml(path: Path) -> dict:
    """The official model config of an ASSET bundle (e.g. landscape_1024.yaml): {"transformer": the
    transformer's architecture with ASSET.__init__'s defaults filled in, "n_embed", "n_labels"} (None if absent)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such config file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not a readable YAML file ({error})") from None
    try:
        params = data["model"]["params"]
        transformer = dict(params["transformer_config"]["params"] or {})
    except (KeyError, TypeError):
        raise CheckpointError(f"{path}: not an ASSET model config (no model.params.transformer_config.params)") \
            from None

    def stage_param(stage, key):
        try:
            return params[stage]["params"][key]
        except (KeyError, TypeError):
            return None

    fields = {**OFFICIAL_TRANSFORMER_DEFAULTS, **{k: v for k, v in transformer.items() if k in _YAML_FIELDS}}
    return {"transformer": {_YAML_FIELDS[k]: (list(v) if k == "PEG_list" else v) for k, v in fields.items()},
            "n_embed": stage_param("first_stage_config", "n_embed"),
            "n_labels": stage_param("cond_stage_config", "n_labels")}


def asset_config_from_yaml(sd: dict, official: dict, source: str, config_source: str) -> asset.ASSETConfig:
    """The transformer's architecture: shapes from the checkpoint, head counts from the official config; any field
    the config states that the shapes contradict is refused, naming both values."""
    heads = {k: official[k] for k in ("encoder_attention_heads", "decoder_attention_heads")}
    try:
        cfg = asset.config_from_state_dict(sd, **heads)
    except (KeyError, ValueError, IndexError) as error:
        raise CheckpointError(f"{source}: not an ASSET transformer ({type(error).__name__}: {error})") from None
    inferred = cfg.to_dict()
    mismatched = [f"{name}: config {official[name]!r}, checkpoint {inferred[name]!r}"
                  for name in official if name in inferred and not name.endswith("attention_heads")
                  and (list(inferred[name]) if isinstance(inferred[name], (list, tuple)) else inferred[name])
                  != official[name]]
    for name, count in heads.items():
        if not isinstance(count, int) or count < 1 or cfg.d_model % count:
            mismatched.append(f"{name}: config {count!r} does not divide d_model {cfg.d_model}")
    if mismatched:
        raise CheckpointError(f"{source} does not match its config {config_source}:\n  " + "\n  ".join(mismatched))
    return cfg


def _asset_config_file(args) -> tuple[Path | None, str]:
    if getattr(args, "config", None):
        return Path(args.config), str(args.config)
    beside = Path(args.file).with_suffix(".yaml")
    return (beside, str(beside)) if beside.is_file() else (None, "")


def _import_asset(args: argparse.Namespace) -> Path:
    source, guiding_source = str(args.file), str(args.guiding)
    config_path, config_source = _asset_config_file(args)
    heads = getattr(args, "heads", None)
    if config_path is not None:
        official = read_asset_yaml(config_path)
    elif heads:
        official = {"transformer": {"encoder_attention_heads": heads, "decoder_attention_heads": heads},
                    "n_embed": None, "n_labels": None}
        config_source = f"--heads {heads}"
    else:
        raise InputError(f"{source}: no model config. The attention head count is not stored in the checkpoint; "
                         f"give the bundle's config with --config (e.g. {Path(source).with_suffix('.yaml').name}, "
                         "found automatically beside the checkpoint) or the head count with --heads N")
    image, seg, transformer_sd, rest = split_asset_tokenizers(read_checkpoint(args.file), source)
    for key, model, what in (("n_embed", image, "image VQGAN codes"), ("n_labels", seg, "segmentation classes")):
        stated = official.get(key)
        actual = model.config.n_embed if key == "n_embed" else model.config.n_labels
        if stated is not None and stated != actual:
            raise CheckpointError(f"{source} does not match its config {config_source}: {what} config {stated}, "
                                  f"checkpoint {actual}")
    if not transformer_sd:
        raise CheckpointError(f"{source}: no transformer.* keys; not an ASSET checkpoint")
    guiding_sd = split_by_prefix(read_checkpoint(args.guiding), ["transformer"])["transformer"]
    if not guiding_sd:
        raise CheckpointError(f"{guiding_source}: no transformer.* keys; not an ASSET guiding checkpoint")
    transformers = {}
    for stem, sd, where in (("sga", transformer_sd, source), ("guiding", guiding_sd, guiding_source)):
        # the guiding transformer is the same architecture (ASSET.__init__ defaults), checked against one config
        cfg = asset_config_from_yaml(sd, official["transformer"], f"{where} (transformer)", config_source)
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
    parser.add_argument("--config", type=Path, metavar="MODEL.yaml",
                        help="the bundle's model config (default: the .yaml beside the checkpoint, e.g. "
                             "landscape_1024.yaml); gives the head count and is checked against the shapes")
    parser.add_argument("--heads", type=int, metavar="N",
                        help="attention heads per layer, for a checkpoint without its config")
    parser.epilog = ("Example: sgraffito import asset landscape/landscape_1024.ckpt "
                     "--guiding landscape/landscape_guiding.ckpt --name asset-landscape")


ASSET_IMPORTER = Importer(
    "asset", "an official ASSET bundle: the SGA checkpoint (image + seg VQGANs + transformer) and its guiding "
             "checkpoint", _asset_arguments, _import_asset)
