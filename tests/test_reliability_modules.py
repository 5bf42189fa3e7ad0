"""Bad input for the boosts (knowledge, retrieval stores, experts) and untrusted files: one-line
errors naming the file or field and the fix; nothing unpickled; nothing left half-written."""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmad_boost.errors import MmadError
from test_reliability_inputs import BAD, assert_user_error, edit_questions, run_cli

ROOT = Path(__file__).resolve().parents[1]
FRYUM_TOML = ROOT / "knowledge_base" / "VisA" / "fryum.toml"


def eval_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--data", str(root), "--model", "baseline:random", "--out", str(out), "--no-progress", *extra]


def expect_error(capsys, root, tmp_path, *needles, extra=()):
    out = tmp_path / "run"
    rc, _, err = run_cli(capsys, *eval_args(root, out, *extra))
    line = assert_user_error(rc, err, *needles)
    assert not out.exists(), "a failed start must leave no run folder behind"
    return line


# -- knowledge ----------------------------------------------------------------------------------------

KNOWLEDGE_CASES = {
    "not-toml": ("dataset = 'MVTec'\ncategory = [", ["bad.toml", "not valid TOML"]),
    "missing-normal": ("dataset = 'MVTec'\ncategory = 'widget'\n", ["bad.toml", "'normal' is missing", "add it"]),
    "unknown-field": ("dataset = 'MVTec'\ncategory = 'widget'\nnormal = 'round'\ncolour = 'red'\n", ["bad.toml", "unknown field(s) colour"]),
    "defect-twice": (
        "dataset = 'MVTec'\ncategory = 'widget'\nnormal = 'round'\n"
        "[[defect]]\nname = 'hole'\ndescription = 'a hole'\n[[defect]]\nname = 'hole'\ndescription = 'again'\n",
        ["bad.toml", "'hole' is listed twice"],
    ),
}


@pytest.mark.parametrize("case", sorted(KNOWLEDGE_CASES))
def test_invalid_knowledge_file(case, shared_fixture_root, tmp_path, capsys):
    text, needles = KNOWLEDGE_CASES[case]
    kf = tmp_path / "bad.toml"
    kf.write_text(text)
    expect_error(capsys, shared_fixture_root, tmp_path, *needles, extra=["--rag", "--kb", str(kf)])


def test_invalid_mmad_knowledge_json(shared_fixture_root, tmp_path, capsys):
    kf = tmp_path / "domain_knowledge.json"
    kf.write_text('{"MVTec": {"widget": {"good": 3}}}')
    expect_error(
        capsys, shared_fixture_root, tmp_path, "domain_knowledge.json", "MVTec/widget must map entry names to texts", extra=["--mmad-knowledge", str(kf)]
    )
    kf.write_text("{")
    expect_error(capsys, shared_fixture_root, tmp_path, "domain_knowledge.json", "not valid JSON", extra=["--mmad-knowledge", str(kf)])


def test_empty_knowledge_base(shared_fixture_root, tmp_path, capsys):
    (tmp_path / "kb").mkdir()
    expect_error(capsys, shared_fixture_root, tmp_path, "kb", "no category .toml files", extra=["--rag", "--kb", str(tmp_path / "kb")])


def test_missing_knowledge_path(shared_fixture_root, tmp_path, capsys):
    expect_error(capsys, shared_fixture_root, tmp_path, "nothing-here", "not found", extra=["--rag", "--kb", str(tmp_path / "nothing-here")])


def test_unknown_category_in_oracle_mode_fails_before_any_answer(fixture_root, tmp_path, capsys):
    kf = tmp_path / "widget.toml"
    kf.write_text("dataset = 'MVTec'\ncategory = 'widget'\nnormal = 'A round orange widget.'\n")
    # widget is known, gadget is not: the run must stop before asking anything, not halfway
    expect_error(capsys, fixture_root, tmp_path, "category MVTec/gadget: not in the knowledge base", "--mmad-knowledge", extra=["--rag", "--kb", str(kf)])
    rc, _, err = run_cli(capsys, *eval_args(fixture_root, tmp_path / "run", "--rag", "--kb", str(kf), "--category", "widget", "--limit", "2"))
    assert rc == 0, err


