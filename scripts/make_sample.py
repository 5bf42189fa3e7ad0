"""Regenerate the bundled sample mmad_boost/sample/visa/ from an original VisA copy (--src).

Images are downscaled so the longer side is 512 px (JPEG quality 90); masks are resized with
nearest neighbour so their label values survive. CSV files and the licence are copied verbatim.

    .venv/bin/python scripts/make_sample.py --src path/to/VisA [--dst mmad_boost/sample/visa]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LONG_SIDE = 512
JPEG_QUALITY = 90

NOTICE = """\
Bundled sample: two categories (fryum, capsules) of the VisA dataset.

Source: Yang Zou, Jongheon Jeong, Latha Pemula, Dongqing Zhang, Onkar Dabeer,
"SPot-the-Difference Self-Supervised Pre-training for Anomaly Detection and Segmentation",
ECCV 2022. Dataset: https://github.com/amazon-science/spot-diff

Licence: Creative Commons Attribution 4.0 International (CC BY 4.0); full text in
LICENSE-DATASET next to this file. https://creativecommons.org/licenses/by/4.0/

Changes made by mmad-boost (scripts/make_sample.py):
- only the {n_images} images listed in split_csv/1cls_subset.csv (a subset of VisA's official
  one-class split: 20 train normal, 5 test normal, 15 test anomalous per category) are included;
- images downscaled so the longer side is {long_side} px (Lanczos) and re-encoded as JPEG,
  quality {quality};
- masks downscaled to the same size with nearest-neighbour resampling (label values kept);
- image_anno.csv, split_csv/1cls_subset.csv and LICENSE-DATASET copied unchanged.
No other changes. The MMAD-format questions are generated from these files at run time by
`mmad-boost build-bench`; they are not part of the dataset.
"""


def scaled_size(size: tuple[int, int]) -> tuple[int, int]:
    w, h = size
    scale = LONG_SIDE / max(w, h)
    if scale >= 1:
        return w, h
    return max(1, round(w * scale)), max(1, round(h * scale))


def convert(src: Path, dst: Path) -> int:
    dst.mkdir(parents=True, exist_ok=True)
    n_images = 0
    for path in sorted(src.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(src)
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        suffix = path.suffix.lower()
        if suffix in {".jpg", ".jpeg"}:
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.resize(scaled_size(im.size), Image.LANCZOS).save(out, quality=JPEG_QUALITY)
            n_images += 1
        elif suffix == ".png":
            with Image.open(path) as im:
                im.resize(scaled_size(im.size), Image.NEAREST).save(out, optimize=True)
        elif suffix == ".csv" or path.name == "LICENSE-DATASET":
            shutil.copyfile(path, out)
        # PROVENANCE.tsv describes the originals' hashes, which no longer hold: not copied.
    return n_images


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, required=True, help="an original VisA copy (with split_csv/1cls_subset.csv, fryum/, capsules/)")
    ap.add_argument("--dst", type=Path, default=ROOT / "mmad_boost" / "sample" / "visa", help="output folder (default mmad_boost/sample/visa; replaced)")
    args = ap.parse_args(argv)
    if not (args.src / "split_csv").is_dir():
        raise SystemExit(f"{args.src}: not a VisA folder (no split_csv/); pass --src")
    if args.dst.exists():
        shutil.rmtree(args.dst)
    n = convert(args.src, args.dst)
    (args.dst / "NOTICE").write_text(NOTICE.format(n_images=n, long_side=LONG_SIDE, quality=JPEG_QUALITY), encoding="utf-8")
    size = sum(p.stat().st_size for p in args.dst.rglob("*") if p.is_file())
    print(f"{args.dst}: {n} images, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
