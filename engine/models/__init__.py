"""Generative models, one module per model (taming/nanoGPT style): plain nn.Modules whose attribute names are the
official checkpoint keys. Nothing here loads files, registers itself or imports a pipeline, importer or trainer;
engine/registry.py says which pipeline, importer and training tasks go with each model."""
