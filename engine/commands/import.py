"""`sgraffito import KIND FILE ...`: convert an official checkpoint into a model folder in the user's data folder.

Each kind's converter lives in engine/importers/ and is named by its engine's entry in engine/registry.py; this
command only dispatches."""

from __future__ import annotations

from pathlib import Path

from engine import registry
from engine.model_store import read_model_config


def register(subparsers) -> None:
    parser = subparsers.add_parser("import", help="convert an official checkpoint into a model of the model list",
                                   description="Convert an official checkpoint (.ckpt/.pth/.safetensors) into a "
                                               "model folder in the user's data folder. Checkpoints are read "
                                               "without running any code they contain.")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind, importer in registry.importers().items():
        sub = kinds.add_parser(kind, help=importer.help, description=importer.help)
        sub.add_argument("file", type=Path, metavar="FILE", help="the official checkpoint")
        sub.add_argument("--name", help="model name (default: derived from FILE)")
        sub.add_argument("--force", action="store_true", help="replace an imported model of the same name")
        importer.add_arguments(sub)
        sub.set_defaults(run=run, importer=importer)


def run(args) -> int:
    directory = args.importer.run(args)
    config = read_model_config(directory)
    print(f"imported {directory.name} ({config['kind']}: {config['title']}) into {directory}")
    return 0
