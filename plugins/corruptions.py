"""ImageNet-C corruptions (Hendrycks & Dietterich 2019) as ``attack`` plugins, severities 1–5.

The three families the UNI paper uses against the static baselines: digital (brightness,
saturate), blur (gaussian_blur, defocus_blur) and noise (gaussian_noise, shot_noise). The
pixel operations come from ``corrupt-tta``, a maintained port of the ImageNet-C code, not from
code of ours; ``imagecorruptions`` 1.1.2, the older port, no longer imports on setuptools
without ``pkg_resources``. A corruption is an attack plugin with a ``severity`` parameter,
which is how ``uni-lab evaluate --corruptions`` tells corruptions from attacks.

``corrupt-tta`` draws its noise from NumPy's global generator; each image here gets its own
seed (the run's per-image seed, salted with the corruption's name and severity) and the global
state is restored afterwards, so results never depend on batch composition or call order.
"""
from __future__ import annotations

import zlib
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch

import uni_lab
from uni_lab.defaults import SEVERITIES
from uni_lab.errors import InputError

FAMILIES = {"digital": ("brightness", "saturate"), "blur": ("gaussian_blur", "defocus_blur"),
            "noise": ("gaussian_noise", "shot_noise")}


@contextmanager
def _numpy_seed(seed: int):
    state = np.random.get_state()
    np.random.seed(int(seed) % (1 << 32))
    try:
        yield
    finally:
        np.random.set_state(state)


def corrupt(x: torch.Tensor, name: str, severity: int, seeds=None) -> torch.Tensor:
    """Apply ImageNet-C corruption ``name`` at ``severity`` to a pixel-space batch ``(N, 3, H, W)``."""
    from corrupt_tta import corrupt as _corrupt

    if int(severity) not in SEVERITIES or int(severity) != severity:
        raise InputError(f"corruption severity must be one of {SEVERITIES}, got {severity!r}.")
    salt = zlib.crc32(f"{name}:{int(severity)}".encode())
    seeds = [0] * x.shape[0] if seeds is None else torch.as_tensor(seeds).tolist()
    # corrupt-tta works on HxWx3 arrays in [0, 255]; float input avoids an 8-bit rounding step.
    images = (x.detach().permute(0, 2, 3, 1).float().cpu().numpy() * 255.0).astype(np.float32)
    out = []
    for img, seed in zip(images, seeds):
        with _numpy_seed(int(seed) + salt):
            out.append(np.asarray(_corrupt(img, severity=int(severity), corruption_name=name), dtype=np.float32))
    return torch.from_numpy(np.stack(out) / 255.0).permute(0, 3, 1, 2).clamp(0, 1).to(x)


def _register(name: str, family: str):
    def corruption(x, seeds=None, *, severity: Literal[SEVERITIES] = 3):
        return corrupt(x, name, severity, seeds)

    corruption.__doc__ = f"ImageNet-C {name.replace('_', ' ')} ({family} family), severity 1-5, via corrupt-tta."
    corruption.__name__ = corruption.__qualname__ = name
    uni_lab.attack(name)(corruption)


for _family, _names in FAMILIES.items():
    for _name in _names:
        _register(_name, _family)
