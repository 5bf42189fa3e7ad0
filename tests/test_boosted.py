"""BoostedModel by hand and inside the runner; compare; the eval flags."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmad_boost import BoostedModel, MmadError
from mmad_boost.cli import main
from mmad_boost.reporting.compare import changed_answers, compare_runs
from mmad_boost.protocol.data import Benchmark
from mmad_boost.running.runner import Runner
from mmad_boost.protocol.scoring import score_records
from mmad_boost.running.records import run_records
from fixtures import Recorder


@dataclass
class FakeRetrieval:  # the retrieval contract's result, for tests that must not load encoders
    mode: str
    category: str | None
    dataset: str | None
    score: float | None
    runner_up: str | None
    runner_up_score: float | None
    text: str
    chunks: list = field(default_factory=list)
    encode_ms: float = 0.0
    search_ms: float = 0.0


class CountingRetriever:
    """Knows the fixture's two categories; image mode guesses by the mean colour (orange = widget)."""

    def __init__(self):
        self.calls = []

    def retrieve(self, *, mode, image=None, dataset=None, category=None, question=None):
        self.calls.append((mode, category))
        if mode == "image":
            r, g, b = np.asarray(image, dtype=float).reshape(-1, 3).mean(0)
            category = "widget" if r > b else "gadget"
        return FakeRetrieval(mode, category, dataset, 0.9 if mode == "image" else None, None, None, f"<{category}> Description: knowledge about {category}.")


