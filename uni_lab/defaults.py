"""Defaults a user meets on the command line and in Python, each written once.

Torch-free on purpose: the CLI builds its parser from these before importing anything heavy,
so ``uni-lab --help`` and a mistyped flag answer at once.
"""
DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_METHODS = ("uni", "ig:black", "ig:white", "ig:mean", "ig:uniform", "ig:gaussian", "ig:blur")
# The methods the figure scripts compute for their default stores (figures/, README's figure table):
# the paper's comparison of UNI with the path methods that move the baseline or the path.
FIGURE_METHODS = ("uni", "ig:black", "ig:blur", "blur_ig", "guided_ig")
DEFAULT_OUT = "runs/default.zarr"
DEFAULT_STEPS = 15  # Riemann steps B of every path method (docs/methods.md §8)
DEFAULT_BATCH = 8  # images per batch of a run or an evaluation
# How an image becomes the model's input: the model's own eval transform (resize + centre crop
# at its crop_pct), a plain 0.875 centre crop, or the whole image squashed to the input size.
RESIZES = ("model", "crop", "full")
# Largest image accepted, in pixels, read from the header before decoding (--max-pixels): a
# 10000×10000 photograph, 1.2 GB as float32 RGB per decoding process.
DEFAULT_MAX_PIXELS = 100_000_000
SEVERITIES = (1, 2, 3, 4, 5)  # ImageNet-C corruption severities
PERTURBED_METRICS = ("robustness", "bias")  # metrics computed on attacked and corrupted inputs
# `uni-lab bench`'s workload: a 64-px pass of 16 images through the default model
BENCH = {"model": DEFAULT_MODEL, "batch_size": 16, "size": 64, "steps": DEFAULT_STEPS, "pgd_steps": 10, "reps": 4,
         "method_batch": 4}
