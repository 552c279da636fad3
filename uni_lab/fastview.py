"""A faster copy of a model for passes that need only ``F(x)`` and ``∇_x F(x)``.

Eval-mode batch norm is a fixed affine map per channel, so it folds into the convolution in
front of it (``W ← W·γ/σ``, ``b ← (b − μ)·γ/σ + β``): one kernel instead of two, forward and
backward. On a CPU, channels-last input also picks faster convolution kernels (timings:
BENCHMARKS.md, "Component timings"; ``uni-lab bench`` reports the effect as ``ig_vs_captum``
against ``ig_vs_captum_same_graph``).

The copy computes the same function up to float rounding, but a ReLU6 network's gradient
is piecewise constant, so rounding moves some path points across a kink: IG maps of
Lite0 at 224² moved by 0.1–0.4 % (relative L2) against the model as given. That is about as far as
fp32 itself is from fp64 (0.06–0.2 %) on the same maps.

Code that needs nothing but outputs and input gradients asks for the view (the engine's
passes, UNI's matching). UNI's unlearning records and steps through the view's graph too, but
with the model's own parameters: :mod:`uni_lab.persample` turns each folded filter's gradient
back into the gradients of the convolution's and the batch norm's parameters, and steps those.
Hook-based rules always get the model as given. The view is built on first use and
rebuilt when a parameter or buffer is replaced or changed in place (tensor identity and
version counter). A model is used as given when:

- it has module hooks or a module in training mode;
- ``torch.fx`` cannot trace it;
- it has nothing to fold (then only the layout changes, on CPU);
- its view disagrees with it on the first input it sees;
- ``UNI_LAB_FAST_VIEW=0`` is set.

A run records the setting in its configuration (``fast_view``), so a store is never resumed
with the other one, and ``uni-lab evaluate`` recomputes maps with the store's setting. That
matters for UNI: its L∞ PGD steps by ``sign(∇)``, and rounding flips the sign of the few
near-zero gradient pixels, after which the matching walks elsewhere. On the eight photographs at
224², IG maps moved by 0.02–0.5 % with the view on against off, while UNI's maps were different maps
(relative L2 0.9–1.3), as they are between two batch compositions.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import weakref

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

ENV = "UNI_LAB_FAST_VIEW"
# How far the view's logits may be from the model's on the probe (relative to their largest
# magnitude). Folding moves fp32 logits by ~1e-6 on CPU; TF32 convolutions (PyTorch's cuDNN
# default on recent GPUs) by ~1e-3; a wrong graph moves them by O(1).
PROBE_TOLERANCE = {"fp32": 5e-3, "bf16": 0.1, "fp16": 0.05}
_log = logging.getLogger(__name__)
_VIEWS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


_FORCED: list[bool] = []  # innermost using() wins over the environment


def enabled() -> bool:
    if _FORCED:
        return _FORCED[-1]
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def setting() -> str:
    """``"on"`` or ``"off"``: recorded in a run's configuration, because UNI's sign-PGD turns
    the view's float-rounding differences into different baselines (see BENCHMARKS.md)."""
    return "on" if enabled() else "off"


@contextlib.contextmanager
def using(on: bool):
    """The view on or off inside the block, whatever the environment says (``uni-lab evaluate``
    recomputes maps the way the store's run computed them)."""
    _FORCED.append(bool(on))
    try:
        yield
    finally:
        _FORCED.pop()


class _Tracer(fx.Tracer):
    """Keeps every batch-norm module a single graph node, subclasses (timm's BatchNormAct2d) included."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, nn.BatchNorm2d) or super().is_leaf_module(m, qualname)


def _after_norm(bn: nn.Module) -> nn.Module | None:
    """What is left of a batch-norm module once its affine map is folded, or None if unknown."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:
        return None
    if type(bn) is BatchNormAct2d:  # batch_norm, then drop, then act (timm's forward)
        return nn.Sequential(bn.drop, bn.act)
    return None


def _conv_types() -> tuple[type, ...]:
    """Convolutions whose forward is linear in ``weight`` and ``bias`` (folding scales both)."""
    try:
        from timm.layers import Conv2dSame
    except ImportError:
        return (nn.Conv2d,)
    return (nn.Conv2d, Conv2dSame)


