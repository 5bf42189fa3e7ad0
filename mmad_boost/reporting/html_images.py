"""The report page's pictures: every image it shows, deduplicated by file, made once into a small
JPEG thumbnail in `report_files/` (reused by later reports of the same image) or a data URL."""

from __future__ import annotations

import base64
import hashlib
import os
import sys
from pathlib import Path
from urllib.parse import quote

FILES_DIR = "report_files"


class Images:
    """Every picture the page shows, deduplicated by file; each becomes one thumbnail."""

    def __init__(self, out: Path, thumb_px: int, embed: bool):
        self.out, self.thumb_px, self.embed = out, thumb_px, embed
        self.files_dir = out / FILES_DIR
        self.index: dict[str, int] = {}
        self.sources: list[tuple[Path, str, int]] = []
        self.missing: list[str] = []

    def add(self, path: str | Path | None, label: str, *, sharp: bool = False) -> int | None:
        """`sharp`: a twice larger thumbnail (shown at the same size), so thin expert marks survive."""
        if path is None:
            self.missing.append(label)
            return None
        file = os.path.abspath(path)  # no symlink resolution: one stat per picture, not per question
        px = self.thumb_px * (2 if sharp else 1)
        key = f"{px}|{file}"
        if key not in self.index:
            if not os.path.isfile(file):
                self.missing.append(label)
                return None
            self.index[key] = len(self.sources)
            self.sources.append((Path(file), label, px))
        return self.index[key]

    @staticmethod
    def _thumb_name(src: Path, px: int) -> str:
        st = src.stat()
        h = hashlib.sha1(f"{src}|{st.st_size}|{st.st_mtime_ns}|{px}".encode()).hexdigest()[:20]
        return f"{h}.jpg"

    @staticmethod
    def _make_thumb(src: Path, dst: Path, px: int) -> bool:
        from PIL import Image

        if dst.exists():
            return True  # made by an earlier report of the same image (name hashes size and mtime)
        try:
            with Image.open(src) as im:
                im.draft("RGB", (px, px))  # JPEG: decode at reduced size, much faster
                im = im.convert("RGB")
                im.thumbnail((px, px))
                from ..atomic import save_image

                save_image(im, dst, format="JPEG", quality=82)
            return True
        except Exception as e:  # an unreadable picture must not stop the report
            print(f"warning: {src}: cannot make a thumbnail ({type(e).__name__}: {e})", file=sys.stderr)
            return False

    def table(self, workers: int, progress: bool) -> list:
        """[thumbnail URL, original URL or None, label] per image (None where unreadable)."""
        from concurrent.futures import ThreadPoolExecutor

        self.files_dir.mkdir(parents=True, exist_ok=True)
        names = [self._thumb_name(src, px) for src, _, px in self.sources]
        todo = [i for i, n in enumerate(names) if not (self.files_dir / n).exists()]
        ok = [True] * len(names)
        from ..running.progress import bar as progress_bar, say

        if progress and todo:
            say(f"report: making {len(todo)} thumbnails ({len(names) - len(todo)} reused from earlier reports)")
        bar = progress_bar(len(todo), "thumbnails", "img", enabled_here=progress and len(todo) > 20)  # rate and time left
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for i, good in zip(todo, pool.map(lambda i: self._make_thumb(self.sources[i][0], self.files_dir / names[i], self.sources[i][2]), todo)):
                ok[i] = good
                bar.update(1)
        bar.close()
        out = []
        for (src, label, _), name, good in zip(self.sources, names, ok):
            if not good:
                out.append(None)
            elif self.embed:
                data = base64.b64encode((self.files_dir / name).read_bytes()).decode("ascii")
                out.append([f"data:image/jpeg;base64,{data}", None, label])
            else:
                out.append([f"{FILES_DIR}/{name}", rel_url(src, self.out), label])
        return out


def rel_url(path: Path, base: Path) -> str:
    try:
        rel = os.path.relpath(path, base.resolve())
    except ValueError:  # another drive on Windows
        return path.resolve().as_uri()
    return quote(rel.replace(os.sep, "/"))
