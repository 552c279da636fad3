"""Maps and paths on screen: a methods × images grid from a store or an :class:`~uni_lab.explanation.Explanation`,
one stored map or image the right way up, and F_c along each path.

    import uni_lab.plot
    fig = uni_lab.plot.grid(uni_lab.open_store("runs/default.zarr"), scale="shared")
    fig = ds.uni.plot_grid(methods=["uni", "ig:black"])          # the same, from the accessor

A map is drawn as the figures draw it: Σ_c |A_c| per pixel. ``scale="per_map"`` divides each map by
its own 99th percentile (one 0–1 bar; the usual saliency rendering, which compares where each map
looks, not how much); ``scale="shared"`` puts every map of the grid on one scale, clipped at the 99th
percentile of all of them, so maps of several methods compare in size too. matplotlib is imported
inside the functions: ``import uni_lab`` and ``uni-lab --help`` do not load it.
"""
from __future__ import annotations

import json
import textwrap

import numpy as np
import xarray as xr

from .accessor import CLASS_NAMES_ATTR, class_label
from .errors import InputError
from .schema import ITEM, METHOD

SCALES = ("per_map", "shared")
CLIP_PERCENTILE = 99.0
MAP_CMAP = "magma"
# Variables holding pixels (drawn as RGB by show), not maps.
PIXEL_VARIABLES = ("input", "baseline", "attack_input", "corruption_input")
# Inches kept free right of the panels for the colour bar (grid) and the legend (path_traces).
BAR_IN, LEGEND_IN = 1.0, 1.8


def per_map_label(clip_percentile: float = CLIP_PERCENTILE) -> str:
    return f"channel-summed |A| ÷ that map's {clip_percentile:g}th percentile, clipped at 1"


def shared_label(clip_percentile: float = CLIP_PERCENTILE) -> str:
    return f"channel-summed |A|, one scale for every map, clipped at the {clip_percentile:g}th percentile of all"


def channel_sum(attribution) -> np.ndarray:
    """Σ_c |A_c| of one ``(channel, y, x)`` map."""
    return np.abs(np.asarray(attribution, dtype=float)).sum(0)


def magnitude(attribution, clip_percentile: float = CLIP_PERCENTILE) -> np.ndarray:
    """Σ_c |A_c|, scaled so the ``clip_percentile``-th pixel is 1 (a few extreme pixels would
    otherwise wash the map out)."""
    a = channel_sum(attribution)
    top = np.nanpercentile(a, clip_percentile) if np.isfinite(a).any() else 0.0
    return np.clip(a / top, 0, 1) if top > 0 else np.zeros_like(a)


def shared_top(maps, clip_percentile: float = CLIP_PERCENTILE) -> float:
    """The top of one colour scale for every ``(channel, y, x)`` map in ``maps``."""
    values = np.concatenate([channel_sum(m).ravel() for m in maps]) if len(maps) else np.zeros(1)
    top = np.nanpercentile(values, clip_percentile) if np.isfinite(values).any() else 0.0
    return float(top) if top > 0 else 1.0


def rgb(pixels) -> np.ndarray:
    """``(channel, y, x)`` in [0,1] → ``(y, x, channel)`` for imshow."""
    return np.clip(np.moveaxis(np.asarray(pixels, dtype=float), 0, -1), 0, 1)


def _bare(ax, title: str | None) -> None:
    ax.set_xticks([]), ax.set_yticks([])
    ax.grid(False)
    if title:
        ax.set_title(title)


def show_image(ax, pixels, title: str | None = None) -> None:
    ax.imshow(rgb(pixels), interpolation="nearest")
    _bare(ax, title)


