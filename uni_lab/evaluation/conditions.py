"""Where an evaluated input comes from: the stored item, an attack on it, or a corruption of it.

An attack and a corruption are two small strategies over one template: make the perturbed
input, measure it, explain it with the method, store both, read them back. They differ in
whom a perturbed input belongs to: an attack aims at one method (its input is stored per
method, with the map, under one flag); a corruption at a severity is shared by every method
of a model (its input is stored once, flagged on its own, and each method's map after it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UniLabError, named_failure
from ..explanation import Explanation
from ..registry import Plugin
from ..schema import MAP, METHOD, condition, perturbed_variables
from .stored import Batch, explanation_values, read_explanation


class Condition:
    """The stored item itself (``clean``), and the base of the perturbations."""

    kind = "clean"

    def __init__(self, labels: tuple = ()):
        self.labels = tuple(labels)  # ((dim, label), ...)

    @property
    def prefix(self) -> str:
        return condition(self.kind).prefix

    @property
    def dims(self) -> tuple:
        return condition(self.kind).dims

    def sel(self, model, method=None, **extra) -> dict:
        out = {"model": model, **dict(self.labels), **extra}
        if method is not None:
            out[METHOD] = method
        return out


CLEAN = Condition()


@dataclass
class Perturbed:
    """Perturbed inputs of a batch and the method's explanation of them."""

    x: torch.Tensor
    explanation: Explanation


class Perturbation(Condition):
    """An attack or corruption plugin at its labels; :meth:`perturb` is the whole of its work."""

    def __init__(self, plugin: Plugin, labels: tuple):
        super().__init__(labels)
        self.plugin = plugin

    def perturb(self, job, batch: Batch) -> Perturbed:
        """Perturbed inputs and their maps for ``batch``: computed where not stored yet, then read back."""
        job.out.ensure(perturbed_variables(self.kind), {d: job.out.coords[d] for d in self.dims})
        self._compute(job, batch)
        ds, sel = job.out.ds, self.sel(job.model_name, job.method)
        exp = read_explanation(ds, self.kind, sel, batch.ids, job.dev)
        inputs = ds[f"{self.prefix}input"].sel(self._input_sel(job)).sel(image=batch.ids)
        return Perturbed(torch.from_numpy(inputs.transpose("image", *MAP).values).to(batch.x), exp)

    def _compute(self, job, batch: Batch) -> None:
        raise NotImplementedError

    def _input_sel(self, job) -> dict:
        raise NotImplementedError

    def make(self, job, sub: Batch) -> torch.Tensor:
        """The plugin's perturbed inputs of ``sub``, checked to be pixels shaped like them."""
        params = dict(job.params[("attack", self.plugin.name)])
        params.update({k: v for k, v in self.labels if k == "severity"})
        with named_failure(f"{self.kind} '{self.plugin.name}' failed on images {sub.ids} of method '{job.method}'",
                           "nothing was stored for them."):
            xp = self.plugin(model=job.model, x=sub.x, target=sub.target, seeds=sub.seeds,
                             explanation=sub.explanation, **params)
        if not torch.is_tensor(xp) or xp.shape != sub.x.shape or not torch.isfinite(xp).all() \
                or xp.min() < -1e-6 or xp.max() > 1 + 1e-6:
            raise UniLabError(f"{self.kind} '{self.plugin.name}' must return finite pixels in [0, 1] shaped "
                              f"{tuple(sub.x.shape)}; nothing was stored.")
        return xp.detach().to(sub.x)

    def measure(self, job, xp: torch.Tensor, sub: Batch) -> list[dict]:
        """Per image: the perturbed input and what the model makes of it."""
        with torch.no_grad():
            logits = job.model(xp).float()
        kept = (logits.argmax(-1) == sub.target).double().cpu().numpy()
        prob = logits.softmax(-1).gather(1, sub.target.view(-1, 1)).squeeze(1).double().cpu().numpy()
        linf = (xp - sub.x).abs().flatten(1).max(1).values.double().cpu().numpy()
        p = self.prefix
        return [{f"{p}input": xp[j].cpu().numpy(), f"{p}prob": prob[j], f"{p}label_kept": kept[j], f"{p}linf": linf[j]}
                for j in range(len(sub.ids))]

    def maps(self, job, xp: torch.Tensor, sub: Batch) -> list[dict]:
        """Per image: the method's explanation of the perturbed input, as stored values."""
        with named_failure(f"method '{job.method}' failed on the {self.kind}ed images {sub.ids}",
                           "nothing was stored for them."):
            exp = job.call(job.model, xp, sub.target, sub.seeds)
        steps = job.out.ds.sizes["step"]
        return [explanation_values(exp, j, steps, self.prefix) for j in range(len(sub.ids))]


class Attacked(Perturbation):
    """An input perturbed against one method: input and map stored together, under one flag."""

    kind = "attack"

    def __init__(self, plugin: Plugin):
        super().__init__(plugin, (("attack", plugin.name),))

    def _input_sel(self, job) -> dict:
        return self.sel(job.model_name, job.method)

    def _compute(self, job, batch: Batch) -> None:
        todo = job.out.pending(condition(self.kind).maps_flag, self.sel(job.model_name, job.method), batch.ids)
        if not todo:
            return
        sub = batch.take(todo)
        xp = self.make(job, sub)
        for image, inputs, maps in zip(todo, self.measure(job, xp, sub), self.maps(job, xp, sub)):
            job.out.write({**maps, **inputs}, condition(self.kind).maps_flag, self.sel(job.model_name, job.method),
                          image)


class Corrupted(Perturbation):
    """An ImageNet-C copy of the input at a severity, shared by every method of a model: the input is
    stored (and flagged) once, each method's map of it after."""

    kind = "corruption"

    def __init__(self, plugin: Plugin, severity: int):
        super().__init__(plugin, (("corruption", plugin.name), ("severity", severity)))

    def _input_sel(self, job) -> dict:
        return self.sel(job.model_name)

    def _compute(self, job, batch: Batch) -> None:
        out, shared = job.out, self.sel(job.model_name)
        todo = out.pending(condition(self.kind).input_flag, shared, batch.ids)
        if todo:
            sub = batch.take(todo)
            for image, inputs in zip(todo, self.measure(job, self.make(job, sub), sub)):
                out.write(inputs, condition(self.kind).input_flag, shared, image)
        todo = out.pending(condition(self.kind).maps_flag, self.sel(job.model_name, job.method), batch.ids)
        if todo:
            sub = batch.take(todo)
            stored = out.ds[f"{self.prefix}input"].sel(shared).sel(image=todo).transpose("image", *MAP).values
            xp = torch.from_numpy(stored).to(batch.x)
            for image, maps in zip(todo, self.maps(job, xp, sub)):
                out.write(maps, condition(self.kind).maps_flag, self.sel(job.model_name, job.method), image)
