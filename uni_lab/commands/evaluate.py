"""``uni-lab evaluate STORE``: metrics, attacks and corruptions for a store's stored maps."""
from __future__ import annotations

from ..evaluate import PERTURBED_METRICS, SEVERITIES

NAME = "evaluate"
HELP = "Compute metrics, attacks and corruptions for an existing store (stored maps are not recomputed)."


def add_evaluation_arguments(p) -> None:
    """The flags ``uni-lab run`` shares with ``uni-lab evaluate``."""
    p.add_argument("--metrics", default="", help="comma list of metrics, or 'all' (see `uni-lab plugins --kind metric`)")
    p.add_argument("--attacks", default="", help="comma list of attacks (fgsm_attribution, random_noise), or 'all'")
    p.add_argument("--corruptions", default="",
                   help="comma list of ImageNet-C corruptions (brightness, saturate, gaussian_blur, defocus_blur, "
                        "gaussian_noise, shot_noise), or 'all'")
    p.add_argument("--severities", default=",".join(map(str, SEVERITIES)),
                   help="corruption severities to sweep (default: %(default)s)")
    p.add_argument("--perturbed-metrics", default=",".join(PERTURBED_METRICS),
                   help="metrics computed on attacked and corrupted inputs (default: %(default)s)")


def add_arguments(p):
    p.add_argument("store", help="a store written by `uni-lab run`")
    add_evaluation_arguments(p)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME.PARAM=VALUE",
                   help="any metric or attack parameter, e.g. --set mufidelity.n_subsets=64 (repeatable)")
    p.add_argument("--methods", help="comma list: only these of the store's methods")
    p.add_argument("--images", help="comma list: only these of the store's image ids")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (default: 8)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available)")
    p.add_argument("--plugins", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="import a module or .py file that registers plugins first (repeatable)")
    p.add_argument("--recompute", action="store_true",
                   help="replace results stored with other parameters of a metric, attack or corruption")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def evaluate_from_args(store, args, progress: bool = True):
    """Run :func:`uni_lab.evaluate.evaluate` with the shared flags; print and return its table."""
    from ..evaluate import evaluate

    result = evaluate(store, metrics=args.metrics, attacks=args.attacks, corruptions=args.corruptions,
                      severities=[int(s) for s in args.severities.split(",") if s.strip()],
                      perturbed_metrics=args.perturbed_metrics, sets=args.sets,
                      methods=getattr(args, "methods_subset", None), images=getattr(args, "images_subset", None),
                      batch_size=args.batch_size, device=args.device, recompute=getattr(args, "recompute", False),
                      progress=progress)
    table = result.table
    if table.empty:
        print("(no evaluated items)")
    else:  # metrics down, methods across: dozens of metric columns do not fit a terminal's width
        print(table.set_index(["model", "method"]).T.to_string(float_format=lambda v: f"{v:.4g}"))
    return result


def main(args) -> int:
    from .run import import_plugins

    import_plugins(args.plugins)
    args.methods_subset, args.images_subset = args.methods, args.images
    if not (args.metrics or args.attacks or args.corruptions):
        print("nothing to do: give --metrics, --attacks and/or --corruptions (each accepts 'all').")
        return 2
    print(f"store: {args.store}")
    evaluate_from_args(args.store, args, progress=not args.no_progress)
    return 0
