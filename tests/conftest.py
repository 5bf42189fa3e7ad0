import atexit
import os
import shutil
import tempfile
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# Hermetic caches: maps and reference indexes cached by earlier runs must not hide work from the tests.
_CACHE = tempfile.mkdtemp(prefix="mmad-test-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE
os.environ.pop("MMAD_BOOST_CACHE_DIR", None)
atexit.register(shutil.rmtree, _CACHE, True)
sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]
# The bundled VisA sample (fryum, capsules; 512 px), found as the installed package finds it.
VISA = ROOT / "mmad_boost" / "sample" / "visa"
# MMAD's own domain_knowledge.json is not shipped (it is MMAD's); its tests run where this names it.
# Set but missing: the tests fail (a test that cannot find what it was given does not skip).
MMAD_KNOWLEDGE = Path(os.environ["MMAD_DOMAIN_KNOWLEDGE"]) if os.environ.get("MMAD_DOMAIN_KNOWLEDGE") else None
needs_mmad_knowledge = pytest.mark.skipif(
    MMAD_KNOWLEDGE is None, reason="MMAD's domain_knowledge.json is not shipped (it is MMAD's); set MMAD_DOMAIN_KNOWLEDGE=FILE to run this test"
)


@pytest.fixture
def fixture_root(tmp_path):
    """A generated MMAD-format benchmark (2 categories, synthetic images, masks)."""
    from fixtures import make_fixture

    root = tmp_path / "data"
    make_fixture(root)
    return root


@pytest.fixture(scope="session")
def shared_fixture_root(tmp_path_factory):
    """The same generated benchmark, shared read-only across a session (do not modify)."""
    from fixtures import make_fixture

    root = tmp_path_factory.mktemp("shared") / "data"
    make_fixture(root)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: on a small shared CI box more threads thrash instead of helping."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
