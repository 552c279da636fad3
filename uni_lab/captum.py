"""Captum on uni_lab's terms, both ways.

Inward: the helpers the Captum-backed plugins share (``lime``, ``kernel_shap``,
``gradient_shap``, ``deeplift_shap``, ``occlusion``, ``grad_cam``, ``infidelity``): the
forward function a Captum attribution class sees, per-image seeding of Captum's draws from
the global random generators, and channel-less maps spread over the three channels.

Outward: :class:`UNI`, :class:`IG` and :func:`attribution_class` make any registered
uni_lab method a Captum attribution class (``UNI(forward_func).attribute(inputs,
target=..., n_steps=...)``), so Captum's ``NoiseTunnel`` and metrics wrap it.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from .engine import check_output
from .seeding import derived_seeds


class Scores(torch.nn.Module):
    """``F(x)`` as Captum sees it: the classifier's softmax or its logits, pixel space in."""

    def __init__(self, model, output: str = "prob"):
        super().__init__()
        self.model = model
        self.output = check_output(output)

    def forward(self, x):
        logits = self.model(x)
        return logits.softmax(-1) if self.output == "prob" else logits


@contextlib.contextmanager
def seeded(seed):
    """Captum draws from torch's and numpy's global generators; ``seed`` fixes both for one call,
    and both are restored afterwards. ``None`` leaves them alone (an unseeded in-memory call)."""
    if seed is None:
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed) % (1 << 63))
        np.random.seed(int(seed) % (1 << 32))
        try:
            yield
        finally:
            np.random.set_state(state)


def image_seeds(seeds, tag: str, n: int) -> list:
    """One seed per image for the stream ``tag`` (``None`` each when the call has no seeds): an
    image's draws never depend on the batch it is in."""
    derived = derived_seeds(seeds, tag)
    return [None] * n if derived is None else derived.tolist()


def spread(map_: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """``(N, 1, H, W)`` → ``(N, C, H, W)`` with each channel ``map / C``: maps without channels
    (XRAI, Grad-CAM) are stored so that ``Σ_c A_c`` is the map itself."""
    return (map_ / channels).expand(-1, channels, -1, -1).contiguous()


# -- outward: uni_lab methods as Captum attribution classes ------------------------------------

from captum.attr import GradientAttribution  # noqa: E402  (the helpers above need no Captum)
from captum.log import log_usage  # noqa: E402
from torch import nn  # noqa: E402


class _Function(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class MethodAttribution(GradientAttribution):
    """A registered uni_lab method behind Captum's ``Attribution`` interface.

    ``MethodAttribution(forward_func, "uni").attribute(inputs, target=..., n_steps=...)``
    explains ``forward_func(inputs)[:, target]`` as Captum's attribution classes do: the
    function's own input space (no normalisation is added) and its raw output (uni_lab's
    ``output="logit"``; give ``output="prob"`` to explain its softmax instead). ``forward_func``
    should return logits; methods that read or change weights or modules (UNI's unlearning,
    Guided Backprop, DeepLIFT, Grad-CAM) need the ``nn.Module`` itself and refuse a plain
    function; its parameters and train/eval flags are never changed. ``n_steps`` is the method's ``steps``;
    other keywords are method parameters (``eps=0.03``) or ``sets`` routes (``{"uni.eps": 0.03}``).
    Random parts are seeded per image from ``seed`` and the image's pixels. Captum's
    ``NoiseTunnel``, ``sensitivity_max`` and ``infidelity`` take it like any attribution class.
    """

    spec = "ig:black"

    def __init__(self, forward_func, spec: str | None = None, *, seed: int | None = 0, sets: dict | None = None,
                 **params):
        super().__init__(forward_func)
        self.spec = spec or type(self).spec
        self.seed, self.sets, self.params = seed, dict(sets or {}), params
        net = forward_func if isinstance(forward_func, nn.Module) else _Function(forward_func)
        self._net = net
        # the name errors give: the network's class, or the function's own name
        self._name = type(net).__name__ if net is forward_func else getattr(forward_func, "__name__", "forward_func")

    def _classifier(self, x):
        from .models import wrap

        c = x.shape[1]
        return wrap(self._net, mean=(0.0,) * c, std=(1.0,) * c, input_size=tuple(x.shape[2:]), name=self._name)

    @log_usage()  # NoiseTunnel calls attribute.__wrapped__, as Captum's own classes provide
    def attribute(self, inputs, target=None, n_steps: int | None = None, additional_forward_args=None,
                  internal_batch_size: int | None = None, **params):
        """Attributions shaped like ``inputs`` (a tensor, or a 1-tuple of one, as given)."""
        from .errors import InputError
        from .models import restoring_modes

        if additional_forward_args is not None:
            raise InputError(f"{type(self).__name__}: additional_forward_args are not supported; close over them in "
                             "forward_func.")
        is_tuple = isinstance(inputs, tuple)
        if is_tuple and len(inputs) != 1:
            raise InputError(f"{type(self).__name__} explains one input tensor, got a tuple of {len(inputs)}.")
        x = inputs[0] if is_tuple else inputs
        with restoring_modes(self._net):  # wrapping sets eval mode; the caller's flags come back
            a = self._attribute(x, target, n_steps, internal_batch_size, params)
        return (a,) if is_tuple else a

    def _attribute(self, x, target, n_steps, internal_batch_size, params):
        from .methods import explain
        from .seeding import content_seeds

        clf = self._classifier(x)
        if target is None:
            with torch.no_grad():
                target = clf(x).argmax(-1)
        elif isinstance(target, (list, tuple)):
            target = torch.tensor(target)
        target = torch.as_tensor(target, device=x.device).view(-1).expand(x.shape[0]).contiguous()
        kwargs = {"output": "logit", **self.params, **params}
        if n_steps is not None:
            kwargs["steps"] = int(n_steps)
        if internal_batch_size is not None:
            kwargs["internal_batch_size"] = int(internal_batch_size)
        seeds = None if self.seed is None else content_seeds(x, int(self.seed))
        with torch.enable_grad():  # Captum's wrappers may call under no_grad; gradients are w.r.t. the input only
            return explain(self.spec, clf, x.detach(), target=target, seeds=seeds, sets=self.sets, **kwargs).attribution

    def has_convergence_delta(self) -> bool:
        return False

    @property
    def multiplies_by_inputs(self) -> bool:
        return True


def attribution_class(spec: str, name: str | None = None) -> type:
    """A :class:`MethodAttribution` subclass fixed to ``spec``: ``attribution_class("blur_ig")(model)``."""
    cls_name = name or "".join(p.capitalize() for p in spec.replace(":", "_").replace("(", "_").strip(")").split("_"))
    return type(cls_name, (MethodAttribution,), {"spec": spec, "__doc__": f"uni_lab's ``{spec}`` as a Captum "
                                                 "attribution class (see :class:`MethodAttribution`)."})


UNI = attribution_class("uni", "UNI")
IG = attribution_class("ig:black", "IG")
BlurIG = attribution_class("blur_ig", "BlurIG")
GuidedIG = attribution_class("guided_ig", "GuidedIG")
AGI = attribution_class("agi", "AGI")
