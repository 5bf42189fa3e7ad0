"""The shipped published MMAD table, `compare --paper`, `score --format mmad-csv`, and intervals in the score files."""

from __future__ import annotations

import csv
import io
import json

import pytest

from mmad_boost.cli import main
from mmad_boost.protocol.paper import MMAD_CSV_COLUMNS, published_results
from mmad_boost.running.records import run_records
from mmad_boost.protocol.scoring import SUBTASKS, score_records


def test_published_table_matches_the_protocol_reference_numbers():
    t2 = {p.model: p.rows["Average"] for p in published_results("table2")}
    # the reference rows of the protocol notes (section 8), as typed in
    assert t2["GPT-4o"]["Average"] == 74.92 and t2["GPT-4o"]["Defect Localization"] == 55.62
    assert t2["InternVL2-76B"]["Anomaly Detection"] == 68.25
    assert t2["InternVL2-40B + RAG"]["Object Classification"] == 96.50
    assert t2["random chance"]["Average"] == 28.57
    for p in published_results("all"):
        assert p.source and p.setting == "1-shot"
        for row in p.rows.values():
            present = [row[s] for s in SUBTASKS if s in row]
            assert len(present) == 7
            # each published Average is the mean of its seven subtasks (a typo check on the typed-in numbers)
            assert row["Average"] == pytest.approx(sum(present) / 7, abs=0.01)


def test_all_result_rows_are_mmads_per_dataset_csvs():
    rows = {p.model: p.rows for p in published_results("all_result")}
    assert {"gpt-4o", "InternVL2-Llama3-76B", "Qwen2-VL-72B-Instruct"} <= set(rows)
    gpt = rows["gpt-4o"]
    assert list(gpt) == ["DS-MVTec", "MVTec-LOCO", "VisA", "GoodsAD", "Average"]
    for col in SUBTASKS:  # the Average row is the mean of the dataset rows, as MMAD's scorer computes it
        assert gpt["Average"][col] == pytest.approx(sum(gpt[d][col] for d in list(gpt)[:4]) / 4, abs=1e-6)
    with pytest.raises(Exception, match="--paper"):
        published_results("table9")


@pytest.fixture
def runs(shared_fixture_root, tmp_path):
    plain, second = tmp_path / "plain", tmp_path / "second"
    for out, seed in ((plain, "0"), (second, "1")):
        assert (
            main(
                ["eval", "--data", str(shared_fixture_root), "--model", "baseline:random", "--model-option", f"seed={seed}", "--no-progress", "--out", str(out)]
            )
            == 0
        )
    return plain, second


def test_score_files_carry_intervals_and_mmad_csv_has_mmads_shape(runs, capsys):
    plain, _ = runs
    rows = list(csv.reader(io.StringIO((plain / "scores.csv").read_text())))
    head = rows[0]
    assert head[:9] == [""] + list(SUBTASKS) + ["Average"]  # MMAD's columns first, unchanged
    assert "Average low" in head and "Anomaly Detection high" in head
    avg = dict(zip(head, next(r for r in rows if r[0] == "Average")))
    assert float(avg["Average low"]) <= float(avg["Average"]) <= float(avg["Average high"])
    data = json.loads((plain / "scores.json").read_text())
    lo, hi = data["intervals"]["rows"]["Average"]["Average"]
    assert lo <= data["rows"]["Average"]["Average"] <= hi and "bootstrap" in data["intervals"]["method"]
    assert "[" in (plain / "report.md").read_text().split("## Accuracy")[1].split("##")[0]
    capsys.readouterr()
    assert main(["score", str(plain), "--format", "mmad-csv"]) == 0
    out = capsys.readouterr().out
    table = list(csv.reader(io.StringIO(out)))
    assert tuple(table[0][1:]) == MMAD_CSV_COLUMNS
    scores = score_records(run_records(plain)).rows
    got = {r[0]: r[1:] for r in table[1:]}
    assert set(got) == set(scores)
    assert float(got["Average"][MMAD_CSV_COLUMNS.index("Average")]) == pytest.approx(scores["Average"]["Average"], abs=1e-9)


def test_compare_shows_paired_intervals_and_the_paper(runs, capsys):
    plain, second = runs
    capsys.readouterr()
    assert main(["compare", str(plain), str(second), "--paper"]) == 0
    md = capsys.readouterr().out
    line = next(ln for ln in md.splitlines() if ln.startswith("| second |"))
    cells = [c for c in line.split("|")[2:10] if c.strip()]
    assert cells and all("[" in c and "(" in c for c in cells)  # every delta with its paired interval
    assert "| GPT-4o (paper Table 2) | 68.63 |" in md and "paired intervals" in md
    assert main(["compare", str(plain), str(second), "--format", "csv", "--bootstrap", "200", "--paper", "all_result"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    gpt = next(r for r in rows if r["run"] == "gpt-4o (all_result)")
    assert gpt["Average"] == "74.31" and gpt["Average delta"] == ""
    assert rows[1]["Average delta beyond noise"] in ("yes", "no")
    lo, hi, d = (float(rows[1][k]) for k in ("Average delta low", "Average delta high", "Average delta"))
    assert lo <= d <= hi
    assert main(["compare", str(plain), str(second), "--bootstrap", "0", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "intervals" not in data and "Average low" not in data["runs"][0]
    assert main(["compare", str(plain), "--confidence", "1.5"]) == 2
