"""Per-sample gradients and per-sample-weight forwards for conv / linear / batch-norm networks.

UNI unlearns every image with its own gradient step, so it needs, for a batch of N images,
the N per-image parameter gradients and then one forward of each image under its own
weights. ``torch.func.vmap`` does both for any model, but on a CPU its batching rules split
convolutions into per-image or slow kernels (BENCHMARKS.md, "Component timings").

Here the same quantities come from ordinary batched kernels. The model's forward runs once
under a :class:`~torch.overrides.TorchFunctionMode` that records, for every ``conv2d``,
``linear`` and ``batch_norm`` call that uses a parameter, its input and output; one backward
gives the gradient at each recorded output, and each layer's per-image weight gradient is a
``bmm``/reduction of input and output gradient. Where that gradient is a sum of few outer
products (linear layers, pointwise convs on small feature maps) it stays as its two factors
(:class:`Outer`). The per-image forward runs the same ops with each image's own weights,
the images stacked along channels as groups (``conv2d(groups=N·g)``) or as batched matrix
products, or, for factored gradients, the ordinary op plus the factors' correction. Any other use of a parameter (layer norm, an attention bias, ``x * self.scale``),
or an option the formulas below do not cover, makes both functions return ``None``, and the
caller falls back to ``vmap``; ``tests/test_batched_uni.py`` checks both paths against the
per-image reference.

Both passes run through the fast view's graph (:mod:`uni_lab.fastview`, NCHW) where one exists:
a convolution and the batch norm after it are then one recorded layer, one backward node and
one per-image op, and :class:`_Fold` turns the folded filter's gradient back into the gradients
of both modules' own parameters (``tests/test_folded_unlearning.py``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .fastview import FastView, fast_view

_CONV, _LINEAR, _BN = torch.conv2d, F.linear, F.batch_norm
SUPPORTED = (_CONV, _LINEAR, _BN)
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_LINEAR_ARGS = ("input", "weight", "bias")
_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1, "running_mean": None,
             "running_var": None, "weight": None, "training": False, "momentum": 0.1, "eps": 1e-5}


class Unsupported(Exception):
    """A parameter is used in a way the batched formulas do not cover."""


class Outer:
    """Per-image weight gradients kept as their two factors: ``Σ_l gy_n[:, l] ⊗ x_n[:, l]``.

    A linear layer's gradient is one outer product (factors ``(N, out)`` and ``(N, in)``); a
    pointwise conv's is a sum of one per output position (factors ``(N, out, L)`` and
    ``(N, in, L)``). For EfficientNet's 1280→1000 head the N dense gradients are N·1.3 M floats
    (80 MB at N = 16), and late pointwise convs at small inputs (L = 4 positions, 1152×192
    channels) cost more to materialise than the whole rest of the backward pass; the
    per-image forward only ever multiplies them by its input:
    ``(Σ_l gy_l ⊗ x_l) h = Σ_l gy_l (x_l · h)``.
    """

    def __init__(self, gy: torch.Tensor, x: torch.Tensor, shape: tuple | None = None):
        self.gy, self.x = gy, x
        self.shape = tuple(shape) if shape is not None else (gy.shape[0], gy.shape[1], x.shape[1])

    def dense(self) -> torch.Tensor:
        if self.gy.dim() == 2:
            return torch.einsum("no,ni->noi", self.gy, self.x)
        return torch.bmm(self.gy, self.x.transpose(1, 2)).view(self.shape)

    def to(self, dtype) -> "Outer":
        return Outer(self.gy.to(dtype), self.x.to(dtype), self.shape)

    def times(self, h: torch.Tensor) -> torch.Tensor:
        """``(gy_n ⊗ x_n) h_n`` for every image ``n``: ``(N, in)`` → ``(N, out)``, or for the
        pointwise conv ``(N, in, L')`` → ``(N, out, L')``."""
        if self.gy.dim() == 2:
            return self.gy * (self.x * h).sum(-1, keepdim=True)
        return torch.bmm(self.gy, torch.bmm(self.x.transpose(1, 2), h))


def _factored(fan_in: int, cout: int, positions: int, taps: int = 1) -> bool:
    """Whether a conv's per-image gradient is cheaper kept factored.

    Dense: ``L·fan_in·out`` to build and as much to apply (``fan_in = in·k²``); factored:
    ``L·L'·(fan_in + out)`` to apply (``L' = L``). A k×k kernel (``taps = k² > 1``) must win
    by 2×: its factored form also unfolds the input k²-fold, while its dense gradient comes
    from the conv library's fast backward kernel (ResNet-18's 14×14 layers at 224², a near
    tie by the plain count, ran 3× slower factored). Shapes only, never the batch, so an
    image's arithmetic does not depend on its companions."""
    return positions * (fan_in + cout) * (2 if taps > 1 else 1) <= fan_in * cout


