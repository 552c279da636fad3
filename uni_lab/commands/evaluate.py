"""``uni-lab evaluate STORE``: metrics, attacks and corruptions for a store's stored maps."""
from __future__ import annotations

from ..defaults import DEFAULT_BATCH
from ._shared import add_evaluation_arguments, evaluate_from_args, import_plugins, names

NAME = "evaluate"
HELP = "Compute metrics, attacks and corruptions for an existing store (stored maps are not recomputed)."


def add_arguments(p):
    p.add_argument("store", help="a store written by `uni-lab run`")
    add_evaluation_arguments(p)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME.PARAM=VALUE",
                   help="any metric or attack parameter, e.g. --set mufidelity.n_subsets=64 (repeatable)")
    p.add_argument("--methods", nargs="+", help="only these of the store's methods (space- or comma-separated)")
    p.add_argument("--images", nargs="+", help="only these of the store's image ids (space- or comma-separated)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="images per batch (default: %(default)s)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available)")
    p.add_argument("--plugins", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="import a module or .py file that registers plugins first (repeatable)")
    p.add_argument("--recompute", action="store_true",
                   help="replace results stored with other parameters of a metric, attack or corruption")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def main(args) -> int:
    import_plugins(args.plugins)
    args.methods_subset, args.images_subset = names(args.methods) or None, names(args.images) or None
    if not (args.metrics or args.attacks or args.corruptions):
        print("nothing to do: give --metrics, --attacks and/or --corruptions (each accepts 'all').")
        return 2
    print(f"store: {args.store}")
    evaluate_from_args(args.store, args, progress=not args.no_progress)
    return 0
