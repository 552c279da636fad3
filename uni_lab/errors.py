"""Errors users see. Each message names the problem and the fix."""
from contextlib import contextmanager


class UniLabError(Exception):
    """Base class: the CLI prints these without a traceback and exits non-zero."""


class PluginError(UniLabError, LookupError):
    """Unknown, duplicate or misconfigured plugin."""


class InputError(UniLabError, ValueError):
    """An image, tensor or weights file that cannot be used as given."""


class StoreError(UniLabError):
    """A store that does not match the run, or is not a uni_lab store."""


def _describe(exc: BaseException) -> str:
    """An unforeseen exception in a few words: its class and first line, or what a ``sys.exit`` said."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r})"
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{exc.__class__.__name__}: {first}"


@contextmanager
def named_failure(what: str, after: str, error: type[UniLabError] = UniLabError):
    """An unforeseen exception inside the block becomes one ``error``: ``what`` failed, the exception
    in a few words (:func:`_describe`), then ``after`` (what was or was not stored, or the fix). Ours
    pass through. A ``sys.exit`` in a user's code is caught too: it must not end a run as a success."""
    try:
        yield
    except UniLabError:
        raise
    except (Exception, SystemExit) as exc:
        raise error(f"{what} ({_describe(exc)}); {after}") from exc
