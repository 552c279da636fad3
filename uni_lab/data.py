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

Bounded before decoding: a file whose header declares more than ``max_pixels`` pixels
(:data:`DEFAULT_MAX_PIXELS`, ``--max-pixels N`` raises it) is a bad file, refused from its
size alone; nothing of it is decoded.

What a listed folder holds (not searched recursively): its entries named like images (by
suffix, :data:`IMAGE_SUFFIXES`) are its images. Such an entry that is not a regular file (a
folder named ``a.png``, a FIFO, a dangling symlink, a symlink loop) is a bad file, named like
an undecodable one; a FIFO is never opened (reads open without blocking and refuse anything
but a regular file), so nothing hangs. Subfolders and other special entries (FIFOs, sockets,
broken links not named like images) are left out and named in a warning; subfolders are never
entered, so a symlink to an ancestor cannot make the listing recur. Regular files with other
suffixes (``notes.txt``) are left out silently.

The same image listed twice (one path twice, two paths to one file, hard links included, or a
photograph name twice) is a bad entry too: the first listing is kept, the repeat is refused
(or, with ``--skip-bad-images``, left out and listed).
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .defaults import DEFAULT_MAX_PIXELS
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


@contextmanager
def _opened(data: bytes, path: Path, max_pixels: int):
    """The PIL image of ``data``, refused when its header declares more than ``max_pixels``
    pixels. PIL's own guard is off meanwhile: it raises past twice its fixed limit before the
    size can be read, and ``max_pixels`` is the limit here."""
    from PIL import Image as PILImage

    saved, PILImage.MAX_IMAGE_PIXELS = PILImage.MAX_IMAGE_PIXELS, None
    try:
        with PILImage.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise InputError(f"image file '{path}' is {w}×{h} px ({w * h / 1e6:.0f} megapixels), over the limit of "
                                 f"{max_pixels} pixels; downscale it, or raise the limit with --max-pixels N "
                                 "(max_pixels= in Python).")
            yield im
    finally:
        PILImage.MAX_IMAGE_PIXELS = saved


def _read_file(path: Path, data: bytes | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, list[str]]:
    from PIL import ImageOps, UnidentifiedImageError

    notes = []
    if data is None:
        data = _read_regular(path)
    if not data:
        raise InputError(f"image file '{path}' is empty (0 bytes); remove it or replace it with a real image.")
    try:
        if _is_png16_colour(data):
            with _opened(data, path, max_pixels) as im:
                im.verify()  # CRCs and truncation, before OpenCV (which only prints libpng's complaints)
            with _opened(data, path, max_pixels) as im:
                return _read_png16(data, path, im.getexif().get(0x0112, 1))
        with _opened(data, path, max_pixels) as im:
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


def _special(p: Path) -> str | None:
    """What ``p`` is when it is not a regular file (following symlinks), without opening it;
    None for a regular file."""
    try:
        mode = p.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
        return "a symlink to a missing file" if p.is_symlink() else f"a path that cannot be examined ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO (not opened)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device file")


def _not_an_image(p: Path, what: str) -> str:
    return f"'{p}' is {what}, not an image file; remove it or leave it out."


