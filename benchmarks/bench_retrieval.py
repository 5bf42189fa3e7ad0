"""Retrieval speed: FAISS search time against store size, and encode vs search with the real retriever.

1. Synthetic stores of 1k, 100k and 1M L2-normalised vectors (dim 256: a PCA-reduced image
   embedding; the retriever's own EfficientNet-Lite0 embedding is 1280-d, measured at 100k with
   --extra 1280:100000). Vectors are clustered like a reference store (about 100 views per
   product, so 10k "products" at 1M; per-view noise 0.7 x the product direction, so a query's best
   match has cosine about 0.73; --spread 1.0 makes near-ties, harder); queries are new views. For exact
   (IndexFlatIP), IVF (IndexIVFFlat, nprobe tuned up to recall@1 >= 0.95) and HNSW (IndexHNSWFlat,
   efSearch tuned likewise): ms per single query and recall@1 against exact search.
2. The real KnowledgeRetriever (shipped knowledge base, references from the bundled sample): per
   query, milliseconds spent encoding the image / question vs searching the store.
3. Look-alike products (lookalike_boards.py: boards of the same parts in other arrangements, made
   from the bundled sample): top-1 and unknown rates of global-only and re-ranked retrieval with
   the same references, skimage photos as out-of-domain queries, ms per query for each stage; for
   8 layouts and for 40. `--choose` first prints the leave-one-out top-1 over all training boards
   for each re-ranker setting (how the defaults were chosen; the query boards play no part).

Run: .venv/bin/python benchmarks/bench_retrieval.py [--sizes 1000,100000,1000000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

TARGET_MS, TARGET_RECALL = 5.0, 0.95


def clustered(n: int, dim: int, rng: np.random.Generator, per_product: int = 100, spread: float = 1.0):
    """n unit vectors around n/per_product product centres; returns (vectors, centres, product of each row)."""
    n_products = max(1, n // per_product)
    centres = rng.standard_normal((n_products, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    product = rng.integers(0, n_products, n)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):  # in chunks: keeps the temporary arrays small
        e = min(n, s + 100_000)
        chunk = centres[product[s:e]] + spread / np.sqrt(dim) * rng.standard_normal((e - s, dim), dtype=np.float32)
        x[s:e] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return x, centres, product


def new_views(centres: np.ndarray, rng: np.random.Generator, nq: int, spread: float = 1.0) -> np.ndarray:
    dim = centres.shape[1]
    q = centres[rng.integers(0, len(centres), nq)] + spread / np.sqrt(dim) * rng.standard_normal((nq, dim), dtype=np.float32)
    return np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), dtype=np.float32)


def per_query_ms(index, queries: np.ndarray, max_seconds: float = 3.0) -> tuple[float, np.ndarray]:
    """Mean latency of single-query searches (what a retriever does per image) and the top-1 ids.

    One thread: a retriever serves one query at a time, and OpenMP threads spinning on a shared
    machine make single-query latency erratic."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    ids, t_total, n = [], 0.0, 0
    for q in queries:
        t0 = time.perf_counter()
        _, i = index.search(q[None, :], 1)
        t_total += time.perf_counter() - t0
        ids.append(int(i[0, 0]))
        n += 1
        if t_total > max_seconds and n >= 20:
            break
    faiss.omp_set_num_threads(threads)
    return t_total / n * 1000, np.array(ids)


def recall(ids: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean(ids == exact[: len(ids)]))


def bench_size(n: int, dim: int, nq: int, seed: int = 0, kinds=("exact", "ivf", "hnsw"), spread: float = 0.7):
    """Yields one result row per index kind, as soon as it is measured."""
    import faiss

    rng = np.random.default_rng(seed)
    x, centres, _ = clustered(n, dim, rng, spread=spread)
    queries = new_views(centres, rng, nq, spread=spread)

    flat = faiss.IndexFlatIP(dim)
    flat.add(x)
    _, exact = flat.search(queries, 1)  # batched: the ground truth
    exact = exact[:, 0]
    if "exact" in kinds:
        ms, ids = per_query_ms(flat, queries)
        yield {"n": n, "dim": dim, "index": "exact (IndexFlatIP)", "build_s": 0.0, "ms_per_query": ms, "recall_at_1": recall(ids, exact), "param": ""}
    del flat
    if "ivf" in kinds:
        yield from _ivf(x, queries, exact, n, dim, rng)
    if "hnsw" in kinds:
        yield from _hnsw(x, queries, exact, n, dim)