def show_map(ax, attribution, title: str | None = None, *, top: float | None = None, image=None,
             alpha: float | None = None, clip_percentile: float = CLIP_PERCENTILE, cmap: str = MAP_CMAP):
    """One map: on its own 0–1 scale, or (``top``) on a shared one from 0 to ``top``; over
    ``image`` with the map's ``alpha`` when both are given. Returns the image, for :func:`colorbar`."""
    if image is not None and alpha is not None:
        ax.imshow(rgb(image), interpolation="nearest")
    values = magnitude(attribution, clip_percentile) if top is None else channel_sum(attribution)
    drawn = ax.imshow(values, cmap=cmap, vmin=0, vmax=1 if top is None else top, interpolation="nearest",
                      alpha=alpha if image is not None else None)
    _bare(ax, title)
    return drawn


def blank(ax, text: str) -> None:
    """An empty panel that says why it is empty (never a silently missing one)."""
    _bare(ax, None)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=8, color="0.35", transform=ax.transAxes)


def right_of(fig, axes, pad_in: float = 0.12) -> tuple[float, float, float]:
    """Figure coordinates just right of the union of ``axes``: (x, y0, y1). Call once the layout
    is final (after tight_layout): the positions are read, not predicted."""
    boxes = [ax.get_position() for ax in np.ravel(axes) if ax is not None]
    return (max(b.x1 for b in boxes) + pad_in / fig.get_figwidth(), min(b.y0 for b in boxes),
            max(b.y1 for b in boxes))


def colorbar(fig, axes, image, label: str, fontsize: float = 8):
    """One colour bar for the maps in ``axes``, right of them, labelled with their scale."""
    x, y0, y1 = right_of(fig, axes)
    cax = fig.add_axes([x, y0, 0.12 / fig.get_figwidth(), y1 - y0])
    bar = fig.colorbar(image, cax=cax)
    bar.ax.tick_params(labelsize=fontsize)
    # wrap the label to the bar's height (about 0.6 em per character)
    chars = max(20, int((y1 - y0) * fig.get_figheight() * 72 / (0.6 * fontsize)))
    bar.set_label("\n".join(textwrap.wrap(label, chars)), fontsize=fontsize)
    return bar


def legend_right(fig, axes, handles, labels, title: str | None = None, fontsize: float = 8):
    """A figure legend right of ``axes`` (their union), where it covers no data."""
    x, _, y1 = right_of(fig, axes, pad_in=0.1)
    return fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(x, y1), bbox_transform=fig.transFigure,
                      title=title, fontsize=fontsize, title_fontsize=fontsize, borderaxespad=0.0)


def _names(values) -> list[str]:
    return [str(v) for v in values]


def from_explanation(source, inputs=None, targets=None, class_names=None, image_ids=None) -> xr.Dataset:
    """An Explanation (or ``{method: Explanation}``) as a one-model dataset shaped like a store, for
    :func:`grid`: ``inputs`` the batch explained ``(N, 3, H, W)``, ``targets`` its classes,
    ``class_names`` the model's, ``image_ids`` a name per image."""
    explanations = source if isinstance(source, dict) else {"explanation": source}
    maps = np.stack([np.asarray(e.attribution.detach().cpu().float()) for e in explanations.values()])
    if maps.ndim != 5 or maps.shape[2] != 3:
        raise InputError(f"an Explanation's attribution must be (N, 3, H, W); got {maps.shape[1:]}.")
    n = maps.shape[1]
    ids = _names(image_ids) if image_ids is not None else [f"image {i}" for i in range(n)]
    if len(ids) != n:
        raise InputError(f"image_ids names {len(ids)} images but the Explanation has {n}; give one id per image.")
    ds = xr.Dataset({"attribution": ((METHOD, "image", "channel", "y", "x"), maps),
                     "done": ((METHOD, "image"), np.ones(maps.shape[:2], bool))},
                    coords={METHOD: list(explanations), "image": ids})
    ds = ds.expand_dims(model=["model"]).transpose(*ITEM, ...)
    if inputs is not None:
        pixels = np.asarray(inputs.detach().cpu().float()) if hasattr(inputs, "detach") else np.asarray(inputs, float)
        if pixels.shape != maps.shape[1:]:
            raise InputError(f"inputs have shape {pixels.shape}, the maps {maps.shape[1:]}; pass the batch explained.")
        ds["input"] = (("image", "channel", "y", "x"), pixels)
    if targets is not None:
        t = np.asarray(targets.detach().cpu() if hasattr(targets, "detach") else targets).reshape(-1)
        if t.size not in (1, n):
            raise InputError(f"targets has {t.size} classes for {n} images; give one class, or one per image.")
        ds["target"] = ("image", np.broadcast_to(t, (n,)).astype(np.int64))
        ds["target"].attrs[CLASS_NAMES_ATTR] = json.dumps({"model": list(class_names)} if class_names else {})
    return ds


