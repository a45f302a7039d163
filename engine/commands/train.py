"""`sgraffito train TASK --config FILE`: run a registered trainer with the shared loop (also under torchrun)."""

from __future__ import annotations

import yaml

from engine.errors import InputError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train or fine-tune a model (runs unchanged under torchrun --nproc_per_node N)",
        description="Train a registered task with the shared loop. Settings come from --config (YAML), then "
        "--set overrides, then the flags below. See `python -c 'import engine.train; help(engine.train)'`.",
    )  # fmt: skip
    parser.add_argument("task", nargs="?", help="the task name; --list shows them")
    parser.add_argument("--config", metavar="FILE.yaml", help="training settings (TrainConfig fields)")
    parser.add_argument("--max-minutes", type=float, help="time budget; the run saves and exports when it ends")
    parser.add_argument("--out", metavar="DIR", help="run folder (default runs/TASK)")
    parser.add_argument("--steps", type=int, help="optimizer steps")
    parser.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting (YAML value); nested keys: options.NAME.NAME=VALUE")
    parser.add_argument("--list", action="store_true", help="list the registered tasks")
    parser.set_defaults(run=run)


def _overrides(pairs: list[str]) -> dict:
    """--set KEY=VALUE pairs as one nested mapping: "options.generator.hidden=64" -> {"options": {"generator":
    {"hidden": 64}}}; the value is YAML. Nested keys change only themselves when merged into the config file."""
    from engine.train.task import set_path

    settings: dict = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {pair!r}: expected KEY=VALUE (KEY may be nested: options.NAME.NAME=VALUE)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise InputError(f"--set {pair!r}: the value is not valid YAML ({error})") from None
        set_path(settings, key.strip(), value, f"--set {pair!r}")
    return settings


def run(args) -> int:
    from engine.train import TrainConfig, available_tasks, get_task, train

    if args.list or not args.task:
        names = available_tasks()
        print("\n".join(names) if names else "no training tasks are registered")
        return 0 if args.list else 2
    get_task(args.task)  # an unknown name fails before any file is written
    settings = _overrides(args.set)
    flags = {"task": args.task, "max_minutes": args.max_minutes, "out_dir": args.out, "steps": args.steps}
    settings.update({k: v for k, v in flags.items() if v is not None})
    if args.config:
        config = TrainConfig.from_yaml(args.config, **settings)
    else:
        config = TrainConfig.from_dict(settings, "command line")
    result = train(config, resume=args.resume)
    print(f"{config.task}: {result.step} steps in {result.minutes:.1f} min"
          + (" (time budget reached)" if result.stopped_by_budget else "") + f"; run folder {result.out_dir}")
    return 0
