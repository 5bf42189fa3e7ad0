"""`mmad-boost kb build|query|eval`: build a knowledge base with an image index, query it, measure it.

Top-level imports stay light; torch and FAISS load inside the commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import MmadError
from .encoders import DEFAULT_IMAGE_ENCODER
from .store import KINDS


def register_cli(sub) -> None:
    kb = sub.add_parser("kb", help="knowledge base: build an image-indexed KB, query it, evaluate category retrieval")
    kbs = kb.add_subparsers(dest="kb_command", required=True)

    b = kbs.add_parser("build", help="encode reference images (train/good) and the knowledge into KB_DIR")
    b.add_argument("--data", required=True, help="MMAD-layout root: references from <Dataset>/<category>/train/good")
    b.add_argument(
        "--knowledge", action="append", default=[], metavar="PATH", help="knowledge folder or .toml file (repeatable; default: the shipped knowledge_base/)"
    )
    b.add_argument("--mmad-knowledge", metavar="FILE", help="import MMAD's domain_knowledge.json")
    b.add_argument("--encoder", default=DEFAULT_IMAGE_ENCODER, help=f"{DEFAULT_IMAGE_ENCODER} (default) or open_clip:<arch>:<weights file>")
    b.add_argument("--refs-per-category", type=int, default=5, metavar="N", help="reference images per category (default 5; 0 = all)")
    b.add_argument("--index", default=KINDS[0], choices=KINDS, help="FAISS index: flat (exact), ivf or hnsw (approximate, for large KBs); default flat")
    b.add_argument("--threshold", type=float, help="similarity below which a query is 'unknown' (default 0.5)")
    b.add_argument(
        "--ref-selection",
        default="k-center",
        choices=["k-center", "first"],
        help="how references are picked from train/good: k-center (cover the category's variation, from up to 8 x N "
        "candidates spread over the folder) or first (the first N by name); default k-center",
    )
    b.add_argument(
        "--no-rerank",
        action="store_true",
        help="global embedding only; default: a second stage re-ranks the shortlist by patch matching "
        "(tells look-alike products apart; stores patch features in KB_DIR)",
    )
    b.add_argument(
        "--max-risk",
        type=float,
        default=0.0,
        metavar="R",
        help="share of leave-one-out mistakes the calibrated margin may still accept (0-1; default 0: every leave-one-out mistake would have been 'unknown')",
    )
    b.add_argument("--text", action="store_true", help="also index the knowledge chunks for text retrieval (MiniLM)")
    b.add_argument("--out", required=True, help="KB folder to write")
    b.add_argument("--no-progress", action="store_true", help="no progress messages, also none from libraries (default: shown)")
    b.set_defaults(func=cmd_build)

    q = kbs.add_parser("query", help="print category, score and runner-up for each image")
    q.add_argument("--kb", required=True, help="KB folder from `kb build`")
    q.add_argument("images", nargs="+", metavar="IMAGE", help="image files to look up")
    q.add_argument("--json", action="store_true", help="one JSON object per line")
    q.set_defaults(func=cmd_query)

    e = kbs.add_parser("eval", help="top-1 category accuracy on a question file's images, unknown rate on out-of-domain images, latency")
    e.add_argument("--kb", required=True, help="KB folder from `kb build`")
    e.add_argument("--data", required=True, help="data root of the question file")
    e.add_argument("--questions", help="question file (default DATA/mmad.json)")
    e.add_argument("--ood", metavar="DIR", help="folder of out-of-domain images (should come back unknown)")
    e.add_argument("--json", action="store_true", help="also print the figures as one JSON object on the last line")
    e.set_defaults(func=cmd_eval)

    from .kb_draft import add_draft_parser  # `kb draft`: knowledge written by a model, for review (kb_draft.py)

    add_draft_parser(kbs)


def _knowledge(args):
    from .knowledge import KnowledgeSet, import_mmad_knowledge, load_knowledge
    from ..resources import knowledge_base

    ks = KnowledgeSet([])
    if args.mmad_knowledge:
        ks = ks.merged(import_mmad_knowledge(args.mmad_knowledge))
    for p in args.knowledge:
        ks = ks.merged(load_knowledge(p))
    if not args.knowledge and not args.mmad_knowledge:
        ks = load_knowledge(knowledge_base())
    return ks


def cmd_build(args) -> int:
    from .retriever import DEFAULT_THRESHOLD, KnowledgeRetriever, mmad_layout_references

    if args.refs_per_category < 0:
        raise MmadError("--refs-per-category: give 0 (all) or a positive number")
    if not 0 <= args.max_risk < 1:
        raise MmadError(f"--max-risk {args.max_risk}: give a share in [0, 1)")
    ks = _knowledge(args)
    found = mmad_layout_references(args.data, args.refs_per_category, pool=args.ref_selection == "k-center")
    in_data = {(kds, cat) for (_, kds), cats in found.items() for cat in cats}
    missing = sorted(f"{d}/{c}" for d, c in in_data if ks.find(c, d) is None or ks.find(c, d).dataset != d)
    if len(missing) == len(in_data):
        raise MmadError(
            f"--data {args.data}: no knowledge for any of its categories ({', '.join(missing[:6])}); "
            "pass --knowledge PATH or --mmad-knowledge FILE covering them"
        )
    if missing:
        print(f"note: no knowledge for {', '.join(missing)}; they are left out of the KB", file=sys.stderr)
    from ..running.progress import stage

    refs = sum(len(imgs) for cats in found.values() for imgs in cats.values())
    with stage(
        f"kb build: encoding reference images with {args.encoder}" + (" and knowledge text with MiniLM" if args.text else ""),
        kind=f"kb-build:{args.encoder}" + (":text" if args.text else ""),
        units=refs,
        unit="candidate reference images",
    ):
        r = KnowledgeRetriever.build(
            ks,
            args.data,
            refs_per_category=args.refs_per_category,
            image_encoder=args.encoder,
            text=args.text,
            store_kind=args.index,
            selection=args.ref_selection,
            rerank=not args.no_rerank,
            max_risk=args.max_risk,
            threshold=args.threshold if args.threshold is not None else DEFAULT_THRESHOLD,
        )
    r.save(args.out)
    with_refs = sum(1 for c in ks if c.references)
    print(
        f"KB {args.out}: {len(ks)} categories ({with_refs} with reference images), {len(r.image_store)} references, "
        f"encoder {args.encoder}, index {args.index}, references by {args.ref_selection}" + ("" if args.no_rerank else ", re-ranked by patch matching")
    )
    cal = r.calibration
    if cal.get("left_out"):
        print(
            f"leave-one-out over {cal['left_out']} references: top-1 {100 * cal['top1']:.1f} % re-ranked "
            f"({100 * cal['top1_global']:.1f} % global only); margin threshold {cal['margin_threshold']:.3f} "
            f"(unknown for {100 * cal['unknown_rate']:.1f} % of them)"
        )
    elif cal.get("note"):
        print(f"note: {cal['note']}", file=sys.stderr)
    return 0


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def cmd_query(args) -> int:
    from .retriever import KnowledgeRetriever

    r = KnowledgeRetriever.load(args.kb)
    from ..protocol.data import load_rgb

    for img in args.images:
        res = r.retrieve(mode="image", image=load_rgb(Path(img)))  # untrusted file: one line for a damaged image or a decompression bomb
        if args.json:
            print(
                json.dumps(
                    {
                        "image": img,
                        "category": res.category,
                        "dataset": res.dataset,
                        "score": res.score,
                        "runner_up": res.runner_up,
                        "runner_up_score": res.runner_up_score,
                        "guess": res.guess,
                        "margin": res.margin,
                        "encode_ms": round(res.encode_ms, 2),
                        "search_ms": round(res.search_ms, 3),
                        "rerank_ms": round(res.rerank_ms, 2),
                    }
                )
            )
        else:
            cat = f"{res.dataset}/{res.category}" if res.category else "unknown"
            print(f"{img}\t{cat}\tscore {_fmt(res.score)}\trunner-up {res.runner_up or '-'} ({_fmt(res.runner_up_score)})")
    return 0


def evaluate(retriever, bench, ood_images: list[Path]) -> dict:
    """Top-1 category accuracy over the question file's images, unknown rates, mean milliseconds per query."""
    from .knowledge import knowledge_dataset

    enc, search, rerank = [], [], []
    correct = unknown = 0
    per_cat: dict[str, list[int]] = {}
    decisions = []  # (truth, answer or None, top-ranked guess, in-domain, margin)
    samples = [s for s in bench.samples if bench.resolve(s.key).is_file()]  # a partial download: score what is there
    if not samples:
        raise MmadError(f"{bench.root}: none of the question file's images are there; check --data")
    for s in samples:
        res = retriever.retrieve(mode="image", image=bench.load_image(bench.resolve(s.key)))
        enc.append(res.encode_ms)
        search.append(res.search_ms)
        rerank.append(res.rerank_ms)
        truth = f"{knowledge_dataset(s.dataset)}/{s.category}"
        decisions.append(
            (
                truth,
                f"{res.dataset}/{res.category}" if res.category else None,
                res.guess,
                res.score is not None and res.score >= retriever.threshold,
                res.margin if res.margin is not None else 0.0,
            )
        )
        ok = res.category == s.category and res.dataset == knowledge_dataset(s.dataset)
        correct += ok
        unknown += res.category is None
        per_cat.setdefault(f"{s.dataset}/{s.category}", [0, 0])
        per_cat[f"{s.dataset}/{s.category}"][0] += ok
        per_cat[f"{s.dataset}/{s.category}"][1] += 1
    ood_unknown = 0
    for p in ood_images:
        res = retriever.retrieve(mode="image", image=p)
        enc.append(res.encode_ms)
        search.append(res.search_ms)
        ood_unknown += res.category is None
    n = len(samples)
    return {
        "images": n,
        "missing_images": len(bench.samples) - n,
        "top1_accuracy": correct / n if n else None,
        "unknown_rate_in_domain": unknown / n if n else None,
        "ood_images": len(ood_images),
        "ood_unknown_rate": ood_unknown / len(ood_images) if ood_images else None,
        "encode_ms": sum(enc) / len(enc) if enc else None,
        "search_ms": sum(search) / len(search) if search else None,
        "per_category": {k: v[0] / v[1] for k, v in sorted(per_cat.items())},
        "rerank_ms": sum(rerank) / len(rerank) if rerank else None,
        "references": len(retriever.image_store) if retriever.image_store is not None else 0,
        "threshold": retriever.threshold,
        "margin_threshold": retriever.margin_threshold,
        "confusion": confusion(decisions),
        "coverage": coverage_curve(decisions),
    }


