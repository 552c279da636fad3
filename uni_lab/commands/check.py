"""``uni-lab check STORE``: is a store sound, and what is left to compute?"""
from __future__ import annotations

NAME = "check"
HELP = "Validate a store: schema, done/missing items, non-finite values, damaged chunks."


def add_arguments(p):
    p.add_argument("store", help="path of a store written by `uni-lab run` (its --out)")
    p.add_argument("--repair", action="store_true",
                   help="mark items with damaged or non-finite values not done (the next run recomputes "
                        "them) and delete temporary files of interrupted writes")
    p.add_argument("--require-complete", action="store_true", help="also exit 1 when items are missing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--limit", type=int, default=10, help="items listed per section (default: %(default)s)")


def main(args) -> int:
    """Exit 0: consistent; 1: inconsistent (or incomplete with --require-complete); 2: not a store."""
    from ..check import check_store, store_summary

    report = check_store(args.store, repair=args.repair)
    print(store_summary(report) if args.json else report.format(args.limit))
    if not report.consistent:
        return 1
    return 1 if args.require_complete and report.missing else 0
