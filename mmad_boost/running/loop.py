"""The run loop, written once for every executor (threads here, Ray actors in distributed.py).

Claim the run folder (resume: only unrecorded or errored questions are asked), keep the executor
busy, append each record as it arrives, stop on a streak of errors, and say how to resume after
Ctrl-C. Nothing already recorded is lost on any exit.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import MmadError
from .executors import Executor
from .records import RecordWriter


@dataclass
class RunSummary:
    run_dir: Path
    total: int
    skipped: int
    asked: int
    errors: int
    interrupted: bool = False


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


def run_questions(runner, items: list, executor: Executor) -> RunSummary:
    """Ask `items` (already sharded and preflighted) through `executor`.

    runner: supplies `open_run(items)` -> RunFolder, and `durable`, `progress`, `max_consecutive_errors`.
    """
    folder = runner.open_run(items)
    todo = folder.todo
    writer = RecordWriter(folder.records, durable=runner.durable)
    bar = progress_bar(len(todo), runner.progress)
    streak = ErrorStreak(runner.max_consecutive_errors, folder.records)
    asked = 0
    interrupted = False
    try:
        units = executor.units(todo)
        executor.start(units)
        queue = iter(units)
        running: dict = {}

        def submit_next() -> bool:
            unit = next(queue, None)
            if unit is None:
                return False
            running[executor.submit(unit)] = unit
            return True

        for _ in range(executor.capacity):
            if not submit_next():
                break
        try:
            while running:
                for handle in executor.wait(list(running)):
                    unit = running.pop(handle)
                    for record in executor.result(handle, unit):
                        writer.write(record)
                        asked += 1
                        bar.update(1)
                        streak.add(record)
                    submit_next()
        finally:  # on Ctrl-C or a stopping error, queued work is dropped rather than waited for
            executor.cancel(list(running))
    except KeyboardInterrupt:
        interrupted = True
    except MmadError:
        if asked == 0:
            folder.remove_if_empty()
        raise
    finally:
        bar.close()
        writer.close()
        executor.close()
        folder.release()
    summary = RunSummary(runner.out, len(items), len(items) - len(todo), asked, streak.errors, interrupted)
    if interrupted:
        print(
            f"\nInterrupted: {len(items) - len(todo) + asked} of {len(items)} questions are recorded in {folder.records}. "
            "Run the same command again to resume.",
            file=sys.stderr,
        )
    return summary


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def progress_bar(total: int, enabled: bool):
    if not enabled or total == 0:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="q", desc="questions", dynamic_ncols=True, file=sys.stderr)
