"""Re-ranking, calibrated unknown, chosen references and 1-shot+ templates, on the bundled sample
with the real EfficientNet-Lite0 weights (retrieval/rerank.py, calibration.py, templates.py)."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from mmad_boost.cli import main
from mmad_boost.errors import MmadError
from mmad_boost.resources import sample_root
from mmad_boost.retrieval import KnowledgeRetriever
from mmad_boost.retrieval.references import select_references
from mmad_boost.retrieval.rerank import MIN_MARGIN, PatchReranker, calibrate_margin, relative_margin

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _photo(cat: str, i: int = 0, kind: str = "Normal") -> Image.Image:
    files = sorted((sample_root() / cat / "Data" / "Images" / kind).iterdir())
    with Image.open(files[i]) as im:
        return im.convert("RGB")


def test_k_center_takes_one_reference_per_cluster():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 32))
    sizes = (30, 5, 3, 2)  # the first N would all come from the big cluster
    x = np.concatenate([c + 0.05 * rng.normal(size=(n, 32)) for c, n in zip(centres, sizes)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cluster = np.repeat(np.arange(4), sizes)
    picks = select_references(x, 4)
    assert sorted(cluster[picks]) == [0, 1, 2, 3]
    assert select_references(x, 0) == list(range(len(x))) and select_references(x, 99) == list(range(len(x)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=1, max_size=60), st.sampled_from([0.0, 0.05, 0.2]))
def test_calibrated_margin_keeps_leave_one_out_risk_within_bounds(pairs, max_risk):
    margins, ok = [m for m, _ in pairs], [o for _, o in pairs]
    t = calibrate_margin(margins, ok, max_risk)
    accepted = [o for m, o in pairs if m >= t]
    assert t >= MIN_MARGIN
    assert sum(not o for o in accepted) <= max_risk * max(len(accepted), 1) + 1e-9
    # and no smaller threshold would do: just below t, more mistakes than allowed (unless t is the floor)
    if t > MIN_MARGIN + 1e-6:
        below = [o for m, o in pairs if m >= t - 2e-6]
        assert sum(not o for o in below) > max_risk * len(below)


def test_relative_margin():
    assert relative_margin(0.2, 0.4) == pytest.approx(0.5) and relative_margin(0.3, 0.3) == 0 and relative_margin(0.3, None) == 1.0


def test_patch_distance_sees_details_and_forgives_shifts():
    """Real weights: a shifted crop of a photo is closer to it than a mirror image (same parts, other
    places) or another photo of the product; the position-free variant cannot tell the mirror apart."""
    rr, free = PatchReranker(size=128), PatchReranker(size=128, radius=None)
    a = _photo("fryum", 0)
    w, h = a.size
    shifted = a.crop((12, 8, w, h)).resize(a.size)
    other = Image.fromarray(np.asarray(a)[::-1].copy())  # upside down: same parts, other places
    f = rr.features([a, shifted, other, _photo("fryum", 1)])
    d = rr.distances(f[0], f[1:])
    assert d.shape == (3,) and d[0] < d[1] and d[0] < d[2]
    assert rr.distances(f[0], f[:1])[0] == pytest.approx(0, abs=1e-3)
    df = free.distances(f[0], f[1:])
    assert (d[1] - d[0]) > (df[1] - df[0])  # the radius is what makes the layout count
    with pytest.raises(MmadError, match="rebuild"):
        rr.distances(f[0][:10], f[1:])


@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from lookalike_boards import MAIN_LAYOUTS, write_boards
    finally:
        sys.path.remove(str(BENCHMARKS))
    return write_boards(tmp_path_factory.mktemp("boards") / "data", sample_root(), MAIN_LAYOUTS[:4], n_train=8, n_test=4)


@pytest.fixture(scope="module")
def boards_kb(boards, tmp_path_factory):
    out = tmp_path_factory.mktemp("kb") / "kb"
    assert main(["kb", "build", "--data", str(boards), "--knowledge", str(boards / "knowledge"), "--refs-per-category", "4", "--out", str(out)]) == 0
    return out


@pytest.mark.slow  # encodes ~50 boards twice (global + patches)
def test_look_alike_boards_kb_build_eval(boards, boards_kb, capsys, tmp_path):
    from skimage import data

    r = KnowledgeRetriever.load(boards_kb)
    manifest = json.loads((boards_kb / "kb.json").read_text())
    assert r.reranker is not None and manifest["rerank"]["radius"] == 3 and r.margin_threshold == manifest["margin_threshold"] >= MIN_MARGIN
    assert len(r.image_store) == 16 and r.ref_patches.shape[0] == 16 and manifest["calibration"]["left_out"] == 16
    queries = sorted(boards.glob("Boards/*/test/good/*.png"))
    reranked = [r.retrieve(mode="image", image=p) for p in queries]
    global_only = KnowledgeRetriever(r.knowledge, image_store=r.image_store, k=r.k, threshold=r.threshold)
    glob = [global_only.retrieve(mode="image", image=p) for p in queries]
    truth = [p.parts[-4] for p in queries]
    top1 = np.mean([x.guess == f"Boards/{t}" for x, t in zip(reranked, truth)])
    top1_global = np.mean([x.guess == f"Boards/{t}" for x, t in zip(glob, truth)])
    assert top1 >= 0.9 and top1 > top1_global, (top1, top1_global)
    assert all(x.category in (None, t) for x, t in zip(reranked, truth))  # answered ones are right (the rest: unknown)
    assert all(x.rerank_ms > x.patch_ms > 0 and x.margin is not None for x in reranked)
    ood = tmp_path / "ood"
    ood.mkdir()
    for name in ("chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(data, name)()).save(ood / f"{name}.png")
        assert r.retrieve(mode="image", image=ood / f"{name}.png").category is None
    capsys.readouterr()
    assert main(["kb", "eval", "--kb", str(boards_kb), "--data", str(boards), "--ood", str(ood), "--json"]) == 0
    out = capsys.readouterr().out
    figures = json.loads(out.strip().splitlines()[-1])
    assert "confusion (rows: true category" in out and "accuracy at coverage" in out and "re-rank" in out
    assert set(figures["confusion"]) == {f"Boards/{t}" for t in truth} and figures["ood_unknown_rate"] == 1.0
    assert sum(sum(row.values()) for row in figures["confusion"].values()) == len(queries)
    cov = figures["coverage"]
    assert [c["coverage"] for c in cov][-1] == 1.0 and cov[-1]["accuracy"] == pytest.approx(top1)


@pytest.mark.slow
def test_damaged_patch_features_are_a_clear_error(boards_kb, tmp_path):
    bad = tmp_path / "kb"
    shutil.copytree(boards_kb, bad)
    np.save(bad / "image_patches.npy", np.zeros((3, 4, 5), np.float16))
    with pytest.raises(MmadError, match="image_patches.npy: holds"):
        KnowledgeRetriever.load(bad)
    (bad / "image_patches.npy").write_bytes(b"garbage")
    with pytest.raises(MmadError, match="damaged patch features"):
        KnowledgeRetriever.load(bad)
    (bad / "image_patches.npy").unlink()
    with pytest.raises(MmadError, match="missing from the KB folder"):
        KnowledgeRetriever.load(bad)


def test_one_shot_plus_templates_from_train_good_when_the_file_has_none(tmp_path):
    """A question file without similar_templates: 1-shot+ takes the category's most similar normal image."""
    from mmad_boost.protocol.data import Benchmark
    from mmad_boost.protocol.settings import parse_setting

    root = tmp_path / "data"
    good = root / "VisA" / "fryum" / "train" / "good"
    good.mkdir(parents=True)
    for i in range(4):
        _photo("fryum", i).resize((256, 171)).save(good / f"{i:03d}.png")
    query = _photo("fryum", 2)
    w, h = query.size
    (root / "VisA" / "fryum" / "test" / "good").mkdir(parents=True)
    query.crop((10, 6, w, h)).resize((256, 171)).save(root / "VisA/fryum/test/good/q.png")  # photo 2, shifted
    key = "VisA/fryum/test/good/q.png"
    conv = [{"Question": "Is there any defect?", "Options": {"A": "Yes", "B": "No"}, "Answer": "B", "type": "Anomaly Detection", "annotation": True}]
    (root / "mmad.json").write_text(
        json.dumps({key: {"image_path": key, "mask_path": "", "base_folder": "fryum", "conversation": conv, "similar_templates": [], "random_templates": []}})
    )
    bench = Benchmark(root)
    sample = bench.samples[0]
    setting = parse_setting("1-shot+")
    assert setting.templates(sample, bench) == ["VisA/fryum/train/good/002.png"]
    assert setting.templates(sample, bench) == ["VisA/fryum/train/good/002.png"]  # kept, not ranked again
    with pytest.raises(MmadError, match="similar_templates"):
        setting.templates(sample)  # without the benchmark: the file's own templates only, as before
    with pytest.raises(MmadError, match="holds 4 normal images, 5 needed"):
        parse_setting("k-shot:5").__class__("5-shot+", shots=5, similar=True).templates(sample, bench)


class _FirstOption:
    name = "first-option"

    def generate(self, prompt):
        assert len(prompt.query.templates) == 1  # the ranked template reached the model
        return f"Answer: {sorted(prompt.query.options)[0]}"


def test_runner_ranks_one_shot_plus_templates_for_a_file_without_them(fixture_root, tmp_path):
    from mmad_boost.protocol.data import Benchmark
    from mmad_boost.running.records import read_records
    from mmad_boost.running.runner import Runner
    from mmad_boost.protocol.settings import parse_setting

    qfile = fixture_root / "mmad.json"
    data = json.loads(qfile.read_text())
    for v in data.values():
        v["similar_templates"] = []
    qfile.write_text(json.dumps(data))
    bench = Benchmark(fixture_root)
    out = tmp_path / "run"
    Runner(bench, _FirstOption(), out, setting=parse_setting("1-shot+"), progress=False).run(bench.select())
    recs = read_records(out / "records.jsonl")
    assert recs and all(not r["error"] for r in recs)
    for r in recs:
        ds, cat = r["image"].split("/")[:2]
        (t,) = r["trace"]["templates"]
        assert t.startswith(f"{ds}/{cat}/train/good/")  # a normal image of the sample's own category
