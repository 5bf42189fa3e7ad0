"""Reading the benchmark's image and mask files: any image as 8-bit RGB, masks as MMAD read them
(protocol §7), and an up-front check that decodes a whole file so a damaged one stops a run before it starts."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import MmadError
from .keys import IMAGE_SUFFIXES


def _require_image_file(path: Path) -> int:
    """The file's size; a clear error for a missing path, a folder, or an empty file."""
    if not path.exists():
        raise MmadError(f"image {path} not found; check --data and the paths in the question file")
    if not path.is_file():
        raise MmadError(f"image {path} is a folder, not an image file; check the paths in the question file")
    size = path.stat().st_size
    if size == 0:
        raise MmadError(f"image {path} is empty (0 bytes); replace it with the real file")
    return size


def load_rgb(path: Path) -> Image.Image:
    """Any image as 8-bit RGB (grayscale, 16-bit and CMYK files included)."""
    _require_image_file(path)
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except MmadError:
        raise
    except Exception as e:  # PIL raises many types for bad files
        raise MmadError(f"image {path} cannot be read ({type(e).__name__}: {e}); replace the file") from None


def check_image_file(path: Path) -> None:
    """Up-front check that decodes the whole image, so a damaged file (truncated, corrupted in the
    middle, a decompression bomb) stops a run before it starts rather than halfway through."""
    _require_image_file(path)
    try:
        with _strict_decoding(), Image.open(path) as im:
            im.load()  # every format PIL reads; a truncated file raises instead of being padded
    except Exception as e:  # PIL raises many types for bad files
        text = str(e)
        if "truncated" in text or isinstance(e, EOFError):
            raise MmadError(f"image {path} is truncated (the file ends early); replace it with the complete file") from None
        raise MmadError(f"image {path} cannot be read ({type(e).__name__}: {' '.join(text.split())[:200]}); replace the file") from None


_TRUNCATION_GUARD = threading.Lock()


@contextlib.contextmanager
def _strict_decoding():
    """Libraries may set PIL's global LOAD_TRUNCATED_IMAGES (pad short files silently); checks never do."""
    from PIL import ImageFile

    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        yield
        return
    with _TRUNCATION_GUARD:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = True


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = a.max() or 1.0
        im = Image.fromarray((a / hi * 255).round().astype(np.uint8))
    return im.convert("RGB")


def list_images(folder: Path) -> list[Path]:
    """The folder's image files (by suffix, keys.IMAGE_SUFFIXES) sorted by name; none for a missing folder."""
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def load_mask(path: Path) -> np.ndarray:
    """A boolean mask, read as MMAD did (protocol §7: maximum 1 as is, maximum 255 // 255, else > 0);
    a folder of masks is merged by maximum."""
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise MmadError(f"mask folder {path} holds no mask images; add them or clear 'mask_path'")
        masks = [load_mask(f) for f in files]
        shapes = {m.shape for m in masks}
        if len(shapes) > 1:
            raise MmadError(f"mask folder {path}: masks differ in size {sorted(shapes)}; they must match the image")
        return np.maximum.reduce(masks)
    if not path.exists():
        raise MmadError(f"mask {path} not found; check 'mask_path' (relative to <Dataset>/<category>/)")
    try:
        with Image.open(path) as im:
            a = np.asarray(im)
    except Exception as e:
        raise MmadError(f"mask {path} cannot be read ({type(e).__name__}); replace the file") from None
    if a.ndim == 3:
        a = a.max(axis=2)
    from ..experts.rendering import gt_binary

    return gt_binary(a) > 0
