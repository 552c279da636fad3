"""``uni-lab bench``: what UNI and IG cost, against the passes they cannot avoid and against Captum.

Every number comes from one run on one device: each case is warmed up once, then timed
``reps`` times, the cases interleaved rep by rep (so a machine whose load drifts slows all of
them alike), and the median taken. Wall-clock seconds give the ratios; process CPU seconds
are reported beside them, because on a shared CPU the wall clock also counts other people's
work. Ratios (goals in :data:`GOALS`):

- ``uni_vs_floor``: UNI / ``(1 + T + B)`` plain passes at the same batch. A plain pass is
  the engine's own: forward and gradient w.r.t. the input (:func:`~uni_lab.engine.score_and_grad`)
  through the model's fast view.
  UNI cannot do less than that count, and in fact does more: its unlearning pass needs
  per-image gradients w.r.t. every parameter plus a forward under per-image weights, and
  the engine also evaluates the baseline point (``B + 1`` points: F_c(x') for completeness
  and the trace), though with a forward only, and takes the last point's gradient, at x, from
  the unlearning's pass (:mod:`uni_lab.endpoint`). ``uni_vs_floor_incl_baseline_point`` divides
  by ``2 + T + B`` passes instead. The ``uni-lab`` command keeps freed memory with the process
  (:mod:`uni_lab.allocator`, recorded as ``allocator``), for every case alike.
  ``uni_phases_s`` splits the very UNI calls that give the ratio (unlearning and matching
  clocked inside them, integration the rest), so in floor passes the phases sum to
  ``uni_vs_floor · (1 + T + B)``.
- ``uni_batched_vs_naive``: per-image UNI (copy the model, unlearn, match and integrate one
  image at a time) / batched UNI, at the bench batch.
- ``ig_vs_captum``: our IG / Captum's ``IntegratedGradients`` (right Riemann, same steps,
  batch, internal batch and black baseline); ``ig_vs_captum_with_delta`` compares with
  Captum also returning its convergence delta, the counterpart of our completeness error.
  Captum runs the model as given; our passes run through :func:`~uni_lab.fastview.fast_view`
  (batch norm folded into the convolutions, channels-last input on CPU), and so does the floor.
  ``ig_vs_captum_same_graph`` hands Captum that same view, which leaves only the two
  integration loops to compare.
- ``store_share``: share of the runner's wall time its thread spent in store calls
  (creating, reading, handing writes to :class:`~uni_lab.writer.StoreWriter` and waiting for
  them), on the default job at the bench's model and size.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from . import allocator
from .accel import accelerate
from .data import load_images
from .defaults import BENCH
from .engine import DEFAULT_INTERNAL_BATCH, score_and_grad
from .errors import InputError
from .fastview import fast_view
from .methods import resolve, route_params
from .models import Classifier, create_model, resolve_device
from .registry import list_plugins
from .seeding import image_seed

# The defaults run in a few minutes on 2 CPU cores: 64×64 inputs keep EfficientNet-Lite0's
# passes short; batch 16 is where the batched-vs-naive goal is stated.
DEFAULTS = BENCH
GOALS = {"uni_vs_floor": ("<=", 1.15), "uni_batched_vs_naive": (">=", 1.0), "ig_vs_captum": ("<=", 1.0),
         "store_share": ("<=", 0.05)}
# On a CUDA device single-image passes leave most of it idle, so batching must pay more.
CUDA_GOALS = {"uni_batched_vs_naive": (">=", 3.0)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cases: dict[str, Callable], reps: int, device, warmups: dict[str, Callable] | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Median wall and CPU seconds of each case: one warm-up call, then ``reps`` interleaved calls
    (in the given order, then reversed, alternately).

    ``warmups`` may give a cheaper call with the same shapes for a case. The last result of
    each case is kept under ``"result"``.
    """
    if reps < 3:
        raise InputError("bench needs at least 3 repetitions (--reps 3) for a median.")
    device = torch.device(device)
    wall = {k: [] for k in cases}
    cpu = {k: [] for k in cases}
    results = {}
    for name, fn in cases.items():
        if progress:
            progress(f"warm-up {name}")
        (warmups or {}).get(name, fn)()
    for r in range(reps):
        # Reversed on odd reps: a case that follows a memory-hungry one pays for the allocator
        # and caches it disturbed, so each compared pair swaps who goes first.
        order = list(cases.items()) if r % 2 == 0 else list(cases.items())[::-1]
        for name, fn in order:
            if progress:
                progress(f"rep {r + 1}/{reps} {name}")
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            results[name] = fn()
            _sync(device)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {k: {"wall": statistics.median(wall[k]), "cpu": statistics.median(cpu[k]), "all": wall[k],
                "result": results[k]} for k in cases}


