"""Figs. 17-22 of the seed: F_c(γ(α)) against α per method, with the monotonicity and curvature table.

    python figures/fig_monotonicity.py                  # computes runs/figures/methods.zarr if missing
    python figures/fig_monotonicity.py --store runs/default.zarr
"""
from __future__ import annotations

import sys

import numpy as np

import uni_lab.plot as up

import _path_shape as shape
import _store_io as io
import _style as style


def draw(ds, out_dir, stem="fig_monotonicity"):
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    style.setup()
    table = shape.path_table(ds)
    if table.empty:
        style.missing("path traces", "no finished path-method item in the store")
        return [], table
    no_trace = sorted(set(ds.uni.done_methods()) - set(table["method"]))
    if no_trace:
        print(f"no path trace (not drawn): {', '.join(no_trace)}")
    ylabel = "logit of c" if ds.uni.score_trace().name == "trace_logit" else "F_c(γ(α))"
    methods = style.ordered(table["method"].unique())
    colours = style.palette(methods)
    panels = [(m, i) for m in map(str, ds.model.values) for i in map(str, ds.image.values)
              if ((table["model"] == m) & (table["image"] == i)).any()]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig = plt.figure(figsize=(max(3.4 * cols, 12), 2.8 * rows + 3.0))
    grid = fig.add_gridspec(rows + 1, 1, height_ratios=[rows, 1.1], hspace=0.45)
    top = grid[0].subgridspec(rows, cols, hspace=0.5)
    curve_axes = []
    for n, (model, image) in enumerate(panels):
        ax = fig.add_subplot(top[n // cols, n % cols])
        curve_axes.append(ax)
        here = table[(table["model"] == model) & (table["image"] == image)]
        up.path_trace(ax, ds, model, image, methods, colours, dict(zip(here["method"], here["conformant"])))
    # outside the panels: inside, it would cover the curves of some image
    handles = [Line2D([], [], color=colours[m], marker="o", ms=3, lw=1.4) for m in methods]
    handles += [Line2D([], [], color="0.3", ls=ls, lw=1.4) for ls in ("-", "--")]
    style.legend_outside(fig, curve_axes, handles, methods + ["conformant path", "non-conformant path"],
                         title="method")

    per_method = (table.groupby("method", as_index=False)
                  [["monotone_fraction", "conformant", "second_difference", "completeness_error"]].mean())
    per_method["images"] = table.groupby("method")["image"].count().reindex(per_method["method"]).values
    per_method = per_method.set_index("method").loc[methods].reset_index()
    specs = [("monotone_fraction", "monotone step share"), ("conformant", "conformant share"),
             ("second_difference", "mean |Δ² F_c|"), ("completeness_error", "completeness error")]
    bottom = grid[1].subgridspec(1, len(specs), wspace=0.55)
    for i, (col, label) in enumerate(specs):
        ax = fig.add_subplot(bottom[0, i])
        # a bar's length is its value: linear from 0 (on a log axis the length would depend on
        # where the axis happens to start); the exact means are in the printed table
        ax.bar(range(len(methods)), per_method[col], color=[colours[m] for m in methods], alpha=0.85)
        for x, method in enumerate(methods):
            values = table.loc[table["method"] == method, col].to_numpy(float)
            ax.plot(np.full(values.size, x), values, "o", color="0.15", ms=2.5, zorder=3)
        ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right")
        ax.set_ylabel(label)
        ax.set_ylim(0, max(float(np.nanmax(table[col].to_numpy(float), initial=0.0)), 1e-12) * 1.18)
    fig.suptitle(f"Class score along each path ({ylabel}) and its shape, per method "
                 "(bars: mean over images, dots: images)", y=0.98)
    style.footer(fig, style.wrap(ds.uni.caption(methods), 170))
    written = style.save_figure(fig, stem, out_dir)
    plt.close(fig)
    written += style.save_table(table, stem + "_items", out_dir)
    written += style.save_table(per_method, stem, out_dir, ds.uni.caption(methods))
    style.headline("fig_monotonicity: path shape per method (mean over images)", per_method)
    return written, per_method


def main(argv=None) -> int:
    args = io.parse(io.parser(__doc__.splitlines()[0], "methods.zarr"), argv)
    draw(io.obtain(args), args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
