"""A run as plan (resolve and check, write nothing) and execute (compute, write item by item, resumable).

Data flows one way: image → model → baseline → path → integrate → store. An item is
written only when its method succeeded for it; a failure names the method and images and
leaves those items not-done (the next run retries them).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed, doubts, fastview
from .accel import accelerate, to_device
from .accessor import CLASS_NAMES_ATTR
from .data import ImageDataset, batches, collate, list_images
from .engine import partition
from .errors import InputError, StoreError, UniLabError, named_failure
from .labels import read_labels
from .methods import Method, check_all_used, parse_sets, plugin_origins, resolve, route_params
from .models import Classifier, create_model, preserving, resolve_device
from .run_config import RunConfig
from .seeding import image_seed
from .skeleton import skeleton
from .store import Store
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
    if isinstance(value, (str, torch.nn.Module)):  # a Sequential is one network, not a list of models
        return [value]
    return list(value)


def _model(m, weights, seed: int, input_size=None) -> Classifier:
    if isinstance(m, Classifier):
        if input_size is not None and tuple(input_size) != tuple(m.input_size):  # the caller's model stays as given
            raise InputError(f"input_size applies to models given by name; Classifier '{m.name}' has input_size "
                             f"{tuple(m.input_size)}: set it there (uni_lab.wrap(..., input_size=...)).")
        return m
    if isinstance(m, torch.nn.Module):
        raise InputError(f"models: a bare {type(m).__name__} has no normalisation, input size or name for the store; "
                         "wrap it first: uni_lab.wrap(net, mean=..., std=..., input_size=(H, W), name='...').")
    return create_model(m, weights=weights, seed=seed, input_size=input_size)  # random weights: the run's seed


def _method_steps(method: Method) -> int:
    steps = method.params.get("steps")
    inner = method.inner
    while steps is None and inner is not None:
        steps, inner = inner.params.get("steps"), inner.inner
    return int(steps or 0)


def write_store(config: RunConfig) -> RunResult:
    """``execute(plan(config))``, the caller's models (Classifier objects) restored as they were after
    both: :func:`uni_lab.run` and ``uni-lab run`` come through here."""
    with preserving([m for m in _as_list(config.models) if isinstance(m, Classifier)]):
        return execute(plan(config))


@dataclass
class RunPlan:
    """A run resolved and checked, nothing written: what :func:`execute` computes and where."""

    config: RunConfig
    ctx: object  # distributed.Context
    dev: torch.device
    methods: list  # Method
    models: list  # Classifier, accelerated on dev
    entries: list  # data.Entry, in store order
    dataset: ImageDataset
    labels: np.ndarray | None
    layout: object  # the store's empty dataset (uni_lab.skeleton)
    part: tuple | None  # --shard as (i, n)
    workers: int
    t_start: float = 0.0


def plan(config: RunConfig) -> RunPlan:
    """Resolve and check everything a run needs (methods and their parameters, models, images, labels,
    the store's compatibility) and write nothing: any error here leaves the disk as it was."""
    t_start = time.perf_counter()
    config.check()
    part = distributed.parse_shard(config.shard)
    resolve_device(config.device)  # a typo in --device fails here, before any process group or model
    sets = config.sets
    sets = parse_sets(sets) if isinstance(sets, (list, tuple)) else dict(sets or {})
    routed = route_params(sets)
    method_list = [resolve(spec, routed, {"steps": config.steps, "output": config.output})
                   for spec in _as_list(config.methods)]
    if not method_list:
        raise InputError("no methods given; e.g. --methods uni,ig:black.")
    check_all_used(routed, method_list)
    specs = [m.spec for m in method_list]
    if len(set(specs)) != len(specs):
        raise InputError(f"a method is listed twice in {specs}.")
    ctx, device = distributed.setup(config.device)
    dev = resolve_device(device)
    workers = default_workers(dev) if config.workers is None else int(config.workers)
    entries, skipped_files = list_images(config.images, workers=workers, skip_bad=config.skip_bad_images,
                                         max_pixels=config.max_pixels)
    clfs = [_model(m, config.weights, config.seed, config.size()) for m in _as_list(config.models)]
    if not clfs:
        raise InputError("no models given; e.g. --model efficientnet_lite0.")
    clfs = [accelerate(c.to(dev), config.precision, config.channels_last) for c in clfs]
    names = [c.name for c in clfs]
    if len(set(names)) != len(names):
        raise InputError(f"two models share the name in {names}; give each Classifier a distinct name.")
    size = clfs[0].input_size
    others = [f"{c.name} ({'×'.join(map(str, c.input_size))})" for c in clfs[1:] if tuple(c.input_size) != tuple(size)]
    if others:  # one input per image: recorded as a doubt too (uni_lab.doubts, not_native_size)
        warnings.warn(f"the store holds one input per image, at {names[0]}'s {'×'.join(map(str, size))}: "
                      f"{', '.join(others)} will be explained at that size, not at "
                      f"{'its' if len(others) == 1 else 'their'} own; run {'it' if len(others) == 1 else 'each'} "
                      "in a store of its own for its own size.", stacklevel=3)
    resize, crop_pct = _transform(config.resize, clfs[0])
    dataset = ImageDataset(entries, size, resize, crop_pct, max_pixels=config.max_pixels)
    _, first = collate([dataset[0]])
    first = to_device(first, dev)
    label_of = None
    if config.labels is not None:
        with torch.no_grad():
            classes = min(int(c(first).shape[-1]) for c in clfs)
        label_of = read_labels(config.labels, entries, classes, config.synsets)
    recorded = {
        "models": {c.name: c.describe() for c in clfs},
        "methods": {m.spec: m.config() for m in method_list},
        "images": {e.id: e.source for e in entries},
        "seed": int(config.seed), "size": list(size), "resize": resize, "output": config.output,
        **({"crop_pct": crop_pct} if resize == "crop" else {}),
        "fast_view": fastview.setting(),
    }
    if label_of is not None:  # the explained classes: a resume with other labels is another configuration
        recorded["labels"] = hashlib.blake2b(label_of.tobytes(), digest_size=16).hexdigest()
    memory, too_big = partition(clfs[0], first, config.batch_size)
    del first
    if too_big:
        warnings.warn(too_big, stacklevel=3)
    layout = skeleton(names, specs, entries, size, max(map(_method_steps, method_list)), recorded, str(dev), memory,
                      plugin_origins(method_list, names), skipped=skipped_files, labels=label_of)
    # for readers (ds.uni.class_names: figures, uni_lab.plot); outside the configuration, so a store resumes as before
    layout["target"].attrs[CLASS_NAMES_ATTR] = json.dumps({c.name: c.class_names for c in clfs if c.class_names})
    if not config.overwrite:
        _check_resumable(Store(config.out), layout)
    return RunPlan(config, ctx, dev, method_list, clfs, entries, dataset, label_of, layout, part, workers, t_start)


def _open_store(plan: RunPlan) -> tuple[Store, StoreWriter, bool]:
    """The run's store, its background writer, and whether this run creates it from nothing."""
    c, ctx, part = plan.config, plan.ctx, plan.part
    base = Store(c.out)
    # Jobs of one run (shards, ranks) write disjoint items and share the lock; a second unsharded run
    # on the same --out would compute every item again, and an evaluation would rewrite the metadata.
    base.lock_mode = "shared" if (ctx.active or part not in (None, (0, 1))) else "exclusive"
    base.staging = True  # map chunks written whole, not rewritten for every batch (uni_lab.store.Store)
    store = StoreWriter(base)  # item writes overlap the next batch's compute
    # A store this run creates from nothing is written on the store's thread while the first
    # batch computes; its contents are known (nothing done, no inputs), so nothing waits for it.
    # Shards and ranks that may race for one store create it up front and validate it.
    fresh = not ctx.active and part in (None, (0, 1)) and (c.overwrite or not store.exists())
    if fresh:
        store.check_creatable(c.overwrite)
        store.create_in_background(plan.layout, c.overwrite)
    else:
        distributed.create_once(ctx, lambda ow: _prepare(store, plan.layout, ow), c.overwrite)
    return base, store, fresh


def _finish(plan: RunPlan, part: tuple, base: Store):
    """After every item: the seed-stability evaluation of methods with a random part, the doubts
    (:mod:`uni_lab.doubts`), then the summary (rank 0 only; None elsewhere)."""
    from .store import open_store

    c = plan.config
    random_specs = [m.spec for m in plan.methods if m.has_random_part()]
    if c.seed_stability and random_specs and not plan.ctx.active and part == (0, 1):
        from .evaluation import evaluate

        evaluate(c.out, metrics="seed_stability", methods=random_specs, models=plan.models, batch_size=c.batch_size,
                 device=str(plan.dev), progress=c.progress)
    if plan.ctx.rank == 0:  # after every rank's items (finish waited for them); a shard still writing skips it
        doubts.record(base)
    return summarize(open_store(c.out)) if plan.ctx.rank == 0 else None


def _check_resumable(store: Store, layout) -> None:
    """An existing store that this run could not resume is refused now, before any compute (read only;
    execute checks again under the store's lock)."""
    if store.exists():
        store.refuse_other_configuration(store.open(), layout)


def execute(plan: RunPlan) -> RunResult:
    """Compute what :func:`plan` resolved and write it, item by item; then the summary."""
    c, ctx, dev, entries = plan.config, plan.ctx, plan.dev, plan.entries
    out, part, clfs, method_list = c.out, plan.part, plan.models, plan.methods
    specs, batch_size, label_of = [m.spec for m in method_list], c.batch_size, plan.labels
    layout, dataset, workers, progress = plan.layout, plan.dataset, plan.workers, c.progress
    base, store, fresh = _open_store(plan)
    seeds_all = torch.tensor([image_seed(c.seed, e.id) for e in entries])
    ids = [e.id for e in entries]

    part = distributed.my_shard(part, ctx)
    block = json.loads(layout.attrs["uni_lab_chunks"])["images"]
    mine = distributed.shard_range(len(entries), *part, block=block)
    if not mine and part[1] > 1:
        warnings.warn(f"shard {part[0]}/{part[1]} has no images: {len(entries)} images make "
                      f"{-(-len(entries) // block)} blocks of the store, and shards take whole blocks.", stacklevel=2)
    computed = skipped = 0
    rate = _RankLog(ctx, part) if (ctx.active or part[1] > 1) else None
    failed = False
    try:  # finished items reach the disk even when a later batch fails or is interrupted
        done = np.zeros((len(clfs), len(specs), len(entries)), bool) if fresh else store.done()
        if not fresh:
            _refuse_changed(store, entries, [ii for ii in mine if not done[:, :, ii].all()])
            done = _recompute_damaged(store, mine, done)
        for mi, clf in enumerate(clfs):
            todo = [ii for ii in mine if not done[mi, :, ii].all()]
            skipped += int(done[mi][:, list(mine)].sum())
            targets = np.full(len(entries), -1, np.int64) if fresh else store.written_targets(mi)
            bar = tqdm(total=int((~done[mi][:, todo]).sum()), desc=clf.name, unit="item", disable=not progress,
                       leave=False)
            order = [todo[s:s + batch_size] for s in range(0, len(todo), batch_size)]
            # Images decode batch by batch; every method runs on a batch before the next one is
            # decoded, so each image is decoded once per model and held only while it is used.
            for idx, x in batches(dataset, order, workers, pin_memory=dev.type == "cuda"):
                x = to_device(x, dev)
                _write_inputs(store, mi, clf, x, idx, targets, label_of)
                for mei, method in enumerate(method_list):
                    sub = [k for k, ii in enumerate(idx) if not done[mi, mei, ii]]
                    if not sub:
                        continue
                    sel = idx if len(sub) == len(idx) else [idx[k] for k in sub]
                    xs = x if len(sub) == len(idx) else x[sub]
                    _run_batch(store, mi, mei, method, clf, xs, to_device(torch.as_tensor(targets[sel]), dev),
                               seeds_all[sel], [ids[i] for i in sel], sel)
                    bar.update(len(sel))
                    computed += len(sel)
                if rate is not None:
                    rate.update(computed, len(idx))
                del x
            bar.close()
        if rate is not None:
            rate.update(computed, 0, final=True)
    except Exception:
        failed = True
        raise
    finally:
        try:
            store.close()
        finally:
            if failed and fresh and computed == 0:
                # This run made the store and finished nothing in it: an error on the first batch (a
                # method that cannot run on this model) must not leave a store that refuses the fixed
                # command as "another configuration". Only a store this process created in this run,
                # still under its lock (Store.remove_created); never one it failed to take over.
                base.remove_created()
            base.release()  # before the evaluation below, which takes the lock itself
    distributed.finish(ctx)
    summary = _finish(plan, part, base)
    timings = {"wall_s": time.perf_counter() - plan.t_start, **store.timings()}
    return RunResult(Path(out), summary, computed, skipped, part, timings)


class _RankLog:
    """Throughput of this rank or shard on stderr, every LOG_EVERY_S and at the end, so an uneven
    or stalled rank of a long torchrun job shows in its log."""

    LOG_EVERY_S = 300.0

    def __init__(self, ctx, part):
        self.who = f"rank {ctx.rank}/{ctx.world}" if ctx.active else f"shard {part[0]}/{part[1]}"
        self.t0 = self.last = time.perf_counter()
        self.images = 0

    def update(self, items: int, images: int, final: bool = False) -> None:
        self.images += images
        now = time.perf_counter()
        if final or now - self.last >= self.LOG_EVERY_S:
            self.last, wall = now, max(now - self.t0, 1e-9)
            print(f"uni-lab {self.who}: {items} items, {self.images} images in {wall:.0f} s "
                  f"({items / wall:.3g} items/s, {self.images / wall:.3g} images/s){' done' if final else ''}",
                  file=sys.stderr, flush=True)


def _transform(resize: str, clf: Classifier) -> tuple[str, float]:
    """``("crop"|"full", crop_pct)``: ``model`` is the model's own evaluation transform (its crop_pct)."""
    if resize == "model":
        return "crop", float(getattr(clf, "crop_pct", None) or 0.875)
    return resize, 0.875


def _prepare(store: Store, layout, overwrite: bool) -> None:
    """Create the store, or check that the existing one is this run's, down to its coordinates."""
    from .check import schema_problems

    if store.open_or_create(layout, overwrite=overwrite):
        return  # just written from this layout
    problems = schema_problems(store.open(), expected=layout)
    if problems:
        raise StoreError(f"store '{store.path}' cannot be resumed by this run: {' '.join(problems)} "
                         "Use --overwrite to replace it, or a new --out.")


def default_workers(dev) -> int:
    """Decoding processes when ``--workers`` is not given: none on CPU (the cores compute),
    up to four on CUDA (decoding would otherwise stall the GPU)."""
    import os

    return 0 if dev.type != "cuda" else max(1, min(4, (os.cpu_count() or 2) - 1))


def _recompute_damaged(store, mine, done: np.ndarray) -> np.ndarray:
    """A resume trusts its done items only where their chunks still decode: items and inputs of a
    damaged chunk are named, marked not done and recomputed by this run (as `uni-lab check --repair`)."""
    damaged, items, inputs = store.damaged_items(mine)
    if not damaged:
        return done
    names = sorted({name for name, _ in damaged})
    warnings.warn(f"store '{store.path}': damaged chunks of {', '.join(names)} (unreadable or missing) held "
                  f"{len(items)} done items and {len(inputs)} inputs; they are recomputed now.", stacklevel=3)
    store.drop_chunks(damaged)
    store.reset(items=sorted(items), images=sorted(inputs))
    return store.done()


def _refuse_changed(store: Store, entries, todo: list[int]) -> None:
    """A resumed image whose file changed would mix two inputs in one store: refused by name,
    before any compute, from the content hashes the store recorded."""
    stored = store.image_hashes()
    changed = [entries[ii].id for ii in todo if stored[ii] and stored[ii] != entries[ii].digest]
    if changed:
        raise StoreError(f"store '{store.path}' holds other pixels for images {changed[:5]} than their files give "
                         "now (content changed since the store was written). Use --overwrite to recompute, or a new --out.")


def _write_inputs(store: Store, mi: int, clf: Classifier, x: torch.Tensor, idx: list[int], targets: np.ndarray,
                  labels: np.ndarray | None) -> None:
    """The explained class of the batch's images for this model, in ``targets``: computed and
    written (input, predicted class, F_c(x), logit) for images new to the store; those written
    before keep theirs. The explained class is the label where labels are given."""
    new = [k for k, ii in enumerate(idx) if targets[ii] < 0]
    if not new:
        return
    xs = x if len(new) == len(idx) else x[new]
    sel = [idx[k] for k in new]
    with torch.no_grad():
        lg = clf(xs).float()
    pred = lg.argmax(-1)
    t = pred if labels is None else torch.as_tensor(labels[sel], device=lg.device)
    probs, logits = lg.softmax(-1).gather(1, t[:, None]).squeeze(1).cpu(), lg.gather(1, t[:, None]).squeeze(1).cpu()
    store.write_inputs(mi, sel, xs.float().cpu().numpy(), t.cpu().numpy(), pred.cpu().numpy(), probs.numpy(),
                       logits.numpy())
    targets[sel] = t.cpu().numpy()


def _run_batch(store, mi, mei, method: Method, clf, x, target, seeds, ids, idx) -> None:
    t0 = time.perf_counter()
    with named_failure(f"method '{method.spec}' failed on images {ids}", "no partial results were stored."):
        exp = method(clf, x, target, seeds=seeds)
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
