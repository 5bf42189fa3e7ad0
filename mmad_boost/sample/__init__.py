"""The bundled VisA sample by name: its images, its MMAD-format benchmark and its fitted experts.

    from mmad_boost import sample
    sample.image("fryum", "Normal/000.JPG")      # a file inside the installed package
    sample.images("capsules", "Anomaly")          # every anomalous capsules image, sorted
    bench = sample.benchmark()                    # the MMAD-format benchmark (built once, cached)
    sample.expert_dir("fryum")                    # the fitted PatchCore expert of VisA/fryum

From a shell: `python -m mmad_boost.sample benchmark` prints the benchmark's folder (for `--data`).
The images are downscaled VisA copies (CC BY 4.0, see visa/NOTICE).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from ..errors import MmadError
from ..resources import cache_dir, sample_experts, sample_root

CATEGORIES = ("capsules", "fryum")
KINDS = ("Normal", "Anomaly")

__all__ = ["CATEGORIES", "KINDS", "root", "image", "images", "benchmark", "benchmark_root", "expert_dir"]


def root() -> Path:
    """The sample in VisA's own layout: <category>/Data/{Images,Masks}/..., split_csv/1cls_subset.csv."""
    return sample_root()


def _category(category: str) -> str:
    if category not in CATEGORIES:
        raise MmadError(f"sample category {category!r} is unknown; use one of {', '.join(CATEGORIES)}")
    return category


def images(category: str, kind: str = "Normal") -> list[Path]:
    """Every image of a category: kind `Normal` or `Anomaly`."""
    if kind not in KINDS:
        raise MmadError(f"sample image kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    folder = root() / _category(category) / "Data" / "Images" / kind
    return sorted(p for p in folder.iterdir() if p.is_file())


def image(category: str, name: str) -> Path:
    """One image by its name under <category>/Data/Images/, e.g. image("fryum", "Anomaly/000.JPG")."""
    p = root() / _category(category) / "Data" / "Images" / name
    if not p.is_file():
        raise MmadError(f"sample image {category}/{name} does not exist; names look like Normal/000.JPG or Anomaly/000.JPG")
    return p


def expert_dir(category: str | None = None) -> Path:
    """The fitted expert folder of a sample category (for `load_expert`, `--expert`), or with no
    category the folder holding them all (for `BoostedModel(expert=...)`, which picks by category)."""
    return sample_experts() if category is None else sample_experts() / f"visa-{_category(category)}"


def _fingerprint(src: Path, seed: int) -> str:
    from .. import __version__

    h = hashlib.sha256(f"{__version__}|{seed}".encode())
    for f in [src / "split_csv" / "1cls_subset.csv"] + [src / c / "image_anno.csv" for c in CATEGORIES]:
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def benchmark_root(out: str | Path | None = None, *, seed: int = 0) -> Path:
    """The sample as an MMAD-format benchmark (what `mmad-boost demo` evaluates): mmad.json plus images.

    Built into OUT, or by default into the cache folder (mmad_boost.resources.cache_dir), once:
    later calls reuse it. The build goes to a temporary folder that is renamed when complete, so
    an interrupted or concurrent build never leaves a half-written benchmark behind.
    """
    from ..building.builder import build_benchmark

    src = root()
    if out is None:
        base = cache_dir("sample-benchmark")
        if base is None:
            raise MmadError("disk caches are off (MMAD_BOOST_CACHE_DIR=0): pass the folder to build the sample benchmark into")
        out = base / _fingerprint(src, seed)
    out = Path(out)
    if (out / "mmad.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    build_benchmark(src, tmp, layout="visa", seed=seed)
    try:
        os.rename(tmp, out)
    except OSError:  # another process finished first, or OUT exists without mmad.json
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "mmad.json").is_file():
            raise MmadError(f"{out}: exists but holds no mmad.json; remove it or pass another folder") from None
    return out


def benchmark(out: str | Path | None = None, *, seed: int = 0):
    """The sample benchmark as a `mmad_boost.protocol.data.Benchmark` (see benchmark_root)."""
    from ..protocol.data import Benchmark

    return Benchmark(benchmark_root(out, seed=seed))
