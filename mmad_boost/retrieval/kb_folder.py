"""The KB folder that `kb build` writes and `KnowledgeRetriever.load` reads.

Files: `kb.json` (the manifest: format, decision settings, each store's encoder; written last, so a
folder without it is not a KB), `knowledge.json` (the categories), the vector stores (store.py), and
with a re-ranker `image_patches.npy` (float16 patch features, one row per image reference). Every file
is untrusted on load: a missing or damaged one is a one-line error that says to rebuild.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import save_npy, write_text
from ..errors import MmadError
from .encoders import DEFAULT_IMAGE_ENCODER, Encoder, create_encoder
from .knowledge import CategoryKnowledge, KnowledgeSet
from .store import VectorStore, describe, same_encoder

KB_FORMAT = 1
# manifest keys handed back to the retriever's constructor on load
SETTINGS = ("k", "threshold", "budget", "top_k_chunks", "store_kind", "margin_threshold", "calibration")


def encoder_spec(enc) -> str | None:
    """The spec string an encoder (or an encoder spec) is recorded under."""
    if enc is None:
        return None
    return (enc.spec or enc.name) if isinstance(enc, Encoder) else str(enc)


def save_kb(r, directory: str | Path, refs_per_category: int | None = None) -> Path:
    """Write retriever `r` (a KnowledgeRetriever) to `directory`, building its image store first if needed."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": KB_FORMAT,
        "k": r.k,
        "threshold": r.threshold,
        "budget": r.budget,
        "top_k_chunks": r.top_k_chunks,
        "store_kind": r.store_kind,
        "source": r.source,
        "stores": {},
    }
    has_refs = any(c.references for c in r.knowledge) or r.image_store is not None
    if has_refs:
        r._ensure_image_store(refs_per_category).save(d, "image")
        manifest["stores"]["image"] = {"encoder": encoder_spec(r._image_encoder_spec), "identity": r.image_store.identity}
        if r.reranker is not None:
            save_npy(d / "image_patches.npy", r._ensure_ref_patches())
            manifest.update(rerank=r.reranker.config(), margin_threshold=r.margin_threshold, calibration=r.calibration)
    if r.text_store is not None:
        r.text_store.save(d, "text")
        manifest["stores"]["text"] = {"encoder": encoder_spec(r._text_encoder_spec), "identity": r.text_store.identity}
    write_text(d / "knowledge.json", json.dumps([c.to_json() for c in r.knowledge], indent=1, ensure_ascii=False))
    write_text(d / "kb.json", json.dumps(manifest, indent=1))  # last: a folder without it is not a KB
    return d


def load_kb(cls, d: Path, image_encoder: str | Encoder | None = None, text_encoder: str | Encoder | None = None, **kw):
    """A `cls` (KnowledgeRetriever) from KB folder `d`; encoders given here replace the recorded ones
    (their identity must match the store's); `kw` overrides the recorded settings."""
    try:
        manifest = json.loads((d / "kb.json").read_text(encoding="utf-8"))
        cats = [CategoryKnowledge.from_json(x) for x in json.loads((d / "knowledge.json").read_text(encoding="utf-8"))]
    except FileNotFoundError as e:
        raise MmadError(f"{e.filename}: missing from the KB folder; rebuild it with `mmad-boost kb build`") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise MmadError(f"{d}: damaged KB files ({e}); rebuild it with `mmad-boost kb build`") from None
    if manifest.get("format") != KB_FORMAT:
        raise MmadError(f"{d / 'kb.json'}: KB format {manifest.get('format')} is not {KB_FORMAT}; rebuild with `mmad-boost kb build`")
    stores = {}
    encoders = {"image": image_encoder, "text": text_encoder}
    for kind, info in manifest.get("stores", {}).items():
        asked = encoders[kind]
        if asked is not None:
            enc = asked if isinstance(asked, Encoder) else create_encoder(asked)
            stores[kind] = VectorStore.load(d, kind, enc.identity)
        else:
            stores[kind] = VectorStore.load(d, kind)
            enc = create_encoder(info["encoder"])
            if not same_encoder(enc.identity, stores[kind].identity):
                raise MmadError(
                    f"{d}: the {kind} store was built with {describe(stores[kind].identity)} but "
                    f"{info['encoder']} now loads as {describe(enc.identity)}; rebuild with `mmad-boost kb build`"
                )
        encoders[kind] = enc
    opts = {k: manifest[k] for k in SETTINGS if k in manifest}
    if manifest.get("rerank") and "image" in stores:
        opts["rerank"] = manifest["rerank"]
        opts["ref_patches"] = load_patches(d / "image_patches.npy", len(stores["image"]))
    opts.update(kw)
    return cls(
        KnowledgeSet(cats),
        image_encoder=encoders["image"] or DEFAULT_IMAGE_ENCODER,
        text_encoder=encoders["text"],
        image_store=stores.get("image"),
        text_store=stores.get("text"),
        source=str(d),
        **opts,
    )


def load_patches(f: Path, rows: int) -> np.ndarray:
    try:
        patches = np.load(f, allow_pickle=False)
    except FileNotFoundError:
        raise MmadError(f"{f}: missing from the KB folder (its kb.json asks for re-ranking); rebuild with `mmad-boost kb build`") from None
    except Exception as e:  # truncated or foreign files
        raise MmadError(f"{f}: damaged patch features ({str(e).splitlines()[0][:120]}); rebuild with `mmad-boost kb build`") from None
    if patches.ndim != 3 or len(patches) != rows or patches.dtype != np.float16:
        raise MmadError(f"{f}: holds {patches.shape} {patches.dtype} patch features for {rows} references; rebuild with `mmad-boost kb build`")
    return patches
