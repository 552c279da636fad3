"""Where UNI's unlearning spends its time (issue 25): per layer kind and phase, and per chunk size.

    python benchmarks/unlearn_profile.py --size 224 --batch 16

Prints, in floor passes (one ``engine.score_and_grad`` through the fast view, timed in the same
process), (1) one chunk's unlearning split by phase (``rec``: the recorded forward, ``grad``: the
per-image parameter gradients, ``fwd``: the forward under per-image weights) and layer kind
(``bn``, ``pw`` 1×1 conv, ``dw3``/``dw5`` depthwise, ``kxk`` dense conv, ``linear``; ``+bn``: a
convolution the recording ran with its batch norm folded in; ``/outer``: the gradient kept as two
factors), the rest being autograd's backward, activations and copies;
(2) the whole batch's unlearning at several chunk sizes, and at the plan's chunk with the recording
on the model as given (``unfolded``: no batch norm folded, as before issue 25's second round).
Wall-clock medians of ``--reps``, cases interleaved; run it on an idle machine. Nothing here is used by uni_lab itself.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch

import uni_lab.persample as ps
from uni_lab.bench import bench_batch
from uni_lab.engine import score_and_grad
from uni_lab import fastview
from uni_lab.fastview import fast_view
from uni_lab.models import create_model
from uni_lab.plugins.uni import unlearn_chunk_size, unlearned_log_probs


def _kind(func, a) -> str:
    if func is ps._BN:
        return "bn"
    if func is ps._LINEAR:
        return "linear"
    w = a["weight"]
    if w.shape[1] == 1 and int(a["groups"]) > 1:
        return f"dw{w.shape[2]}"
    return "pw" if tuple(w.shape[2:]) == (1, 1) else "kxk"


def _clocked(acc: dict):
    """Wrap the three per-layer entry points of uni_lab.persample so each call's seconds land in ``acc``."""
    grads, per_image, record, fold = ps._layer_grads, ps._PerImage.handle, ps._Record.handle, ps._Fold.grads

    def layer_grads(func, a, gy, names, factored=False):
        t0 = time.perf_counter()
        out = list(grads(func, a, gy, names, factored))
        outer = "/outer" if any(isinstance(g, ps.Outer) for _, g in out) else ""
        acc[f"grad {_kind(func, a)}{outer}"] += time.perf_counter() - t0
        return out

    def per_image_handle(self, func, a, args, kwargs):
        t0 = time.perf_counter()
        out = per_image(self, func, a, args, kwargs)
        outer = "/outer" if isinstance(self._delta(a["weight"]), ps.Outer) else ""
        acc[f"fwd {_kind(func, a)}{outer}"] += time.perf_counter() - t0
        return out

    def record_handle(self, func, a, args, kwargs):
        t0 = time.perf_counter()
        out = record(self, func, a, args, kwargs)
        acc[f"rec {_kind(func, a)}"] += time.perf_counter() - t0
        return out

    def fold_grads(self, x, gy, a, factored):
        t0 = time.perf_counter()
        out = list(fold(self, x, gy, a, factored))
        outer = "/outer" if any(isinstance(g, ps.Outer) for _, g in out) else ""
        acc[f"grad {_kind(ps._CONV, a)}+bn{outer}"] += time.perf_counter() - t0
        return out

    ps._layer_grads, ps._PerImage.handle, ps._Record.handle = layer_grads, per_image_handle, record_handle
    ps._Fold.grads = fold_grads


def _median(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--weights", default=None, help="'random' for models without embedded weights (timing only)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--chunks", default="2,4,8,16")
    args = p.parse_args()
    clf = create_model(args.model, weights=args.weights).eval()
    x = bench_batch(args.size, args.batch)
    with torch.no_grad():
        t = clf(x).argmax(-1)
    view = fast_view(clf, x)
    floor = lambda: score_and_grad(view, x, t)
    chunk = unlearn_chunk_size(clf, x)
    xs, ts = x[:chunk], t[:chunk]

    def one_chunk():
        ps.per_image_forward(clf, xs, ps.per_sample_grads(clf, xs, ts, factored=True), 1.0)

    def unfolded():  # the recording on the model as given, as before issue 25's second round
        with fastview.using(False):
            unlearned_log_probs(clf, x, t, chunk=chunk)

    cases = {"floor": floor, **{c: (lambda c=c: unlearned_log_probs(clf, x, t, chunk=c))
                                for c in map(int, args.chunks.split(","))},
             f"{chunk} unfolded": unfolded}
    for fn in cases.values():
        fn()
    times = {k: [] for k in cases}
    for r in range(args.reps):
        for k, fn in (list(cases.items()) if r % 2 == 0 else list(cases.items())[::-1]):
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    pass_s = statistics.median(times["floor"])
    print(f"{args.model} {args.size}², batch {args.batch}, {torch.get_num_threads()} threads: floor pass "
          f"{pass_s:.3f} s; the plan's chunk {chunk}")
    print("unlearning of the batch by chunk size, in floor passes: "
          + "; ".join(f"{k}: {statistics.median(v) / pass_s:.2f}" for k, v in times.items() if k != "floor"))
    if ps.per_sample_grads(clf, xs, ts, factored=True) is None:
        print("no split: this model unlearns through torch.func.vmap (layers uni_lab.persample does not cover)")
        return
    acc: dict = collections.defaultdict(float)
    one_chunk()
    _clocked(acc)
    total = _median(one_chunk, args.reps)
    per_chunk = pass_s * chunk / args.batch  # the floor's cost for this chunk's images
    reps = args.reps
    print(f"one chunk of {chunk}: {total / per_chunk:.2f} floor passes of its images; by phase and layer kind:")
    for k, v in sorted(acc.items(), key=lambda kv: -kv[1]):
        print(f"  {k:16s} {v / reps / per_chunk:.2f}")
    print(f"  {'(rest)':16s} {(total - sum(acc.values()) / reps) / per_chunk:.2f}")


if __name__ == "__main__":
    main()
