"""Importers of official checkpoints: one module per official format, each exposing an `Importer` that
engine/registry.py names and `sgraffito import KIND FILE` runs.

- unpickler.py: the restricted unpickler (checkpoints never run code);
- state_dicts.py: read a checkpoint, split it by prefix, check it against a module strictly with a report;
- tfbundle.py: TensorFlow checkpoint bundles read without TensorFlow;
- lightning.py: taming's VQGANs and ASSET's Lightning checkpoints;
- coltran_tf.py: ColTran's TF2 release; asapnet_pth.py: ASAPNet's generators.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Importer:
    kind: str
    help: str
    add_arguments: Callable  # (argparse parser) -> None; FILE, --name and --force are added by the command
    run: Callable  # (args) -> Path of the written model folder
