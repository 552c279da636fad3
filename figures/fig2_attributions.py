"""Fig. 2: the qualitative grid, images by methods (|A| summed over channels).

    python figures/fig2_attributions.py                  # computes runs/figures/methods.zarr if missing
    python figures/fig2_attributions.py --store runs/default.zarr
"""
from __future__ import annotations

import sys
import textwrap

import _store_io as io
import _style as style


def draw(ds, out_dir, stem="fig2_attributions"):
    import matplotlib.pyplot as plt
    from uni_lab.summary import summarize

    style.setup()
    written = []
    for model in map(str, ds.model.values):
        methods = style.ordered(ds.uni.done_methods(model))
        if not methods:
            io.missing(f"finished items for model {model}", "the store has none; run it to completion")
            continue
        dm = ds.sel(model=model)
        names = io.class_names(ds, model)
        mappable = None
        images = [str(i) for i in ds.image.values if bool(dm["done"].sel(image=i).any())]
        fig, axes = plt.subplots(len(images), len(methods) + 1, squeeze=False,
                                 figsize=(1.9 * (len(methods) + 1), 2.0 * len(images) + 0.6))
        for r, image in enumerate(images):
            di = dm.sel(image=image)
            label = "\n".join([image, *textwrap.wrap(io.class_label(names, int(di["target"])), 26),
                                f"F_c(x) = {float(di['prob_input']):.3f}"])
            style.show_image(axes[r, 0], di["input"].values)
            axes[r, 0].set_ylabel(label, fontsize=8)
            for c, method in enumerate(methods, start=1):
                item = io.sel_method(di, method)
                if bool(item["done"]):
                    mappable = style.show_map(axes[r, c], item["attribution"].values)
                else:
                    style.blank(axes[r, c], "not computed")
                if r == 0:
                    axes[r, c].set_title(method)
        axes[0, 0].set_title("input")
        fig.suptitle(f"Attributions |A| (channel sum, 99th-percentile scale) · {model}", y=1.0)
        fig.tight_layout()
        if mappable is not None:
            style.map_colorbar(fig, axes[:, 1:], mappable)
        style.footer(fig, io.wrap(ds.sel(model=[model]).uni.caption(methods), 170))
        suffix = "" if ds.sizes["model"] == 1 else f"_{model}"
        written += io.save_figure(fig, stem + suffix, out_dir)
        plt.close(fig)
    table = summarize(ds)
    io.headline("fig2: per-method summary of the drawn items", table)
    return written, table


def main(argv=None) -> int:
    args = io.parse(io.parser(__doc__.splitlines()[0], "methods.zarr"), argv)
    ds = io.obtain(args)
    draw(ds, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
