"""Running on an accelerator: memory budgets, pinned transfers, autocast and channels_last.

Nothing here changes what is computed, only where and in which precision. Reduced precision
is opt-in (``precision="bf16"``/``"fp16"``) and recorded in the model's description, so a
store says how its numbers were made; :data:`TOLERANCE` states how far such results may
drift from fp32 (checked in ``tests/test_batched_uni.py``).
"""
from __future__ import annotations

import contextlib
import os
import weakref

import torch

from .errors import InputError
from .models import Classifier

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Relative L2 error of attribution maps against fp32, as held by the tests on a small CNN
# (measured there: bf16 0.044, fp16 0.006). Deep nets drift further: IG maps of the embedded
# EfficientNet-Lite0 (CPU autocast, 64², B = 8) differ from fp32 by 0.39 in bf16 and 0.10 in
# fp16, so reduced precision is opt-in and recorded, never a default. fp32 covers layout only
# (channels_last), which changes the order of float sums, not the maths.
TOLERANCE = {"fp32": 1e-5, "bf16": 0.1, "fp16": 0.02}
ENV_BUDGET = "UNI_LAB_MEMORY_BUDGET"
# Share of what the device has free that one pass may use before a run warns: the rest is
# headroom for the allocator, the model, other processes and estimation error.
BUDGET_SHARE = {"cuda": 0.5, "cpu": 0.25}
# What a pass is planned to hold, per device type. A constant, not a reading of free memory:
# the partition of work into passes changes float rounding (a batch of 8 + 8 is not bitwise a
# batch of 16), so it must be a function of the configuration, never of the machine's load.
PLAN_BYTES = {"cuda": 8 * 2**30, "cpu": 4 * 2**30}
_UNITS = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {tuple(PRECISIONS)}, got '{precision}'.")
    return precision


def parse_bytes(text: str) -> int:
    """``"4GiB"``, ``"512m"``, ``"1000000"`` → bytes."""
    t = str(text).strip().lower().removesuffix("ib").removesuffix("b")
    try:
        return int(float(t[:-1]) * _UNITS[t[-1]]) if t and t[-1] in _UNITS else int(float(t))
    except ValueError:
        raise InputError(f"{ENV_BUDGET}='{text}' is not a size; write e.g. 4GiB or 512MiB.") from None


def _available_host_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30  # unknown platform: assume a small machine


def memory_budget(device) -> int:
    """Bytes one batch of work may plan for on ``device``; ``$UNI_LAB_MEMORY_BUDGET`` overrides."""
    if os.environ.get(ENV_BUDGET):
        return parse_bytes(os.environ[ENV_BUDGET])
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * BUDGET_SHARE["cuda"])
    return int(_available_host_bytes() * BUDGET_SHARE["cpu"])


_ACTIVATIONS: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def probe_forward(model: torch.nn.Module, x: torch.Tensor, modules, hook) -> None:
    """One no-grad forward of ``x[:1]`` with ``hook`` as a forward hook on each of ``modules``,
    removed afterwards whatever happens: how the toolkit looks at a model's structure (activation
    sizes, which modules run, which give spatial maps) without changing it."""
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()


def activation_bytes(model: torch.nn.Module, sample: torch.Tensor) -> int:
    """Bytes of every leaf module's output for one input ``sample`` ``(1, C, H, W)``.

    A proxy for what a forward/backward pass keeps per image (autograd saves roughly these
    tensors); measured once per model and input shape with a no-grad forward.
    """
    key = (tuple(sample.shape[1:]), sample.dtype, str(sample.device))
    cache = _ACTIVATIONS.setdefault(model, {})
    if key not in cache:
        total = [0]

        def hook(_m, _i, out):
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if torch.is_tensor(t):
                    total[0] += t.numel() * t.element_size()

        probe_forward(model, sample, [m for m in model.modules() if not any(True for _ in m.children())], hook)
        cache[key] = max(total[0], sample[:1].numel() * sample.element_size())
    return cache[key]


def fit_batch(per_item_bytes: int, device, cap: int) -> int:
    """How many items of ``per_item_bytes`` a pass is planned for, between 1 and ``cap``.

    Deterministic: sized against :data:`PLAN_BYTES` for the device type, whatever is free now
    (:func:`check_fits` warns when the plan exceeds the budget).
    """
    plan = PLAN_BYTES.get(torch.device(device).type, PLAN_BYTES["cpu"])
    return max(1, min(int(cap), plan // max(1, int(per_item_bytes))))


def check_fits(items: int, per_item_bytes: int, device, what: str, fix: str) -> str | None:
    """A one-line warning when ``items`` of ``per_item_bytes`` exceed the memory budget, else None."""
    need, budget = int(items) * int(per_item_bytes), memory_budget(device)
    if need <= budget:
        return None
    return (f"{what} of {items} plans for {need / 2**30:.1f} GiB, over the memory budget of "
            f"{budget / 2**30:.1f} GiB; {fix} to use less memory (maps then differ in float rounding).")


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """Host → device through pinned memory without blocking the host (a plain ``.to`` elsewhere)."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def autocast(device, precision: str = "fp32"):
    """``torch.autocast`` for ``bf16``/``fp16`` on ``device``; a no-op context for ``fp32``."""
    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


class AcceleratedClassifier(Classifier):
    """The same network (shared, not copied) run under autocast and/or in channels_last layout.

    Logits come back in fp32, so softmax, targets and every gradient w.r.t. the input keep
    fp32 storage; only the network's internal arithmetic is reduced.
    """

    def __init__(self, clf: Classifier, precision: str = "fp32", channels_last: bool = False):
        super().__init__(clf.net, mean=clf.mean.flatten().tolist(), std=clf.std.flatten().tolist(),
                         input_size=clf.input_size, name=clf.name, class_names=clf.class_names,
                         crop_pct=clf.crop_pct, weights=clf.weights, seed=clf.seed)
        self.to(clf.mean.device)
        self.precision = check_precision(precision)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            # Layout only: values stay bit-identical; the wrapped net is the caller's object.
            self.net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            try:
                x = x.contiguous(memory_format=torch.channels_last)
            except RuntimeError:  # under vmap (per-image unlearning) layouts cannot be chosen; values are the same
                pass
        with autocast(x.device, self.precision):
            out = super().forward(x)
        return out.float()

    def describe(self) -> dict:
        out = super().describe()
        if self.precision != "fp32":  # fp32 stores keep the description they always had
            out["precision"] = self.precision
        return out


def accelerate(clf: Classifier, precision: str = "fp32", channels_last: bool = False) -> Classifier:
    """``clf`` itself for fp32 in the default layout, else an :class:`AcceleratedClassifier` over it."""
    if check_precision(precision) == "fp32" and not channels_last:
        return clf
    return AcceleratedClassifier(clf, precision, channels_last)
