"""Redraw docs/renderings.png: a bundled defective fryum drawn in the five styles by three experts:
the ground truth, the shipped PatchCore expert (mmad_boost/sample/experts/visa-fryum) and MMAD's
set-up `patchcore-fewshot` (fitted on one normal template, GrabCut foreground). Run after
refitting the shipped expert or changing the renderer.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/make_renderings_figure.py [--image ...] [--mode faithful] [--out docs/renderings.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    from mmad_boost import resources

    fryum = resources.sample_root() / "fryum/Data"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=str(fryum / "Images/Anomaly/000.JPG"), help="defective query image (default: the bundled fryum 000)")
    ap.add_argument("--mask", default=str(fryum / "Masks/Anomaly/000.png"), help="its mask, for the ground-truth row (default: fryum 000's)")
    ap.add_argument("--template", default=str(fryum / "Images/Normal/000.JPG"), help="normal template for patchcore-fewshot (default: fryum normal 000)")
    ap.add_argument(
        "--expert",
        "--expert-dir",
        dest="expert_dir",
        default=str(resources.sample_experts() / "visa-fryum"),
        help="fitted expert folder (default: the shipped visa-fryum)",
    )
    ap.add_argument("--mode", default="faithful", choices=["faithful", "calibrated"], help="rendering mode (default: faithful)")
    ap.add_argument("--out", default=str(ROOT / "docs/renderings.png"), help="output PNG (default: docs/renderings.png)")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmad_boost.protocol.data import load_mask, load_rgb
    from mmad_boost.experts import create_expert, load_expert
    from mmad_boost.experts.rendering import STYLES, drawing_options, render

    image, template = load_rgb(Path(args.image)), load_rgb(Path(args.template))
    rows = [
        ("ground truth", create_expert("gt"), {"mask": load_mask(Path(args.mask))}),
        ("PatchCore (shipped)", load_expert(args.expert_dir), {}),
        ("patchcore-fewshot (MMAD)", create_expert("patchcore-fewshot"), {"templates": [template]}),
    ]
    fig, axes = plt.subplots(len(rows), len(STYLES) + 1, figsize=(12, 1.55 * len(rows) + 0.3), dpi=100, squeeze=False)
    for i, (name, expert, kw) in enumerate(rows):
        out = expert.predict(image, **kw)
        mode = "faithful" if expert.needs_mask else args.mode
        panels = [(f"query\n{name}", image)] + [
            (style, render(image, out.map, style, mode=mode, pixel_threshold=out.pixel_threshold, decision=out.decision, **drawing_options(expert)).image)
            for style in STYLES
        ]
        for ax, (title, pic) in zip(axes[i], panels):
            ax.imshow(pic)
            ax.set_title(title, loc="left", fontsize=8)
            ax.axis("off")
        print(f"{name}: score {out.score:.3g}, decision {out.decision}")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