def _ivf(x, queries, exact, n, dim, rng):
    import faiss

    nlist = int(min(np.sqrt(n), n // 39 or 1))  # about sqrt(n) lists (1000 at 1M): quick to train
    t0 = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    train = x[rng.choice(n, min(n, 40 * nlist), replace=False)]
    ivf.train(train)
    ivf.add(x)
    build = time.perf_counter() - t0
    for nprobe in (1, 2, 4, 8, 16, 32, 64, 128):
        if nprobe > nlist:
            break
        ivf.nprobe = nprobe
        ms, ids = per_query_ms(ivf, queries)
        r = recall(ids, exact)
        if r >= TARGET_RECALL or nprobe * 2 > nlist or nprobe == 128:
            break
    yield {
        "n": n,
        "dim": dim,
        "index": "IVF (IndexIVFFlat)",
        "build_s": build,
        "ms_per_query": ms,
        "recall_at_1": r,
        "param": f"nlist={nlist}, nprobe={nprobe}",
    }


def _hnsw(x, queries, exact, n, dim):
    import faiss

    t0 = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(dim, 16, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 40
    hnsw.add(x)
    build = time.perf_counter() - t0
    for ef in (16, 32, 64, 128, 256):
        hnsw.hnsw.efSearch = ef
        ms, ids = per_query_ms(hnsw, queries)
        r = recall(ids, exact)
        if r >= TARGET_RECALL:
            break
    yield {
        "n": n,
        "dim": dim,
        "index": "HNSW (IndexHNSWFlat)",
        "build_s": build,
        "ms_per_query": ms,
        "recall_at_1": r,
        "param": f"M=16, efConstruction=40, efSearch={ef}",
    }


def real_retriever(n_images: int = 8) -> dict:
    """Encode vs search per query with the shipped knowledge base and the bundled sample's references."""
    from PIL import Image

    from mmad_boost.retrieval import KnowledgeRetriever

    from mmad_boost import sample

    images = sample.images("capsules", "Anomaly")[: n_images // 2] + sample.images("fryum", "Anomaly")[: n_images // 2]
    t0 = time.perf_counter()
    retriever = KnowledgeRetriever.default()
    retriever.retrieve(mode="image", image=Image.open(images[0]).convert("RGB"))  # builds the reference store once
    retriever.retrieve(mode="text", question="What type of defect is in the capsule?")
    setup = time.perf_counter() - t0
    out = {"setup_s": setup, "images": len(images)}
    img = [retriever.retrieve(mode="image", image=Image.open(p).convert("RGB")) for p in images]
    out["image"] = {
        "encode_ms": float(np.mean([r.encode_ms for r in img])),
        "search_ms": float(np.mean([r.search_ms for r in img])),
        "store_rows": len(retriever._ensure_image_store()),
        "correct": sum(r.category == p.parts[-5] for r, p in zip(img, images)),
    }
    qs = ["What type of defect is on the capsule?", "Where is the broken part of the fryum?", "Is the product missing a piece?", "What colour is the stain?"]
    txt = [retriever.retrieve(mode="text", question=q) for q in qs]
    out["text"] = {
        "encode_ms": float(np.mean([r.encode_ms for r in txt])),
        "search_ms": float(np.mean([r.search_ms for r in txt])),
        "store_rows": len(retriever._ensure_text_store()),
    }
    return out


def _query_images(root: Path) -> list[tuple[str, object]]:
    from PIL import Image

    out = []
    for p in sorted((root / "Boards").glob("*/test/good/*.png")):
        with Image.open(p) as im:
            out.append((p.parts[-4], im.convert("RGB")))
    return out


def _ood_images() -> list:
    from PIL import Image
    from skimage import data

    return [Image.fromarray(getattr(data, n)()).convert("RGB") for n in ("chelsea", "coffee", "rocket")]


def run_queries(retriever, queries, ood) -> dict:
    """Top-1 / unknown over the query boards (after one warm-up query), unknown over `ood`, ms per stage."""
    retriever.retrieve(mode="image", image=queries[0][1])  # warm: traces, lazily built arrays
    rows, wall = [], []
    for truth, img in queries:
        t0 = time.perf_counter()
        r = retriever.retrieve(mode="image", image=img)
        wall.append((time.perf_counter() - t0) * 1000)
        rows.append((r.category == truth, r.category is None, (r.guess or "").split("/")[-1] == truth, r))
    ood_rows = [retriever.retrieve(mode="image", image=im) for im in ood]
    res = [x[3] for x in rows]
    return {
        "queries": len(rows),
        "top1": float(np.mean([x[0] for x in rows])),
        "unknown": float(np.mean([x[1] for x in rows])),
        "top1_guess": float(np.mean([x[2] for x in rows])),
        "accuracy_answered": float(np.mean([x[0] for x in rows if not x[1]])) if any(not x[1] for x in rows) else None,
        "ood_unknown": float(np.mean([r.category is None for r in ood_rows])),
        "encode_ms": float(np.mean([r.encode_ms for r in res])),
        "search_ms": float(np.mean([r.search_ms for r in res])),
        "patch_ms": float(np.mean([r.patch_ms for r in res])),
        "match_ms": float(np.mean([r.rerank_ms - r.patch_ms for r in res])),
        "total_ms": float(np.mean(wall)),
    }


def lookalike(work: Path, n_layouts: int, n_train: int, n_test: int, refs: int) -> dict:
    """Global-only and re-ranked retrieval on `n_layouts` look-alike boards, same references."""
    from lookalike_boards import many_layouts, write_boards

    from mmad_boost.resources import sample_root
    from mmad_boost.retrieval import KnowledgeRetriever
    from mmad_boost.retrieval.knowledge import load_knowledge

    root = write_boards(work / f"boards-{n_layouts}", sample_root(), many_layouts(n_layouts), n_train, n_test)
    t0 = time.perf_counter()
    reranked = KnowledgeRetriever.build(load_knowledge(root / "knowledge"), root, refs_per_category=refs, rerank=True)
    build_s = time.perf_counter() - t0
    global_only = KnowledgeRetriever(
        reranked.knowledge,
        image_encoder=reranked.image_encoder,
        image_store=reranked.image_store,
        k=reranked.k,
        threshold=reranked.threshold,
        source="global-only",
    )
    queries, ood = _query_images(root), _ood_images()
    out = {
        "layouts": n_layouts,
        "references": len(reranked.image_store),
        "build_s": build_s,
        "calibration": reranked.calibration,
        "rerank": reranked.reranker.config(),
        "global": run_queries(global_only, queries, ood),
        "reranked": run_queries(reranked, queries, ood),
    }
    # the same retriever calibrated to accept 5 % leave-one-out mistakes (kb build --max-risk 0.05): a user's choice of risk
    from mmad_boost.retrieval.calibration import calibrate

    out["calibration_risk_0.05"] = calibrate(reranked, 0.05)
    out["reranked, max-risk 0.05"] = run_queries(reranked, queries, ood)
    return out


def sample_check() -> dict:
    """The bundled VisA sample (fryum, capsules): its 40 test images with 5 train references per
    category, global-only and re-ranked: what was right before must stay right."""
    import csv

    from PIL import Image

    from mmad_boost.resources import knowledge_base, sample_root
    from mmad_boost.retrieval import KnowledgeRetriever
    from mmad_boost.retrieval.calibration import calibrate
    from mmad_boost.retrieval.knowledge import load_knowledge
    from mmad_boost.retrieval.references import bundled_references

    root = sample_root()
    knowledge = load_knowledge(knowledge_base())
    refs = bundled_references(root)
    for c in knowledge:
        if c.dataset == "VisA" and c.category in refs:
            c.references = refs[c.category]
    reranked = KnowledgeRetriever(knowledge, rerank=True, source="sample-check")
    reranked._ensure_image_store()
    calibrate(reranked)
    global_only = KnowledgeRetriever(knowledge, image_store=reranked.image_store, source="sample-check-global")
    queries = []
    for row in csv.DictReader(open(root / "split_csv" / "1cls_subset.csv", newline="")):
        if row["split"] == "test":
            with Image.open(root / row["image"]) as im:
                queries.append((row["object"], im.convert("RGB")))
    ood = _ood_images()
    out = {}
    for name, r in (("global", global_only), ("reranked", reranked)):
        m = run_queries(r, queries, ood)
        m["guess"] = m.pop("top1_guess")
        out[name] = m
    return out


def choose_settings(work: Path, n_train: int) -> list[dict]:
    """Leave-one-out top-1 over all training boards of the 8 main layouts, per re-ranker setting."""
    from lookalike_boards import MAIN_LAYOUTS, write_boards

    from mmad_boost.resources import sample_root
    from mmad_boost.retrieval import KnowledgeRetriever
    from mmad_boost.retrieval.calibration import calibrate
    from mmad_boost.retrieval.knowledge import load_knowledge
    from mmad_boost.retrieval.rerank import PatchReranker

    root = write_boards(work / "boards-choose", sample_root(), MAIN_LAYOUTS, n_train, 0, seed=1)
    r = KnowledgeRetriever.build(load_knowledge(root / "knowledge"), root, refs_per_category=0, rerank=False)
    patches: dict[int, np.ndarray] = {}
    rows = []
    for size, radius, shortlist in [(s, rad, sl) for s in (128, 160, 224) for rad in (None, 1, 3, 5) for sl in (3, 8)]:
        r.reranker = PatchReranker(size=size, radius=radius, shortlist=shortlist)
        r.ref_patches = patches.get(size)
        cal = calibrate(r)
        patches[size] = r.ref_patches
        rows.append({"size": size, "radius": radius, "shortlist": shortlist, **cal})
        print(
            f"  size {size:3d}  radius {str(radius):>4s}  shortlist {shortlist}:  leave-one-out top-1 {100 * cal['top1']:.1f} %"
            f" (global {100 * cal['top1_global']:.1f} %), margin threshold {cal['margin_threshold']:.3f}, unknown {100 * cal['unknown_rate']:.1f} %",
            flush=True,
        )
    return rows


def _print_lookalike(res: dict) -> None:
    cal = res["calibration"]
    print(
        f"look-alike boards, {res['layouts']} layouts, {res['references']} references (k-center), build {res['build_s']:.1f} s; "
        f"re-ranker {res['rerank']}; leave-one-out: top-1 {100 * cal['top1']:.1f} % re-ranked, {100 * cal['top1_global']:.1f} % global, "
        f"margin threshold {cal['margin_threshold']:.3f}"
    )
    print(f"  margin threshold at --max-risk 0.05: {res['calibration_risk_0.05']['margin_threshold']:.3f}")
    print(
        f"  {'stage':<24} {'top-1':>7} {'unknown':>8} {'answered acc.':>14} {'guess top-1':>12} {'OOD unknown':>12}   ms: encode  search  patches  match  total"
    )
    for name in ("global", "reranked", "reranked, max-risk 0.05"):
        m = res[name]
        acc = "-" if m["accuracy_answered"] is None else f"{100 * m['accuracy_answered']:.1f} %"
        print(
            f"  {name:<24} {100 * m['top1']:6.1f} % {100 * m['unknown']:6.1f} % {acc:>14} {100 * m['top1_guess']:10.1f} % {100 * m['ood_unknown']:10.1f} %"
            f"   {m['encode_ms']:10.1f} {m['search_ms']:7.2f} {m['patch_ms']:8.1f} {m['match_ms']:6.1f} {m['total_ms']:6.1f}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,100000,1000000")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--extra", default="1280:100000", help="DIM:N runs beyond the grid, comma-separated ('' for none)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--spread", type=float, default=0.7, help="per-view noise relative to the product direction (1.0: harder, near-ties)")
    ap.add_argument("--hnsw-max", type=int, default=10**9, help="skip HNSW above this many vectors (its build is the slow part)")
    ap.add_argument("--indexes", default="exact,ivf,hnsw", help="which to time (exact search is always the ground truth)")
    # 1 thread: on a shared machine OpenMP threads spin-wait and make builds several times slower
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    ap.add_argument("--no-real", action="store_true", help="skip the real retriever")
    ap.add_argument("--lookalike", default="8,40", help="look-alike runs: numbers of layouts, comma-separated ('' for none); default 8,40")
    ap.add_argument("--lookalike-queries", type=int, default=20, help="query boards per layout (default 20; the 40-layout run uses a quarter)")
    ap.add_argument("--sample-check", action="store_true", help="also run the bundled VisA sample (2 categories) global-only and re-ranked")
    ap.add_argument("--choose", action="store_true", help="first print the leave-one-out grid the re-ranker's defaults were chosen from")
    ap.add_argument("--json")
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)  # the real retriever's encoders: 2 threads on a busy 2-core machine ran 5x slower
    runs = [(args.dim, int(n)) for n in args.sizes.split(",") if n]
    runs += [tuple(int(v) for v in e.split(":")) for e in args.extra.split(",") if e]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(
        f"FAISS {faiss.__version__}, {args.threads} threads to build, 1 to search; single-query latency; recall@1 vs exact; target < {TARGET_MS} ms at 1M with recall@1 >= {TARGET_RECALL}"
    )
    print(f"clustered synthetic vectors: 100 views per product, view noise {args.spread} x the product direction")
    print(f"{'n':>9} {'dim':>5}  {'index':<22} {'ms/query':>9} {'recall@1':>9} {'build s':>8}  parameters")
    rows = []
    for dim, n in runs:
        kinds = [k for k in args.indexes.split(",") if k != "hnsw" or n <= args.hnsw_max]
        for r in bench_size(n, dim, args.queries, kinds=kinds, spread=args.spread):
            rows.append(r)
            print(
                f"{r['n']:>9} {r['dim']:>5}  {r['index']:<22} {r['ms_per_query']:>9.3f} {r['recall_at_1']:>9.3f} {r['build_s']:>8.1f}  {r['param']}", flush=True
            )
    out = {"faiss": rows}
    if not args.no_real:
        real = real_retriever()
        out["retriever"] = real
        for mode in ("image", "text"):
            m = real[mode]
            print(
                f"real retriever, {mode} mode ({m['store_rows']} rows): encode {m['encode_ms']:.1f} ms + search {m['search_ms']:.3f} ms per query"
                + (f"; {m['correct']}/{real['images']} VisA images got their category" if mode == "image" else "")
            )
    if args.sample_check:
        out["sample_check"] = sample_check()
        for name, m in out["sample_check"].items():
            print(
                f"bundled VisA sample, {name}: top-1 {100 * m['top1']:.1f} %, unknown {100 * m['unknown']:.1f} % of {m['queries']} test images, "
                f"OOD unknown {100 * m['ood_unknown']:.0f} %; ms encode {m['encode_ms']:.1f} search {m['search_ms']:.2f} "
                f"patches {m['patch_ms']:.1f} match {m['match_ms']:.1f} total {m['total_ms']:.1f}",
                flush=True,
            )
    if args.choose or args.lookalike:
        import tempfile

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        with tempfile.TemporaryDirectory(prefix="lookalike-") as work:
            if args.choose:
                print(
                    "leave-one-out over 10 training boards of each of the 8 main layouts (80; none is a reference or query board below), per re-ranker setting:"
                )
                out["choose"] = choose_settings(Path(work), 10)
            out["lookalike"] = []
            for n in [int(x) for x in args.lookalike.split(",") if x]:
                q = args.lookalike_queries if n <= 8 else max(2, args.lookalike_queries // 4)
                res = lookalike(Path(work), n, 20, q, 5)
                out["lookalike"].append(res)
                _print_lookalike(res)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.exit(main())
