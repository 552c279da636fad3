"""``uni-lab``: one subcommand per module in :mod:`uni_lab.commands` (found automatically).

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``main(args) -> int``.
Errors a user can fix (:class:`~uni_lab.errors.UniLabError`) print one line and exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import commands
from .errors import UniLabError


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="uni-lab", description="Path attributions and UNI for image classifiers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers = {}
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        handlers[mod.NAME] = mod.main
    return parser, handlers


def main(argv=None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(handlers[args.command](args) or 0)
    except UniLabError as exc:
        print(f"uni-lab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished items are kept, rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
