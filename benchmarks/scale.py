"""Issue 13's dataset-scale benchmark: memory, files, throughput and store cost against N.

Generated JPEG folders of 1,000 and 5,000 images at 64² (seeded noise), a small CNN with
seeded random weights (``benchmarks/scale_model.py``: the same net in every process), ``ig:black`` with 2 steps (a cheap method that still writes maps,
baselines and traces), batches of 8, one thread per process. Every run is a fresh process.

1. N = 1,000 and N = 5,000 in one process each: peak RSS, wall time, throughput, the store's
   time (``store_main_s``: the run waiting for the store; ``store_busy_s``: the writer thread
   writing), files in the store;
2. N = 5,000 under ``torchrun --nproc-per-node 2`` against the one-process store;
3. N = 5,000 killed (``SIGKILL``) once 40 % of the items are done, then resumed, against the
   uninterrupted store.

    python benchmarks/scale.py --root runs/scale [--sizes 1000,5000] [--json docs/scale.json]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PLUGIN = str(Path(__file__).with_name("scale_model.py"))
ARGS = ["--plugins", PLUGIN, "--model", "cnn64", "--methods", "ig:black", "--steps", "2",
        "--batch-size", "8", "--device", "cpu", "--no-progress", "--no-seed-stability"]
SIZE = 64


def make_folder(folder: Path, n: int, side: int = SIZE) -> Path:
    """``n`` seeded-noise JPEGs of ``side``² in ``folder`` (kept when already there)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    have = sum(1 for _ in folder.glob("*.jpg"))
    if have != n:
        rng = np.random.default_rng(n)
        for i in range(n):
            Image.fromarray((rng.random((side, side, 3)) * 255).astype("uint8")).save(folder / f"img{i:05d}.jpg", quality=90)
    return folder


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def child(argv: list[str]) -> None:
    """One run in this process (the benchmark's own subprocess): prints its measurements as JSON."""
    import resource

    import torch

    from uni_lab.commands.run import import_plugins
    from uni_lab import run

    torch.set_num_threads(1)
    folder, out = argv
    t0 = time.perf_counter()
    a = dict(zip(ARGS[::2], ARGS[1::2]))
    import_plugins([a["--plugins"]])
    res = run(models=a["--model"], images=[folder], methods=[a["--methods"]],
              steps=int(a["--steps"]), batch_size=int(a["--batch-size"]), device="cpu", out=out, progress=False,
              seed_stability=False, overwrite=True)
    wall = time.perf_counter() - t0
    print(json.dumps({"wall_s": wall, **res.timings, "computed": res.computed,
                      "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measured(folder: Path, out: Path) -> dict:
    p = subprocess.run([sys.executable, __file__, "_child", str(folder), str(out)], env=env(), capture_output=True,
                       text=True)
    if p.returncode:
        raise SystemExit(f"run on {folder} failed:\n{p.stderr[-3000:]}")
    m = json.loads(p.stdout.strip().splitlines()[-1])
    n = m["computed"]
    files = [f for f in out.rglob("*") if f.is_file()]
    data = [f for f in files if not f.name.startswith(".") and f.parent.name not in COORDS]
    return {**m, "images": n, "images_per_s": n / m["wall_s"], "store_main_share": m["store_main_s"] / m["wall_s"],
            "store_busy_share": m["store_busy_s"] / m["wall_s"], "files": len(files), "chunk_files": len(data)}


COORDS = {"model", "xai_method", "image", "image_source", "image_hash", "label", "channel", "y", "x", "step"}


def values(path: Path) -> dict:
    import xarray as xr

    ds = xr.open_zarr(path)
    return {k: ds[k].values for k in ds.data_vars if k != "seconds"}


def compare(a: Path, b: Path) -> dict:
    """Bitwise equality per variable, and the largest relative difference where not equal."""
    va, vb = values(a), values(b)
    out = {}
    for k, want in vb.items():
        got = va[k]
        if np.array_equal(got, want, equal_nan=want.dtype.kind == "f"):
            out[k] = "bitwise"
            continue
        ok = np.isfinite(want) & np.isfinite(got) if want.dtype.kind == "f" else np.ones(want.shape, bool)
        nan_same = np.array_equal(np.isnan(got), np.isnan(want)) if want.dtype.kind == "f" else True
        scale = float(np.abs(want[ok]).max()) if ok.any() else 0.0
        diff = float(np.abs(got[ok].astype(float) - want[ok].astype(float)).max()) if ok.any() else 0.0
        out[k] = {"max_rel": diff / scale if scale else diff, "nan_pattern_equal": nan_same}
    return out


def torchrun(folder: Path, out: Path) -> float:
    import shutil

    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "uni_lab", "run",
           "--images", str(folder), "--out", str(out), "--overwrite", *ARGS]
    shutil.rmtree(out, ignore_errors=True)
    p = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"torchrun failed:\n{p.stderr[-3000:]}")
    return time.perf_counter() - t0


def killed_and_resumed(folder: Path, out: Path, n: int, at: float = 0.4) -> dict:
    import shutil

    import zarr

    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "uni_lab", "run", "--images", str(folder), "--out", str(out), *ARGS]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = 0
    while proc.poll() is None:
        time.sleep(0.5)
        try:
            done = int(np.asarray(zarr.open_group(str(out), mode="r")["done"][:]).sum())
        except Exception:  # not created yet, or a chunk being replaced
            continue
        if done >= at * n:
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = int(np.asarray(zarr.open_group(str(out), mode="r")["done"][:]).sum())
    p = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"resume failed:\n{p.stderr[-3000:]}")
    return {"killed_at_items": killed_at, "returncode_of_killed": proc.returncode, "resume_stdout": p.stdout.splitlines()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="runs/scale")
    ap.add_argument("--sizes", default="1000,5000")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: torchrun,resume")
    args = ap.parse_args()
    root = Path(args.root)
    sizes = [int(s) for s in args.sizes.split(",")]
    skip = set(args.skip.split(","))
    res = {"load_before": os.getloadavg(), "runs": {}}
    for n in sizes:
        folder = make_folder(root / f"jpeg{n}", n)
        res["runs"][n] = measured(folder, root / f"s{n}.zarr")
        print(n, json.dumps(res["runs"][n]), flush=True)
    small, big = res["runs"][sizes[0]], res["runs"][sizes[-1]]
    res["ratios"] = {"rss_big_over_small": big["max_rss_mib"] / small["max_rss_mib"],
                     "throughput_big_over_small": big["images_per_s"] / small["images_per_s"],
                     "files_per_1000_items_big": 1000 * big["files"] / big["images"],
                     "chunk_files_per_1000_items_big": 1000 * big["chunk_files"] / big["images"],
                     "marginal_files_per_1000_items": 1000 * (big["files"] - small["files"]) / (big["images"] - small["images"])}
    n = sizes[-1]
    folder = root / f"jpeg{n}"
    if "torchrun" not in skip:
        res["torchrun_wall_s"] = torchrun(folder, root / f"t{n}.zarr")
        res["torchrun_vs_one_process"] = compare(root / f"t{n}.zarr", root / f"s{n}.zarr")
    if "resume" not in skip:
        res["resume"] = killed_and_resumed(folder, root / f"k{n}.zarr", n)
        res["resume_vs_uninterrupted"] = compare(root / f"k{n}.zarr", root / f"s{n}.zarr")
    res["load_after"] = os.getloadavg()
    text = json.dumps(res, indent=1, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        child(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "images":  # scale.py images FOLDER N SIDE (benchmarks/gpu.sh)
        make_folder(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
