"""Fig. 7: attribution maps against Riemann steps B per method, and the stability curves.

For each method, A_B (B Riemann steps) is compared with A_ref (the largest B, 256 by default):
the Spearman correlation and the relative L2 error ‖A_B − A_ref‖ / ‖A_ref‖ over every input
feature, plus the completeness error at each B. The stores hold one B each, so the figure
reads several of them (one per B), all with the same images, methods and seed.

    python figures/fig7_stability.py                          # computes runs/figures/fig7/B*.zarr
    python figures/fig7_stability.py --store runs/figures/fig7    # a folder of stores, or several paths
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import _store_io as io
import _style as style

DEFAULT_BS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_REF = 256


def store_paths(items) -> list[Path]:
    """Stores named directly, or every store inside a folder that holds several."""
    out = []
    for item in items:
        item = Path(item)
        if not item.exists():
            raise SystemExit(f"no store at '{item}'; pass store paths or a folder of stores (e.g. runs/figures/fig7).")
        if (item / ".zgroup").exists() or (item / "zarr.json").exists():
            out.append(item)
        else:
            found = sorted(p for p in item.iterdir() if (p / ".zgroup").exists() or (p / "zarr.json").exists())
            if not found:
                raise SystemExit(f"'{item}' is neither a store nor a folder of stores.")
            out += found
    return out


def compute(args) -> list[Path]:
    folder = io.default_store(args)
    paths = []
    for b in sorted(set(args.bs) | {args.ref}):
        path = folder / f"B{b}.zarr"
        if args.recompute or not io.is_complete(path):
            io.compute_store(path, args, steps=b)
        paths.append(path)
    return paths


def collect(datasets) -> tuple[dict, pd.DataFrame]:
    """Maps and per-item scalars keyed by (model, method, image, B), from every store's finished items."""
    maps, rows = {}, []
    for ds in datasets:
        for model in map(str, ds.model.values):
            for method in ds.uni.done_methods(model):
                b = ds.uni.method_steps(method)
                if b is None:
                    continue  # not a path method: no Riemann sum to be stable in
                for image in map(str, ds.image.values):
                    item = ds.sel(model=model, image=image, xai_method=method)
                    if not bool(item["done"]):
                        continue
                    key = (model, method, image, int(b))
                    maps[key] = (item["attribution"].values.astype(float), item["baseline"].values.astype(float),
                                 item["input"].values)
                    rows.append({"model": model, "method": method, "image": image, "B": int(b),
                                 "completeness_error": float(item["completeness_error"])})
    return maps, pd.DataFrame(rows)


def stability(maps: dict, items: pd.DataFrame) -> pd.DataFrame:
    """Spearman and relative L2 of A_B against A_ref, ref = the largest B of each (model, method, image)."""
    from scipy.stats import spearmanr

    rows = []
    for (model, method, image), group in items.groupby(["model", "method", "image"]):
        ref = int(group["B"].max())
        a_ref, base_ref, _ = maps[(model, method, image, ref)]
        for _, r in group.iterrows():
            a, base, _ = maps[(model, method, image, int(r["B"]))]
            # the comparison is meaningful only on the same path: a seeded baseline must not move with B
            drift = float(np.nanmax(np.abs(base - base_ref))) if np.isfinite(base).any() else 0.0
            rho = float(spearmanr(a.ravel(), a_ref.ravel())[0])
            rel = float(np.linalg.norm(a - a_ref) / max(np.linalg.norm(a_ref), 1e-30))
            rows.append({**r.to_dict(), "B_ref": ref, "spearman": rho, "rel_l2": rel, "baseline_drift": drift})
    return pd.DataFrame(rows)


def from_metric(ds) -> pd.DataFrame:
    """Curves ``uni-lab evaluate --metrics riemann_stability`` stored (dims ..., steps), if any."""
    sp, rel = ds.uni.evaluated("riemann_stability_spearman"), ds.uni.evaluated("riemann_stability_rel_error")
    if sp is None or rel is None:
        return pd.DataFrame()
    keys = ["model", "xai_method", "image", "steps"]
    frame = (sp.to_dataframe(name="spearman").reset_index()[keys + ["spearman"]]
             .merge(rel.to_dataframe(name="rel_l2").reset_index()[keys + ["rel_l2"]], on=keys)
             .dropna(subset=["spearman", "rel_l2"]).rename(columns={"steps": "B", "xai_method": "method"}))
    ref = json.loads(sp.attrs.get("uni_lab_params", "{}")).get("reference_steps")
    return frame.assign(B_ref=ref)