def confusion(decisions) -> dict:
    """{true category: {answer (or "unknown"): count}}."""
    out: dict = {}
    for truth, answer, *_ in decisions:
        row = out.setdefault(truth, {})
        row[answer or "unknown"] = row.get(answer or "unknown", 0) + 1
    return out


def coverage_curve(decisions, levels=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)) -> list[dict]:
    """Risk against coverage: answering only the most confident share of the images (in-domain by
    similarity first, then by margin), the accuracy of the top-ranked guesses among them."""
    ranked = sorted(decisions, key=lambda d: (d[3], d[4]), reverse=True)
    out = []
    for c in levels:
        top = ranked[: max(1, int(round(c * len(ranked))))]
        out.append({"coverage": c, "images": len(top), "accuracy": sum(d[2] == d[0] for d in top) / len(top)})
    return out


def print_confusion(conf: dict) -> None:
    labels = sorted(conf)
    cols = labels + sorted({a for row in conf.values() for a in row} - set(labels) - {"unknown"}) + ["unknown"]
    print("confusion (rows: true category, columns: answer; #i = row i)")
    for i, t in enumerate(labels):
        print(f"  #{i:<3d} {t[:28]:28s} " + " ".join(f"{conf[t].get(c, 0):>4d}" for c in cols))
    print("  " + " " * 34 + " ".join(f"{('#' + str(labels.index(c))) if c in labels else c[:4]:>4s}" for c in cols))


