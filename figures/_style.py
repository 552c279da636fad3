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


def magnitude(attribution, clip_percentile: float = 99.0) -> np.ndarray:
    """Sum of |A| over channels, scaled so the ``clip_percentile``-th pixel is 1 (the usual
    saliency rendering: a few extreme pixels would otherwise wash the map out)."""
    a = np.abs(np.asarray(attribution, dtype=float)).sum(0)
    top = np.nanpercentile(a, clip_percentile) if np.isfinite(a).any() else 0.0
    return np.clip(a / top, 0, 1) if top > 0 else np.zeros_like(a)


def show_map(ax, attribution, title: str | None = None) -> None:
    ax.imshow(magnitude(attribution), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    ax.grid(False)
    if title:
        ax.set_title(title)


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
