"""``uni-lab run``: explain images with methods and write a store."""
from __future__ import annotations

from ..defaults import DEFAULT_BATCH, DEFAULT_METHODS, DEFAULT_MODEL, DEFAULT_OUT, DEFAULT_STEPS, RESIZES
from ._shared import add_evaluation_arguments, evaluate_from_args, import_plugins, names, plan_from_args, split_methods

NAME = "run"
HELP = "Explain images with methods on a model and write a labelled zarr store."


def add_arguments(p):
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="registered model, torchvision or timm name (tv:NAME / timm:NAME to disambiguate); "
                        "comma list for several (default: efficientnet_lite0, embedded ImageNet weights)")
    p.add_argument("--weights", help="local state-dict file for --model, or 'random' for untrained weights")
    p.add_argument("--images", nargs="+", help="scikit-image photograph names, image files or folders, space- or "
                                               "comma-separated (default: the eight photographs in scikit-image)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma list of method specs, e.g. uni,ig:black,ig:blur (default: %(default)s)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help="Riemann steps B for every path method (default: %(default)s)")
    p.add_argument("--output", choices=("prob", "logit"), default="prob",
                   help="explain the softmax probability of the class (default) or its logit")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="images per batch (default: %(default)s)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--seed", type=int, default=0, help="run seed; each image draws from a seed derived from it")
    p.add_argument("--out", default=DEFAULT_OUT, help="store path (default: %(default)s)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME.PARAM=VALUE",
                   help="any plugin parameter, e.g. --set uni.eps=0.03 (repeatable)")
    p.add_argument("--resize", choices=RESIZES, default="model",
                   help="'model' (default): the model's own evaluation transform, resize the shorter side to "
                        "size/crop_pct and centre-crop (timm's pretrained_cfg); 'crop': the same with crop_pct "
                        "0.875; 'full': squash the whole photograph to the input size")
    p.add_argument("--plugins", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="import a module or .py file that registers plugins before running (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace a store written by another configuration")
    p.add_argument("--shard", metavar="I/N", help="compute only the I-th of N contiguous slices of the images "
                                                  "(0-based; jobs may share one --out; torchrun splits further)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--no-seed-stability", action="store_true",
                   help="do not measure the seed stability of methods with a random part (it re-runs them with 3 seeds)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast the models (recorded in the store; see BENCHMARKS.md for the drift it brings)")
    p.add_argument("--labels", metavar="FILE",
                   help="ground-truth classes (CSV filename,class; ImageNet's LOC_val_solution.csv; JSON): explain "
                        "each image for its label, store label and prediction, report accuracy")
    p.add_argument("--synsets", metavar="FILE",
                   help="synset id per line, in class-index order, for labels given as synsets "
                        "(default: the 1000 ImageNet-1k synsets, sorted)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes decoding images ahead of the compute (default: 0 on CPU, up to 4 on CUDA)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out image files that cannot be read (listed in the store) instead of stopping")
    p.add_argument("--channels-last", action="store_true", help="run the models in channels_last layout (GPU speed)")
    add_evaluation_arguments(p)  # --metrics/--attacks/--corruptions: `uni-lab evaluate` on the new store


def main(args) -> int:
    from ..runner import run
    from ..summary import format_table

    import_plugins(args.plugins)
    evaluating = bool(args.metrics or args.attacks or args.corruptions)
    # a typo in a metric name must not cost the whole run first; without evaluation flags a metric's
    # --set would change nothing, and the plan of nothing says so
    plan_from_args(args, args.output)
    models = [m.strip() for m in args.model.split(",") if m.strip()] or [args.model]  # "" is named, not a traceback
    methods = [m.strip() for m in split_methods(args.methods)]
    result = run(models=models, images=names(args.images) or None, methods=methods, steps=args.steps, batch_size=args.batch_size,
                 device=args.device, seed=args.seed, out=args.out, sets=args.sets, weights=args.weights,
                 output=args.output, resize=args.resize, overwrite=args.overwrite, progress=not args.no_progress,
                 shard=args.shard, precision=args.precision, channels_last=args.channels_last,
                 seed_stability=not args.no_seed_stability, workers=args.workers,
                 skip_bad_images=args.skip_bad_images, labels=args.labels, synsets=args.synsets)
    i, n = result.shard
    where = f", shard {i}/{n}" if n > 1 else ""
    print(f"store: {result.path} ({result.computed} items computed, {result.skipped} already done{where})")
    if result.summary is not None:
        print(format_table(result.summary))
    if evaluating:
        if getattr(result, "shard", (0, 1))[1] > 1:  # shards would evaluate one store several times over
            print(f"metrics skipped in a sharded run: run `uni-lab evaluate {result.path}` once all shards are done.")
        else:
            evaluate_from_args(result.path, args, progress=not args.no_progress)
    return 0
