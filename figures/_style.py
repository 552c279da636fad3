"""How the figures look and are written: one seaborn theme, one colour per method, maps drawn by
:mod:`uni_lab.plot`, and the files (PNG/PDF, CSV/Markdown) with the numbers printed beside them."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # scripts write files; no display is assumed
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

import uni_lab.plot as up  # noqa: E402

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


# Every map of a figure is drawn by uni_lab.plot on its own 0-1 scale; the colour bar's label says
# so, so a reader knows 1 is not a shared unit.
MAP_SCALE = up.per_map_label()
rgb, show_image, show_map, blank = up.rgb, up.show_image, up.show_map, up.blank


def map_colorbar(fig, axes, image, fontsize: float = 8):
    """One colour bar for the maps in ``axes`` (all drawn by show_map), right of them, labelled with
    the normalisation, so no map's colours are left unexplained."""
    return up.colorbar(fig, axes, image, MAP_SCALE, fontsize)


legend_outside = up.legend_right


def take_legend(ax) -> tuple[list, list]:
    """The handles and labels of the legend seaborn drew inside ``ax``, which is then removed."""
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    return handles, labels


def footer(fig, text: str) -> None:
    fig.text(0.01, -0.01, text, ha="left", va="top", fontsize=7, color="0.3", wrap=True)


# How figures are written; the scripts' --dpi/--formats set it before they draw (_store_io.parse).
FIGURE_OUTPUT = {"dpi": 150, "formats": ("png", "pdf")}


def wrap(text: str, width: int = 150) -> str:
    """Wrapped to ``width``, each line of ``text`` on its own (notes stay separate lines)."""
    return "\n".join(part for line in text.splitlines() for part in textwrap.wrap(line, width))


def save_figure(fig, stem: str, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{fmt}" for fmt in FIGURE_OUTPUT["formats"]]
    for p in paths:
        fig.savefig(p, dpi=FIGURE_OUTPUT["dpi"] if p.suffix == ".png" else None, bbox_inches="tight")
        print(f"wrote {p}")
    return paths


def save_table(df: pd.DataFrame, stem: str, out_dir: Path, caption_text: str = "") -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    df.to_csv(csv, index=False)
    md.write_text(df.to_markdown(index=False, floatfmt=".4g") + (f"\n\n{caption_text}\n" if caption_text else "\n"))
    for p in (csv, md):
        print(f"wrote {p}")
    return [csv, md]


def headline(title: str, df: pd.DataFrame) -> None:
    """Print the numbers a figure plotted, so a log holds them without opening the image."""
    print(f"\n== {title} ==")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}") if not df.empty else "(nothing to report)")


def missing(what: str, how: str) -> str:
    """Say loudly what a figure could not draw and how to get it; returns the note for the figure."""
    note = f"MISSING: {what} ({how})"
    print(note, file=sys.stderr)
    return note
