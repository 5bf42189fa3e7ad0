"""The run folder: `run.json` (what produced the answers) and append-only `records*.jsonl`.

Each record is one JSON line written with a single `write` on an O_APPEND descriptor, so a killed
process leaves at most one torn last line, which the next open cuts off.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from .errors import MmadError

RUN_FILE = "run.json"


def records_name(shard: tuple[int, int] | None = None) -> str:
    return "records.jsonl" if shard is None else f"records.shard-{shard[0]}-of-{shard[1]}.jsonl"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_records(path: Path, *, repair: bool = False) -> list[dict]:
    """Complete records of one file; a torn last line (killed writer) is ignored, or cut off if `repair`."""
    if not path.exists():
        return []
    data = path.read_bytes()
    out, good_end, pos = [], 0, 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        line = data[pos:nl]
        try:
            if line.strip():
                out.append(json.loads(line))
            good_end = nl + 1
        except json.JSONDecodeError:
            if data.find(b"\n", nl + 1) >= 0:  # a bad line in the middle is not ours to drop silently
                lineno = data.count(b"\n", 0, pos) + 1
                raise MmadError(f"{path}: line {lineno} is not valid JSON; fix or remove that line") from None
            break
        pos = nl + 1
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return out


def run_records(run_dir: Path) -> list[dict]:
    """All records of a run folder, shards merged, in file order."""
    files = sorted(Path(run_dir).glob("records*.jsonl"))
    if not files:
        raise MmadError(f"{run_dir}: no records*.jsonl found; is this a run folder written by `mmad-boost eval`?")
    out = []
    for f in files:
        out.extend(read_records(f))
    return out


def lock_records(path: Path) -> int:
    """Hold `<records>.lock` so two runs cannot append to one records file; the OS drops it if we die."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return -1
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise MmadError(f"{path} is being written by another running `mmad-boost eval`; wait for it to finish or use another --out folder") from None
    return fd


def unlock_records(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


def _jsonable(o):
    """numpy scalars and arrays in a trace become plain JSON values, anything else its text."""
    for conv in ("item", "tolist"):
        f = getattr(o, conv, None)
        if callable(f):
            try:
                return f()
            except (TypeError, ValueError):
                pass
    return str(o)


class RecordWriter:
    def __init__(self, path: Path, durable: bool = False):
        self.path = path
        self.durable = durable
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict) -> None:
        line = memoryview((json.dumps(record, ensure_ascii=False, default=_jsonable) + "\n").encode("utf-8"))
        with self._lock:
            try:
                while line:  # a short write (rare, e.g. near a full disk) must not leave half a line
                    line = line[os.write(self._fd, line):]
                if self.durable:
                    os.fsync(self._fd)
            except OSError as e:
                raise MmadError(f"{self.path}: cannot write a record ({e.strerror}); free disk space or fix permissions, then rerun to resume") from None

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def rewrite_records(path: Path, records: list[dict]) -> None:
    """Replace a records file atomically (used to drop errored records before retrying them)."""
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_run_config(run_dir: Path, identity: dict, *, force: bool = False, extra: dict | None = None) -> None:
    """Refuse to mix answers of different configurations in one run folder; `extra` (e.g. data_root) is stored, not checked."""
    path = run_dir / RUN_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise MmadError(f"{path} is not valid JSON; restore it or use a new --out folder") from None
        old_id = old.get("identity", {})
        diffs = [k for k in sorted(set(old_id) | set(identity)) if old_id.get(k) != identity.get(k)]
        if diffs and not force:
            k = diffs[0]
            raise MmadError(
                f"{run_dir} was written by another configuration ({k}: {old_id.get(k)!r} there, {identity.get(k)!r} now); "
                "use a new --out folder, or pass --force-mix to add these answers anyway"
            )
        if not diffs:
            return
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"identity": identity, **(extra or {})}, indent=2, default=str))
    os.replace(tmp, path)