def bench_batch(size: int, n: int) -> torch.Tensor:
    """``n`` distinct real images at ``size``²: scikit-image's photographs and their flips."""
    photos = torch.stack([i.pixels for i in load_images(None, (size, size), "full")])
    variants = [photos, photos.flip(-1), photos.flip(-2), photos.flip(-1, -2)]
    x = torch.cat(variants * (n // (len(variants) * len(photos)) + 1))
    return x[:n].contiguous()


def _method(spec: str, steps: int, pgd_steps: int, output: str = "prob"):
    routed = route_params({"uni.pgd_steps": pgd_steps}) if spec == "uni" else {}
    return resolve(spec, routed, {"steps": steps, "output": output})


def _uni_parts():
    """The registered UNI baseline, with the phases and naive loop it exposes for timing, and IG."""
    from .registry import get

    uni = get("baseline", "uni")
    if not all(hasattr(uni.obj, a) for a in ("timed_phases", "reference")):
        raise InputError(f"the registered baseline 'uni' ({uni.origin}) exposes no `timed_phases` and `reference` to "
                         "time; "
                         "`uni-lab bench` times the built-in one.")
    return uni, get("explainer", "ig")


def _naive_uni(clf, x, target, seeds, steps: int, pgd_steps: int):
    """UNI the way a loop would do it: per image, copy the model, unlearn, match, integrate."""
    uni, ig = _uni_parts()
    p = uni.resolved_params({"pgd_steps": pgd_steps})  # the same UNI as the batched one
    maps, baselines = [], []
    for i in range(x.shape[0]):
        xi, ti, si = x[i:i + 1], target[i:i + 1], seeds[i:i + 1]
        xb = uni.obj.reference(xi, clf, ti, si, **p)
        maps.append(ig(clf, xi, ti, baseline=xb, steps=steps).attribution)
        baselines.append(xb)
    return torch.cat(maps), torch.cat(baselines)


def _timed_uni(method, clf, x, target, seeds, splits: list):
    """The UNI explainer as users call it, with the seconds of its baseline's phases appended to
    ``splits`` (integration is the rest: :func:`phase_split` takes it from the same rep's wall time)."""
    uni, _ = _uni_parts()
    with uni.obj.timed_phases() as phases:
        res = method(clf, x, target, seeds=seeds)
    splits.append(dict(phases))
    return res


def phase_split(walls: list[float], splits: list[dict]) -> dict:
    """UNI's phases in the very reps whose median is its time: the middle rep's split (the mean of
    the middle two for an even count), integration being the rest of each rep's wall time, so the
    phases sum to the median exactly."""
    order = sorted(range(len(walls)), key=walls.__getitem__)
    mid = order[(len(order) - 1) // 2:len(order) // 2 + 1]
    out = {}
    for k in ("unlearn", "match"):
        out[k] = statistics.fmean(splits[i].get(k, 0.0) for i in mid)
    out["integrate"] = statistics.fmean(walls[i] for i in mid) - out["unlearn"] - out["match"]
    return out


def _captum_ig(clf, x, target, steps: int, internal_batch_size: int, delta: bool):
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(lambda z: clf(z).softmax(-1))
    return ig.attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=steps, method="riemann_right",
                        internal_batch_size=internal_batch_size, return_convergence_delta=delta)


def _floor(clf, x, target, passes: int) -> None:
    view = fast_view(clf, x)  # resolved once, as the engine does per call
    for _ in range(passes):
        score_and_grad(view, x, target)


def floor_definition(T: int, B: int, batch: int) -> str:
    return (f"1+T+B = {1 + T + B} passes, each a forward and input gradient (engine.score_and_grad) through "
            f"the fast view at batch {batch}")


def _max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max over images of ``‖a − b‖∞ / ‖b‖∞``."""
    num = (a - b).flatten(1).abs().amax(1)
    return float((num / b.flatten(1).abs().amax(1).clamp_min(1e-30)).max())


def registered_methods() -> list[str]:
    return [p.name for p in list_plugins("explainer")]


def bench(model: str | Classifier = DEFAULTS["model"], *, weights: str | None = None,
          batch_size: int = DEFAULTS["batch_size"], size: int = DEFAULTS["size"], device: str | None = None,
          steps: int = DEFAULTS["steps"], pgd_steps: int = DEFAULTS["pgd_steps"], reps: int = DEFAULTS["reps"],
          methods: list[str] | None = None, method_batch: int = DEFAULTS["method_batch"], precision: str = "fp32",
          channels_last: bool = False, store: bool = True, store_methods: list[str] | None = None,
          progress: Callable[[str], None] | None = None) -> dict:
    """Measure the ratios and per-method throughput; returns the JSON-ready dict (see module doc)."""
    if batch_size < 1 or size < 8 or steps < 2 or pgd_steps < 0 or method_batch < 1:
        # Captum's Riemann rules need at least 2 steps
        raise InputError("bench needs --batch-size >= 1, --size >= 8, --steps >= 2, --pgd-steps >= 0, --method-batch >= 1.")
    dev = resolve_device(device)
    clf = model if isinstance(model, Classifier) else create_model(model, weights=weights)
    clf.input_size = (size, size)
    clf = accelerate(clf.to(dev), precision, channels_last)
    x = bench_batch(size, batch_size).to(dev)
    with torch.no_grad():
        target = clf(x).argmax(-1)
    seeds = torch.tensor([image_seed(0, f"bench{i}") for i in range(batch_size)])
    T, B = int(pgd_steps), int(steps)
    uni = _method("uni", B, T)
    ig = _method("ig:black", B, T)
    uni_light, ig_light = _method("uni", 3, 1), _method("ig:black", 3, T)
    view = fast_view(clf, x)  # the graph our passes run: Captum on it isolates the integration loop
    ibs = DEFAULT_INTERNAL_BATCH
    splits: list[dict] = []
    cases = {
        "uni": lambda: _timed_uni(uni, clf, x, target, seeds, splits),
        "floor": lambda: _floor(clf, x, target, 1 + T + B),
        "uni_naive": lambda: _naive_uni(clf, x, target, seeds, B, T),
        "ig": lambda: ig(clf, x, target, seeds=seeds),
        "captum_ig": lambda: _captum_ig(clf, x, target, B, ibs, delta=False),
        "captum_ig_delta": lambda: _captum_ig(clf, x, target, B, ibs, delta=True),
        "captum_ig_same_graph": lambda: _captum_ig(view, x, target, B, ibs, delta=False),
    }
    # Same shapes, fewer steps: warms caches and allocators without a full extra repetition.
    warmups = {
        "uni": lambda: uni_light(clf, x, target, seeds=seeds),
        "floor": lambda: _floor(clf, x, target, 1),
        "uni_naive": lambda: _naive_uni(clf, x[:2], target[:2], seeds[:2], 3, 1),
        "ig": lambda: ig_light(clf, x, target, seeds=seeds),
        "captum_ig": lambda: _captum_ig(clf, x, target, 3, ibs, delta=False),
        "captum_ig_delta": lambda: _captum_ig(clf, x, target, 3, ibs, delta=True),
        "captum_ig_same_graph": lambda: _captum_ig(view, x, target, 3, ibs, delta=False),
    }
    load_before = _load()
    m = measure(cases, reps, dev, warmups, progress)
    wall = {k: v["wall"] for k, v in m.items()}
    cpu = {k: v["cpu"] for k, v in m.items()}
    batched, (naive_maps, naive_baselines) = m["uni"]["result"], m["uni_naive"]["result"]
    ours, theirs = m["ig"]["result"].attribution, m["captum_ig"]["result"]
    phases = phase_split(m["uni"]["all"], splits)
    pass_s = wall["floor"] / (1 + T + B)

    out = {
        "device": str(dev) if dev.type != "cuda" else f"{dev} ({torch.cuda.get_device_name(dev)})",
        "model": clf.name, "batch_size": batch_size, "size": [size, size], "T": T, "B": B,
        "precision": precision, "channels_last": bool(channels_last), "reps": reps,
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "allocator": allocator.state(),
        "uni_vs_floor": wall["uni"] / wall["floor"],
        # each rep ran UNI and the floor back to back: the spread of their quotient is the bench's noise
        "uni_vs_floor_by_rep": [u / f for u, f in zip(m["uni"]["all"], m["floor"]["all"])],
        "uni_vs_floor_incl_baseline_point": wall["uni"] / (pass_s * (2 + T + B)),
        "floor_counts": floor_definition(T, B, batch_size),
        "uni_batched_vs_naive": wall["uni_naive"] / wall["uni"],
        "uni_batched_vs_naive_baseline_max_abs_diff": float((batched.baseline - naive_baselines).abs().max()),
        "uni_batched_vs_naive_map_max_rel_diff": _max_rel_diff(batched.attribution, naive_maps),
        "ig_vs_captum": wall["ig"] / wall["captum_ig"],
        "ig_vs_captum_max_rel_diff": _max_rel_diff(ours, theirs),
        "ig_vs_captum_with_delta": wall["ig"] / wall["captum_ig_delta"],
        "ig_vs_captum_same_graph": wall["ig"] / wall["captum_ig_same_graph"],
        "fast_view": {"folded_batchnorms": getattr(view, "folded", 0), "channels_last_input": dev.type == "cpu"},
        "uni_phases_s": phases,
        "uni_phases_in_floor_passes": {k: v / pass_s for k, v in phases.items()},
        "seconds": wall,
        "seconds_by_rep": {k: v["all"] for k, v in m.items()},
        "cpu_seconds": cpu,
        "cpu_ratios": {"uni_vs_floor": cpu["uni"] / cpu["floor"], "uni_batched_vs_naive": cpu["uni_naive"] / cpu["uni"],
                       "ig_vs_captum": cpu["ig"] / cpu["captum_ig"]},
    }
    if store:
        out.update(_store_share(clf, B, reps, store_methods, progress))
    out["images_per_s"], out["method_errors"] = _throughput(clf, methods, method_batch, B, T, reps, dev, seeds, progress)
    out["goals"], out["met"] = _goals(out, dev)
    out["load_avg_1min"] = {"start": load_before, "end": _load()}  # others' work on a shared machine
    return out


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _store_share(clf, steps: int, reps: int, methods, progress) -> dict:
    """The default job (its methods, the eight photographs) at the bench's model and size, into a fresh store."""
    from .defaults import DEFAULT_METHODS
    from . import run

    methods = list(methods or DEFAULT_METHODS)

    def job(specs, root):
        return run(clf, images=None, methods=list(specs), steps=steps, batch_size=8, out=Path(root) / "bench.zarr",
                   overwrite=True, progress=False, device=str(clf.mean.device)).timings

    with tempfile.TemporaryDirectory(prefix="uni-lab-bench-") as root:
        if progress:
            progress("warm-up store")
        job(methods[:1], root)
        shares, busy = [], []
        for r in range(reps):
            if progress:
                progress(f"rep {r + 1}/{reps} store")
            t = job(methods, root)
            shares.append(t["store_main_s"] / t["wall_s"])
            busy.append(t["store_busy_s"] / t["wall_s"])
    return {"store_share": statistics.median(shares), "store_busy_share": statistics.median(busy),
            "store_job": f"uni-lab run, methods {','.join(methods)}, 8 photographs, batch 8"}


def _throughput(clf, methods, n: int, steps: int, pgd_steps: int, reps: int, dev, seeds, progress):
    specs = list(methods) if methods else registered_methods()
    x = bench_batch(clf.input_size[0], n).to(dev)
    with torch.no_grad():
        target = clf(x).argmax(-1)
    rates, errors = {}, {}
    for spec in specs:
        try:
            method = _method(spec, steps, pgd_steps)
            res = measure({spec: lambda: method(clf, x, target, seeds=seeds[:n])}, reps, dev,
                          {spec: lambda: method(clf, x[:1], target[:1], seeds=seeds[:1])}, progress)
            rates[spec] = n / res[spec]["wall"]
        except Exception as exc:  # one method that cannot run on this model must not hide the others
            errors[spec] = f"{exc.__class__.__name__}: {exc}"
    return rates, errors


def _goals(out: dict, dev) -> tuple[dict, dict]:
    goals = dict(GOALS)
    if dev.type == "cuda":
        goals.update(CUDA_GOALS)
    text, met = {}, {}
    for key, (op, bound) in goals.items():
        if key not in out:
            continue
        text[key] = f"{op} {bound}"
        met[key] = out[key] <= bound if op == "<=" else out[key] >= bound
    return text, met


def format_table(res: dict) -> str:
    """The bench result as a short human-readable table."""
    lines = [f"device {res['device']}, model {res['model']}, batch {res['batch_size']}, "
             f"{res['size'][0]}x{res['size'][1]}, T={res['T']}, B={res['B']}, {res['precision']}"
             f"{', channels_last' if res['channels_last'] else ''}, median of {res['reps']} reps, "
             f"{res['cpu_threads']} threads", ""]
    lines.append(f"{'ratio':<34}{'value':>10}  {'goal':<8} met")
    for key in ("uni_vs_floor", "uni_vs_floor_incl_baseline_point", "uni_batched_vs_naive", "ig_vs_captum",
                "ig_vs_captum_with_delta", "ig_vs_captum_same_graph", "store_share", "store_busy_share"):
        if key in res:
            goal = res["goals"].get(key, "")
            met = {True: "yes", False: "NO"}.get(res["met"].get(key), "")
            lines.append(f"{key:<34}{res[key]:>10.3f}  {goal:<8} {met}")
    by_rep = res["uni_vs_floor_by_rep"]
    lines.append(f"{'uni_vs_floor, rep by rep':<34}{min(by_rep):>10.3f}  to {max(by_rep):.3f}")
    lines.append(f"{'ig_vs_captum_max_rel_diff':<34}{res['ig_vs_captum_max_rel_diff']:>10.2e}")
    lines.append(f"{'uni batched-vs-naive map diff':<34}{res['uni_batched_vs_naive_map_max_rel_diff']:>10.2e}")
    lines += ["", f"floor: {res['floor_counts']}",
              "UNI phases, same reps as uni_vs_floor (seconds, floor passes): " + ", ".join(
                  f"{k} {v:.2f}s ({res['uni_phases_in_floor_passes'][k]:.1f})" for k, v in res["uni_phases_s"].items())]
    lines += ["", f"{'method':<34}{'images/s':>10}"]
    lines += [f"{k:<34}{v:>10.2f}" for k, v in res["images_per_s"].items()]
    lines += [f"{k:<34}{'failed':>10}  {v[:80]}" for k, v in res.get("method_errors", {}).items()]
    return "\n".join(lines)
