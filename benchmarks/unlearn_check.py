"""UNI's per-image unlearning on a device, model by model (issue 25): which path it takes, its
host syncs, torch.func's "performance drop" warnings, and its cost in floor passes.

    python benchmarks/unlearn_check.py --device cuda --size 224 --batch 16 --models efficientnet_lite0,resnet18

Per model, one JSON line: ``path`` (``persample``: ordinary batched kernels; ``vmap``: the
torch.func fallback for layers persample does not cover, e.g. layer norm, layer scale,
attention), ``host_syncs`` (CUDA only: warnings of ``torch.cuda.set_sync_debug_mode``),
``vmap_fallbacks`` (ops whose batching rule is missing, so vmap loops over images),
``unlearn_s`` and ``floor_pass_s`` (median of ``--reps``, same process) and their ratio.
With ``--counts``, also the work of each UNI phase (unlearn, match with T = 10, integrate with
B = 15) in floor passes, counted rather than timed, so a shared machine's load does not move it:
``flops_in_floor_passes`` (torch's FLOP formulas: convolutions and matrix products) and
``ops_in_floor_passes`` (ATen ops dispatched, which is what per-op overhead scales with).
Models without embedded weights run with random weights; a model that fails reports its
error and the others go on.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import time
import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from uni_lab.engine import score_and_grad
from uni_lab.fastview import fast_view
from uni_lab.models import create_model
from uni_lab.persample import per_sample_grads
from uni_lab.plugins.ig import integrated_gradients
from uni_lab.plugins.uni import _match_in_chunks, match_chunk_size, unlearn_chunk_size, unlearned_log_probs

DROP = re.compile(r"performance drop because we have not yet implemented the batching rule for ([\w:.]+?)\.(?:\s|$)")


class _Work(TorchDispatchMode):
    """ATen ops dispatched and their FLOPs (FlopCounterMode's formulas without its module hooks,
    which ``autograd.grad`` on the recorded outputs does not allow)."""

    def __init__(self):
        super().__init__()
        self.ops = self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        if func._overloadpacket is torch.ops.aten.convolution_backward:
            # torch's formula ignores groups for the weight gradient (N× too many for the images-as-
            # groups per-sample gradient); each gradient costs as many multiply-adds as the forward
            grad_out, weight, mask = args[0], args[2], args[10]
            self.flops += sum(mask[:2]) * 2 * grad_out.numel() * weight[0].numel()
        elif (formula := flop_registry.get(func._overloadpacket)) is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


def _work(fn):
    work = _Work()
    with work:
        out = fn()
    return out, work


def phase_counts(clf, x, target, pgd_steps: int = 10, steps: int = 15) -> dict:
    """UNI's phases (the default baseline parameters) in floor passes of FLOPs and of ATen ops."""
    view = fast_view(clf, x)
    score_and_grad(view, x, target)  # the view and the FLOP probe of the chunk sizes, outside the counts
    unlearn_chunk_size(clf, x)
    _, floor = _work(lambda: score_and_grad(view, x, target))
    lp, unlearn = _work(lambda: unlearned_log_probs(clf, x, target))
    xb, match = _work(lambda: _match_in_chunks(clf, x, lp, None, eps=0.025, steps=pgd_steps, step_size=0.005,
                                               norm="l2", start="zero", step_rule="auto", kl_tol=0.0))
    _, integrate = _work(lambda: integrated_gradients(clf, x, target, baseline=xb, steps=steps))
    phases = {"unlearn": unlearn, "match": match, "integrate": integrate}
    return {"floor_pass_gflop": floor.flops / 1e9, "floor_pass_ops": floor.ops,
            "flops_in_floor_passes": {k: w.flops / max(floor.flops, 1) for k, w in phases.items()},
            "ops_in_floor_passes": {k: w.ops / floor.ops for k, w in phases.items()}}


def _timed(fn, device, reps: int) -> float:
    out = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def check(name: str, device: torch.device, size: int, batch: int, reps: int, counts: bool = False) -> dict:
    try:
        clf = create_model(name)
    except Exception:
        clf = create_model(name, weights="random")
    clf = clf.to(device).eval()
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        target = clf(x).argmax(-1)
    chunk = unlearn_chunk_size(clf, x)
    path = "vmap" if per_sample_grads(clf, x[:1], target[:1], factored=True) is None else "persample"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            unlearned_log_probs(clf, x, target)  # the warm-up is the call that is checked
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    messages = [str(w.message) for w in caught]
    syncs = [m for m in messages if "synchroniz" in m]
    drops = sorted({m2.group(1) for m in messages for m2 in [DROP.search(m)] if m2})
    view = fast_view(clf, x)
    score_and_grad(view, x, target)
    floor = _timed(lambda: score_and_grad(view, x, target), device, reps)
    unlearn = _timed(lambda: unlearned_log_probs(clf, x, target), device, reps)
    out = {"model": name, "device": str(device), "size": size, "batch": batch, "chunk": chunk,
           "match_chunk": match_chunk_size(clf, x), "path": path,
           "host_syncs": len(syncs), "host_sync_examples": syncs[:3], "vmap_fallbacks": drops,
           "unlearn_s": unlearn, "floor_pass_s": floor, "unlearn_in_floor_passes": unlearn / floor}
    if counts:
        out.update(phase_counts(clf, x, target))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--models", default="efficientnet_lite0,resnet18,convnext_tiny,swin_t,vit_b_16")
    p.add_argument("--counts", action="store_true", help="also count each UNI phase's FLOPs and ATen ops")
    a = p.parse_args()
    device = torch.device(a.device)
    for name in a.models.split(","):
        try:
            res = check(name, device, a.size, a.batch, a.reps, a.counts)
        except Exception as exc:  # one model that cannot run must not hide the others
            res = {"model": name, "device": str(device), "error": f"{exc.__class__.__name__}: {str(exc)[:300]}"}
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