def _read_regular(path: Path) -> bytes:
    """The bytes of a regular file. Opened without blocking and checked before reading, so a
    FIFO that replaced a file since the listing is refused rather than waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise InputError(_not_an_image(path, _special(path) or "a special file"))
            return f.read()
    except OSError as exc:
        fix = "fix its permissions" if exc.errno in (errno.EACCES, errno.EPERM) else "replace it"
        raise InputError(f"image file '{path}' cannot be read ({exc.strerror}); {fix} or leave it out.") from None


def _folder(p: Path) -> tuple[list[tuple[str, str, str | None]], str | None]:
    """The image items of folder ``p`` (not searched recursively) and a note naming its left-out
    subfolders and special entries, if any."""
    try:
        names = sorted(p.iterdir())
    except OSError as exc:
        raise InputError(f"folder '{p}' cannot be listed ({exc.strerror}); fix its permissions or leave it out.") from None
    items, left_out = [], []
    for f in names:
        what = _special(f)
        if f.suffix.lower() in IMAGE_SUFFIXES:
            items.append(("file", str(f), None if what is None else _not_an_image(f, what)))
        elif what is not None:
            left_out.append(f"{f.name}/" if what == "a folder" else f"{f.name} ({what.replace(' (not opened)', '')})")
    subfolders = [n for n in left_out if n.endswith("/")]
    if not items:
        hint = (f"; subfolders ({', '.join(subfolders[:3])}{' ...' if len(subfolders) > 3 else ''}) are not searched: "
                "give them to --images" if subfolders else "")
        raise InputError(f"folder '{p}' holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}){hint}.")
    note = None
    if left_out:
        entries = ("1 entry that is not an image file" if len(left_out) == 1
                   else f"{len(left_out)} entries that are not image files")
        note = (f"folder '{p}': left out {entries}{' (subfolders are not searched)' if subfolders else ''}: "
                f"{', '.join(left_out[:10])}{' ...' if len(left_out) > 10 else ''}")
    return items, note


def _expand(specs) -> tuple[list[tuple[str, str, str | None]], list[str]]:
    """Each spec to ``(kind, ref, why it is bad or None)`` items (skimage names, files, folders'
    image files) and notes on what folders left out."""
    items, notes = [], []
    for spec in specs:
        spec = str(spec)
        if not spec.strip():
            raise InputError("--images got an empty name; give image files, folders or scikit-image photograph names "
                             "('.' for the current folder; leave --images out for the eight photographs).")
        p = Path(spec).expanduser()
        if p.is_dir():
            found, note = _folder(p)
            items += found
            notes += [note] if note else []
        elif p.is_file():
            items.append(("file", str(p), None))
        elif spec in SKIMAGE_PHOTOS:
            items.append(("skimage", spec, None))
        elif os.path.lexists(p):  # there, but no regular file: a FIFO, a dangling symlink, a loop
            items.append(("file", str(p), _not_an_image(p, _special(p) or "a special file")))
        elif p.suffix or "/" in spec:
            raise InputError(f"image file '{spec}' does not exist.")
        else:
            raise InputError(f"'{spec}' is neither an image file, a folder, nor a scikit-image photograph "
                             f"({', '.join(SKIMAGE_PHOTOS)}).")
    return items, notes


def _mark_repeats(items) -> tuple[list, set[int]]:
    """Items with every repeat of an earlier one (same photograph, same file by device and inode)
    made bad, and the indices of the repeats."""
    first, out, repeats = {}, [], set()
    for i, (kind, ref, reason) in enumerate(items):
        key = ("skimage", ref) if kind == "skimage" else None
        if kind == "file" and reason is None:
            try:
                st = os.stat(ref)
                key = (st.st_dev, st.st_ino)
            except OSError:  # vanished or unreadable: named when it is read
                pass
        if key is not None and key in first:
            was = first[key]
            what = (f"'{ref}' is listed twice" if was == ref else f"image file '{ref}' is the same file as '{was}'")
            out.append((kind, ref, f"{what}; give each image once."))
            repeats.add(i)
            continue
        if key is not None:
            first[key] = ref
        out.append((kind, ref, reason))
    return out, repeats


def _tail(key: tuple, k: int) -> tuple:
    return (None,) * max(0, k - len(key)) + key[-k:]


def _image_ids(items, repeats: set[int]) -> list[str | None]:
    """Unique, order-independent ids of the listed items (None for repeats); see :func:`list_images`."""
    keys = {}
    for i, (kind, ref, _) in enumerate(items):
        if i not in repeats:
            parts = ("skimage", ref) if kind == "skimage" else Path(os.path.abspath(ref)).parts[1:]
            keys[i] = (*parts[:-1], ref if kind == "skimage" else Path(ref).stem)
    groups: dict[str, list[int]] = {}
    for i, key in keys.items():
        groups.setdefault(key[-1], []).append(i)
    ids: list[str | None] = [None] * len(items)
    for stem, members in groups.items():
        if len(members) == 1:
            ids[members[0]] = stem
            continue
        full = {i: keys[i] for i in members}
        twins = Counter(full.values())
        for i in members:
            if twins[full[i]] > 1:  # one folder, one stem: the extensions tell them apart
                full[i] = (*full[i][:-1], Path(items[i][1]).name)
        left = set(members)
        for k in range(2, max(map(len, full.values())) + 2):  # distinct keys differ once padded to the longest
            counts = Counter(_tail(full[i], k) for i in members)
            for i in sorted(left):
                if counts[_tail(full[i], k)] == 1:
                    ids[i] = "/".join(x for x in _tail(full[i], k) if x is not None)
                    left.discard(i)
            if not left:
                break
    counts = Counter(x for x in ids if x is not None)
    for i, x in enumerate(ids):  # contrived cross-stem clashes (x/a.png.png and x/a.png beside x/a.jpg)
        if x is not None and counts[x] > 1:
            kind, ref, _ = items[i]
            ids[i] = os.path.abspath(ref) if kind == "file" else f"skimage.data.{ref}"
    return ids


def _decode(kind: str, ref: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, list[str], str, int, str]:
    """``(H×W×3 float32, conversion notes, digest, size, source)`` of one listed item; raises
    :class:`InputError` naming the file for anything this toolkit refuses."""
    if kind == "skimage":
        raw = _skimage_photo(ref)
        arr, notes = _to_float_rgb(raw, ref)
        digest, nbytes, source = _digest(np.ascontiguousarray(raw).tobytes()), int(raw.nbytes), f"skimage.data.{ref}"
    else:
        path = Path(ref)
        data = _read_regular(path)
        arr, notes = _read_file(path, data, max_pixels)
        digest, nbytes, source = _digest(data), len(data), str(path)
    if min(arr.shape[:2]) < MIN_SIDE:
        raise InputError(f"image '{source}' is {arr.shape[1]}×{arr.shape[0]} px; at least {MIN_SIDE} px a side is needed.")
    if not np.isfinite(arr).all():
        raise InputError(f"image '{source}' holds NaN or Inf values; repair the file or leave it out.")
    return arr, notes, digest, nbytes, source


class _Inspect(torch.utils.data.Dataset):
    """The check pass over the listing: notes, size and digest of each item, or why it is bad."""

    def __init__(self, items, max_pixels: int):
        self.items, self.max_pixels = list(items), max_pixels

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        kind, ref, reason = self.items[i]
        if reason is not None:
            return i, reason, None
        try:
            _, notes, digest, nbytes, source = _decode(kind, ref, self.max_pixels)
            return i, None, (notes, digest, nbytes, source)
        except InputError as exc:
            return i, str(exc), None


def _as_is(item):
    return item


def _loader(dataset, workers: int, **kwargs):
    return torch.utils.data.DataLoader(dataset, num_workers=max(0, int(workers)), **kwargs)


def check_max_pixels(max_pixels) -> int:
    """``max_pixels`` as an int; ``1e9`` is accepted, ``0``, ``-1``, ``2.5`` and NaN are not."""
    whole = isinstance(max_pixels, (int, np.integer)) or (isinstance(max_pixels, float) and max_pixels.is_integer())
    if isinstance(max_pixels, bool) or not whole or max_pixels < 1:
        raise InputError(f"--max-pixels must be a whole number of pixels, at least 1; got {max_pixels!r}.")
    return int(max_pixels)


def list_images(specs=None, workers: int = 0, skip_bad: bool = False,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[list[ImageEntry], list[BadImage]]:
    """List and check the images of ``specs`` before any compute; nothing decoded is kept.

    ``specs``: photograph names, files and folders (None: scikit-image's eight photographs).
    A bad file stops here with one line naming every bad file (:class:`InputError`), or with
    ``skip_bad`` is left out and returned among the skipped ones. Files whose header declares
    more than ``max_pixels`` pixels are bad, refused before decoding.

    Ids are unique and stable: an image's id is its file stem (a photograph's name); images
    sharing a stem are told apart by the shortest tail of their absolute paths that differs,
    at least one folder long (``x/same.png`` and ``y/same.png`` are ``x/same`` and ``y/same``;
    ``x/a.png`` and ``x/a.jpg`` beside each other keep their extensions, ``x/a.png``, ``x/a.jpg``;
    a photograph clashing with a file is ``skimage/NAME``). Ids depend on the set of listed files,
    not on their order, and count every listed file, bad ones too, so an image keeps its id
    whether or not another one is skipped. The store records each id's source (the path as
    given, with its conversions) in its ``image_source`` coordinate and its configuration's
    ``images`` mapping."""
    max_pixels = check_max_pixels(max_pixels)
    if specs is None:
        specs = SKIMAGE_PHOTOS
    elif isinstance(specs, (str, Path)):
        specs = [specs]
    specs = list(specs)
    if not specs:
        raise InputError("no images given; give image files, folders or scikit-image photograph names "
                         "(None for the eight photographs).")
    items, left_out = _expand(specs)
    items, repeats = _mark_repeats(items)
    ids = _image_ids(items, repeats)
    for note in left_out:
        warnings.warn(note, stacklevel=2)
    checked = [None] * len(items)
    for i, error, info in _loader(_Inspect(items, max_pixels), workers, batch_size=None, collate_fn=_as_is):
        checked[i] = (error, info)
    entries, bad = [], []
    for (kind, value, _), image_id, (error, info) in zip(items, ids, checked):
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
    message stays one line rather than a worker's traceback). ``max_pixels`` bounds a file that
    grew since the listing, as :func:`list_images` does."""

    def __init__(self, entries, size, resize: str = "full", crop_pct: float = 0.875,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        self.entries, self.size, self.resize, self.crop_pct = list(entries), tuple(size), resize, crop_pct
        self.max_pixels = check_max_pixels(max_pixels)

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, i):
        e = self.entries[i]
        try:
            arr, _, digest, _, source = _decode(e.kind, e.ref, self.max_pixels)
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
