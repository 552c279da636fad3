"""What several commands share: the evaluation flags, plugin imports, list arguments.

Its own module so that no command imports another (the CLI discovers commands by module; names
starting with ``_`` are not commands).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from ..errors import PluginError, named_failure


def add_evaluation_arguments(p) -> None:
    """The flags ``uni-lab run`` shares with ``uni-lab evaluate`` (fields of
    :class:`~uni_lab.evaluate_config.EvaluateConfig`)."""
    from .. import evaluate_config

    evaluate_config.add_arguments(p, evaluate_config.SHARED)


def plan_from_args(args, output: str = "prob"):
    """Validate the shared flags (names, parameter types and values) without a store: `uni-lab run`
    calls it before computing anything."""
    from ..evaluate_config import SHARED, from_args
    from ..evaluation import select

    c = from_args(args, SHARED, store=None, sets=args.sets)
    return select(c.metrics, c.attacks, c.corruptions, severities=c.severities, perturbed_metrics=c.perturbed_metrics,
                  sets=c.sets, output=output)


def evaluate_from_args(store, args, progress: bool = True):
    """``uni-lab run --metrics ...``: evaluate the run's new store with the shared flags."""
    from ..evaluate_config import SHARED, from_args

    return print_evaluation(from_args(args, SHARED, store=store, sets=args.sets, batch_size=args.batch_size,
                                      device=args.device, recompute=args.recompute, progress=progress))


def print_evaluation(config, header: str | None = None):
    """Run an evaluation (:class:`~uni_lab.evaluate_config.EvaluateConfig`); print and return its table.
    ``header`` is printed once the plan has passed, so a refused evaluation prints its error only."""
    from ..evaluation import execute, plan

    planned = plan(config)
    if header:
        print(header, flush=True)
    result = execute(planned)
    table = result.table
    if table.empty:
        print("(no evaluated items)")
    else:  # metrics down, methods across: dozens of metric columns do not fit a terminal's width
        print(table.set_index(["model", "method"]).T.to_string(float_format=lambda v: f"{v:.4g}"))
    return result


def import_plugins(items) -> None:
    """Import user plugin modules (dotted names or .py files) so their decorators run."""
    for item in items:
        path = Path(item)
        if path.suffix == ".py":
            if not path.is_file():
                raise PluginError(f"plugin file '{item}' does not exist.")
            spec = importlib.util.spec_from_file_location(f"uni_lab_user_{path.stem}", path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            # the file is named, and a sys.exit(0) in it must not end the run as a success
            with named_failure(f"plugin file '{item}' failed to import", "fix it or drop --plugins.", PluginError):
                spec.loader.exec_module(mod)
        else:
            with named_failure(f"cannot import plugin module '{item}'", "fix it or drop --plugins.", PluginError):
                importlib.import_module(item)


def names(values) -> list[str]:
    """``--images a b`` and ``--images a,b`` alike; a token that is an existing path is kept whole
    (a file name may hold a comma). Method specs split outside parentheses (:func:`split_methods`)."""
    out = []
    for value in values or []:
        out += [value] if Path(value).exists() else [v.strip() for v in split_methods(value)]
    return out


def split_methods(text: str) -> list[str]:
    """Split on commas outside parentheses: ``smoothgrad(ig:black),uni``."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [m for m in out + [cur] if m.strip()]
