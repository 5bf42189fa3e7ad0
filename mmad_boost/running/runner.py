"""Asking the benchmark: each question on its own, records appended as they arrive, resumable.

`Runner` builds an image's context (images, a model's `prepare`: knowledge, expert picture) once
and asks each question; the loop itself (loop.py) is shared with Ray runs (distributed.py), and
`--workers` threads are its executor here (executors.py).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..protocol.data import Benchmark, Question, Sample, check_image_file
from ..errors import MmadError
from ..models.base import as_model
from ..protocol.parsing import PARSERS, parse_answer
from ..protocol.prompt import Query, SampleInfo, build_prompt, shuffle_options
from ..protocol.record import Record, Trace
from .robust import ask_judge, ask_rotations, identity_extra
from .executors import ImageCache, ThreadExecutor
from .loop import RunSummary, run_questions
from ..atomic import file_sha256
from .records import clean_text
from .run_folder import RunFolder, open_run
from ..protocol.settings import Setting, parse_setting


def shard_of(key: str, n: int) -> int:
    """1-based shard of an image: by image, so per-image work is never split across shards."""
    return zlib.crc32(key.encode("utf-8")) % n + 1


def in_shard(items, shard: tuple[int, int] | None):
    """The questions of shard (I, N), chosen by image; all of them when shard is None."""
    if not shard:
        return items
    return [(s, q) for s, q in items if shard_of(s.key, shard[1]) == shard[0]]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise MmadError(f"--shard {text!r}: use I/N, e.g. 2/3") from None
    if not (1 <= i <= n):
        raise MmadError(f"--shard {text!r}: I must be between 1 and N")
    return i, n


def _describe(e: BaseException) -> str:
    if isinstance(e, SystemExit):  # a model calling sys.exit must not end the run silently
        return f"SystemExit: the model called sys.exit({e.code!r})"
    return f"{type(e).__name__}: {e}"


class Runner:
    def __init__(
        self,
        bench: Benchmark,
        model: Any,
        out: str | Path,
        *,
        setting: str | Setting = "1-shot",
        seed: int = 0,
        parser: str = "strict",
        workers: int = 1,
        shuffle: bool = True,
        shard: tuple[int, int] | None = None,
        progress: bool = True,
        force_mix: bool = False,
        durable: bool = False,
        model_spec: str | None = None,
        max_consecutive_errors: int = 20,
        repair: bool = False,
        circular: bool = False,
        judge: Any = None,
    ):
        if parser not in PARSERS:
            raise MmadError(f"unknown answer parser {parser!r}; use one of {', '.join(PARSERS)}")
        self.bench = bench
        self.model = as_model(model)
        self.out = Path(out)
        self.setting = parse_setting(setting) if isinstance(setting, str) else setting
        self.seed = seed
        self.parser = parser
        self.workers = max(1, int(workers))
        self.shuffle = shuffle
        self.shard = shard
        self.progress = progress
        self.force_mix = force_mix
        self.durable = durable
        self.model_name = model_spec or getattr(self.model, "name", type(self.model).__name__)
        self.max_consecutive_errors = max_consecutive_errors
        self.repair = repair  # move damaged records lines aside instead of stopping with an error
        self.images_prepared = 0
        self.circular = circular  # also ask every rotation of the options (robust.py); scored beside MMAD's figure
        self.judge = None if judge is None else as_model(judge)  # reads unparseable responses (robust.py)

    # -- identity ----------------------------------------------------------
    def identity(self) -> dict:
        from ..models.base import model_config

        cfg = model_config(self.model) if hasattr(self.model, "config") or hasattr(self.model, "mmad_code") else {"name": self.model_name}
        return {
            "questions_sha256": file_sha256(self.bench.questions_file),
            "setting": self.setting.name,
            "seed": self.seed,
            "parser": self.parser,
            "shuffle": self.shuffle,
            "model": self.model_name,
            "model_config": cfg,
            **identity_extra(self.circular, self.judge),
        }

    # -- per image -----------------------------------------------------------
    def _image_context(self, sample: Sample) -> Query:
        t0 = time.perf_counter()
        tkeys = self.setting.templates(sample, self.bench)
        dkeys = self.setting.defect_examples(sample, self.bench, self.seed)
        bench = self.bench
        query = Query(
            question="",
            options={},
            image=bench.load_image(bench.resolve(sample.key)),
            templates=[bench.load_image(bench.template_path(sample, k)) for k in tkeys],
            defect_examples=[bench.load_image(bench.resolve(k)) for k in dkeys],
            info=SampleInfo(
                key=sample.key,
                dataset=sample.dataset,
                category=sample.category,
                label=sample.label,
                is_normal=sample.is_normal,
                template_keys=tkeys,
                load_mask=lambda s=sample: bench.load_mask(s),
                run_dir=str(self.out),
                data_root=str(bench.root),
            ),
            trace={},
        )
        query.trace["templates"] = tkeys
        if dkeys:
            query.trace["defect_examples"] = dkeys
        query.trace.setdefault("timings", {})["load_s"] = round(time.perf_counter() - t0, 4)
        prepare = getattr(self.model, "prepare", None)
        if callable(prepare):
            query = prepare(query)
            query.prepared = True
        return query

    # -- per question --------------------------------------------------------
    def _ask(self, cache: ImageCache, sample: Sample, q: Question) -> dict:
        qid = sample.qid(q)
        if self.shuffle:
            options, answer = shuffle_options(q.options, q.answer, self.seed, qid)
        else:
            options, answer = dict(q.options), q.answer
        record = Record(
            qid=qid,
            image=sample.key,
            question=q.text,
            question_type=q.type,
            correct_answer=answer,
            options=options,
            setting=self.setting.name,
            model=self.model_name,
            parser=self.parser,
        )
        try:
            base = cache.get(sample)
            query = replace(base, question=q.text, options=options, question_type=q.type, trace=_copy_trace(base.trace))
            prompt = build_prompt(query)
        except MmadError:
            raise
        except (Exception, SystemExit) as e:  # an expert or retriever failing on this image: its questions fail, the run goes on
            record.error = clean_text(f"preparing the image failed: {_describe(e)}")[:2000]
            return record.to_json()
        t0 = time.perf_counter()
        try:
            response = self.model.generate(prompt)
            if not isinstance(response, str):
                raise TypeError(f"model returned {type(response).__name__}, expected str")
            response = clean_text(str(response))  # lone surrogates replaced: always recordable, and scored as recorded
            record.response = response
            record.model_answer = parse_answer(response, options, self.parser)
            if record.model_answer is None and self.judge is not None:
                record.judge = ask_judge(self.judge, q.text, options, response)
            if self.circular:
                ask_rotations(self.model, query, record, self.parser, self.judge)
        except MmadError:
            raise
        except (Exception, SystemExit) as e:  # one question failing must not stop the run
            record.error = clean_text(_describe(e))[:2000]
        record.latency_seconds = round(time.perf_counter() - t0, 4)
        if query.trace:
            record.trace = Trace.from_json(query.trace)
        return record.to_json()  # the loop and Ray pass plain JSON objects

    # -- the loop ------------------------------------------------------------
    def run(self, items: list[tuple[Sample, Question]]) -> RunSummary:
        from .progress import quiet

        with quiet(not self.progress):  # progress=False: no fitting messages or library bars either
            return self._run(items)

    def _run(self, items: list[tuple[Sample, Question]]) -> RunSummary:
        items = in_shard(items, self.shard)
        self.preflight(items)
        executor = ThreadExecutor(self._ask, self._image_context, self.workers)
        try:
            return run_questions(self, items, executor)
        finally:
            self.images_prepared += executor.images_prepared

    def ask_image(self, sample: Sample, questions: list[Question]) -> tuple[list[dict], int]:
        """One image's questions in order, its context built once (a Ray actor's unit of work).
        Returns (records, contexts built)."""
        cache = ImageCache(self._image_context, {sample.key: len(questions)})
        records = []
        for q in questions:
            records.append(self._ask(cache, sample, q))
            cache.done(sample.key)
        return records, cache.built

    def preflight(self, items) -> None:
        """Everything that can fail before a run writes anything: images, templates, the model's own checks."""
        self._check_paths(items)
        check = getattr(self.model, "check_samples", None)
        if callable(check):  # e.g. knowledge for every category
            check(list({s.key: s for s, _ in items}.values()))

    def open_run(self, items) -> RunFolder:
        """Claim the run folder (run_folder.py): its lock, run.json's identity, the questions still to ask."""
        return open_run(self.out, items, identity=self.identity(), shard=self.shard, force=self.force_mix, repair=self.repair, data_root=self.bench.root)

    def _check_paths(self, items) -> None:
        """Fail before writing anything if an image the run needs is missing."""
        seen, files = set(), {}
        for s, _ in items:
            if s.key in seen:
                continue
            seen.add(s.key)
            p = self.bench.resolve(s.key)
            if not p.is_file():
                raise MmadError(f"image {p} (key {s.key!r} in {self.bench.questions_file}) not found; check --data")
            files[p] = None
            for k in self.setting.templates(s, self.bench):
                tp = self.bench.template_path(s, k)
                if not tp.is_file():
                    raise MmadError(f"template {tp} of image {s.key!r} not found; check --data and the question file")
                files[tp] = None
        # every image is decoded in full (PIL decodes without the GIL, so threads help); the first bad one in order is reported
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=4)
        try:
            for _ in pool.map(check_image_file, files):
                pass
        finally:  # on the first bad image or Ctrl-C, the queued checks are dropped rather than waited for
            pool.shutdown(wait=False, cancel_futures=True)


def _copy_trace(trace: dict) -> dict:
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in trace.items()}
