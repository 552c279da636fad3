"""Images in, pixel-space tensors out: scikit-image's photographs, files, or folders.

Two passes, so that memory does not grow with the number of images. :func:`list_images`
lists every image and checks it before any compute: it reads each file once (in a
DataLoader's workers), hashes its bytes (a resumed run refuses a changed file), decodes it to
find bad files and learn its conversions, and keeps nothing decoded. :class:`ImageDataset`
then decodes the images again, batch by batch, for the runner (:func:`batches`: a
``torch.utils.data.DataLoader``, pinned memory on CUDA).

Conversions are documented, not silent: grayscale is replicated to three channels, alpha is
dropped, palette/CMYK images are converted to RGB, 16-bit images are scaled by 1/65535
(16-bit RGB(A) PNGs are read at 16 bits with OpenCV: Pillow would cut them to 8), 32-bit
float images are taken as intensities in [0, 1] (outside it, or NaN/Inf, is an error), an
EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), and of an animated or
multi-page file the first frame is used. Each conversion is reported as a warning and
recorded in the store's ``image_source``.
"""
from __future__ import annotations

import hashlib
import io
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
WARN_CONVERSIONS = 10  # conversions warned one by one; past that, one summary line (all are in image_source)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Image:
    id: str
    pixels: torch.Tensor  # (3, H, W) float32 in [0, 1], already resized and cropped
    source: str


@dataclass(frozen=True)
class ImageEntry:
    """A listed, checked image: what the store records about it, nothing decoded."""
    id: str
    kind: str  # "file" or "skimage"
    ref: str  # the file's path or the photograph's name
    source: str  # where it came from, with its conversions: the store's image_source
    nbytes: int  # file size (a photograph's array size)
    digest: str  # BLAKE2b of the file's bytes (the photograph's array): resume refuses a changed image


@dataclass(frozen=True)
class BadImage:
    source: str
    reason: str  # the one-line message a run without --skip-bad-images stops with


def _skimage_photo(name: str) -> np.ndarray:
    import skimage.data

    arr = getattr(skimage.data, name)()
    return arr[0] if isinstance(arr, tuple) else arr  # stereo_motorcycle: the left view


def _digest(data) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# PIL.Image.Transpose applied by ImageOps.exif_transpose per EXIF orientation, as numpy (H, W, C)
# operations, for the 16-bit arrays that never become PIL images.
_ORIENT_NUMPY = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _is_png16_colour(data: bytes) -> bool:
    """A 16-bit RGB or RGBA PNG, from its IHDR (bit depth at byte 24, colour type at 25)."""
    return data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) > 25 and data[24] == 16 and data[25] in (2, 6)


def _read_png16(data: bytes, path: Path, orientation: int) -> tuple[np.ndarray, list[str]]:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3:
        raise InputError(f"image file '{path}' is damaged or truncated (16-bit PNG OpenCV cannot decode); re-export it.")
    notes = ["16-bit RGB read at 16 bits, scaled to [0,1]"]
    if arr.shape[2] == 4:
        notes.append("alpha dropped")
    arr = arr[..., 2::-1].astype(np.float32) / 65535.0  # OpenCV's BGR(A) to RGB
    if orientation in _ORIENT_NUMPY:
        arr = np.ascontiguousarray(_ORIENT_NUMPY[orientation](arr))
        notes.append(f"EXIF orientation {orientation} applied")
    return arr, notes


def _read_file(path: Path, data: bytes | None = None) -> tuple[np.ndarray, list[str]]:
    from PIL import Image as PILImage, ImageOps, UnidentifiedImageError

    notes = []
    if data is None:
        data = path.read_bytes()
    if not data:
        raise InputError(f"image file '{path}' is empty (0 bytes); remove it or replace it with a real image.")
    try:
        if _is_png16_colour(data):
            with PILImage.open(io.BytesIO(data)) as im:
                im.verify()  # CRCs and truncation, before OpenCV (which only prints libpng's complaints)
            with PILImage.open(io.BytesIO(data)) as im:
                return _read_png16(data, path, im.getexif().get(0x0112, 1))
        with PILImage.open(io.BytesIO(data)) as im:
            frames = getattr(im, "n_frames", 1)
            orientation = im.getexif().get(0x0112, 1)
            im.load()
            if frames > 1:
                notes.append(f"frame 0 of {frames} used")
            if orientation not in (1, None, 0):
                im = ImageOps.exif_transpose(im)
                notes.append(f"EXIF orientation {orientation} applied")
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
    except (OSError, SyntaxError) as exc:  # PIL's verify() raises SyntaxError on a broken PNG chunk
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

    ``resize="full"`` resizes the whole photograph to ``size``, so that every pixel
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


def _decode(kind: str, ref: str) -> tuple[np.ndarray, list[str], str, int, str]:
    """``(H×W×3 float32, conversion notes, digest, size, source)`` of one listed item; raises
    :class:`InputError` naming the file for anything this toolkit refuses."""
    if kind == "skimage":
        raw = _skimage_photo(ref)
        arr, notes = _to_float_rgb(raw, ref)
        digest, nbytes, source = _digest(np.ascontiguousarray(raw).tobytes()), int(raw.nbytes), f"skimage.data.{ref}"
    else:
        path = Path(ref)
        data = path.read_bytes()
        arr, notes = _read_file(path, data)
        digest, nbytes, source = _digest(data), len(data), str(path)
    if min(arr.shape[:2]) < MIN_SIDE:
        raise InputError(f"image '{source}' is {arr.shape[1]}×{arr.shape[0]} px; at least {MIN_SIDE} px a side is needed.")
    if not np.isfinite(arr).all():
        raise InputError(f"image '{source}' holds NaN or Inf values; repair the file or leave it out.")
    return arr, notes, digest, nbytes, source


