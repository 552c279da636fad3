"""``uni-lab plugins``: what is registered, by kind, with parameters and defaults."""
from __future__ import annotations

NAME = "plugins"
HELP = "List registered plugins by kind with their parameters, defaults and descriptions."


def add_arguments(p):
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'ig*'")
    p.add_argument("--kind", choices=("baseline", "path", "explainer", "attack", "metric", "model"))
    p.add_argument("--plugins", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="import a module or .py file that registers plugins first")


def main(args) -> int:
    from ..registry import REQUIRED, list_plugins
    from ._shared import import_plugins

    import_plugins(args.plugins)
    kind = None
    for p in list_plugins(args.kind, args.pattern):
        if p.kind != kind:
            kind = p.kind
            print(f"\n{kind}s:")
        params = ", ".join(f"{k}" if v is REQUIRED else f"{k}={v!r}" for k, v in p.params.items())
        print(f"  {p.name:<22} {p.description}")
        if params:
            print(f"  {'':<22}   params: {params}")
        print(f"  {'':<22}   from: {p.origin}")
    if kind is None:
        print("no plugins match.")
        return 1
    return 0
