"""Failing models and secrets: a real OpenAI-compatible HTTP server on 127.0.0.1 that misbehaves on
purpose. The run must finish, retried questions succeed, exhausted ones are recorded as errors and
reported apart, a rerun asks only those, and the API key appears in no output."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mmad_boost.cli import main
from mmad_boost.running.records import read_records

KEY = "sk-test-9f8e7d6c5b4a-SECRET"
KEY_ENV = "MMAD_RELIABILITY_KEY"
REFUSAL = "I'm sorry, but I can't help with identifying defects in this image."

# What the server does for the i-th distinct question, one entry per attempt (the last one repeats).
PLAN = [
    ["429-retry-after", "ok"],
    ["429", "ok"],
    ["500", "ok"],
    ["slow", "ok"],
    ["reset", "ok"],
    ["500-echo-key", "500-echo-key"],  # exhausted: error, and the key it echoes must be scrubbed
    ["malformed-json"],  # not retried: recorded as an error at once
    ["empty-content"],  # an answer, not an error: a parse failure
    ["null-content"],
    ["refusal"],
    ["refusal-field"],
    ["429"],  # exhausted
]


class FlakyServer:
    def __init__(self):
        self.plan_of: dict[str, int] = {}
        self.attempts: dict[str, list[float]] = {}
        self.all_ok = False
        self.lock = threading.Lock()
        self.auth_seen: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.auth_seen.add(self.headers.get("Authorization", ""))
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    return self.reply(401, {"error": {"message": f"invalid key {self.headers.get('Authorization')}"}})
                msgs = json.loads(body)["messages"]
                qid = hashlib.sha256(json.dumps(msgs, sort_keys=True).encode()).hexdigest()
                with outer.lock:
                    i = outer.plan_of.setdefault(qid, len(outer.plan_of))
                    tries = outer.attempts.setdefault(qid, [])
                    tries.append(time.monotonic())
                    steps = PLAN[i] if i < len(PLAN) and not outer.all_ok else ["ok"]
                    step = steps[min(len(tries), len(steps)) - 1]
                self.act(step, msgs)

            def act(self, step, msgs):
                if step == "ok":
                    text = msgs[-1]["content"][-1]["text"]
                    letter = "A" if "A. " in text else "B"
                    return self.reply(200, {"choices": [{"message": {"role": "assistant", "content": f"Answer: {letter}"}}]})
                if step == "429-retry-after":
                    return self.reply(429, {"error": {"message": "rate limited"}}, {"Retry-After": "0.4"})
                if step in ("429", "500"):
                    return self.reply(int(step), {"error": {"message": "try later"}})
                if step == "500-echo-key":
                    return self.reply(500, {"error": {"message": f"upstream failed for {self.headers['Authorization']}"}})
                if step == "slow":
                    time.sleep(1.0)  # past the client's timeout
                    return self.reply(200, {"choices": [{"message": {"content": "Answer: A"}}]})
                if step == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                if step == "malformed-json":
                    return self.reply(200, b'{"choices": [{"message": ')
                if step == "empty-content":
                    return self.reply(200, {"choices": [{"message": {"content": ""}}]})
                if step == "null-content":
                    return self.reply(200, {"choices": [{"message": {"content": None}}]})
                if step == "refusal":
                    return self.reply(200, {"choices": [{"message": {"content": REFUSAL}}]})
                if step == "refusal-field":
                    return self.reply(200, {"choices": [{"message": {"content": None, "refusal": REFUSAL}}]})
                raise AssertionError(step)

            def reply(self, status, payload, headers=None):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout case)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def step_of(self, plan_index: int) -> list[float]:
        return next(t for q, t in self.attempts.items() if self.plan_of[q] == plan_index)


@pytest.fixture
def server():
    with FlakyServer() as s:
        yield s


def eval_argv(data: Path, server: FlakyServer, out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "--data",
        str(data),
        "--model",
        "openai:test-vlm",
        "--base-url",
        server.url,
        "--api-key-env",
        KEY_ENV,
        "--model-option",
        "timeout=0.5",
        "--model-option",
        "max_retries=2",
        "--model-option",
        "backoff=0.02",
        "--out",
        str(out),
        "--no-progress",
        "--category",
        "widget",
        "--no-shuffle",
        *extra,
    ]


def by_plan(server: FlakyServer, records: list[dict]) -> dict[int, dict]:
    """Records keyed by the plan entry the server used for them (workers=1: order of first request)."""
    order = sorted(server.plan_of.values())
    return {i: r for i, r in zip(order, records)}


def test_failing_server_run_finishes_errors_reported_apart_rerun_retries_only_them(server, shared_fixture_root, tmp_path, capsys, monkeypatch, caplog):
    monkeypatch.setenv(KEY_ENV, KEY)
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "run"
    argv = eval_argv(shared_fixture_root, server, out)
    assert main(argv) == 0
    first_out, first_err = capsys.readouterr()
    records = read_records(out / "records.jsonl")
    assert len(records) == 18
    r = by_plan(server, records)

    for i in range(5):  # 429 (with and without Retry-After), 500, timeout, reset: retried, then answered
        assert r[i]["error"] is None and r[i]["gpt_answer"] in "AB", (PLAN[i], r[i])
    gap = lambda i: server.step_of(i)[1] - server.step_of(i)[0]  # noqa: E731
    assert gap(0) >= 0.35, "Retry-After must be honoured"
    assert gap(1) < 0.35, "without Retry-After the (small) exponential backoff applies"
    assert "gave up after 3 attempts" in r[5]["error"] and "HTTP 500" in r[5]["error"] and "***" in r[5]["error"]
    assert len(server.step_of(5)) == 3
    assert "malformed response" in r[6]["error"] and len(server.step_of(6)) == 1
    assert r[7]["error"] is None and r[7]["response"] == "" and r[7]["gpt_answer"] is None  # parse failure
    assert "no text content" in r[8]["error"]
    assert r[9]["error"] is None and r[9]["response"] == REFUSAL and r[9]["gpt_answer"] is None
    assert r[10]["error"] is None and r[10]["response"] == REFUSAL
    assert "gave up after 3 attempts" in r[11]["error"] and "HTTP 429" in r[11]["error"]

    # errors are counted apart from wrong answers and parse failures
    errored = {rec["qid"] for rec in records if rec["error"]}
    assert len(errored) == 4
    scores = json.loads((out / "scores.json").read_text())["rows"]["MVTec-AD"]
    assert scores["Errors"] == 4 and scores["Parse Failures"] == 3 and scores["Questions"] == 18
    header, row = (out / "scores.csv").read_text().splitlines()[:2]
    assert dict(zip(header.split(","), row.split(",")))["Errors"] == "4"
    report = (out / "report.md").read_text()
    assert "## Errors (4 questions; rerun the same command to retry them)" in report
    assert all(q in report for q in errored)
    assert "4 errors" in first_err

    # the rerun asks only the errored questions; everything else is kept as it was
    server.all_ok = True
    before = {q: len(t) for q, t in server.attempts.items()}
    assert main(argv) == 0
    second_out, second_err = capsys.readouterr()
    asked_again = [q for q, t in server.attempts.items() if len(t) > before[q]]
    assert len(asked_again) == 4 and all(len(server.attempts[q]) == before[q] + 1 for q in asked_again)
    assert "4 asked, 14 already recorded, 0 errors" in second_err
    final = read_records(out / "records.jsonl")
    assert len(final) == 18 and not any(rec["error"] for rec in final)
    assert [rec for rec in final if rec["qid"] not in errored] == [rec for rec in records if rec["qid"] not in errored]

    # secrets: the key was sent, yet appears in no file of the run, no output and no log
    assert f"Bearer {KEY}" in server.auth_seen
    texts = {"stdout+stderr": first_out + first_err + second_out + second_err, "logs": caplog.text}
    for p in out.rglob("*"):
        if p.is_file():
            texts[str(p)] = p.read_bytes().decode("utf-8", "replace")
    assert len(texts) >= 8
    leaks = [name for name, text in texts.items() if KEY in text or KEY[8:20] in text]
    assert not leaks, f"API key found in {leaks}"


def test_wrong_key_stops_at_once_without_echoing_it(server, shared_fixture_root, tmp_path, capsys, monkeypatch):
    wrong = "sk-wrong-0123456789-SECRET"
    monkeypatch.setenv(KEY_ENV, wrong)
    out = tmp_path / "run"
    rc = main(eval_argv(shared_fixture_root, server, out))
    _, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "HTTP 401" in err and KEY_ENV in err and "check the key" in err
    assert wrong not in err
    assert not out.exists()


def test_missing_key_and_unreachable_server(shared_fixture_root, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    base = ["eval", "--data", str(shared_fixture_root), "--model", "openai:test-vlm", "--api-key-env", KEY_ENV, "--out", str(tmp_path / "run"), "--no-progress"]
    assert main([*base, "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert f"environment variable {KEY_ENV} is not set" in capsys.readouterr().err
    monkeypatch.setenv(KEY_ENV, KEY)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    assert main([*base, "--base-url", f"http://127.0.0.1:{port}/v1"]) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - t0 < 10
    assert "cannot reach" in err and "start the server or fix --base-url" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_dead_model_stops_the_run_after_20_failures_in_a_row(shared_fixture_root, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["eval", "--data", str(shared_fixture_root), "--model", "python:reliability_support:always_fails", "--out", str(out), "--no-progress"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "20 questions in a row failed, last: ConnectionError: backend down" in lines[0], err
    assert "rerun the same command" in lines[0]
    records = read_records(out / "records.jsonl")
    assert len(records) == 20 and all(r["error"] for r in records)  # kept, to be retried