# -- experts --------------------------------------------------------------------------------------------


def test_unknown_expert_fails_before_any_answer(shared_fixture_root, tmp_path, capsys):
    expect_error(capsys, shared_fixture_root, tmp_path, "expert 'patchkore' is unknown", "patchcore", extra=["--expert", "patchkore"])
    expect_error(capsys, shared_fixture_root, tmp_path, "expert folder", "not found", extra=["--expert", str(tmp_path / "no" / "folder")])


def test_expert_used_before_fitting():
    from mmad_boost.experts import create_expert

    expert = create_expert("patchcore")
    assert not expert.fitted
    with pytest.raises(MmadError, match="predict called before fit; call fit"):
        expert.predict(Image.new("RGB", (64, 64)))


def test_gt_expert_with_a_mask_of_another_size(fixture_root, tmp_path, capsys):
    from mmad_boost.protocol.data import Benchmark

    bench = Benchmark(fixture_root)
    Image.new("L", (50, 40), 255).save(bench.mask_file(bench.by_key[BAD]))
    edit_questions(fixture_root, lambda d: {BAD: d[BAD]})  # the bad image only: nothing may be recorded
    expect_error(capsys, fixture_root, tmp_path, "004_mask.png is 50x40", "is 128x128", "resize the mask", extra=["--expert", "gt"])


def test_expert_folder_damaged(tmp_path):
    from mmad_boost.experts import load_expert

    d = tmp_path / "expert"
    d.mkdir()
    with pytest.raises(MmadError, match="expert.json not found"):
        load_expert(d)
    (d / "expert.json").write_text("{")
    with pytest.raises(MmadError, match="not valid JSON.*refit"):
        load_expert(d)


