"""Faithful vs calibrated expert pictures on the bundled VisA sample, through the CLI a user runs.

For each category and each PatchCore setting: `mmad-boost expert fit` (15 training normals fitted,
5 held out for calibration), then `mmad-boost expert eval --json` in faithful and in calibrated
mode. Prints image/pixel AUROC, the false-mark rate (normal test images on which the picture marks
anything) and the hit rate (defective test images with a mark on the true mask), per category and
pooled over both.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_calibration.py [--sizes 256 448] [--viz bbox] [--json FILE]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cli(argv: list[str]) -> str:
    """Run `mmad-boost ARGV` in this process, quietly; what it printed to stdout."""
    from mmad_boost.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        rc = main(argv)
    if rc != 0:
        raise SystemExit(f"mmad-boost {' '.join(argv)} exited {rc}")
    return buf.getvalue()


def cli_json(argv: list[str]) -> dict:
    """The JSON object `mmad-boost ARGV` prints last."""
    return json.loads(cli(argv).strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--categories", nargs="+", default=["fryum", "capsules"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[256, 448], help="PatchCore input sizes to compare")
    ap.add_argument("--viz", default="bbox", choices=["bbox", "contour", "highlight", "mask"])
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="extra PatchCore option for every fit")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mmad_boost.demo import build_sample_bench

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")  # fresh map cache: ms/image is real inference
        with contextlib.redirect_stdout(io.StringIO()):
            build_sample_bench(Path(tmp) / "bench")
        data = str(Path(tmp) / "bench")
        for size in args.sizes:
            for cat in args.categories:
                out = str(Path(tmp) / f"pc-{cat}-{size}")
                opts = [f"--option=size={size}"] + [f"--option={o}" for o in args.option]
                cli(["expert", "fit", "--data", data, "--category", f"VisA/{cat}", *opts, "--out", out])
                base = ["expert", "eval", "--expert", out, "--data", data, "--viz", args.viz, "--json"]
                faithful = cli_json(base)
                calibrated = cli_json(base + ["--calibrated"])
                rows.append({"category": cat, "size": size, "faithful": faithful, "calibrated": calibrated})
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; viz {args.viz}; extra options {args.option or 'none'}")
    hdr = (f"{'category':9} {'size':>4} {'img AUROC':>9} {'px AUROC':>8} {'ms/img':>7}   "
           f"{'faithful: false marks':>21} {'hits':>6}   {'calibrated: false marks':>23} {'hits':>6}")
    print(hdr + "\n" + "-" * len(hdr))

    def frac(rows, mode, key, count):
        k = sum(round(r[mode][key] * r[mode][count]) for r in rows)
        n = sum(r[mode][count] for r in rows)
        return f"{k}/{n} {100 * k / n:3.0f}%"

    for size in args.sizes:
        group = [r for r in rows if r["size"] == size]
        for r in group + ([{"category": "both", "size": size, "pooled": group}] if len(group) > 1 else []):
            part = r.get("pooled", [r])
            f = part[0]["faithful"]
            auroc = f"{f['image_auroc']:9.3f} {f['pixel_auroc']:8.3f} {f['ms_per_image']:7.1f}" if "pooled" not in r else " " * 26
            print(f"{r['category']:9} {size:4d} {auroc}   {frac(part, 'faithful', 'false_mark_rate', 'normal'):>21} "
                  f"{frac(part, 'faithful', 'hit_rate', 'defective'):>6}   {frac(part, 'calibrated', 'false_mark_rate', 'normal'):>23} "
                  f"{frac(part, 'calibrated', 'hit_rate', 'defective'):>6}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
