"""Files: atomic writes (every file the project writes appears whole or not at all) and content hashes.

The data goes to a uniquely named temporary file in the same folder (so concurrent writers never
share one), is flushed and fsynced, then renamed over the target. On any failure (full disk,
read-only folder) the temporary file is removed and the caller gets one `MmadError` line naming the
file; the old file, if any, is left as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import MmadError


def _fail(path: Path, e: OSError) -> MmadError:
    reason = e.strerror or type(e).__name__
    return MmadError(f"{path}: cannot write ({reason}); free disk space or choose a writable folder, then rerun")


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", *, encoding: str | None = None) -> Iterator[Any]:
    """`open(path, mode)` for writing whose result replaces `path` only if the block succeeds."""
    path = Path(path)
    if "w" not in mode:
        raise ValueError("atomic_open writes whole files: use a 'w' mode")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _fail(path, e) from None
    ok = False
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; ours are ordinary outputs
        os.replace(tmp, path)
        ok = True
    except OSError as e:
        raise _fail(path, e) from None
    finally:
        if not ok:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, **dump_kw: Any) -> Path:
    dump_kw.setdefault("indent", 1)
    return write_text(path, json.dumps(obj, **dump_kw))


def write_with(path: str | Path, writer: Callable[[io.BytesIO], Any]) -> Path:
    """For libraries that write to a file object (PIL `save`, matplotlib `savefig`, `np.save`):
    render into memory first, so a failing writer leaves no 0-byte or half file behind."""
    buf = io.BytesIO()
    writer(buf)
    return write_bytes(path, buf.getvalue())


def save_figure(fig, path: str | Path, **kw: Any) -> Path:
    fmt = kw.pop("format", None) or Path(path).suffix.lstrip(".") or "png"
    return write_with(path, lambda buf: fig.savefig(buf, format=fmt, **kw))


def save_npy(path: str | Path, array) -> Path:
    import numpy as np

    return write_with(path, lambda buf: np.save(buf, np.asarray(array), allow_pickle=False))


def save_image(image, path: str | Path, format: str | None = None, **kw: Any) -> Path:
    fmt = format or {"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF"}.get(Path(path).suffix.lstrip(".").lower(), Path(path).suffix.lstrip(".").upper() or "PNG")
    return write_with(path, lambda buf: image.save(buf, format=fmt, **kw))


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB pieces (weights files are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_toml(path: Path, see: str) -> dict:
    """A TOML file a user wrote, or one MmadError line naming it and where its format is described (`see`)."""
    import tomllib

    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise MmadError(f"{path}: not valid TOML ({e}); see {see}") from None
    except UnicodeDecodeError:
        raise MmadError(f"{path}: not UTF-8 text; save it as UTF-8") from None
