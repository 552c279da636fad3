"""What every explainer returns, path method or not."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .schema import TRACE_KEYS  # the store's names for a trace's keys


@dataclass
class Explanation:
    """Attributions for a batch, with what a path method saw along the way.

    ``attribution`` has the shape of the input ``(N, 3, H, W)``. Path methods also fill
    ``baseline`` (the ``x'`` used), ``trace`` (``{key: (N, K + 1)}`` for the keys in
    :data:`TRACE_KEYS`, step 0 at the baseline and step K at the input) and
    ``completeness_error`` ``(N,)``. ``extras`` holds further per-image scalars ``(N,)``.
    """

    attribution: torch.Tensor
    baseline: torch.Tensor | None = None
    trace: dict[str, torch.Tensor] | None = None
    completeness_error: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def detach(self) -> "Explanation":
        d = lambda t: None if t is None else t.detach()
        return Explanation(d(self.attribution), d(self.baseline),
                           None if self.trace is None else {k: d(v) for k, v in self.trace.items()},
                           d(self.completeness_error), {k: d(v) for k, v in self.extras.items()})
