"""`sgraffito models`: the installed models (imported first, then the shipped demo models); `--available` adds the
catalogue of official models (engine/catalogue.json), and `sgraffito models get NAME` downloads, verifies and
imports one of them (engine/downloads.py)."""

from __future__ import annotations

import sys

from engine.model_store import list_models
from engine.registry import KINDS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models", help="list the models (demo, imported and, with --available, the official ones to get)",
        description="List the installed models. `sgraffito models --available` also lists the official models "
                    "of the catalogue; `sgraffito models get NAME` downloads and imports one.")
    parser.add_argument("--kind", choices=KINDS, help="only models of this kind")
    parser.add_argument("--paths", action="store_true", help="also print each model's folder")
    parser.add_argument("--available", action="store_true",
                        help="also list the official models of the catalogue (`sgraffito models get NAME`)")
    parser.set_defaults(run=run)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    get = actions.add_parser(
        "get", help="download, verify and import an official model of the catalogue",
        description="Download an official model (resuming an interrupted download), check its size and sha256, "
                    "unpack it safely and import it strictly. $SGRAFFITO_MODEL_MIRROR=URL downloads from "
                    "URL/NAME/FILE instead of the official hosts. A model that is already installed is left as "
                    "it is (use --force to replace it).")
    get.add_argument("name", metavar="NAME", help="a name from `sgraffito models --available`")
    get.add_argument("--from", dest="from_path", metavar="FILE_OR_DIR",
                     help="import a file (or a folder of files) you already downloaded, with the same checks")
    get.add_argument("--force", action="store_true", help="download and import again, replacing the installed model")
    get.set_defaults(run=run_get)


def run(args) -> int:
    models = list_models(args.kind)
    if not models and not args.available:
        print("no models found; `sgraffito models --available` lists the official ones, "
              "`sgraffito import KIND FILE` converts a checkpoint you have")
        return 0
    if models:
        width = max(len(m.name) for m in models)
        for m in models:
            print(f"{m.name:{width}s}  {m.kind:8s}  {m.source:8s}  {m.title}"
                  + (f"\n    {m.path}" if args.paths else ""))
    if args.available:
        print_available(args.kind, installed={m.name for m in models if m.source == "imported"})
    return 0


def print_available(kind: str | None, installed: set[str]) -> None:
    from engine.catalogue import entries

    rows = [e for e in entries() if kind is None or e.engine == kind]
    print("\nofficial models (`sgraffito models get NAME`):")
    if not rows:
        print("  none")
        return
    width = max(len(e.name) for e in rows)
    for e in rows:
        if e.name in installed:
            state = "installed"
        elif all(f.url for f in e.files):
            state = "get"
        else:
            state = "by hand"
        print(f"  {e.name:{width}s}  {e.engine:8s}  {state:9s}  {e.size_text()}  {e.title}\n"
              f"  {'':{width}s}  licence: {e.licence}")


def run_get(args) -> int:
    from tqdm import tqdm

    from engine.catalogue import entry
    from engine.downloads import install

    chosen = entry(args.name)
    bars: dict[str, tqdm] = {}

    def progress(p):
        if p.phase == "download":
            bar = bars.get(p.file)
            if bar is None:
                bar = bars[p.file] = tqdm(total=p.total, unit="B", unit_scale=True, unit_divisor=1000,
                                          desc=p.file, file=sys.stderr, leave=True, mininterval=0.5)
            bar.update(p.done - bar.n)
        else:
            for bar in bars.values():
                bar.close()
            if p.phase != "done":
                print(f"{p.phase}: {p.file}", file=sys.stderr)

    try:
        result = install(chosen, from_path=args.from_path, force=args.force, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
    if result.already:
        print(f"{result.name} is already installed in {result.path} (nothing to do; --force replaces it)")
    else:
        print(f"installed {result.name} ({chosen.title}) into {result.path}\nlicence: {chosen.licence}")
    return 0
