"""Eight threads asking one BoostedModel (real knowledge base, real fitted sample experts) about
eight different bundled images at the same moment: each gets the trace of its own image, from
`answer()` and from its thread's `last_trace`, identical to what one thread alone gets."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from mmad_boost import BoostedModel, sample
from mmad_boost.experts import image_hash
from mmad_boost.protocol.prompt import Query, SampleInfo, build_prompt

pytestmark = pytest.mark.slow
THREADS = 8


class DigestOfImages:
    """A base model whose reply names every image it was shown; with `barrier` set, every call
    waits until all threads are inside it, so the eight questions really overlap."""

    name = "digest"

    def __init__(self):
        self.barrier: threading.Barrier | None = None

    def generate(self, prompt) -> str:
        if self.barrier is not None:
            self.barrier.wait(timeout=120)
        return "Answer: A " + " ".join(image_hash(im) for im in prompt.images)


def _eight_samples(bench):
    """Two normal and two defective images of each bundled category."""
    chosen = []
    for category in sample.CATEGORIES:
        mine = [s for s in bench.samples if s.category == category]
        chosen += [s for s in mine if s.is_normal][:2] + [s for s in mine if not s.is_normal][:2]
    assert len(chosen) == THREADS and len({s.key for s in chosen}) == THREADS
    return chosen


def _prompt(bench, s, run_dir):
    info = SampleInfo(
        key=s.key,
        dataset=s.dataset,
        category=s.category,
        label=s.label,
        is_normal=s.is_normal,
        load_mask=lambda: bench.load_mask(s),
        run_dir=str(run_dir),
        data_root=str(bench.root),
    )
    q = s.questions[0]
    return build_prompt(Query(q.text, dict(q.options), bench.load_image(bench.resolve(s.key)), info=info))


def _without_timings(trace: dict) -> dict:
    return {k: v for k, v in trace.items() if k != "timings"}


def test_eight_threads_each_get_their_own_trace(tmp_path, one_torch_thread):
    bench = sample.benchmark()
    chosen = _eight_samples(bench)
    base = DigestOfImages()
    # image retrieval: each image finds its category itself; the category then picks its fitted expert
    model = BoostedModel(base, rag=True, retrieval="image", expert=sample.expert_dir(), calibrated=True, evidence="both", viz="contour")
    alone = {s.key: model.answer(_prompt(bench, s, tmp_path / "alone")) for s in chosen}
    for s in chosen:
        trace = alone[s.key].trace
        assert trace["retrieval"]["category"] == s.category == trace["retrieval"]["true_category"]
        assert trace["expert"]["picture"] == f"pictures/{s.key.rsplit('.', 1)[0]}.png"
        assert (tmp_path / "alone" / trace["expert"]["picture"]).is_file()
    assert len({a.text for a in alone.values()}) == THREADS  # eight different prompts

    base.barrier = threading.Barrier(THREADS)

    def ask(s):
        got = model.answer(_prompt(bench, s, tmp_path / "together"))
        return s, got, model.last_trace

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(ask, chosen))
    for s, got, last in results:
        want = alone[s.key]
        assert last is got.trace  # this thread's last answer, not another thread's
        assert got.text == want.text  # the base model saw this image's own knowledge and expert picture
        assert _without_timings(got.trace) == _without_timings(want.trace)
        assert got.trace["retrieval"]["category"] == s.category
        assert got.trace["expert"]["picture"] == f"pictures/{s.key.rsplit('.', 1)[0]}.png"
    assert model.last_trace is alone[chosen[-1].key].trace  # the main thread's own last answer, untouched by the workers
    base.barrier = None
    assert model.generate(_prompt(bench, chosen[0], tmp_path / "again")) == alone[chosen[0].key].text
