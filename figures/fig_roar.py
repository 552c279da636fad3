"""ROAR (Hooker et al. 2019): remove the pixels a method ranks highest, retrain, and see how far accuracy falls.

scikit-learn's digits (1797 images of 8 × 8 grey pixels) are upsampled bilinearly to 32 × 32
and repeated over three channels; a small ReLU CNN trains on a fixed 2/3 of them in seconds.
Every method explains every image (train and test) once, with that model and its predicted
class. For each removal share k = 10 … 90 % the top-k pixels of each image (by ``Σ_c |A_c|``,
the magnitude; ``--rank signed`` takes ``Σ_c A_c``, most positive first, as ``deletion`` and
``road`` rank them) are replaced by the training set's per-channel mean, a fresh model (same
initialisation seed) is trained on the modified training images and scored on the modified
test images. Random removal (a seeded random order per image) is the control: a method whose
curve falls faster than random found pixels the task needs. Hooker et al. retrain five models
per point; here ``--repeats`` (default 1) models, so differences of a few points are noise.

Everything goes to its own store (``runs/figures/roar.zarr``: maps, accuracies, the
configuration), which ``--store`` redraws without computing.

    python figures/fig_roar.py                       # computes runs/figures/roar.zarr, draws
    python figures/fig_roar.py --store runs/figures/roar.zarr
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn

import _store_io as io
import _style as style

METHODS = ("ig:black", "saliency", "smoothgrad", "grad_cam", "occlusion", "uni")
# Occlusion's default window (32 px) is the whole digit; a quarter of it is Zeiler & Fergus's scale.
SETS = {"occlusion.window": 8, "occlusion.stride": 4}
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SIZE = 32
RANDOM = "random"


def digits(seed: int = 0, limit: int | None = None):
    """``(x (N, 3, 32, 32) in [0, 1], y, train mask)``: sklearn's digits, upsampled, split 2/3 : 1/3."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images[:limit] / 16.0).float().unsqueeze(1)
    x = nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0, 1)
    x = x.expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(d.target[:limit]).long()
    g = torch.Generator().manual_seed(seed)
    train = torch.zeros(len(y), dtype=torch.bool)
    train[torch.randperm(len(y), generator=g)[: 2 * len(y) // 3]] = True
    return x, y, train


class DigitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * (SIZE // 4) ** 2, 10))

    def forward(self, x):
        return self.head(self.features(x))


def train(x, y, *, epochs: int, seed: int):
    """A fresh classifier (initialised from ``seed``) trained on ``x``: pixel space in, logits out."""
    import uni_lab

    torch.manual_seed(seed)
    net = DigitNet()
    clf = uni_lab.wrap(net, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(SIZE, SIZE), name="digits_cnn")
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(64):
            net.train()  # the Classifier keeps itself in eval mode; training happens on the bare net
            opt.zero_grad()
            nn.functional.cross_entropy(net((x[idx] - clf.mean) / clf.std), y[idx]).backward()
            opt.step()
    net.eval()
    return clf


def accuracy(clf, x, y) -> float:
    with torch.no_grad():
        return float((torch.cat([clf(b).argmax(-1) for b in x.split(256)]) == y).double().mean())


def resolved(spec: str):
    from uni_lab.methods import resolve, route_params

    return resolve(spec, route_params(SETS), defaults={"steps": 15, "output": "prob"})


def explain_all(clf, x, spec: str, seed: int, batch: int = 64) -> torch.Tensor:
    from uni_lab.seeding import image_seed

    method = resolved(spec)
    with torch.no_grad():
        target = torch.cat([clf(b).argmax(-1) for b in x.split(256)])
    seeds = torch.tensor([image_seed(seed, f"digit{i}") for i in range(len(x))])
    return torch.cat([method(clf, x[s:s + batch], target[s:s + batch], seeds=seeds[s:s + batch]).attribution.detach()
                      for s in range(0, len(x), batch)])


def ranks(maps: torch.Tensor, how: str) -> torch.Tensor:
    """``(N, H·W)``: 0 for each image's most important pixel."""
    score = maps.sum(1) if how == "signed" else maps.abs().sum(1)
    order = torch.argsort(score.flatten(1), dim=1, descending=True, stable=True)
    return torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))


def random_ranks(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 7919)
    return torch.stack([torch.randperm(SIZE * SIZE, generator=g) for _ in range(n)])


def remove(x, rank, fraction: float, fill: torch.Tensor) -> torch.Tensor:
    gone = (rank < int(round(fraction * SIZE * SIZE))).view(-1, 1, SIZE, SIZE)
    return torch.where(gone, fill.view(1, -1, 1, 1), x)


def compute(path: Path, args) -> Path:
    import uni_lab  # noqa: F401  (registers the plugins)

    t0 = time.perf_counter()
    x, y, is_train = digits(args.seed, args.limit)
    clf = train(x[is_train], y[is_train], epochs=args.epochs, seed=args.seed)
    base_acc = accuracy(clf, x[~is_train], y[~is_train])
    print(f"ROAR: {int(is_train.sum())} training / {int((~is_train).sum())} test digits at {SIZE}², "
          f"original test accuracy {base_acc:.3f} ({time.perf_counter() - t0:.1f} s)")
    specs, skipped = io.registered_methods(io.method_specs(args))
    if skipped:
        print(f"MISSING methods (not registered, skipped): {', '.join(skipped)}")
    maps = {}
    for spec in specs:
        t1 = time.perf_counter()
        maps[spec] = explain_all(clf, x, spec, args.seed)
        print(f"  maps of {spec}: {time.perf_counter() - t1:.1f} s")
    fill = x[is_train].mean(dim=(0, 2, 3))
    rank_of = {spec: ranks(m, args.rank) for spec, m in maps.items()}
    rank_of[RANDOM] = random_ranks(len(x), args.seed)
    names = list(rank_of)
    acc = np.full((len(names), len(FRACTIONS), args.repeats), np.nan)
    for i, name in enumerate(names):
        t1 = time.perf_counter()
        for j, f in enumerate(FRACTIONS):
            xr_ = remove(x, rank_of[name], f, fill)
            for r in range(args.repeats):
                model = train(xr_[is_train], y[is_train], epochs=args.epochs, seed=args.seed + 1 + r)
                acc[i, j, r] = accuracy(model, xr_[~is_train], y[~is_train])
        print(f"  retrained for {name}: {' '.join(f'{v:.3f}' for v in acc[i].mean(1))} "
              f"({time.perf_counter() - t1:.1f} s)")
    cfg = dict(settings(args), size=SIZE, fill="training per-channel mean", control="random order per image",
               methods={s: resolved(s).config() for s in specs})
    ds = xr.Dataset(
        {"accuracy": (("method", "fraction", "repeat"), acc),
         "accuracy_original": ((), base_acc),
         "attribution": (("map_method", "image", "channel", "y", "x"), torch.stack([maps[s] for s in specs]).numpy()),
         "input": (("image", "channel", "y", "x"), x.numpy()), "label": (("image",), y.numpy()),
         "train": (("image",), is_train.numpy())},
        coords={"method": names, "map_method": specs, "fraction": list(FRACTIONS),
                "repeat": list(range(args.repeats)), "image": np.arange(len(x)), "channel": ["R", "G", "B"]})
    ds.attrs.update(uni_lab_roar=json.dumps(cfg), seconds=time.perf_counter() - t0)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_zarr(path, mode="w", consolidated=True, zarr_format=2)
    print(f"wrote {path} ({time.perf_counter() - t0:.0f} s)")
    return path


def settings(args) -> dict:
    return {"seed": args.seed, "epochs": args.epochs, "repeats": args.repeats, "rank": args.rank, "limit": args.limit,
            "specs": io.method_specs(args)}


def draw(ds: xr.Dataset, out_dir: Path, stem: str = "fig_roar"):
    import matplotlib.pyplot as plt

    style.setup()
    cfg = json.loads(ds.attrs["uni_lab_roar"])
    names = [str(m) for m in ds.method.values]
    methods = style.ordered([n for n in names if n != RANDOM])
    colours = style.palette(methods)
    mean = ds["accuracy"].mean("repeat")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ks = np.r_[0, ds.fraction.values] * 100
    base = float(ds["accuracy_original"])
    for m in methods + [RANDOM]:
        ax.plot(ks, np.r_[base, mean.uni.sel(method=m).values], marker="o", ms=3.5,
                color="0.35" if m == RANDOM else colours[m], ls="--" if m == RANDOM else "-",
                label=f"{m} (control)" if m == RANDOM else m)
    ax.set_xlabel("pixels removed and retrained without (%)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(f"ROAR on upsampled digits ({SIZE}²), {cfg['repeats']} model(s) per point")
    ranking = "Σ_c |A_c|" if cfg["rank"] == "abs" else "signed Σ_c A_c"
    text = (f"Hooker et al. 2019. Removed pixels set to the training mean; ranking by {ranking}; "
            f"{cfg['epochs']} epochs; seed {cfg['seed']}. Lower than random = the method found pixels the task needs.")
    style.footer(fig, style.wrap(text, 110))
    fig.tight_layout()
    written = style.save_figure(fig, stem, out_dir)
    plt.close(fig)
    table = mean.to_pandas()
    table.columns = [f"k={int(round(f * 100))}%" for f in table.columns]
    table.insert(0, "k=0%", base)
    rnd = table.loc[RANDOM]
    # positive: removing what the method ranks highest hurt more than removing random pixels
    table["random_minus_method"] = (rnd.iloc[1:] - table.iloc[:, 1:len(FRACTIONS) + 1]).mean(axis=1)
    table = table.reset_index()
    written += style.save_table(table, stem, out_dir, text)
    style.headline("ROAR: test accuracy after removing the top-k % pixels and retraining", table)
    return written, table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, help="draw from an existing ROAR store (nothing is computed)")
    p.add_argument("--cache", type=Path, default=io.RUNS, help="folder of the computed store (default: %(default)s)")
    p.add_argument("--out-dir", type=Path, default=io.OUT, help="where PNG/PDF/CSV/MD go (default: %(default)s)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma list of method specs (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=4, help="training epochs per model (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=1, help="models retrained per point (default: %(default)s)")
    # By magnitude: with the signed sum, removing IG's, saliency's or SmoothGrad's top pixels hurt
    # less than removing random ones (measured: they stayed at 0.95 at k = 90 %, random fell to 0.85).
    p.add_argument("--rank", choices=("signed", "abs"), default="abs", help="pixel ranking (default: abs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use only the first N digits (a quick check)")
    p.add_argument("--recompute", action="store_true", help="recompute the cached store")
    p.add_argument("--dpi", type=int, default=150)
    p.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=("png", "pdf", "svg"))
    args = p.parse_args(argv)
    style.FIGURE_OUTPUT.update(dpi=args.dpi, formats=tuple(args.formats))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.store is not None:
        if not args.store.exists():
            raise SystemExit(f"no ROAR store at '{args.store}'; omit --store to compute one.")
        path = args.store
    else:
        path = Path(args.cache) / "roar.zarr"
        if not args.recompute and (path / ".zgroup").exists():
            cached = {k: v for k, v in json.loads(xr.open_zarr(path).attrs["uni_lab_roar"]).items() if k in settings(args)}
            if cached != settings(args):
                raise SystemExit(f"{path} was computed with {cached}; pass --recompute to replace it with "
                                 f"{settings(args)}.")
        else:
            compute(path, args)
    draw(xr.open_zarr(path).load(), args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
