"""Fig. 5: post-hoc bias of static baselines under ImageNet-C corruptions, against UNI.

Per corruption (one per family by default: digital = brightness, blur = gaussian_blur,
noise = gaussian_noise): the corrupted image and each method's map at one severity, and the
four bias measures (colour, intensity, texture, frequency; docs/methods.md §6) against severity,
severity 0 being the clean image. Reads what ``uni-lab evaluate --metrics bias --corruptions ...
--perturbed-metrics bias`` stored.

    python figures/fig5_bias.py                 # computes runs/figures/bias.zarr if missing
    python figures/fig5_bias.py --store runs/default.zarr --severity 3
"""
from __future__ import annotations

import sys

import pandas as pd

from uni_lab.schema import maps_flag, metric_flag, metric_variable

import _store_io as io
import _style as style

METHODS = ("ig:black", "ig:blur", "ig:gaussian", "blur_ig", "uni")
CORRUPTIONS = ("brightness", "gaussian_blur", "gaussian_noise")
BIASES = {"colour": ("colour bias", "corr(|A|, |x − x'|)"), "intensity": ("intensity bias", "corr(|A|, x)"),
          "texture": ("texture bias", "|A| share in smooth half"),
          "frequency": ("frequency bias", "power share > Nyquist/2")}


def families() -> dict[str, str]:
    """corruption → family, from the corruption plugins themselves."""
    try:
        from uni_lab.plugins.corruptions import FAMILIES
    except ImportError:
        return {}
    return {name: fam for fam, names in FAMILIES.items() for name in names}


def compute(path, args):
    if args.recompute or not io.is_complete(path):
        io.compute_store(path, args)
    io.compute_evaluation(path, args, metrics="bias", corruptions=",".join(args.corruptions),
                          severities=args.severities, perturbed_metrics="bias")


def per_image(ds) -> pd.DataFrame:
    """Long table (model, method, image, corruption, severity, bias, value); severity 0 = clean."""
    frames = []
    for key in BIASES:
        clean = ds.uni.evaluated(metric_variable("bias", key))
        if clean is not None:
            frames.append(clean.to_dataframe(name="value").reset_index().rename(columns={"xai_method": "method"})
                          [["model", "method", "image", "value"]]
                          .assign(severity=0, bias=key, corruption="clean"))
        corrupted = ds.uni.evaluated(metric_variable("bias", key, "corruption"))
        if corrupted is not None:
            frames.append(corrupted.to_dataframe(name="value").reset_index().rename(columns={"xai_method": "method"})
                          [["model", "method", "image", "corruption", "severity", "value"]].assign(bias=key))
    if not frames:
        return pd.DataFrame(columns=["model", "method", "image", "corruption", "severity", "value", "bias"])
    return pd.concat(frames).dropna(subset=["value"])


