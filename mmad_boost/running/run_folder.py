"""Claiming a run folder: its lock, run.json's identity check, and the questions still to ask."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import MmadError
from .records import check_run_config, folder_lock, lock_records, read_records, records_name, rewrite_records, unlock_records


@dataclass
class RunFolder:
    out: Path
    records: Path  # this shard's records file
    lock: int  # held until `release`
    todo: list  # (sample, question) pairs not yet recorded, in the given order
    created: bool  # the folder did not exist before this run

    def release(self) -> None:
        unlock_records(self.lock)
        self.lock = -1

    def remove_if_empty(self) -> None:
        """Leave no half-made run folder behind when a run failed before any answer."""
        if not self.created:
            return
        self.records.unlink(missing_ok=True)
        own_lock = Path(f"{self.records}.lock")
        with folder_lock(self.out):  # another shard may share the folder (its records or its lock file): keep it
            if not any(f.name != "run.json" and f != own_lock for f in self.out.iterdir()):
                shutil.rmtree(self.out, ignore_errors=True)


def open_run(out: Path, items, *, identity: dict, shard, force: bool, repair: bool, data_root) -> RunFolder:
    """Lock the records, check run.json's identity, cut a torn last line, and drop errored records so
    those questions are asked again."""
    if out.exists() and not out.is_dir():
        raise MmadError(f"--out {out} is a file, not a folder; choose a folder path for the run")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MmadError(f"--out {out}: cannot create the run folder ({e.strerror}); choose a writable folder") from None
    path = out / records_name(shard)
    lock = lock_records(path)
    try:
        check_run_config(out, identity, force=force, extra={"data_root": str(Path(data_root).resolve())})
        existing = read_records(path, repair=True, move_bad=repair)
        if any(r.get("error") for r in existing):  # retry only the errored questions: drop their records, atomically
            existing = [r for r in existing if not r.get("error")]
            rewrite_records(path, existing)
    except BaseException:
        unlock_records(lock)
        raise
    done = {r.get("qid") for r in existing}
    return RunFolder(out, path, lock, [(s, q) for s, q in items if s.qid(q) not in done], created)
