"""A plugin file for subprocess runs (``uni-lab run --plugins tests/tiny_plugin.py``).

It registers a tiny model (``tiny16``: 3×16×16 in, 4 classes, fixed seeded weights, so every
process builds the same network) and an explainer that fails on purpose (``boom``), and it
can inject faults, chosen by the environment variable ``UNI_LAB_TEST_FAULT``:

- ``compute:K``  SIGKILL itself inside the K-th gradient-enabled forward pass (mid-computation);
- ``write:VAR:K`` SIGKILL itself just before the K-th chunk write of variable VAR (so between
  an item's variables when VAR is not the first one written);
- ``torn:VAR:K``  write half of that chunk into zarr's temporary file, then SIGKILL (mid-file);
- ``slow:S``     sleep S seconds in each gradient-enabled forward (gives an outside ``kill -9`` time).

The fault hooks reach into zarr's local-store writer (``zarr.storage._local._put``); if a zarr
release renames it, the fault tests fail loudly rather than silently testing nothing.
"""
from __future__ import annotations

import os
import signal
import time

import torch
from torch import nn

import uni_lab

FAULT = os.environ.get("UNI_LAB_TEST_FAULT", "")
_kind, _, _arg = FAULT.partition(":")
_var, _, _nth = _arg.partition(":")
_counts = {"forward": 0, "put": 0}


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(6, 6, 3, padding=1, stride=2), nn.ReLU())
        self.head = nn.Linear(6 * 8 * 8, 4)

    def forward(self, x):
        if torch.is_grad_enabled():
            _counts["forward"] += 1
            if _kind == "compute" and _counts["forward"] == int(_arg):
                _die()
            if _kind == "slow":
                time.sleep(float(_arg))
        return self.head(self.features(x).flatten(1))


@uni_lab.model("tiny16")
def tiny16(weights=None):
    """A 16×16 ReLU CNN with 4 classes and fixed seeded weights (tests only)."""
    with torch.random.fork_rng():  # the same weights in every process, global RNG untouched
        torch.manual_seed(1234)
        net = _Tiny()
    if weights not in (None, "random"):
        from uni_lab.models import load_state_dict, load_weights

        load_weights(net, load_state_dict(weights), "tiny16", str(weights))
    return uni_lab.Classifier(net, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(16, 16),
                              name="tiny16", weights=str(weights or "seeded"))


@uni_lab.explainer("boom")
def boom(model, x, target, seeds=None, *, steps: int = 3, output: str = "prob"):
    """Integrated gradients that raise on any all-white image (a plugin that fails mid-run)."""
    if (x.flatten(1).min(1).values >= 0.999).any():
        raise RuntimeError("boom: white image")
    return uni_lab.explain("ig:black", model, x, target, steps=steps, output=output)


if _kind in ("write", "torn"):
    import zarr.storage._local as _local

    _original_put = _local._put

    def _put(path, value, exclusive=False):
        if path.parent.name != _var or path.name.startswith("."):  # other variables, metadata
            return _original_put(path, value, exclusive)
        _counts["put"] += 1
        if _counts["put"] == int(_nth):
            if _kind == "torn":
                data = bytes(value.as_buffer_like())
                with _local._atomic_write(path, "wb") as f:
                    f.write(data[: max(1, len(data) // 2)])
                    f.flush()
                    os.fsync(f.fileno())
                    _die()
            _die()
        return _original_put(path, value, exclusive)

    _local._put = _put