def _stays_factored(w, groups: int, positions: int) -> bool:
    """Whether a conv's per-image gradient is kept as :class:`Outer` factors (shapes only)."""
    kh, kw = w.shape[2:]
    return groups == 1 and _factored(w.shape[1] * kh * kw, w.shape[0], positions, kh * kw)


def _grouped(x, k, stride, padding, dilation, groups: int) -> torch.Tensor:
    """Each image's own filters ``k`` (N, out, in/groups, kh, kw) applied to it, in one conv: the
    images stacked along channels, one group each."""
    n, cout = k.shape[:2]
    out = torch.conv2d(x.reshape(1, n * x.shape[1], *x.shape[2:]), k.reshape(n * cout, *k.shape[2:]),
                       None, stride, padding, dilation, n * groups)
    return out.view(n, cout, *out.shape[2:])


def _bind(func, args, kwargs) -> dict:
    names = _CONV_ARGS if func is _CONV else _LINEAR_ARGS if func is _LINEAR else _BN_ARGS
    out = dict(_DEFAULTS)
    out.update(zip(names, args))
    out.update(kwargs)
    return out


def _pair(v) -> tuple[int, int]:
    if isinstance(v, str):
        raise Unsupported("string padding")
    v = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    return (int(v[0]), int(v[-1]))


def _tensors(obj):
    if torch.is_tensor(obj):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


class _ParamMode(TorchFunctionMode):
    """Routes every torch call that touches a parameter through :meth:`handle`."""

    def __init__(self, params: dict[str, torch.Tensor]):
        super().__init__()
        self.names = {id(p): k for k, p in params.items()}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not any(id(t) in self.names for t in _tensors((args, kwargs))):
            return func(*args, **kwargs)
        if func not in SUPPORTED:
            raise Unsupported(getattr(func, "__name__", str(func)))
        a = _bind(func, args, kwargs)
        if func is _BN and (a["training"] or id(a["running_mean"]) in self.names or id(a["running_var"]) in self.names):
            raise Unsupported("batch_norm in training mode")
        if id(a["input"]) in self.names:
            raise Unsupported("a parameter used as an input")
        return self.handle(func, a, args, kwargs)


class _Record(_ParamMode):
    def __init__(self, params, folds: dict | None = None, factored: bool = False):
        super().__init__(params)
        self.calls, self.gys = [], []
        self.folds, self.factored = folds or {}, factored

    def handle(self, func, a, args, kwargs):
        fold = self.folds.get(self.names.get(id(a["weight"]))) if func is _CONV else None
        if fold is not None and self.factored and fold.kept_factored(a):
            # The folded pair as θ's own convolution, then its affine map: the unnormalised output
            # gives ⟨W, G⟩ for γ's gradient as one product, where G stays factored (a layer's forward)
            a["unfolded"] = torch.conv2d(a["input"], fold.w, None, a["stride"], a["padding"], a["dilation"],
                                         a["groups"])
            out = torch.addcmul(a["bias"].view(1, -1, 1, 1), a["unfolded"], fold.scale.view(1, -1, 1, 1))
        else:
            out = _affine_batch_norm(a) if func is _BN else func(*args, **kwargs)
        if not a["input"].requires_grad:
            raise Unsupported("a layer whose input does not depend on the image")
        i = len(self.calls)
        self.calls.append((func, a, out))
        self.gys.append(None)
        # A hook, not autograd.grad(…, out): an in-place op after the layer (timm's BatchNormAct2d
        # runs ReLU6 in place) turns `out` into the activation's output, while a hook registered
        # before it still receives the gradient at the layer's own output. No copy is then needed.
        out.register_hook(lambda g, i=i, gys=self.gys: gys.__setitem__(i, g))  # no cycle back to self
        return out


