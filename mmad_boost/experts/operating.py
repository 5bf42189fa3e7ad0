"""A calibrated expert's operating curve on labelled test images, and the defects it misses.

For each target false-mark rate the thresholds are recomputed from the normal scores stored at fit
time (no refit, nothing learnt from the test images), the calibrated pictures redrawn, and two
rates counted: false marks (normal images with any mark) and hits (defective images with a mark on
the true mask). Beside each, "best fixed" is what the best single image threshold chosen on these
very test images would hit with no more false marks: an upper reference (it peeks at the test
labels), so the gap is what calibration loses against the ROC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

TARGETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)


@dataclass
class Scored:
    """One test image as the curve needs it: the 512 px picture base, the map at that size, the truth."""

    key: str
    image: Image.Image
    map: np.ndarray
    score: float
    mask: np.ndarray | None  # bool at the picture's size; None for normal images
    area: float  # defect share of the image (0 for normal images)


def scored(key: str, image: Image.Image, amap: np.ndarray, score: float, mask, resample: str | None) -> Scored:
    from .rendering import resize_map, scale_image

    base = scale_image(image)
    m = resize_map(amap, base.size, resample or "bilinear")
    truth = None
    if mask is not None:
        truth = np.asarray(Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255).resize(base.size, Image.NEAREST)) > 0
    area = float(np.asarray(mask, bool).mean()) if mask is not None else 0.0
    return Scored(key, base, m, float(score), truth, area)


def _marks(item: Scored, viz: str, image_t: float, pixel_t: float) -> tuple[bool, bool]:
    """(marked anything, marked the true mask) for the calibrated picture at these thresholds."""
    from .rendering import render

    pic = render(item.image, item.map, viz, mode="calibrated", pixel_threshold=pixel_t, decision=bool(item.score > image_t))
    if not pic.marked:
        return False, False
    if item.mask is None:
        return True, False
    return True, bool((marked_area(pic, item.mask.shape) & item.mask).any())


def marked_area(pic, shape: tuple[int, int]) -> np.ndarray:
    """The pixels a picture marks: its boxes filled for bbox, its region otherwise."""
    if not pic.boxes:
        return pic.region if pic.region is not None else np.zeros(shape, bool)
    area = np.zeros(shape, bool)
    for x0, y0, x1, y1 in pic.boxes:
        area[y0 : y1 + 1, x0 : x1 + 1] = True
    return area


def item_marks(items: list[Scored], viz: str, image_t: float, pixel_t: float) -> list[tuple[bool, bool]]:
    """(marked anything, marked the true mask) of each item's calibrated picture at these thresholds."""
    return [_marks(it, viz, image_t, pixel_t) for it in items]


def counts(items: list[Scored], viz: str, image_t: float, pixel_t: float) -> tuple[int, int, list[Scored]]:
    """(false marks, hits, missed defects) at these thresholds."""
    return tally(items, item_marks(items, viz, image_t, pixel_t))


def tally(items: list[Scored], marks: list[tuple[bool, bool]]) -> tuple[int, int, list[Scored]]:
    """(false marks, hits, missed defects) from each item's `item_marks`."""
    false_marks, hits, missed = 0, 0, []
    for it, (marked, hit) in zip(items, marks):
        if it.mask is None:
            false_marks += marked
        elif hit:
            hits += 1
        else:
            missed.append(it)
    return false_marks, hits, missed


def best_fixed(items: list[Scored], viz: str, max_false: int, pixel_t: float) -> int:
    """Most hits of any image threshold (on these test scores) with at most `max_false` normal images
    above it; pixels drawn above min(pixel_t, that threshold), as calibration caps them."""
    normal = sorted((it.score for it in items if it.mask is None), reverse=True)
    # the lowest threshold allowed (just above the (max_false+1)-th largest normal score) calls the most defects anomalous
    t = float(np.nextafter(normal[max_false], np.inf)) if max_false < len(normal) else -np.inf
    return counts([it for it in items if it.mask is not None], viz, t, capped_pixel_threshold(pixel_t, t))[1]


