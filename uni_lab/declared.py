"""A configuration declared once: dataclass fields that carry their help, flag and value conversion.

:class:`~uni_lab.run_config.RunConfig` and :class:`~uni_lab.evaluate_config.EvaluateConfig` are
such dataclasses; the functions here derive from one the command's flags, the Python signature
and the docstring of the function it configures, so a parameter is documented in one place.
Torch-free: the CLI builds its parsers from it.
"""
from __future__ import annotations

import inspect
from dataclasses import MISSING, field, fields


def declared(default, help: str, flag: str | None = None, parse=None, flag_help: str | None = None,
             **argparse_kwargs):
    """A field with its help text and, for the CLI, its flag (None: Python only; no leading dash:
    positional), ``flag_help`` where the flag negates the field, argparse keywords and value conversion."""
    meta = {"help": help, "flag": flag, "parse": parse, "argparse": argparse_kwargs, "flag_help": flag_help}
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def default_of(f):
    """A field's default; ``MISSING`` for a required field."""
    if f.default is MISSING and f.default_factory is MISSING:
        return MISSING
    return f.default_factory() if f.default is MISSING else f.default


def _flagged(cls, only=None) -> list:
    return [f for f in fields(cls) if f.metadata["flag"] is not None and (only is None or f.name in only)]


def add_arguments(parser, cls, only=None) -> None:
    """One flag per field of ``cls`` that declares one (``only``: of these fields)."""
    for f in _flagged(cls, only):
        meta = f.metadata
        kwargs = dict(meta["argparse"])
        default = default_of(f)
        if kwargs.get("action") not in ("store_true", "store_false"):
            kwargs["default"] = ",".join(map(str, default)) if isinstance(default, tuple) else default
        if kwargs.get("action") == "append":
            kwargs["default"] = []
        shown = "" if kwargs.get("action") in ("store_true", "store_false", "append") or default in (None, ()) \
            else " (default: %(default)s)"
        text = (meta["flag_help"] or meta["help"]) + shown
        if meta["flag"].startswith("-"):
            parser.add_argument(meta["flag"], dest=f.name, help=text, **kwargs)
        else:  # positional: argparse takes its dest from the name
            kwargs.pop("default", None)
            parser.add_argument(f.name, help=meta["help"], **kwargs)


def from_args(args, cls, only=None, **given):
    """The ``cls`` of parsed flags (``only``: of these fields) and ``given`` values; other fields keep
    their defaults."""
    values = {}
    for f in _flagged(cls, only):
        value = getattr(args, f.name)
        parse = f.metadata["parse"]
        values[f.name] = parse(value) if parse is not None and value is not None else value
    return cls(**{**values, **given})


def documentation(cls) -> str:
    """One line per field: name, flag, default and help."""
    lines = []
    for f in fields(cls):
        flag = f.metadata["flag"]
        where = "Python only" if flag is None else f"``{flag}``"
        default = "required" if default_of(f) is MISSING else f"default ``{default_of(f)!r}``"
        lines.append(f"``{f.name}`` ({where}, {default}): {f.metadata['help']}.")
    return "\n".join(lines)


def signature(cls, positional: int) -> inspect.Signature:
    """The fields of ``cls`` as keyword parameters, the first ``positional`` also positional; a field
    without a default (``MISSING``) is required."""
    params = []
    for i, f in enumerate(fields(cls)):
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if i < positional else inspect.Parameter.KEYWORD_ONLY
        default = inspect.Parameter.empty if default_of(f) is MISSING else default_of(f)
        params.append(inspect.Parameter(f.name, kind, default=default))
    return inspect.Signature(params)
