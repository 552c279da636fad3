"""Table 2: MuFidelity, deletion and insertion per method and backbone.

Reads the metrics ``uni-lab evaluate --metrics mufidelity,deletion,insertion`` stored; with no
arguments it evaluates the cached methods store (computing that first if needed).

    python figures/table2_faithfulness.py
    python figures/table2_faithfulness.py --store runs/default.zarr     # after `uni-lab evaluate`
"""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from uni_lab.schema import metric_flag

import _store_io as io
import _style as style

METRICS = ("mufidelity", "deletion", "insertion")
BETTER = {"mufidelity": "higher is better", "deletion": "lower is better", "insertion": "higher is better"}


def compute(path, args):
    if args.recompute or not io.is_complete(path):
        io.compute_store(path, args)
    io.compute_evaluation(path, args, metrics=",".join(METRICS))


def ready(ds) -> bool:
    return all(ds.uni.is_evaluated(metric_flag(m)) for m in METRICS)


def per_image(ds) -> tuple[pd.DataFrame, list[str]]:
    """Long table (model, method, image, metric, value) of the evaluated items, and what is missing."""
    frames, missing = [], []
    for metric in METRICS:
        values = ds.uni.evaluated(metric)
        if values is None:
            missing.append(metric)
            continue
        frame = (values.to_dataframe(name="value").reset_index().rename(columns={"xai_method": "method"})
                 [["model", "method", "image", "value"]])
        frames.append(frame.dropna(subset=["value"]).assign(metric=metric))
    return (pd.concat(frames) if frames else pd.DataFrame(columns=["model", "method", "image", "value", "metric"]),
            missing)


def draw(ds, out_dir, stem="table2_faithfulness"):
    import matplotlib.pyplot as plt
    import seaborn as sns

    style.setup()
    long, missing = per_image(ds)
    notes = [io.missing(f"metric '{m}'", f"run `uni-lab evaluate {ds.attrs.get('store_path', 'STORE')} --metrics "
                        f"{','.join(METRICS)}`, or omit --store") for m in missing]
    present = [m for m in METRICS if m not in missing]
    methods = style.ordered(long["method"].unique()) if not long.empty else style.ordered(ds.uni.done_methods())
    params = "; ".join(ds.uni.evaluation_params(m) for m in present)
    text = ds.uni.caption(methods, extra=f"metrics: {params}" if params else "")

    table = (long.groupby(["model", "method", "metric"], as_index=False)["value"]
             .agg(mean="mean", std="std", images="count")) if not long.empty else \
        pd.DataFrame(columns=["model", "method", "metric", "mean", "std", "images"])
    wide = _wide(table, methods)
    written = io.save_table(wide, stem, out_dir, "\n".join([text] + notes))
    written += io.save_table(table, stem + "_long", out_dir)

    curves = [c for c in ("deletion_curve", "insertion_curve") if ds.uni.evaluated(c) is not None]
    # one row per backbone: its bars (mean over images, dots = images) and its curves
    models = list(dict.fromkeys(long["model"])) if not long.empty else [str(m) for m in ds.model.values]
    fig, axes = plt.subplots(len(models), len(METRICS) + len(curves), squeeze=False,
                             figsize=(4.3 * (len(METRICS) + len(curves)), 3.9 * len(models)))
    colours = style.palette(methods)
    for row, model in zip(axes, models):
        for ax, metric in zip(row, METRICS):
            sub = long[(long["metric"] == metric) & (long["model"] == model)]
            title = f"{model}: {metric}" if len(models) > 1 else metric
            if sub.empty:
                style.blank(ax, f"{metric}: not evaluated")
                ax.set_title(title)
                continue
            sns.barplot(data=sub, x="method", y="value", order=methods, hue="method", palette=colours,
                        errorbar=None, ax=ax, legend=False, alpha=0.85)
            sns.stripplot(data=sub, x="method", y="value", order=methods, color="0.15", size=3.5, ax=ax,
                          dodge=False, jitter=0.15)
            ax.set_title(f"{title} ({BETTER[metric]})")
            ax.set_xlabel("")
            ax.set_ylabel(metric)
            ax.tick_params(axis="x", rotation=35)
            for lab in ax.get_xticklabels():
                lab.set_ha("right")
        for ax, var in zip(row[len(METRICS):], curves):
            data = ds.uni.evaluated(var).sel(model=model)
            frac_dim = next(d for d in data.dims if d not in ("xai_method", "image"))
            for method in methods:
                curve = io.sel_method(data, method).mean([d for d in data.dims if d not in ("xai_method", frac_dim)])
                if np.isfinite(curve.values).any():
                    ax.plot(curve[frac_dim].values, curve.values, color=colours[method], label=method)
            name = var.replace("_curve", "")
            ax.set_xlabel("fraction of pixels " + ("removed" if name == "deletion" else "inserted"))
            ax.set_ylabel("F_c (mean over images)")
            ax.set_title(f"{model}: {name} curve" if len(models) > 1 else f"{name} curve")
    fig.suptitle("Faithfulness per method" + (" and backbone (one row each)" if len(models) > 1 else "")
                 + ": bars = mean over images, dots = images", y=1.0)
    fig.tight_layout()
    if curves:  # beside the curves, not over them
        style.legend_outside(fig, axes[:, len(METRICS):], *axes[0, len(METRICS)].get_legend_handles_labels(),
                             title="method")
    style.footer(fig, io.wrap("\n".join([text] + notes), 170))
    written += io.save_figure(fig, stem, out_dir)
    plt.close(fig)
    io.headline("table2: faithfulness per method (mean ± std over images)", wide)
    return written, wide


def _wide(table: pd.DataFrame, methods) -> pd.DataFrame:
    """Rows (model, method), one column per metric: 'mean ± std (n)', as the paper's table reads per backbone."""
    rows = []
    for model in dict.fromkeys(table["model"]):
        for method in methods:
            row = {"model": model, "method": method}
            for _, r in table[(table["model"] == model) & (table["method"] == method)].iterrows():
                row[r["metric"]] = f"{r['mean']:.4f} ± {r['std']:.4f} (n={int(r['images'])})" if r["images"] > 1 \
                    else f"{r['mean']:.4f} (n=1)"
            rows.append(row)
    wide = pd.DataFrame(rows)
    return wide[["model", "method"] + [m for m in METRICS if m in wide.columns]] if not wide.empty else wide


def main(argv=None) -> int:
    args = io.parse(io.parser(__doc__.splitlines()[0], "methods.zarr"), argv)
    draw(io.obtain(args, compute=compute, ready=ready), args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
