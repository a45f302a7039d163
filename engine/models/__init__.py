"""Generative models, one module per model (taming/nanoGPT style: plain nn.Modules whose attribute names are the
official checkpoint keys). A module that can convert official checkpoints registers an importer with
engine.checkpoints.register_importer, which `sgraffito import KIND FILE` lists."""
