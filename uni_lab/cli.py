"""``uni-lab``: one subcommand per module in :mod:`uni_lab.commands` (found automatically).

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``main(args) -> int``.
Errors a user can fix (:class:`~uni_lab.errors.UniLabError`) print one line and exit 2.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import pkgutil
import signal
import sys

from . import commands
from .errors import UniLabError


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="uni-lab", description="Path attributions and UNI for image classifiers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers = {}
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):  # shared helpers, not a command
            continue
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        handlers[mod.NAME] = mod.main
    return parser, handlers


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or torchrun's stop) unwinds like Ctrl-C: queued writes are flushed."""


def _terminate(signum, frame):
    raise Terminated()


def _target(args) -> str:
    return str(getattr(args, "out", None) or getattr(args, "store", None) or "the store")


def main(argv=None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(handlers[args.command](args) or 0)
    except UniLabError as exc:
        print(f"uni-lab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"{what}; finished items are kept, rerun the same command to resume.", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
            raise
        where = exc.filename or _target(args)
        problem = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only file system", errno.EIO: "input/output error"}[exc.errno]
        print(f"uni-lab {args.command}: error: {problem} writing {where}; free space (or fix the disk) and rerun "
              "the same command (finished items are kept).", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
