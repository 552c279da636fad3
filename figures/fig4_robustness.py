"""Fig. 4: how much of each method's map survives an attack on it, against the random-noise control.

Spearman correlation and top-k intersection between A(x) and A(x + δ) per method, for the
top-k attribution attack (``fgsm_attribution``, Ghorbani et al. 2019) and for uniform noise of
the same L∞ budget (``random_noise``); 1 = the map did not move. Reads what
``uni-lab evaluate --attacks fgsm_attribution,random_noise --perturbed-metrics robustness`` stored.

    python figures/fig4_robustness.py              # computes runs/figures/robustness.zarr if missing
    python figures/fig4_robustness.py --store runs/default.zarr
"""
from __future__ import annotations

import itertools
import sys

import pandas as pd

from uni_lab.schema import input_flag, maps_flag, metric_flag

import _store_io as io
import _style as style

# The one-step attack stays the default: the iterative one (ifgsm_attribution, --attacks) moved
# 12 of 24 items of the eight photographs at its first step, not most (benchmarks/attack_applied.py).
ATTACKS = ("fgsm_attribution", "random_noise")
SCORES = {"attack_robustness_spearman": "Spearman ρ(A(x), A(x+δ))",
          "attack_robustness_topk": "top-k intersection"}


def compute(path, args):
    if args.recompute or not io.is_complete(path):
        io.compute_store(path, args)
    io.compute_evaluation(path, args, attacks=",".join(_attacks(args)), perturbed_metrics="robustness")


def ready(ds, attacks=ATTACKS) -> bool:
    return ds.uni.is_evaluated(metric_flag("robustness", "attack"), attack=list(attacks))


def _attacks(args) -> list[str]:
    return [a.strip() for a in getattr(args, "attacks", ",".join(ATTACKS)).split(",") if a.strip()]


def per_image(ds) -> pd.DataFrame:
    frames = []
    for var in SCORES:
        values = ds.uni.evaluated(var)
        if values is not None:
            frames.append(values.to_dataframe(name="value").reset_index().rename(columns={"xai_method": "method"})
                          [["model", "method", "image", "attack", "value"]].assign(score=var))
    extra = {}
    for var in ("attack_label_kept", "attack_linf"):
        if var in ds.data_vars:
            flagged = ds[var].where(ds[input_flag("attack")]) if input_flag("attack") in ds.data_vars else ds[var]
            extra[var] = (flagged.to_dataframe(name=var).reset_index().rename(columns={"xai_method": "method"})
                          [["model", "method", "image", "attack", var]])
    long = pd.concat(frames).dropna(subset=["value"]) if frames else pd.DataFrame(
        columns=["model", "method", "image", "attack", "value", "score"])
    for frame in extra.values():
        long = long.merge(frame, on=["model", "method", "image", "attack"], how="left")
    # An attack whose every candidate flipped the label returns x itself (δ = 0): its "robustness"
    # of 1 measures nothing, so such items are kept out of the scores and counted instead.
    long["applied"] = long["attack_linf"] > 0 if "attack_linf" in long else True
    return long


