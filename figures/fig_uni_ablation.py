"""UNI ablation: which matching settings make UNI a well-defined, featureless, stable function of its input.

For every setting of the grid (norm, start, step rule, ε, T, restarts) and every photograph:
the Spearman correlation between the maps of different seeds (three seeds where the setting has
a random part, two where it has none), between the map of x and of x + U(±1/255) and
x + U(±8/255) (seeded noise, the same UNI seed), F_c(x')/F_c(x), the completeness error, the
paper's monotonicity Spearman(α_k, F_c(γ_k)), MuFidelity and seconds per image; IG with the
black baseline is the reference row. Each setting is one study store under
``runs/figures/uni_ablation/`` (an xarray/zarr dataset over ``image``, with the seed-0 maps),
computed when missing; the figure and the table read those stores only. The choice of the
default follows the criteria of docs/methods.md §2, written before the sweep.

    python figures/fig_uni_ablation.py                                 # computes what is missing, then draws
    python figures/fig_uni_ablation.py --store runs/figures/uni_ablation   # draws from existing stores
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

import _store_io as io
import _style as style

PAPER = {"norm": "linf", "start": "uniform", "step_rule": "sign", "eps": 0.05, "step_size": 0.01, "pgd_steps": 10,
         "restarts": 1}
# name: the changes from the first default (the paper's L∞ PGD with our ε, μ and random start)
GRID = {
    "linf_uniform": {},
    "linf_zero": {"start": "zero"},
    "linf_zero_l2step": {"start": "zero", "step_rule": "l2"},
    "linf_zero_eps0.1": {"start": "zero", "eps": 0.1, "step_size": 0.02},
    "l2_uniform": {"norm": "l2", "step_rule": "l2"},
    "l2_zero": {"norm": "l2", "step_rule": "l2", "start": "zero"},
    "l2_zero_sign": {"norm": "l2", "step_rule": "sign", "start": "zero"},
    "l2_zero_T20": {"norm": "l2", "step_rule": "l2", "start": "zero", "pgd_steps": 20},
    "l2_zero_eps0.025": {"norm": "l2", "step_rule": "l2", "start": "zero", "eps": 0.025, "step_size": 0.005},
    "l2_zero_eps0.1": {"norm": "l2", "step_rule": "l2", "start": "zero", "eps": 0.1, "step_size": 0.02},
    "l2_zero_eps0.2": {"norm": "l2", "step_rule": "l2", "start": "zero", "eps": 0.2, "step_size": 0.04},
    # restarts cost R times as much: computed last
    "linf_uniform_R4": {"restarts": 4},
    "l2_uniform_R4": {"norm": "l2", "step_rule": "l2", "restarts": 4},
}
REFERENCE = "ig:black"
NOISE = {"noise1": 1 / 255, "noise8": 8 / 255}
NOISE_SALT = "ablation-noise"


def settings(names=None) -> dict:
    names = list(GRID) if not names else names
    unknown = [n for n in names if n not in GRID and n != REFERENCE]
    if unknown:
        raise SystemExit(f"unknown settings {unknown}; known: {', '.join(GRID)}")
    return {n: ({**PAPER, **GRID[n]} if n in GRID else {}) for n in names}


def _explain(model, x, target, seeds, params, steps):
    import uni_lab

    if not params:
        return uni_lab.explain(REFERENCE, model, x, target, steps=steps)
    base = {k: v for k, v in params.items() if k != "restarts"}
    return uni_lab.explain("uni", model, x, target, seeds=seeds, steps=steps, restarts=params["restarts"],
                           **{f"uni.{k}": v for k, v in base.items()})


def compute_setting(path: Path, name: str, params: dict, model, images, steps: int) -> None:
    """One study store: the maps of seed 0 and, per image, every stability and quality number."""
    import torch

    import uni_lab
    from uni_lab.plugins.metric_faithfulness import mufidelity
    from uni_lab.plugins.metric_robustness import spearman_rows
    from uni_lab.seeding import draw, image_seed

    x = torch.stack([i.pixels for i in images])
    ids = [i.id for i in images]
    with torch.no_grad():
        target = model(x).argmax(-1)
    seeds_of = lambda run_seed: torch.tensor([image_seed(run_seed, i) for i in ids])
    random_part = bool(params) and params["start"] == "uniform"
    t0 = time.perf_counter()
    main = _explain(model, x, target, seeds_of(0), params, steps)
    seconds = (time.perf_counter() - t0) / len(ids)
    flat = lambda e: e.attribution.flatten(1)
    others = [_explain(model, x, target, seeds_of(s), params, steps) for s in ((1, 2) if random_part else (1,))]
    maps = [flat(main)] + [flat(o) for o in others]
    pairs = [spearman_rows(maps[a], maps[b]).numpy() for a in range(len(maps)) for b in range(a + 1, len(maps))]
    data = {"seed_spearman_min": np.min(pairs, 0), "seed_spearman_mean": np.mean(pairs, 0)}
    for key, size in NOISE.items():
        u = draw(x, torch.tensor([image_seed(0, f"{NOISE_SALT}:{key}:{i}") for i in ids]), "rand")
        noisy = (x + (2 * u - 1) * size).clamp(0, 1)
        data[f"{key}_spearman"] = spearman_rows(flat(main), flat(_explain(model, noisy, target, seeds_of(0), params,
                                                                           steps))).numpy()
    prob = main.trace["prob"].double()
    data["fc_ratio"] = (prob[:, 0] / prob[:, -1]).numpy()
    data["completeness_error"] = main.completeness_error.double().numpy()
    alphas = main.trace["alpha"].double()
    data["paper_monotonicity"] = spearman_rows(alphas, prob).numpy()
    data["monotone_fraction"] = (prob[:, 1:] >= prob[:, :-1]).double().mean(1).numpy()
    data["mufidelity"] = mufidelity(model, x, target, main.attribution, seeds_of(0))["mufidelity"].double().numpy()
    data["seconds"] = np.full(len(ids), seconds)
    ds = xr.Dataset({k: ("image", np.asarray(v, float)) for k, v in data.items()},
                    coords={"image": ids, "channel": ["R", "G", "B"]})
    ds["attribution"] = (("image", "channel", "y", "x"), main.attribution.float().numpy())
    ds["input"] = (("image", "channel", "y", "x"), x.float().numpy())
    ds.attrs = {"setting": name, "params": json.dumps(params), "steps": steps, "seeds_compared": len(maps),
                "method": REFERENCE if not params else "uni", "model": model.name}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.zarr")
    ds.to_zarr(tmp, mode="w", consolidated=True)
    if not path.exists():  # written whole, then renamed: a killed sweep leaves no half store
        tmp.rename(path)


def _remove_own_cache(path: Path) -> None:
    """Remove a study store this script wrote (its attributes say so); anything else is refused."""
    import shutil

    try:
        attrs = json.loads((path / ".zattrs").read_text())
    except (OSError, ValueError):
        attrs = None
    if path.is_symlink() or not isinstance(attrs, dict) or not {"setting", "seeds_compared", "params"} <= set(attrs):
        raise SystemExit(f"fig_uni_ablation: '{path}' is not a study store this script wrote; move it away "
                         "or choose another --cache.")
    shutil.rmtree(path)


def compute(args) -> Path:
    import uni_lab
    from uni_lab.data import SKIMAGE_PHOTOS, load_images

    folder = args.cache / "uni_ablation"
    model = uni_lab.create_model(args.model)
    images = load_images(args.images or list(SKIMAGE_PHOTOS), model.input_size)
    for name, params in settings([REFERENCE] + (args.settings or list(GRID))).items():
        path = folder / f"{name.replace(':', '_')}.zarr"
        if path.exists() and not args.recompute:
            continue
        if path.exists():
            _remove_own_cache(path)
        t0 = time.perf_counter()
        compute_setting(path, name, params, model, images, args.steps)
        print(f"computed {name} in {time.perf_counter() - t0:.0f} s -> {path}", flush=True)
    return folder


def collect(folder: Path) -> tuple[pd.DataFrame, dict]:
    rows, maps = [], {}
    for path in sorted(Path(folder).glob("*.zarr")):
        if path.name.endswith(".partial.zarr"):
            continue
        ds = xr.open_zarr(path)
        name = ds.attrs["setting"]
        for image in map(str, ds.image.values):
            item = ds.sel(image=image)
            rows.append({"setting": name, "image": image, **{k: float(item[k]) for k in ds.data_vars
                                                           if item[k].ndim == 0}})
        maps[name] = (ds["attribution"].values, ds["input"].values, list(map(str, ds.image.values)))
    return pd.DataFrame(rows), maps


def summarize(items: pd.DataFrame) -> pd.DataFrame:
    g = items.groupby("setting", sort=False)
    out = pd.DataFrame({
        "featureless (all images)": g["fc_ratio"].max() <= 0.1,
        "max F_c(x')/F_c(x)": g["fc_ratio"].max(),
        "seed Spearman (min)": g["seed_spearman_min"].min(),
        "noise ±1/255 Spearman": g["noise1_spearman"].mean(),
        "noise ±8/255 Spearman": g["noise8_spearman"].mean(),
        "completeness error": g["completeness_error"].mean(),
        "paper monotonicity": g["paper_monotonicity"].mean(),
        "monotone fraction": g["monotone_fraction"].mean(),
        "MuFidelity": g["mufidelity"].mean(),
        "s / image": g["seconds"].mean(),
    })
    return out.reset_index()


def choose(summary: pd.DataFrame) -> tuple[str | None, str]:
    """The criteria of docs/methods.md §2, applied in their written order."""
    ref = summary[summary.setting == REFERENCE]
    uni = summary[summary.setting != REFERENCE]
    ok = uni[uni["featureless (all images)"] & (uni["seed Spearman (min)"] >= 0.9)]
    if ok.empty:
        return None, "no setting is both featureless on every photograph and well-defined (seed Spearman >= 0.9)"
    bar = float(ref["noise ±1/255 Spearman"].iloc[0]) if not ref.empty else -1.0
    stable = ok[ok["noise ±1/255 Spearman"] >= bar]
    why = f"as stable under ±1/255 noise as {REFERENCE} ({bar:.3f}) or better"
    if stable.empty:
        best = ok["noise ±1/255 Spearman"].max()
        stable = ok[ok["noise ±1/255 Spearman"] >= best - 0.02]
        why = f"none is as stable as {REFERENCE} ({bar:.3f}); within 0.02 of the most stable ({best:.3f})"
    top = stable["MuFidelity"].max()
    tied = stable[stable["MuFidelity"] >= top - 0.01]
    order = sorted(GRID, key=lambda n: (GRID[n].get("norm", "linf") != "linf", len(GRID[n])))  # the paper's side first
    pick = min(tied.setting, key=order.index)
    return pick, (f"featureless and well-defined: {', '.join(ok.setting)}; {why}: {', '.join(stable.setting)}; "
                  f"highest MuFidelity (ties within 0.01 to the paper's side): {pick}")


def draw(folder: Path, out_dir: Path, stem: str = "fig_uni_ablation"):
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    style.setup()
    items, maps = collect(folder)
    if items.empty:
        style.missing("ablation stores", f"none under {folder}; run without --store to compute them")
        return [], pd.DataFrame()
    summary = summarize(items)
    pick, why = choose(summary)
    order = [s for s in [REFERENCE, *GRID] if s in set(summary.setting)]
    summary = summary.set_index("setting").loc[order].reset_index()
    panels = [("seed Spearman (min)", "seed_spearman_min"), ("noise ±1/255 Spearman", "noise1_spearman"),
              ("noise ±8/255 Spearman", "noise8_spearman"), ("F_c(x')/F_c(x)", "fc_ratio"),
              ("completeness error", "completeness_error"), ("paper monotonicity", "paper_monotonicity"),
              ("MuFidelity", "mufidelity"), ("s / image", "seconds")]
    fig = plt.figure(figsize=(16, 4.2 + 1.25 * 2))
    grid = fig.add_gridspec(3, len(panels), height_ratios=[2.6, 1, 1], hspace=0.45)
    y = np.arange(len(order))
    point_axes = []
    for c, (title, key) in enumerate(panels):
        ax = fig.add_subplot(grid[0, c])
        point_axes.append(ax)
        for r, s in enumerate(order):
            vals = items.loc[items.setting == s, key].to_numpy()
            ax.scatter(vals, np.full(len(vals), r), s=9, alpha=0.6, color="tab:orange" if s == REFERENCE else "tab:blue")
            ax.scatter([np.nanmean(vals)], [r], marker="|", s=140, color="black")
        if key == "fc_ratio":
            ax.axvline(0.1, color="red", lw=0.8, ls="--")
        if key == "seed_spearman_min":
            ax.axvline(0.9, color="red", lw=0.8, ls="--")
        ax.set_yticks(y, order if c == 0 else [""] * len(order))
        ax.invert_yaxis()
        ax.set_title(title, fontsize=8)
    shown = [s for s in order][: len(panels) * 2]
    image = "chelsea" if "chelsea" in maps[order[0]][2] else maps[order[0]][2][0]
    map_axes, mappable = [], None
    for k, s in enumerate(shown):
        ax = fig.add_subplot(grid[1 + k // len(panels), k % len(panels)])
        map_axes.append(ax)
        attr, _, ids = maps[s]
        mappable = style.show_map(ax, attr[ids.index(image)], s)
        ax.title.set_fontsize(8)
    if mappable is not None:
        style.map_colorbar(fig, map_axes, mappable)
    handles = [Line2D([], [], ls="", marker="o", ms=4, color="tab:orange", alpha=0.6),
               Line2D([], [], ls="", marker="o", ms=4, color="tab:blue", alpha=0.6),
               Line2D([], [], ls="", marker="|", ms=11, color="black"),
               Line2D([], [], ls="--", lw=0.8, color="red")]
    style.legend_outside(fig, point_axes, handles, [f"{REFERENCE} (reference), one photograph",
                                                     "UNI setting, one photograph", "mean over photographs",
                                                     "criterion (docs/methods.md §2)"], fontsize=7)
    fig.suptitle(style.wrap(f"UNI ablation on {items.image.nunique()} photographs (maps: {image}, seed 0). Chosen: {pick}. "
                         f"{why}", 180), fontsize=8)
    written = style.save_figure(fig, stem, out_dir)
    plt.close(fig)
    written += style.save_table(summary, stem, out_dir, f"Chosen by the criteria of docs/methods.md §2: {pick}. {why}.")
    style.headline("UNI ablation (means over photographs; seed Spearman and featureless: worst photograph)", summary)
    print(f"\nchosen: {pick}\n{why}")
    return written, summary


def main(argv=None) -> int:
    p = io.parser(__doc__.splitlines()[0], "uni_ablation", images=())
    p.add_argument("--settings", nargs="+", help=f"grid settings to compute (default: all of {', '.join(GRID)})")
    args = io.parse(p, argv)
    folder = args.store if args.store else compute(args)
    draw(Path(folder), args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
