"""Fig. 2: the qualitative grid, images by methods (|A| summed over channels).

    python figures/fig2_attributions.py                  # computes runs/figures/methods.zarr if missing
    python figures/fig2_attributions.py --store runs/default.zarr
"""
from __future__ import annotations

import sys

import uni_lab.plot as up

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
            style.missing(f"finished items for model {model}", "the store has none; run it to completion")
            continue
        fig = up.grid(ds, model=model, methods=methods, images=None, alpha=None,
                      title=f"Attributions |A| (channel sum, 99th-percentile scale) · {model}")
        style.footer(fig, style.wrap(ds.sel(model=[model]).uni.caption(methods), 170))
        suffix = "" if ds.sizes["model"] == 1 else f"_{model}"
        written += style.save_figure(fig, stem + suffix, out_dir)
        plt.close(fig)
    table = summarize(ds)
    style.headline("fig2: per-method summary of the drawn items", table)
    return written, table


def main(argv=None) -> int:
    args = io.parse(io.parser(__doc__.splitlines()[0], "methods.zarr"), argv)
    ds = io.obtain(args)
    draw(ds, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
