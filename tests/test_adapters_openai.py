"""openai: adapter against a real HTTP server on 127.0.0.1 (no client mocking)."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from mmad_boost.protocol.data import Benchmark
from mmad_boost.errors import MmadError, ModelError
from mmad_boost.models import create_model
from mmad_boost.models.openai_api import OpenAIChatModel
from mmad_boost.protocol.prompt import Query, build_prompt
from mmad_boost.running.records import read_records
from mmad_boost.running.runner import Runner

KEY = "sk-test-SECRET-0123456789"


def completion(text: str) -> bytes:
    return json.dumps(
        {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    ).encode()


class Server:
    """A chat-completions server whose answers a test scripts with `reply(body, n) -> (status, headers, bytes)`."""

    def __init__(self):
        self.requests: list[dict] = []
        self.reply = lambda body, n: (200, {}, completion("Answer: A"))
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                with lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body, "t": time.monotonic()})
                    n = len(server.requests)
                status, headers, data = server.reply(body, n)
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out on purpose

            def log_message(self, *args):
                pass

        lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False  # do not wait for a deliberately slow handler
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("MMAD_TEST_KEY", KEY)
    return "MMAD_TEST_KEY"


def _model(server, key, **kw):
    return OpenAIChatModel("test-vlm", base_url=server.url, api_key_env=key, backoff=0.01, **kw)


def _query():
    return Query(
        question="Is there any defect in the object?",
        options={"A": "Yes", "B": "No"},
        image=Image.new("RGB", (800, 600), (200, 10, 10)),
        templates=[Image.new("RGB", (300, 200), (10, 200, 10))],
        system="You are careful.",
    )


def test_exact_request_body(server, key):
    model = _model(server, key)
    assert model(build_prompt(_query())) == "Answer: A"
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    body = req["body"]
    assert set(body) == {"model", "messages", "max_tokens", "temperature"}
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("test-vlm", 200, 0.0)
    system, user = body["messages"]
    assert system == {"role": "system", "content": "You are careful."}
    assert user["role"] == "user"
    kinds = [c["type"] for c in user["content"]]
    assert kinds == ["text", "image_url", "text", "image_url", "text"]
    assert user["content"][0]["text"].startswith("You are an industrial inspector")
    assert user["content"][-1]["text"].endswith("Question: Is there any defect in the object?\nA. Yes\nB. No")
    sizes = []
    for c in user["content"]:
        if c["type"] == "image_url":
            url = c["image_url"]["url"]
            assert url.startswith("data:image/jpeg;base64,")
            im = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
            sizes.append(im.size)
    assert sizes == [(300, 200), (512, 384)]  # template kept, query capped at 512 px on the longer side


def test_png_and_no_key_for_local_servers(server, monkeypatch):
    model = create_model("openai:m", base_url=server.url, api_key_env="none", image_format="png", max_side="64", max_tokens="7")
    model([Image.new("RGB", (100, 50))], "hi")
    req = server.requests[0]
    assert "Authorization" not in req["headers"]
    assert req["body"]["max_tokens"] == 7 and "system" not in json.dumps(req["body"]["messages"])
    url = req["body"]["messages"][0]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (64, 32)


def test_429_honours_retry_after(server, key):
    server.reply = lambda body, n: (429, {"Retry-After": "1"}, b'{"error": {"message": "slow down"}}') if n == 1 else (200, {}, completion("B"))
    assert _model(server, key)(build_prompt(_query())) == "B"
    first, second = server.requests
    assert second["t"] - first["t"] >= 0.95


def test_500_then_success(server, key):
    server.reply = lambda body, n: (500, {}, b"oops") if n <= 2 else (200, {}, completion("A"))
    t0 = time.monotonic()
    assert _model(server, key)(build_prompt(_query())) == "A"
    assert len(server.requests) == 3 and time.monotonic() - t0 < 2


def test_exhausted_retries_raise(server, key):
    server.reply = lambda body, n: (503, {}, b'{"error": "busy"}')
    with pytest.raises(ModelError, match=r"gave up after 3 attempts, last: HTTP 503: busy"):
        _model(server, key, max_retries=2)(build_prompt(_query()))
    assert len(server.requests) == 3


def test_bad_key_fails_at_once_without_leaking(server, key):
    server.reply = lambda body, n: (401, {}, json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}"}}).encode())
    with pytest.raises(MmadError) as err:
        _model(server, key)(build_prompt(_query()))
    assert len(server.requests) == 1
    assert "HTTP 401" in str(err.value) and "MMAD_TEST_KEY" in str(err.value) and KEY not in str(err.value)


def test_key_never_shown(server, key):
    model = _model(server, key)
    for text in (repr(model), str(vars(model)), json.dumps(model.config())):
        assert KEY not in text


def test_missing_key_variable(monkeypatch):
    monkeypatch.delenv("MMAD_NO_SUCH_KEY", raising=False)
    with pytest.raises(MmadError, match="MMAD_NO_SUCH_KEY"):
        create_model("openai:gpt-4o", api_key_env="MMAD_NO_SUCH_KEY")


def test_unknown_option_and_bad_url(key):
    with pytest.raises(MmadError, match="max_tokenz"):
        create_model("openai:m", api_key_env=key, max_tokenz="3")
    with pytest.raises(MmadError, match="base-url"):
        create_model("openai:m", api_key_env=key, base_url="localhost:8000")


def test_unreachable_server_fails_fast(key):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = OpenAIChatModel("m", base_url=f"http://127.0.0.1:{port}/v1", api_key_env=key)
    t0 = time.monotonic()
    with pytest.raises(MmadError, match="cannot reach"):
        model(build_prompt(_query()))
    assert time.monotonic() - t0 < 3


def test_malformed_json(server, key):
    server.reply = lambda body, n: (200, {}, b"<html>not json</html>")
    with pytest.raises(ModelError, match="malformed response"):
        _model(server, key)(build_prompt(_query()))
    server.reply = lambda body, n: (200, {}, b'{"choices": []}')
    with pytest.raises(ModelError, match="malformed response"):
        _model(server, key)(build_prompt(_query()))
    assert len(server.requests) == 2  # not retried: the server answered


def test_slow_server_times_out(server, key):
    def slow(body, n):
        time.sleep(1.5)
        return 200, {}, completion("A")

    server.reply = slow
    t0 = time.monotonic()
    with pytest.raises(ModelError, match="gave up after 2 attempts"):
        _model(server, key, timeout=0.3, max_retries=1)(build_prompt(_query()))
    assert time.monotonic() - t0 < 1.5


def test_failed_questions_are_recorded_and_run_goes_on(server, key, fixture_root, tmp_path):
    def reply(body, n):
        text = body["messages"][-1]["content"][-1]["text"]
        return (503, {}, b"busy") if "type of defect" in text else (200, {}, completion("Answer: A"))

    server.reply = reply
    bench = Benchmark(fixture_root)
    items = bench.select()
    out = tmp_path / "run"
    summary = Runner(bench, _model(server, key, max_retries=1), out, progress=False).run(items)
    records = read_records(out / "records.jsonl")
    assert len(records) == len(items) == summary.asked
    failed = [r for r in records if r["error"]]
    assert failed and all(r["question_type"] == "Defect Classification" for r in failed)
    assert all("HTTP 503" in r["error"] for r in failed)
    assert all(r["gpt_answer"] == "A" for r in records if not r["error"])


@pytest.mark.slow
def test_cli_eval_end_to_end(server, key, fixture_root, tmp_path, capsys):
    from mmad_boost.cli import main

    out = tmp_path / "run"
    argv = [
        "eval",
        "--data",
        str(fixture_root),
        "--model",
        "openai:test-vlm",
        "--base-url",
        server.url,
        "--api-key-env",
        key,
        "--limit",
        "6",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert len(server.requests) == 6
    assert all(r["body"]["model"] == "test-vlm" for r in server.requests)
    records = read_records(out / "records.jsonl")
    assert len(records) == 6 and not any(r["error"] for r in records)
    run = json.loads((out / "run.json").read_text())
    assert run["identity"]["model"] == "openai:test-vlm"
    for f in out.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f
    assert KEY not in capsys.readouterr().err
