"""Query and reference images as the retriever reads them: references decoded small (the encoders work
at <= 224 px), and a large query shrunk the same way so both reach the patch re-ranker alike."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..errors import MmadError

THUMB_PX = 320


def open_image(image) -> Image.Image:
    """A PIL image as given, or the file at a path as RGB (a one-line error naming a missing or unreadable file)."""
    if isinstance(image, Image.Image):
        return image
    p = Path(image)
    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise MmadError(f"{p}: image not found") from None
    except OSError as e:
        raise MmadError(f"{p}: not a readable image ({e})") from None


def shrunk(image: Image.Image, size: int = THUMB_PX) -> Image.Image:
    """The query as the references are decoded (`thumb`), so both reach the re-ranker alike."""
    if max(image.size) <= size:
        return image
    im = image.convert("RGB")
    im.thumbnail((size, size))
    return im


def thumb(path: Path, size: int = THUMB_PX) -> Image.Image:
    im = open_image(path)
    im.thumbnail((size, size))  # the encoders work at <= 224 px; smaller decodes are faster
    return im
