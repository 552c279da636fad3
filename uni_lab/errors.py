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


@contextmanager
def named_failure(what: str, after: str):
    """An unforeseen exception inside the block becomes one :class:`UniLabError`: ``what`` failed, the
    exception's class and text, then ``after`` (what was or was not stored). Ours pass through."""
    try:
        yield
    except UniLabError:
        raise
    except Exception as exc:
        raise UniLabError(f"{what} ({exc.__class__.__name__}: {exc}); {after}") from exc
