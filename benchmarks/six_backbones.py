"""Seconds per image for UNI and IG (black baseline) at 224² on the paper's six backbones.

    python benchmarks/six_backbones.py [--models resnet18,...] [--batch 4] [--out FILE.json]

Random weights (timing only). Per backbone: one light warm-up, then one timed call each of the
floor (1+T+B plain passes through the fast view), UNI (its phases from the same call) and
IG-black, at the bench's T and B. Warnings raised inside UNI (e.g. torch.func's "There is a
performance drop because we have not yet implemented the batching rule for ...") are recorded,
so a CPU fallback is named rather than hidden. One call, not a median: ViT-B/16 and Swin-T take
minutes per call on 2 cores; compare backbones in floor passes, which share the call's load.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import torch

from uni_lab.allocator import keep_freed_memory, state
from uni_lab.bench import _floor, _method, bench_batch, _uni_parts
from uni_lab.defaults import BENCH
from uni_lab.models import create_model
from uni_lab.seeding import image_seed

SIX = ["resnet18", "efficientnet_v2_s", "convnext_tiny", "vgg16_bn", "vit_b_16", "swin_t"]


def one(name: str, batch: int, T: int, B: int) -> dict:
    from uni_lab.plugins.uni import match_chunk_size, unlearn_chunk_size

    clf = create_model(name, weights="random").eval()
    x = bench_batch(224, batch)
    with torch.no_grad():
        target = clf(x).argmax(-1)
    seeds = torch.tensor([image_seed(0, f"bench{i}") for i in range(batch)])
    uni, ig = _method("uni", B, T), _method("ig:black", B, T)
    _method("uni", 3, 1)(clf, x, target, seeds=seeds)  # warm-up, same shapes
    uni_parts, _ = _uni_parts()
    t0 = time.perf_counter()
    _floor(clf, x, target, 1 + T + B)
    floor = time.perf_counter() - t0
    with warnings.catch_warnings(record=True) as caught, uni_parts.obj.timed_phases() as phases:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        uni(clf, x, target, seeds=seeds)
        uni_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ig(clf, x, target, seeds=seeds)
    ig_s = time.perf_counter() - t0
    pass_s = floor / (1 + T + B)
    split = {"unlearn": phases.get("unlearn", 0.0), "match": phases.get("match", 0.0)}
    split["integrate"] = uni_s - split["unlearn"] - split["match"]
    return {"model": name, "batch": batch, "unlearn_chunk": unlearn_chunk_size(clf, x[:1]),
            "match_chunk": match_chunk_size(clf, x[:1]),
            "uni_s_per_image": uni_s / batch, "ig_black_s_per_image": ig_s / batch,
            "floor_s_per_image": floor / batch, "uni_vs_floor": uni_s / floor,
            "uni_phases_in_floor_passes": {k: v / pass_s for k, v in split.items()},
            "warnings": sorted({str(w.message).split("\n")[0][:200] for w in caught})}


def main() -> None:
    keep_freed_memory()  # as the uni-lab command does: page faults otherwise swing single calls
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(SIX))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    T, B = BENCH["pgd_steps"], BENCH["steps"]
    rows = []
    for name in a.models.split(","):
        load = os.getloadavg()[0]
        row = one(name, a.batch, T, B)
        row["load_avg_1min"] = {"start": load, "end": os.getloadavg()[0]}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    out = {"T": T, "B": B, "size": 224, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "allocator": state(), "rows": rows}
    text = json.dumps(out, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
