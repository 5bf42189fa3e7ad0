"""The benchmark loop: each question asked on its own, records appended as they arrive, resumable.

Per-image work (loading images, a model's `prepare`: knowledge, expert picture) runs once per
image and is shared by that image's questions, also across worker threads.
"""
from __future__ import annotations

import sys
import threading
import time
import zlib
import queue
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..protocol.data import Benchmark, Question, Sample, check_image_file
from ..errors import MmadError
from ..models.base import as_model
from ..protocol.parsing import PARSERS, parse_answer
from ..protocol.prompt import Query, SampleInfo, build_prompt, shuffle_options
from .robust import ask_judge, ask_rotations, identity_extra
from .records import RecordWriter, check_run_config, clean_text, file_sha256, lock_records, read_records, records_name, rewrite_records, unlock_records
from ..protocol.settings import Setting, parse_setting


@dataclass
class RunSummary:
    run_dir: Path
    total: int
    skipped: int
    asked: int
    errors: int
    interrupted: bool = False


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


class _ImageCache:
    """Per-image contexts computed once; freed when the image's last question is done."""

    def __init__(self, build, pending: dict[str, int]):
        self.build = build
        self.pending = dict(pending)
        self.values: dict[str, Any] = {}
        self.locks: dict[str, threading.Lock] = {}
        self.guard = threading.Lock()
        self.built = 0

    def get(self, sample: Sample):
        with self.guard:
            lock = self.locks.setdefault(sample.key, threading.Lock())
        with lock:
            if sample.key not in self.values:
                try:
                    self.values[sample.key] = self.build(sample)
                except (Exception, SystemExit) as e:  # kept: the image's other questions get the same error, not a rebuild
                    self.values[sample.key] = _Failed(e)
                self.built += 1
            value = self.values[sample.key]
        if isinstance(value, _Failed):
            raise value.error
        return value

    def done(self, key: str) -> None:
        with self.guard:
            self.pending[key] -= 1
            if self.pending[key] <= 0:
                self.values.pop(key, None)


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def _describe(e: BaseException) -> str:
    if isinstance(e, SystemExit):  # a model calling sys.exit must not end the run silently
        return f"SystemExit: the model called sys.exit({e.code!r})"
    return f"{type(e).__name__}: {e}"


class ErrorStreak:
    """Counts failed questions; too many in a row means the set-up is broken, so stop and say so."""

    def __init__(self, limit: int, path: Path):
        self.limit, self.path = limit, path
        self.errors = self.in_row = 0

    def add(self, record: dict) -> None:
        if not record["error"]:
            self.in_row = 0
            return
        self.errors += 1
        self.in_row += 1
        if self.in_row >= self.limit:
            raise MmadError(
                f"{self.in_row} questions in a row failed, last: {record['error']}; "
                f"fix the model set-up and rerun the same command (errors are retried, answers kept in {self.path})"
            )