def cmd_eval(args) -> int:
    from ..protocol.data import Benchmark
    from .retriever import IMAGE_SUFFIXES, KnowledgeRetriever

    r = KnowledgeRetriever.load(args.kb)
    bench = Benchmark(args.data, args.questions)
    ood: list[Path] = []
    if args.ood:
        d = Path(args.ood)
        if not d.is_dir():
            raise MmadError(f"--ood {d}: not a folder; pass a folder of out-of-domain images")
        ood = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not ood:
            raise MmadError(f"--ood {d}: no images found (png/jpg/bmp/tif/webp)")
    res = evaluate(r, bench, ood)
    pct = lambda x: "-" if x is None else f"{100 * x:.2f} %"  # noqa: E731
    print(f"images                 {res['images']}" + (f"  ({res['missing_images']} not on disk, skipped)" if res["missing_images"] else ""))
    print(f"top-1 category acc.    {pct(res['top1_accuracy'])}")
    print(f"unknown (in-domain)    {pct(res['unknown_rate_in_domain'])}")
    print(f"unknown (out-of-domain){'':1}{pct(res['ood_unknown_rate'])}  ({res['ood_images']} images)")
    print(f"ms per query           encode {_fmt(res['encode_ms'])}  search {_fmt(res['search_ms'])}  re-rank {_fmt(res['rerank_ms'])}")
    for cat, acc in res["per_category"].items():
        print(f"  {cat:30s} {pct(acc)}")
    print_confusion(res["confusion"])
    print("accuracy at coverage (most confident share answered): " + "  ".join(f"{100 * p['coverage']:.0f} %: {pct(p['accuracy'])}" for p in res["coverage"]))
    if args.json:
        print(json.dumps(res))
    return 0