def draw(ds, out_dir, image=None, stem="fig4_robustness"):
    import matplotlib.pyplot as plt
    import seaborn as sns

    style.setup()
    long = per_image(ds)
    notes = []
    if long.empty:
        notes.append(io.missing("attack robustness", f"run `uni-lab evaluate {ds.attrs.get('store_path', 'STORE')} "
                                f"--attacks {','.join(ATTACKS)} --perturbed-metrics robustness`, or omit --store"))
    else:
        absent = sorted(set(ATTACKS) - set(long["attack"]))
        if absent:
            notes.append(io.missing(f"attacks {absent}", "not evaluated in this store"))
    unapplied = (long[~long["applied"].astype(bool)].drop_duplicates(["model", "method", "attack", "image"])
                 .groupby(["model", "method", "attack"])["image"].count()) if not long.empty else pd.Series(dtype=int)
    several = long["model"].nunique() > 1 if not long.empty else False
    for (model, method, attack), n in unapplied.items():
        notes.append(f"NOT APPLIED: {attack} on {method}{f' ({model})' if several else ''} for {n} image(s): every "
                     "candidate would change the label, so δ = 0; these items are left out of the scores")
        print(notes[-1])
    methods = style.ordered(long["method"].unique()) if not long.empty else style.ordered(ds.uni.done_methods())
    attacks = [a for a in ATTACKS if a in set(long.get("attack", []))] + \
        sorted(set(long.get("attack", [])) - set(ATTACKS))
    params = "; ".join(ds.uni.evaluation_params(v) for v in ("attack_robustness_spearman",) if v in ds.data_vars)
    attack_params = "; ".join(_attack_params(ds, a) for a in attacks)
    text = ds.uni.caption(methods, extra=" · ".join(p for p in (params, attack_params) if p))

    show_maps = "attack_attribution" in ds.data_vars and not long.empty
    map_axes, mappable, bar_axes, handles = [], None, [], None
    models = list(dict.fromkeys(long["model"])) if not long.empty else [None]
    fig = plt.figure(figsize=(max(2.0 * (len(methods) + 1), 11),
                              (2.0 * (1 + len(attacks)) if show_maps else 0) + 3.6 * len(models)))
    grid = fig.add_gridspec(2 if show_maps else 1, 1, height_ratios=[1 + len(attacks), 1.9 * len(models)]
                            if show_maps else [1])
    if show_maps:  # the maps of the first backbone; the bars below are per backbone
        model = str(long["model"].iloc[0])
        image = image or str(long["image"].iloc[0])
        maps = grid[0].subgridspec(1 + len(attacks), len(methods) + 1)
        at = {"model": model, "image": image}
        rows = [("clean", None)] + [(a, a) for a in attacks]
        for r, (label, attack) in enumerate(rows):
            ax = fig.add_subplot(maps[r, 0])
            pixels = ds["input"].sel(at).values if attack is None else None
            if attack is not None:  # the attacked input differs per method; show the first method's
                pixels = io.sel_method(ds["attack_input"].sel(at).sel(attack=attack), methods[0]).values
            style.show_image(ax, pixels, ("input" + (f" ({model})" if several else "")) if r == 0 else None)
            ax.set_ylabel(label, fontsize=8)
            for c, method in enumerate(methods, start=1):
                ax = fig.add_subplot(maps[r, c])
                map_axes.append(ax)
                var = ds["attribution"] if attack is None else ds["attack_attribution"].sel(attack=attack)
                flag = ds["done"] if attack is None else ds[maps_flag("attack")].sel(attack=attack)
                moved = long[(long["method"] == method) & (long["image"] == image) & (long["attack"] == attack)]
                if attack is not None and not moved.empty and not moved["applied"].astype(bool).any():
                    style.blank(ax, "not applied: δ = 0\n(every candidate changed the label)")
                elif bool(io.sel_method(flag.sel(at), method)):
                    mappable = style.show_map(ax, io.sel_method(var.sel(at), method).values,
                                              method if r == 0 else None)
                else:
                    style.blank(ax, "not computed")
    bars = (grid[1] if show_maps else grid[0]).subgridspec(len(models), 2, wspace=0.25, hspace=0.6)
    for (r, model), (i, (var, label)) in itertools.product(enumerate(models), enumerate(SCORES.items())):
        ax = fig.add_subplot(bars[r, i])
        bar_axes.append(ax)
        sub = long[(long["score"] == var) & long["applied"].astype(bool) & (long["model"] == model)] \
            if not long.empty else long
        if several:
            ax.set_title(model)
        if sub.empty:
            style.blank(ax, f"{label}: not evaluated")
            continue
        sns.barplot(data=sub, x="method", y="value", hue="attack", hue_order=attacks, order=methods, errorbar=None,
                    ax=ax, alpha=0.85, palette="Set2", legend=handles is None)
        sns.stripplot(data=sub, x="method", y="value", hue="attack", hue_order=attacks, order=methods, dodge=True,
                      palette="dark:0.15", size=3.5, ax=ax, legend=False)
        if handles is None:
            handles = style.take_legend(ax)
        ax.set_ylim(min(0, float(sub["value"].min()) - 0.05), 1.02)
        ax.set_xlabel("")
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("Robustness of attributions to an attack on them (1 = unchanged); bars: mean over images, "
                 "dots: images", y=1.0)
    fig.tight_layout()
    if mappable is not None:
        style.map_colorbar(fig, map_axes, mappable)
    if handles is not None:
        style.legend_outside(fig, bar_axes, *handles, title="attack")
    style.footer(fig, io.wrap("\n".join([text] + notes), 170))
    written = io.save_figure(fig, stem, out_dir)
    plt.close(fig)

    if long.empty:
        table = pd.DataFrame(columns=["method", "attack"])
    else:
        keys = ["model", "method", "attack"]
        items = long.drop_duplicates(keys + ["image"])
        extra = {name: (var, agg) for name, var, agg in (("label_kept", "attack_label_kept", "mean"),
                                                         ("linf", "attack_linf", "max")) if var in items}
        counts = items.groupby(keys).agg(images=("image", "count"), applied=("applied", "sum"), **extra)
        counts.insert(2, "applied_share", counts["applied"] / counts["images"])  # beside every score
        used = long[long["applied"].astype(bool)]
        scores = used.pivot_table(index=keys, columns="score", values="value", aggfunc="mean")
        table = (counts.join(scores).reset_index()
                 .rename(columns={"attack_robustness_spearman": "spearman", "attack_robustness_topk": "topk"}))
        order = {"model": models, "method": methods, "attack": attacks}
        table = table.sort_values(keys, key=lambda s: s.map({m: i for i, m in enumerate(order[s.name])}))
    written += io.save_table(table, stem, out_dir, "\n".join([text] + notes))
    io.headline("fig4: robustness per backbone, method and attack (mean over the images the attack moved)", table)
    return written, table


def _attack_params(ds, attack: str) -> str:
    import json

    recorded = json.loads(ds.attrs.get("uni_lab_evaluation", "{}")).get(f"attack:{attack}")
    if not recorded:
        return attack
    return f"{attack}(" + ", ".join(f"{k}={_short(v)}" for k, v in sorted(recorded.items()) if k != "output") + ")"


def _short(v):
    return f"{v:.4g}" if isinstance(v, float) else v


def main(argv=None) -> int:
    p = io.parser(__doc__.splitlines()[0], "robustness.zarr", methods=("uni", "ig:black", "ig:blur"))
    p.add_argument("--image", help="the image whose maps are drawn (default: the first)")
    p.add_argument("--attacks", default=",".join(ATTACKS),
                   help="attacks for a computed store (default: %(default)s; ifgsm_attribution is the iterative one)")
    args = io.parse(p, argv)
    draw(io.obtain(args, compute=compute, ready=lambda ds: ready(ds, _attacks(args))), args.out_dir, image=args.image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