class _Boom:
    """Unpickling this would create a file: proof that something executed pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_pickled_arrays_are_never_executed(tmp_path):
    from mmad_boost.experts import create_expert, load_expert

    marker = tmp_path / "pwned.txt"
    d = tmp_path / "expert"
    create_expert("gt").save(d)
    meta = json.loads((d / "expert.json").read_text())
    meta["arrays"] = ["memory"]
    (d / "expert.json").write_text(json.dumps(meta))
    np.save(d / "memory.npy", np.array([_Boom(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(MmadError, match="memory"):  # refused by the folder schema (no such array for gt) before any read
        load_expert(d)
    assert not marker.exists()
    meta["kind"], meta["arrays"], meta["config"] = "patchcore", ["memory_bank"], {}
    (d / "expert.json").write_text(json.dumps(meta))
    np.save(d / "memory_bank.npy", np.array([_Boom(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(MmadError, match="memory_bank.npy"):  # an object array: its header is refused, nothing unpickled
        load_expert(d)
    assert not marker.exists()


@pytest.mark.slow  # imports torch
def test_pickled_backbone_weights_are_refused(tmp_path):
    from mmad_boost.weights import read_state

    marker = tmp_path / "pwned.txt"
    f = tmp_path / "weights.pth"
    f.write_bytes(pickle.dumps(_Boom(marker), protocol=2))  # a plain pickle, as an attacker would ship
    with pytest.raises(MmadError, match="weights.pth"):
        read_state(f)
    assert not marker.exists()


# -- retrieval stores -----------------------------------------------------------------------------------

IDENT_A = {"name": "efficientnet-lite0", "weights_sha256": "a" * 64, "dim": 8, "version": 1}
IDENT_B = {**IDENT_A, "name": "minilm", "weights_sha256": "b" * 64}


def _store(tmp_path: Path) -> Path:
    from mmad_boost.retrieval.store import VectorStore

    s = VectorStore(IDENT_A)
    v = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    s.add(v / np.linalg.norm(v, axis=1, keepdims=True), [{"i": i} for i in range(5)])
    s.save(tmp_path / "kb", "image")
    return tmp_path / "kb"


def test_store_built_with_another_encoder(tmp_path):
    from mmad_boost.retrieval.store import VectorStore

    d = _store(tmp_path)
    assert len(VectorStore.load(d, "image", IDENT_A)) == 5
    with pytest.raises(MmadError, match="image.json: built with encoder efficientnet-lite0.*minilm.*rebuild"):
        VectorStore.load(d, "image", IDENT_B)


@pytest.mark.parametrize("damage", ["faiss-garbage", "faiss-truncated", "vectors-pickled", "meta-not-json", "faiss-missing"])
def test_damaged_store_files(damage, tmp_path):
    from mmad_boost.retrieval.store import VectorStore

    d = _store(tmp_path)
    marker = tmp_path / "pwned.txt"
    if damage == "faiss-garbage":
        (d / "image.faiss").write_bytes(b"\x00garbage" * 10)
    elif damage == "faiss-truncated":
        data = (d / "image.faiss").read_bytes()
        (d / "image.faiss").write_bytes(data[: len(data) // 2])
    elif damage == "vectors-pickled":
        np.save(d / "image.npy", np.array([_Boom(marker)], dtype=object), allow_pickle=True)
    elif damage == "meta-not-json":
        (d / "image.json").write_text("{")
    else:
        (d / "image.faiss").unlink()
    with pytest.raises(MmadError) as e:
        VectorStore.load(d, "image", IDENT_A)
    msg = str(e.value)
    assert "\n" not in msg and "image." in msg and "rebuild" in msg
    assert not marker.exists()


def test_damaged_kb_folder_through_the_cli(shared_fixture_root, tmp_path, capsys):
    kb = tmp_path / "kbdir"
    kb.mkdir()
    (kb / "kb.json").write_text("{")
    (kb / "knowledge.json").write_text("[]")
    expect_error(capsys, shared_fixture_root, tmp_path, "kbdir", "rebuild", extra=["--rag", "--kb", str(kb)])


# -- untrusted files: a static check of the whole package --------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve", "marshal"}


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_loads(source: str, filename: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} imports {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where} imports from {node.module}")
        elif isinstance(node, ast.Call):
            f = node.func
            dotted = ast.unparse(f)
            if dotted == "torch.load" and not _is_true(_kw(node, "weights_only")):
                found.append(f"{where} torch.load without weights_only=True")
            elif dotted in ("np.load", "numpy.load") and _is_true(_kw(node, "allow_pickle")):
                found.append(f"{where} np.load(allow_pickle=True)")
            elif dotted.endswith("read_pickle") or dotted.endswith("from_pickle"):
                found.append(f"{where} {dotted}")
            elif dotted == "yaml.load" and "Safe" not in ast.unparse(_kw(node, "Loader") or ast.Constant(None)):
                found.append(f"{where} yaml.load without SafeLoader")
            elif dotted in ("eval", "exec"):
                found.append(f"{where} {dotted}()")
            elif _is_true(_kw(node, "trust_remote_code")):
                found.append(f"{where} trust_remote_code=True hard-coded")
    return found


def test_the_checker_catches_what_it_should():
    bad = (
        "import pickle\nfrom joblib import load\nimport torch\ntorch.load('x')\ntorch.load('x', weights_only=False)\n"
        "import numpy as np\nnp.load('x', allow_pickle=True)\neval('1')\nimport yaml\nyaml.load(s)\nf(trust_remote_code=True)\n"
    )
    assert len(unsafe_loads(bad, "bad.py")) == 8
    good = "import torch\ntorch.load('x', map_location='cpu', weights_only=True)\nnp.load('x')\nm.eval()\nyaml.safe_load(s)\n"
    assert unsafe_loads(good, "good.py") == []


def test_no_module_loads_pickle():
    files = sorted((ROOT / "mmad_boost").rglob("*.py")) + sorted((ROOT / "scripts").rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))
    assert len(files) > 20
    found = [hit for f in files for hit in unsafe_loads(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]
    assert not found, "unsafe loading: " + "; ".join(found)