def fold_batchnorm(net: nn.Module) -> tuple[fx.GraphModule, int]:
    """``net`` traced, each eval-mode batch norm folded into the convolution feeding only it.

    Works in place on ``net``'s modules: pass a copy. Returns the graph module and the number
    of batch norms folded; raises what ``torch.fx`` raises for a model it cannot trace. The
    graph module's ``batchnorm_folds`` lists each fold as ``(conv path, batch-norm path)``:
    unlearning maps gradients of the folded convolutions back to both modules' parameters.
    """
    gm = fx.GraphModule(net, _Tracer().trace(net))
    mods = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    convs, folds = _conv_types(), []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not node.args:
            continue
        bn, src = mods[node.target], node.args[0]
        rest = _after_norm(bn)
        if rest is None or bn.training or bn.running_mean is None or bn.running_var is None:
            continue
        if not (isinstance(src, fx.Node) and src.op == "call_module" and type(mods[src.target]) in convs):
            continue
        if len(src.users) != 1 or calls[src.target] != 1 or calls[node.target] != 1:
            continue  # the unnormalised output is used elsewhere, or a module is shared
        conv = mods[src.target]
        conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                      bn.eps, bn.weight, bn.bias)
        gm.get_submodule(node.target.rpartition(".")[0]).register_module(node.target.rpartition(".")[2], rest)
        folds.append((src.target, node.target))
    gm.recompile()
    gm.batchnorm_folds = folds
    return gm, len(folds)


class FastView(nn.Module):
    """``inner`` (a folded copy, or the model itself) with channels-last input on CPU.

    Passing a view to :func:`fast_view` returns it at no cost: resolve the view once, then run
    many passes through it.
    """

    def __init__(self, inner: nn.Module, folded: int, folds: tuple = ()):
        super().__init__()
        self.inner, self.folded = inner, folded
        self.folds = tuple(folds)  # (conv path, batch-norm path) in ``inner`` and the model alike

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return self.inner(x)


_MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = tuple(f"_global{name}" for name in _MODULE_HOOKS)


def _state(model: nn.Module) -> tuple | None:
    """What the view depends on (each tensor's identity, storage and version), or None when the
    model must run as given (hooks, or a module in training mode). One walk over the modules,
    once per engine call."""
    from torch.nn.modules import module as base

    if any(getattr(base, name, None) for name in _GLOBAL_HOOKS):
        return None
    out = []
    for m in model.modules():
        if m.training or any(getattr(m, name, None) for name in _MODULE_HOOKS):
            return None
        for group in (m._parameters, m._buffers):
            for t in group.values():
                if t is not None:
                    out += (id(t), t.data_ptr(), t._version)
    return tuple(out)


def _build(model: nn.Module) -> nn.Module | None:
    """The folded copy, or None where there is nothing to fold or it cannot be built."""
    from .models import Classifier

    try:
        dup = copy.deepcopy(model)
        if isinstance(dup, Classifier):
            dup.net, folded = fold_batchnorm(dup.net)
            folds = [(f"net.{c}", f"net.{b}") for c, b in dup.net.batchnorm_folds]
        else:
            dup, folded = fold_batchnorm(dup)
            folds = dup.batchnorm_folds
    except Exception as exc:  # fx cannot trace every model; the model as given always works
        _log.debug("no folded view of %s: %s", type(model).__name__, exc)
        return None
    return FastView(dup.eval(), folded, folds) if folded else None


def _agrees(view: nn.Module, model: nn.Module, probe: torch.Tensor) -> bool:
    with torch.no_grad():
        ref, got = model(probe).float(), view(probe).float()
    scale = ref.abs().max().clamp_min(1e-12)
    tol = PROBE_TOLERANCE.get(getattr(model, "precision", "fp32"), PROBE_TOLERANCE["fp32"])
    return bool(((got - ref).abs().max() / scale) <= tol)


def fast_view(model, probe: torch.Tensor | None = None):
    """The model to run input-gradient passes through: a folded, channels-last copy, or ``model``.

    ``probe`` (a few inputs) checks a freshly built view against the model; a view that
    disagrees is dropped with a warning, and the model runs unfolded until its weights change.
    """
    if not (enabled() and isinstance(model, nn.Module)) or isinstance(model, FastView):
        return model
    key = _state(model)
    if key is None:
        return model
    hit = _VIEWS.get(model)
    if hit is None or hit[0] != key:
        view = _build(model)
        if view is not None and probe is not None and not _agrees(view, model, probe[:2].detach()):
            _log.warning("the folded view of %s disagrees with it; using the model as given.",
                         getattr(model, "name", type(model).__name__))
            view = None
        hit = (key, view)
        _VIEWS[model] = hit
    # Nothing folded: a layout-only view, made per call so that the cache never holds the model
    # itself (a weak key must not be reachable from its value).
    return hit[1] if hit[1] is not None else FastView(model, 0)
