"""Property tests: the openai: adapter against a real HTTP server on 127.0.0.1 whose replies
(status, headers, body, pauses, trickling) are generated. Whatever the server does, a request
ends in an answer, a per-question ModelError or a one-line MmadError; the key never leaves for
another host nor appears in an answer or a message; a redirect never yields an answer; a request
never outlives its deadline; and a run records every question exactly once."""

from __future__ import annotations

import email.utils
import json
import time

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from http_faults import KEY, Reply, ScriptedServer, completion
from mmad_boost.errors import MmadError, ModelError
from mmad_boost.models.openai_api import OpenAIChatModel
from mmad_boost.protocol.prompt import Prompt

TIMEOUT, DEADLINE, RETRIES = 0.4, 0.8, 1
PROPS = settings(max_examples=35, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], database=None)

STATUSES = [200, 200, 200, 201, 204, 301, 302, 303, 307, 308, 400, 401, 403, 404, 408, 409, 422, 429, 500, 502, 503, 504, 520]


def _http_date(offset_s: float) -> str:
    return email.utils.formatdate(time.time() + offset_s, usegmt=True)


retry_after = st.one_of(
    st.none(),
    st.integers(-5, 1).map(str),
    st.floats(0, 0.1).map(lambda f: f"{f:.3f}"),
    st.sampled_from(["soon", "", "1e999", "99999999999999999999", "Mon, 99 Foo 2020 25:61:00 GMT", "Thu, 01 Jan 1970 00:00:00"]),
    st.floats(-100, 0.1).map(_http_date),
)
answer_text = st.one_of(
    st.text(max_size=60),
    st.just("Answer: A \ud800"),
    st.just(f"the key is {KEY}, answer B"),
    st.just(" " * 20000 + "Answer: C"),
    st.text(max_size=20).map(lambda t: t + "\udfff"),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=8,
)
bodies = st.one_of(
    answer_text.map(completion),
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.just(json.dumps({"error": {"message": f"invalid key {KEY}"}}).encode()),
    answer_text.map(lambda t: completion(t)[: max(1, len(completion(t)) // 2)]),  # cut short
    st.just(b"[" * 5000 + b"]" * 5000),  # nested beyond the JSON decoder's recursion limit
    st.just(json.dumps({"choices": [{"message": {"content": [{"type": "text", "text": "Answer: B"}, {"text": 3}, "x"]}}]}).encode()),
)


@st.composite
def replies(draw, other_url: str):
    status = draw(st.sampled_from(STATUSES))
    headers = {}
    ra = draw(retry_after)
    if ra is not None:
        headers["Retry-After"] = ra
    if 300 <= status < 400:
        headers["Location"] = draw(st.sampled_from([other_url + "/chat/completions", "/v1/other", "https://example.invalid/x"]))
    timing = draw(st.sampled_from(["none", "none", "none", "slow-start", "trickle"]))
    length = draw(st.sampled_from([None, None, None, -1, "long", "short"]))
    body = draw(bodies)
    return Reply(
        status=status,
        headers=headers,
        body=body,
        delay_s=0.6 if timing == "slow-start" else 0.0,  # beyond the per-read timeout
        trickle_s=0.15 if timing == "trickle" else 0.0,
        chunk=max(1, len(body) // 8) if timing == "trickle" else 1 << 20,
        content_length={None: None, -1: -1, "long": len(body) + 10, "short": max(0, len(body) - 3)}[length],
    )


@pytest.fixture(scope="module")
def servers():
    with ScriptedServer() as main, ScriptedServer() as other:
        yield main, other


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("MMAD_PROP_KEY", KEY)


def _model(url: str) -> OpenAIChatModel:
    return OpenAIChatModel(
        "m", base_url=url, api_key_env="MMAD_PROP_KEY", timeout=TIMEOUT, deadline=DEADLINE, max_retries=RETRIES, backoff=0.01, max_backoff=0.05
    )


@pytest.mark.slow  # ~15 s: many generated replies wait for the deadline on purpose
@PROPS
@given(data=st.data())
def test_any_server_behaviour_ends_in_an_answer_or_a_one_line_error(servers, key_env, data):
    main, other = servers
    script = data.draw(st.lists(replies(other.url), min_size=1, max_size=RETRIES + 1), label="replies")
    main.requests.clear()
    other.requests.clear()
    main.script = lambda n, req: script[min(n, len(script)) - 1]
    model = _model(main.url)
    prompt = Prompt(["Is there a defect? Answer with the letter."])
    t0 = time.monotonic()
    try:
        answer, error = model.generate(prompt), None
    except (ModelError, MmadError) as e:
        answer, error = None, e
    elapsed = time.monotonic() - t0

    assert not other.requests, "a redirect must never carry the key (or anything) to another server"
    # each attempt is bounded by the deadline (plus a little scheduling slack), waits by max_backoff
    assert elapsed < (RETRIES + 1) * (DEADLINE + 0.5) + RETRIES * 0.1, elapsed
    for req in main.requests:
        assert req["method"] == "POST" and b"Is there a defect?" in req["body"], "every request carries the question"
    if error is not None:
        text = str(error)
        assert "\n" not in text and KEY not in text, text
        return
    assert isinstance(answer, str) and KEY not in answer
    final = script[min(len(main.requests), len(script)) - 1]
    assert final.status == 200, "only a 200 reply is an answer (a redirect never is)"


@PROPS
@given(first=st.sampled_from([301, 302, 303, 307, 308]))
def test_a_redirect_stops_with_one_line_and_the_key_stays_home(servers, key_env, first):
    main, other = servers
    main.requests.clear()
    other.requests.clear()
    main.script = lambda n, req: Reply(status=first, headers={"Location": other.url + "/chat/completions"}, body=b"")
    with pytest.raises(MmadError, match="redirect") as e:
        _model(main.url).generate(Prompt(["q"]))
    assert KEY not in str(e.value) and not other.requests and len(main.requests) == 1


run_replies = st.one_of(
    st.sampled_from(
        [
            Reply(500, body=b"oops"),
            Reply(429, {"Retry-After": "0"}, b"{}"),
            Reply(400, body=b'{"error": {"message": "bad"}}'),
            Reply(body=b"not json"),
            Reply(body=completion("Answer: B"), content_length=400),
            Reply(401, body=json.dumps({"error": f"bad key {KEY}"}).encode()),
            Reply(302, {"Location": "http://127.0.0.1:9/x"}),
        ]
    ),
    answer_text.map(lambda t: Reply(body=completion(t))),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], database=None)
@given(script=st.lists(run_replies, min_size=1, max_size=8))
def test_a_run_records_every_question_exactly_once_whatever_the_server_does(shared_fixture_root, servers, key_env, script):
    import shutil
    import tempfile
    from pathlib import Path

    from mmad_boost.protocol.data import Benchmark
    from mmad_boost.running.records import read_records
    from mmad_boost.running.runner import Runner

    main, _ = servers
    bench = Benchmark(shared_fixture_root)
    items = bench.select()[:8]
    out = Path(tempfile.mkdtemp(prefix="hprop-")) / "run"
    try:
        main.script = lambda n, req: script[(n - 1) % len(script)]
        try:
            Runner(bench, _model(main.url), out, workers=2, progress=False).run(items)
            stopped = False
        except MmadError as e:
            assert "\n" not in str(e) and KEY not in str(e)
            stopped = True
        event("stopped" if stopped else "completed")
        recs = read_records(out / "records.jsonl")
        assert len({r["qid"] for r in recs}) == len(recs), "a question recorded twice"
        assert all((r["error"] is None) == (r["response"] is not None) for r in recs)
        if not stopped:
            assert len(recs) == len(items)
        if out.exists():
            for f in out.iterdir():
                assert KEY not in f.read_text(errors="replace"), f
        answered = {r["qid"]: r for r in recs if not r["error"]}
        main.script = lambda n, req: Reply(body=completion("Answer: A"))  # the server recovers: a rerun completes the run
        Runner(bench, _model(main.url), out, workers=2, progress=False).run(items)
        final = read_records(out / "records.jsonl")
        assert len(final) == len(items) and len({r["qid"] for r in final}) == len(items)
        assert all(answered[r["qid"]] == r for r in final if r["qid"] in answered), "answers are kept on resume"
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
