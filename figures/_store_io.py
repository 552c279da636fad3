"""Stores in, files out: what every figure script shares besides its drawing.

A script either opens the store it is given (``--store``, no model is built) or, with no
arguments, opens its cached default under ``runs/figures/`` and computes it first with
:func:`uni_lab.run` when it is missing or unfinished. Drawing code only ever sees an
``xarray.Dataset``. Outputs go to ``figures/out/`` as PNG+PDF (tables: CSV+Markdown).
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from uni_lab.defaults import DEFAULT_STEPS

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "runs" / "figures"
OUT = REPO / "figures" / "out"
DEFAULT_IMAGES = ("chelsea", "coffee")
# The methods a default figure compares, in drawing order; those not registered (yet) are
# skipped and named, so a script works before every method plugin exists.
DEFAULT_METHODS = ("uni", "ig:black", "ig:blur", "blur_ig", "guided_ig")


class _Parser(argparse.ArgumentParser):
    """Imports ``--plugins`` as soon as the arguments are parsed: a store made with a user's plugin is
    computed, widened or evaluated with it."""

    def parse_args(self, *args, **kwargs):
        from uni_lab.commands._shared import import_plugins

        parsed = super().parse_args(*args, **kwargs)
        import_plugins(parsed.plugins)
        return parsed


def parser(description: str, store_name: str, *, images=DEFAULT_IMAGES, methods=DEFAULT_METHODS,
           steps: int = DEFAULT_STEPS, several_stores: bool = False) -> argparse.ArgumentParser:
    p = _Parser(description=description)
    p.add_argument("--plugins", action="append", default=[], metavar="MODULE_OR_FILE",
                   help="import a module or .py file that registers plugins first (repeatable)")
    p.add_argument("--store", type=Path, nargs="+" if several_stores else None,
                   help="draw from existing store(s) (no model is built); "
                   f"default: compute or reuse CACHE/{store_name}")
    p.add_argument("--cache", type=Path, default=RUNS,
                   help="folder of the computed default stores (default: %(default)s)")
    p.add_argument("--out-dir", type=Path, default=OUT, help="where PNG/PDF/CSV/MD go (default: %(default)s)")
    p.add_argument("--images", nargs="+", default=list(images),
                   help="photographs for a computed store (default: %(default)s)")
    p.add_argument("--methods", default=",".join(methods),
                   help="comma list of method specs for a computed store (default: %(default)s; "
                        "unregistered ones are skipped)")
    p.add_argument("--steps", type=int, default=steps, help="Riemann steps B for a computed store")
    p.add_argument("--model", default="efficientnet_lite0", help="model for a computed store")
    p.add_argument("--recompute", action="store_true", help="overwrite the cached default store")
    p.add_argument("--dpi", type=int, default=150, help="PNG resolution (default: %(default)s)")
    p.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=("png", "pdf", "svg"),
                   help="figure files to write (default: png pdf)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(store_name=store_name)
    return p


# How figures are written; ``parse`` applies a script's --dpi/--formats before it draws.
FIGURE_OUTPUT = {"dpi": 150, "formats": ("png", "pdf")}


def parse(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = p.parse_args(argv)
    FIGURE_OUTPUT.update(dpi=args.dpi, formats=tuple(args.formats))
    return args


def _rel(path: Path) -> str:
    # unresolved first: a runs/ folder that is a symlink still reads as runs/... in captions
    for candidate in (Path(path).absolute(), Path(path).resolve()):
        try:
            return str(candidate.relative_to(REPO))
        except ValueError:
            continue
    return str(path)


def registered_methods(specs) -> tuple[list[str], list[str]]:
    """Split method specs into those whose explainer is registered and those that are not."""
    import uni_lab

    names = {p.name for p in uni_lab.list_plugins("explainer")}
    keep, skipped = [], []
    for spec in specs:
        (keep if spec.split(":")[0].split("(")[0].strip() in names else skipped).append(spec)
    return keep, skipped


def compute_store(path: Path, args, *, methods=None, steps=None, sets=None) -> Path:
    """Run the embedded model on the photographs and cache the store at ``path`` (resumes)."""
    import uni_lab

    specs = [m.strip() for m in (methods if methods is not None else args.methods.split(",")) if m.strip()]
    keep, skipped = registered_methods(specs)
    if skipped:
        print(f"MISSING methods (not registered, skipped): {', '.join(skipped)}")
    print(f"computing {_rel(path)}: {args.model} on {', '.join(args.images)} with {', '.join(keep)}")
    try:
        # resize="full": the figures' stores and the numbers docs/ quotes were made before the default
        # became the model's own crop; pinned, a cached store stays this script's and its numbers hold
        uni_lab.run(models=args.model, images=args.images, methods=keep, steps=steps or args.steps, out=path,
                    sets=sets, overwrite=args.recompute, progress=not args.no_progress, resize="full")
    except uni_lab.StoreError as exc:
        raise SystemExit(f"{exc}\nThe cached store was made with other settings: pass --recompute to replace it.")
    return path


def compute_evaluation(path: Path, args, **kwargs) -> Path:
    """Add metrics/attacks/corruptions to the store at ``path`` with ``uni_lab.evaluate`` (resumes)."""
    import uni_lab
    from uni_lab import evaluate

    what = ", ".join(f"{k}={v}" for k, v in kwargs.items() if v)
    print(f"evaluating {_rel(path)}: {what}")
    try:
        evaluate(path, progress=not args.no_progress, recompute=args.recompute, **kwargs)
    except uni_lab.StoreError as exc:
        raise SystemExit(f"{exc}\nPass --recompute to replace the cached results.")
    return path


def is_complete(path: Path) -> bool:
    """A store whose every item is done (so a rerun has nothing left to compute)."""
    if not ((path / ".zgroup").exists() or (path / "zarr.json").exists()):
        return False
    return bool(xr.open_zarr(path)["done"].all())


def default_store(args) -> Path:
    """Where a script caches the store it computes: ``--cache`` / its store name."""
    return Path(args.cache) / args.store_name


def obtain(args, compute=None, ready=None) -> xr.Dataset:
    """The dataset to draw: ``--store``, else the cached default, computed first when it is
    missing, unfinished, or (``ready(ds)`` false) lacks the evaluation the figure needs."""
    if args.store is not None:
        if not args.store.exists():
            raise SystemExit(f"no store at '{args.store}'. Omit --store to compute the default one, or write it "
                             f"with `uni-lab run --out {args.store}`.")
        return open_loaded(args.store)
    path = default_store(args)
    if args.recompute or not is_complete(path) or (ready is not None and not ready(xr.open_zarr(path))):
        (compute or compute_store)(path, args)
    return open_loaded(path)


# Stores up to this size (uncompressed) are read into memory at once: figures then select
# freely without rereading chunks. Larger ones (ImageNet-scale runs) stay dask-backed, so only
# the items a figure draws are ever read.
LOAD_LIMIT_BYTES = 2 << 30


def open_loaded(path: Path) -> xr.Dataset:
    from uni_lab.store import open_store

    ds = open_store(path, lazy=True)
    if ds.nbytes <= LOAD_LIMIT_BYTES:
        ds = ds.load()
    ds.attrs["store_path"] = _rel(path)
    return ds


def class_names(ds: xr.Dataset, model: str) -> list[str] | None:
    """ImageNet-1k class names for a 1000-class ImageNet model of the store, else None (numbers).

    A store records the model's description, not its head: a description with ``num_classes``
    (or ``class_names``) says so itself; otherwise only the embedded EfficientNet-Lite models
    with their embedded weights are known to be ImageNet-1k classifiers (plugins/models.py).
    """
    entry = ds.uni.config.get("models", {}).get(model, {})
    if entry.get("class_names"):
        return list(entry["class_names"])
    if "num_classes" in entry:
        imagenet = entry["num_classes"] == 1000 and entry.get("weights") != "random"
    else:
        imagenet = (str(entry.get("name", model)).startswith("efficientnet_lite")
                    and str(entry.get("weights", "")).startswith("efficientnet-lite"))
    if not imagenet:
        return None
    from uni_lab.models import imagenet_class_names  # timm's bundled ImageNetInfo: no network

    return imagenet_class_names()


def class_label(names: list[str] | None, index: int) -> str:
    """``class 1: goldfish``: the number and the first of the class's synonyms (the number alone
    without names)."""
    if names and 0 <= index < len(names):
        return f"class {index}: {names[index].split(',')[0]}"
    return f"class {index}"


def sel_method(obj, method: str):
    return obj.sel({"method": method})


def wrap(text: str, width: int = 150) -> str:
    """Wrapped to ``width``, each line of ``text`` on its own (notes stay separate lines)."""
    return "\n".join(part for line in text.splitlines() for part in textwrap.wrap(line, width))


def save_figure(fig, stem: str, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{fmt}" for fmt in FIGURE_OUTPUT["formats"]]
    for p in paths:
        fig.savefig(p, dpi=FIGURE_OUTPUT["dpi"] if p.suffix == ".png" else None, bbox_inches="tight")
        print(f"wrote {p}")
    return paths


def save_table(df: pd.DataFrame, stem: str, out_dir: Path, caption_text: str = "") -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    df.to_csv(csv, index=False)
    md.write_text(df.to_markdown(index=False, floatfmt=".4g") + (f"\n\n{caption_text}\n" if caption_text else "\n"))
    for p in (csv, md):
        print(f"wrote {p}")
    return [csv, md]


def headline(title: str, df: pd.DataFrame) -> None:
    """Print the numbers a figure plotted, so a log holds them without opening the image."""
    print(f"\n== {title} ==")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}") if not df.empty else "(nothing to report)")


def missing(what: str, how: str) -> str:
    """Say loudly what a figure could not draw and how to get it; returns the note for the figure."""
    note = f"MISSING: {what} ({how})"
    print(note, file=sys.stderr)
    return note


def finite_mean(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