def capped_pixel_threshold(pixel_t: float, image_t: float) -> float:
    """The pixel threshold a reference image threshold draws with: capped at it, as calibration caps it."""
    return min(pixel_t, image_t) if np.isfinite(image_t) else pixel_t


def operating_curve(expert, items: list[Scored], viz: str, targets=TARGETS) -> dict:
    """Rows per target rate (and the expert's own target): thresholds, false marks, hits, best fixed."""
    normals = getattr(expert, "normals", None)
    if normals is None:
        return {"note": "this expert folder stores no normal scores (written before they were kept): refit it for the curve", "rows": []}
    own = normals.false_marks
    n_normal = sum(it.mask is None for it in items)
    n_bad = len(items) - n_normal
    rows = []
    for target in sorted(set(targets) | {own}):
        expert.set_false_marks(target)
        fm, hits, _ = counts(items, viz, expert.image_threshold, expert.pixel_threshold)
        rows.append(
            {
                "target": target,
                "calibrated_at": target == own,
                "image_threshold": expert.image_threshold,
                "pixel_threshold": expert.pixel_threshold,
                "false_marks": fm,
                "normal": n_normal,
                "hits": hits,
                "defective": n_bad,
                "best_fixed_hits": best_fixed(items, viz, fm, expert.pixel_threshold),
            }
        )
    expert.set_false_marks(own)
    return {"method": normals.method, "calibration_images": len(normals.scores), "calibrated_at": own, "rows": rows}


def missed_defects(expert, items: list[Scored], viz: str) -> list[dict]:
    """Defective images the calibrated pictures do not mark on their mask, smallest defect first."""
    _, _, missed = counts(items, viz, expert.image_threshold, expert.pixel_threshold)
    return [
        {
            "image": it.key,
            "defect_area": round(it.area, 6),
            "score": round(it.score, 4),
            "score_vs_threshold": round(it.score / expert.image_threshold, 3) if expert.image_threshold else None,
            "why": "scored below the image threshold" if it.score <= expert.image_threshold else "marked elsewhere",
        }
        for it in sorted(missed, key=lambda it: it.area)
    ]


def curve_lines(curve: dict) -> list[str]:
    if not curve.get("rows"):
        return [f"  operating curve: {curve.get('note', 'n/a')}"]
    out = [
        f"  operating curve (thresholds from {curve['calibration_images']} training normals, {curve['method']}; "
        "best fixed = best single threshold chosen on these test images, same false marks or fewer):",
        f"    {'target':>6} {'false marks':>12} {'hits':>9} {'best fixed':>10}",
    ]
    for r in curve["rows"]:
        star = "  <- calibrated" if r["calibrated_at"] else ""
        out.append(
            f"    {r['target']:>6g} {r['false_marks']:>5}/{r['normal']:<6} {r['hits']:>4}/{r['defective']:<4} {r['best_fixed_hits']:>6}/{r['defective']:<3}{star}"
        )
    return out


def plot_curve(curve: dict, path, title: str = "") -> None:
    """The operating curve as a PNG: hit rate against false-mark rate, calibrated point ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = curve["rows"]
    fm = [r["false_marks"] / max(1, r["normal"]) for r in rows]
    fig, ax = plt.subplots(figsize=(4.2, 3.4), dpi=120)
    ax.plot(fm, [r["hits"] / max(1, r["defective"]) for r in rows], "o-", label="calibrated (training normals)")
    ax.plot(fm, [r["best_fixed_hits"] / max(1, r["defective"]) for r in rows], "x--", label="best fixed threshold (peeks at test)")
    own = [r for r in rows if r["calibrated_at"]]
    if own:
        r = own[0]
        ax.plot(
            [r["false_marks"] / max(1, r["normal"])], [r["hits"] / max(1, r["defective"])], "o", ms=12, mfc="none", mec="red", label=f"target {r['target']:g}"
        )
    for r, x in zip(rows, fm):
        ax.annotate(f"{r['target']:g}", (x, r["hits"] / max(1, r["defective"])), fontsize=7, xytext=(3, -9), textcoords="offset points")
    ax.set_xlabel("false marks (share of normal test images)")
    ax.set_ylabel("hits (share of defective images)")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
