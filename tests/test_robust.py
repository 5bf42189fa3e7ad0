"""--circular (CircularEval) and --judge, end to end against real local OpenAI-compatible HTTP servers."""

from __future__ import annotations

import json
import re

import pytest

from mmad_boost.cli import main
from mmad_boost.running.records import run_records
from mmad_boost.reporting.reports import robust_scores
from mmad_boost.running.robust import circular_records, judged_records, rotations
from mmad_boost.protocol.scoring import score_records
from test_adapters_openai import Server, completion  # the project's local chat-completions server


def _options(body) -> dict[str, str]:
    """The lettered options at the end of the last text part of a chat request."""
    text = (
        [c["text"] for c in body["messages"][-1]["content"] if c["type"] == "text"][-1]
        if isinstance(body["messages"][-1]["content"], list)
        else body["messages"][-1]["content"]
    )
    return dict(re.findall(r"^([A-E])\. (.*)$", text, re.M))


def _eval(root, out, url, *extra):
    return main(["eval", "--data", str(root), "--model", "openai:vlm", "--base-url", url, "--api-key-env", "none", "--no-progress", "--out", str(out), *extra])


def test_rotations_move_every_text_through_every_letter():
    rots = rotations({"A": "x", "B": "y", "C": "z"}, "B")
    assert rots[0] == ({"A": "x", "B": "y", "C": "z"}, "B")
    assert [r[0]["A"] for r in rots] == ["x", "y", "z"]
    assert all(opts[right] == "y" for opts, right in rots)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_circular_catches_a_position_bias_that_mmad_accuracy_hides(fixture_root, tmp_path, server):
    server.reply = lambda body, n: (200, {}, completion("Answer: A"))  # always the first letter
    out = tmp_path / "biased"
    assert _eval(fixture_root, out, server.url, "--circular", "--type", "Anomaly Detection", "--type", "Object Classification") == 0
    records = run_records(out)
    options = sum(len(r["options"]) for r in records)
    assert len(server.requests) == options  # one call per rotation of every question
    assert all(len(r["circular"]) == len(r["options"]) - 1 for r in records)
    mmad = score_records(records).rows["Average"]
    circ = score_records(circular_records(records)).rows["Average"]
    assert mmad["Object Classification"] > 0  # "A" is right where the shuffle put the answer first
    assert circ["Object Classification"] == 0 and circ["Anomaly Detection"] == 0  # never right in every rotation
    assert json.loads((out / "run.json").read_text())["identity"]["circular"] is True
    report = (out / "report.md").read_text()
    assert "CircularEval accuracy" in report and "## Accuracy (%, MMAD's rule" in report
    data = json.loads((out / "scores.json").read_text())
    assert data["rows"]["Average"]["Object Classification"] == pytest.approx(mmad["Object Classification"])  # MMAD's figure unchanged
    assert data["circular"]["rows"]["Average"]["Object Classification"] == 0


def test_circular_agrees_with_mmad_for_an_order_blind_model(fixture_root, tmp_path, server):
    def by_content(body, n):  # picks the option text, whatever letter it has: the same answer in every rotation
        opts = _options(body)
        pick = min(opts, key=opts.get)  # the alphabetically first option text
        return 200, {}, completion(f"Answer: {pick}")

    server.reply = by_content
    out = tmp_path / "content"
    assert _eval(fixture_root, out, server.url, "--circular", "--type", "Anomaly Detection", "--type", "Object Classification") == 0
    records = run_records(out)
    assert all(r["circular_correct"] == (r["gpt_answer"] == r["correct_answer"]) for r in records)
    assert robust_scores(records)["circular"].rows["Average"]["Average"] == pytest.approx(score_records(records).rows["Average"]["Average"])


def test_judge_reads_what_the_parser_cannot(fixture_root, tmp_path, server):
    server.reply = lambda body, n: (200, {}, completion("Hard to say; it looks like the second one to me."))
    judge = Server()
    try:

        def judge_reply(body, n):
            text = body["messages"][-1]["content"]
            text = text if isinstance(text, str) else " ".join(c.get("text", "") for c in text)
            assert "second one" in text and "Options:" in text  # the judge sees the response and the options
            return 200, {}, completion("B")

        judge.reply = judge_reply
        out = tmp_path / "judged"
        assert (
            _eval(
                fixture_root,
                out,
                server.url,
                "--type",
                "Anomaly Detection",
                "--judge",
                "openai:judge",
                "--judge-option",
                f"base_url={judge.url}",
                "--judge-option",
                "api_key_env=none",
            )
            == 0
        )
    finally:
        judge.close()
    records = run_records(out)
    assert records and all(r["gpt_answer"] is None for r in records)  # MMAD's rule: unparsed
    assert all(r["judge_answer"] == "B" and r["judge_response"] == "B" for r in records)
    assert len(judge.requests) == len(records)
    plain = score_records(records).rows["Average"]
    with_judge = score_records(judged_records(records)).rows["Average"]
    assert plain["Anomaly Detection"] is None  # everything dropped without the judge
    assert with_judge["Anomaly Detection"] is not None
    report = (out / "report.md").read_text()
    assert "Accuracy with the judge" in report and f"gave a letter for {len(records)}" in report
    ident = json.loads((out / "run.json").read_text())["identity"]
    assert "judge" in ident and "circular" not in ident


def test_a_failing_judge_keeps_the_answer_and_says_why(fixture_root, tmp_path, server):
    server.reply = lambda body, n: (200, {}, completion("no idea"))
    judge = Server()
    judge.reply = lambda body, n: (400, {}, b'{"error": {"message": "bad judge"}}')
    try:
        out = tmp_path / "judge-fails"
        assert (
            _eval(
                fixture_root,
                out,
                server.url,
                "--type",
                "Anomaly Detection",
                "--judge",
                "openai:judge",
                "--judge-option",
                f"base_url={judge.url}",
                "--judge-option",
                "api_key_env=none",
                "--judge-option",
                "max_retries=0",
            )
            == 0
        )
    finally:
        judge.close()
    records = run_records(out)
    assert all(r["error"] is None and r["judge_answer"] is None and r.get("judge_error") for r in records)


def test_judge_option_without_judge_is_refused(fixture_root, tmp_path, capsys):
    assert (
        main(["eval", "--data", str(fixture_root), "--model", "baseline:random", "--judge-option", "a=b", "--no-progress", "--out", str(tmp_path / "x")]) == 2
    )
    assert "--judge-option needs --judge" in capsys.readouterr().err


def test_html_report_shows_the_circular_figure_beside_mmads(fixture_root, tmp_path, server):
    from mmad_boost.reporting.html_report import write_html_report

    server.reply = lambda body, n: (200, {}, completion("Answer: A"))
    out = tmp_path / "biased"
    assert _eval(fixture_root, out, server.url, "--circular", "--type", "Object Classification") == 0
    page = write_html_report([out], tmp_path / "site").read_text()
    assert "CircularEval: right only if every rotation" in page and "95 % bootstrap interval" in page
