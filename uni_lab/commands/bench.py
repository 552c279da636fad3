"""``uni-lab bench``: UNI against its floor and the naive loop, IG against Captum, the store's share."""
from __future__ import annotations

import json
import sys

from ..defaults import BENCH as DEFAULTS

NAME = "bench"
HELP = ("Time UNI against its (1+T+B) plain passes and against per-image UNI, IG against Captum, the store's "
        "share of a run, and images/s of every method; median of --reps after a warm-up.")


def add_arguments(p):
    p.add_argument("--model", default=DEFAULTS["model"], help="registered, torchvision or timm model (default: %(default)s)")
    p.add_argument("--weights", help="local state-dict file for --model, or 'random'")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="images per batch (default: %(default)s)")
    p.add_argument("--size", type=int, default=DEFAULTS["size"],
                   help="input side in pixels (default: %(default)s, so the CPU run takes minutes; 224 for the paper's size)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="Riemann steps B (default: %(default)s)")
    p.add_argument("--pgd-steps", type=int, default=DEFAULTS["pgd_steps"], help="UNI's PGD steps T (default: %(default)s)")
    p.add_argument("--reps", type=int, default=DEFAULTS["reps"], help="timed repetitions after the warm-up (>= 3)")
    p.add_argument("--methods", help="comma list of method specs for images/s (default: every registered explainer)")
    p.add_argument("--method-batch", type=int, default=DEFAULTS["method_batch"],
                   help="images per batch for the per-method images/s (default: %(default)s)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast precision")
    p.add_argument("--channels-last", action="store_true", help="run the model in channels_last layout")
    p.add_argument("--no-store", action="store_true", help="skip the store-share measurement")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def main(args) -> int:
    from ..bench import bench, format_table
    from ._shared import split_methods

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    say = None if args.quiet else (lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True))
    methods = [m.strip() for m in split_methods(args.methods)] if args.methods else None
    res = bench(args.model, weights=args.weights, batch_size=args.batch_size, size=args.size, device=args.device,
                steps=args.steps, pgd_steps=args.pgd_steps, reps=args.reps, methods=methods,
                method_batch=args.method_batch, precision=args.precision, channels_last=args.channels_last,
                store=not args.no_store, progress=say)
    print(json.dumps(res, indent=1, sort_keys=True) if args.json else format_table(res))
    return 0