class _DaemonPool:
    """A thread pool whose threads are daemons: Ctrl-C need not wait for a model call in flight
    (minutes for an API with retries). Records are written by the caller, so nothing is lost."""

    def __init__(self, workers: int):
        self.workers = workers
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(workers):
            threading.Thread(target=self._work, name=f"mmad-{i}", daemon=True).start()

    def _work(self) -> None:
        while (task := self.tasks.get()) is not None:
            fut, fn, args = task
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as e:  # delivered to the caller through the future
                    fut.set_exception(e)

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        self.tasks.put((fut, fn, args))
        return fut

    def shutdown(self, wait: bool = False, cancel_futures: bool = True) -> None:
        for _ in range(self.workers):
            self.tasks.put(None)  # each thread ends after its current task; nobody waits for it

    def __enter__(self) -> "_DaemonPool":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


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
    def _ask(self, cache: _ImageCache, sample: Sample, q: Question) -> dict:
        qid = sample.qid(q)
        if self.shuffle:
            options, answer = shuffle_options(q.options, q.answer, self.seed, qid)
        else:
            options, answer = dict(q.options), q.answer
        record = {
            "qid": qid,
            "image": sample.key,
            "question": q.text,
            "question_type": q.type,
            "correct_answer": answer,
            "gpt_answer": None,
            "response": None,
            "options": options,
            "setting": self.setting.name,
            "model": self.model_name,
            "parser": self.parser,
            "latency_s": None,
            "error": None,
        }
        try:
            base = cache.get(sample)
            query = replace(base, question=q.text, options=options, question_type=q.type, trace=_copy_trace(base.trace))
            prompt = build_prompt(query)
        except MmadError:
            raise
        except (Exception, SystemExit) as e:  # an expert or retriever failing on this image: its questions fail, the run goes on
            record["error"] = clean_text(f"preparing the image failed: {_describe(e)}")[:2000]
            return record
        t0 = time.perf_counter()
        try:
            response = self.model.generate(prompt)
            if not isinstance(response, str):
                raise TypeError(f"model returned {type(response).__name__}, expected str")
            response = clean_text(str(response))  # lone surrogates replaced: always recordable, and scored as recorded
            record["response"] = response
            record["gpt_answer"] = parse_answer(response, options, self.parser)
            if record["gpt_answer"] is None and self.judge is not None:
                record.update(ask_judge(self.judge, q.text, options, response))
            if self.circular:
                ask_rotations(self.model, query, record, self.parser, self.judge)
        except MmadError:
            raise
        except (Exception, SystemExit) as e:  # one question failing must not stop the run
            record["error"] = clean_text(_describe(e))[:2000]
        record["latency_s"] = round(time.perf_counter() - t0, 4)
        if query.trace:
            record["trace"] = query.trace
        return record

    # -- the loop ------------------------------------------------------------
    def run(self, items: list[tuple[Sample, Question]]) -> RunSummary:
        from .progress import quiet

        with quiet(not self.progress):  # progress=False: no fitting messages or library bars either
            return self._run(items)

    def _run(self, items: list[tuple[Sample, Question]]) -> RunSummary:
        items = in_shard(items, self.shard)
        self.preflight(items)
        path, lock, todo, created = self.open_run(items)
        pending: dict[str, int] = {}
        for s, _ in todo:
            pending[s.key] = pending.get(s.key, 0) + 1
        cache = _ImageCache(self._image_context, pending)
        writer = RecordWriter(path, durable=self.durable)
        bar = _progress(len(todo), self.progress)
        streak = ErrorStreak(self.max_consecutive_errors, path)
        asked = 0
        interrupted = False
        try:
            with _DaemonPool(self.workers) as pool:
                it = iter(todo)
                running = {}

                def submit_next() -> bool:
                    nxt = next(it, None)
                    if nxt is None:
                        return False
                    running[pool.submit(self._ask, cache, *nxt)] = nxt
                    return True

                for _ in range(self.workers * 2):
                    if not submit_next():
                        break
                try:
                    while running:
                        finished, _ = wait(running, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            sample, _q = running.pop(fut)
                            record = fut.result()
                            writer.write(record)
                            cache.done(sample.key)
                            asked += 1
                            bar.update(1)
                            streak.add(record)
                            submit_next()
                except BaseException:
                    for fut in running:
                        fut.cancel()
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
        except KeyboardInterrupt:
            interrupted = True
        except MmadError:
            if created and asked == 0:  # failed before any answer: leave no half-made run folder behind
                _remove_empty_run(self.out, path)
            raise
        finally:
            bar.close()
            writer.close()
            unlock_records(lock)
            self.images_prepared += cache.built
        summary = RunSummary(self.out, len(items), len(items) - len(todo), asked, streak.errors, interrupted)
        if interrupted:
            print(
                f"\nInterrupted: {len(items) - len(todo) + asked} of {len(items)} questions are recorded in {path}. "
                "Run the same command again to resume.",
                file=sys.stderr,
            )
        return summary

    def preflight(self, items) -> None:
        """Everything that can fail before a run writes anything: images, templates, the model's own checks."""
        self._check_paths(items)
        check = getattr(self.model, "check_samples", None)
        if callable(check):  # e.g. knowledge for every category
            check(list({s.key: s for s, _ in items}.values()))

    def open_run(self, items) -> tuple[Path, int, list, bool]:
        """Claim the run folder: lock its records, check run.json's identity, cut a torn last line, and drop
        errored records so those questions are asked again. Returns (records path, lock, questions to ask,
        whether the folder was created)."""
        if self.out.exists() and not self.out.is_dir():
            raise MmadError(f"--out {self.out} is a file, not a folder; choose a folder path for the run")
        created = not self.out.exists()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MmadError(f"--out {self.out}: cannot create the run folder ({e.strerror}); choose a writable folder") from None
        path = self.out / records_name(self.shard)
        lock = lock_records(path)
        try:
            check_run_config(self.out, self.identity(), force=self.force_mix, extra={"data_root": str(Path(self.bench.root).resolve())})
            existing = read_records(path, repair=True, move_bad=self.repair)
            if any(r.get("error") for r in existing):  # retry only the errored questions: drop their records, atomically
                existing = [r for r in existing if not r.get("error")]
                rewrite_records(path, existing)
        except BaseException:
            unlock_records(lock)
            raise
        done = {r.get("qid") for r in existing}
        return path, lock, [(s, q) for s, q in items if s.qid(q) not in done], created

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


def _remove_empty_run(out: Path, records: Path) -> None:
    import shutil

    from .records import folder_lock

    records.unlink(missing_ok=True)
    own_lock = Path(f"{records}.lock")
    with folder_lock(out):  # another shard may share the folder (its records or its lock file): keep it
        if not any(f.name != "run.json" and f != own_lock for f in out.iterdir()):
            shutil.rmtree(out, ignore_errors=True)


def _copy_trace(trace: dict) -> dict:
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in trace.items()}


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="q", desc="questions", dynamic_ncols=True, file=sys.stderr)
