"""`sgraffito labels [SET]`: list the label sets, or one set's labels."""

from engine.labels import available_sets, load_label_set


def register(subparsers) -> None:
    parser = subparsers.add_parser("labels", help="list label sets, or the labels of one set")
    parser.add_argument("set", nargs="?", help="a label set name, e.g. coco-stuff-182")
    parser.set_defaults(run=run)


def run(args) -> int:
    if not args.set:
        for name in available_sets():
            label_set = load_label_set(name)
            print(f"{name:20s} {len(label_set.labels):4d} labels  {label_set.title}")
        return 0
    label_set = load_label_set(args.set)
    for label in label_set.labels:
        r, g, b = label.color
        print(f"{label.id:5d}  #{r:02x}{g:02x}{b:02x}  {label.name}")
    return 0
