"""The figure scripts' command line: their shared flags, and the stores they compute and cache.

A script either opens the store it is given (``--store``, no model is built) or, with no
arguments, opens its cached default under ``runs/figures/`` and computes it first with
:func:`uni_lab.run` when it is missing or unfinished. Drawing code only ever sees an
``xarray.Dataset`` and reads it through ``ds.uni``; how figures look and are written is
``_style``. Outputs go to ``figures/out/``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import xarray as xr

from uni_lab.defaults import DEFAULT_STEPS, FIGURE_METHODS

import _style
# table2_faithfulness.py and fig4_robustness.py still reach these through this module
from _style import headline, missing, save_figure, save_table, wrap  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "runs" / "figures"
OUT = REPO / "figures" / "out"
DEFAULT_IMAGES = ("chelsea", "coffee")


class _Parser(argparse.ArgumentParser):
    """Imports ``--plugins`` as soon as the arguments are parsed: a store made with a user's plugin is
    computed, widened or evaluated with it."""

    def parse_args(self, *args, **kwargs):
        from uni_lab.commands._shared import import_plugins

        parsed = super().parse_args(*args, **kwargs)
        import_plugins(parsed.plugins)
        return parsed


def parser(description: str, store_name: str, *, images=DEFAULT_IMAGES, methods=FIGURE_METHODS,
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


def parse(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """The arguments, with --dpi/--formats applied to how figures are written."""
    args = p.parse_args(argv)
    _style.FIGURE_OUTPUT.update(dpi=args.dpi, formats=tuple(args.formats))
    return args


def _rel(path: Path) -> str:
    # unresolved first: a runs/ folder that is a symlink still reads as runs/... in captions
    for candidate in (Path(path).absolute(), Path(path).resolve()):
        try:
            return str(candidate.relative_to(REPO))
        except ValueError:
            continue
    return str(path)


def method_specs(args) -> list[str]:
    """The specs of --methods (commas inside a wrapper's parentheses stay with it)."""
    from uni_lab.commands._shared import split_methods

    return [m.strip() for m in split_methods(args.methods)]


def registered_methods(specs) -> tuple[list[str], list[str]]:
    """Split method specs into those that resolve and those naming a plugin that is not registered
    (yet); any other fault of a spec stops the script with the package's one-line message."""
    from uni_lab.errors import PluginError
    from uni_lab.methods import resolve

    keep, skipped = [], []
    for spec in specs:
        try:
            resolve(spec)
        except PluginError as exc:
            if not str(exc).startswith("unknown "):  # the registry's words for a name it does not hold
                raise SystemExit(str(exc)) from None
            skipped.append(spec)
        else:
            keep.append(spec)
    return keep, skipped


def compute_store(path: Path, args, *, methods=None, steps=None, sets=None) -> Path:
    """Run the embedded model on the photographs and cache the store at ``path`` (resumes)."""
    import uni_lab

    keep, skipped = registered_methods(methods if methods is not None else method_specs(args))
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


def sel_method(obj, method: str):
    """Kept for table2_faithfulness.py and fig4_robustness.py: ``obj.sel(xai_method=method)``."""
    return obj.sel(xai_method=method)
