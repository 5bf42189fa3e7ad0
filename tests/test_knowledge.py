"""The knowledge format, its validator, MMAD's importer and oracle text (no models needed)."""

import json

import pytest

from conftest import MMAD_KNOWLEDGE, ROOT, needs_mmad_knowledge
from mmad_boost.errors import MmadError
from mmad_boost.retrieval import KnowledgeRetriever, import_mmad_knowledge, load_knowledge
from mmad_boost.retrieval.knowledge import DEFAULT_BUDGET

needs_mmad = needs_mmad_knowledge


@needs_mmad
def test_importer_loads_all_38_categories():
    ks = import_mmad_knowledge(MMAD_KNOWLEDGE)
    assert len(ks) == 38
    assert {c.dataset for c in ks} == {"MVTec", "MVTec-LOCO", "VisA", "GoodsAD"}
    bottle = ks.find("bottle", "MVTec")
    assert [e.kind for e in bottle.entries].count("normal") == 1
    assert {e.name for e in bottle.defects} >= {"broken_large", "broken_small", "contamination"}


@needs_mmad
def test_oracle_reproduces_mmad_text_for_every_category():
    raw = json.loads(MMAD_KNOWLEDGE.read_text())
    r = KnowledgeRetriever.from_mmad_file(MMAD_KNOWLEDGE)
    for ds, cats in raw.items():
        for cat, entries in cats.items():
            expected = "\n".join(entries.values())
            res = r.retrieve(mode="oracle", dataset=ds, category=cat)
            assert res.text == expected, f"{ds}/{cat}"
            assert (res.mode, res.category, res.dataset) == ("oracle", cat, ds)
    # MMAD's question files say MVTec-AD / DS-MVTec; the knowledge file says MVTec
    for alias in ("MVTec-AD", "DS-MVTec"):
        assert r.retrieve(mode="oracle", dataset=alias, category="cable").text == "\n".join(raw["MVTec"]["cable"].values())


@needs_mmad
def test_oracle_unknown_category_names_it():
    r = KnowledgeRetriever.from_mmad_file(MMAD_KNOWLEDGE)
    with pytest.raises(MmadError, match="VisA/teapot"):
        r.retrieve(mode="oracle", dataset="VisA", category="teapot")
    with pytest.raises(MmadError, match="needs the category"):
        r.retrieve(mode="oracle")
    with pytest.raises(MmadError, match="mode 'bogus'"):
        r.retrieve(mode="bogus", category="cable")


def test_shipped_knowledge_base_loads():
    ks = load_knowledge(ROOT / "knowledge_base")
    assert {"VisA/fryum", "VisA/capsules"} <= set(ks.keys())
    caps = ks.find("capsules", "VisA")
    assert {e.name for e in caps.defects} == {"bubble", "discolor", "scratch", "leak", "misshape"}
    text = KnowledgeRetriever.load(ROOT / "knowledge_base").retrieve(mode="oracle", dataset="VisA", category="capsules").text
    assert text.index("<Normal characteristics>") < text.index("<Defect: bubble>") < text.index("<Defect: misshape>")
    assert len(text) <= DEFAULT_BUDGET
    for e in caps.entries:  # every entry goes in, none is cut
        assert e.text.strip() in text


def test_budget_leaves_out_whole_entries():
    c = load_knowledge(ROOT / "knowledge_base").find("fryum", "VisA")
    full = c.prompt_text(budget=None)
    short = c.prompt_text(budget=len(full) // 2)
    assert len(short) <= len(full) // 2 and c.normal.strip() in short
    kept = [e for e in c.defects if e.text.strip() in short]
    assert 0 < len(kept) < len(c.defects)
    # top-k entries: normal characteristics plus only the chosen defects
    one = c.prompt_text([c.defects[2]], budget=None)
    assert c.defects[2].text.strip() in one and c.defects[0].text.strip() not in one and c.normal.strip() in one


GOOD = 'dataset = "X"\ncategory = "widget"\nnormal = "round and blue"\n'


@pytest.mark.parametrize(
    "body, message",
    [
        ('dataset = "X"\ncategory = "w"\nnormal = \n', "not valid TOML"),
        ('dataset = "X"\ncategory = "w"\n', "field 'normal' is missing"),
        (GOOD + 'colour = "blue"\n', "unknown field"),
        (GOOD + '[[defect]]\nname = "crack"\ndescription = "a"\n[[defect]]\nname = "crack"\ndescription = "b"\n', "listed twice"),
        (GOOD + '[[defect]]\nname = "crack"\n', "'description' is missing"),
        (GOOD + '[[defect]]\nname = "crack"\ndescription = "a"\nsummary = "s"\n', "must come before the first"),
        (GOOD + 'references = ["nope.png"]\n', "nope.png not found"),
        ('dataset = "X"\ncategory = "w"\nnormal = "  "\n', "non-empty string"),
    ],
)
def test_validator_names_file_and_problem(tmp_path, body, message):
    f = tmp_path / "widget.toml"
    f.write_text(body)
    with pytest.raises(MmadError, match=message) as e:
        load_knowledge(f)
    assert "widget.toml" in str(e.value) and "\n" not in str(e.value)


def test_folder_duplicate_and_empty(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w1.toml").write_text(GOOD)
    (tmp_path / "a" / "w2.toml").write_text(GOOD)
    with pytest.raises(MmadError, match="defined twice"):
        load_knowledge(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MmadError, match="no category .toml"):
        load_knowledge(empty)


def test_bad_mmad_file(tmp_path):
    f = tmp_path / "dk.json"
    f.write_text('{"VisA": {"fryum": {"good": 3}}}')
    with pytest.raises(MmadError, match="VisA/fryum must map entry names to texts"):
        import_mmad_knowledge(f)
    f.write_text("{oops")
    with pytest.raises(MmadError, match="not valid JSON"):
        load_knowledge(f)
