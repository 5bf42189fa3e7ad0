"""Redraw docs/renderings.png: a bundled defective fryum and its five faithful pictures by the
shipped PatchCore expert (experts/visa-fryum). Run after refitting that expert.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/make_renderings_figure.py [--image ...] [--out docs/renderings.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default=str(ROOT / "mmad_boost/sample/visa/fryum/Data/Images/Anomaly/000.JPG"))
    ap.add_argument("--expert-dir", default=str(ROOT / "experts/visa-fryum"))
    ap.add_argument("--mode", default="faithful", choices=["faithful", "calibrated"])
    ap.add_argument("--out", default=str(ROOT / "docs/renderings.png"))
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmad_boost.data import load_rgb
    from mmad_boost.experts import load_expert
    from mmad_boost.rendering import STYLES, render

    image = load_rgb(Path(args.image))
    expert = load_expert(args.expert_dir)
    out = expert.predict(image)
    panels = [("query", image)] + [
        (style, render(image, out.map, style, mode=args.mode, pixel_threshold=out.pixel_threshold,
                       decision=out.decision, resample=expert.resample).image) for style in STYLES]
    fig, axes = plt.subplots(2, 3, figsize=(8, 4), dpi=100)
    for ax, (title, pic) in zip(axes.ravel(), panels):
        ax.imshow(pic)
        ax.set_title(title, loc="left", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out} (score {out.score:.2f}, decision {out.decision})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
