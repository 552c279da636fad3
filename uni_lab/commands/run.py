"""``uni-lab run``: explain images with methods and write a store."""
from __future__ import annotations

from ._shared import add_evaluation_arguments, evaluate_from_args, import_plugins, plan_from_args

NAME = "run"
HELP = "Explain images with methods on a model and write a labelled zarr store."


def add_arguments(p):
    from .. import run_config

    run_config.add_arguments(p)  # one flag per field of RunConfig, help and defaults written there
    p.add_argument("--plugins", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="import a module or .py file that registers plugins before running (repeatable)")
    add_evaluation_arguments(p)  # --metrics/--attacks/--corruptions: `uni-lab evaluate` on the new store
    p.add_argument("--recompute", action="store_true",
                   help="with evaluation flags: replace results stored with other parameters of a metric, attack "
                        "or corruption")


def main(args) -> int:
    from .. import run_config
    from ..runner import write_store
    from ..summary import format_table

    import_plugins(args.plugins)
    evaluating = bool(args.metrics or args.attacks or args.corruptions)
    # a typo in a metric name must not cost the whole run first; without evaluation flags a metric's
    # --set would change nothing, and the plan of nothing says so
    plan_from_args(args, args.output)
    result = write_store(run_config.from_args(args))
    i, n = result.shard
    where = f", shard {i}/{n}" if n > 1 else ""
    print(f"store: {result.path} ({result.computed} items computed, {result.skipped} already done{where})")
    if result.summary is not None:
        print(format_table(result.summary))
    if evaluating:
        if getattr(result, "shard", (0, 1))[1] > 1:  # shards would evaluate one store several times over
            print(f"metrics skipped in a sharded run: run `uni-lab evaluate {result.path}` once all shards are done.")
        else:
            evaluate_from_args(result.path, args, progress=args.progress)
    return 0
