"""Issue 12's acceptance check on the real model: the same command gives the same store.

1. ``uni-lab run --images chelsea coffee astronaut rocket --methods ig:black,uni,guided_ig`` twice,
   with ``UNI_LAB_MEMORY_BUDGET`` changed between them (1 GiB, then 16 GiB): bitwise equal maps.
2. The same images with ``ig:black,uni`` under ``torchrun --nproc-per-node 2`` against one process
   (one thread per process in both, as torchrun gives each rank): the largest relative difference
   ``max |a − b| / max |b|`` of every stored map and trace.
3. Two seeds (``--seed 0`` and ``--seed 1``): UNI's per-image Spearman and F_c(x')/F_c(x).

    python benchmarks/reproducibility.py --out runs/repro [--json docs/reproducibility.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import xarray as xr

IMAGES = ["chelsea", "coffee", "astronaut", "rocket"]
MAPS = ("attribution", "baseline", "trace_prob", "trace_logit")


def run(out: Path, methods: str, env: dict, launcher=(), extra=()) -> None:
    cmd = [sys.executable, *(launcher or ["-m"]), "uni_lab", "run", "--images", *IMAGES, "--methods", methods,
           "--out", str(out), "--no-progress", "--overwrite", *extra]
    p = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")


def maps(path: Path) -> dict:
    ds = xr.open_zarr(path)
    return {(m, v): ds[v].sel(xai_method=m).values for m in map(str, ds.xai_method.values) for v in MAPS}


def max_rel(a: dict, b: dict) -> dict:
    out = {}
    for (m, v), want in b.items():
        got, ok = a[(m, v)], np.isfinite(b[(m, v)])
        if not ok.any():
            out[f"{m}/{v}"] = 0.0
            continue
        diff, scale = np.abs(got[ok] - want[ok]).max(), np.abs(want[ok]).max()
        out[f"{m}/{v}"] = float(diff / scale) if scale > 0 else float(diff)  # a zero baseline: the absolute difference
    return out


def seed_study(root: Path, env: dict) -> dict:
    from scipy.stats import spearmanr

    for seed in (0, 1):
        run(root / f"seed{seed}.zarr", "uni", env, extra=["--seed", str(seed)])
    a, b = (xr.open_zarr(root / f"seed{s}.zarr").sel(xai_method="uni") for s in (0, 1))
    rows = {}
    for image in IMAGES:
        x, y = a.attribution.sel(image=image).values.ravel(), b.attribution.sel(image=image).values.ravel()
        fc = a.trace_prob.sel(image=image).values
        fc = fc[np.isfinite(fc)]
        rows[image] = {"spearman_seed0_seed1": float(spearmanr(x, y)[0]), "fc_ratio": float(fc[0] / fc[-1])}
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/repro"))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    single = {"OMP_NUM_THREADS": "1"}
    run(args.out / "a.zarr", "ig:black,uni,guided_ig", {"UNI_LAB_MEMORY_BUDGET": "1GiB"})
    run(args.out / "b.zarr", "ig:black,uni,guided_ig", {"UNI_LAB_MEMORY_BUDGET": "16GiB"})
    a, b = maps(args.out / "a.zarr"), maps(args.out / "b.zarr")
    bitwise = {f"{m}/{v}": bool(np.array_equal(a[(m, v)], b[(m, v)], equal_nan=True)) for (m, v) in b}
    run(args.out / "one.zarr", "ig:black,uni", single)
    run(args.out / "two.zarr", "ig:black,uni", single,
        launcher=["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"])
    result = {"bitwise_budget_1GiB_vs_16GiB": bitwise,
              "torchrun_2_ranks_vs_1_process_max_rel": max_rel(maps(args.out / "two.zarr"), maps(args.out / "one.zarr")),
              "seeds": seed_study(args.out, {})}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
