"""Taming Transformers' segmentation-conditioned models (`sgraffito import taming CONFIG.yaml LAST.ckpt`).

The S-FLCKR release is a log folder, `2020-11-09T13-31-51_sflckr/`, holding `configs/*-project.yaml` (the
Lightning project config, read here with yaml.safe_load only) and `checkpoints/last.ckpt` (read through the
restricted unpickler). The architecture comes from the config, `model.params`:
- `transformer_config` (taming.modules.transformer.mingpt.GPT): vocab_size, block_size, n_layer, n_head, n_embd
  (n_unmasked if given);
- `first_stage_config` / `cond_stage_config` (taming.models.vqgan.VQModel, or VQSegmentationModel with n_labels):
  ddconfig, n_embed, embed_dim.
Every tensor of the checkpoint is then checked against engine.models.taming.Net2NetTransformer, whose attribute
names are the official keys; a missing, unexpected or renamed key is named (taming's `*.loss.*` training keys are
dropped, as the VQGAN importer does).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.errors import CheckpointError, InputError
from engine.importers import Importer
from engine.importers.state_dicts import load_state_dict_strict, read_checkpoint
from engine.model_store import new_model_dir, save_model_dir
from engine.models.taming import GPTConfig, Net2NetTransformer, TamingConfig
from engine.models.vqgan import VQGANConfig

GPT_TARGET = "taming.modules.transformer.mingpt.GPT"
STAGE_TARGETS = ("taming.models.vqgan.VQModel", "taming.models.vqgan.VQSegmentationModel")
MODEL_TARGET = "taming.models.cond_transformer.Net2NetTransformer"
_GPT_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "n_unmasked")
_DD_FIELDS = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "resolution", "in_channels", "out_ch",
              "z_channels", "double_z", "dropout")


def _load_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such config file") from None
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable YAML file ({error})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a taming project config (no mapping at the top)")
    return data


def _stage(params: dict, key: str, source: str) -> VQGANConfig:
    stage = params.get(key)
    if isinstance(stage, str):  # "__is_first_stage__" / "__is_unconditional__"
        raise CheckpointError(f"{source}: {key} is {stage!r}; only segmentation-conditioned models (a cond stage "
                              "VQGAN, as S-FLCKR) are supported")
    if not isinstance(stage, dict) or stage.get("target") not in STAGE_TARGETS:
        target = stage.get("target") if isinstance(stage, dict) else stage
        raise CheckpointError(f"{source}: {key}.target is {target!r}, expected one of {', '.join(STAGE_TARGETS)}")
    p = stage.get("params") or {}
    dd = p.get("ddconfig") or {}
    missing = [f for f in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "in_channels", "out_ch",
                           "z_channels") if f not in dd]
    if missing or "n_embed" not in p or "embed_dim" not in p:
        raise CheckpointError(f"{source}: {key}.params lacks {', '.join(missing + [f for f in ('n_embed', 'embed_dim') if f not in p])}")
    if p.get("remap"):
        raise CheckpointError(f"{source}: {key} remaps its codes (taming `remap`), which is not supported")
    fields = {f: dd[f] for f in _DD_FIELDS if f in dd}
    n_labels = p.get("n_labels") if stage["target"].endswith("VQSegmentationModel") else None
    try:
        return VQGANConfig(**fields, n_embed=int(p["n_embed"]), embed_dim=int(p["embed_dim"]), n_labels=n_labels)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: {key}: {error}") from None


def config_from_yaml(path: Path) -> TamingConfig:
    """The architecture stated by a taming project config (e.g. 2020-11-09T13-31-51-project.yaml)."""
    source = str(path)
    data = _load_yaml(path)
    model = data.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("params"), dict):
        raise CheckpointError(f"{source}: not a taming project config (no model.params)")
    if model.get("target") not in (None, MODEL_TARGET):
        raise CheckpointError(f"{source}: model.target is {model.get('target')!r}, expected {MODEL_TARGET}")
    params = model["params"]
    permuter = (params.get("permuter_config") or {}).get("target", "taming.modules.transformer.permuter.Identity")
    if not permuter.endswith(".Identity"):
        raise CheckpointError(f"{source}: permuter {permuter} is not supported (only the Identity permuter)")
    if params.get("downsample_cond_size", -1) not in (-1, None):
        raise CheckpointError(f"{source}: downsample_cond_size {params['downsample_cond_size']} is not supported")
    transformer = params.get("transformer_config")
    if not isinstance(transformer, dict) or transformer.get("target") != GPT_TARGET:
        target = transformer.get("target") if isinstance(transformer, dict) else transformer
        raise CheckpointError(f"{source}: transformer_config.target is {target!r}, expected {GPT_TARGET}")
    tp = transformer.get("params") or {}
    missing = [f for f in _GPT_FIELDS[:5] if f not in tp]
    if missing:
        raise CheckpointError(f"{source}: transformer_config.params lacks {', '.join(missing)}")
    try:
        gpt = GPTConfig(**{f: int(tp[f]) for f in _GPT_FIELDS if f in tp})
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: transformer_config.params: {error}") from None
    cfg = TamingConfig(gpt, _stage(params, "first_stage_config", source), _stage(params, "cond_stage_config", source))
    cfg.check()
    return cfg


def model_from_checkpoint(config_path: Path, checkpoint: Path) -> tuple[Net2NetTransformer, list[str]]:
    """The model built from the config and strictly loaded with the checkpoint, and the dropped training keys."""
    cfg = config_from_yaml(config_path)
    sd = read_checkpoint(checkpoint)
    dropped = sorted(k for k in sd if k.startswith(("first_stage_model.loss.", "cond_stage_model.loss.")))
    sd = {k: v for k, v in sd.items() if k not in set(dropped)}
    model = Net2NetTransformer(cfg)
    load_state_dict_strict(model, sd, f"{checkpoint} (with {Path(config_path).name})")
    return model.eval(), dropped


def _paths(args) -> tuple[Path, Path]:
    """(config, checkpoint) from `FILE LAST.ckpt` (either order) or `FILE --config CONFIG.yaml` (the catalogue's
    form, where FILE is the checkpoint)."""
    if args.checkpoint is None and args.config is None:
        raise InputError("give the project config and the checkpoint: sgraffito import taming CONFIG.yaml LAST.ckpt")
    if args.checkpoint is not None and args.config is not None:
        raise InputError("give the project config once: either CONFIG.yaml LAST.ckpt or LAST.ckpt --config CONFIG.yaml")
    if args.config is not None:
        config, checkpoint = Path(args.config), Path(args.file)
    else:
        config, checkpoint = Path(args.file), Path(args.checkpoint)
    if config.suffix in (".ckpt", ".pth", ".pt") and checkpoint.suffix in (".yaml", ".yml"):
        config, checkpoint = checkpoint, config  # given the other way round: no doubt which is which
    if config.suffix not in (".yaml", ".yml"):
        raise InputError(f"{config}: give the project config (configs/*-project.yaml) first, then the checkpoint")
    return config, checkpoint


def _default_name(config: Path, checkpoint: Path) -> str:
    # logs/2020-11-09T13-31-51_sflckr/checkpoints/last.ckpt -> taming-2020-11-09T13-31-51_sflckr
    folder = checkpoint.resolve().parent
    if folder.name == "checkpoints":
        folder = folder.parent
    name = folder.name if checkpoint.stem == "last" else checkpoint.stem
    return "taming-" + name.replace(" ", "-").replace(":", "-")


def _import(args: argparse.Namespace) -> Path:
    config_path, checkpoint = _paths(args)
    model, dropped = model_from_checkpoint(config_path, checkpoint)
    cfg = model.config
    n_labels = cfg.n_labels
    directory = new_model_dir(args.name or _default_name(config_path, checkpoint), overwrite=args.force)
    config = {
        "kind": "taming",
        "title": f"Taming Transformers {checkpoint.resolve().parent.parent.name if checkpoint.stem == 'last' else checkpoint.stem} "
                 f"({cfg.transformer.n_layer} layers, {cfg.transformer.n_embd} wide, {n_labels} classes)",
        "source": [config_path.name, checkpoint.name],
        # S-FLCKR: the 182 0-based COCO-Stuff ids of DeepLab-v2 COCO-Stuff maps (taming scripts/extract_segmentation.py)
        "label_set": "coco-stuff-182" if n_labels == 182 else f"coco-stuff-{n_labels}",
        "taming": cfg.to_dict(),
        "ignored_keys": dropped,
    }
    save_model_dir(directory, {"model": model.state_dict()}, config)
    return directory


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, nargs="?", metavar="LAST.ckpt", help="the model's checkpoints/last.ckpt")
    parser.add_argument("--config", type=Path, metavar="CONFIG.yaml",
                        help="the project config, when FILE is the checkpoint (the form `sgraffito models get` uses)")
    parser.epilog = ("FILE is the project config. Example (the S-FLCKR log folder): sgraffito import taming "
                     "2020-11-09T13-31-51_sflckr/configs/2020-11-09T13-31-51-project.yaml "
                     "2020-11-09T13-31-51_sflckr/checkpoints/last.ckpt --name taming-sflckr "
                     "(or: ... import taming last.ckpt --config 2020-11-09T13-31-51-project.yaml)")


IMPORTER = Importer(
    "taming", "a Taming Transformers segmentation-conditioned model (S-FLCKR): CONFIG.yaml LAST.ckpt",
    _arguments, _import)
