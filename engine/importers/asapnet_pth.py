"""ASAPNet's official generators (tamarott/ASAPNet `latest_net_G.pth`) -> an asapnet model folder.

The pickle is read through the restricted unpickler; the architecture comes from the tensor shapes
(engine.models.asapnet.config_from_state_dict), the label encoding from the dataset (given, or guessed from the
input channels), and every key is checked strictly.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.errors import CheckpointError
from engine.importers import Importer
from engine.importers.state_dicts import load_state_dict_strict, read_checkpoint
from engine.model_store import new_model_dir, save_model_dir
from engine.models.asapnet import (DATASETS, ASAPNetConfig, ASAPNetsGenerator, config_from_state_dict, dataset_preset,
                                   model_config)


def import_checkpoint(path, dataset: str | None = None, hr_width: int | None = None, hr_depth: int | None = None,
                      replicate_pad: bool = False) -> tuple[dict, dict[str, torch.Tensor]]:
    """An official latest_net_G.pth -> (config.json dict, netG state dict), loaded strictly into our module."""
    path = Path(path)
    sd = read_checkpoint(path)
    cfg = config_from_state_dict(sd, hr_width, hr_depth, source=str(path))
    if replicate_pad:
        if cfg.padding == "zero":
            raise CheckpointError(f"{path}: --replicate-pad given, but the key layout is the zero-padding one")
        cfg = ASAPNetConfig.from_dict(cfg.to_dict() | {"padding": "replicate"})
    if dataset is None:
        by_channels = {dataset_preset(n).encoding.channels: n for n in [*DATASETS, "landscape"]}
        dataset = by_channels.get(cfg.in_channels)
        if dataset is None:
            raise CheckpointError(f"{path}: {cfg.in_channels} input channels match no known dataset "
                                  f"({', '.join(f'{n}: {c}' for c, n in by_channels.items())}); pass --dataset")
    preset = dataset_preset(dataset)
    if preset.encoding.channels != cfg.in_channels:
        raise CheckpointError(f"{path}: the generator takes {cfg.in_channels} input channels, but {dataset} label "
                              f"maps give {preset.encoding.channels}; is this a {dataset} model?")
    if cfg.lr_instance and not preset.encoding.instance_edge:
        raise CheckpointError(f"{path}: the generator feeds its last input channel to the LR stream only "
                              f"(lr_instance), which means an instance-edge channel, but {dataset} has none")
    model = ASAPNetsGenerator(cfg)
    load_state_dict_strict(model, sd, str(path))
    config = model_config(cfg, preset, f"ASAPNet {dataset} ({path.name})", dataset=dataset, source=str(path))
    return config, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _importer_arguments(parser) -> None:
    parser.add_argument("--dataset", choices=[*DATASETS, "landscape"],
                        help="what the model was trained on (default: guessed from the input channels)")
    parser.add_argument("--hr-width", type=int, help="per-pixel MLP width if not the upstream 64")
    parser.add_argument("--hr-depth", type=int, help="per-pixel MLP depth if not the upstream 5")
    parser.add_argument("--replicate-pad", action="store_true",
                        help="trained with --replicate_pad (same keys as --reflection_pad)")


def _importer_run(args) -> Path:
    config, sd = import_checkpoint(Path(args.file), args.dataset, args.hr_width, args.hr_depth, args.replicate_pad)
    name = args.name or f"asapnet-{config['dataset']}"
    return save_model_dir(new_model_dir(name, overwrite=args.force), {"netG": sd}, config)


IMPORTER = Importer("asapnet", "an ASAPNet generator (tamarott/ASAPNet latest_net_G.pth)", _importer_arguments,
                    _importer_run)
