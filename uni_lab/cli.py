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
import warnings

from . import allocator, commands
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


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7f]} | {0x0a: "\\n", 0x0d: "\\r", 0x09: "\\t"}


def one_line(message: str) -> str:
    """``message`` with control characters escaped: a file name holding a newline cannot split the
    error in two, or forge a second line that looks like uni_lab's."""
    return message.translate(_CONTROL)


def _target(args) -> str:
    return str(getattr(args, "out", None) or getattr(args, "store", None) or "the store")


def main(argv=None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    allocator.keep_freed_memory()  # the command owns its process; a library import never does this
    # a warning is one line a user reads, not a source location plus the line of code that raised it
    formatwarning = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"uni-lab {args.command}: warning: {one_line(str(message))}\n"
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(handlers[args.command](args) or 0)
    except UniLabError as exc:
        print(f"uni-lab {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"{what}; finished items are kept, rerun the same command to resume.", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
            return _unexpected(args, exc)
        where = exc.filename or _target(args)
        problem = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only file system", errno.EIO: "input/output error"}[exc.errno]
        print(f"uni-lab {args.command}: error: {problem} writing {where}; free space (or fix the disk) and rerun "
              "the same command (finished items are kept).", file=sys.stderr)
        return 2
    except Exception as exc:
        return _unexpected(args, exc)
    finally:
        signal.signal(signal.SIGTERM, previous)
        warnings.formatwarning = formatwarning  # main() called in-process (tests, notebooks) leaves Python's own


def _unexpected(args, exc: BaseException) -> int:
    """An error no check foresaw: one line that says so (exit 1, not 2: it is not the input's fault
    as far as uni_lab knows); ``UNI_LAB_TRACEBACK=1`` shows the traceback for a bug report."""
    import os

    if os.environ.get("UNI_LAB_TRACEBACK"):
        raise exc
    print(f"uni-lab {args.command}: internal error: {one_line(f'{exc.__class__.__name__}: {exc}')} "
          "(a defect of uni_lab or of a plugin: rerun with UNI_LAB_TRACEBACK=1 and report what it prints).",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