def _affine_batch_norm(a) -> torch.Tensor:
    """Eval-mode batch norm as the per-channel affine map it is: its backward is then one
    product, where ``native_batch_norm_backward`` cost a sixth of the recorded pass on CPU."""
    x = a["input"]
    with torch.no_grad():
        scale = torch.rsqrt(a["running_var"] + a["eps"])
        shift = -a["running_mean"] * scale
        if a["weight"] is not None:
            scale, shift = scale * a["weight"], shift * a["weight"]
        if a["bias"] is not None:
            shift = shift + a["bias"]
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return torch.addcmul(shift.view(shape), x, scale.view(shape))


def _conv_weight_grad(x, gy, w, stride, padding, dilation, groups, factored=False):
    """``(N, *w.shape)``: each image's gradient of a conv2d weight from its input and output gradient."""
    n, cin = x.shape[:2]
    cout, cin_g, kh, kw = w.shape
    lout = gy.shape[2] * gy.shape[3]
    if cin_g == 1 and groups > 1:
        # Depthwise (any stride, dilation, channel multiplier): ∂L/∂w[t] = Σ_o gy[o]·xp[o·s + t·d]
        # correlates each padded input channel with its own output gradient spread out by the
        # stride, read at every d-th offset. That is one depthwise conv, which the conv library
        # runs fast (a loop over kernel taps cost several times more on strided layers).
        xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
        out = F.conv2d(xp.reshape(1, n * cin, *xp.shape[2:]), gy.reshape(n * cout, 1, *gy.shape[2:]),
                       None, 1, 0, stride, n * cin)
        out = out[:, :, :(kh - 1) * dilation[0] + 1:dilation[0], :(kw - 1) * dilation[1] + 1:dilation[1]]
        return out.reshape(n, *w.shape)
    if factored and _stays_factored(w, groups, lout):
        # Few output positions (late layers): the gradient stays Σ_l gy_l ⊗ cols_l, and the
        # per-image forward applies it to its own columns without ever building it.
        return Outer(gy.reshape(n, cout, lout), _columns(x, (kh, kw), stride, padding, dilation), (n, *w.shape))
    if (kh, kw) == (1, 1) and padding == (0, 0) and groups == 1:
        cols = _columns(x, (1, 1), stride, padding, dilation)
        return torch.bmm(gy.reshape(n, cout, lout), cols.transpose(1, 2)).view(n, *w.shape)
    # Dense k×k kernels: the weight gradient of one conv with the images as groups is every
    # image's own gradient, from the conv library's backward kernel (unfold + einsum built
    # k² copies of the input and cost ResNet-18 at 224² 2-4× more).
    g = torch.nn.grad.conv2d_weight(x.reshape(1, n * cin, *x.shape[2:]), (n * cout, cin_g, kh, kw),
                                    gy.reshape(1, n * cout, *gy.shape[2:]), stride, padding, dilation, n * groups)
    return g.view(n, *w.shape)


def _columns(x, kernel, stride, padding, dilation) -> torch.Tensor:
    """``(N, in·k², L)``: the input values each output position sees (a strided view for pointwise convs)."""
    if tuple(kernel) == (1, 1) and tuple(padding) == (0, 0):
        return x[:, :, ::stride[0], ::stride[1]].reshape(x.shape[0], x.shape[1], -1)
    return F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)


