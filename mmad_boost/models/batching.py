"""Serve concurrent one-at-a-time calls in batches: the runner's worker threads each ask one
question, and a local model answers up to `size` of them in one forward pass.

Leader/follower, no thread of its own: a caller queues its item; whoever finds the model idle
becomes the leader, waits up to `wait_s` for the batch to fill, runs it and hands every waiting
caller its own result. Nothing outlives the callers, so Ctrl-C and close() need no shutdown.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Sequence


class _Job:
    __slots__ = ("item", "done", "value", "error")

    def __init__(self, item: Any):
        self.item, self.done, self.value, self.error = item, False, None, None


class MicroBatcher:
    """`submit(item)` returns `run([..., item, ...])`'s entry for item; `run` sees at most `size` items.

    A batch waits for at most `wait_s` to reach min(size, the most callers ever seen at once), so a
    single caller never waits and W >= size callers fill every batch. When `run` fails on a batch
    the items are retried one by one, so one bad question fails alone (as it does unbatched).
    """

    def __init__(self, run: Callable[[Sequence[Any]], list], size: int, wait_s: float = 0.05):
        if size < 1:
            raise ValueError("batch size must be at least 1")
        self._run, self.size, self.wait_s = run, int(size), float(wait_s)
        self._cv = threading.Condition()
        self._pending: deque[_Job] = deque()
        self._busy = False
        self._callers = 0
        self.peak_callers = 0
        self.batch_sizes: list[int] = []  # for benchmarks and the "batches do not fill" hint

    def submit(self, item: Any) -> Any:
        job = _Job(item)
        with self._cv:
            self._pending.append(job)
            self._callers += 1
            self.peak_callers = max(self.peak_callers, self._callers)
            self._cv.notify_all()
        try:
            while not job.done:
                batch = self._lead_or_wait(job)
                if batch:
                    self._serve(batch)
        finally:
            with self._cv:
                self._callers -= 1
        if job.error is not None:
            raise job.error
        return job.value

    def _lead_or_wait(self, job: _Job) -> list[_Job]:
        with self._cv:
            while self._busy and not job.done:
                self._cv.wait()
            if job.done:
                return []
            self._busy = True
            target = min(self.size, self.peak_callers)
            deadline = time.monotonic() + self.wait_s
            while len(self._pending) < target and (left := deadline - time.monotonic()) > 0:
                self._cv.wait(left)
            return [self._pending.popleft() for _ in range(min(self.size, len(self._pending)))]

    def _serve(self, batch: list[_Job]) -> None:
        try:
            self._fill(batch)
        finally:
            with self._cv:
                for j in batch:
                    j.done = True
                self._busy = False
                self._cv.notify_all()

    def _fill(self, batch: list[_Job]) -> None:
        self.batch_sizes.append(len(batch))
        try:
            values = self._run([j.item for j in batch])
            if len(values) != len(batch):
                raise RuntimeError(f"batch of {len(batch)} gave {len(values)} results")
        except BaseException as e:
            if len(batch) == 1 or not isinstance(e, Exception):
                for j in batch:
                    j.error = e
                return
            for j in batch:  # isolate the failing item(s)
                try:
                    j.value = self._run([j.item])[0]
                except Exception as e1:
                    j.error = e1
            return
        for j, v in zip(batch, values):
            j.value = v
