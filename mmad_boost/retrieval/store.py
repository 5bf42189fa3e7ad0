"""A FAISS vector store with per-row metadata; saved as FAISS's index file plus JSON (no pickle).

`kind`: `flat` (exact inner product, the default), `ivf` (inverted lists, trained on the data; for
large stores) or `hnsw` (graph). Each kind names a FAISS `index_factory` string (`INDEX_KINDS`).
Vectors are L2-normalised, so inner product = cosine similarity.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import MmadError
from ..registry import Registry

FORMAT_VERSION = 1
HNSW_M = 32  # graph neighbours per node (FAISS's HNSW32)


def ivf_lists(n: int) -> int:
    """About sqrt(n) inverted lists, with at least 39 training vectors per list (FAISS's minimum)."""
    return max(1, min(int(np.sqrt(max(n, 1))), n // 39 or 1))


def _flat(n: int, nlist: int | None, hnsw_m: int) -> str:
    return "Flat"


def _ivf(n: int, nlist: int | None, hnsw_m: int) -> str:
    return f"IVF{nlist or ivf_lists(n)},Flat"


def _hnsw(n: int, nlist: int | None, hnsw_m: int) -> str:
    return f"HNSW{hnsw_m},Flat"


# store kind -> its FAISS index_factory string for n vectors (always with the inner-product metric)
INDEX_KINDS = Registry("store kind")
INDEX_KINDS.register("flat", _flat)
INDEX_KINDS.register("ivf", _ivf)
INDEX_KINDS.register("hnsw", _hnsw)
KINDS = tuple(INDEX_KINDS.names())


def _faiss():
    import faiss

    return faiss


class VectorStore:
    def __init__(self, identity: dict, kind: str = "flat", nlist: int | None = None, hnsw_m: int = HNSW_M):
        if kind not in INDEX_KINDS:  # the registry, not KINDS: a kind registered later is accepted too
            raise MmadError(f"store kind {kind!r}: use one of {', '.join(INDEX_KINDS.names())}")
        self.identity = dict(identity)
        self.dim = int(identity["dim"])
        self.kind = kind
        self.nlist = nlist
        self.hnsw_m = hnsw_m
        self.meta: list[dict] = []
        self.index = None
        self._pending: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.meta)

    def __getstate__(self):  # FAISS indexes do not pickle; the vectors do, and rebuild the index
        state = dict(self.__dict__)
        state["index"] = None
        return state

    def add(self, vectors: np.ndarray, meta: list[dict]) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) != len(meta):
            raise ValueError(f"expected {len(meta)} x {self.dim} vectors, got {vectors.shape}")
        self._pending.append(vectors)
        self.meta.extend(meta)
        self.index = None  # rebuilt on the next search (IVF must be trained on all data)

    def _build(self):
        faiss = _faiss()
        data = self.vectors()
        factory = INDEX_KINDS.create(self.kind, n=len(data), nlist=self.nlist, hnsw_m=self.hnsw_m)
        index = faiss.index_factory(self.dim, factory, faiss.METRIC_INNER_PRODUCT)
        if len(data) and not index.is_trained:
            index.train(data)  # IVF: the lists' centroids come from all the data
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.nprobe = min(ivf.nlist, 8)
        if len(data):
            index.add(data)
        self.index = index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row ids) each n_queries x k; ids of -1 (and score -inf) where fewer rows exist."""
        if self.index is None:
            self._build()
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"query dim {q.shape[1]} != store dim {self.dim}")
        if len(self) == 0 or k <= 0:
            return np.full((len(q), max(k, 0)), -np.inf, np.float32), np.full((len(q), max(k, 0)), -1, np.int64)
        scores, ids = self.index.search(q, k)
        scores = np.where(ids < 0, -np.inf, scores)
        return scores, ids

    def vectors(self) -> np.ndarray:
        return np.concatenate(self._pending) if self._pending else np.zeros((0, self.dim), np.float32)

    # -- persistence -------------------------------------------------------------------------------------
    def save(self, directory: str | Path, name: str) -> None:
        if self.index is None:
            self._build()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        from ..atomic import save_npy, write_bytes, write_text

        write_bytes(d / f"{name}.faiss", _faiss().serialize_index(self.index).tobytes())  # every file atomic
        save_npy(d / f"{name}.npy", self.vectors())
        info = {
            "format": FORMAT_VERSION,
            "identity": self.identity,
            "kind": self.kind,
            "nlist": self.nlist,
            "hnsw_m": self.hnsw_m,
            "count": len(self.meta),
            "meta": self.meta,
        }
        write_text(d / f"{name}.json", json.dumps(info, indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, directory: str | Path, name: str, expected_identity: dict | None = None) -> "VectorStore":
        d = Path(directory)
        meta_file, index_file, vec_file = d / f"{name}.json", d / f"{name}.faiss", d / f"{name}.npy"
        for f in (meta_file, index_file, vec_file):
            if not f.is_file():
                raise MmadError(f"{f}: missing from the store; rebuild it with `mmad-boost kb build`")
        try:
            info = json.loads(meta_file.read_text(encoding="utf-8"))
            identity, meta = info["identity"], info["meta"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise MmadError(f"{meta_file}: unreadable store metadata ({e}); rebuild with `mmad-boost kb build`") from None
        if info.get("format") != FORMAT_VERSION:
            raise MmadError(f"{meta_file}: store format {info.get('format')} is not {FORMAT_VERSION}; rebuild with `mmad-boost kb build`")
        if expected_identity is not None and not same_encoder(identity, expected_identity):
            raise MmadError(
                f"{meta_file}: built with encoder {describe(identity)}, but {describe(expected_identity)} was asked for; "
                "query with the same encoder or rebuild the store"
            )
        try:
            index = _faiss().read_index(str(index_file))
        except Exception as e:  # FAISS raises RuntimeError with a C++ message for damaged files
            raise MmadError(f"{index_file}: damaged FAISS index ({str(e).splitlines()[0][:120]}); rebuild with `mmad-boost kb build`") from None
        try:
            vectors = np.load(vec_file, allow_pickle=False)
        except Exception as e:
            raise MmadError(f"{vec_file}: damaged vectors file ({e}); rebuild with `mmad-boost kb build`") from None
        if index.ntotal != len(meta) or index.d != identity["dim"] or vectors.shape != (len(meta), identity["dim"]):
            raise MmadError(f"{index_file}: holds {index.ntotal} x {index.d} vectors but the metadata lists {len(meta)} x {identity['dim']}; rebuild the store")
        store = cls(identity, info.get("kind", "flat"), info.get("nlist"), info.get("hnsw_m", HNSW_M))
        store.meta = meta
        store._pending = [vectors.astype(np.float32)]
        store.index = index
        return store


def same_encoder(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("name", "weights_sha256", "dim", "version"))


def describe(identity: dict) -> str:
    return f"{identity.get('name')} (weights {str(identity.get('weights_sha256'))[:12]}, dim {identity.get('dim')})"
