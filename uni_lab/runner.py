"""A run: models × methods × images → one store, item by item, resumable.

Data flows one way: image → model → baseline → path → integrate → store. An item is
written only when its method succeeded for it; a failure names the method and images and
leaves those items not-done (the next run retries them).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed, fastview
from .accel import accelerate, check_precision, to_device
from .data import load_images
from .defaults import DEFAULT_BATCH, DEFAULT_METHODS, DEFAULT_MODEL, DEFAULT_OUT, DEFAULT_STEPS
from .engine import check_output, partition
from .errors import InputError, StoreError, UniLabError
from .methods import Method, check_all_used, parse_sets, plugin_origins, resolve, route_params
from .models import Classifier, create_model, resolve_device
from .seeding import image_seed
from .store import Store, skeleton
from .summary import summarize
from .writer import StoreWriter



@dataclass
class RunResult:
    path: Path
    summary: "object"  # pandas.DataFrame; None on torchrun ranks other than 0
    computed: int = 0  # items this process computed
    skipped: int = 0  # items of its shard already done (resumed)
    shard: tuple = (0, 1)  # (i, n): this process's slice of the images
    timings: dict = field(default_factory=dict)  # wall_s and the store's share of it (uni_lab.writer)


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, Classifier)):
        return [value]
    return list(value)


def _method_steps(method: Method) -> int:
    steps = method.params.get("steps")
    inner = method.inner
    while steps is None and inner is not None:
        steps, inner = inner.params.get("steps"), inner.inner
    return int(steps or 0)


def run(models=DEFAULT_MODEL, images=None, methods=DEFAULT_METHODS, *, steps: int = DEFAULT_STEPS,
        batch_size: int = DEFAULT_BATCH, device: str | None = None, seed: int = 0, out: str | Path = DEFAULT_OUT,
        sets: dict | list | None = None, weights: str | None = None, output: str = "prob",
        resize: str = "full", overwrite: bool = False, progress: bool = True, shard=None,
        precision: str = "fp32", channels_last: bool = False, seed_stability: bool = True) -> RunResult:
    """Explain ``images`` with every method on every model and write the store at ``out``.

    ``models``: registered names, torchvision/timm names (with ``weights``), or
    :class:`~uni_lab.models.Classifier` objects. ``methods``: specs such as ``"ig:black"``,
    ``"uni"``. ``sets``: ``{"uni.eps": 0.03}`` or ``["uni.eps=0.03"]``. Returns the store's
    path and the per-method summary.

    Resumable: items already done in ``out`` are skipped. ``shard="i/n"`` (or ``(i, n)``) computes
    only the i-th of n contiguous slices of the images; under ``torchrun`` each rank takes its
    own slice (see :mod:`uni_lab.distributed`).

    ``precision`` (``fp32``, ``bf16``, ``fp16``: autocast, recorded with the model) and
    ``channels_last`` change how the models run, see :mod:`uni_lab.accel`.

    ``seed_stability``: methods with a random part (:meth:`Method.has_random_part`) are also
    evaluated with the ``seed_stability`` metric (three seeds), so the summary says how much
    their maps depend on ``seed``; skipped in shards and under torchrun.
    """
    t_start = time.perf_counter()
    check_output(output)
    check_precision(precision)
    if batch_size < 1 or steps < 1:
        raise InputError("--batch-size and --steps must be at least 1.")
    part = distributed.parse_shard(shard)
    resolve_device(device)  # a typo in --device or --out fails here, before any process group or model
    Store(out).check_path()
    ctx, device = distributed.setup(device)
    dev = resolve_device(device)
    sets = parse_sets(sets) if isinstance(sets, (list, tuple)) else dict(sets or {})
    routed = route_params(sets)
    method_list = [resolve(spec, routed, {"steps": steps, "output": output}) for spec in _as_list(methods)]
    if not method_list:
        raise InputError("no methods given; e.g. --methods uni,ig:black.")
    check_all_used(routed, method_list)
    specs = [m.spec for m in method_list]
    if len(set(specs)) != len(specs):
        raise InputError(f"a method is listed twice in {specs}.")

    clfs = [m if isinstance(m, Classifier) else create_model(m, weights=weights) for m in _as_list(models)]
    clfs = [accelerate(c.to(dev), precision, channels_last) for c in clfs]
    names = [c.name for c in clfs]
    if len(set(names)) != len(names):
        raise InputError(f"two models share the name in {names}; give each Classifier a distinct name.")
    size = clfs[0].input_size
    imgs = load_images(images, size, resize)

    config = {
        "models": {c.name: c.describe() for c in clfs},
        "methods": {m.spec: m.config() for m in method_list},
        "images": {i.id: i.source for i in imgs},
        "seed": int(seed), "size": list(size), "resize": resize, "output": output,
        "fast_view": fastview.setting(),
    }
    plan, too_big = partition(clfs[0], to_device(imgs[0].pixels[None], dev), batch_size)
    if too_big:
        warnings.warn(too_big, stacklevel=2)
    base = Store(out)
    # Jobs of one run (shards, ranks) write disjoint items and share the lock; a second unsharded run
    # on the same --out would compute every item again, and an evaluation would rewrite the metadata.
    base.lock_mode = "shared" if (ctx.active or part not in (None, (0, 1))) else "exclusive"
    store = StoreWriter(base)  # item writes overlap the next batch's compute
    layout = skeleton(names, specs, imgs, size, max(map(_method_steps, method_list)), config, str(dev), plan,
                      plugin_origins(method_list, names))
    # A store this run creates from nothing is written on the store's thread while the first
    # batch computes; its contents are known (nothing done, no inputs), so nothing waits for it.
    # Shards and ranks that may race for one store create it up front and validate it.
    fresh = not ctx.active and part in (None, (0, 1)) and (overwrite or not store.exists())
    if fresh:
        store.check_creatable(overwrite)
        store.create_fresh(layout, overwrite)
    else:
        distributed.create_once(ctx, lambda ow: _prepare(store, layout, ow), overwrite)
    seeds_all = torch.tensor([image_seed(seed, i.id) for i in imgs])
    x_all = torch.stack([i.pixels for i in imgs])

    part = distributed.my_shard(part, ctx)
    mine = distributed.shard_range(len(imgs), *part)
    computed = skipped = 0
    try:  # finished items reach the disk even when a later batch fails or is interrupted
        for mi, clf in enumerate(clfs):
            clf.input_size = size
            done = np.zeros((len(clfs), len(specs), len(imgs)), bool) if fresh else store.done()
            targets = _write_inputs(store, mi, clf, x_all, dev, batch_size,
                                    [ii for ii in mine if not done[mi, :, ii].all()], [i.id for i in imgs], fresh)
            for mei, method in enumerate(method_list):
                pending = [ii for ii in mine if not done[mi, mei, ii]]
                skipped += len(mine) - len(pending)
                bar = tqdm(total=len(pending), desc=f"{clf.name} {method.spec}", unit="img", disable=not progress, leave=False)
                for s in range(0, len(pending), batch_size):
                    idx = pending[s:s + batch_size]
                    _run_batch(store, mi, mei, method, clf, to_device(x_all[idx], dev), to_device(targets[idx], dev),
                               seeds_all[idx], [imgs[i].id for i in idx], idx)
                    bar.update(len(idx))
                    computed += len(idx)
                bar.close()
    finally:
        try:
            store.close()
        finally:
            base.release()  # before the evaluation below, which takes the lock itself
    from .store import open_store

    distributed.finish(ctx)
    random_specs = [m.spec for m in method_list if m.has_random_part()]
    if seed_stability and random_specs and not ctx.active and part == (0, 1):
        from .evaluate import evaluate

        evaluate(out, metrics="seed_stability", methods=random_specs, models=clfs, batch_size=batch_size,
                 device=str(dev), progress=progress)
    summary = summarize(open_store(out)) if ctx.rank == 0 else None
    timings = {"wall_s": time.perf_counter() - t_start, **store.timings()}
    return RunResult(Path(out), summary, computed, skipped, part, timings)


def _prepare(store: Store, layout, overwrite: bool) -> None:
    """Create the store, or check that the existing one is this run's, down to its coordinates."""
    from .check import schema_problems

    if store.prepare(layout, overwrite=overwrite):
        return  # just written from this layout
    problems = schema_problems(store.open(), expected=layout)
    if problems:
        raise StoreError(f"store '{store.path}' cannot be resumed by this run: {' '.join(problems)} "
                         "Use --overwrite to replace it, or a new --out.")


