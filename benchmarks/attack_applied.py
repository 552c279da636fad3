"""How often each top-k attack applies (moves the input and keeps the label) on a store's items.

Reads a store's inputs, targets, maps and baselines (nothing is written to it), runs each
attack at its registered defaults against every (method, image) and prints the applied share
and the L∞ distance reached. Issue 14: the one-step attack was rejected on 16 of 26 items.

    python benchmarks/attack_applied.py --store runs/real.zarr --json docs/attack_applied.json
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import uni_lab
from uni_lab.evaluation import load_model, read_explanation
from uni_lab.registry import get
from uni_lab.accessor import config_of
from uni_lab.store import open_store


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--attacks", default="fgsm_attribution,ifgsm_attribution")
    ap.add_argument("--methods", default=None, help="comma list (default: all of the store's)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="attack.param=value, e.g. ifgsm_attribution.iterations=1: an image the iterative attack "
                         "moves at its first step stays moved, so one iteration already gives its applied share")
    args = ap.parse_args(argv)
    ds = open_store(args.store)
    config = config_of(ds)
    model_name = str(ds.model.values[0])
    clf = load_model(model_name, config["models"][model_name], {})
    ids = [str(i) for i in ds.image.values]
    methods = args.methods.split(",") if args.methods else [str(m) for m in ds.xai_method.values]
    sub = ds[["input", "target"]].sel(model=model_name).load()
    x = torch.from_numpy(sub["input"].transpose("image", "channel", "y", "x").values).float()
    target = torch.from_numpy(sub["target"].values).long()
    from uni_lab.methods import parse_sets, route_params

    routed = route_params(parse_sets(args.sets))
    rows = []
    for attack in args.attacks.split(","):
        plugin = get("attack", attack)
        params = plugin.resolved_params({"output": config.get("output", "prob"), **routed.get(("attack", attack), {})})
        for spec in methods:
            exp = read_explanation(ds, "clean", {"model": model_name, "xai_method": spec}, ids, "cpu")
            t0 = time.perf_counter()
            adv = torch.cat([plugin(model=clf, x=x[i:i + 1], target=target[i:i + 1], seeds=None,
                                    explanation=_one(exp, i), **params) for i in range(len(ids))])
            secs = (time.perf_counter() - t0) / len(ids)
            with torch.no_grad():
                kept = clf(adv).argmax(-1) == target
            linf = (adv - x).abs().flatten(1).max(1).values
            applied = (linf > 0) & kept
            rows.append({"attack": attack, "method": spec, "applied": int(applied.sum()), "items": len(ids),
                         "linf_mean_applied": float(linf[applied].mean()) if applied.any() else float("nan"),
                         "seconds_per_item": secs, "params": {k: v for k, v in params.items() if k != "output"}})
            print(f"{attack:18s} {spec:10s} applied {int(applied.sum())}/{len(ids)}  mean L∞ (applied) "
                  f"{rows[-1]['linf_mean_applied'] * 255:.2f}/255  {secs:.1f} s/item", flush=True)
    for attack in args.attacks.split(","):
        own = [r for r in rows if r["attack"] == attack]
        print(f"{attack}: applied on {sum(r['applied'] for r in own)} of {sum(r['items'] for r in own)} items")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"store": args.store, "rows": rows}, f, indent=1)
    return 0


def _one(exp, i):
    pick = lambda t: None if t is None else t[i:i + 1]  # noqa: E731
    return uni_lab.Explanation(exp.attribution[i:i + 1], pick(exp.baseline))


if __name__ == "__main__":
    raise SystemExit(main())