def _as_dataset(source) -> xr.Dataset:
    if isinstance(source, xr.Dataset):
        return source if "done" in source.variables else source.assign(done=source["attribution"].notnull().any(
            [d for d in source["attribution"].dims if d not in ITEM]))
    if isinstance(source, xr.DataArray):  # maps alone: every item counts as done
        ds = source.to_dataset(name="attribution")
        items = [d for d in ITEM if d in source.dims]
        ds["done"] = source.notnull().any([d for d in source.dims if d not in items])
        for dim, label in zip(ITEM, ("model", source.name or "attribution", "image")):
            if dim not in ds.dims:  # a selected label stays a scalar coordinate: it becomes the dim's one label
                ds = ds.expand_dims(dim) if dim in ds.coords else ds.expand_dims({dim: [label]})
        return ds
    if hasattr(source, "attribution") or isinstance(source, dict):
        return from_explanation(source)
    raise InputError(f"cannot draw a {type(source).__name__}; pass a store (xarray Dataset), its attribution "
                     "DataArray, an Explanation or a dict of them by method name.")


def _one_model(ds: xr.Dataset, model) -> str:
    models = _names(ds.model.values)
    if model is None:
        if len(models) > 1:
            raise InputError(f"the store holds models {models}; pass model=... to choose one.")
        return models[0]
    if str(model) not in models:
        raise InputError(f"model '{model}' is not in the store (models: {', '.join(models)}).")
    return str(model)


def _chosen(wanted, have: list[str], what: str) -> list[str]:
    if wanted is None:
        return have
    wanted = [wanted] if isinstance(wanted, str) else _names(wanted)
    absent = [w for w in wanted if w not in have]
    if absent:
        raise InputError(f"{what} {absent} not in the store or not finished there; finished: "
                         f"{', '.join(have) or 'none'}.")
    return wanted


def _row_label(ds: xr.Dataset, model: str, image: str, names) -> str:
    lines = [image]
    if "target" in ds.variables:
        target = ds["target"].sel(image=image)
        target = target.sel(model=model) if "model" in target.dims else target
        lines += textwrap.wrap(class_label(names, int(target)), 26)
    if "prob_input" in ds.variables:
        lines.append(f"F_c(x) = {float(ds['prob_input'].sel(model=model, image=image)):.3f}")
    return "\n".join(lines)


def _finished(ds: xr.Dataset, model, methods, images) -> tuple[str, list[str], list[str]]:
    """The model, and the methods and images to draw: those asked for, else those with a finished item
    (images: the first ``images`` of them when it is a number, every one for None)."""
    model = _one_model(ds, model)
    done = ds["done"].sel(model=model).transpose(METHOD, "image").values
    have_methods = [m for m, d in zip(_names(ds[METHOD].values), done.any(1)) if d]
    have_images = [i for i, d in zip(_names(ds.image.values), done.any(0)) if d]
    methods = _chosen(methods, have_methods, "methods")
    images = have_images[:images] if isinstance(images, int) else _chosen(images, have_images, "images")
    if not methods or not images:
        raise InputError(f"model '{model}' has no finished item to draw; run the store to completion first.")
    return model, methods, images


