"""Image/text retrieval over real VisA images with real EfficientNet-Lite0 / MiniLM weights, stores, CLI."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import MMAD_KNOWLEDGE, ROOT, VISA, needs_mmad_knowledge
from mmad_boost.cli import main
from mmad_boost.errors import MmadError
from mmad_boost.retrieval import KnowledgeRetriever, LangchainKnowledgeRetriever, VectorStore

CATS = ("fryum", "capsules")
N_REFS, N_GOOD, N_BAD = 3, 2, 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _copy(src, dst, size=256):
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size))
        im.save(dst)


@pytest.fixture(scope="module")
def visa_root(tmp_path_factory):
    """An MMAD-layout root made from the VisA originals (downscaled): train/good refs, test good/bad."""
    root = tmp_path_factory.mktemp("visa") / "data"
    rows = list(csv.DictReader(open(VISA / "split_csv" / "1cls_subset.csv")))
    data = {}
    for cat in CATS:
        train = [r for r in rows if r["object"] == cat and r["split"] == "train"][:N_REFS]
        good = [r for r in rows if r["object"] == cat and r["split"] == "test" and r["label"] == "normal"][:N_GOOD]
        bad = [r for r in rows if r["object"] == cat and r["split"] == "test" and r["label"] != "normal"][:N_BAD]
        for r in train:
            _copy(VISA / r["image"], root / "VisA" / cat / "train" / "good" / os.path.basename(r["image"]))
        for folder, items in (("good", good), ("bad", bad)):
            for r in items:
                key = f"VisA/{cat}/test/{folder}/{os.path.basename(r['image'])}"
                _copy(VISA / r["image"], root / key)
                data[key] = {
                    "image_path": key,
                    "mask_path": "",
                    "base_folder": cat,
                    "conversation": [
                        {
                            "Question": "Is there any defect in the object?",
                            "Options": {"A": "Yes", "B": "No"},
                            "Answer": "B" if folder == "good" else "A",
                            "type": "Anomaly Detection",
                            "annotation": True,
                        }
                    ],
                    "similar_templates": [],
                    "random_templates": [],
                }
    (root / "mmad.json").write_text(json.dumps(data))
    return root


@pytest.fixture(scope="module")
def ood_dir(tmp_path_factory):
    from skimage import data

    d = tmp_path_factory.mktemp("ood")
    for name in ("chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(data, name)()).save(d / f"{name}.png")
    return d


@pytest.fixture(scope="module")
def kb_dir(visa_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("kb") / "kb"
    assert main(["kb", "build", "--data", str(visa_root), "--refs-per-category", str(N_REFS), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def retriever(kb_dir):
    return KnowledgeRetriever.load(kb_dir)


def _test_images(root):
    return sorted(root.glob("VisA/*/test/*/*.JPG"))


def test_image_retrieval_finds_every_category(retriever, visa_root, ood_dir):
    assert len(retriever.image_store) == N_REFS * len(CATS)
    for p in _test_images(visa_root):
        r = retriever.retrieve(mode="image", image=Image.open(p))
        truth = p.parts[-4]
        assert (r.category, r.dataset) == (truth, "VisA"), p
        assert r.runner_up == next(c for c in CATS if c != truth)
        assert r.score > retriever.threshold > r.runner_up_score
        assert "<Normal characteristics>" in r.text and r.encode_ms > 0 and r.search_ms >= 0
    for p in sorted(ood_dir.iterdir()):
        r = retriever.retrieve(mode="image", image=p)
        assert r.category is None and r.text == "" and r.score < retriever.threshold, p.name


def test_retriever_survives_pickling_for_ray_workers(retriever, visa_root):
    import pickle  # what Ray's cloudpickle does to a model holding a retriever; never used for files

    copy = pickle.loads(pickle.dumps(retriever))
    img = _test_images(visa_root)[-1]
    a, b = retriever.retrieve(mode="image", image=img), copy.retrieve(mode="image", image=img)
    assert (a.category, a.runner_up) == (b.category, b.runner_up) and abs(a.score - b.score) < 1e-6
    assert copy.config() == retriever.config()


def test_kb_query_and_eval_cli(kb_dir, visa_root, ood_dir, capsys, tmp_path):
    img = _test_images(visa_root)[0]
    assert main(["kb", "query", "--kb", str(kb_dir), str(img), str(ood_dir / "coffee.png")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert f"VisA/{img.parts[-4]}" in lines[0] and "runner-up" in lines[0]
    assert "\tunknown\t" in lines[1]
    questions = json.loads((visa_root / "mmad.json").read_text())
    first = next(iter(questions.values()))
    questions["VisA/fryum/test/bad/999.JPG"] = dict(first, image_path="VisA/fryum/test/bad/999.JPG")  # not downloaded
    qfile = tmp_path / "partial.json"
    qfile.write_text(json.dumps(questions))
    argv = ["kb", "eval", "--kb", str(kb_dir), "--data", str(visa_root), "--questions", str(qfile), "--ood", str(ood_dir), "--json"]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(out[-1])
    assert figures["images"] == len(CATS) * (N_GOOD + N_BAD) and figures["missing_images"] == 1
    assert figures["top1_accuracy"] == 1.0 and figures["ood_unknown_rate"] == 1.0 and figures["ood_images"] == 3
    assert figures["encode_ms"] > 0 and figures["search_ms"] >= 0
    assert any("top-1 category acc." in line and "100.00 %" in line for line in out)


def test_kb_build_errors_are_one_line(fixture_root, tmp_path, capsys):
    # the synthetic benchmark's categories (widget, gadget) have no knowledge
    assert main(["kb", "build", "--data", str(fixture_root), "--out", str(tmp_path / "kb")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --data") and "MVTec/gadget" in err and "--mmad-knowledge" in err and "\n" not in err
    assert main(["kb", "build", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "kb")]) == 2
    assert "data root not found" in capsys.readouterr().err
    assert main(["kb", "query", "--kb", str(tmp_path / "nowhere"), "x.png"]) == 2
    assert "knowledge path not found" in capsys.readouterr().err


@needs_mmad_knowledge
def test_kb_build_with_mmad_knowledge(visa_root, tmp_path):
    out = tmp_path / "kb"
    assert main(["kb", "build", "--data", str(visa_root), "--mmad-knowledge", str(MMAD_KNOWLEDGE), "--refs-per-category", "1", "--out", str(out)]) == 0
    r = KnowledgeRetriever.load(out)
    assert len(r.knowledge) == 38 and len(r.image_store) == 2
    raw = json.loads(MMAD_KNOWLEDGE.read_text())
    img = next(p for p in _test_images(visa_root) if "capsules" in p.parts)
    assert r.retrieve(mode="image", image=img).text == "\n".join(raw["VisA"]["capsules"].values())
    assert r.retrieve(mode="oracle", dataset="MVTec-AD", category="zipper").text == "\n".join(raw["MVTec"]["zipper"].values())


@pytest.mark.slow
def test_save_load_in_new_process_gives_identical_results(kb_dir, retriever, visa_root, tmp_path):
    imgs = [str(p) for p in _test_images(visa_root)[:3]]
    here = [retriever.retrieve(mode="image", image=p) for p in imgs]
    code = (
        "import json,sys,torch; torch.set_num_threads(1)\n"
        "from mmad_boost.retrieval import KnowledgeRetriever\n"
        "r = KnowledgeRetriever.load(sys.argv[1])\n"
        "print(json.dumps([[x.category, x.score, x.runner_up, x.runner_up_score, x.text] "
        "for x in (r.retrieve(mode='image', image=p) for p in sys.argv[2:])]))\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code, str(kb_dir), *imgs], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr
    there = json.loads(out.stdout.strip().splitlines()[-1])
    assert there == [[x.category, x.score, x.runner_up, x.runner_up_score, x.text] for x in here]


def test_store_with_other_weights_is_refused(kb_dir, tmp_path):
    bad = tmp_path / "kb"
    shutil.copytree(kb_dir, bad)
    meta = json.loads((bad / "image.json").read_text())
    meta["identity"]["weights_sha256"] = "0" * 64  # as if built with other weights of the same name
    (bad / "image.json").write_text(json.dumps(meta))
    with pytest.raises(MmadError, match="rebuild"):
        KnowledgeRetriever.load(bad)
    other = {"name": "open_clip:ViT-B-32", "weights_sha256": "1" * 64, "dim": 1280, "version": "1"}
    with pytest.raises(MmadError, match=r"built with encoder efficientnet-lite0 .*but open_clip:ViT-B-32 \(weights 111111111111"):
        VectorStore.load(kb_dir, "image", other)


@pytest.mark.parametrize("damage", ["garbage", "truncate", "missing"])
def test_damaged_index_is_a_clear_error(kb_dir, tmp_path, damage):
    bad = tmp_path / "kb"
    shutil.copytree(kb_dir, bad)
    f = bad / "image.faiss"
    if damage == "garbage":
        f.write_bytes(b"not a faiss index" * 10)
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:200])
    else:
        f.unlink()
    with pytest.raises(MmadError, match="image.faiss") as e:
        KnowledgeRetriever.load(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_store_kinds_agree_and_round_trip(tmp_path, kind):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 64)).astype(np.float32)
    data = np.repeat(centres, 100, axis=0) + 0.05 * rng.normal(size=(400, 64)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    ident = {"name": "test", "weights_sha256": "x", "dim": 64, "version": "1"}
    store = VectorStore(ident, kind)
    store.add(data, [{"row": i} for i in range(len(data))])
    q = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    s, ids = store.search(q, 5)
    assert [store.meta[i[0]]["row"] // 100 for i in ids] == [0, 1, 2, 3]
    store.save(tmp_path, "s")
    again = VectorStore.load(tmp_path, "s", ident)
    s2, ids2 = again.search(q, 5)
    assert np.array_equal(ids, ids2) and np.allclose(s, s2) and again.kind == kind


def test_langchain_image_query_returns_documents(retriever, visa_root):
    img = next(p for p in _test_images(visa_root) if "fryum" in p.parts)
    docs = LangchainKnowledgeRetriever(retriever=retriever, k=3).invoke(str(img))
    assert len(docs) == 3 and {d.metadata["category"] for d in docs} == {"fryum"}
    assert docs[0].metadata["kind"] == "normal" and docs[0].metadata["mode"] == "image" and docs[0].metadata["score"] > 0.5
    assert docs[1].page_content.startswith("<Defect: ")


@pytest.mark.slow  # loads sentence-transformers and MiniLM
def test_text_modes_and_langchain(retriever, visa_root):
    r = retriever.retrieve(mode="text", question="Liquid has leaked out of a broken soft-gel shell and left a dark stain.")
    assert (r.dataset, r.category) == ("VisA", "capsules") and r.chunks[0]["entry"] == "leak"
    assert r.runner_up == "fryum" and r.score > r.runner_up_score
    assert "<Normal characteristics>" in r.text and "<Defect: leak>" in r.text
    img = next(p for p in _test_images(visa_root) if "fryum" in p.parts)
    both = retriever.retrieve(mode="image+text", image=img, question="Is a spoke of the wheel broken in the middle?")
    assert both.category == "fryum" and both.chunks[0]["entry"] == "middle_breakage" and both.mode == "image+text"
    focused = retriever.retrieve(mode="oracle", dataset="VisA", category="fryum", question="Is part of it overcooked and brown?", top_k=2)
    assert focused.category == "fryum" and len(focused.chunks) == 2 and "<Defect: burnt>" in focused.text
    assert "<Normal characteristics>" in focused.text and len(focused.text) < len(retriever.retrieve(mode="oracle", category="fryum").text)
    docs = LangchainKnowledgeRetriever(retriever=retriever, k=2).invoke("an air bubble trapped inside a capsule")
    assert len(docs) == 2 and docs[0].metadata["entry"] == "bubble" and docs[0].metadata["category"] == "capsules"
    assert docs[0].page_content.startswith("<Defect: bubble>")


def test_default_uses_bundled_sample(monkeypatch, tmp_path):
    import mmad_boost.retrieval.retriever as rmod

    sample = ROOT / "mmad_boost" / "sample" / "visa"
    if not sample.is_dir():
        pytest.skip("bundled sample not built yet")
    monkeypatch.setenv("MMAD_BOOST_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(rmod, "_DEFAULT", None)
    r = KnowledgeRetriever.default()
    refs = [p for c in r.knowledge for p in c.references]
    assert refs and all(str(p).startswith(str(sample)) for p in refs)
    img = sorted((sample / "capsules" / "Data" / "Images" / "Anomaly").iterdir())[0]
    res = r.retrieve(mode="image", image=img)
    assert res.category == "capsules" and "bubble" in res.text
    assert KnowledgeRetriever.default() is r  # built once per process
    assert list(tmp_path.rglob("image.faiss"))  # and cached on disk for the next process
    monkeypatch.setattr(rmod, "_DEFAULT", None)
    again = KnowledgeRetriever.default().retrieve(mode="image", image=img)
    assert again.category == "capsules" and abs(again.score - res.score) < 1e-5


TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.mark.slow  # imports open_clip
def test_open_clip_encoder_from_local_file(visa_root, kb_dir, tmp_path):
    """A tiny randomly initialised open_clip model saved locally: loading, image+text, identity checks."""
    import open_clip
    import torch

    cfg = tmp_path / "tiny-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    torch.save(open_clip.create_model("tiny-clip", pretrained=None).state_dict(), tmp_path / "tiny.pt")
    spec = f"open_clip:{cfg}:{tmp_path / 'tiny.pt'}"
    out = tmp_path / "kb"
    assert main(["kb", "build", "--data", str(visa_root), "--encoder", spec, "--refs-per-category", "2", "--text", "--out", str(out)]) == 0
    r = KnowledgeRetriever.load(out)
    assert r.image_store.identity["name"] == "open_clip:tiny-clip" and r.image_store.identity["dim"] == 32
    assert r.text_store.identity == r.image_store.identity  # the CLIP text tower embeds the chunks
    res = r.retrieve(mode="image+text", image=_test_images(visa_root)[0], question="Is there a crack?")
    assert res.score is not None and res.runner_up is not None and res.encode_ms > 0
    # the EfficientNet KB refuses the CLIP encoder, and a different CLIP weights file is refused too
    with pytest.raises(MmadError, match="was asked for"):
        KnowledgeRetriever.load(kb_dir, image_encoder=spec)
    torch.manual_seed(1)
    torch.save(open_clip.create_model("tiny-clip", pretrained=None).state_dict(), tmp_path / "other.pt")
    with pytest.raises(MmadError, match="was asked for"):
        KnowledgeRetriever.load(out, image_encoder=f"open_clip:{cfg}:{tmp_path / 'other.pt'}")
    with pytest.raises(MmadError, match="missing.pt: open_clip weights not found"):
        KnowledgeRetriever.load(out, image_encoder=f"open_clip:{cfg}:{tmp_path / 'missing.pt'}")
