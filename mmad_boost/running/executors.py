"""Where questions are answered: the run loop (loop.py) hands units of work to an executor.

An executor turns the questions still to ask into units, starts its workers, and returns each
unit's records as they finish. `ThreadExecutor` asks one question per unit on threads of this
process (`--workers`); the Ray executor (distributed.py) sends one image's questions per unit to
an actor. The per-image context (images, a model's `prepare`) is built once per image either way.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, Callable, Iterable, Protocol

from ..protocol.data import Question, Sample


class Executor(Protocol):
    """What the run loop needs from an executor (`images_prepared` counts per-image contexts built)."""

    images_prepared: int

    @property
    def capacity(self) -> int: ...  # units kept in flight; read after `start`

    def units(self, todo: list[tuple[Sample, Question]]) -> list: ...

    def start(self, units: list) -> None: ...

    def submit(self, unit) -> Any: ...

    def wait(self, handles: list) -> Iterable: ...  # at least one finished handle

    def result(self, handle, unit) -> list[dict]: ...  # raises what the unit raised

    def cancel(self, handles: Iterable) -> None: ...

    def close(self) -> None: ...  # idempotent


class ImageCache:
    """Per-image contexts computed once; freed when the image's last question is done."""

    def __init__(self, build: Callable[[Sample], Any], pending: dict[str, int]):
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


def count_by_image(todo: Iterable[tuple[Sample, Question]]) -> dict[str, int]:
    pending: dict[str, int] = {}
    for s, _ in todo:
        pending[s.key] = pending.get(s.key, 0) + 1
    return pending


class DaemonPool:
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

    def shutdown(self) -> None:
        for _ in range(self.workers):
            self.tasks.put(None)  # each thread ends after its current task; nobody waits for it


class ThreadExecutor:
    """One question per unit on `workers` daemon threads; an image's context is shared by its questions.

    ask(cache, sample, question) -> record; context(sample) -> the image's prepared query.
    """

    def __init__(self, ask: Callable[[ImageCache, Sample, Question], dict], context: Callable[[Sample], Any], workers: int = 1):
        self.ask, self.context = ask, context
        self.workers = max(1, int(workers))
        self.cache: ImageCache | None = None
        self.pool: DaemonPool | None = None

    @property
    def capacity(self) -> int:
        return self.workers * 2

    @property
    def images_prepared(self) -> int:
        return self.cache.built if self.cache else 0

    def units(self, todo):
        return list(todo)

    def start(self, units) -> None:
        self.cache = ImageCache(self.context, count_by_image(units))
        self.pool = DaemonPool(self.workers)

    def submit(self, unit) -> Future:
        return self.pool.submit(self.ask, self.cache, *unit)

    def wait(self, handles):
        finished, _ = wait(handles, return_when=FIRST_COMPLETED)
        return finished

    def result(self, handle: Future, unit) -> list[dict]:
        record = handle.result()
        self.cache.done(unit[0].key)
        return [record]

    def cancel(self, handles) -> None:
        for fut in handles:
            fut.cancel()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
