"""Images in, pixel-space tensors out: scikit-image's photographs, files, or folders.

Conversions are documented, not silent: grayscale is replicated to three channels, alpha is
dropped, palette/CMYK images are converted to RGB, 16-bit images are scaled by 1/65535,
32-bit float images are taken as intensities in [0, 1] (outside it, or NaN/Inf, is an error);
each conversion is reported as a warning and recorded in the store's ``image_source``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import InputError

SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "stereo_motorcycle", "retina",
                  "hubble_deep_field", "immunohistochemistry")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm"}
MIN_SIDE = 8


@dataclass
class Image:
    id: str
    pixels: torch.Tensor  # (3, H, W) float32 in [0, 1], already resized and cropped
    source: str


def _skimage_photo(name: str) -> np.ndarray:
    import skimage.data

    arr = getattr(skimage.data, name)()
    return arr[0] if isinstance(arr, tuple) else arr  # stereo_motorcycle: the left view


def _read_file(path: Path) -> tuple[np.ndarray, list[str]]:
    from PIL import Image as PILImage, UnidentifiedImageError

    notes = []
    if path.stat().st_size == 0:
        raise InputError(f"image file '{path}' is empty (0 bytes); remove it or replace it with a real image.")
    try:
        with PILImage.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64) / (65535.0 if mode.startswith("I;16") else max(1.0, np.asarray(im).max()))
                notes.append(f"{mode} scaled to [0,1]")
                return np.repeat(arr[..., None], 3, axis=2).astype(np.float32), notes + ["grayscale→RGB"]
            if mode == "F":  # 32-bit float (TIFF): intensities in [0, 1] as they are; RGB conversion would round them to 0/1
                arr = np.asarray(im, dtype=np.float32)
                if np.nanmin(arr, initial=0) < 0 or np.nanmax(arr, initial=1) > 1:
                    raise InputError(f"float image '{path}' has values in [{np.nanmin(arr):g}, {np.nanmax(arr):g}]; float "
                                     "images must hold intensities in [0, 1]: rescale it, or save it as 8- or 16-bit.")
                return np.repeat(arr[..., None], 3, axis=2), notes + ["float grayscale→RGB"]
            if mode != "RGB":
                notes.append(f"{mode}→RGB" + (" (alpha dropped)" if "A" in mode else ""))
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.float32) / 255.0, notes
    except UnidentifiedImageError as exc:
        raise InputError(f"'{path}' is not an image this toolkit can read (PIL: unidentified format).") from exc
    except OSError as exc:
        raise InputError(f"image file '{path}' is damaged or truncated ({exc}); re-export it.") from exc


def _to_float_rgb(arr: np.ndarray, name: str) -> tuple[np.ndarray, list[str]]:
    notes = []
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        arr, notes = arr.astype(np.float32) / 65535.0, ["16-bit scaled to [0,1]"]
    else:
        arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr, notes = np.repeat(arr[..., None], 3, axis=2), notes + ["grayscale→RGB"]
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr, notes = arr[..., :3], notes + ["alpha dropped"]
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr, notes = np.repeat(arr, 3, axis=2), notes + ["grayscale→RGB"]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"image '{name}' has shape {arr.shape}; expected H×W, H×W×3 or H×W×4.")
    return arr, notes


def preprocess(arr: np.ndarray, size, resize: str = "full", crop_pct: float = 0.875) -> torch.Tensor:
    """Pixel-space ``(3, H, W)`` at the model's input size (bicubic, antialiased).

    ``resize="full"`` (default) resizes the whole photograph to ``size``, so that every pixel
    of it is explained (this is how docs/methods.md §8 checked the embedded model: chelsea → 285,
    coffee → 967); ``"crop"`` resizes the shorter side to ``size / crop_pct`` and centre-crops,
    the usual ImageNet evaluation transform.
    """
    from torchvision.transforms.v2 import functional as TF

    h, w = int(size[0]), int(size[1])
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float()
    if resize == "full":
        t = TF.resize(t, [h, w], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    elif resize == "crop":
        t = TF.resize(t, [int(round(max(h, w) / crop_pct))], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        t = TF.center_crop(t, [h, w])
    else:
        raise InputError(f"resize must be 'full' or 'crop', got '{resize}'.")
    return t.clamp(0, 1).contiguous()


def _expand(specs) -> list[tuple[str, object]]:
    """Each spec to ``(kind, value)`` items: skimage names, files, and folders' image files."""
    items = []
    for spec in specs:
        spec = str(spec)
        p = Path(spec).expanduser()
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(f"folder '{p}' holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}).")
            items += [("file", f) for f in files]
        elif p.is_file():
            items.append(("file", p))
        elif spec in SKIMAGE_PHOTOS:
            items.append(("skimage", spec))
        elif p.suffix or "/" in spec:
            raise InputError(f"image file '{spec}' does not exist.")
        else:
            raise InputError(f"'{spec}' is neither an image file, a folder, nor a scikit-image photograph "
                             f"({', '.join(SKIMAGE_PHOTOS)}).")
    return items


def load_images(specs=None, size=(224, 224), resize: str = "full", crop_pct: float = 0.875) -> list[Image]:
    """Load and preprocess images; ids are unique (file stems, ``-2`` appended on clashes)."""
    images, seen = [], {}
    for kind, value in _expand(specs or SKIMAGE_PHOTOS):
        if kind == "skimage":
            arr, notes = _to_float_rgb(_skimage_photo(value), value)
            base, source = value, f"skimage.data.{value}"
        else:
            arr, notes = _read_file(value)
            base, source = value.stem, str(value)
        if min(arr.shape[:2]) < MIN_SIDE:
            raise InputError(f"image '{source}' is {arr.shape[1]}×{arr.shape[0]} px; at least {MIN_SIDE} px a side is needed.")
        if not np.isfinite(arr).all():
            raise InputError(f"image '{source}' holds NaN or Inf values; repair the file or leave it out.")
        if notes:
            warnings.warn(f"{source}: converted ({', '.join(notes)})", stacklevel=2)
            source += f" [{', '.join(notes)}]"
        seen[base] = seen.get(base, 0) + 1
        image_id = base if seen[base] == 1 else f"{base}-{seen[base]}"
        images.append(Image(image_id, preprocess(arr, size, resize, crop_pct), source))
    return images