def grid(source, *, model=None, methods=None, images=8, scale: str = "per_map", alpha: float | None = 0.5,
         input_column: bool = True, clip_percentile: float = CLIP_PERCENTILE, cmap: str = MAP_CMAP,
         title: str | None = None):
    """Methods × images: one row per image, one column per method (after the input, with
    ``input_column``), maps as Σ_c |A_c|; returns the matplotlib figure.

    ``source``: a store (``uni_lab.open_store``), its ``attribution`` DataArray, an ``Explanation``
    or ``{method: Explanation}`` (maps alone; :func:`from_explanation` adds the images, targets and
    class names). ``methods``/``images``: names (default: every finished method, the first 8
    finished images; ``images=None``: all of them). ``scale``: ``"per_map"`` (each map on its own
    0–1 scale) or ``"shared"`` (one scale for every map). ``alpha``: the maps' opacity over the image
    underneath (None: the maps alone). Rows are labelled with the image, its class (by name where
    the store records the model's class names) and F_c(x). Items not computed are empty panels saying so.
    """
    import matplotlib.pyplot as plt

    if scale not in SCALES:
        raise InputError(f"scale must be one of {', '.join(SCALES)}; got '{scale}'.")
    ds = _as_dataset(source)
    model, methods, images = _finished(ds, model, methods, images)
    dm = ds.sel(model=model)
    first = int(input_column and "input" in dm.variables)
    items = {(i, m): dm.sel({"image": i, METHOD: m}) for i in images for m in methods}
    done = [item["attribution"].values for item in items.values() if bool(item["done"])]
    top = shared_top(done, clip_percentile) if scale == "shared" else None
    fig, axes = plt.subplots(len(images), len(methods) + first, squeeze=False,
                             figsize=(1.9 * (len(methods) + first) + BAR_IN, 2.0 * len(images) + 0.6))
    names, mappable = ds.uni.class_names(model), None
    for r, image in enumerate(images):
        pixels = dm["input"].sel(image=image).values if "input" in dm.variables else None
        if first:
            show_image(axes[r, 0], pixels, "input" if r == 0 else None)
        for c, method in enumerate(methods, start=first):
            if bool(items[(image, method)]["done"]):
                mappable = show_map(axes[r, c], items[(image, method)]["attribution"].values, top=top, image=pixels,
                                    alpha=alpha, clip_percentile=clip_percentile, cmap=cmap)
            else:
                blank(axes[r, c], "not computed")
            axes[r, c].set_title(method if r == 0 else "")
        axes[r, 0].set_ylabel(_row_label(ds, model, image, names), fontsize=8)
    if title:
        fig.suptitle(title, y=1.0)
    fig.tight_layout(rect=(0, 0, 1 - BAR_IN / fig.get_figwidth(), 1))  # the bar goes right of the maps, inside
    if mappable is not None:
        label = per_map_label(clip_percentile) if top is None else shared_label(clip_percentile)
        colorbar(fig, axes[:, first:], mappable, label)
    return fig


def show(da: xr.DataArray, **kwargs):
    """One stored map or image with row 0 at the top, as the photograph is (``da.uni.plot()``).

    Pixels (``input``, ``baseline``, ...) are drawn as RGB; a map with a ``channel`` dim as
    Σ_c |A_c|; a 2-D array as it is. Further dims need ``col=``/``row=`` (xarray's facets);
    every other keyword goes to xarray's ``plot``. Returns what xarray's ``plot`` returns."""
    if not {"y", "x"} <= set(da.dims):
        raise InputError(f"uni.plot() draws maps and images (dims y and x); this array has dims {list(da.dims)}: "
                         "use xarray's own .plot().")
    maps = da
    if "channel" in da.dims and da.name in PIXEL_VARIABLES:
        maps = da.clip(0, 1).transpose(..., "y", "x", "channel")
        kwargs.setdefault("rgb", "channel")
        plot = maps.plot.imshow
    else:
        if "channel" in da.dims:
            maps = np.abs(da).sum("channel").rename(f"Σ_c |{da.name or 'A'}|")
        kwargs.setdefault("cmap", MAP_CMAP)
        plot = maps.plot
    extra = [d for d in maps.dims if d not in ("y", "x", "channel", kwargs.get("col"), kwargs.get("row"))]
    if extra:
        raise InputError(f"this array has further dims {extra}; select one item first (.sel(xai_method=..., "
                         "image=...)) or spread them with col=/row=.")
    drawn = plot(yincrease=False, **kwargs)
    for ax in np.ravel(drawn.axs) if hasattr(drawn, "axs") else [drawn.axes]:  # one plot, or facets
        if ax is not None:
            ax.set_aspect("equal")
            ax.grid(False)  # a style's grid (seaborn's whitegrid) would draw lines across the image
    return drawn


