"""`sgraffito models [--kind KIND]`: the model list (imported models first, then the shipped demo models)."""

from engine.model_store import list_models
from engine.registry import KINDS


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list the available models (demo and imported)")
    parser.add_argument("--kind", choices=KINDS, help="only models of this kind")
    parser.add_argument("--paths", action="store_true", help="also print each model's folder")
    parser.set_defaults(run=run)


def run(args) -> int:
    models = list_models(args.kind)
    if not models:
        print("no models found; `sgraffito import KIND FILE` converts official checkpoints")
        return 0
    width = max(len(m.name) for m in models)
    for m in models:
        print(f"{m.name:{width}s}  {m.kind:8s}  {m.source:8s}  {m.title}" + (f"\n    {m.path}" if args.paths else ""))
    return 0