class BoxExpert:
    """A user expert object: a bright square in the upper left is its anomaly."""

    name = "box"
    needs_mask = needs_templates = False
    fitted = True

    def predict(self, image, *, mask=None, templates=None):
        from mmad_boost.experts import ExpertOutput

        w, h = image.size
        amap = np.zeros((h, w), np.float32)
        amap[h // 8 : h // 4, w // 8 : w // 4] = 1.0
        return ExpertOutput(map=amap, score=1.0, decision=True, pixel_threshold=0.5)


def _object(colour=(200, 120, 40), defect=False, size=96):
    im = Image.new("RGB", (size, size), (30, 30, 30))
    d = ImageDraw.Draw(im)
    d.ellipse((12, 12, size - 12, size - 12), fill=colour)
    if defect:
        d.rectangle((40, 40, 52, 50), fill=(250, 250, 250))
    return im


def test_by_hand_quickstart_rag_and_expert():
    base = Recorder()
    retriever = CountingRetriever()
    model = BoostedModel(base, rag=retriever, expert=BoxExpert(), viz="bbox")
    template, query = _object(), _object(defect=True)
    answer = model([template, query], "Is there any defect in the object? A. Yes B. No")
    assert answer == "Answer: A"
    assert len(base.prompts) == 1
    p = base.prompts[0]
    # order (protocol §4): template, query, expert picture
    assert p.images[0] is template and p.images[1] is query and len(p.images) == 3
    text = p.text()
    assert text.index("domain knowledge") < text.index("knowledge about widget") < text.index("Here is the query image") < text.index("red box")
    assert text.rstrip().endswith("A. Yes B. No")
    # by hand there is no category: retrieval falls back to the image
    assert retriever.calls == [("image", None)]
    tr = model.last_trace
    assert tr["retrieval"]["category"] == "widget" and tr["retrieval"]["true_category"] is None
    assert tr["expert"]["name"] == "box" and tr["expert"]["marked"] is True and tr["expert"]["picture"] is None
    assert set(tr["timings"]) >= {"retrieval_s", "expert_s", "render_s"}
    # the expert picture really has red box pixels
    pic = np.asarray(p.images[2])
    assert ((pic[..., 0] == 255) & (pic[..., 1] == 0) & (pic[..., 2] == 0)).sum() > 20


def test_by_hand_errors_are_one_line():
    with pytest.raises(MmadError, match="oracle"):
        BoostedModel(Recorder(), rag=CountingRetriever(), retrieval="oracle")([_object()], "Q?")
    with pytest.raises(MmadError, match="mask"):
        BoostedModel(Recorder(), expert="gt")([_object()], "Q?")
    with pytest.raises(MmadError, match="viz 'arrows'.*bbox, contour"):
        BoostedModel(Recorder(), expert="gt", viz="arrows")
    with pytest.raises(MmadError, match="needs an expert"):
        BoostedModel(Recorder(), calibrated=True)
    with pytest.raises(MmadError, match="not found"):
        BoostedModel(Recorder(), rag="/nonexistent/kb")


def test_wrapping_is_transparent():
    """A BoostedModel around a BoostedModel: both boosts reach the base, each once."""
    base = Recorder()
    retriever = CountingRetriever()
    inner = BoostedModel(base, rag=retriever)
    outer = BoostedModel(inner, expert=BoxExpert())
    outer([_object(), _object(defect=True)], "Where is the defect? A. top B. left")
    assert len(retriever.calls) == 1 and len(base.prompts) == 1
    text = base.prompts[0].text()
    assert "knowledge about widget" in text and "red box" in text
    assert outer.config()["base"]["name"] == "boosted"


def test_in_runner_prepares_once_per_image_and_traces(fixture_root, tmp_path):
    bench = Benchmark(fixture_root)
    base = Recorder()
    retriever = CountingRetriever()
    model = BoostedModel(base, rag=retriever, expert="gt", viz="contour")
    prepared = []
    real_prepare = model.prepare

    def counting_prepare(q):
        prepared.append(q.info.key)
        return real_prepare(q)

    model.prepare = counting_prepare
    out = tmp_path / "run"
    items = bench.select()
    Runner(bench, model, out, workers=2, progress=False).run(items)
    keys = {s.key for s, _ in items}
    assert sorted(prepared) == sorted(keys)  # once per image, not per question
    assert len(retriever.calls) == len(keys) and all(m == "oracle" for m, _ in retriever.calls)
    assert len(base.prompts) == len(items)
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == len(items)
    for r in records:
        tr = r["trace"]
        assert tr["retrieval"]["category"] == tr["retrieval"]["true_category"] == r["image"].split("/")[1]
        assert tr["retrieval"]["knowledge_chars"] > 0
        ex = tr["expert"]
        assert ex["name"] == "gt" and ex["style"] == "contour"
        # the ground truth marks exactly the defective images
        assert ex["marked"] == ("good" not in r["image"])
        assert (out / ex["picture"]).is_file()
    # each defective question's prompt carries the knowledge and the marked picture
    bad = [p for p in base.prompts if "good" not in p.query.info.key]
    assert all(len(p.images) == 3 and "red contour" in p.text() for p in bad)
    from mmad_boost.reporting.reports import write_reports

    write_reports([out])
    report = (out / "report.md").read_text()
    assert "category right 12/12" in report
    assert "marks on 0/6 normal images" in report and "on 6/6 defective images" in report


def test_eval_flags_and_config_refuses_mixing(fixture_root, tmp_path, capsys):
    out = tmp_path / "gt"
    assert main(["eval", "--data", str(fixture_root), "--model", "baseline:random", "--expert", "gt", "--viz", "bbox", "--no-progress", "--out", str(out)]) == 0
    recs = run_records(out)
    assert all(r["trace"]["expert"]["style"] == "bbox" for r in recs)
    ident = json.loads((out / "run.json").read_text())["identity"]
    assert ident["model_config"]["expert"] == {"source": "gt", "style": "bbox", "mode": "faithful", "options": {}}
    # another viz into the same folder is refused
    assert (
        main(["eval", "--data", str(fixture_root), "--model", "baseline:random", "--expert", "gt", "--viz", "contour", "--no-progress", "--out", str(out)]) == 2
    )
    assert main(["eval", "--data", str(fixture_root), "--model", "baseline:random", "--calibrated", "--no-progress", "--out", str(tmp_path / "x")]) == 2
    assert "--calibrated needs --expert" in capsys.readouterr().err


def test_compare_cli_deltas(fixture_root, tmp_path, capsys):
    plain, gt = tmp_path / "plain", tmp_path / "gt"
    for out, extra in ((plain, []), (gt, ["--expert", "gt"])):
        assert main(["eval", "--data", str(fixture_root), "--model", "baseline:random", "--no-progress", "--out", str(out), *extra]) == 0
    capsys.readouterr()
    assert main(["compare", str(plain), str(gt), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    a = score_records(run_records(plain)).rows["Average"]
    b = score_records(run_records(gt)).rows["Average"]
    row = data["runs"][1]
    assert data["baseline"] == "plain" and row["run"] == "gt"
    assert row["Average delta"] == pytest.approx(b["Average"] - a["Average"], abs=1e-3)
    assert main(["compare", str(plain), str(gt)]) == 0
    md = capsys.readouterr().out
    line = next(ln for ln in md.splitlines() if ln.startswith("| gt |"))
    assert f"{b['Average']:.2f} ({b['Average'] - a['Average']:+.2f} [" in line  # the delta, then its paired interval
    table = compare_runs([plain, gt], labels=["plain", "+gt"])
    assert table.delta("+gt", "Average") == pytest.approx(b["Average"] - a["Average"])
    assert main(["compare", str(tmp_path / "missing")]) == 2
    # the plain sentences the notebooks print, and the count of answers a boost changed
    d = b["Defect Localization"] - a["Defect Localization"]
    sentence = table.verdict("+gt", "Defect Localization", +21.29)
    assert f"{d:+.2f} points" in sentence
    lo, hi = table.delta_interval("+gt", "Defect Localization")
    if lo == hi == 0:
        assert "no change" in sentence
    elif lo <= 0 <= hi:
        assert "within noise" in sentence and "NOT" not in sentence
    else:
        assert ("NOT" in sentence) == (d <= 0) and "beyond noise" in sentence
    changed, total = changed_answers(plain, gt)
    pa = {r["qid"]: r["gpt_answer"] for r in run_records(plain)}
    pb = {r["qid"]: r["gpt_answer"] for r in run_records(gt)}
    assert total == len(pa) and changed == sum(pa[q] != pb[q] for q in pa)


@pytest.mark.slow
def test_patchcore_fitted_per_category_and_calibrated(tmp_path):
    """`expert="patchcore"` in a benchmark fits on each category's train/good lazily, calibrates on held-out normals."""
    from fixtures import make_fixture

    make_fixture(tmp_path / "data", n_train=12)  # enough normals that 3 held out give a meaningful threshold
    bench = Benchmark(tmp_path / "data")
    items = bench.select(types=["Anomaly Detection"], categories=["widget"])
    runs = {}
    for calibrated in (False, True):
        model = BoostedModel(Recorder(), expert="patchcore", calibrated=calibrated, expert_options={"size": 128})
        out = tmp_path / f"pc-{calibrated}"
        Runner(bench, model, out, progress=False).run(items)
        runs[calibrated] = {r["image"]: r["trace"] for r in run_records(out)}
        assert (out / "experts" / "patchcore" / "MVTec-AD" / "widget" / "expert.json").is_file()
        assert model.expert_boost.provider.categories() == [("MVTec-AD", "widget")]
    faithful, calibrated = runs[False], runs[True]
    assert all(t["expert"]["marked"] for t in faithful.values())  # MMAD's pictures always mark something
    # both modes share one fitted, calibrated expert per category: same scores, different pictures
    assert all(faithful[k]["expert"]["score"] == pytest.approx(calibrated[k]["expert"]["score"], rel=1e-4) for k in faithful)
    normal = [k for k in calibrated if "good" in k]
    bad = [k for k in calibrated if "good" not in k]
    assert sum(calibrated[k]["expert"]["marked"] for k in normal) < len(normal)
    assert sum(calibrated[k]["expert"]["marked"] for k in bad) >= len(bad) // 2
    assert all(isinstance(calibrated[k]["expert"]["decision"], bool) for k in calibrated)
    # the same fitted expert by category, for rendering by hand (no refit: shared in the process)
    again = BoostedModel(Recorder(), expert="patchcore", calibrated=True, expert_options={"size": 128})
    assert again.expert_for_category(bench.root, "MVTec-AD", "widget") is model.expert_for_category(bench.root, "MVTec-AD", "widget")
    first = next(iter(calibrated.values()))
    assert "expert_fit_s" in first["timings"] or any("expert_fit_s" in t["timings"] for t in calibrated.values())


@pytest.mark.slow
def test_quickstart_as_written_on_bundled_images():
    """The README quickstart: shipped knowledge base found by image, PatchCore on the template given."""
    from mmad_boost import create_model

    sample = Path(__file__).resolve().parents[1] / "mmad_boost" / "sample" / "visa" / "fryum" / "Data" / "Images"
    images = [Image.open(sample / "Normal" / "000.JPG").convert("RGB"), Image.open(sample / "Anomaly" / "000.JPG").convert("RGB")]
    base = Recorder()
    model = BoostedModel(base, rag=True, expert="patchcore", viz="bbox")
    answer = model(images, "Is there any defect in the object? A. Yes B. No")
    assert answer == "Answer: A"
    tr = model.last_trace
    assert tr["retrieval"]["mode"] == "image" and tr["retrieval"]["category"] == "fryum"
    assert tr["retrieval"]["knowledge_chars"] > 100
    assert tr["expert"]["name"].startswith("patchcore") and tr["expert"]["marked"]  # few-shot on the template; faithful: always marks
    prompt = base.prompts[0]
    assert len(prompt.images) == 3 and "fryum" in prompt.text().lower()
    # any model of the protocol works as the base, e.g. the offline baseline by its SPEC
    assert create_model("baseline:random").generate(prompt).startswith("Answer:")


def test_folder_of_fitted_experts_per_category(fixture_root, tmp_path):
    """expert=<folder with DATASET/CATEGORY/expert.json>: each image gets its category's saved expert."""
    from mmad_boost.experts import create_expert

    folder = tmp_path / "experts"
    create_expert("gt").save(folder / "MVTec-AD" / "widget")
    bench = Benchmark(fixture_root)
    model = BoostedModel(Recorder(), expert=folder, viz="bbox")
    assert model.config()["expert"]["source"] == f"folder:{folder}"
    Runner(bench, model, tmp_path / "run", progress=False).run(bench.select(categories=["widget"]))
    recs = run_records(tmp_path / "run")
    assert {r["trace"]["expert"]["marked"] for r in recs if "good" not in r["image"]} == {True}
    with pytest.raises(MmadError, match="no fitted expert for MVTec-AD/gadget"):
        Runner(bench, model, tmp_path / "run2", progress=False).run(bench.select(categories=["gadget"]))


@pytest.mark.slow
def test_by_hand_with_shipped_calibrated_experts():
    """expert="experts" (the repo's fitted sample experts): the image's retrieved category picks the expert."""
    root = Path(__file__).resolve().parents[1]
    sample = root / "mmad_boost" / "sample" / "visa" / "fryum" / "Data" / "Images"
    images = [Image.open(sample / "Normal" / "000.JPG").convert("RGB"), Image.open(sample / "Anomaly" / "000.JPG").convert("RGB")]
    model = BoostedModel(Recorder(), rag=True, expert=root / "experts", calibrated=True)
    model(images, "Is there any defect in the object? A. Yes B. No")
    ex = model.last_trace["expert"]
    assert model.last_trace["retrieval"]["category"] == "fryum"
    assert ex["mode"] == "calibrated" and isinstance(ex["decision"], bool)
    assert ex["marked"] == ex["decision"]  # calibrated: marks only when it judges the image anomalous


class PlainBase:  # picklable, unlike Recorder (its lock)
    name = "plain"

    def generate(self, prompt):
        return "Answer: A"


def test_boosted_model_pickles_for_ray_workers():
    """Ray ships a model object with cloudpickle: locks and per-thread traces are rebuilt where it lands."""
    import pickle

    model = BoostedModel(PlainBase(), rag=CountingRetriever(), expert=BoxExpert())
    first = model.answer([_object(), _object(defect=True)], "Is there a defect? A. Yes B. No")
    shipped = pickle.loads(pickle.dumps(model))
    assert shipped.config() == model.config() and shipped.last_trace == {}
    again = shipped.answer([_object(), _object(defect=True)], "Is there a defect? A. Yes B. No")
    assert (again.text, again.trace["expert"], again.trace["retrieval"]) == (first.text, first.trace["expert"], first.trace["retrieval"])
    by_name = BoostedModel(PlainBase(), expert="gt")
    by_name.check_samples([])  # makes its unfitted instance (held behind a lock)
    assert pickle.loads(pickle.dumps(by_name)).expert_boost.provider.categories() == []