class _Fold:
    """A convolution the recording ran folded with the batch norm after it, and how the folded
    filter's gradient becomes the gradients of both modules' own parameters.

    For ``y = W ⋆ x + b`` then ``z = γ (y − μ)/σ + β``, with ``gz`` the gradient at ``z`` and
    ``G = gz ⋆ x`` (what the recording computes for the folded filter): ``∂W = (γ/σ) G``,
    ``∂b = (γ/σ) Σ gz``, ``∂γ = (⟨W, G⟩ + (b − μ) Σ gz)/σ``, ``∂β = Σ gz``, per channel. Exact,
    and with no division by γ, so a zero scale is no special case.
    """

    def __init__(self, model, conv_path: str, bn_path: str, names: dict[int, str]):
        conv, bn = model.get_submodule(conv_path), model.get_submodule(bn_path)
        self.w, self.b, self.gamma, self.beta = conv.weight, conv.bias, bn.weight, bn.bias
        self.names = {k: names.get(id(t)) for k, t in
                      (("w", self.w), ("b", self.b), ("gamma", self.gamma), ("beta", self.beta))}
        self.mean, self.inv_std = bn.running_mean, torch.rsqrt(bn.running_var + bn.eps)
        self.scale = self.inv_std if self.gamma is None else (self.gamma * self.inv_std).detach()

    def kept_factored(self, a) -> bool:
        """Whether :func:`_conv_weight_grad` keeps this filter's gradient as factors (shapes only)."""
        w, x = self.w, a["input"]
        size = [(x.shape[2 + i] + 2 * _pair(a["padding"])[i] - _pair(a["dilation"])[i] * (w.shape[2 + i] - 1) - 1)
                // _pair(a["stride"])[i] + 1 for i in (0, 1)]
        return _stays_factored(w, int(a["groups"]), size[0] * size[1])

    def grads(self, x, gy, a, factored: bool):
        g = _conv_weight_grad(x, gy, self.w, _pair(a["stride"]), _pair(a["padding"]), _pair(a["dilation"]),
                              int(a["groups"]), factored)
        scale = self.scale
        g_sum = gy.sum((2, 3))
        if self.names["gamma"]:
            shift = -self.mean if self.b is None else self.b - self.mean
            if "unfolded" in a:  # Σ_l gz_l (W ⋆ x)_l, from the recorded pass
                dot = (gy * a["unfolded"].detach()).sum((2, 3))
            elif isinstance(g, Outer):
                raise Unsupported("a factored gradient recorded without its unnormalised output")
            else:
                dot = (g * self.w).flatten(2).sum(-1)
            yield self.names["gamma"], (dot + shift * g_sum) * self.inv_std
        if self.names["beta"]:
            yield self.names["beta"], g_sum
        if self.names["b"]:
            yield self.names["b"], g_sum * scale
        if self.names["w"]:
            if isinstance(g, Outer):
                yield self.names["w"], Outer(g.gy * scale.view(1, -1, 1), g.x, g.shape)
            else:
                yield self.names["w"], g.mul_(scale.view(1, -1, *([1] * (g.dim() - 2))))


def _recording(model, x):
    """What the recorded pass runs, its parameters' names in ``model``, and the folds by the
    folded filter's name: the fast view's graph, in which batch norm is folded into the
    convolution before it (one recorded layer instead of two, forward and backward), or the
    model itself where there is no such view."""
    view = fast_view(model, x)
    if not isinstance(view, FastView) or not view.folds:
        return model, {k: k for k, _ in model.named_parameters()}, {}
    # Built once per view (2 ms a call on Lite0, two calls a chunk): a view is rebuilt whenever a
    # parameter or buffer of the model changes, so the folds' σ and names never go stale.
    if getattr(view, "_unlearning", None) is None:
        own = {id(p): k for k, p in model.named_parameters()}
        folds = {f"{c}.weight": _Fold(model, c, b, own) for c, b in view.folds}
        rename = {k: k for k, _ in view.inner.named_parameters() if k in set(own.values())}
        view._unlearning = (rename, folds)
    return (view.inner, *view._unlearning)


class Resolved(NamedTuple):
    """What :func:`resolve` found for one model and input shape: the graph both passes run, the
    names that map it to the model, the folds, and both sets of parameters by name."""
    net: torch.nn.Module
    rename: dict
    folds: dict
    params: dict
    net_params: dict


def resolve(model, x) -> Resolved:
    """:func:`_recording` and the parameter lookups, once for every chunk of one unlearning call
    (each resolution walks the model's modules: on Lite0 about a tenth of a floor pass for a
    batch of 16 in chunks of 4, at both passes of every chunk)."""
    net, rename, folds = _recording(model, x)
    return Resolved(net, rename, folds, dict(model.named_parameters()), dict(net.named_parameters()))


def per_sample_grads(model, x: torch.Tensor, target: torch.Tensor, factored: bool = False,
                     at_input: dict | None = None, resolved: Resolved | None = None) -> dict[str, torch.Tensor] | None:
    """``{name: (N, *shape)}``: ∇_θ of each image's cross-entropy, or ``None`` if unsupported.

    ``factored=True`` leaves the weight gradients of linear layers on ``(N, features)`` inputs
    as :class:`Outer` factors, which :func:`per_image_forward` uses as they are. A dict passed
    as ``at_input`` receives what the pass computes anyway: ``logits`` at ``x`` and ``grad``,
    ∇_x of each image's cross-entropy. ``resolved``: :func:`resolve`'s answer for this model and
    input shape, where a caller runs many chunks."""
    net, rename, folds, params, net_params = resolved or resolve(model, x)
    rec = _Record(net_params, folds, factored)
    x = x.detach().requires_grad_(True)  # a graph even when the user froze the weights
    try:
        with torch.enable_grad(), rec:
            logits = net(x)
    except Unsupported:
        return None
    if not rec.calls:
        return None
    loss = F.cross_entropy(logits, target, reduction="sum")  # the sum: each image's own loss
    (input_grad,) = torch.autograd.grad(loss, x)  # every recorded layer lies on a path to x: its hook gets its gradient
    if at_input is not None:
        at_input.update(logits=logits.detach(), grad=input_grad)
    gys = rec.gys
    n = x.shape[0]
    grads: dict[str, torch.Tensor] = {}

    def put(name, g):  # a parameter used twice (weight sharing) gets the sum
        g = g.to(params[name].dtype)
        if name in grads:
            grads[name] = dense(grads[name]) + dense(g)
        else:
            grads[name] = g

    try:
        with torch.no_grad():
            for (func, a, out), gy in zip(rec.calls, gys):
                if gy is None:
                    continue
                fold = folds.get(rec.names.get(id(a["weight"]))) if func is _CONV else None
                if fold is not None:
                    for name, g in fold.grads(a["input"].detach(), gy, a, factored):
                        put(name, g)
                    continue
                for name, g in _layer_grads(func, a, gy, rec.names, factored):
                    if name not in rename:
                        raise Unsupported(f"a parameter of the recording that the model does not have: {name}")
                    put(rename[name], g)
    except Unsupported:
        return None
    for k, p in params.items():  # parameters the loss does not reach: zero, as autograd would say
        if k not in grads:
            grads[k] = torch.zeros((n, *p.shape), dtype=p.dtype, device=p.device)
    return grads


def dense(g) -> torch.Tensor:
    return g.dense() if isinstance(g, Outer) else g


def _layer_grads(func, a, gy, names, factored: bool = False):
    """``(name, (N, *shape))`` for the weight and bias of one recorded call."""
    w, b = a["weight"], a["bias"]
    wk, bk = names.get(id(w)), names.get(id(b))
    x = a["input"].detach()
    if func is _CONV:
        if wk:
            yield wk, _conv_weight_grad(x, gy, w, _pair(a["stride"]), _pair(a["padding"]), _pair(a["dilation"]),
                                        int(a["groups"]), factored)
        if bk:
            yield bk, gy.sum((2, 3))
    elif func is _LINEAR:
        if wk:
            yield wk, Outer(gy, x) if factored and x.dim() == 2 else torch.einsum("n...o,n...i->noi", gy, x)
        if bk:
            yield bk, gy.reshape(gy.shape[0], -1, gy.shape[-1]).sum(1)
    else:
        n, c = gy.shape[:2]
        g_sum = gy.reshape(n, c, -1).sum(2)
        if wk:  # Σ gy·(x − μ)/σ = (Σ gy·x − μ Σ gy)/σ: one fused product instead of a normalised copy
            gx = torch.bmm(gy.reshape(n * c, 1, -1), x.reshape(n * c, -1, 1)).view(n, c)
            yield wk, (gx - a["running_mean"] * g_sum) * torch.rsqrt(a["running_var"] + a["eps"])
        if bk:
            yield bk, g_sum


class _PerImage(_ParamMode):
    """Runs each recognised op with image ``i``'s weights ``θ + η·grads[name][i]``.

    Where a gradient is kept factored (:class:`Outer`), the shared part (``θ``) runs as the
    ordinary batched op and the per-image change as two small batched products, so those
    per-image weights never exist (at small inputs, moving N copies of the large pointwise and
    linear weights through memory was what unlearning cost). Depthwise kernels, which are
    small, are built per image and run in one conv; other dense gradients run as θ's batched
    op plus a batched correction.
    """

    def __init__(self, params, grads, eta: float, folds: dict | None = None, model_grads: dict | None = None):
        super().__init__(params)
        self.grads, self.eta = grads, float(eta)
        self.folds, self.model_grads = folds or {}, model_grads or {}  # by the recording's / the model's names

    def _delta(self, t):
        return self.grads[self.names[id(t)]] if t is not None and id(t) in self.names else None

    def handle(self, func, a, args, kwargs):
        x = a["input"]
        n = x.shape[0]
        if func is _CONV and self.names.get(id(a["weight"])) in self.folds:
            return self._folded(self.folds[self.names[id(a["weight"])]], x, n, a)
        gw, gb = self._delta(a["weight"]), self._delta(a["bias"])
        if func is _BN:  # each image's own affine map, in one pass over the activations
            w, b = a["weight"], a["bias"]
            scale = torch.rsqrt(a["running_var"] + a["eps"]).expand(n, -1)
            if w is not None:
                scale = scale * (w if gw is None else w + self.eta * gw)
            shift = -a["running_mean"] * scale
            if b is not None:
                shift = shift + (b if gb is None else b + self.eta * gb)
            shape = (n, -1) + (1,) * (x.dim() - 2)
            return torch.addcmul(shift.view(shape), x, scale.view(shape))
        if gw is None:
            raise Unsupported(f"{func.__name__} without a parameter weight")
        if func is _CONV:
            return self._conv(x, n, gw, gb, a, args, kwargs)
        out = func(*args, **kwargs)  # θ's part, batched as usual
        if isinstance(gw, Outer):
            out = out + self.eta * gw.times(x)
        else:
            out = out + self.eta * torch.einsum("n...i,noi->n...o", x, gw)
        if gb is not None:
            out = out + self.eta * gb.view(n, *([1] * (x.dim() - 2)), -1)
        return out


    def _conv(self, x, n, gw, gb, a, args, kwargs):
        w, b, g = a["weight"], a["bias"], int(a["groups"])
        cout = w.shape[0]
        if isinstance(gw, Outer):  # θ's part batched as usual (its bias included), plus the factored change
            out = torch.conv2d(*args, **kwargs)
            cols = _columns(x, w.shape[2:], _pair(a["stride"]), _pair(a["padding"]), _pair(a["dilation"]))
            out = out + self.eta * gw.times(cols).view(out.shape)
            return out if gb is None else out + self.eta * gb.view(n, cout, 1, 1)
        elif w.shape[1] == 1 and g > 1:
            # Depthwise: each image's own kernels θ + η·g_i are small, so they are built and run
            # as one conv (the images stacked along channels, one group each) instead of θ's
            # pass plus a second pass of the same size for the change.
            out = _grouped(x, torch.add(w, gw, alpha=self.eta), a["stride"], a["padding"], a["dilation"], g)
            if b is not None and gb is None:
                out = out + b.view(1, cout, 1, 1)
        else:
            # Dense kernels: per-image copies of θ would cost as much memory traffic as the
            # gradients themselves (ResNet-18 unlearned 1.5x slower so), so θ runs batched and
            # only the change per image.
            out = torch.conv2d(*args, **kwargs)
            if gw.shape[3:] == (1, 1) and _pair(a["padding"]) == (0, 0) and g == 1:
                st = _pair(a["stride"])
                xs = x[:, :, ::st[0], ::st[1]].reshape(n, x.shape[1], -1)
                out = torch.baddbmm(out.reshape(n, cout, -1), gw.view(n, cout, -1), xs,
                                    alpha=self.eta).view(out.shape)
            else:
                out = out + self.eta * _grouped(x, gw, a["stride"], a["padding"], a["dilation"], g)
            return out if gb is None else out + self.eta * gb.view(n, cout, 1, 1)
        if gb is not None:
            return out + (b + self.eta * gb).view(n, cout, 1, 1)
        return out if b is None else out + b.view(1, cout, 1, 1)


    def _folded(self, fold, x, n, a):
        """A convolution and the batch norm after it, as one op per image: ``z_i = s_i ⊙ (W_i ⋆ x_i) + t_i``
        with ``s_i = γ_i/σ`` and ``t_i = β_i + s_i (b_i − μ)``, every parameter stepped by its own
        gradient. Where the per-image filters are built anyway (depthwise, pointwise), ``s_i``
        goes into them and the normalisation costs no pass of its own."""
        g = {k: (self.model_grads[v] if v else None) for k, v in fold.names.items()}
        eta, w = self.eta, fold.w
        scale = fold.inv_std.expand(n, -1) if fold.gamma is None else (fold.gamma + eta * g["gamma"]) * fold.inv_std
        shift = -fold.mean if fold.b is None else fold.b + eta * g["b"] - fold.mean
        shift = scale * shift if fold.beta is None else torch.addcmul(fold.beta + eta * g["beta"], scale, shift)
        stride, padding, dilation, groups = a["stride"], a["padding"], a["dilation"], int(a["groups"])
        cout = w.shape[0]
        gw = g["w"]
        if torch.is_tensor(gw) and (w.shape[1] == 1 and groups > 1 or (
                w.shape[2:] == (1, 1) and _pair(padding) == (0, 0) and groups == 1)):
            wi = torch.add(w, gw, alpha=eta).mul_(scale.view(n, cout, *([1] * (w.dim() - 1))))
            if groups == 1:  # pointwise: one batched product, the shift as its starting value
                st = _pair(stride)
                xs = x[:, :, ::st[0], ::st[1]]
                out = torch.baddbmm(shift.view(n, cout, 1).expand(n, cout, xs.shape[2] * xs.shape[3]),
                                    wi.view(n, cout, -1), xs.reshape(n, x.shape[1], -1))
                return out.view(n, cout, *xs.shape[2:])
            return _grouped(x, wi, stride, padding, dilation, groups).add_(shift.view(n, cout, 1, 1))
        out = torch.conv2d(x, w, None, stride, padding, dilation, groups)  # θ's filter, batched
        if isinstance(gw, Outer):
            cols = _columns(x, w.shape[2:], _pair(stride), _pair(padding), _pair(dilation))
            out = out + eta * gw.times(cols).view(out.shape)
        elif gw is not None:
            out = out + eta * _grouped(x, gw, stride, padding, dilation, groups)
        return torch.addcmul(shift.view(n, cout, 1, 1), out, scale.view(n, cout, 1, 1))


def per_image_forward(model, x: torch.Tensor, grads: dict[str, torch.Tensor], eta: float,
                      resolved: Resolved | None = None) -> torch.Tensor | None:
    """Logits of image ``i`` under weights ``θ + η·grads[name][i]``, all at once; ``None`` if unsupported.

    It runs through the same graph as the recording (:func:`_recording`): a convolution and its
    folded batch norm then take one op per image."""
    net, rename, folds, _, named = resolved or resolve(model, x)
    if folds:
        # a folded filter's own parameters (W·γ/σ, its new bias) have no gradient: the fold's step replaces them
        params = {k: p for k, p in named.items() if k in rename or k in folds}
        mapped = {k: grads[rename[k]] for k in params if k in rename}
    else:
        params, mapped = named, grads
    try:
        with torch.no_grad(), _PerImage(params, mapped, eta, folds, grads):
            return net(x)
    except Unsupported:
        return None
