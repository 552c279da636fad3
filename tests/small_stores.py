"""Small stores for the figure and notebook tests: the tiny model, two photographs at 16 px,
and every evaluation the figures read (metrics, attacks, corruptions), built once per session."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import uni_lab
from conftest import train_tiny

METHODS = ("uni", "ig:black", "ig:blur")
IMAGES = ("chelsea", "coffee")
CORRUPTIONS = ("gaussian_noise", "brightness")
SEVERITIES = (1, 2)
# Small budgets: the figures need every variable to exist, not paper-grade estimates.
SETS = {"mufidelity.n_subsets": 16, "deletion.n_steps": 4, "insertion.n_steps": 4, "robustness.k": 20,
        "fgsm_attribution.k": 20, "fgsm_attribution.surrogate_steps": 2,
        "riemann_stability.steps": [1, 2, 4], "riemann_stability.reference_steps": 8}


def _once(path: Path, build) -> Path:
    """Build into a side folder and rename: a half-built store is never mistaken for a finished one."""
    if path.exists():
        return path
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    tmp.rename(path)
    return path


def evaluated_store(base: Path) -> Path:
    """Run (B = 4) plus ``uni_lab.evaluate`` with every metric, attack and corruption a figure reads."""
    from uni_lab import evaluate

    def build(out):
        clf = train_tiny()
        uni_lab.run(models=clf, images=list(IMAGES), methods=list(METHODS), steps=4, out=out, progress=False)
        evaluate(out, metrics="mufidelity,deletion,insertion,bias,monotonicity,curvature,riemann_stability",
                 attacks="fgsm_attribution,random_noise", corruptions=",".join(CORRUPTIONS), severities=SEVERITIES,
                 perturbed_metrics="robustness,bias", models=[clf], sets=SETS, progress=False)

    return _once(base / "evaluated.zarr", build)


def stores_over_steps(base: Path, steps=(2, 4, 8)) -> Path:
    """A folder of plain runs, one per Riemann step count (what fig7 reads)."""
    folder = base / "over_steps"

    def build(out):
        clf = train_tiny()
        out.mkdir()
        for b in steps:
            uni_lab.run(models=clf, images=list(IMAGES), methods=list(METHODS), steps=b, out=out / f"B{b}.zarr",
                        progress=False)

    return _once(folder, build)