class _Inspect(torch.utils.data.Dataset):
    """The check pass over the listing: notes, size and digest of each item, or why it is bad."""

    def __init__(self, items):
        self.items = [(kind, str(value)) for kind, value in items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        kind, ref = self.items[i]
        try:
            _, notes, digest, nbytes, source = _decode(kind, ref)
            return i, None, (notes, digest, nbytes, source)
        except InputError as exc:
            return i, str(exc), None


def _as_is(item):
    return item


def _loader(dataset, workers: int, **kwargs):
    return torch.utils.data.DataLoader(dataset, num_workers=max(0, int(workers)), **kwargs)


def list_images(specs=None, workers: int = 0, skip_bad: bool = False) -> tuple[list[ImageEntry], list[BadImage]]:
    """List and check the images of ``specs`` before any compute; nothing decoded is kept.

    Ids are unique (file stems, ``-2`` appended on clashes, counted over every listed file, so
    an image keeps its id whether or not another one is skipped). A bad file stops here with
    one line naming every bad file (:class:`InputError`), or with ``skip_bad`` is left out and
    returned among the skipped ones."""
    items = _expand(specs or SKIMAGE_PHOTOS)
    checked = [None] * len(items)
    for i, error, info in _loader(_Inspect(items), workers, batch_size=None, collate_fn=_as_is):
        checked[i] = (error, info)
    entries, bad, seen = [], [], {}
    for (kind, value), (error, info) in zip(items, checked):
        base = value if kind == "skimage" else Path(value).stem
        seen[base] = seen.get(base, 0) + 1
        image_id = base if seen[base] == 1 else f"{base}-{seen[base]}"
        if error is not None:
            bad.append(BadImage(f"skimage.data.{value}" if kind == "skimage" else str(value), error))
            continue
        notes, digest, nbytes, source = info
        if notes:
            source += f" [{', '.join(notes)}]"
        entries.append(ImageEntry(image_id, kind, str(value), source, nbytes, digest))
    if bad and not skip_bad:
        if len(bad) == 1:
            raise InputError(f"{bad[0].reason} (--skip-bad-images leaves bad files out)")
        raise InputError(f"{len(bad)} bad image files: " + " | ".join(b.reason for b in bad[:5])
                         + (f" | ... and {len(bad) - 5} more" if len(bad) > 5 else "")
                         + " (--skip-bad-images leaves them out)")
    if bad:
        warnings.warn(f"skipped {len(bad)} bad image files (--skip-bad-images): "
                      + "; ".join(b.source for b in bad[:10]) + (" ..." if len(bad) > 10 else ""), stacklevel=2)
    if not entries:
        raise InputError("every image was bad and skipped; nothing to explain.")
    converted = [e.source for e in entries if e.source.endswith("]")]
    for source in converted[:WARN_CONVERSIONS]:
        path, _, notes = source.rpartition(" [")
        warnings.warn(f"{path}: converted ({notes[:-1]})", stacklevel=2)
    if len(converted) > WARN_CONVERSIONS:
        warnings.warn(f"{len(converted) - WARN_CONVERSIONS} more images converted; the store's image_source names each.",
                      stacklevel=2)
    return entries, bad


class ImageDataset(torch.utils.data.Dataset):
    """Listed images decoded on demand to ``(3, H, W)`` pixel-space tensors at the model's size.

    An item is ``(index, tensor)``, or ``(index, message)`` when the file no longer decodes or
    its bytes changed since the listing (raised in the main process by :func:`collate`, so the
    message stays one line rather than a worker's traceback)."""

    def __init__(self, entries, size, resize: str = "full", crop_pct: float = 0.875):
        self.entries, self.size, self.resize, self.crop_pct = list(entries), tuple(size), resize, crop_pct

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, i):
        e = self.entries[i]
        try:
            arr, _, digest, _, source = _decode(e.kind, e.ref)
        except InputError as exc:
            return i, f"{exc} (it was readable when the run listed its images)"
        if digest != e.digest:
            return i, f"image '{source}' changed while the run was going; restart the run."
        return i, preprocess(arr, self.size, self.resize, self.crop_pct)


def collate(items) -> tuple[list[int], torch.Tensor]:
    """A batch ``(indices, (B, 3, H, W) tensor)`` from :class:`ImageDataset` items."""
    errors = [x for _, x in items if isinstance(x, str)]
    if errors:
        raise InputError(errors[0])
    return [i for i, _ in items], torch.stack([x for _, x in items])


def batches(dataset: ImageDataset, index_batches, workers: int = 0, pin_memory: bool = False):
    """Iterate ``(indices, pixels)`` over ``index_batches`` (lists of dataset indices), decoded in
    ``workers`` processes (0: in this one), at most two batches ahead per worker."""
    index_batches = [list(b) for b in index_batches if len(b)]
    if not index_batches:
        return iter(())
    return iter(_loader(dataset, workers, batch_sampler=index_batches, collate_fn=collate, pin_memory=pin_memory))


def load_images(specs=None, size=(224, 224), resize: str = "full", crop_pct: float = 0.875) -> list[Image]:
    """Load and preprocess every image at once (for a few photographs; runs stream them)."""
    entries, _ = list_images(specs)
    ds = ImageDataset(entries, size, resize, crop_pct)
    images = []
    for i, e in enumerate(entries):
        _, pixels = collate([ds[i]])
        images.append(Image(e.id, pixels[0], e.source))
    return images
