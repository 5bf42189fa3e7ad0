"""Where the package's shipped files and its caches are: the one place that decides both.

Shipped files lie inside the installed package and are found through importlib.resources, so
they are found the same way from a wheel, from an editable install, and from any working folder.
In the source tree, `mmad_boost/knowledge_base` and `mmad_boost/sample/experts` are symbolic links
to the top-level `knowledge_base/` and `experts/` folders; building the wheel (or the sdist)
copies what they point to.

Caches (reference indexes, anomaly maps, the sample benchmark) go to one folder:
`$MMAD_BOOST_CACHE_DIR` (`0` turns the disk caches off), else `$XDG_CACHE_HOME/mmad-boost`,
else `~/.cache/mmad-boost`. Never inside the installed package, which may be read-only.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from .errors import MmadError

CACHE_ENV = "MMAD_BOOST_CACHE_DIR"

# name -> (path inside the package, what it is; for the error message)
SHIPPED = {
    "knowledge_base": (("knowledge_base",), "knowledge base (one TOML file per category)"),
    "sample": (("sample", "visa"), "VisA sample (fryum, capsules)"),
    "sample_experts": (("sample", "experts"), "fitted PatchCore experts of the sample"),
    "html_assets": (("html_assets",), "HTML report assets"),
    "paper_data": (("paper_data",), "published MMAD results (the paper's table)"),
}


def package_root() -> Path:
    root = files("mmad_boost")
    if not isinstance(root, Path):  # e.g. imported from a zip file: the shipped files are not plain files
        raise MmadError(f"mmad_boost is imported from {root}, not from a folder; install it with pip (unzipped)")
    return root


def shipped(name: str) -> Path:
    """A shipped folder by name (see SHIPPED); MmadError naming it and how to repair it when missing."""
    parts, what = SHIPPED[name]
    path = package_root().joinpath(*parts)
    if not path.is_dir():
        hint = "reinstall mmad-boost (pip install --force-reinstall mmad-boost)"
        if path.is_symlink() or path.is_file():  # a checkout whose symlinks git wrote as plain files
            hint = f"in a source checkout it is a symlink to the top-level folder; clone with symlinks enabled (git config core.symlinks true), or {hint}"
        raise MmadError(f"{path}: the shipped {what} is missing; {hint}")
    return path


def knowledge_base() -> Path:
    return shipped("knowledge_base")


def sample_root() -> Path:
    """The bundled VisA sample in VisA's own layout (<cat>/Data/..., split_csv/1cls_subset.csv)."""
    return shipped("sample")


def sample_experts() -> Path:
    """The fitted experts of the sample's categories (`visa-fryum/`, `visa-capsules/`)."""
    return shipped("sample_experts")


def html_assets() -> Path:
    return shipped("html_assets")


def cache_dir(kind: str) -> Path | None:
    """The cache folder for one kind of cached thing (created by its writer); None when caches are off."""
    v = os.environ.get(CACHE_ENV)
    if v == "0":
        return None
    base = Path(v) if v else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmad-boost"
    return base / kind