# Far below one 8-bit level (1/255): tells a changed image file from float noise in decoding.
PIXEL_TOLERANCE = 1e-6


def _write_inputs(store: Store, mi: int, clf: Classifier, x_all: torch.Tensor, dev, batch_size: int,
                  todo: list[int], ids: list[str], fresh: bool = False) -> torch.Tensor:
    """The explained class of the ``todo`` images for this model: computed and written (input,
    F_c(x), logit) for images new to the store; read back for the others, whose stored pixels
    must still be the ones loaded now, so a resumed item explains the same input as its peers.
    A ``fresh`` store has no inputs yet: nothing is read."""
    targets = torch.full((len(ids),), -1, dtype=torch.long) if fresh else torch.as_tensor(store.written_targets(mi))
    changed = [ids[ii] for ii in todo if targets[ii] >= 0
               and not np.allclose(store.read_input(mi, ii), x_all[ii].numpy(), rtol=0, atol=PIXEL_TOLERANCE)]
    if changed:
        raise StoreError(f"store '{store.path}' holds other pixels for images {changed[:5]} than their files give "
                         "now (changed since the store was written?). Use --overwrite to recompute, or a new --out.")
    new = [ii for ii in todo if targets[ii] < 0]
    with torch.no_grad():
        for s in range(0, len(new), batch_size):
            idx = new[s:s + batch_size]
            lg = clf(x_all[idx].to(dev)).float()
            t = lg.argmax(-1)
            probs, logits = lg.softmax(-1).gather(1, t[:, None]).squeeze(1).cpu(), lg.gather(1, t[:, None]).squeeze(1).cpu()
            store.write_inputs(mi, idx, x_all[idx].numpy(), t.cpu().numpy(), probs.numpy(), logits.numpy())
            targets[idx] = t.cpu()
    return targets