def draw(datasets, out_dir, image=None, stem="fig7_stability"):
    import matplotlib.pyplot as plt
    import seaborn as sns

    style.setup()
    maps, items = collect(datasets)
    if items.empty:
        style.missing("path-method items", "no store holds a finished path method")
        return [], pd.DataFrame()
    table = stability(maps, items)
    bs = sorted(table["B"].unique())
    curves, source = table[table["B"] < table["B_ref"]], f"{len(datasets)} stores, one per B"
    if len(bs) < 2:
        metric = pd.concat([from_metric(ds) for ds in datasets], ignore_index=True)
        if metric.empty:
            style.missing("a second B", f"only B = {bs} is present; stability needs stores at several B or the "
                       "riemann_stability metric (uni-lab evaluate --metrics riemann_stability; or omit --store)")
        else:
            curves, source = metric, "curves: the stored riemann_stability metric"
    model = str(table["model"].iloc[0])
    image = image or str(table["image"].iloc[0])
    methods = style.ordered(table["method"].unique())
    colours = style.palette(methods)

    fig = plt.figure(figsize=(max(1.6 * (len(bs) + 1), 11), 1.7 * len(methods) + 3.4))
    grid = fig.add_gridspec(len(methods) + 1, len(bs) + 1, height_ratios=[1] * len(methods) + [1.9])
    map_axes, mappable, curve_axes, handles = [], None, [], None
    for r, method in enumerate(methods):
        for c, b in enumerate(bs):
            ax = fig.add_subplot(grid[r, c + 1])
            map_axes.append(ax)
            key = (model, method, image, b)
            if key in maps:
                mappable = style.show_map(ax, maps[key][0], f"B = {b}" if r == 0 else None)
            else:
                style.blank(ax, "not computed")
        ax = fig.add_subplot(grid[r, 0])
        ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
        any_key = next(k for k in maps if k[0] == model and k[2] == image)
        ax.imshow(style.rgb(maps[any_key][2]))
        ax.set_ylabel(method, fontsize=10, color=colours[method])
    specs = [("spearman", "Spearman ρ(A_B, A_ref)"), ("rel_l2", "‖A_B − A_ref‖ / ‖A_ref‖"),
             ("completeness_error", "completeness error")]
    sub = grid[len(methods), :].subgridspec(1, 3, wspace=0.35)
    for i, (col, label) in enumerate(specs):
        ax = fig.add_subplot(sub[0, i])
        curve_axes.append(ax)
        data = table if col == "completeness_error" else curves
        if data.empty:
            style.blank(ax, f"{label}: needs stores at two or more B")
            continue
        sns.lineplot(data=data, x="B", y=col, hue="method", hue_order=methods, palette=colours, marker="o",
                     errorbar=("pi", 100), ax=ax, legend=handles is None)
        if handles is None:
            handles = style.take_legend(ax)
        ax.set_xscale("log", base=2)
        every_b = sorted(set(bs) | set(curves["B"]) | set(curves["B_ref"].dropna()))
        ax.set_xlim(min(every_b) / 1.4, max(every_b) * 1.4)
        if col != "spearman":
            ax.set_yscale("log")
        ax.set_xlabel("Riemann steps B")
        ax.set_ylabel(label)
    refs = sorted(curves["B_ref"].dropna().unique()) or sorted(table["B_ref"].unique())
    fig.suptitle(f"Stability against Riemann steps · {model} · maps: '{image}' · reference B = "
                 f"{'/'.join(map(str, refs))}\ncurves: mean over {table['image'].nunique()} image(s), band = range",
                 y=1.0, fontsize=10)
    fig.tight_layout()
    if mappable is not None:
        style.map_colorbar(fig, map_axes, mappable)
    if handles is not None:
        style.legend_outside(fig, curve_axes, *handles, title="method")
    text = datasets[-1].uni.caption(methods, steps=bs, extra=source)
    style.footer(fig, style.wrap(text, 170))
    written = style.save_figure(fig, stem, out_dir)
    plt.close(fig)

    keys = ["method", "B"]
    if source.startswith("curves"):  # the metric's curves, with the completeness error of the stored B
        summary = (curves.groupby(keys, as_index=False)[["spearman", "rel_l2"]].mean()
                   .merge(table.groupby(keys, as_index=False)[["completeness_error"]].mean(), on=keys, how="outer"))
    else:
        summary = table.groupby(keys, as_index=False)[["spearman", "rel_l2", "completeness_error",
                                                       "baseline_drift"]].mean()
    summary = summary.sort_values(["method", "B"], key=lambda s: s.map({m: i for i, m in enumerate(methods)})
                                  if s.name == "method" else s)
    written += style.save_table(summary, stem, out_dir, text)
    style.headline("fig7: stability against B (mean over images; reference = largest B)", summary)
    return written, summary


def main(argv=None) -> int:
    p = io.parser(__doc__.splitlines()[0], "fig7", images=("chelsea",),
                  methods=("uni", "ig:black", "ig:blur"), several_stores=True)
    p.add_argument("--bs", type=int, nargs="+", default=list(DEFAULT_BS), help="Riemann steps to compare")
    p.add_argument("--ref", type=int, default=DEFAULT_REF, help="reference B (default: %(default)s)")
    p.add_argument("--image", help="the image whose maps are drawn (default: the first)")
    args = io.parse(p, argv)
    paths = store_paths(args.store) if args.store else compute(args)
    draw([io.open_loaded(path) for path in paths], args.out_dir, image=args.image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
