"""Per-image seeds, so random draws never depend on batch composition, shard or device."""
from __future__ import annotations

import hashlib

import torch


def image_seed(seed: int, image_id: str) -> int:
    """A stable 63-bit seed from the run seed and the image's id (not Python's salted hash)."""
    digest = hashlib.sha256(f"{int(seed)}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def content_seeds(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Per-image seeds from ``seed`` and the SHA-256 of each image's float32 pixels, for callers that
    pass images without ids (Captum, Quantus): an image's draws then never depend on its batch."""
    ids = [hashlib.sha256(img.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest() for img in x]
    return torch.tensor([image_seed(seed, i) for i in ids])


def derived_seeds(seeds, tag: str):
    """Per-image seeds of another random stream, ``image_seed(s, tag)`` for each seed ``s``: an
    image's derived seed never depends on the batch it is in. ``None`` stays ``None``."""
    if seeds is None:
        return None
    return torch.tensor([image_seed(int(s), tag) for s in torch.as_tensor(seeds).tolist()])


def repeat_seeds(seeds, name: str, r: int):
    """Seeds of repetition ``r`` of a random computation: the run's own for ``r = 0``, the stream
    ``name:r`` after, so one repetition reproduces the single run."""
    if seeds is None or r == 0:
        return None if seeds is None else torch.as_tensor(seeds)
    return derived_seeds(seeds, f"{name}:{r}")


def draw(x: torch.Tensor, seeds, kind: str = "rand", salt: int = 0) -> torch.Tensor:
    """Noise shaped like ``x``, image ``i`` drawn from ``seeds[i]`` on the CPU (device-independent).

    ``kind`` is ``"rand"`` (U(0,1)) or ``"randn"`` (N(0,1)); ``salt`` separates the streams
    of different plugins that share a seed. Without seeds, draws from the global generator.
    """
    sample = torch.rand if kind == "rand" else torch.randn
    if seeds is None:
        return sample(x.shape, dtype=x.dtype, device=x.device)
    out = []
    for s in torch.as_tensor(seeds).tolist():
        g = torch.Generator().manual_seed((int(s) + salt) % (1 << 63))
        out.append(sample(x.shape[1:], generator=g, dtype=torch.float32))
    return torch.stack(out).to(device=x.device, dtype=x.dtype)
