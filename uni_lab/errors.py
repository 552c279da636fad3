"""Errors users see. Each message names the problem and the fix."""


class UniLabError(Exception):
    """Base class: the CLI prints these without a traceback and exits non-zero."""


class PluginError(UniLabError, LookupError):
    """Unknown, duplicate or misconfigured plugin."""


class InputError(UniLabError, ValueError):
    """An image, tensor or weights file that cannot be used as given."""


class StoreError(UniLabError):
    """A store that does not match the run, or is not a uni_lab store."""
