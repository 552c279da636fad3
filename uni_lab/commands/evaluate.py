"""``uni-lab evaluate STORE``: metrics, attacks and corruptions for a store's stored maps."""
from __future__ import annotations

from ._shared import import_plugins, print_evaluation

NAME = "evaluate"
HELP = "Compute metrics, attacks and corruptions for an existing store (stored maps are not recomputed)."


def add_arguments(p):
    from .. import evaluate_config

    evaluate_config.add_arguments(p)  # one flag per field of EvaluateConfig, help and defaults written there
    p.add_argument("--plugins", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="import a module or .py file that registers plugins first (repeatable)")


def main(args) -> int:
    from .. import evaluate_config

    import_plugins(args.plugins)
    config = evaluate_config.from_args(args)
    if not config.asked():
        print("nothing to do: give --metrics, --attacks and/or --corruptions (each accepts 'all').")
        return 2
    print_evaluation(config, header=f"store: {config.store}")
    return 0
