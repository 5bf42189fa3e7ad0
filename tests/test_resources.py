"""Shipped files found through importlib.resources, the one cache folder, and the sample by name.

The built wheel itself is checked from outside the checkout by scripts/check_wheel.sh (CI).
"""

import os
import re
import subprocess
import sys
import tomllib

import pytest
from conftest import ROOT

from mmad_boost import resources, sample
from mmad_boost.errors import MmadError


def test_shipped_folders_are_the_top_level_ones_seen_from_the_package():
    assert resources.package_root() == ROOT / "mmad_boost"
    assert resources.knowledge_base().resolve() == (ROOT / "knowledge_base").resolve()
    assert resources.sample_experts().resolve() == (ROOT / "experts").resolve()
    assert sorted(p.name for p in (resources.knowledge_base() / "VisA").glob("*.toml")) == ["capsules.toml", "fryum.toml"]
    assert (resources.html_assets() / "report.js").is_file()
    # relative links, so a clone anywhere (and the sdist) resolves them inside the project
    for link in (ROOT / "mmad_boost" / "knowledge_base", ROOT / "mmad_boost" / "sample" / "experts"):
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))


def test_the_wheel_is_told_to_take_every_shipped_folder():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mmad_boost"]
    for parts, _ in resources.SHIPPED.values():
        assert any(p.split("/")[0] == parts[0] for p in patterns), parts


def test_a_missing_shipped_folder_names_itself_and_the_repair(monkeypatch):
    monkeypatch.setitem(resources.SHIPPED, "knowledge_base", (("no_such_folder",), "knowledge base"))
    with pytest.raises(MmadError, match=r"no_such_folder: the shipped knowledge base is missing; reinstall mmad-boost"):
        resources.knowledge_base()


def test_one_cache_folder_moved_by_one_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("MMAD_BOOST_CACHE_DIR", str(tmp_path / "c"))
    assert resources.cache_dir("maps") == tmp_path / "c" / "maps"
    monkeypatch.setenv("MMAD_BOOST_CACHE_DIR", "0")
    assert resources.cache_dir("maps") is None
    monkeypatch.delenv("MMAD_BOOST_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resources.cache_dir("reference-index") == tmp_path / "xdg" / "mmad-boost" / "reference-index"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resources.cache_dir("maps") == tmp_path / "home" / ".cache" / "mmad-boost" / "maps"
    # the expert CLI's map cache and the reference index follow it
    from mmad_boost.experts.cli import default_cache
    from mmad_boost.retrieval.references import _cache_dir

    assert default_cache() == resources.cache_dir("maps") and _cache_dir() == resources.cache_dir("reference-index")


def test_sample_by_name():
    assert sample.root() == ROOT / "mmad_boost" / "sample" / "visa"
    for cat in sample.CATEGORIES:
        assert len(sample.images(cat, "Normal")) == 25 and len(sample.images(cat, "Anomaly")) == 15
    assert sample.image("fryum", "Anomaly/000.JPG") == sample.images("fryum", "Anomaly")[0]
    assert (sample.expert_dir("capsules") / "expert.json").is_file()
    assert sample.expert_dir() == resources.sample_experts()
    with pytest.raises(MmadError, match="'bottle' is unknown; use one of capsules, fryum"):
        sample.image("bottle", "Normal/000.JPG")
    with pytest.raises(MmadError, match="fryum/Normal/999.JPG does not exist"):
        sample.image("fryum", "Normal/999.JPG")
    with pytest.raises(MmadError, match="kind 'Good' is unknown"):
        sample.images("fryum", "Good")


def test_sample_experts_load():
    from mmad_boost.experts import load_expert

    assert getattr(load_expert(sample.expert_dir("fryum")), "image_threshold", None) is not None


@pytest.mark.slow  # builds the benchmark (~5 s)
def test_sample_benchmark_built_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MMAD_BOOST_CACHE_DIR", str(tmp_path / "cache"))
    root = sample.benchmark_root()
    assert root.parent == tmp_path / "cache" / "sample-benchmark"
    bench = sample.benchmark()
    assert bench.root == root and len(bench.samples) == 40
    assert sum(len(s.questions) for s in bench.samples) == 139
    mtime = (root / "mmad.json").stat().st_mtime_ns
    assert sample.benchmark_root() == root and (root / "mmad.json").stat().st_mtime_ns == mtime  # reused
    assert [p.name for p in root.parent.iterdir()] == [root.name]  # no temporary folder left
    env = {**os.environ, "MMAD_BOOST_CACHE_DIR": "0"}
    out = subprocess.run([sys.executable, "-m", "mmad_boost.sample", "benchmark"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error: disk caches are off")
    out = subprocess.run(
        [sys.executable, "-m", "mmad_boost.sample", "benchmark"],
        capture_output=True,
        text=True,
        env={**os.environ, "MMAD_BOOST_CACHE_DIR": str(tmp_path / "cache")},
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == str(root)


CHECKED = ("mmad_boost", "tests", "benchmarks", "scripts", "notebooks", ".ci")
# what no user's clone can have: a path to the development data in a folder beside the checkout
REACHES_OUT = re.compile(r"\.\./shared|parents?\s*(\[\d\])?\s*/\s*[\"']shared[\"']|[\"']shared[\"']\s*/\s*[\"']data")


def test_nothing_reaches_outside_the_checkout():
    hits = []
    for top in CHECKED:
        for p in sorted((ROOT / top).rglob("*")):
            if p.is_file() and p.suffix in (".py", ".sh", ".ipynb", "") and p.name != "test_resources.py":
                text = p.read_text(encoding="utf-8", errors="replace")
                hits += [f"{p.relative_to(ROOT)}:{i + 1}" for i, line in enumerate(text.splitlines()) if REACHES_OUT.search(line)]
    assert not hits, hits