def is_conformant(values) -> float:
    """Akhtar & Jalwana's conformance of one path: its minimum at α = 0 and its maximum at α = 1
    (1.0 or 0.0; NaN for no path)."""
    row = np.asarray(values, dtype=float)
    row = row[np.isfinite(row)]
    return float(row[0] <= row.min() and row[-1] >= row.max()) if row.size else float("nan")


def path_trace(ax, ds: xr.Dataset, model: str, image: str, methods=None, colors=None, conformant=None) -> list[str]:
    """F_c(γ(α)) against α of each finished path method on one image, a non-conformant path dashed
    (``conformant``: method → 0/1 where known already). Returns the methods drawn."""
    f = ds.uni.score_trace()
    methods = _names(ds[METHOD].values) if methods is None else list(methods)
    colors = colors or {m: f"C{i % 10}" for i, m in enumerate(methods)}
    drawn = []
    for method in methods:
        at = {"model": model, METHOD: method, "image": image}
        values = f.sel(at).values.astype(float)
        if not bool(ds["done"].sel(at)) or not np.isfinite(values).any():
            continue  # not computed, or no path (saliency, ...)
        alpha = ds["trace_alpha"].sel(at).values
        ok = np.isfinite(alpha) & np.isfinite(values)
        shape = (conformant or {}).get(method, is_conformant(values))
        ax.plot(alpha[ok], values[ok], "--" if shape < 1 else "-", marker="o", ms=2.5, lw=1.4, color=colors[method],
                label=method)
        drawn.append(method)
    ax.set_title(f"{image}" + (f" · {model}" if ds.sizes["model"] > 1 else ""))
    ax.set_xlabel("α")
    ax.set_ylabel("logit of c" if f.name == "trace_logit" else "F_c(γ(α))")
    return drawn


def path_traces(ds: xr.Dataset, *, model=None, methods=None, images=None, cols: int = 4, colors=None):
    """The path-trace plot: one panel per (model, image), F_c along α per method, non-conformant
    paths dashed, one legend beside the panels; returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    models = _names(ds.model.values) if model is None else [_one_model(ds, model)]
    images = _chosen(images, _names(ds.image.values), "images")
    methods = _chosen(methods, _names(ds[METHOD].values), "methods")
    colors = colors or {m: f"C{i % 10}" for i, m in enumerate(methods)}
    f = ds.uni.score_trace()
    has_path = (ds["done"] & f.notnull().any("step")).sel({METHOD: methods})
    panels = [(m, i) for m in models for i in images if bool(has_path.sel(model=m, image=i).any())]
    if not panels:
        raise InputError("no finished path-method item to draw (methods without a path have no trace).")
    cols = min(cols, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(3.4 * cols + LEGEND_IN, 2.8 * rows))
    shown = set()
    for ax, (m, i) in zip(axes.flat, panels):
        shown.update(path_trace(ax, ds, m, i, methods, colors))
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout(rect=(0, 0, 1 - LEGEND_IN / fig.get_figwidth(), 1))  # the legend goes right, inside
    drawn = [m for m in methods if m in shown]
    handles = [Line2D([], [], color=colors[m], marker="o", ms=3, lw=1.4) for m in drawn]
    handles += [Line2D([], [], color="0.3", ls=ls, lw=1.4) for ls in ("-", "--")]
    legend_right(fig, axes, handles, drawn + ["conformant path", "non-conformant path"], title="method")
    return fig