def draw(ds, out_dir, severity=None, stem="fig5_bias"):
    import matplotlib.pyplot as plt
    import seaborn as sns

    style.setup()
    long = per_image(ds)
    store = ds.attrs.get("store_path", "STORE")
    notes = []
    corruptions = [c for c in dict.fromkeys(long["corruption"]) if c != "clean"] if not long.empty else []
    if long.empty or not (long["corruption"] == "clean").any():
        notes.append(style.missing("clean bias metrics", f"run `uni-lab evaluate {store} --metrics bias`"))
    if not corruptions:
        notes.append(style.missing("corrupted inputs", f"run `uni-lab evaluate {store} --corruptions "
                                f"{','.join(CORRUPTIONS)} --perturbed-metrics bias`, or omit --store"))
    fam = families()
    absent = [m for m in METHODS if m not in set(map(str, ds.xai_method.values))]
    if absent:
        notes.append(style.missing(f"methods {absent} of the paper's comparison", "not in this store"))
    methods = style.ordered(long["method"].unique()) if not long.empty else style.ordered(ds.uni.done_methods())
    colours = style.palette(methods)
    sev_done = sorted(int(s) for s in long["severity"].unique() if s > 0) if not long.empty else []
    severity = severity if severity is not None else (max(sev_done) if sev_done else None)
    params = "; ".join(ds.uni.evaluation_params(v) for v in ("bias_colour",) if v in ds.data_vars)
    text = ds.uni.caption(methods, extra=params)

    rows = corruptions or ["clean"]
    fig = plt.figure(figsize=(max(2.0 * (len(methods) + 1), 12), 4.6 * len(rows) + 0.8))
    outer = fig.add_gridspec(len(rows), 1, hspace=0.3)
    model = str(ds.model.values[0])
    image = str(long["image"].iloc[0]) if not long.empty else str(ds.image.values[0])
    at = {"model": model, "image": image}
    handles, first_curves = None, []
    for r, corruption in enumerate(rows):
        map_axes, mappable = [], None
        block = outer[r].subgridspec(2, 1, height_ratios=[1.1, 1], hspace=0.3)
        maps = block[0].subgridspec(1, len(methods) + 1, wspace=0.06)
        curves = block[1].subgridspec(1, len(BIASES), wspace=0.38)
        label = "clean" if corruption == "clean" else f"{fam.get(corruption, '?')}: {corruption}"
        ax = fig.add_subplot(maps[0, 0])
        if corruption == "clean" or "corruption_input" not in ds.data_vars or severity is None:
            style.show_image(ax, ds["input"].sel(at).values, "clean input")
        else:
            style.show_image(ax, ds["corruption_input"].sel(at).sel(corruption=corruption, severity=severity).values,
                             f"severity {severity}")
        ax.set_ylabel(label, fontsize=10)
        for c, method in enumerate(methods, start=1):
            ax = fig.add_subplot(maps[0, c])
            map_axes.append(ax)
            if corruption == "clean" or severity is None:
                var, flag = ds["attribution"].sel(at), ds["done"].sel(at)
            else:
                sel = {"corruption": corruption, "severity": severity}
                var, flag = ds["corruption_attribution"].sel(at).sel(sel), ds[maps_flag("corruption")].sel(at).sel(sel)
            if bool(flag.sel(xai_method=method)):
                mappable = style.show_map(ax, var.sel(xai_method=method).values, method)
            else:
                style.blank(ax, f"{method}: not computed")
        if mappable is not None:  # one bar per row of maps, beside it
            style.map_colorbar(fig, map_axes, mappable)
        for c, (key, (title, ylabel)) in enumerate(BIASES.items()):
            ax = fig.add_subplot(curves[0, c])
            if r == 0:
                first_curves.append(ax)
            sub = long[(long["bias"] == key) & long["corruption"].isin(["clean", corruption])]
            if sub.empty:
                style.blank(ax, f"{title}: not evaluated")
                continue
            sns.lineplot(data=sub, x="severity", y="value", hue="method", hue_order=methods, palette=colours,
                         marker="o", errorbar=None, ax=ax)
            found = style.take_legend(ax)
            handles = handles or found
            ax.set_xticks(sorted(sub["severity"].unique()))
            ax.set_xlabel("severity (0 = clean)")
            ax.set_ylabel(ylabel, fontsize=8)
            ax.set_title(title, fontsize=9)
    if handles is not None:  # beside the first row of curves, covering none of them
        style.legend_outside(fig, first_curves or fig.axes, *handles, title="method")
    fig.suptitle(f"Post-hoc bias under corruptions · image '{image}' · maps at severity {severity} · "
                 "curves: mean over images", y=0.995)
    style.footer(fig, style.wrap("\n".join([text] + notes), 170))
    written = style.save_figure(fig, stem, out_dir)
    plt.close(fig)

    if long.empty:
        table = pd.DataFrame(columns=["method", "corruption", "severity"])
    else:
        table = (long.groupby(["method", "corruption", "severity", "bias"], as_index=False)["value"].mean()
                 .pivot_table(index=["method", "corruption", "severity"], columns="bias", values="value")
                 .reset_index())
        table = table[["method", "corruption", "severity"] + [b for b in BIASES if b in table.columns]]
        order = {m: i for i, m in enumerate(methods)}
        table = table.sort_values(["method", "corruption", "severity"],
                                  key=lambda s: s.map(order) if s.name == "method" else s)
    written += style.save_table(table, stem, out_dir, "\n".join([text] + notes))
    style.headline(f"fig5: bias per method, clean (severity 0) and at severity {max(sev_done or [0])} "
                "(mean over corruptions and images; full table in the CSV)", _headline(table, sev_done))
    return written, table


def _headline(table: pd.DataFrame, severities) -> pd.DataFrame:
    if table.empty:
        return table
    top = max(severities or [0])
    sub = table[table["severity"].isin({0, top})]
    out = sub.drop(columns="corruption").groupby(["method", "severity"], as_index=False, sort=False).mean()
    order = {m: i for i, m in enumerate(dict.fromkeys(table["method"]))}
    return out.sort_values(["method", "severity"], key=lambda s: s.map(order) if s.name == "method" else s)


def main(argv=None) -> int:
    p = io.parser(__doc__.splitlines()[0], "bias.zarr", images=("chelsea",), methods=METHODS)
    p.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS),
                   help="ImageNet-C corruptions for a computed store (default: one per family, %(default)s)")
    p.add_argument("--severities", type=int, nargs="+", default=[1, 3, 5],
                   help="severities for a computed store (default: %(default)s)")
    p.add_argument("--severity", type=int, help="severity of the maps drawn (default: the highest evaluated)")
    args = io.parse(p, argv)
    ready = lambda ds: (ds.uni.is_evaluated(metric_flag("bias")) and  # noqa: E731
                        ds.uni.is_evaluated(metric_flag("bias", "corruption"), corruption=args.corruptions,
                                        severity=args.severities))
    ds = io.obtain(args, compute=compute, ready=ready)
    draw(ds, args.out_dir, severity=args.severity)
    return 0


if __name__ == "__main__":
    sys.exit(main())