def _run_batch(store, mi, mei, method: Method, clf, x, target, seeds, ids, idx) -> None:
    t0 = time.perf_counter()
    try:
        exp = method(clf, x, target, seeds=seeds)
    except UniLabError:
        raise
    except Exception as exc:
        raise UniLabError(f"method '{method.spec}' failed on images {ids} ({exc.__class__.__name__}: {exc}); "
                          "no partial results were stored.") from exc
    if x.is_cuda:
        torch.cuda.synchronize()
    secs = (time.perf_counter() - t0) / len(idx)
    attr = exp.attribution.detach().float().cpu()
    if attr.shape != x.shape:
        raise UniLabError(f"method '{method.spec}' returned attributions of shape {tuple(attr.shape)} for inputs "
                          f"{tuple(x.shape)}; nothing was stored.")
    if not torch.isfinite(attr).all():
        raise UniLabError(f"method '{method.spec}' produced NaN/Inf attributions on {ids}; nothing was stored.")
    values = {"attribution": attr.numpy(), "seconds": np.full(len(idx), secs)}
    if exp.baseline is not None:
        values["baseline"] = exp.baseline.detach().float().cpu().numpy()
    if exp.trace is not None:
        for key, tr in exp.trace.items():
            values[f"trace_{key}"] = tr.detach().double().cpu().numpy()
        values["prob_baseline"] = values["trace_prob"][:, 0].copy()
    if exp.completeness_error is not None:
        values["completeness_error"] = exp.completeness_error.detach().double().cpu().numpy()
    store.write_items(mi, mei, idx, values)  # one region write per variable for the whole batch
