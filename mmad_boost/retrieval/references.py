"""Where reference images come from (MMAD-layout roots, the bundled VisA sample) and the on-disk
cache of the default retriever's reference index."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import MmadError
from ..protocol.image_files import list_images
from ..resources import cache_dir
from .knowledge import knowledge_dataset
from .store import VectorStore

DEFAULT_REFS = 5
POOL_FACTOR = 8  # k-center chooses N references among up to 8 N candidates (encoding all of a big folder is slow)


def _spread(items: list, n: int) -> list:
    """n items evenly spaced over the list (all when it is shorter)."""
    if len(items) <= n:
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


def select_references(vectors, n: int | None) -> list[int]:
    """Rows of `vectors` (L2-normalised embeddings) that cover them: greedy k-center, started at the
    medoid (the row most similar to the mean), each next pick the row farthest from all picked so far.
    All rows when n is 0/None or not smaller than their number; the picks in row order."""
    import numpy as np

    v = np.asarray(vectors, dtype=np.float32)
    if not n or n >= len(v):
        return list(range(len(v)))
    chosen = [int(np.argmax(v @ v.mean(axis=0)))]
    dmin = 1.0 - v @ v[chosen[0]]  # cosine distance to the nearest pick
    for _ in range(n - 1):
        i = int(np.argmax(dmin))
        chosen.append(i)
        dmin = np.minimum(dmin, 1.0 - v @ v[i])
    return sorted(chosen)


def bundled_references(root: Path) -> dict[str, list[Path]]:
    """Normal images of a VisA-layout root (the bundled sample) for the train split (VisA's split_csv), per category."""
    out: dict[str, list[Path]] = {}
    split = root / "split_csv" / "1cls_subset.csv"
    if split.is_file():
        import csv

        with open(split, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("split") == "train" and row.get("label") == "normal" and (root / row["image"]).is_file():
                    out.setdefault(row["object"], []).append(root / row["image"])
    else:
        for d in sorted(root.glob("*/Data/Images/Normal")):
            out[d.parents[2].name] = list_images(d)
    return {k: sorted(v)[:DEFAULT_REFS] for k, v in out.items()}


def mmad_layout_references(root: str | Path, n: int, pool: bool = False) -> dict[tuple[str, str], dict[str, list[Path]]]:
    """{(dataset folder, knowledge dataset): {category: images of <ds>/<cat>/train/good}}: the first n,
    or with `pool` up to POOL_FACTOR x n spread evenly over the folder (sorted), to choose n from."""
    root = Path(root)
    if not root.is_dir():
        raise MmadError(f"{root}: data root not found; pass the folder holding <Dataset>/<category>/train/good")
    out: dict = {}
    for good in sorted(root.glob("*/*/train/good")):
        ds, cat = good.parents[2].name, good.parents[1].name
        imgs = list_images(good)
        imgs = _spread(imgs, POOL_FACTOR * n) if (pool and n) else imgs[: n or None]
        if imgs:
            out.setdefault((ds, knowledge_dataset(ds)), {})[cat] = imgs
    if not out:
        raise MmadError(f"{root}: no <Dataset>/<category>/train/good folders with images; point --data at an MMAD-layout root")
    return out


# -- cache of the default retriever's index ----------------------------------------------------------
def _cache_dir() -> Path | None:
    return cache_dir("reference-index")


def _cache_key(r, cats) -> str | None:
    if r.source != "default":  # only the default retriever is cached on disk; KB folders are already stores
        return None
    enc = r.image_encoder
    h = hashlib.sha256(json.dumps(enc.identity, sort_keys=True).encode())
    for c in cats:
        for p in c.references:
            st = Path(p).stat()
            h.update(f"{c.key}|{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def disk_cache_load(r, cats) -> VectorStore | None:
    d, key = _cache_dir(), _cache_key(r, cats)
    if d is None or key is None or not (d / key / "image.json").is_file():
        return None
    try:
        return VectorStore.load(d / key, "image", r.image_encoder.identity)
    except MmadError:
        return None  # a damaged cache is rebuilt, never fatal


def disk_cache_save(r, cats, store) -> None:
    d, key = _cache_dir(), _cache_key(r, cats)
    if d is None or key is None:
        return
    try:
        store.save(d / key, "image")
    except OSError:
        pass  # read-only home: work without the cache
