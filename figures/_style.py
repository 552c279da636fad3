"""How the figures look: one seaborn theme, one colour per method, one way to draw a map."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # scripts write files; no display is assumed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

# Drawing order and colours stay the same in every figure; unknown methods follow, in store order.
KNOWN = ("uni", "ig:black", "ig:white", "ig:mean", "ig:uniform", "ig:gaussian", "ig:blur", "blur_ig",
         "guided_ig", "agi", "smoothgrad", "saliency", "input_x_gradient", "guided_backprop", "deeplift")


def setup() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 110, "axes.titlesize": 10, "savefig.facecolor": "white"})


def ordered(methods) -> list[str]:
    methods = [str(m) for m in methods]
    known = [m for m in KNOWN if m in methods]
    return known + [m for m in methods if m not in known]


def palette(methods) -> dict[str, tuple]:
    """Every known method keeps its colour across figures; others take the spare ones."""
    colours = sns.color_palette("tab10", 10) + sns.color_palette("Set2", 8)
    slots = {m: i for i, m in enumerate(KNOWN)}
    out, spare = {}, len(KNOWN)
    for m in ordered(methods):
        if m in slots:
            out[m] = colours[slots[m] % len(colours)]
        else:
            out[m] = colours[spare % len(colours)]
            spare += 1
    return out


def rgb(pixels) -> np.ndarray:
    """``(channel, y, x)`` in [0,1] → ``(y, x, channel)`` for imshow."""
    return np.clip(np.moveaxis(np.asarray(pixels, dtype=float), 0, -1), 0, 1)


# How show_map scales every map; the colour bar's label says it, so a reader knows 1 is not a shared unit.
CLIP_PERCENTILE = 99.0
MAP_CMAP = "magma"
MAP_SCALE = f"channel-summed |A| ÷ that map's {CLIP_PERCENTILE:g}th percentile, clipped at 1"


def magnitude(attribution, clip_percentile: float = CLIP_PERCENTILE) -> np.ndarray:
    """Sum of |A| over channels, scaled so the ``clip_percentile``-th pixel is 1 (the usual
    saliency rendering: a few extreme pixels would otherwise wash the map out)."""
    a = np.abs(np.asarray(attribution, dtype=float)).sum(0)
    top = np.nanpercentile(a, clip_percentile) if np.isfinite(a).any() else 0.0
    return np.clip(a / top, 0, 1) if top > 0 else np.zeros_like(a)


def show_map(ax, attribution, title: str | None = None):
    """Draw one map on the shared 0-1 scale; returns the image, for :func:`map_colorbar`."""
    image = ax.imshow(magnitude(attribution), cmap=MAP_CMAP, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    ax.grid(False)
    if title:
        ax.set_title(title)
    return image


def _right_of(fig, axes, pad_in: float = 0.12) -> tuple[float, float, float]:
    """Figure coordinates just right of the union of ``axes``: (x, y0, y1). Call once the layout
    is final (after tight_layout): the positions are read, not predicted."""
    boxes = [ax.get_position() for ax in np.ravel(axes) if ax is not None]
    return (max(b.x1 for b in boxes) + pad_in / fig.get_figwidth(), min(b.y0 for b in boxes),
            max(b.y1 for b in boxes))


def map_colorbar(fig, axes, image, fontsize: float = 8):
    """One colour bar for the maps in ``axes`` (all drawn by show_map on the same 0-1 scale),
    right of them, labelled with the normalisation, so no map's colours are left unexplained."""
    import textwrap

    x, y0, y1 = _right_of(fig, axes)
    cax = fig.add_axes([x, y0, 0.12 / fig.get_figwidth(), y1 - y0])
    bar = fig.colorbar(image, cax=cax)
    bar.ax.tick_params(labelsize=fontsize)
    # wrap the label to the bar's height (about 0.6 em per character)
    chars = max(20, int((y1 - y0) * fig.get_figheight() * 72 / (0.6 * fontsize)))
    bar.set_label("\n".join(textwrap.wrap(MAP_SCALE, chars)), fontsize=fontsize)
    return bar


def legend_outside(fig, axes, handles, labels, title: str | None = None, fontsize: float = 8):
    """A figure legend right of ``axes`` (their union), where it covers no data."""
    x, _, y1 = _right_of(fig, axes, pad_in=0.1)
    return fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(x, y1), bbox_transform=fig.transFigure,
                      title=title, fontsize=fontsize, title_fontsize=fontsize, borderaxespad=0.0)


def take_legend(ax) -> tuple[list, list]:
    """The handles and labels of the legend seaborn drew inside ``ax``, which is then removed."""
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    return handles, labels


def show_image(ax, pixels, title: str | None = None) -> None:
    ax.imshow(rgb(pixels), interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    ax.grid(False)
    if title:
        ax.set_title(title)


def blank(ax, text: str) -> None:
    """An empty panel that says why it is empty (never a silently missing one)."""
    ax.set_xticks([]), ax.set_yticks([])
    ax.grid(False)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=8, color="0.35", transform=ax.transAxes)


def footer(fig, text: str) -> None:
    fig.text(0.01, -0.01, text, ha="left", va="top", fontsize=7, color="0.3", wrap=True)
